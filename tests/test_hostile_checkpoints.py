"""Hand-written hostile checkpoints, exact bytes: each is refused with a CheckpointError that names the file
and says what is wrong (not an exception of another type, nor load_state_dict's last-resort "cannot read
checkpoint: <type>"), within tests/fuzz.py's time and memory bound. The fuzz tests beside these
(tests/test_fuzz_checkpoints.py) mutate valid files; these are the cases named in issue 23.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from clip_jax.checkpoint import store
from clip_jax.checkpoint.torch_files import CheckpointError, load_state_dict
from tests import hostile as H
from tests.fuzz import bounded
from tests.tiny import TINY

FOUR = np.arange(4, dtype="<f4").tobytes()
PID = H.storage_pid("0", 4)


def refused(path: Path, *needles: str, read=load_state_dict) -> str:
    """read(path) raises a CheckpointError, within the bound, naming the file and each needle -> the message."""
    caught: list[CheckpointError] = []

    def call():
        try:
            return read(path)
        except CheckpointError as e:
            caught.append(e)
            raise

    bounded(call)
    assert caught, f"{path.name} was read"
    message = str(caught[0])
    assert str(path) in message, message
    assert "cannot read checkpoint:" not in message, f"an exception no check mapped: {message}"
    for needle in needles:
        assert needle in message, message
    return message


# --- safetensors headers: through load_state_dict (open_clip's .safetensors) and store.load -----------

BODY = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'


def safetensors(path: Path, header: bytes, length: int | None = None, data: bytes = FOUR) -> Path:
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


def nested(depth: int) -> bytes:
    return b'{"w":' + b"[" * depth + b"]" * depth + b"}"


HEADERS = {  # name: (header, its length field (None: the header's own), what load_state_dict says)
    "length_0": (BODY, 0, "header length 0"),
    "length_2**63": (BODY, 2**63, "header length 9223372036854775808"),
    "length_past_end": (BODY, len(BODY) + len(FOUR) + 1, f"header length {len(BODY) + len(FOUR) + 1}"),
    "nested_100k": (nested(100_000), None, "recursion limit"),
    "not_json": (b"{" + b"\xff" * 20 + b"}", None, "unreadable safetensors file"),
    "dtype_unknown": (BODY.replace(b"F32", b"X99"), None, "X99"),
    "dtype_float8": (b'{"w":{"dtype":"F8_E4M3","shape":[16],"data_offsets":[0,16]}}', None, "'F8_E4M3'"),
    "offsets_past_data": (BODY.replace(b"[0,16]", b"[0,1600]"), None, "unreadable safetensors file"),
    "offsets_overlap": (b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                        b'"v":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', None, "unreadable safetensors"),
    "shape_not_bytes": (BODY.replace(b"[4]", b"[5]"), None, "unreadable safetensors file"),
    "shape_overflow": (BODY.replace(b"[4]", b"[4294967296,4294967296,4294967296]"), None, "overflow"),
    "metadata_list": (b'{"__metadata__":[1],' + BODY[1:], None, "unreadable safetensors file"),
    "metadata_nested": (b'{"__metadata__":{"a":' + b'{"b":' * 1000 + b"1" + b"}" * 1001 + b"," + BODY[1:],
                        None, "unreadable safetensors file"),
}


@pytest.mark.parametrize("case", list(HEADERS))
@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_safetensors_header(tmp_path, case, suffix):
    header, length, needle = HEADERS[case]
    path = safetensors(tmp_path / f"{case}{suffix}", header, length)
    refused(path, needle)
    refused(path, read=store.load)
    assert bounded(lambda: store.is_converted(path)) is False


def test_converted_config_nested_100k(tmp_path):
    """The converted file's config is JSON inside the header's metadata: Python's parser recursed until
    RecursionError (not the project's error type) on today's main."""
    path = tmp_path / "deep.safetensors"
    save_file({"w": np.zeros(4, np.float32)}, str(path), metadata={
        "format": store.FORMAT, "format_version": store.FORMAT_VERSION, "config": "[" * 100_000 + "]" * 100_000})
    refused(path, "nested too deeply", read=store.load)


@pytest.mark.parametrize("config", ["{", "[]", json.dumps({"embed_dim": "x"})], ids=["not_json", "list", "field"])
def test_converted_config_errors_are_checkpoint_errors(tmp_path, config):
    """store.load raised bare ValueErrors on today's main; a CheckpointError (the project's type, still a
    ValueError) names the file."""
    path = tmp_path / "bad.safetensors"
    save_file({"w": np.zeros(4, np.float32)}, str(path), metadata={
        "format": store.FORMAT, "format_version": store.FORMAT_VERSION, "config": config})
    refused(path, read=store.load)


def test_converted_dtype_float8(tmp_path):
    header = json.dumps({"__metadata__": {"format": store.FORMAT, "config": TINY.to_json()},
                         "w": {"dtype": "F8_E5M2", "shape": [16], "data_offsets": [0, 16]}}).encode()
    path = safetensors(tmp_path / "f8.safetensors", header, data=bytes(16))
    refused(path, "'F8_E5M2'", read=store.load)


# --- zip archives -------------------------------------------------------------------------------------


def valid_zip(path: Path, **kw) -> Path:
    return H.write_zip(path, H.PROTO2 + H.dict_(w=H.tensor(PID, 0, (4,), (1,))) + H.STOP, {"0": FOUR}, **kw)


def test_zip_data_pkl_declares_huge_size(tmp_path):
    src = valid_zip(tmp_path / "ok.pt")
    path = H.patch_central_entry(src, tmp_path / "huge.pt", "archive/data.pkl", 2**32 - 2, 0)
    refused(path, "archive/data.pkl", str(2**32 - 2))


def test_zip_storage_declares_huge_size(tmp_path):
    src = valid_zip(tmp_path / "ok.pt")
    path = H.patch_central_entry(src, tmp_path / "huge.pt", "archive/data/0", 2**32 - 2, 0)
    refused(path, "archive/data/0")


def test_zip_thousands_of_entries(tmp_path):
    """5000 entries beside a checkpoint: read, within the bound (zipfile's index grows with the file, like
    the rest of what reading allocates). Decompression bombs: tests/test_budget.py."""
    path = valid_zip(tmp_path / "many.pt", extra={f"archive/extra/{i}": b"" for i in range(5000)})
    state = bounded(lambda: load_state_dict(path))
    np.testing.assert_array_equal(state["w"], np.arange(4, dtype=np.float32))


def test_zip_duplicate_names_among_thousands(tmp_path):
    path = valid_zip(tmp_path / "dup.pt", extra={f"archive/extra/{i}": b"" for i in range(5000)})
    with zipfile.ZipFile(path, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("archive/extra/4999", b"again")
    refused(path, "duplicate entry names")


def test_zip_local_name_not_utf8(tmp_path):
    """A local header flagged UTF-8 whose name isn't: UnicodeDecodeError through the last resort on
    today's main; now the mismatch with the central directory's name."""
    data = bytearray(valid_zip(tmp_path / "ok.pt").read_bytes())
    pos = data.index(b"PK\x03\x04")  # archive/data.pkl, the first entry
    flags = struct.unpack_from("<H", data, pos + 6)[0]
    struct.pack_into("<H", data, pos + 6, flags | 0x800)
    data[pos + 30] = 0xFF  # the name's first byte
    path = tmp_path / "name.pt"
    path.write_bytes(bytes(data))
    refused(path, "archive/data.pkl", "local header names")


def test_zip_negative_header_offset(tmp_path):
    """An end record whose central-directory offset is too large makes zipfile compute negative entry
    offsets: OSError (EINVAL, from a seek) through the last resort on today's main."""
    data = bytearray(valid_zip(tmp_path / "ok.pt").read_bytes())
    end = data.rindex(b"PK\x05\x06")
    offset = struct.unpack_from("<L", data, end + 16)[0]
    struct.pack_into("<L", data, end + 16, offset + 100_000)
    path = tmp_path / "offset.pt"
    path.write_bytes(bytes(data))
    refused(path, "local header at offset -")


