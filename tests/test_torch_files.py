"""Tests for the torch-free checkpoint reader, with real torch as the reference.

torch is a test-only dependency: files are written with torch.save /
torch.jit.save / safetensors and read back both by torch and by our reader.
Hostile files are hand-assembled (tests/hostile.py); each carries a payload
that would create a sentinel file, and every test checks that it was not.
"""

from __future__ import annotations

import collections
import pickle
import random
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from clip_jax.checkpoint.torch_files import CheckpointError, load_state_dict
from tests import hostile as H

torch = pytest.importorskip("torch")
nn = torch.nn

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def to_numpy(t: "torch.Tensor") -> np.ndarray:
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bf16; reinterpret the bits
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def assert_same(ours: dict, reference: dict) -> None:
    """Same names, dtypes, shapes and bit-identical values."""
    assert set(ours) == set(reference)
    for name, ref in reference.items():
        expected = to_numpy(ref)
        got = ours[name]
        assert isinstance(got, np.ndarray), name
        assert got.dtype == expected.dtype, name
        assert got.shape == expected.shape, name
        assert got.tobytes() == expected.tobytes(), name  # bit-exact, NaN-safe


def jit_state_dict(path) -> dict:
    """The reference for TorchScript files: torch.jit.load(path).state_dict()."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.* deprecation notices
        return torch.jit.load(path).state_dict()


def reference_state_dict() -> collections.OrderedDict:
    g = torch.Generator().manual_seed(0)
    sd = collections.OrderedDict()
    sd["f32"] = torch.randn(3, 4, generator=g)
    sd["f16"] = torch.randn(5, generator=g).half()
    sd["bf16"] = torch.randn(2, 3, generator=g).bfloat16()
    sd["f64"] = torch.randn(2, 2, generator=g).double()
    sd["i64"] = torch.arange(-3, 3)
    sd["i32"] = torch.arange(6, dtype=torch.int32).view(2, 3)
    sd["i16"] = torch.tensor([-32768, 0, 32767], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 1, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(3.5)
    sd["scalar_int"] = torch.tensor(224)
    sd["empty"] = torch.empty(0, 3)
    # three tensors sharing one storage, two of them at offsets
    base = torch.arange(24, dtype=torch.float32)
    sd["shared_base"] = base
    sd["shared_offset"] = base[5:11]
    sd["shared_2d"] = base[4:16].view(3, 4)
    # non-contiguous views
    sd["transposed"] = torch.randn(3, 5, generator=g).t()
    sd["strided"] = torch.randn(4, 6, generator=g)[:, ::2]
    sd["bf16_slice"] = torch.randn(4, 4, generator=g).bfloat16()[1:, 2:]
    sd["param"] = nn.Parameter(torch.randn(2, 3, generator=g))
    tied = torch.randn(4, generator=g)
    sd["tied_a"] = tied
    sd["tied_b"] = tied
    return sd


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 4)
        self.register_buffer("scale", torch.tensor([0.5, 2.0, 1.0, 1.0]))

    def forward(self, x):
        return self.fc(self.ln(x)) * self.scale


class TinyModel(nn.Module):
    """Submodules, a ModuleList, buffers (incl. OpenAI-style 0-d ints) and fp16 params."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Sequential(nn.Linear(4, 2, bias=False)).half()
        self.register_buffer("positions", torch.arange(4))
        self.register_buffer("input_resolution", torch.tensor(224))
        self.register_buffer("context_length", torch.tensor(77))
        self.logit_scale = nn.Parameter(torch.tensor(4.6))

    def forward(self, x):
        x = self.proj(x)
        for block in self.blocks:
            x = block(x)
        w = self.head[0].weight.float()
        return (x @ w.t()) * self.logit_scale + self.positions[:2].float()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Reference checkpoints written once by torch for the whole module."""
    d = tmp_path_factory.mktemp("ckpt")
    sd = reference_state_dict()
    torch.save(sd, d / "zip.pt")
    torch.save(sd, d / "legacy.pt", _use_new_zipfile_serialization=False)

    torch.manual_seed(0)
    model = TinyModel().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.* deprecation notices
        torch.jit.save(torch.jit.trace(model, torch.randn(2, 3)), d / "traced.pt")
        torch.jit.save(torch.jit.script(model), d / "scripted.pt")
    return d


def assert_refused(path: Path, *needles: str, sentinel: Path | None = None) -> str:
    """load_state_dict refuses `path`; the message names the file and each needle."""
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message
    if sentinel is not None:
        assert not sentinel.exists(), "payload ran"
    return message


# ---------------------------------------------------------------------------
# round trips against torch
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["zip.pt", "legacy.pt"])
def test_state_dict_round_trip(files, name):
    ours = load_state_dict(files / name)
    assert_same(ours, torch.load(files / name, weights_only=True))
    assert list(ours) == list(reference_state_dict())  # order preserved
    assert all(a.flags.writeable for a in ours.values())


def test_shared_storage_outputs_do_not_alias(files):
    ours = load_state_dict(files / "zip.pt")
    ours["shared_base"][5] = -1.0
    assert ours["shared_offset"][0] == 5.0
    ours["tied_a"][0] = 123.0
    assert ours["tied_b"][0] != 123.0


def test_accepts_pathlike_and_str(files):
    assert set(load_state_dict(str(files / "zip.pt"))) == set(load_state_dict(files / "zip.pt"))


def adamw_state_dict(params: list) -> dict:
    """What torch.optim.AdamW(...).state_dict() holds after a step (written by hand:
    constructing a real optimizer imports torch._dynamo, which costs seconds)."""
    return {
        "state": {i: {"step": torch.tensor(1.0), "exp_avg": torch.randn_like(p),
                      "exp_avg_sq": torch.rand_like(p)} for i, p in enumerate(params)},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": 0.01,
                          "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                          "differentiable": False, "fused": None, "decoupled_weight_decay": True,
                          "params": list(range(len(params)))}],
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_open_clip_training_checkpoint(tmp_path, legacy, prefix):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2).half())
    checkpoint = {
        "epoch": 3,
        "name": "run",
        "state_dict": {prefix + k: v for k, v in model.state_dict().items()},
        "optimizer": adamw_state_dict(list(model.parameters())),
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
    }
    path = tmp_path / "epoch_3.pt"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    assert_same(load_state_dict(path), model.state_dict())


def test_safetensors_round_trip(tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in reference_state_dict().items()
               if not k.startswith(("shared", "tied"))}
    path = tmp_path / "model.safetensors"
    save_file(tensors, path)
    assert_same(load_state_dict(path), load_file(path))


def test_dispatch_is_by_content_not_suffix(files, tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "looks_like.safetensors").write_bytes((files / "zip.pt").read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes((files / "legacy.pt").read_bytes())
    save_file({"w": torch.ones(2)}, tmp_path / "weights.pt")
    assert set(load_state_dict(tmp_path / "looks_like.safetensors")) == set(reference_state_dict())
    assert set(load_state_dict(tmp_path / "pytorch_model.bin")) == set(reference_state_dict())
    assert_same(load_state_dict(tmp_path / "weights.pt"), {"w": torch.ones(2)})


@pytest.mark.parametrize("name", ["traced.pt", "scripted.pt"])
def test_torchscript_matches_jit_state_dict(files, name):
    reference = jit_state_dict(files / name)
    ours = load_state_dict(files / name)
    assert_same(ours, reference)
    assert ours["head.0.weight"].dtype == np.float16
    assert ours["input_resolution"].shape == () and ours["input_resolution"] == 224


def test_scripted_plain_tensor_attribute_is_reported(tmp_path):
    """Known, documented difference: without reading code/, a scripted module's
    unregistered tensor attribute cannot be told from a buffer, so it appears
    as an extra entry; everything torch reports is still there and identical."""

    class WithAttr(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.plain = torch.ones(3)

        def forward(self, x):
            return self.fc(x) + self.plain.sum()

    path = tmp_path / "attr.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(WithAttr()), path)
    reference = jit_state_dict(path)
    ours = load_state_dict(path)
    assert set(ours) - set(reference) == {"plain"}
    assert_same({k: ours[k] for k in reference}, reference)


def test_reader_never_imports_torch_or_stock_unpickling(files):
    """In a fresh interpreter: torch never gets imported, pickle.load(s) never called.

    The module is loaded from its file, skipping the clip_jax package (and jax): its one clip_jax import
    (errors, for the error's base type) is found through stand-in packages whose __init__ files never run."""
    module_path = REPO / "clip_jax" / "checkpoint" / "torch_files.py"
    script = f"""
import importlib.util, pickle, sys, types
def boom(*a, **k): raise AssertionError('stock unpickling used')
pickle.load = pickle.loads = boom
sys.modules['torch'] = None  # any 'import torch' now fails
for name, folder in [('clip_jax', {str(module_path.parents[1])!r}),
                     ('clip_jax.checkpoint', {str(module_path.parent)!r})]:
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = [folder]
spec = importlib.util.spec_from_file_location('clip_jax.checkpoint.torch_files', {str(module_path)!r})
reader = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reader)
for name in ('zip.pt', 'legacy.pt', 'traced.pt', 'scripted.pt'):
    assert reader.load_state_dict({str(files)!r} + '/' + name)
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO)


# ---------------------------------------------------------------------------
# hand-built files: prove the builders make loadable files, so that each
# hostile variant below is refused for the intended reason
# ---------------------------------------------------------------------------


def tensor_dict_pkl(size=(2, 2), stride=(2, 1), offset=0, numel=4, key="0", legacy=False) -> bytes:
    pid = H.storage_pid(key, numel, legacy=legacy)
    return H.PROTO2 + H.dict_(w=H.tensor(pid, offset, size, stride)) + H.STOP


FOUR_FLOATS = np.arange(4, dtype="<f4")


def test_hand_built_zip_and_legacy_load(tmp_path):
    z = H.write_zip(tmp_path / "ok.pt", tensor_dict_pkl(), {"0": FOUR_FLOATS.tobytes()})
    np.testing.assert_array_equal(load_state_dict(z)["w"], FOUR_FLOATS.reshape(2, 2))
    legacy = H.write_legacy(tmp_path / "ok_legacy.pt", tensor_dict_pkl(legacy=True),
                            [("0", 4, FOUR_FLOATS.tobytes())])
    np.testing.assert_array_equal(load_state_dict(legacy)["w"], FOUR_FLOATS.reshape(2, 2))


def test_big_endian_zip(tmp_path):
    path = H.write_zip(tmp_path / "le.pt", tensor_dict_pkl(size=(4,), stride=(1,)),
                       {"0": FOUR_FLOATS.astype(">f4").tobytes()})
    path = H.replace_zip_entry(path, tmp_path / "be.pt", "/byteorder", b"big")
    got = load_state_dict(path)["w"]
    assert got.dtype == np.float32  # native order out
    np.testing.assert_array_equal(got, FOUR_FLOATS)


# ---------------------------------------------------------------------------
# hostile files
# ---------------------------------------------------------------------------

PAYLOAD_KINDS = ["GLOBAL", "posix", "STACK_GLOBAL", "INST"]
REFUSED_NAME = {"GLOBAL": "os.system", "posix": "posix.system", "STACK_GLOBAL": "os.system", "INST": "os.system"}


@pytest.fixture
def sentinel(tmp_path):
    return tmp_path / "SENTINEL"


@pytest.mark.parametrize("how", PAYLOAD_KINDS)
def test_payloads_are_live(sentinel, how):
    """Control: the stock unpickler really runs each payload (creates the sentinel)."""
    pickle.loads(H.system_payload(f"touch {sentinel}", how))
    assert sentinel.exists()


@pytest.mark.parametrize("how", PAYLOAD_KINDS)
def test_system_call_in_zip_data_pkl(files, tmp_path, sentinel, how):
    path = H.replace_zip_entry(files / "zip.pt", tmp_path / "evil.pt", "/data.pkl",
                               H.system_payload(f"touch {sentinel}", how))
    assert_refused(path, REFUSED_NAME[how], "refused global", sentinel=sentinel)


@pytest.mark.parametrize("how", PAYLOAD_KINDS)
def test_system_call_as_raw_legacy_file(tmp_path, sentinel, how):
    path = tmp_path / "evil.pt"
    path.write_bytes(H.system_payload(f"touch {sentinel}", how))
    assert_refused(path, REFUSED_NAME[how], sentinel=sentinel)


@pytest.mark.parametrize("how", PAYLOAD_KINDS)
def test_system_call_in_legacy_main_pickle(tmp_path, sentinel, how):
    path = H.write_legacy(tmp_path / "evil.pt", H.system_payload(f"touch {sentinel}", how))
    assert_refused(path, REFUSED_NAME[how], sentinel=sentinel)


def eval_payload(sentinel: Path) -> bytes:
    return H.call(H.glob("builtins", "eval"), H.string(f"__import__('os').system('touch {sentinel}')"))


def test_eval_in_torchscript_data_pkl(files, tmp_path, sentinel):
    pickle.loads(H.PROTO2 + eval_payload(tmp_path / "control") + H.STOP)
    assert (tmp_path / "control").exists()  # the payload is live

    path = H.replace_zip_entry(files / "traced.pt", tmp_path / "evil_jit.pt", "/data.pkl",
                               H.PROTO2 + eval_payload(sentinel) + H.STOP)
    assert_refused(path, "builtins.eval", sentinel=sentinel)


def test_eval_inside_torchscript_module_state(files, tmp_path, sentinel):
    """Allowing __torch__.* classes must not let their state reach other globals."""
    module = (H.glob("__torch__", "M") + H.EMPTY_TUPLE + b"\x81"
              + H.dict_(training=b"\x88", x=eval_payload(sentinel)) + b"b")
    path = H.replace_zip_entry(files / "scripted.pt", tmp_path / "evil_jit.pt", "/data.pkl",
                               H.PROTO2 + module + H.STOP)
    assert_refused(path, "builtins.eval", sentinel=sentinel)


def test_torchscript_classes_refused_outside_torchscript(tmp_path):
    module = H.glob("__torch__", "M") + H.EMPTY_TUPLE + b"\x81" + H.dict_(training=b"\x88") + b"b"
    path = H.write_zip(tmp_path / "notjit.pt", H.PROTO2 + module + H.STOP)
    assert_refused(path, "__torch__.M")


@pytest.mark.parametrize("target", [("torch", "FloatStorage"), ("torch._utils", "_rebuild_tensor_v2"),
                                    ("collections", "OrderedDict")])
def test_build_cannot_modify_allowed_objects(tmp_path, target):
    """BUILD with slot state would setattr on the shared stand-in (e.g. a storage
    type's dtype, a function's __defaults__) and poison later loads."""
    attack = H.glob(*target) + H.tup(H.NONE, H.dict_(dtype=H.string("x"), __defaults__=H.tup())) + b"b"
    path = H.write_zip(tmp_path / "build.pt", H.PROTO2 + attack + b"0" + tensor_dict_pkl()[2:],
                       {"0": FOUR_FLOATS.tobytes()})
    assert_refused(path)
    ok = H.write_zip(tmp_path / "ok.pt", tensor_dict_pkl(), {"0": FOUR_FLOATS.tobytes()})
    np.testing.assert_array_equal(load_state_dict(ok)["w"], FOUR_FLOATS.reshape(2, 2))


def test_module_persistent_id_in_legacy(tmp_path):
    pid = H.tup(H.string("module"), H.string("Net"), H.string("net.py"),
                H.string("class Net: pass")) + H.BINPERSID
    path = H.write_legacy(tmp_path / "module_pid.pt", H.PROTO2 + pid + H.STOP)
    assert_refused(path, "persistent id", "'module'")


def test_legacy_view_metadata_refused(tmp_path):
    pid = H.tup(H.string("storage"), H.glob("torch", "FloatStorage"), H.string("0"), H.string("cpu"),
                H.integer(4), H.tup(H.string("1"), H.integer(0), H.integer(2))) + H.BINPERSID
    main = H.PROTO2 + H.dict_(w=H.tensor(pid, 0, (2,), (1,))) + H.STOP
    path = H.write_legacy(tmp_path / "view_meta.pt", main, [("0", 4, FOUR_FLOATS.tobytes())])
    assert_refused(path, "view metadata")


@pytest.mark.parametrize(
    "size,stride,offset",
    [((5,), (1,), 0), ((2, 2), (3, 1), 0), ((2,), (1,), 3), ((0,), (1,), 5), ((2,), (1,), -1)],
    ids=["too_long", "stride_past_end", "offset_past_end", "empty_past_end", "negative_offset"],
)
def test_tensor_view_past_storage(tmp_path, size, stride, offset):
    path = H.write_zip(tmp_path / "oob.pt", tensor_dict_pkl(size, stride, offset),
                       {"0": FOUR_FLOATS.tobytes()})
    assert_refused(path, f"offset={offset}")


def test_storage_shorter_than_numel_zip(tmp_path):
    path = H.write_zip(tmp_path / "short.pt", tensor_dict_pkl(numel=10), {"0": FOUR_FLOATS.tobytes()})
    assert_refused(path, "storage '0' has 16 bytes", "needs 40")


def test_storage_shorter_than_numel_legacy(tmp_path):
    path = H.write_legacy(tmp_path / "short.pt", tensor_dict_pkl(numel=10, legacy=True),
                          [("0", 10, FOUR_FLOATS.tobytes())])
    assert_refused(path, "storage '0'", "file ends")


def test_truncated_zip(files, tmp_path):
    data = (files / "zip.pt").read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        path = tmp_path / f"truncated_{cut}.pt"
        path.write_bytes(data[:cut])
        assert_refused(path, "zip")


def test_corrupted_storage_bytes_fail_crc(files, tmp_path):
    data = bytearray((files / "zip.pt").read_bytes())
    with zipfile.ZipFile(files / "zip.pt") as zf:
        info = zf.getinfo("zip/data/0")
    # the local header's name/extra lengths (its extra field holds torch's alignment padding)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start] ^= 0xFF
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(data))
    assert_refused(path, "CRC")


def test_duplicate_entry_names(tmp_path):
    path = H.write_zip(tmp_path / "dup.pt", tensor_dict_pkl(), {"0": FOUR_FLOATS.tobytes()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it writes
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr("archive/data/0", np.zeros(4, "<f4").tobytes())
    assert_refused(path, "duplicate")


def test_path_traversing_entry_name(tmp_path):
    key = "../../evil"
    path = H.write_zip(tmp_path / "traversal.pt", tensor_dict_pkl(key=key),
                       {key: FOUR_FLOATS.tobytes()})
    assert_refused(path, "archive/data/../../evil", "path-traversing")


def test_absolute_entry_name(tmp_path):
    path = H.write_zip(tmp_path / "absolute.pt", tensor_dict_pkl(), {"0": FOUR_FLOATS.tobytes()},
                       extra={"/etc/evil": b"x"})
    assert_refused(path, "/etc/evil")


def test_path_traversing_storage_key(tmp_path):
    """Even with no such entry in the archive, the key itself is refused."""
    path = H.write_zip(tmp_path / "key.pt", tensor_dict_pkl(key="../../evil"), {"0": FOUR_FLOATS.tobytes()})
    assert_refused(path, "refused storage key", "../../evil")


@pytest.mark.parametrize("prefix", [b"", b"\x80", b"PK\x03\x04"], ids=["plain", "pickle-like", "zip-like"])
def test_random_bytes(tmp_path, prefix):
    path = tmp_path / "random.bin"
    path.write_bytes(prefix + random.Random(0).randbytes(4096))
    assert_refused(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    assert_refused(path, "empty")


def test_missing_file(tmp_path):
    assert_refused(tmp_path / "nope.pt", "FileNotFoundError")


def test_unknown_storage_type_refused(tmp_path):
    pid = H.tup(H.string("storage"), H.glob("torch", "ComplexFloatStorage"), H.string("0"),
                H.string("cpu"), H.integer(4)) + H.BINPERSID
    path = H.write_zip(tmp_path / "cplx.pt", H.PROTO2 + H.dict_(w=H.tensor(pid, 0, (2,), (1,))) + H.STOP,
                       {"0": FOUR_FLOATS.tobytes()})
    assert_refused(path, "torch.ComplexFloatStorage")


def test_safetensors_header_lies(tmp_path):
    header = b'{"w":{"dtype":"F32","shape":[100],"data_offsets":[0,400]}}'
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + FOUR_FLOATS.tobytes())
    assert_refused(path)
