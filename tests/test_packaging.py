"""What each install brings (pyproject.toml): the library without the jobs' dependencies, and no extra
that README's lines install with a package that logs on stderr in every process without its hardware."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.\-]+(\[[^\]]*\])?", r).group(0).lower() for r in requirements}


def test_the_library_does_not_need_the_jobs_dependencies():
    core = names(PROJECT["dependencies"])
    assert not core & {"pyarrow", "fsspec", "tqdm"}, core
    assert {"pyarrow", "fsspec"} <= names(PROJECT["optional-dependencies"]["jobs"])


def test_the_test_extra_brings_nothing_that_logs_without_its_hardware():
    """libtpu (jax[tpu]) and the CUDA plugin print errors in every jax process on a machine without a TPU
    or GPU; they come with their own extras (aot-tpu, aot-gpu), not with README's test line."""
    extras = PROJECT["optional-dependencies"]
    test = names(extras["test"])
    assert not {n for n in test if n.startswith("jax[") or "cuda" in n or n == "libtpu"}, test
    assert names(extras["aot-tpu"]) == {"jax[tpu]"}
    assert "jax[cuda12-local]" in names(extras["aot-gpu"])