# --- pickles --------------------------------------------------------------------------------------------

DEEP = 100_000  # 100 times Python's recursion limit
DEEP_LIST = b"]" * DEEP + b"a" * (DEEP - 1)  # a list nested DEEP levels (EMPTY_LIST, then APPEND each)


def test_pickle_nested_list_value(tmp_path):
    """100k nested lists as a state dict's value: the C unpickler builds it without recursing; no tensors."""
    path = H.write_zip(tmp_path / "deep.pt", H.PROTO2 + b"}" + H.string("w") + DEEP_LIST + b"s" + H.STOP)
    refused(path, "no tensors")


def test_pickle_nested_list_as_tensor_size(tmp_path):
    """The error message's repr of it recursed until RecursionError on today's main."""
    rebuild = H.call(H.glob("torch._utils", "_rebuild_tensor_v2"), PID, H.integer(0), DEEP_LIST,
                     H.tup(H.integer(1)))
    path = H.write_zip(tmp_path / "deep.pt", H.PROTO2 + H.dict_(w=rebuild) + H.STOP, {"0": FOUR})
    refused(path, "tensor size must be a tuple of ints")


def test_torchscript_modules_nested_deep(tmp_path):
    """TorchScript modules nested 10000 deep (each holding the next): RecursionError through the last
    resort on today's main; now refused at MAX_MODULE_DEPTH."""
    module = H.glob("__torch__", "M")
    pkl = H.PROTO2
    for _ in range(10_000):  # NEWOBJ an M, then BUILD it with {'training': True, 'sub': <the next>}
        pkl += module + H.EMPTY_TUPLE + b"\x81" + b"}" + H.MARK + H.string("training") + b"\x88" + H.string("sub")
    pkl += module + H.EMPTY_TUPLE + b"\x81" + b"}" + H.string("training") + b"\x88" + b"s" + b"b"
    pkl += (b"u" + b"b") * 10_000 + H.STOP
    path = H.write_zip(tmp_path / "deep.pt", pkl, extra={"archive/constants.pkl": H.PROTO2 + b")" + H.STOP})
    refused(path, "nested more than 64 deep")


