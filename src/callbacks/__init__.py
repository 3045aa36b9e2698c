"""Callbacks: adapter export and the run report."""
