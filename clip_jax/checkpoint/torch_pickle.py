"""The pickle inside a PyTorch checkpoint, unpickled without torch and without running its code.

Pickle is a small programming language: a checkpoint can name any importable
callable and have the loader call it.  This module therefore never uses
`pickle.load` or `torch.load`.  It unpickles with an `Unpickler` whose
`find_class` answers only from a fixed allow-list of inert stand-ins (a few
torch names are mapped to local functions that merely *record* what the file
describes), and it accepts persistent ids only of the exact shape torch writes
for tensor storages.  Tensors are materialised afterwards from raw bytes, after
every view has been bounds-checked against its storage, within a memory budget
decided before anything is read.  torch itself is never imported.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
import re
import reprlib
from typing import Any, BinaryIO, Callable

import ml_dtypes
import numpy as np

from ..errors import ClipJaxError


class CheckpointError(ClipJaxError, ValueError):
    """The checkpoint was refused or could not be read.

    The message always starts with the file's path and says what was wrong.
    """


# --- inert stand-ins for the objects a checkpoint's pickle may mention ----------------------------


class _Inert:
    """Base of every object the file can get its hands on (via find_class or
    persistent_load).  The pickle BUILD opcode calls `__setstate__` when it
    exists, otherwise it writes attributes; refusing here means a file can
    neither alter shared stand-ins (and so poison later loads) nor tensors.
    Plain functions are never handed out for the same reason: BUILD could set
    their `__defaults__`.
    """

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError(f"pickle tried to modify {self!r}")


class _Function(_Inert):
    """An allow-listed callable, as the file sees it."""

    __slots__ = ("qualified_name", "func")

    def __init__(self, qualified_name: str, func: Callable[..., Any]):
        self.qualified_name = qualified_name
        self.func = func

    def __call__(self, *args: Any) -> Any:
        return self.func(*args)

    def __repr__(self) -> str:
        return self.qualified_name


class _StorageType(_Inert):
    """Stand-in for `torch.FloatStorage` & co: only knows its element dtype.

    Instances (not classes) are handed to the unpickler, so the pickle cannot
    instantiate them with NEWOBJ / REDUCE / INST.
    """

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = np.dtype(dtype)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


# Storage classes torch writes for each supported dtype (torch 2.x still writes
# these legacy "typed storage" names for tensors of the classic dtypes). The one
# table of them: export.py writes a dtype's storage as the inverse of this.
STORAGE_DTYPES: dict[str, type] = {
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "DoubleStorage": np.float64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_STORAGE_TYPES = {name: _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()}


class _StorageRef(_Inert):
    """A storage the pickle referred to: where its bytes live, not the bytes."""

    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key = key
        self.dtype = dtype
        self.numel = numel

    def __repr__(self) -> str:
        return f"storage {self.key!r}"


class _TensorRef(_Inert):
    """A bounds-checked view (offset, size, stride) into a storage."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride

    def __repr__(self) -> str:
        return f"tensor {self.size} in {self.storage!r}"


class _ScriptObject:
    """Stand-in for every TorchScript class `__torch__.<...>.<Name>`.

    The pickle creates these with NEWOBJ and fills them with BUILD; we only
    record the state dict.  No code from the archive (`code/`) is ever read.
    """

    __slots__ = ("state",)
    qualified_name = "__torch__"

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _state_of(obj: _ScriptObject) -> Any:
    return getattr(obj, "state", None)  # unset when the pickle never BUILDs it


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40


def brief(value: Any) -> str:
    """repr(value), bounded in length and depth: a pickle's values may be nested or huge."""
    try:
        return _REPR.repr(value)
    except (ValueError, RecursionError):  # e.g. an int past Python's limit on digits it converts
        return f"<{type(value).__name__}>"


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass; torch never writes it here


def _int_tuple(value: Any, what: str) -> tuple:
    if not isinstance(value, (tuple, list)) or not all(_is_int(v) for v in value):
        raise CheckpointError(f"tensor {what} must be a tuple of ints, got {brief(value)}")
    if len(value) > 64:  # numpy's limit on dimensions
        raise CheckpointError(f"tensor has {len(value)} dimensions; at most 64 are supported")
    return tuple(value)


# No storage, offset, dimension or stride of a real tensor comes near this (256 Ti elements); past it, numpy's
# 64-bit sizes and strides (in bytes) could overflow, and a dimension of 0 elsewhere would hide it from the
# bounds check.
MAX_EXTENT = 1 << 48


