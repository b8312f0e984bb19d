"""Test-session settings, applied before any test module imports jax."""

import os

# The test extra installs libtpu and the CUDA plugin (tests/test_aot.py compiles for TPU and GPU targets
# from the CPU). With them installed, jax would probe for a TPU or GPU at start-up; these machines have
# neither, so the suite runs on the CPU unless JAX_PLATFORMS says otherwise (benchmarks/gpu.sh does).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
