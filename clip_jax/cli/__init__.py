"""The `clip-jax` command line (`main`), `clip-jax eval` (`eval`), what they share (`common`), and the
offline demo (`demo`, also `clip-jax demo`). Each command imports the library and `clip_jax.jobs` only
when it runs, so `--help` answers at once and a missing extra is one line naming it.
"""