def _check_view(storage: _StorageRef, offset: int, size: tuple, stride: tuple) -> None:
    """Refuse any view that would read outside its storage."""
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {brief(size)} and stride {brief(stride)} differ in length")
    if not all(0 <= v < MAX_EXTENT for v in (offset, *size, *stride)):
        raise CheckpointError(
            f"tensor view offset={brief(offset)} size={brief(size)} stride={brief(stride)} has entries "
            f"that are negative or 2**48 or more"
        )
    if math.prod(size) == 0:
        end = offset  # an empty view may sit at the very end of its storage
    else:
        end = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if end > storage.numel:
        raise CheckpointError(
            f"tensor view offset={offset} size={size} stride={stride} needs {end} elements, "
            f"past the end of storage {storage.key!r} ({storage.numel} elements)"
        )


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRef:
    """Replaces `torch._utils._rebuild_tensor_v2`: validate and record the view."""
    if not isinstance(storage, _StorageRef):
        raise CheckpointError(f"tensor storage must come from a persistent id, got {type(storage).__name__}")
    if not _is_int(storage_offset):
        raise CheckpointError(f"tensor storage offset must be an int, got {brief(storage_offset)}")
    size = _int_tuple(size, "size")
    stride = _int_tuple(stride, "stride")
    # Metadata only ever carries the conj/neg view bits; a set bit would change
    # the values, which we do not emulate.
    if metadata and (not isinstance(metadata, dict) or any(metadata.values())):
        raise CheckpointError(f"tensor metadata {brief(metadata)} (conj/neg views) is not supported")
    _check_view(storage, storage_offset, size, stride)
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    """Replaces `torch._utils._rebuild_parameter`: a Parameter is just its data."""
    if not isinstance(data, _TensorRef):
        raise CheckpointError(f"parameter data must be a tensor, got {type(data).__name__}")
    return data


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any, state: Any) -> Any:
    """Replaces `torch._utils._rebuild_parameter_with_state`; the state is dropped."""
    return _rebuild_parameter(data)


def _identity(value: Any, *type_tag: Any) -> Any:
    """Replaces `torch.jit._pickle` helpers that only attach TorchScript type tags."""
    return value


def _functions(module: str, **funcs: Callable[..., Any]) -> dict[tuple[str, str], _Function]:
    return {(module, name): _Function(f"{module}.{name}", f) for name, f in funcs.items()}


# Exact (module, name) -> object the pickle receives.  Nothing else resolves.
TORCH_GLOBALS: dict[tuple[str, str], Any] = {
    # A C type: immutable, and calling it with any arguments only builds a dict.
    ("collections", "OrderedDict"): collections.OrderedDict,
    **_functions(
        "torch._utils",
        _rebuild_tensor_v2=_rebuild_tensor_v2,
        _rebuild_parameter=_rebuild_parameter,
        _rebuild_parameter_with_state=_rebuild_parameter_with_state,
    ),
    **{("torch", name): storage_type for name, storage_type in _STORAGE_TYPES.items()},
}

# Extra names TorchScript's data.pkl uses for typed attributes (Dict[str, int],
# List[int], ...).  Module objects themselves come from `_script_class`.
TORCHSCRIPT_GLOBALS: dict[tuple[str, str], Any] = {
    **TORCH_GLOBALS,
    **_functions(
        "torch.jit._pickle",
        restore_type_tag=_identity,
        build_intlist=_identity,
        build_doublelist=_identity,
        build_boollist=_identity,
        build_tensorlist=_identity,
    ),
}

