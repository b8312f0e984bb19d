"""big_vision's SigLIP checkpoints (`.npz`), read and written without running anything from them.

A big_vision checkpoint is numpy's .npz: a zip of `.npy` members named by the flattened parameter tree,
`params/img/Transformer/encoderblock_3/MultiHeadDotProductAttention_0/query/kernel.npy`, ...; `params/t`
and `params/b` are the logit scale (a log) and bias. Attention kernels keep their heads as an axis
([D, heads, head_dim]), so the heads are read from the file, not guessed. A model trained with
`scan=True` stacks its blocks (`encoderblock/...`, a leading layer axis); those are read one layer at a
time. Members other than `params/...` (an optimizer's state) are never read.

    checkpoint = read_big_vision("webli_en_b16_224.npz")                  # -> Checkpoint
    checkpoint = read_big_vision("webli_en_so400m_384.npz", "So400m/14-384")  # the variant: a check, and the size
    write_big_vision("out.npz", ours, config)                              # what the reader and big_vision read

Each member's .npy header is read and checked first (allow_pickle is never set: no object arrays; a
float dtype; the byte count its shape implies equals the member's), the zip's structure by
torch_save_reader's checks (local headers, overlaps, inflation), so memory is the largest array read,
and a LazyArray (lazy=True) reads each weight when the model is built from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config_fields import MAX_LAYERS
from ..errors import ClipJaxError, InputError
from ..fileio import atomic_write
from ..siglip_config import SiglipConfig, siglip_config_from_state_dict
from .result import Checkpoint
from .siglip_names import BIG_VISION, as_checkpoint, from_ours, to_ours, torch_style
from .torch_files import CheckpointError, LazyArray
from .torch_pickle import brief, read_exact
from .torch_save_reader import _ZIP_ERRORS, _check_inflation, _ZipLayout

PARAMS = "params/"
MAX_HEADER = 10_000  # numpy's own bound for a .npy header it reads safely
_CHUNK = 1 << 22
# a scanned (stacked) block and the per-block name it holds
_SCANNED = re.compile(r"(img/Transformer|txt/Encoder_0)/encoderblock/(.+)$")
# the heads of each tower, from the first block's query kernel [D, heads, head_dim]
_QUERY = "{}/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"


@dataclass(frozen=True)
class _Member:
    """One .npy member: where its data starts in the file (stored members), its header's length, shape,
    dtype and order."""

    path: str
    info: zipfile.ZipInfo
    start: int
    header_len: int
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def read(self, index: int | None = None) -> np.ndarray:
        """The array (or its `index`-th entry along the first axis), in native byte order."""
        try:
            x = self._read(index)
        except (*_ZIP_ERRORS, RuntimeError) as e:  # RuntimeError: zipfile's for an encrypted member
            raise CheckpointError(f"{self.path}: {self.info.filename}: {type(e).__name__}: {brief(str(e))}") from None
        return x.astype(x.dtype.newbyteorder("=")) if not x.dtype.isnative else x

    def _read(self, index: int | None) -> np.ndarray:
        stored = self.info.compress_type == zipfile.ZIP_STORED
        if index is not None and stored and not self.fortran:  # a scanned block: its own bytes only
            per = self.nbytes // max(1, self.shape[0])
            with open(self.path, "rb") as raw:
                raw.seek(self.start + self.header_len + index * per)
                buf = read_exact(raw, per, f"{self.info.filename}[{index}]")
            return buf.view(self.dtype).reshape(self.shape[1:])
        whole = self._whole(stored)
        return whole if index is None else np.ascontiguousarray(whole[index])

    def _whole(self, stored: bool) -> np.ndarray:
        if stored:  # checked against the CRC as it is read
            with open(self.path, "rb") as raw:
                raw.seek(self.start)
                crc = zlib.crc32(raw.read(self.header_len))
                buf = read_exact(raw, self.nbytes, self.info.filename)
            if zlib.crc32(buf, crc) != self.info.CRC:
                raise CheckpointError(f"{self.path}: {self.info.filename} is corrupt: bad CRC-32")
        else:
            buf = np.empty(self.nbytes, np.uint8)
            with zipfile.ZipFile(self.path) as zf, zf.open(self.info) as f:
                f.read(self.header_len)
                view, done = memoryview(buf), 0
                while done < self.nbytes:
                    got = f.readinto(view[done:done + _CHUNK])
                    if not got:
                        raise CheckpointError(f"{self.path}: {self.info.filename} ends after {done} bytes")
                    done += got
                while f.read(_CHUNK):  # to the end, so that zipfile checks the CRC
                    pass
        if self.fortran:
            return buf.view(self.dtype).reshape(self.shape[::-1]).T
        return buf.view(self.dtype).reshape(self.shape)


def _header(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, layout: _ZipLayout) -> _Member:
    """A member's .npy header, read and checked against the member's size."""
    name = info.filename
    start = layout.data_offset(info)
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise CheckpointError(f"{name}: a stored member of {info.compress_size} bytes declares {info.file_size}")
    with zf.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f, max_header_size=MAX_HEADER)
        except (ValueError, SyntaxError, TypeError, OverflowError) as e:  # numpy's for a malformed header
            raise CheckpointError(f"{name}: not a .npy header ({type(e).__name__}: {brief(str(e))})") from None
        header_len = f.tell()
    if dtype.hasobject or dtype.kind != "f" or dtype.fields is not None:
        raise CheckpointError(f"{name}: dtype {brief(str(dtype))}, not a floating-point weight")
    member = _Member(path, info, start, header_len, tuple(shape), dtype, bool(fortran))
    if member.nbytes != info.file_size - header_len:
        raise CheckpointError(f"{name}: shape {member.shape} of {dtype} is {member.nbytes} bytes; the member holds "
                              f"{info.file_size - header_len}")
    return member


def npz_members(path: str | os.PathLike) -> dict[str, _Member]:
    """The .npz's `params/` members (all of them, if none is) by parameter name (no `params/`, no `.npy`),
    each header read and checked; no array is read."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
            infos = zf.infolist()
            bad = [i.filename for i in infos if not i.filename.endswith(".npy") or i.is_dir()]
            if bad:
                raise CheckpointError(f"{bad[0][:200]!r} is not a .npy member: not a numpy .npz")
            if any(i.filename.startswith(PARAMS) for i in infos):
                infos = [i for i in infos if i.filename.startswith(PARAMS)]
            _check_inflation(infos)
            layout = _ZipLayout(zf, raw)
            members = [_header(path, zf, info, layout) for info in infos]
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (*_ZIP_ERRORS, RuntimeError) as e:  # RuntimeError: zipfile's for an encrypted member
        raise CheckpointError(f"{path}: not a readable .npz (zip) file: {type(e).__name__}: {brief(str(e))}") from None
    out = {}
    for m in members:
        name = m.info.filename.removeprefix(PARAMS).removesuffix(".npy")
        if name in out:
            raise CheckpointError(f"{path}: {name!r} twice")
        out[name] = m
    return out


