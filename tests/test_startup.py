"""Start-up: `import clip_jax` and the command line's `--help` and argument errors load no jax, numpy or
model code (the package's names are imported on first use; the commands import what they run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("jax", "flax", "numpy", "ml_dtypes", "PIL", "pyarrow")

PARSE = "from clip_jax.cli.main import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"


def _heavy_modules_after(code: str) -> list[str]:
    probe = (f"{code}\nimport sys\n"
             f"print('LOADED', *sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    line = [s for s in out.stderr.splitlines() if s.startswith("LOADED")]
    assert line, out.stderr
    return line[-1].split()[1:]


@pytest.mark.parametrize("code", [
    "import clip_jax",
    "import clip_jax.cli",
    PARSE.format(argv=["--help"]),
    PARSE.format(argv=["embed", "--help"]),
    PARSE.format(argv=["eval", "zeroshot_classification", "--help"]),
    PARSE.format(argv=["embed", "imgs", "-o", "out", "--model", "m", "--batch-size", "0"]),  # argparse: exit 2
])
def test_no_heavy_import(code):
    assert _heavy_modules_after(code) == []


def test_the_public_names_resolve_on_first_use():
    import clip_jax

    for name in clip_jax.__all__:
        assert getattr(clip_jax, name) is not None, name
    assert clip_jax.jobs.__name__ == "clip_jax.jobs"  # a subpackage, imported on first use too
    with pytest.warns(DeprecationWarning, match="clip_jax.eval is now clip_jax.jobs.eval"):
        assert clip_jax.eval.__name__ == "clip_jax.jobs.eval"  # a module that moved still answers
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        clip_jax.nothing  # noqa: B018
    namespace: dict = {}
    exec("from clip_jax import *", namespace)
    assert {"load", "tokenize", "l2_normalize", "ShardedCLIP"} <= set(namespace)
