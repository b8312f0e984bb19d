"""`python -m convert SRC [-o DST] [--dtype D]` from the repository root: the same as `clip-jax convert`."""
