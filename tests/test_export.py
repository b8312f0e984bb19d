"""Export back to PyTorch without torch: clip_jax -> .pt / .safetensors -> torch.load(weights_only=True)
-> open_clip's CLIP(strict=True) gives the same weights and logits; the file read back gives identical params.

Logit tolerance as in test_parity.py: float32 with matmul precision "highest", logits at scale 50 agree to
1e-4 (50 x the 2e-6 feature tolerance); weights and params must be bit-identical.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import pickle
import pickletools
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import jax
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


# --- the model goes with its weights: export -> load is the same model, with no warning ----------------
#
# One change of every declared config field (a test below fails when a field has no entry), and ResNets.
# Each is exported to every format, read back by load and by convert, and must give the same config, the
# same params bit for bit and the same features, with no warning (nothing assumed).

FIELD_CHANGES = {
    "vision.image_size": {"vision.image_size": 64}, "vision.layers": {"vision.layers": 1},
    "vision.width": {"vision.width": 48}, "vision.patch_size": {"vision.patch_size": 16},
    "vision.heads": {"vision.heads": 4}, "vision.mlp_ratio": {"vision.mlp_ratio": 2.0},
    "vision.ls_init_value": {"vision.ls_init_value": 0.1}, "vision.pool_type": {"vision.pool_type": "avg"},
    "vision.final_ln_after_pool": {"vision.final_ln_after_pool": True, "vision.pool_type": "avg"},
    "vision.no_ln_pre": {"vision.no_ln_pre": True},
    "text.context_length": {"text.context_length": 24}, "text.vocab_size": {"text.vocab_size": 49500},
    "text.width": {"text.width": 48}, "text.heads": {"text.heads": 4}, "text.layers": {"text.layers": 1},
    "text.mlp_ratio": {"text.mlp_ratio": 3.0}, "text.ls_init_value": {"text.ls_init_value": 0.1},
    "text.no_causal_mask": {"text.no_causal_mask": True}, "text.pool_type": {"text.pool_type": "last"},
    "text.eos_id": {"text.eos_id": 49407, "text.pool_type": "eos"}, "text.proj_bias": {"text.proj_bias": True},
    "embed_dim": {"embed_dim": 24}, "activation": {"activation": "gelu"}, "layer_norm_eps": {"layer_norm_eps": 1e-6},
    "image_mean": {"image_mean": (0.5, 0.4, 0.3)}, "image_std": {"image_std": (0.2, 0.25, 0.3)},
    "resize_mode": {"resize_mode": "longest"}, "interpolation": {"interpolation": "bilinear"},
    "fill_color": {"fill_color": 128},
}
PREPROCESSING = ("image_mean", "image_std", "resize_mode", "interpolation", "fill_color")  # features unchanged
RESNETS = {"resnet": {}, "resnet gelu": {"activation": "gelu"}, "resnet heads": {"vision.heads": 4}}
# Options transformers' CLIP lacks: its format refuses them rather than write another model.
NOT_IN_TRANSFORMERS = {"vision.ls_init_value", "vision.pool_type", "vision.final_ln_after_pool", "vision.no_ln_pre",
                       "text.ls_init_value", "text.no_causal_mask", "text.pool_type", "text.proj_bias",
                       "resize_mode", "fill_color", "resnet", "resnet gelu", "resnet heads"}
FORMATS = (".pt", ".safetensors", "transformers")


def changed(base, changes: dict):
    """base with {"vision.heads": 4, "embed_dim": 24, ...} set."""
    from clip_jax.config import CLIPConfig

    parts = {"vision": {}, "text": {}, "": {}}
    for key, value in changes.items():
        tower, _, name = key.rpartition(".")
        parts[tower][name] = value
    return CLIPConfig(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, **parts[""],
                         "vision": dataclasses.replace(base.vision, **parts["vision"]),
                         "text": dataclasses.replace(base.text, **parts["text"])})


def variant(name: str):
    from .tiny import TINY, TINY_RN

    return changed(TINY_RN, RESNETS[name]) if name in RESNETS else changed(TINY, FIELD_CHANGES[name])


def test_every_declared_field_has_a_change():
    """A new config field needs an entry above, so that its export round trip is tested."""
    from clip_jax.config import CLIPConfig, TextConfig, VisionConfig

    from .tiny import TINY

    towers = (("vision.", VisionConfig), ("text.", TextConfig), ("", CLIPConfig))
    declared = {f"{prefix}{f.name}" for prefix, cls in towers for f in dataclasses.fields(cls)
                if f.name not in ("vision", "text")}
    assert set(FIELD_CHANGES) == declared
    for name in FIELD_CHANGES:
        assert getattr(variant(name), name.split(".")[0]) != getattr(TINY, name.split(".")[0]), name


@pytest.mark.parametrize("name", [*FIELD_CHANGES, *RESNETS])
def test_open_clip_config_round_trips(name):
    """config_to_open_clip is config_from_open_clip's inverse, and open_clip's own config classes take it."""
    from clip_jax.config import config_from_open_clip, config_to_open_clip

    config = variant(name)
    written = json.loads(json.dumps(config_to_open_clip(config)))  # what the file holds
    assert config_from_open_clip(written["model_cfg"], written["preprocess_cfg"]) == config
    assert written["model_cfg"]["quick_gelu"] is (config.activation == "quick_gelu")
    open_clip.model.CLIPVisionCfg(**written["model_cfg"]["vision_cfg"])  # no key open_clip doesn't know
    open_clip.model.CLIPTextCfg(**written["model_cfg"]["text_cfg"])


def _export_to(model, fmt: str, folder):
    folder.mkdir()
    if fmt == "transformers":
        return export(model, folder / "hf", format="transformers")
    return export(model, folder / f"open_clip_model{fmt}")


def _features(model, config):
    from .tiny import tiny_batch

    images, tokens = tiny_batch(config)
    return np.asarray(model.encode_image(images)), np.asarray(model.encode_text(tokens))


def _read_back_quietly(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, preprocess = clip_jax.load(path)
        config, params = read_params(path) if Path(path).is_file() else (model.config, clip_jax.flat_params(model))
    assert not [str(w.message) for w in caught]  # nothing assumed
    return model, preprocess, config, params


# Features cost a compile a variant (~5 s on 2 cores): the default run compares them for a few variants, and
# config and params (which decide the features) for all; `pytest -m slow` compares the features of the rest.
FEATURES_IN_DEFAULT_RUN = ("activation", "vision.heads", "text.pool_type", "resnet gelu")
MODEL_CHANGES = [n for n in (*FIELD_CHANGES, *RESNETS) if n not in PREPROCESSING]
ROUND_TRIPS = [pytest.param(n, n in FEATURES_IN_DEFAULT_RUN, id=n) for n in MODEL_CHANGES] + [
    pytest.param(n, True, id=f"{n}-features", marks=pytest.mark.slow)
    for n in MODEL_CHANGES if n not in FEATURES_IN_DEFAULT_RUN]


@pytest.mark.parametrize("name,features", ROUND_TRIPS)
def test_export_then_load_is_the_same_model(name, features, tmp_path):
    """For every format: load and read_params give the config, the params bit for bit and the features
    of the model exported (a file's open_clip config decides QuickGELU or GELU, head width, pooling...)."""
    from .tiny import tiny_model

    config = variant(name)
    model = tiny_model(config)
    want_params = clip_jax.flat_params(model)
    want = _features(model, config) if features else None
    for fmt in FORMATS:
        if fmt == "transformers" and name in NOT_IN_TRANSFORMERS:
            with pytest.raises(ValueError, match="not supported|transformers"):
                _export_to(model, fmt, tmp_path / "refused")
            continue
        path = _export_to(model, fmt, tmp_path / fmt.strip("."))
        loaded, _, got_config, params = _read_back_quietly(path)
        assert loaded.config == config and got_config == config, fmt
        assert set(params) == set(want_params), fmt
        for k, v in want_params.items():
            assert np.asarray(params[k]).dtype == v.dtype and np.array_equal(params[k], v), (fmt, k)
        for got, expected in zip(_features(loaded, config), want) if features else ():
            np.testing.assert_array_equal(got, expected, err_msg=fmt)


@pytest.mark.parametrize("name", PREPROCESSING)
def test_export_keeps_the_preprocessing(name, tmp_path):
    """The preprocessing that belongs to the weights comes back with them (open_clip's preprocess_cfg)."""
    from .tiny import tiny_params

    config = variant(name)
    model = clip_jax.build(config, tiny_params(config))
    for fmt in (".pt", ".safetensors"):
        path = _export_to(model, fmt, tmp_path / fmt.strip("."))
        assert _read_back_quietly(path)[2] == config
        assert clip_jax.convert(path, tmp_path / f"converted{fmt}.safetensors") and \
            read_params(tmp_path / f"converted{fmt}.safetensors")[0] == config


def test_exact_gelu_is_not_read_as_quick_gelu(tmp_path):
    """The case that went wrong: without its config, an exact-GELU file read back as QuickGELU, features
    off by ~0.03. With it, load and convert give the model exported; params alone (no config to write)
    bring back the assumption, its warning, and the other features."""
    from clip_jax.checkpoint import AssumedActivationWarning, store

    from .tiny import TINY, tiny_model

    # widths of 64 a head, so that the bare weights can be read at all (heads inferred as width // 64)
    config = changed(TINY, {"activation": "gelu", "vision.width": 64, "vision.heads": 1, "text.width": 64,
                            "text.heads": 1})
    model = tiny_model(config)
    path = export(model, tmp_path / "model.pt")
    assert json.loads((tmp_path / "open_clip_config.json").read_text())["model_cfg"]["quick_gelu"] is False
    assert _read_back_quietly(path)[2] == config
    assert store.load(clip_jax.convert(path))[0] == config
    (tmp_path / "bare").mkdir()
    bare = export(clip_jax.flat_params(model), tmp_path / "bare" / "model.pt")
    assert not (tmp_path / "bare" / "open_clip_config.json").exists()  # params carry no config
    with pytest.warns(AssumedActivationWarning):
        assumed, params = read_params(bare)
    assert assumed == dataclasses.replace(config, activation="quick_gelu")
    image = _features(clip_jax.build(assumed, params), config)[0]
    assert np.abs(image - _features(model, config)[0]).max() > 1e-3


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_two_models_in_one_folder(tmp_path, suffix):
    """Each file carries its own config, so a folder of several exports reads back right; the beside file
    (open_clip reads one a folder) is the last one's, and replacing another model's says so."""
    from .tiny import tiny_model

    gelu, quick = variant("activation"), variant("vision.heads")
    export(tiny_model(gelu), tmp_path / f"a{suffix}")
    with pytest.warns(UserWarning, match="described another model"):
        export(tiny_model(quick), tmp_path / f"b{suffix}")
    assert _read_back_quietly(tmp_path / f"a{suffix}")[2] == gelu
    assert _read_back_quietly(tmp_path / f"b{suffix}")[2] == quick
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export(tiny_model(quick), tmp_path / f"c{suffix}")  # the same model again: nothing to say


OPEN_CLIP_SIDE = ["activation", "vision.heads", "embed_dim", "vision.ls_init_value", "text.proj_bias",
                  "vision.final_ln_after_pool", "vision.no_ln_pre", "vision.mlp_ratio", "text.eos_id",
                  "text.no_causal_mask", "layer_norm_eps", "image_mean", "resnet gelu"]
OPEN_CLIP_IN_DEFAULT_RUN = ("activation", "vision.heads", "image_mean")  # each ~10 s: the rest with -m slow


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in OPEN_CLIP_IN_DEFAULT_RUN else pytest.mark.slow)
                                  for n in OPEN_CLIP_SIDE])