def test_pickle_key_of_many_prefixes(tmp_path):
    """A key of 290000 'module.' prefixes (2 MB, the pickle limit): stripping them one copy at a time took
    ~17 s on the test machine on today's main, past the bound; one pass takes milliseconds."""
    key = "module." * 290_000 + "w"
    path = H.write_zip(tmp_path / "prefixes.pt",
                       H.PROTO2 + b"}" + H.string(key) + H.tensor(PID, 0, (4,), (1,)) + b"s" + H.STOP, {"0": FOUR})
    assert set(bounded(lambda: load_state_dict(path))) == {"w"}


@pytest.mark.parametrize("size, stride", [((0, 2**66), (1, 1)), ((1, 2), (2**66, 1)), ((2**48,), (0,))],
                         ids=["zero_dim_beside_huge", "huge_stride_of_size_1", "2**48"])
def test_tensor_extents_past_numpy(tmp_path, size, stride):
    """Sizes or strides numpy's 64-bit integers can't hold, hidden from the bounds check by a 0 dimension or
    a size of 1: OverflowError through the last resort on today's main."""

    def long1(i: int) -> bytes:
        return b"\x8a\x09" + i.to_bytes(9, "little", signed=True)  # LONG1: ints past 32 bits

    rebuild = H.call(H.glob("torch._utils", "_rebuild_tensor_v2"), PID, H.integer(0), H.tup(*map(long1, size)),
                     H.tup(*map(long1, stride)))
    path = H.write_zip(tmp_path / "extent.pt", H.PROTO2 + H.dict_(w=rebuild) + H.STOP, {"0": FOUR})
    refused(path, "2**48 or more")


@pytest.mark.parametrize("pkl", [H.PROTO2 + b"a" + H.STOP, b"\x80\x7f" + H.STOP, H.PROTO2 + b"h\x05" + H.STOP,
                                 H.PROTO2 + H.integer(1) + b"]" + b"a" + H.STOP],
                         ids=["stack_underflow", "protocol_127", "memo_miss", "append_to_int"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malformed_pickle(tmp_path, pkl, legacy):
    """The unpickler's own errors (UnpicklingError, ValueError, AttributeError) went through the last
    resort on today's main; now one message that says the pickle is malformed."""
    path = H.write_legacy(tmp_path / "bad.pt", pkl) if legacy else H.write_zip(tmp_path / "bad.pt", pkl)
    refused(path, "malformed pickle")
