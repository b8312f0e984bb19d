"""Test-session settings, applied before any test module imports jax, and the shared model fixtures."""

import collections
import os

import pytest

# The test extra installs libtpu and the CUDA plugin (tests/test_aot.py compiles for TPU and GPU targets
# from the CPU). With them installed, jax would probe for a TPU or GPU at start-up; these machines have
# neither, so the suite runs on the CPU unless JAX_PLATFORMS says otherwise (benchmarks/gpu.sh does).
os.environ.setdefault("JAX_PLATFORMS", "cpu")


# --- shared models (configs, params and batches: tests/tiny.py) ------------------------------------
#
# Function-scoped, as tests may change a model in place: building one from numpy params takes well under
# a second, and models of one config share their compiled programs.


@pytest.fixture
def tiny():
    """A random CLIP of TINY (tests/tiny.py: ViT, the real vocabulary and context)."""
    from tests.tiny import TINY, tiny_model

    return tiny_model(TINY)


@pytest.fixture
def tiny_rn():
    """A random CLIP of TINY_RN (TINY with a ModifiedResNet image tower)."""
    from tests.tiny import TINY_RN, tiny_model

    return tiny_model(TINY_RN)


@pytest.fixture
def hits() -> collections.Counter:
    """Requests by path, for a test's own tests/local_server.serve(handler, hits): counts no other test sees."""
    return collections.Counter()
