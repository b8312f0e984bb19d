"""big_vision's .npz reader against hostile files: each returns or raises the project's own error naming
the file and the member, within a time and memory bound, without unpickling or allocating what a header
claims. The seed is a tiny SigLIP (width 8, one block a tower) written by write_big_vision."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given

from clip_jax import model as clip_model
from clip_jax.checkpoint import big_vision
from clip_jax.checkpoint.torch_names import abstract_as_built, to_torch_state_dict
from clip_jax.errors import ClipJaxError
from clip_jax.model import param_shapes
from clip_jax.roles import declarations
from clip_jax.siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

from .fuzz import FUZZ, bounded, mutated

TINY = SiglipConfig(embed_dim=8, vision=SiglipVisionConfig(image_size=8, patch_size=4, width=8, layers=1, heads=2,
                                                           mlp_width=16),
                    text=SiglipTextConfig(vocab_size=10, context_length=4, width=8, layers=1, heads=2, mlp_width=16))


def _tiny_ours() -> dict[str, np.ndarray]:
    model = clip_model.build(TINY, seed=3)
    return {k: np.asarray(v) for k, v in to_torch_state_dict(clip_model.flat_params(model),
                                                             clip_model.model_declarations(model)).items()}


OURS = _tiny_ours()


def _seed_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, array in _members().items():
            zf.writestr(f"params/{name}.npy", _npy(array))
    return buf.getvalue()


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array(f, array, allow_pickle=allow_pickle)
    return f.getvalue()


def _members() -> dict[str, np.ndarray]:
    from clip_jax.checkpoint.siglip_names import BIG_VISION, from_ours

    return dict(from_ours(OURS, BIG_VISION, "clip", (2, 2)))


def _write(path: Path, members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compress) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _valid(**change: bytes | None) -> dict[str, bytes]:
    """The seed's members as bytes, with `change` (name -> new bytes, or None: removed)."""
    members = {f"params/{k}.npy": _npy(v) for k, v in _members().items()}
    for name, data in change.items():
        key = f"params/{name.replace('__', '/')}.npy"
        if data is None:
            del members[key]
        else:
            members[key] = data
    return members


def _header(descr: str, shape: tuple[int, ...]) -> bytes:
    """A .npy version 1.0 header saying what the test wants, whatever follows it."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode().ljust(117) + b"\n"
    return np.lib.format.magic(1, 0) + struct.pack("<H", len(text)) + text


def refused(path: Path, *needles: str, variant: str | None = None) -> str:
    """Reading raises the project's error, within the time and memory bound, naming the file and every needle."""
    bounded(lambda: _read_all(path, variant))  # returns, or raises a ClipJaxError, in bounds
    with pytest.raises(ClipJaxError) as info:
        _read_all(path, variant)
    message = str(info.value)
    assert str(path) in message, message
    for needle in needles:
        assert needle in message, message
    return message


def _read_all(path: Path, variant: str | None = None) -> None:
    _, ours = big_vision.read_big_vision_state_dict(path, variant)
    for value in ours.values():
        np.asarray(value)


def test_seed_reads(tmp_path):
    path = tmp_path / "seed.npz"
    path.write_bytes(_seed_bytes())
    config, ours = big_vision.read_big_vision_state_dict(path)
    assert config == TINY
    assert all(np.array_equal(np.asarray(ours[k]), v) for k, v in OURS.items())
    checkpoint = big_vision.read_big_vision(path)
    assert checkpoint.config == TINY and checkpoint.kind == "clip"


@pytest.mark.parametrize("keep", [0, 10, 100, 0.3, 0.7, -22, -1])
def test_truncated(tmp_path, keep):
    data = _seed_bytes()
    n = keep if isinstance(keep, int) and keep >= 0 else (int(len(data) * keep) if keep < 1 else len(data) + keep)
    path = tmp_path / "cut.npz"
    path.write_bytes(data[:n])
    refused(path)


def test_huge_declared_shape(tmp_path):
    """A header claiming 4 TB is refused from the header: nothing of that size is allocated."""
    npy = _header("<f4", (10**12,)) + b"\0" * 4
    path = _write(tmp_path / "huge.npz", _valid(t=npy))
    refused(path, "params/t.npy", "1000000000000")


