"""Checkpoint comparison: every checkpoint of a run (or the best of every run of a sweep) on the same
samples, with paired bootstrap intervals and a recommendation (``evaluate.py compare=all``)."""
