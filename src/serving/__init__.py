"""Serving and inference: the HTTP API (serve.py), batch generation (generate.py), the terminal
playground (playground.py) and standalone export (export.py), all loading models the way evaluate.py does."""