def _unscanned(members: Mapping[str, _Member], path: str) -> dict[str, Any]:
    """Every member as a LazyArray; a scanned block's [layers, ...] member as one per layer."""
    out: dict[str, Any] = {}
    for name, m in members.items():
        scanned = _SCANNED.match(name)
        if not scanned:
            out[name] = LazyArray(m.shape, m.dtype.newbyteorder("="), m.read)
            continue
        if not m.shape or m.shape[0] > MAX_LAYERS:
            raise CheckpointError(f"{path}: {name}: a scanned block of shape {m.shape}: expected [layers <= "
                                  f"{MAX_LAYERS}, ...]")
        for i in range(m.shape[0]):
            layer = f"{scanned[1]}/encoderblock_{i}/{scanned[2]}"
            if layer in members:
                raise CheckpointError(f"{path}: {layer} is both scanned and not")
            out[layer] = LazyArray(m.shape[1:], m.dtype.newbyteorder("="), lambda m=m, i=i: m.read(i))
    return out


def _heads(arrays: Mapping[str, Any], path: str) -> tuple[int, int]:
    """(vision, text) heads from the first blocks' query kernels [D, heads, head_dim]."""
    heads = []
    for tower in ("img/Transformer", "txt/Encoder_0"):
        shape = arrays[_QUERY.format(tower)].shape
        if len(shape) != 3:
            raise CheckpointError(f"{path}: {_QUERY.format(tower)}: shape {shape}, expected [D, heads, head_dim]")
        heads.append(shape[1])
    return heads[0], heads[1]


