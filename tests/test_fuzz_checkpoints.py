"""The checkpoint readers against hostile bytes: every file either reads or is refused with the project's own
error (a CheckpointError naming the file), within tests/fuzz.py's time and memory bound.

Fuzzed, from small valid seeds written here by torch, safetensors and clip_jax itself:

- torch.save zip archives (a few tensors, two sharing a storage, an OrderedDict), both the whole file
  (zip structure, CRCs, local headers) and its data.pkl alone, re-zipped with valid CRCs so the mutations
  reach the unpickler;
- the legacy (non-zip) torch.save format, whose pickles lie in the file unprotected;
- a TorchScript archive (torch.jit.trace of a small module), whole and its data.pkl alone;
- raw pickle streams built opcode by opcode (tests/hostile.py), as a zip's data.pkl and a legacy main pickle;
- safetensors files: mutated bytes, and headers generated field by field (lengths zero, huge or past the
  end, JSON that isn't, unknown dtypes, offsets out of range or overlapping, shapes that don't match their
  bytes, metadata of the wrong type), through every entry point that reads one: load_state_dict (open_clip's
  .safetensors), store.is_converted and store.load (clip_jax's converted file, whose config is JSON too).

The default run takes a few seconds a reader; `pytest -m slow` runs the same readers with many more inputs.
Hand-written hostile files (exact bytes) are in tests/test_hostile_checkpoints.py.
"""

from __future__ import annotations

import collections
import functools
import io
import json
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from safetensors.numpy import save as safetensors_bytes

from clip_jax.checkpoint import store
from clip_jax.checkpoint.torch_files import load_state_dict
from clip_jax.config import CLIPConfig, TextConfig, VisionConfig
from clip_jax.errors import ClipJaxError
from tests import hostile as H
from tests.fuzz import FUZZ, any_bytes, bounded, mutated

torch = pytest.importorskip("torch")

# A converted file small enough to mutate quickly (14 KB, its header 4 KB) that store.load still accepts.
MICRO = CLIPConfig(
    embed_dim=4,
    vision=VisionConfig(image_size=8, layers=1, width=8, patch_size=4, heads=1),
    text=TextConfig(context_length=4, vocab_size=8, width=8, heads=1, layers=1),
)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.block = torch.nn.Sequential(torch.nn.LayerNorm(2))
        self.register_buffer("steps", torch.tensor(7))

    def forward(self, x):
        return self.block(self.fc(x)) * self.steps


def _torch_state_dict() -> collections.OrderedDict:
    base = torch.arange(12, dtype=torch.float32)
    return collections.OrderedDict(
        whole=base, view=base[2:8].view(2, 3), tied=base,  # three names, one storage
        half=torch.ones(3, dtype=torch.float16), ints=torch.arange(4), scalar=torch.tensor(2.5),
    )


def _hand_pickle(legacy: bool) -> bytes:
    """A state dict pickled opcode by opcode: two views of one storage, a second storage, an OrderedDict."""
    shared, other = H.storage_pid("0", 6, legacy=legacy), H.storage_pid("1", 2, "LongStorage", legacy=legacy)
    ordered = H.glob("collections", "OrderedDict") + H.EMPTY_TUPLE + H.REDUCE
    return H.PROTO2 + ordered + H.MARK + b"".join([
        H.string("a") + H.tensor(shared, 0, (2, 3), (3, 1)),
        H.string("b") + H.tensor(shared, 2, (2,), (2,)),
        H.string("n") + H.tensor(other, 0, (2,), (1,)),
    ]) + b"u" + H.STOP


HAND_STORAGES = {"0": np.arange(6, dtype="<f4").tobytes(), "1": np.arange(2, dtype="<i8").tobytes()}


