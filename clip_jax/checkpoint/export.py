"""Export a clip_jax model back to PyTorch, without torch: `.pt` in torch.save's zip format, or
`.safetensors`, both with OpenAI/open_clip names and layouts.

    export(model, "finetuned.pt")                    # torch.load(..., weights_only=True) -> OrderedDict
    export(model, "finetuned.safetensors")           # safetensors.torch.load_file -> dict
    export(model, "release.pt", dtype="fp16_mix")    # OpenAI's release mix: fp16 weights, fp32 norms

Either file loads into open_clip's CLIP with `load_state_dict(sd, strict=True)` (and into OpenAI's
`build_model`), and `python -m convert` reads it back to identical params.

torch.save's format, written here by hand: a zip archive with one folder holding `data.pkl` (a pickle,
protocol 2, of an OrderedDict name -> tensor), `byteorder`, `version`, and each tensor's bytes as
`data/<key>`. A tensor is pickled as torch's own reduction, `torch._utils._rebuild_tensor_v2(storage, 0,
size, stride, False, OrderedDict())`, its storage as the persistent id ('storage', torch.<T>Storage,
key, 'cpu', numel). Those are exactly the globals `torch.load(weights_only=True)` allows. The data
records start at 64-byte boundaries, as torch aligns them (so `torch.load(mmap=True)` works too).
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from ..fileio import atomic_write, output_target
from ..model import declared_by_name, flat_params, model_declarations
from ..roles import Declared
from ..towers import kind_of
from .store import DTYPES, cast_params
from .torch_files import STORAGE_DTYPES
from .torch_names import to_torch_state_dict

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
FP16_MIX = "fp16_mix"
EXPORT_DTYPES = ("keep", *DTYPES, FP16_MIX)
ALIGNMENT = 64  # torch.save's data record alignment (`.storage_alignment`)

# numpy dtype -> torch's legacy storage class, the type tag torch.load reads a storage's dtype from:
# the reader's table, inverted.
STORAGE_TYPES = {np.dtype(dtype): name for name, dtype in STORAGE_DTYPES.items()}


# --- the state dict ---------------------------------------------------------------------------------


def fp16_mix(params: Mapping[str, np.ndarray], declared: Mapping[str, Declared] | None = None) -> dict[str, np.ndarray]:
    """OpenAI's release mix on flat clip_jax params (open_clip.model.convert_weights_to_lp): float16
    where the param's declared role says so (Linear and conv weights and biases, attention in_proj,
    the projections `proj`/`text_projection`); float32 for norms, BatchNorm statistics, embeddings and
    logit_scale. declared: the model's declarations (model_declarations); None: looked up by name."""
    out = {}
    for name, value in params.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) or value.dtype == ml_dtypes.bfloat16:
            info = declared[name] if declared is not None else declared_by_name(name)
            value = value.astype(np.float16 if info.role.fp16_in_release else np.float32)
        out[name] = value
    return out


def _flat(model_or_params) -> tuple[dict[str, np.ndarray], dict[str, Declared] | None]:
    """A model or flat params -> (flat numpy params, the model's declarations or None for a dict)."""
    if isinstance(model_or_params, Mapping):
        return {k: np.asarray(v) for k, v in model_or_params.items()}, None
    return {k: np.asarray(v) for k, v in flat_params(model_or_params).items()}, model_declarations(model_or_params)


def _cast(params: dict[str, np.ndarray], dtype: str, declared: Mapping[str, Declared] | None) -> dict[str, np.ndarray]:
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}; got {dtype!r}")
    return fp16_mix(params, declared) if dtype == FP16_MIX else cast_params(params, dtype)