ALLOWED_GLOBALS = frozenset(f"{m}.{n}" for m, n in TORCHSCRIPT_GLOBALS) | {"__torch__.*"}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals only from an allow-list.

    `find_class` is the single place the C unpickler turns names into objects
    (GLOBAL, STACK_GLOBAL, INST, OBJ and EXT all go through it), so an exact
    allow-list here means the file can only ever call our inert stand-ins.
    """

    def __init__(
        self,
        file: BinaryIO,
        allowed: dict[tuple[str, str], Any],
        persistent_load: Callable[[Any], Any] | None = None,
        torchscript: bool = False,
    ):
        super().__init__(file, fix_imports=False, encoding="ASCII")
        self._allowed = allowed
        self._load_persistent = persistent_load
        self._torchscript = torchscript
        self._script_classes: dict[str, type] = {}  # per load: nothing outlives it

    def find_class(self, module: str, name: str) -> Any:
        if self._torchscript and (module == "__torch__" or module.startswith("__torch__.")):
            return self._script_class(f"{module}.{name}")
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise CheckpointError(f"refused global {module:.100}.{name:.100}: not on the allow-list") from None

    def _script_class(self, qualified_name: str) -> type:
        """One inert `_ScriptObject` subclass per TorchScript class name."""
        cls = self._script_classes.get(qualified_name)
        if cls is None:
            name = qualified_name.rpartition(".")[2]
            cls = type(name, (_ScriptObject,), {"__slots__": (), "qualified_name": qualified_name})
            self._script_classes[qualified_name] = cls
        return cls

    def persistent_load(self, pid: Any) -> Any:
        if self._load_persistent is None:
            raise CheckpointError(f"unexpected persistent id {brief(pid)}")
        return self._load_persistent(pid)


# Storage keys torch writes are decimal numbers; anything else (notably "../x")
# is refused before it can be used to look up a file.
_KEY_RE = re.compile(r"[0-9A-Za-z_]{1,64}")


class StorageTable:
    """Validates persistent ids and remembers every storage the pickle uses."""

    def __init__(self, legacy: bool):
        self.legacy = legacy
        self.storages: dict[str, _StorageRef] = {}

    def __call__(self, pid: Any) -> _StorageRef:
        kind = pid[0] if isinstance(pid, tuple) and pid else pid
        if not isinstance(pid, tuple) or kind != "storage":
            raise CheckpointError(f"refused persistent id of kind {brief(kind)}: only 'storage' is allowed")
        expected = 6 if self.legacy else 5
        if len(pid) != expected:
            raise CheckpointError(f"storage persistent id has {len(pid)} fields, expected {expected}")
        _, storage_type, key, location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"storage type {brief(storage_type)} is not a known torch storage class")
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise CheckpointError(f"refused storage key {brief(key)}: not a plain storage name")
        if not isinstance(location, str) or not _is_int(numel) or not 0 <= numel < MAX_EXTENT:
            raise CheckpointError(f"malformed storage persistent id {brief(pid)}")
        if self.legacy and pid[5] is not None:
            raise CheckpointError(f"storage view metadata {brief(pid[5])} (pre-1.0 files) is not supported")

        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = _StorageRef(key, storage_type.dtype, numel)
        elif ref.dtype != storage_type.dtype or ref.numel != numel:
            # torch.save itself refuses to write this; a file that does is malformed.
            raise CheckpointError(f"storage {key!r} is referenced with two different types or sizes")
        return ref


def unpickle(data: bytes, allowed: dict, persistent_load=None, torchscript=False) -> Any:
    """Unpickle one pickle from `data` (at most MAX_PICKLE_BYTES), after `_scan_pickle` has checked it."""
    end = _scan_pickle(data)
    try:
        return _RestrictedUnpickler(io.BytesIO(data[:end]), allowed, persistent_load, torchscript).load()
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - the pickle is a program: its faults surface as any type
        # (stack underflow, a memo miss, an unknown protocol, APPEND to an int, calling a dict, ...)
        raise CheckpointError(f"malformed pickle: {type(err).__name__}: {brief(str(err))}") from None


# --- the memory budget: what reading may allocate, decided before allocating it -------------------

# A pickle's objects cost up to ~80 bytes per pickle byte (one empty container per opcode: 4 MiB of them
# unpickle to 324 MiB). Real ones are small: ViT-B/32's state dict pickle is 53 KB, ViT-bigG-14's 121 KB,
# its open_clip training checkpoint (with AdamW state) 355 KB. 2 MiB bounds a hostile one to ~160 MiB.
MAX_PICKLE_BYTES = 2 << 20
# Copies of views (slices, tied parameters) may take at most the bytes of the storages read, plus this.
COPY_SLACK = 16 << 20

_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _scan_pickle(data: bytes) -> int:
    """Walk a pickle's opcodes without building anything -> its length (up to and including STOP).

    Refuses what would make CPython's unpickler allocate before reading: a memo index far past the
    opcodes seen (its memo table is sized by the largest index: a 12-byte pickle can ask for 4 GB),
    and byte strings or frames longer than the data (preallocated at their declared length).
    """
    for ops, (op, arg, pos) in enumerate(_opcodes(data), 1):
        if op.name in _MEMO_PUTS and arg >= ops:  # picklers number memo entries 0, 1, 2, ...
            raise CheckpointError(f"pickle memo index {arg} at byte {pos} is past its {ops} opcodes")
        if op.name == "FRAME" and arg > len(data) - pos:
            raise CheckpointError(f"pickle frame of {arg} bytes at byte {pos} runs past its end")
    return pos + 1


def _opcodes(data: bytes):
    """pickletools.genops, its errors (unknown opcode, truncated argument, no STOP) as CheckpointError."""
    try:
        yield from pickletools.genops(data)
    except ValueError as err:
        raise CheckpointError(f"malformed pickle (or longer than {MAX_PICKLE_BYTES} bytes): {err}") from None


def read_pickle(file: BinaryIO, file_size: int, limit: int = MAX_PICKLE_BYTES) -> bytes:
    """The pickle starting at the file's position (legacy format); leaves the file just after it."""
    start = file.tell()
    data = file.read(min(limit, file_size - start))
    end = _scan_pickle(data)
    file.seek(start + end)
    return data[:end]