def test_zip_bomb_member(tmp_path):
    """A deflated member inflating 1000:1 past the budget is refused before it is inflated."""
    n = 40 << 20  # 160 MB of float32 zeros
    header = _header("<f4", (n,))
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in _valid(b=None).items():
            zf.writestr(name, data)
        with zf.open("params/b.npy", "w", force_zip64=True) as f:
            f.write(header)
            zeros = bytes(1 << 22)
            for _ in range(n * 4 // len(zeros)):
                f.write(zeros)
    refused(path, "params/b.npy", "inflates")


class Boom:
    """Unpickling this would create a file: the reader must never unpickle."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_object_dtype_never_unpickled(tmp_path):
    Boom.marker = str(tmp_path / "unpickled")
    npy = _npy(np.array([Boom()], dtype=object), allow_pickle=True)
    path = _write(tmp_path / "obj.npz", _valid(img__embedding__bias=npy))
    refused(path, "params/img/embedding/bias.npy", "object")
    assert not (tmp_path / "unpickled").exists()


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.complex64, "S4"])
def test_non_float_dtype(tmp_path, dtype):
    npy = _npy(np.zeros((1, 4, 8), dtype))
    path = _write(tmp_path / "int.npz", _valid(img__pos_embedding=npy))
    refused(path, "params/img/pos_embedding.npy", "not a floating-point weight")


def test_wrong_rank(tmp_path):
    path = _write(tmp_path / "rank.npz", _valid(img__pos_embedding=_npy(np.zeros((4, 8), np.float32))))
    refused(path, "img/pos_embedding (4, 8)")


def test_missing_key(tmp_path):
    path = _write(tmp_path / "missing.npz", _valid(txt__head__kernel=None))
    refused(path, "missing: txt/head/kernel")


def test_huge_block_index(tmp_path):
    members = _valid()
    members["params/img/Transformer/encoderblock_999999/LayerNorm_0/scale.npy"] = _npy(np.ones(8, np.float32))
    refused(_write(tmp_path / "index.npz", members), "encoderblock_999999", "block index")


def test_scanned_block_of_too_many_layers(tmp_path):
    members = _valid()
    members["params/img/Transformer/encoderblock/LayerNorm_0/scale.npy"] = _npy(np.ones((300, 1), np.float32))
    refused(_write(tmp_path / "scan.npz", members), "encoderblock/LayerNorm_0/scale", "scanned block")


def test_not_npy_member(tmp_path):
    members = {**_valid(), "params/code.py": b"import os"}
    refused(_write(tmp_path / "code.npz", members), "params/code.py", "not a .npy member")


def test_header_too_long(tmp_path):
    npy = np.lib.format.magic(2, 0) + struct.pack("<I", 20_000) + b"{" + b" " * 19_998 + b"\n"
    refused(_write(tmp_path / "long.npz", _valid(t=npy)), "params/t.npy", "not a .npy header")


def test_duplicate_member(tmp_path):
    members = list(_valid().items()) + [("params/t.npy", _npy(np.ones(1, np.float32)))]
    path = tmp_path / "twice.npz"
    with pytest.warns(UserWarning), zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    refused(path, "'t' twice")


def test_encrypted_member(tmp_path):
    path = tmp_path / "enc.npz"
    path.write_bytes(_seed_bytes())
    data = bytearray(path.read_bytes())
    for sig, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # the encrypted flag, local and central
        i = data.find(sig)
        while i >= 0:
            data[i + flags_at] |= 1
            i = data.find(sig, i + 4)
    path.write_bytes(bytes(data))
    refused(path)


def test_bad_crc(tmp_path):
    path = tmp_path / "crc.npz"
    data = bytearray(_seed_bytes())
    i = data.find(b"txt/head/kernel.npy")
    data[data.find(b"\n", i) + 5] ^= 0xFF  # a byte of the kernel's data
    path.write_bytes(bytes(data))
    refused(path, "CRC")


def test_variant_disagrees(tmp_path):
    path = tmp_path / "seed.npz"
    path.write_bytes(_seed_bytes())
    refused(path, "variant 'B/16'", "vision.width", variant="B/16")


@pytest.mark.parametrize("order", ["fortran", "big_endian", "compressed"])
def test_other_npy_layouts_read_alike(tmp_path, order):
    """Members numpy itself writes differently (Fortran order, big-endian, deflated) read to the same weights."""
    members = _members()
    if order == "fortran":
        members = {k: np.asfortranarray(v) for k, v in members.items()}
    elif order == "big_endian":
        members = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in members.items()}
    path = tmp_path / "other.npz"
    (np.savez_compressed if order == "compressed" else np.savez)(path, **{f"params/{k}": v for k, v in members.items()})
    _, ours = big_vision.read_big_vision_state_dict(path)
    assert all(np.array_equal(np.asarray(ours[k]), v) for k, v in OURS.items())


SEED = _seed_bytes()


@FUZZ
@given(data=mutated(SEED))
def test_big_vision_fuzz(data, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "fuzz.npz"
    path.write_bytes(data)
    bounded(lambda: _read_all(path))



def test_memory_is_one_array_at_a_time(tmp_path):
    """Reading every weight of a .npz one after the other peaks at about the largest array read, not the
    file: a scanned block's [layers, ...] member is read one layer at a time (its own bytes only)."""
    import tracemalloc

    layers, width, mlp = 4, 128, 2048  # the stacked MLP kernels: 4 MiB each, 1 MiB a layer
    config = SiglipConfig(embed_dim=width, vision=SiglipVisionConfig(image_size=8, patch_size=4, width=width,
                                                                     layers=layers, heads=2, mlp_width=mlp),
                          text=SiglipTextConfig(vocab_size=10, context_length=4, width=width, layers=layers, heads=2,
                                                mlp_width=mlp))
    from clip_jax.checkpoint.siglip_names import BIG_VISION, from_ours

    abstract = abstract_as_built(config)  # shapes only: random arrays of them, no model built
    rng = np.random.default_rng(0)
    flat = {k: rng.standard_normal(shape, dtype=np.float32) for k, shape in param_shapes(abstract).items()}
    members = dict(from_ours(to_torch_state_dict(flat, declarations(abstract)), BIG_VISION, "clip", (2, 2)))
    stacked: dict[str, list] = {}
    for name in [n for n in members if "/encoderblock_" in n]:
        tower, rest = name.split("/encoderblock_")
        index, leaf = rest.split("/", 1)
        stacked.setdefault(f"{tower}/encoderblock/{leaf}", []).append((int(index), members.pop(name)))
    members.update({k: np.stack([a for _, a in sorted(v)]) for k, v in stacked.items()})
    np.savez(tmp_path / "scanned.npz", **{f"params/{k}": v for k, v in members.items()})
    largest_layer = width * mlp * 4
    assert max(v.nbytes for v in members.values()) == layers * largest_layer
    tracemalloc.start()
    try:
        _, read = big_vision.read_big_vision_state_dict(tmp_path / "scanned.npz")
        tracemalloc.reset_peak()
        for value in read.values():
            np.asarray(value)  # read, laid out, let go
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a layer read, and its transpose: 2 layers' bytes, not the 4-layer member
    assert peak < 2.5 * largest_layer, peak