def test_open_clip_reads_the_export(name, tmp_path):
    """open_clip.create_model_and_transforms("local-dir:FOLDER") on the exported .safetensors and its
    open_clip_config.json builds the same model: the features agree to test_parity's tolerance, and its
    transform normalizes with the same mean and std at the same size. The .pt loads strictly into
    open_clip's CLIP built from that config."""
    from .test_parity import FEATURE_ATOL
    from .tiny import tiny_batch, tiny_model

    config = variant(name)
    model = tiny_model(config)
    images, tokens = tiny_batch(config)
    with jax.default_matmul_precision("highest"):
        want = [np.asarray(clip_jax.l2_normalize(f)) for f in (model.encode_image(images), model.encode_text(tokens))]
    export(model, tmp_path / "open_clip_model.safetensors")
    oc, _, transform = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")
    normalize = transform.transforms[-1]
    assert tuple(normalize.mean) == config.image_mean and tuple(normalize.std) == config.image_std
    cfg = json.loads((tmp_path / "open_clip_config.json").read_text())
    strict = open_clip.model.CLIP(**cfg["model_cfg"]).eval()
    strict.load_state_dict(torch.load(export(model, tmp_path / "m.pt"), weights_only=True), strict=True)
    for m in (oc.eval(), strict):
        with torch.no_grad():
            img = m.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True).numpy()
            txt = m.encode_text(torch.from_numpy(tokens).long(), normalize=True).numpy()
        np.testing.assert_allclose(img, want[0], atol=FEATURE_ATOL, rtol=0)
        np.testing.assert_allclose(txt, want[1], atol=FEATURE_ATOL, rtol=0)