@functools.cache
def seeds() -> dict[str, bytes]:
    """The valid files every mutation starts from, written once per session (each a few KB)."""
    out = {}
    buf = io.BytesIO()
    torch.save(_torch_state_dict(), buf)
    out["zip"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save(_torch_state_dict(), buf, _use_new_zipfile_serialization=False)
    out["legacy"] = buf.getvalue()
    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.* deprecation notices
        torch.jit.save(torch.jit.trace(_Tiny().eval(), torch.randn(1, 3)), buf)
    out["torchscript"] = buf.getvalue()
    out["pickle"] = _hand_pickle(legacy=False)
    out["legacy_pickle"] = _hand_pickle(legacy=True)
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "module.b": np.ones(2, np.float16),
               "n": np.arange(3, dtype=np.int64)}
    out["safetensors"] = safetensors_bytes(tensors, metadata={"format": "pt"})
    out["converted"] = _converted(MICRO.to_json())
    return out


def _converted(config_json: str) -> bytes:
    from tests.tiny import tiny_params

    tensors = {k: np.asarray(v, order="C") for k, v in tiny_params(MICRO).items()}
    return safetensors_bytes(tensors, metadata={"format": store.FORMAT, "format_version": store.FORMAT_VERSION,
                                                "config": config_json})


def member(archive: bytes, suffix: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith(suffix)))


