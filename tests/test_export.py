"""Export back to PyTorch without torch: clip_jax -> .pt / .safetensors -> torch.load(weights_only=True)
-> open_clip's CLIP(strict=True) gives the same weights and logits; the file read back gives identical params.

Logit tolerance as in test_parity.py: float32 with matmul precision "highest", logits at scale 50 agree to
1e-4 (50 x the 2e-6 feature tolerance); weights and params must be bit-identical.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import pickletools
import stat
import struct
import zipfile

import ml_dtypes
import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import load_file

import clip_jax
from clip_jax.checkpoint import load_state_dict, read_params, torch_writer
from clip_jax.checkpoint.export import export, torch_state_dict
from clip_jax.checkpoint.torch_names import from_torch
from clip_jax.checkpoint.torch_writer import _Pickle

from .reference import inputs, reference_model, reference_outputs, state_dict
from .test_parity import assert_matches

CASES = [("ViT-B-32", 1, 1), ("RN50", [1, 1, 1, 1], 1)]


def open_clip_model(name: str, vision_layers, text_layers) -> torch.nn.Module:
    cfg = open_clip.get_model_config(name)
    cfg = {**cfg, "vision_cfg": {**cfg["vision_cfg"], "layers": vision_layers},
           "text_cfg": {**cfg["text_cfg"], "layers": text_layers}}
    return open_clip.model.CLIP(**cfg, quick_gelu=True).eval()


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    name, vision_layers, text_layers = request.param
    ref = reference_model(name, vision_layers, text_layers)
    sd = state_dict(ref)
    config, params = from_torch({k: v.numpy() for k, v in sd.items()})
    return request.param, ref, sd, clip_jax.build(config, params)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_into_open_clip(case, suffix, tmp_path):
    (name, vision_layers, text_layers), ref, ref_sd, model = case
    path = export(model, tmp_path / f"model{suffix}")
    loaded = torch.load(path, weights_only=True) if suffix == ".pt" else load_file(str(path))
    target = open_clip_model(name, vision_layers, text_layers)
    target.load_state_dict(loaded, strict=True)  # raises on any missing or unexpected key
    got = target.state_dict()
    assert set(got) == set(ref_sd)
    for k, v in ref_sd.items():
        if k.endswith("num_batches_tracked"):
            continue  # a counter, not a weight; exported as 0
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    if suffix == ".pt":  # the same weights give the same logits; checked once per model
        images, tokens = inputs(target)
        assert_matches(model, reference_outputs(target, images, tokens), images, tokens)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_reads_back_identical(case, suffix, tmp_path):
    """What `python -m convert` reads from the exported file is the model's params, bit for bit."""
    _, _, _, model = case
    path = export(model, tmp_path / f"model{suffix}")
    config, params = read_params(path)
    assert config == model.config
    want = clip_jax.flat_params(model)
    assert set(params) == set(want)
    for k, v in want.items():
        assert params[k].dtype == v.dtype and params[k].shape == v.shape and np.array_equal(params[k], v), k


def test_fp16_mix_is_openai_s(case, tmp_path):
    """dtype="fp16_mix" gives each tensor the dtype open_clip.model.convert_weights_to_lp gives it."""
    (name, vision_layers, text_layers), ref, _, model = case
    lp = open_clip_model(name, vision_layers, text_layers)
    open_clip.model.convert_weights_to_lp(lp, torch.float16)
    want = {k: v.dtype for k, v in lp.state_dict().items()}
    got = torch.load(export(model, tmp_path / "mix.pt", dtype="fp16_mix"), weights_only=True)
    assert {k: v.dtype for k, v in got.items()} == want
    assert {torch.float16, torch.float32} <= set(want.values())
    ref_sd = state_dict(ref)
    for k, v in got.items():
        assert torch.equal(v, ref_sd[k].to(v.dtype)), k  # the same rounding torch does


def test_dtype_argument_and_bfloat16(tmp_path):
    config, params = from_torch({k: v.numpy() for k, v in state_dict(reference_model("ViT-B-32", 1, 1)).items()})
    model = clip_jax.build(config, params, param_dtype="bfloat16")
    sd = torch.load(export(model, tmp_path / "bf16.pt"), weights_only=True)  # "keep": as stored
    assert {v.dtype for v in sd.values()} == {torch.bfloat16}
    flat = clip_jax.flat_params(model)
    want = torch_state_dict(flat)
    for k, v in sd.items():  # same bits
        assert np.array_equal(v.view(torch.int16).numpy(), np.asarray(want[k]).view(np.int16)), k
    sd32 = torch.load(export(model, tmp_path / "f32.pt", dtype="float32"), weights_only=True)
    assert {v.dtype for v in sd32.values()} == {torch.float32}
    with pytest.raises(ValueError, match="dtype must be one of"):
        export(model, tmp_path / "x.pt", dtype="int8")


def test_data_records_aligned_and_mmap(case, tmp_path):
    """Like torch.save: every data/<key> record starts at a multiple of 64 bytes, so mmap loading works."""
    _, _, ref_sd, model = case
    path = export(model, tmp_path / "model.pt")
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        assert {i.filename.split("/", 1)[1] for i in infos} >= {"data.pkl", "byteorder", "version"}
        assert zf.read(f"{infos[0].filename.split('/')[0]}/byteorder") == b"little"
        for info in infos:
            if "/data/" in info.filename:
                name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
                assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
    mapped = torch.load(path, weights_only=True, mmap=True)
    assert all(torch.equal(mapped[k], v) for k, v in ref_sd.items() if "num_batches" not in k)


