"""Training: one loop (loop.py) and a module per stage."""