def rezip(archive: bytes, suffix: str, data: bytes) -> bytes:
    """`archive` with the entry ending in `suffix` replaced by `data` (stored, with its own CRC)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, data if info.filename.endswith(suffix) else zin.read(info))
    return out.getvalue()


def hand_zip(pkl: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", b"little")
        for key, data in HAND_STORAGES.items():
            zf.writestr(f"archive/data/{key}", data)
    return out.getvalue()


def hand_legacy(pkl: bytes) -> bytes:
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = [pickle.dumps(H.LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
             pickle.dumps(sys_info, protocol=2), pkl, pickle.dumps(list(HAND_STORAGES), protocol=2)]
    for data, itemsize in zip(HAND_STORAGES.values(), (4, 8)):
        parts.append(struct.pack("<q", len(data) // itemsize) + data)
    return b"".join(parts)


# --- safetensors headers, field by field ----------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "U32", "U64",
          "F8_E4M3", "F8_E5M2", "C64", "X99", "f32", ""]
BOUNDARY_INTS = st.sampled_from([0, 1, 2, 3, 4, 8, 12, 16, 24, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1])


@st.composite
def safetensors_headers(draw) -> bytes:
    """A safetensors file whose header is built from fields, any of them wrong; its data is 32 bytes."""
    header: dict = {}
    for _ in range(draw(st.integers(0, 3))):
        entry = {
            "dtype": draw(st.sampled_from(DTYPES) | JSON),
            "shape": draw(st.lists(st.integers(0, 8) | BOUNDARY_INTS, max_size=4) | JSON),
            "data_offsets": draw(st.lists(st.integers(0, 40) | BOUNDARY_INTS, min_size=2, max_size=2) | JSON),
        }
        for field in draw(st.sets(st.sampled_from(list(entry)), max_size=1)):
            del entry[field]  # a missing field
        header[draw(st.sampled_from(["w", "module.w", "_orig_mod.w", "b", ""]) | st.text(max_size=6))] = entry
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3) | JSON)
    text = json.dumps(header).encode()
    if draw(st.booleans()):
        text += b" " * draw(st.integers(0, 8))  # padding, as the format allows
    data = bytes(range(32))
    length = draw(st.sampled_from(["exact", "zero", "huge", "past_end", "short", "long"]))
    n = {"exact": len(text), "zero": 0, "huge": 2**63, "past_end": len(text) + len(data) + 1,
         "short": max(len(text) - 1, 0), "long": len(text) + 4}[length]
    return struct.pack("<Q", n) + text + data


@st.composite
def converted_configs(draw) -> bytes:
    """A converted file (valid tensors) whose config JSON is mutated, or replaced by any JSON value."""
    if draw(st.booleans()):
        config = draw(mutated(MICRO.to_json().encode())).decode("latin-1")
    else:
        config = json.dumps(draw(JSON))
    return _converted(config)


# --- the readers ------------------------------------------------------------------------------------


def _names_file(read, path: Path):
    """read(path), where a refusal must also name the file and come from the reader's own checks, not from
    load_state_dict's last-resort handler (its "cannot read checkpoint: <type>", for an exception no
    check mapped; the file here exists and is readable). An AssertionError fails `bounded`."""

    def call():
        try:
            return read(path)
        except ClipJaxError as e:
            assert str(path) in str(e), f"{type(e).__name__} does not name the file: {e}"
            assert "cannot read checkpoint:" not in str(e), f"an exception no check mapped: {e}"
            raise

    return call


def _is_converted(path: Path) -> bool:
    value = store.is_converted(path)
    assert isinstance(value, bool)
    return value


TORCH_READERS = (load_state_dict,)
SAFETENSORS_READERS = (load_state_dict, _is_converted, store.load)

# name: (the inputs, the readers they go through)
TARGETS = {
    "zip": (lambda: any_bytes(seeds()["zip"]), TORCH_READERS),
    "zip_data_pkl": (lambda: mutated(member(seeds()["zip"], "/data.pkl")).map(
        lambda pkl: rezip(seeds()["zip"], "/data.pkl", pkl)), TORCH_READERS),
    "legacy": (lambda: any_bytes(seeds()["legacy"]), TORCH_READERS),
    "torchscript": (lambda: any_bytes(seeds()["torchscript"]), TORCH_READERS),
    "torchscript_data_pkl": (lambda: mutated(member(seeds()["torchscript"], "/data.pkl")).map(
        lambda pkl: rezip(seeds()["torchscript"], "/data.pkl", pkl)), TORCH_READERS),
    "pickle_in_zip": (lambda: any_bytes(seeds()["pickle"]).map(hand_zip), TORCH_READERS),
    "pickle_in_legacy": (lambda: any_bytes(seeds()["legacy_pickle"]).map(hand_legacy), TORCH_READERS),
    "safetensors": (lambda: any_bytes(seeds()["safetensors"]), SAFETENSORS_READERS),
    "safetensors_header": (safetensors_headers, SAFETENSORS_READERS),
    "converted": (lambda: mutated(seeds()["converted"]), SAFETENSORS_READERS),
    "converted_config": (converted_configs, SAFETENSORS_READERS),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check(workdir: Path, target: str, data: st.DataObject) -> None:
    strategy, readers = TARGETS[target]
    path = workdir / f"{target}.bin"
    path.write_bytes(data.draw(strategy(), label="file"))
    for read in readers:
        bounded(_names_file(read, path))


@pytest.mark.parametrize("target", list(TARGETS))
@FUZZ
@given(data=st.data())
def test_fuzz(workdir, target, data):
    check(workdir, target, data)


@pytest.mark.slow
@pytest.mark.parametrize("target", list(TARGETS))
@settings(FUZZ, max_examples=3000)
@given(data=st.data())
def test_fuzz_long(workdir, target, data):
    check(workdir, target, data)


def test_seeds_are_read(tmp_path):
    """Each seed itself reads (so the fuzzing starts from files the readers accept, not from refusals)."""

    def write(name: str, data: bytes) -> Path:
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    state = load_state_dict(write("zip.pt", seeds()["zip"]))
    np.testing.assert_array_equal(state["view"], np.arange(2, 8, dtype=np.float32).reshape(2, 3))
    assert set(load_state_dict(write("legacy.pt", seeds()["legacy"]))) == set(state)
    assert set(load_state_dict(write("ts.pt", seeds()["torchscript"]))) == {
        "fc.weight", "fc.bias", "block.0.weight", "block.0.bias", "steps"}
    assert set(load_state_dict(write("hand.pt", hand_zip(seeds()["pickle"])))) == {"a", "b", "n"}
    assert set(load_state_dict(write("hand_legacy.pt", hand_legacy(seeds()["legacy_pickle"])))) == {"a", "b", "n"}
    assert set(load_state_dict(write("st.safetensors", seeds()["safetensors"]))) == {"w", "b", "n"}
    assert store.load(write("converted.safetensors", seeds()["converted"]))[0] == MICRO
