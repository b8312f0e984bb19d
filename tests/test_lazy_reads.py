"""Tensors read when used (LazyArray): a torch zip's and a safetensors file's tensors read from their place in
the file, layouts changed as they are copied out, each array handed to the model as it is.

What a lazy read must give: the same values as the eager read (views, tied tensors, TorchScript archives);
a writable, C-contiguous array aligned for jax's CPU backend to take without a copy; a corrupt storage
(bad CRC-32) or a file cut after it was opened refused with a CheckpointError naming the file, never a
crash (a mapping past the end of a file faults when read); and, for outside bytes, the fuzz contract of
tests/fuzz.py: every tensor read, or the project's own error, within the time and memory bounds.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import given, strategies as st

import clip_jax
from clip_jax.checkpoint.torch_files import (
    CheckpointError,
    LazyArray,
    apply_lazily,
    copy_into,
    load_state_dict,
)
from clip_jax.checkpoint.torch_save_reader import ALIGNMENT
from clip_jax.checkpoint.torch_writer import write_safetensors, write_torch_zip
from tests.fuzz import FUZZ, any_bytes, bounded
from tests.test_fuzz_checkpoints import seeds
from tests.tiny import TINY, tiny_params


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _read_all(path: Path) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in load_state_dict(path, lazy=True).items()}


@pytest.mark.parametrize("seed", ["zip", "torchscript", "safetensors"])
def test_lazy_reads_equal_the_eager_read(tmp_path, seed):
    """Views of one storage (an offset 2x3 view, a tied name), float16, int64 and 0-d tensors, TorchScript's
    archive: each lazily read tensor equals the eager read, in dtype, shape and value."""
    path = _write(tmp_path, f"{seed}.bin", seeds()[seed])
    lazy = load_state_dict(path, lazy=True)
    assert all(isinstance(v, LazyArray) for v in lazy.values())
    eager = load_state_dict(path)
    assert set(lazy) == set(eager)
    for name, value in eager.items():
        got = np.asarray(lazy[name])
        assert got.dtype == value.dtype and got.shape == value.shape, name
        np.testing.assert_array_equal(got, value)


def test_a_read_is_writable_contiguous_and_aligned(tmp_path):
    """np.asarray(lazy) is an array jax's CPU backend takes as it is (64-byte aligned, C order, its own),
    also after a transpose and a cast; and jax.device_put does take it without a copy."""
    rng = np.random.default_rng(0)
    tensors = {"w": rng.standard_normal((96, 256), np.float32), "b": rng.standard_normal(5, np.float32)}
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors)
    lazy = load_state_dict(path, lazy=True)
    transposed = apply_lazily(lambda xs: xs[0].T, [lazy["w"]])
    for value, want, dtype in ((lazy["w"], tensors["w"], None), (transposed, tensors["w"].T, None),
                               (lazy["b"], tensors["b"], None), (lazy["w"], tensors["w"], np.float16)):
        got = np.asarray(value, dtype)
        assert got.flags.writeable and got.flags.c_contiguous and got.ctypes.data % ALIGNMENT == 0
        np.testing.assert_array_equal(got, want.astype(dtype or want.dtype))
    if jax.default_backend() == "cpu":
        host = np.asarray(lazy["w"])
        assert jax.device_put(host).unsafe_buffer_pointer() == host.ctypes.data


def test_an_unchanged_layout_is_the_source_itself(tmp_path):
    """A layout function that hands its input back gives the source LazyArray (read as it is, not copied
    out of a mapping); a transpose gives a new LazyArray of the transposed shape."""
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"w": np.ones((3, 4), np.float32)})
    (source,) = load_state_dict(path, lazy=True).values()
    assert apply_lazily(lambda xs: xs[0], [source]) is source
    assert apply_lazily(lambda xs: xs[0].T, [source]).shape == (4, 3)


@pytest.mark.parametrize("shape, axes", [((300, 700), (1, 0)), ((64, 3, 5, 7), (2, 3, 1, 0)), ((70, 1000), (1, 0))])
def test_copy_into_transposes_and_casts(shape, axes):
    """The blocked copy of a transposed array (a block of its last axis at a time) equals numpy's."""
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32).transpose(axes)
    for dtype in (np.float32, np.float16):
        out = np.empty(x.shape, dtype)
        copy_into(out, x)
        np.testing.assert_array_equal(out, x.astype(dtype))


def _flip_storage_byte(path: Path, out: Path) -> Path:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len] ^= 0xFF
    out.write_bytes(bytes(data))
    return out


def test_a_corrupt_storage_is_refused_when_read(tmp_path):
    """A flipped byte in a storage: the lazy read refuses it (bad CRC-32, checked beside the read) with a
    CheckpointError naming the file, and so does clip_jax.load of a whole model."""
    path = _flip_storage_byte(_write(tmp_path, "zip.pt", seeds()["zip"]), tmp_path / "flipped.pt")
    with pytest.raises(CheckpointError, match="CRC") as info:
        _read_all(path)
    assert str(path) in str(info.value)
    sd = {k: np.ascontiguousarray(v) for k, v in clip_jax.checkpoint.to_torch_state_dict(tiny_params(TINY)).items()}
    write_torch_zip(tmp_path / "model.pt", sd)
    flipped = _flip_storage_byte(tmp_path / "model.pt", tmp_path / "model_flipped.pt")
    with pytest.raises(CheckpointError, match="CRC"):
        clip_jax.load(flipped, config=TINY)


@pytest.mark.parametrize("seed, name", [("zip", "zip.pt"), ("safetensors", "st.safetensors")])
def test_a_file_cut_after_it_was_opened_is_refused(tmp_path, seed, name):
    """The file shrinks between its header's check and the reads (a download replaced, a disk full): each
    read and view refuses with a CheckpointError, not a fault on a mapping past the file's end."""
    path = _write(tmp_path, name, seeds()[seed])
    lazy = load_state_dict(path, lazy=True)
    path.write_bytes(seeds()[seed][:64])
    for value in lazy.values():
        if value.shape and np.prod(value.shape):
            with pytest.raises(CheckpointError, match=str(path)):
                np.asarray(value)
            with pytest.raises(CheckpointError, match=str(path)):
                np.asarray(value, np.float64)  # a cast copies out of a view (a mapping)


def _read_lazily(path: Path) -> None:
    for value in load_state_dict(path, lazy=True).values():
        np.asarray(value)
        np.asarray(value, np.float64)


@pytest.mark.parametrize("seed", ["zip", "torchscript", "safetensors"])
@FUZZ
@given(data=st.data())
def test_fuzz_lazy_reads(tmp_path_factory, seed, data):
    """Mutated files read lazily, every tensor read and cast: the values, or the project's own error, in
    bounded time and memory (a storage's CRC-32 refused only when read is still refused)."""
    path = tmp_path_factory.mktemp("lazy") / f"{seed}.bin"
    path.write_bytes(data.draw(any_bytes(seeds()[seed]), label="file"))
    bounded(lambda: _read_lazily(path))
