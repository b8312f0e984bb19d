"""`clip-jax export` and `clip-jax --version`: the command line's way back to PyTorch files, and what is installed."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

import clip_jax
from clip_jax.checkpoint.export import EXPORT_DTYPES
from clip_jax.cli import main as cli
from clip_jax.model import flat_params

from .tiny import TINY, save_tiny


def main(*argv) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("export") / "tiny.safetensors")


def params_of(path) -> dict[str, np.ndarray]:
    model, _ = clip_jax.load(path)
    return {k: np.asarray(v) for k, v in flat_params(model).items()}


@pytest.mark.parametrize("name", ["tiny.pt", "tiny.safetensors"])
def test_export_loads_back_to_the_same_params(tiny_file, tmp_path, name, capsys):
    out = tmp_path / name
    assert main("export", tiny_file, out) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert (tmp_path / "open_clip_config.json").is_file()  # clip_jax.export's, beside the file
    want, got = params_of(tiny_file), params_of(out)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    model, _ = clip_jax.load(out)
    assert model.config == TINY


def test_export_dtype_and_transformers_folder(tiny_file, tmp_path):
    assert main("export", tiny_file, tmp_path / "half.pt", "--dtype", "float16") == 0
    model, _ = clip_jax.load(tmp_path / "half.pt")
    want = params_of(tiny_file)
    for k, v in flat_params(model).items():
        np.testing.assert_array_equal(np.asarray(v), want[k].astype(np.float16).astype(np.float32), err_msg=k)
    assert main("export", tiny_file, tmp_path / "hf", "--format", "transformers") == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "clip"
    got = params_of(tmp_path / "hf")
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_export_dtype_choices_are_the_exporters():
    """The command line spells the choices out (no numpy at start-up); they must be export's."""
    assert cli.EXPORT_DTYPES == EXPORT_DTYPES


def test_export_of_a_missing_model_is_one_line(tmp_path, capsys):
    assert main("export", tmp_path / "missing.safetensors", tmp_path / "out.pt") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"clip-jax: error: {tmp_path / 'missing.safetensors'}: no such file"], err
    assert not (tmp_path / "out.pt").exists()


def test_export_to_an_unknown_suffix_is_one_line(tiny_file, tmp_path, capsys):
    assert main("export", tiny_file, tmp_path / "out.npz") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown checkpoint suffix '.npz'" in err[0], err


def test_version_prints_the_installed_versions(capsys):
    with pytest.raises(SystemExit) as e:
        main("--version")
    assert e.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"clip-jax {version('clip-jax')} (jax {version('jax')}, jaxlib {version('jaxlib')})"