def test_fine_tuning_export_round_trips(tmp_path):
    """README's fine-tuning recipe ends in `export(trainer.model(state), "finetuned.pt")`: a GELU model with
    a head width of 32, trained with gradient checkpointing, loads back as itself (config, params, features)."""
    from clip_jax.train import Trainer, optimizer

    from .tiny import TRAIN, tiny_model, train_batch

    config = changed(TRAIN, {"activation": "gelu", "vision.heads": 2, "text.heads": 2})
    trainer = Trainer(tiny_model(config), optimizer(1e-3, 10, 1), remat=True)
    state, _ = trainer.step(trainer.init(), *train_batch())
    tuned = trainer.model(state)
    loaded, _, got_config, params = _read_back_quietly(export(tuned, tmp_path / "finetuned.pt"))
    assert got_config == config and loaded.config == config
    assert all(np.array_equal(params[k], v) for k, v in clip_jax.flat_params(tuned).items())
    images, tokens = train_batch()
    np.testing.assert_array_equal(np.asarray(loaded.encode_image(images)), np.asarray(tuned.encode_image(images)))
    np.testing.assert_array_equal(np.asarray(loaded.encode_text(tokens)), np.asarray(tuned.encode_text(tokens)))


def test_config_in_the_file_is_input_too(tmp_path):
    """The config a file carries is checked as any other: bad JSON, too deep, or not the weights' is an
    error naming the file; a config the caller gives still comes first."""
    from clip_jax.checkpoint import ConversionError
    from clip_jax.errors import InputError, LimitError

    from .tiny import TINY, tiny_model

    model = tiny_model(TINY)
    sd = torch_state_dict(model)
    for text, error, match in (("{not json", InputError, "not JSON"), ("[" * 10_000, LimitError, "nested"),
                               (json.dumps({"model_cfg": {"embed_dim": 8}}), ConversionError, "in the file")):
        path = tmp_path / "bad.pt"
        torch_writer.write_torch_zip(path, sd, extra={"open_clip_config.json": text.encode()})
        with pytest.raises(error, match=rf"bad\.pt.*{match}"):
            read_params(path)
    path = tmp_path / "bad.safetensors"
    torch_writer.write_safetensors(path, sd, {"open_clip_config": "{not json"})
    with pytest.raises(InputError, match=r"bad\.safetensors \(open_clip_config\): not JSON"):
        read_params(path)
    gelu = changed(TINY, {"activation": "gelu"})
    assert read_params(export(model, tmp_path / "ok.pt"), config=gelu)[0] == gelu