def test_pickle_uses_only_torch_s_own_globals(case, tmp_path):
    _, _, _, model = case
    path = export(model, tmp_path / "model.pt")
    with zipfile.ZipFile(path) as zf:
        pkl = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    globals_ = {arg for op, arg, _ in pickletools.genops(pkl) if op.name == "GLOBAL"}
    assert globals_ <= {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch FloatStorage",
                        "torch LongStorage"}
    assert {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch FloatStorage"} <= globals_


@pytest.mark.parametrize("value", [0, 1, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**40 + 7, -1, -(2**31), -(2**40)])
def test_pickle_integers(value):
    """Sizes and element counts past 2**31 (large embedding tables) need LONG1, as pickle writes them."""
    p = _Pickle()
    p.int_(value)
    p.int_tuple((value, 3))
    p.out += b"\x86."  # TUPLE2, STOP
    assert pickle.loads(bytes(p.out)) == (value, (value, 3))


def test_compressed_loads_and_is_smaller(tmp_path):
    params = {"logit_scale": np.float32(4.6).reshape(()), "token_embedding.embedding": np.zeros((4096, 64), np.float32)}
    plain = export(params, tmp_path / "plain.pt")
    small = export(params, tmp_path / "small.pt", compress=True)
    assert small.stat().st_size < plain.stat().st_size / 20
    sd = torch.load(small, weights_only=True)
    assert sd["token_embedding.weight"].shape == (4096, 64) and sd["logit_scale"].shape == ()
    back = load_state_dict(small)  # and the torch-free reader
    assert np.array_equal(back["token_embedding.weight"], params["token_embedding.embedding"])


def test_bad_suffix_and_directory(tmp_path):
    params = {"logit_scale": np.zeros((), np.float32)}
    with pytest.raises(ValueError, match=r"model\.npz.*\.pt.*\.safetensors"):
        export(params, tmp_path / "model.npz")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        export(params, tmp_path / "missing" / "model.pt")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_unsupported_dtype_named(tmp_path, suffix):
    with pytest.raises(TypeError, match="logit_scale: cannot export a tensor of dtype complex64"):
        export({"logit_scale": np.zeros((), np.complex64)}, tmp_path / f"x{suffix}")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_failed_write_leaves_old_file(tmp_path, monkeypatch, suffix):
    """A write that dies halfway leaves the previous file as it was and no temporary file."""
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"old")
    calls = []

    def die_on_second_record(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_record(*args, **kwargs)

    def die_in_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    real_record = torch_writer._write_record
    monkeypatch.setattr(torch_writer, "_write_record", die_on_second_record)
    monkeypatch.setattr(torch_writer, "save_file", die_in_save_file)
    with pytest.raises(OSError, match="disk full"):
        export({"logit_scale": np.zeros((), np.float32)}, path)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == [path.name]


def test_export_params_mapping_with_bfloat16_numpy(tmp_path):
    params = {"visual.proj": np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)}
    sd = torch.load(export(params, tmp_path / "p.pt"), weights_only=True)
    assert sd["visual.proj"].dtype == torch.bfloat16
    assert torch.equal(sd["visual.proj"].float(), torch.arange(6.0).reshape(2, 3))


# --- output paths (the atomic-write helper every command shares) ----------------------------------


def test_output_path_fifo_symlink_and_full_disk(tmp_path, monkeypatch):
    """Only regular files are replaced: a FIFO is refused and stays a FIFO; a symlink is written through
    (the link stays, its target gets the file). A full disk is one line naming the file, nothing left."""
    params = {"logit_scale": np.zeros((), np.float32)}
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    with pytest.raises(FileExistsError, match=r"fifo\.pt: exists and is a FIFO, not a regular file"):
        export(params, fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)

    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "model.pt"
    target.write_bytes(b"old")
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    export(params, link)
    assert link.is_symlink() and torch.load(target, weights_only=True)["logit_scale"] == 0
    assert sorted(os.listdir(tmp_path / "real")) == ["model.pt"]

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch_writer, "_write_record", full)
    with pytest.raises(OSError, match=r"^\S*model\.pt: no space left on device") as e:
        export(params, tmp_path / "model.pt")
    assert e.value.errno == errno.ENOSPC and len(str(e.value).splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["fifo.pt", "link.pt", "real"]


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    """A temporary file left by a killed writer goes at the next write into its folder; one whose lock
    is held (a live writer) or that is newer than this process stays."""
    prefix = ".clip_jax-tmp.model.pt."
    stale, live, new = (tmp_path / f"{prefix}{name}" for name in ("stale", "live", "new"))
    for p in (stale, live, new):
        p.write_bytes(b"partial")
    for p in (stale, live):
        os.utime(p, (1_000_000_000, 1_000_000_000))  # 2001: before this process started
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        export({"logit_scale": np.zeros((), np.float32)}, tmp_path / "model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, new.name, "model.pt"])
