"""Safe, torch-free reader for PyTorch checkpoints.

`load_state_dict(path)` returns a flat `{name: numpy.ndarray}` dict from

* `torch.save` zip archives (the default format since torch 1.6), TorchScript archives written by
  `torch.jit.save` (scripted or traced modules; OpenAI's original CLIP `.pt` files) and the legacy non-zip
  `torch.save` format (`_use_new_zipfile_serialization=False`): torch_save_reader.py,
* open_clip training checkpoints (`{'state_dict': ..., 'optimizer': ...}`), with
  `module.` / `_orig_mod.` prefixes removed,
* `.safetensors` files.

The format is chosen from the file's first bytes, not its suffix (`load_state_dict`). Every pickle is
read by torch_pickle.py's allow-list unpickler: never `pickle.load` or `torch.load`, and torch itself is
never imported.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import ml_dtypes  # also registers 'bfloat16' with numpy, which safetensors' numpy reader names

from .torch_pickle import CheckpointError, brief, strip_prefixes
from .torch_save_reader import (
    LazyArray,
    apply_lazily,
    copy_into,
    empty_aligned,
    file_array,
    load_legacy,
    load_zip,
    owned,
)

__all__ = ["CheckpointError", "LazyArray", "apply_lazily", "check_safetensors_dtypes", "copy_into", "empty_aligned",
           "file_array", "load_state_dict", "owned", "safetensors_arrays"]


# safetensors' dtype names -> numpy's (little-endian, as the format stores them)
_NUMPY = {"BOOL": "?", "U8": "u1", "I8": "i1", "U16": "<u2", "I16": "<i2", "U32": "<u4", "I32": "<i4", "U64": "<u8",
          "I64": "<i8", "F16": "<f2", "BF16": ml_dtypes.bfloat16, "F32": "<f4", "F64": "<f8"}


def safetensors_arrays(path: str | os.PathLike) -> dict[str, LazyArray]:
    """A safetensors file whose header safe_open has already validated (offsets, sizes) and whose
    dtypes check_safetensors_dtypes has passed -> each tensor as a LazyArray, in the file's order.
    A read copies one tensor from the file into a fresh array with a plain read; a view maps just that
    tensor's pages (let go with the view), for a layout change or a cast copied straight out of them."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    out = {}
    for key, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        shape, dtype = entry["shape"], _NUMPY[entry["dtype"]]
        out[key] = file_array(path, 8 + n + entry["data_offsets"][0], shape, dtype)
    return out


def _looks_like_safetensors(head: bytes, file_size: int) -> bool:
    """safetensors: <u64 LE header length><JSON header starting with '{'>."""
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 2 <= header_len <= file_size - 8 and head[8:9] == b"{"


# safetensors dtypes numpy holds (bfloat16 through ml_dtypes); others (float8, complex) are refused by name.
SAFETENSORS_DTYPES = frozenset({"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "BF16", "F32",
                                "F64"})


def check_safetensors_dtypes(f: Any) -> None:
    """Refuse, from an open safetensors file's header alone, a tensor of a dtype numpy can't hold."""
    for key in f.keys():
        dtype = f.get_slice(key).get_dtype()
        if dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"tensor {brief(key)} has dtype {brief(dtype)}, which clip_jax does not read "
                                  f"(it reads {', '.join(sorted(SAFETENSORS_DTYPES))})")


def _load_safetensors(path: str, lazy: bool = False) -> dict[str, Any]:
    # The package does its own bounds checks (header length, JSON, offsets, shapes against byte counts).
    # Imported here: the pickle formats' readers stay numpy and ml_dtypes alone (tests/test_budget.py
    # measures their memory from that baseline).
    from safetensors import SafetensorError, safe_open

    out = {}
    try:
        with safe_open(path, framework="np") as f:
            check_safetensors_dtypes(f)
            lazily = safetensors_arrays(path) if lazy else {}
            for key in f.keys():
                name = strip_prefixes(key)
                if name in out:
                    raise CheckpointError(
                        f"two entries map to {brief(name)} after removing module./_orig_mod. prefixes")
                out[name] = lazily[key] if lazy else f.get_tensor(key)
    except SafetensorError as err:
        raise CheckpointError(f"unreadable safetensors file: {err}") from None
    return out


def load_state_dict(path: str | os.PathLike, lazy: bool = False) -> dict[str, Any]:
    """Read a PyTorch checkpoint without torch and without running code from it.

    Returns a flat `{name: numpy.ndarray}` dict (bfloat16 as
    `ml_dtypes.bfloat16`).  Raises `CheckpointError` naming the file and
    the problem for anything refused, malformed or unreadable. lazy: a .safetensors file's tensors, and a
    torch zip's (stored, little-endian: what torch.save writes), as LazyArrays read from the file when
    used; a compressed or big-endian zip and the legacy format are read whole.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            file_size = os.fstat(f.fileno()).st_size
        if file_size == 0:
            raise CheckpointError("file is empty")
        if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            return load_zip(path, lazy)
        if _looks_like_safetensors(head, file_size):
            return _load_safetensors(path, lazy)
        if head.startswith(b"\x80"):  # pickle PROTO opcode: legacy torch.save
            return load_legacy(path)
        if head[8:9] == b"{":  # a safetensors header whose length field is wrong
            (header_len,) = struct.unpack("<Q", head[:8])
            raise CheckpointError(f"safetensors header length {header_len}: a header is at least 2 bytes and "
                                  f"at most the {file_size - 8} bytes that follow its length")
        raise CheckpointError(f"not a PyTorch checkpoint (unrecognised header {head[:8]!r})")
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except OSError as err:  # the file itself: missing, unreadable, a folder
        raise CheckpointError(f"{path}: cannot read checkpoint: {type(err).__name__}: {err}") from None
    except Exception as err:  # a last resort, chained so tests can tell it fired: each reader maps its own
        raise CheckpointError(f"{path}: cannot read checkpoint: {type(err).__name__}: {err}") from err