def _with_variant(config: SiglipConfig, variant: str, path: str) -> SiglipConfig:
    """The config the weights say, checked against big_vision's variant name ("B/16", "So400m/14-384"),
    which also gives the image size where the patch doesn't divide it (384 px in 27 patches of 14)."""
    try:
        said = SiglipConfig.from_name(variant).vision
    except ClipJaxError as e:
        raise type(e)(f"{path}: {e}") from None
    v = config.vision
    for field in ("width", "layers", "heads", "mlp_width", "patch_size"):
        if getattr(said, field) != getattr(v, field):
            raise InputError(f"{path}: variant {variant!r} has vision.{field} {getattr(said, field)}; the weights "
                             f"{getattr(v, field)}")
    size = re.search(r"-(\d+)", variant.partition("/")[2])
    if size:
        if int(size[1]) // v.patch_size != v.grid_size:
            raise InputError(f"{path}: variant {variant!r} has {int(size[1]) // v.patch_size} patches a side; "
                             f"the position embedding {v.grid_size}")
        return dataclasses.replace(config, vision=dataclasses.replace(v, image_size=int(size[1])))
    return config


def read_big_vision_state_dict(path: str | os.PathLike, variant: str | None = None
                               ) -> tuple[SiglipConfig, dict[str, Any]]:
    """A big_vision SigLIP .npz -> (config, our torch-style names -> LazyArrays). The config is the
    arrays' shapes (heads from the attention kernels), checked against `variant` when given; activations
    are big_vision's (tanh GELU), LayerNorm eps flax's 1e-6."""
    path = os.fspath(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    arrays = _unscanned(npz_members(path), path)
    ours = to_ours(arrays, BIG_VISION, "clip", f"{path}: ")
    try:
        config = siglip_config_from_state_dict(ours, heads=_heads(arrays, path))
    except ClipJaxError as e:
        raise type(e)(f"{path}: {e}") from None
    return (_with_variant(config, variant, path) if variant else config), ours


def read_big_vision(path: str | os.PathLike, variant: str | None = None, *, lazy: bool = False) -> Checkpoint:
    """A big_vision SigLIP .npz -> Checkpoint (kind "clip"). lazy: each weight a LazyArray, read from its
    member when used (memory: the model and one array); else read now, one member at a time."""
    config, ours = read_big_vision_state_dict(path, variant)
    checkpoint = as_checkpoint(ours, config, "clip", f"big_vision .npz ({variant or 'shapes of the weights'})", path)
    if lazy:
        return checkpoint
    return checkpoint._replace(params={k: np.asarray(v) for k, v in checkpoint.params.items()})


def is_big_vision_npz(path: str | os.PathLike) -> bool:
    """A zip (.npz) whose members are big_vision's SigLIP parameters (`params/img/...`, `params/txt/...`)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (*_ZIP_ERRORS, OSError):
        return False
    return any(n.startswith((f"{PARAMS}img/", "img/")) for n in names) and any(
        n.startswith((f"{PARAMS}txt/", "txt/")) for n in names)


def write_big_vision(path: str | os.PathLike, params: Mapping[str, Any], config: SiglipConfig) -> Path:
    """A SigLIP's params (our torch-style names, or flat clip_jax names) as big_vision's .npz (`params/...`
    members, one block per layer, as transformers' conversion script reads), written atomically, one
    member at a time (memory: one converted array)."""
    pairs = from_ours(torch_style(params, config), BIG_VISION, "clip", (config.vision.heads, config.text.heads))

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, array in pairs:
                with zf.open(f"{PARAMS}{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)

    atomic_write(path, write)
    return Path(path)


__all__ = ["is_big_vision_npz", "npz_members", "read_big_vision", "read_big_vision_state_dict", "write_big_vision"]