def _spans_storage(ref: _TensorRef) -> bool:
    """True when the view is its whole storage, contiguous: it can take the storage's buffer."""
    expected = 1
    for n, s in reversed(list(zip(ref.size, ref.stride))):
        if n != 1 and s != expected:
            return False
        expected *= n
    return ref.offset == 0 and expected == ref.storage.numel


def plan_copies(named: dict[str, _TensorRef]) -> dict[str, str]:
    """-> {storage key: the tensor name that takes its buffer}; every other view is copied.

    The first view spanning its whole storage takes it (tied parameters: the first name; a fused
    tensor saved with its slices: the whole one). Outputs never alias each other.
    """
    owners: dict[str, str] = {}
    for name, ref in named.items():
        if ref.storage.key not in owners and _spans_storage(ref):
            owners[ref.storage.key] = name
    return owners


def check_copy_budget(named: dict[str, _TensorRef], owners: dict[str, str]) -> None:
    """Refuse before reading when the copies would exceed the storages' bytes + COPY_SLACK.

    Views that repeat a storage many times, overlap themselves (stride 0) or expand beyond it are what
    makes a tiny file cost gigabytes; torch's own tied parameters and slices stay within the budget.
    """
    storages = {ref.storage.key: ref.storage for ref in named.values()}
    stored = sum(map(storage_nbytes, storages.values()))
    copies = {name: math.prod(ref.size) * ref.storage.dtype.itemsize
              for name, ref in named.items() if owners.get(ref.storage.key) != name}
    total = sum(copies.values())
    if total > stored + COPY_SLACK:
        name = max(copies, key=copies.get)
        ref = named[name]
        raise CheckpointError(
            f"tensor {brief(name)} (size {ref.size}, stride {ref.stride}, {ref.storage.dtype}) and the other views "
            f"would copy {total} bytes out of {len(storages)} storages of {stored} bytes; at most the storages' "
            f"bytes + {COPY_SLACK >> 20} MiB are copied (views repeating a storage or overlapping themselves)"
        )


def storage_nbytes(ref: _StorageRef) -> int:
    return ref.numel * ref.dtype.itemsize


# --- from unpickled object tree to named tensors --------------------------------------------------

_PREFIXES = ("module.", "_orig_mod.")
_PREFIX_RUN = re.compile("(?:" + "|".join(map(re.escape, _PREFIXES)) + ")*")


def strip_prefixes(name: str) -> str:
    """Drop DataParallel/DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes, any number of them,
    in one pass (a name of a million prefixes must not cost a million copies of itself)."""
    return name[_PREFIX_RUN.match(name).end():]