def torch_state_dict(model_or_params, dtype: str = "keep") -> dict[str, np.ndarray]:
    """A CLIP (or flat clip_jax params) -> {OpenAI/open_clip name: numpy array in torch's layout}.
    BatchNorm layers also get the `num_batches_tracked` counter torch's modules keep (0), so that
    `load_state_dict(strict=True)` finds every key.

    dtype: "keep" (each param's own dtype), "float32", "float16", "bfloat16", or "fp16_mix" (OpenAI's).
    """
    params, declared = _flat(model_or_params)
    state_dict = to_torch_state_dict(_cast(params, dtype, declared), declared)
    for name in list(state_dict):
        if name.endswith(".running_mean"):
            state_dict[name[: -len("running_mean")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return state_dict


# --- torch.save's pickle ----------------------------------------------------------------------------


class _Pickle:
    """A protocol-2 pickle writer for exactly one shape of object: an OrderedDict of tensors as torch
    reduces them. Globals and repeated strings are memoized (BINPUT/BINGET) as pickle itself does."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.memo: dict[tuple, int] = {}

    def _memoized(self, key: tuple, write) -> None:
        if key in self.memo:
            i = self.memo[key]
            self.out += b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)  # BINGET / LONG_BINGET
            return
        write()
        i = self.memo[key] = len(self.memo)
        self.out += b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)  # BINPUT / LONG_BINPUT

    def global_(self, module: str, name: str) -> None:
        self._memoized(("global", module, name), lambda: self.out.extend(f"c{module}\n{name}\n".encode()))

    def str_(self, s: str, memo: bool = False) -> None:
        def write():
            b = s.encode("utf-8")
            self.out.extend(b"X" + struct.pack("<I", len(b)) + b)  # BINUNICODE

        self._memoized(("str", s), write) if memo else write()

    def int_(self, v: int) -> None:
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])  # BININT1
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)  # BININT2
        elif -(2**31) <= v < 2**31:
            self.out += b"J" + struct.pack("<i", v)  # BININT
        else:
            b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(b)]) + b  # LONG1

    def int_tuple(self, values: tuple[int, ...]) -> None:
        if not values:
            self.out += b")"  # EMPTY_TUPLE
            return
        self.out += b"("  # MARK
        for v in values:
            self.int_(v)
        self.out += b"t"  # TUPLE

    def empty_ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.out += b")R"  # EMPTY_TUPLE, REDUCE: OrderedDict()

    def tensor(self, key: str, array: np.ndarray) -> None:
        """_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict()), the storage a
        persistent id ('storage', torch.<T>Storage, key, 'cpu', numel): contiguous, not a view."""
        storage = STORAGE_TYPES[array.dtype]
        strides = tuple(int(np.prod(array.shape[i + 1:], dtype=np.int64)) for i in range(array.ndim))
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("  # MARK args, MARK persistent id
        self.str_("storage", memo=True)
        self.global_("torch", storage)
        self.str_(key)
        self.str_("cpu", memo=True)
        self.int_(int(array.size))
        self.out += b"tQ"  # TUPLE, BINPERSID
        self.int_(0)  # storage offset
        self.int_tuple(tuple(int(d) for d in array.shape))
        self.int_tuple(strides)
        self.out += b"\x89"  # NEWFALSE: requires_grad
        self.empty_ordered_dict()  # backward_hooks
        self.out += b"tR"  # TUPLE, REDUCE

    def state_dict(self, names: list[str], arrays: list[np.ndarray]) -> bytes:
        self.empty_ordered_dict()
        self.out += b"("  # MARK
        for key, (name, array) in enumerate(zip(names, arrays)):
            self.str_(name)
            self.tensor(str(key), array)
        self.out += b"u."  # SETITEMS, STOP
        return bytes(self.out)


def _contiguous_le(name: str, value: np.ndarray) -> np.ndarray:
    """C-contiguous, little-endian (torch's byteorder record says "little")."""
    value = np.asarray(value)
    if value.dtype.byteorder == ">":
        value = value.astype(value.dtype.newbyteorder("<"))
    if value.dtype not in STORAGE_TYPES:
        raise TypeError(f"{name}: cannot export a tensor of dtype {value.dtype} (shape {value.shape}); "
                        f"supported: {', '.join(sorted(str(d) for d in STORAGE_TYPES))}")
    return np.ascontiguousarray(value).reshape(value.shape)


def _write_record(zf: zipfile.ZipFile, name: str, data: bytes | np.ndarray, align: bool) -> None:
    """One zip entry; with `align`, an extra field pads the local header so the data starts at a
    multiple of ALIGNMENT, as torch's writer does."""
    payload = data if isinstance(data, bytes) else np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    size = len(payload) if isinstance(payload, bytes) else payload.size
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: same params, same bytes
    info.compress_type = zf.compression
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule for a zip64 local header
    if align and zf.compression == zipfile.ZIP_STORED:
        header = 30 + len(name.encode("utf-8")) + (20 if zip64 else 0)
        pad = (-(zf.start_dir + header + 4)) % ALIGNMENT
        info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB", as torch's writer names it
    with zf.open(info, "w", force_zip64=zip64) as f:
        f.write(payload if isinstance(payload, bytes) else memoryview(payload))


def write_torch_zip(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray], *, compress: bool = False) -> None:
    """Write {name: array} as torch.save(OrderedDict of tensors) would, atomically.

    compress: deflate the entries (smaller for compressible weights, such as zero rows; torch.load reads
    them, but `torch.load(mmap=True)` needs the default stored, aligned entries).
    """
    path = Path(path)
    # torch names the folder after the file; any single top folder loads.
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem) or "archive"
    names = list(state_dict)
    arrays = [_contiguous_le(k, state_dict[k]) for k in names]
    pickle_bytes = _Pickle().state_dict(names, arrays)

    def write(tmp: str) -> None:
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(tmp, "w", compression=method, allowZip64=True) as zf:
            _write_record(zf, f"{folder}/data.pkl", pickle_bytes, align=False)
            _write_record(zf, f"{folder}/.format_version", b"1", align=False)
            _write_record(zf, f"{folder}/.storage_alignment", str(ALIGNMENT).encode(), align=False)
            _write_record(zf, f"{folder}/byteorder", b"little", align=False)
            for key, array in enumerate(arrays):
                _write_record(zf, f"{folder}/data/{key}", array, align=True)
            _write_record(zf, f"{folder}/version", b"3\n", align=False)

    atomic_write(path, write)


