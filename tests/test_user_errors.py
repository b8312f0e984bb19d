"""The command line's error boundary: clip_jax's own errors and OS errors on a named path are one line on
stderr and exit status 1; anything else is a bug and keeps its traceback. And mistakes a user makes are
clip_jax errors naming what is wrong (a missing key is not a KeyError)."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

import clip_jax
from clip_jax.cli import demo, main as cli
from clip_jax.cli.common import is_user_error
from clip_jax.config import MissingTensorError, config_from_state_dict
from clip_jax.errors import ClipJaxError, InputError, MissingExtraError, ShardError, SourceFallbackWarning
from clip_jax.fileio import DiskFullError, PathError
from clip_jax.jobs import search
from clip_jax.jobs.embed_folder import read_manifest

USER = [
    InputError("m.safetensors: not a clip_jax file"),
    MissingExtraError("clip-jax index needs faiss: pip install faiss-cpu"),
    ShardError("s.tar: cut short"),
    FileNotFoundError(errno.ENOENT, "No such file or directory", "missing.pt"),  # open()'s, with .filename
    FileNotFoundError("data/: no such folder"),  # clip_jax's, the path in the message
    PermissionError("out/: the folder is not writable"),
    IsADirectoryError(errno.EISDIR, "Is a directory", "out"),
    OSError(errno.ELOOP, "Too many levels of symbolic links", "loop"),
    PathError(errno.ELOOP, "Too many levels of symbolic links", "loop"),  # worded "loop: Too many ..."
    DiskFullError("out/m.safetensors"),
]
BUGS = [
    ValueError("operands could not be broadcast together with shapes (3,) (4,)"),  # numpy's
    TypeError("unsupported operand type(s)"),
    KeyError("visual.proj"),
    IndexError("list index out of range"),
    OSError("a socket closed"),  # an OS error on no path
    ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    RuntimeError("XLA: resource exhausted"),
]


@pytest.mark.parametrize("error", USER, ids=repr)
def test_a_user_error_is_one_line(monkeypatch, capsys, error):
    def run_index(args):
        raise error

    monkeypatch.setattr(cli, "run_index", run_index)
    assert is_user_error(error)
    assert cli.main(["index", "folder"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [f"clip-jax: error: {error}"]


def test_a_fallback_warning_is_one_line_before_the_error_it_explains(monkeypatch, capsys):
    """load's SourceFallbackWarning (a pretrained model's URL failed, its Hub copy is tried) is printed as
    one line, and before the error when the fallback fails too."""
    import warnings

    def run_index(args):
        warnings.warn("ViT-B/32: can't reach a.example; loading it from the Hugging Face Hub", SourceFallbackWarning)
        raise InputError("ViT-B/32: can't reach a.example nor b.example")

    monkeypatch.setattr(cli, "run_index", run_index)
    assert cli.main(["index", "folder"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "warning: ViT-B/32: can't reach a.example; loading it from the Hugging Face Hub",
        "clip-jax: error: ViT-B/32: can't reach a.example nor b.example"]


@pytest.mark.parametrize("error", BUGS, ids=repr)
def test_anything_else_is_a_bug_with_its_traceback(monkeypatch, capsys, error):
    def run_index(args):
        raise error

    monkeypatch.setattr(cli, "run_index", run_index)
    assert not is_user_error(error)
    with pytest.raises(type(error)) as raised:
        cli.main(["index", "folder"])
    assert raised.value is error and capsys.readouterr().err == ""  # Python prints it, with its traceback


def test_the_demo_draws_the_same_line(monkeypatch, capsys, tmp_path):
    """`clip-jax demo --model NAME` (no file: straight to clip_jax.load) has the same boundary."""
    def load(source):
        raise raised

    monkeypatch.setattr(clip_jax, "load", load)
    argv = ["--model", "ViT-B/32", "--out", str(tmp_path)]
    raised = InputError("unknown model 'ViT-B/32'")
    assert demo.main(argv) == 1
    assert capsys.readouterr().err.splitlines() == ["clip-jax demo: error: unknown model 'ViT-B/32'"]
    raised = ValueError("an internal shape mismatch")
    with pytest.raises(ValueError, match="internal shape mismatch"):
        demo.main(argv)


def test_the_error_types_keep_their_builtin_bases():
    assert issubclass(InputError, ClipJaxError) and issubclass(InputError, ValueError)
    assert issubclass(MissingExtraError, ImportError) and issubclass(ShardError, OSError)


def test_a_state_dict_without_clip_tensors():
    with pytest.raises(ValueError, match="cannot infer the architecture: the checkpoint has no 'visual.conv1.weight'"):
        config_from_state_dict({"visual.proj": np.zeros((4, 2))})
    assert issubclass(MissingTensorError, ValueError) and not issubclass(MissingTensorError, KeyError)


@pytest.mark.parametrize("call", [
    lambda folder: search.shard_files(folder, "audio"),
    lambda folder: search.search(folder, np.ones(4), space="audio"),
    lambda folder: search.index_search(folder, np.ones(4), space="audio"),
])
def test_an_unknown_search_space(tmp_path, call):
    with pytest.raises(ValueError, match="space must be one of \\('image', 'text'\\), got 'audio'"):
        call(tmp_path)


@pytest.mark.parametrize("shard", [{"items": 3, "rows": 3}, {"rows": 3, "errors": []}, [], {"items": "3", "rows": 3,
                                                                                           "errors": []}])
def test_a_manifest_whose_shard_lacks_a_field(tmp_path, shard):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"format": "clip_jax.embed", "shards": {"0": shard}}))
    with pytest.raises(ValueError, match="not a valid manifest \\(shard '0' lacks its items, rows or errors\\)"):
        read_manifest(path)


def test_a_labels_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_bytes("chien\nchat\nb\xe9b\xe9\n".encode("latin-1"))
    assert cli.main(["classify", str(tmp_path), "--labels-file", str(labels), "--model", "m.safetensors"]) == 1
    assert capsys.readouterr().err.splitlines() == [f"clip-jax: error: {labels}: not UTF-8 text (byte 12)"]