def named_tensors_from_dict(obj: Any) -> dict[str, _TensorRef]:
    """A state dict, or an open_clip training checkpoint wrapping one."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a state dict at the top level, found {type(obj).__name__}")
    if isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # open_clip: {'epoch', 'state_dict', 'optimizer', ...}
    out: dict[str, _TensorRef] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"state dict key {brief(key)} is not a string")
        if not isinstance(value, _TensorRef):
            continue  # e.g. bookkeeping entries; a state dict's payload is its tensors
        name = strip_prefixes(key)
        if name in out:
            raise CheckpointError(f"two entries map to {brief(name)} after removing module./_orig_mod. prefixes")
        out[name] = value
    if obj and not out:
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"no tensors at the top level of the state dict (keys: {keys})")
    return out


# Real module trees are a few levels deep (OpenAI's ViT: visual.transformer.resblocks.0.attn).
MAX_MODULE_DEPTH = 64


def named_tensors_from_script_module(root: Any) -> dict[str, _TensorRef]:
    """Dotted names for a TorchScript module tree, as `ScriptModule.state_dict()`.

    Every tensor attribute of a module is taken, and we recurse into attributes
    that are themselves modules (TorchScript objects carrying `training`).
    Without reading `code/` we cannot tell a parameter/buffer from a plain
    tensor attribute of a *scripted* module; traced modules only ever hold
    parameters, buffers and submodules, so for them the names match exactly.
    """
    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"TorchScript data.pkl holds {type(root).__name__}, not a module")
    out: dict[str, _TensorRef] = {}
    active: set[int] = set()  # modules on the current path, to refuse cycles

    def walk(module: _ScriptObject, prefix: str) -> None:
        state = _state_of(module)
        if not isinstance(state, dict):
            raise CheckpointError(f"TorchScript object {module.qualified_name} has no attribute dict")
        if id(module) in active:
            raise CheckpointError(f"TorchScript module tree has a cycle at {brief(prefix[:-1])}")
        if len(active) >= MAX_MODULE_DEPTH:  # before Python's own recursion limit, with a message that says so
            raise CheckpointError(f"TorchScript modules nested more than {MAX_MODULE_DEPTH} deep at {brief(prefix)}")
        active.add(id(module))
        for attr, value in state.items():
            if not isinstance(attr, str):
                raise CheckpointError(f"TorchScript attribute name {brief(attr)} is not a string")
            if isinstance(value, _TensorRef):
                out[prefix + attr] = value
            elif isinstance(value, _ScriptObject) and isinstance(_state_of(value), dict) \
                    and "training" in _state_of(value):  # modules carry `training`; other objects are not walked
                walk(value, f"{prefix}{attr}.")
        active.discard(id(module))

    walk(root, "")
    return out


# --- from raw storage bytes to numpy arrays -------------------------------------------------------


def storage_array(buf: np.ndarray, ref: _StorageRef, big_endian: bool) -> np.ndarray:
    """View a storage's bytes as a flat native-endian array of `ref.numel` items."""
    nbytes = ref.numel * ref.dtype.itemsize
    if len(buf) < nbytes:
        raise CheckpointError(
            f"storage {ref.key!r} has {len(buf)} bytes but {ref.numel} x {ref.dtype} needs {nbytes}"
        )
    raw = np.frombuffer(buf, dtype=np.uint8, count=nbytes)
    if big_endian and ref.dtype.itemsize > 1:
        raw.view(f"u{ref.dtype.itemsize}").byteswap(inplace=True)
    if ref.dtype == np.bool_:
        np.minimum(raw, 1, out=raw)  # any nonzero byte is True in torch
    return raw.view(ref.dtype)


def materialize(
    named: dict[str, _TensorRef], storages: dict[str, np.ndarray], owners: dict[str, str]
) -> dict[str, np.ndarray]:
    """Turn checked views into arrays: a storage's owner (see `plan_copies`) takes its buffer, the rest
    are copies."""
    out: dict[str, np.ndarray] = {}
    for name, ref in named.items():
        flat = storages[ref.storage.key]
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset:],
            shape=ref.size,
            strides=tuple(s * itemsize for s in ref.stride),
            writeable=False,
        )
        # Reshaping the storage itself avoids a second copy of the weights.
        out[name] = flat.reshape(ref.size) if owners.get(ref.storage.key) == name else view.copy()
    return out


def read_exact(file: BinaryIO, nbytes: int, what: str) -> np.ndarray:
    # np.empty, not bytearray(n): the file's bytes overwrite the buffer, so zero-filling it first would
    # be one more pass over every weight (~20% of the read time on a page-cached file).
    buf = np.empty(nbytes, np.uint8)
    got = file.readinto(memoryview(buf))
    if got != nbytes:
        raise CheckpointError(f"{what}: file ends after {got} of {nbytes} bytes")
    return buf