def write_safetensors(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray]) -> None:
    """{name: array} as a .safetensors file (open_clip reads these with safetensors.torch.load_file)."""
    from safetensors.numpy import save_file

    # np.asarray(order="C"), not np.ascontiguousarray, which turns a 0-d logit_scale into shape (1,).
    tensors = {k: np.asarray(_contiguous_le(k, v), order="C") for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def export(model, path: str | os.PathLike, *, dtype: str = "keep", compress: bool = False,
           format: str = "torch") -> Path:
    """Write a CLIP (or flat clip_jax params) as a PyTorch checkpoint with OpenAI/open_clip names, or
    in transformers' format.

    path: `.pt`, `.pth` or `.bin` -> torch.save's zip format (an OrderedDict of tensors);
      `.safetensors` -> safetensors. The file is written atomically. With format="transformers", a
      folder: config.json, model.safetensors and preprocessor_config.json that transformers'
      CLIPModel.from_pretrained reads (CLIPTextModel[WithProjection] / CLIPVisionModel[WithProjection]
      for a single tower). A ResNet, or an open_clip option transformers' CLIP lacks, is refused.
    dtype: "keep" (as stored in the params), "float32", "float16", "bfloat16", or "fp16_mix" (OpenAI's
      release mix: fp16 weights, fp32 norms and embeddings).
    compress: deflate a .pt's entries (see write_torch_zip).
    -> the path written.
    """
    if format == "transformers":
        return _export_transformers(model, path, dtype)
    if format != "torch":
        raise ValueError(f"format must be 'torch' or 'transformers'; got {format!r}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (*TORCH_SUFFIXES, ".safetensors"):
        raise ValueError(f"{path}: unknown checkpoint suffix {path.suffix!r}; use one of "
                         f"{', '.join(TORCH_SUFFIXES)} (torch.save format) or .safetensors")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such directory")
    output_target(path)  # refuse a FIFO or device before the work
    state_dict = torch_state_dict(model, dtype)
    if suffix == ".safetensors":
        if compress:
            raise ValueError(f"{path}: compress applies to .pt files only")
        write_safetensors(path, state_dict)
    else:
        write_torch_zip(path, state_dict, compress=compress)
    return path


def _export_transformers(model, folder: str | os.PathLike, dtype: str) -> Path:
    from .transformers import write_folder  # transformers.py writes its weights with write_safetensors

    if isinstance(model, Mapping):
        raise TypeError("format='transformers' needs the model (its config goes into config.json), not params")
    kind, projection = kind_of(model)
    params, declared = _flat(model)
    return write_folder(folder, _cast(params, dtype, declared), model.config, kind, projection)


__all__ = ["EXPORT_DTYPES", "FP16_MIX", "export", "fp16_mix", "torch_state_dict", "write_safetensors",
           "write_torch_zip"]
