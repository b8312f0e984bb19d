"""`python -m clip_jax.cli ARGS`: the `clip-jax` command without the installed script (multi-process
launchers that start `sys.executable`)."""

import sys

from .main import main

sys.exit(main())
