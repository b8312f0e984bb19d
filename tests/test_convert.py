"""The converter (name rules, error collection), the converted file, and `python -m convert`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

import clip_jax
from clip_jax.checkpoint import ConversionError, read_params, store
from clip_jax.checkpoint.torch_names import from_torch, to_torch_state_dict

from .reference import reference_model, save, save_torchscript, state_dict
from .test_hub import assert_matches, open_clip_config, open_clip_tiny, safetensors_bytes
from .tiny import OPEN_CLIP_TINY as TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_sd():
    model = reference_model("ViT-B-32", vision_layers=1, text_layers=1)
    return {k: v.numpy() for k, v in state_dict(model).items()}


@pytest.fixture(scope="module")
def small_rn_sd():
    model = reference_model("RN50", vision_layers=[1, 1, 1, 1], text_layers=1)
    return {k: v.numpy() for k, v in state_dict(model).items()}


def test_round_trip_names_and_layouts(small_sd, small_rn_sd):
    for sd in (small_sd, small_rn_sd):
        _, params = from_torch(sd)
        back = to_torch_state_dict(params)
        ignored = {k for k in sd if k.endswith("num_batches_tracked")}
        assert set(back) == set(sd) - ignored
        for k, v in back.items():
            np.testing.assert_array_equal(v, sd[k].reshape(v.shape), err_msg=k)


def test_layouts(small_sd, small_rn_sd):
    _, p = from_torch(small_sd)
    # Linear [out, in] -> kernel [in, out]; q, k, v stay stacked along the output axis.
    np.testing.assert_array_equal(p["transformer.resblocks.0.mlp.c_fc.kernel"],
                                  small_sd["transformer.resblocks.0.mlp.c_fc.weight"].T)
    np.testing.assert_array_equal(p["visual.transformer.resblocks.0.attn.in_proj.kernel"],
                                  small_sd["visual.transformer.resblocks.0.attn.in_proj_weight"].T)
    # conv [O, I, kh, kw] -> (kh, kw, I, O); proj and text_projection are [in, out] already.
    np.testing.assert_array_equal(p["visual.conv1.kernel"], small_sd["visual.conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["text_projection"], small_sd["text_projection"])
    np.testing.assert_array_equal(p["visual.proj"], small_sd["visual.proj"])
    assert p["logit_scale"].shape == ()
    _, r = from_torch(small_rn_sd)
    np.testing.assert_array_equal(r["visual.layer1.0.downsample.1.var"],
                                  small_rn_sd["visual.layer1.0.downsample.1.running_var"])
    np.testing.assert_array_equal(r["visual.bn1.scale"], small_rn_sd["visual.bn1.weight"])


def test_logit_scale_1d_and_extra_keys(small_sd):
    sd = dict(small_sd)
    sd["logit_scale"] = sd["logit_scale"].reshape(1)
    for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):
        sd[key] = np.array(7)
    _, params = from_torch(sd)
    assert params["logit_scale"].shape == ()


def test_all_errors_reported_together(small_sd):
    sd = dict(small_sd)
    del sd["ln_final.bias"]
    sd["visual.extra_thing"] = np.zeros(3, np.float32)
    sd["visual.ln_post.weight"] = np.zeros(5, np.float32)
    with pytest.raises(ConversionError) as e:
        from_torch(sd)
    msg = str(e.value)
    assert "1 missing: ln_final.bias" in msg
    assert "1 unexpected: visual.extra_thing" in msg
    assert "1 wrong shape: visual.ln_post.weight: (5,), expected (768,)" in msg


def test_not_clip():
    with pytest.raises(ConversionError, match="not a CLIP checkpoint.*ln_final.weight|not a CLIP checkpoint"):
        from_torch({"foo": np.zeros(2)})


def test_store_round_trip_and_dtypes(small_sd, tmp_path):
    config, params = from_torch(small_sd)
    path = tmp_path / "m.safetensors"
    store.save(path, params, config)
    config2, params2 = store.load(path)
    assert config2 == config
    assert set(params2) == set(params)
    for k in params:
        np.testing.assert_array_equal(params2[k], params[k])
    store.save(path, params, config, dtype="bfloat16")
    _, bf = store.load(path)
    assert bf["visual.proj"].dtype == ml_dtypes.bfloat16
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed away


def test_python_m_convert(small_sd, tmp_path):
    src = tmp_path / "ViT-tiny.pt"
    torch.save({k: torch.from_numpy(v) for k, v in small_sd.items()}, src)
    out = subprocess.run([sys.executable, "-m", "convert", str(src)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    dst = src.with_suffix(".safetensors")
    assert dst.is_file() and str(dst) in out.stdout
    config, params = read_params(dst)
    _, direct = read_params(src)
    for k in direct:
        np.testing.assert_array_equal(params[k], direct[k])

    other = tmp_path / "sub.safetensors"
    out = subprocess.run([sys.executable, "-m", "convert", str(src), "-o", str(other), "--dtype", "float16"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert read_params(other)[1]["visual.proj"].dtype == np.float16


@pytest.mark.parametrize("content,expect", [
    (b"", "empty"),
    (b"\x00garbage" * 100, "not a"),
])
def test_cli_failure_is_one_line_no_output(tmp_path, content, expect):
    src = tmp_path / "bad.pt"
    src.write_bytes(content)
    out = subprocess.run([sys.executable, "-m", "convert", str(src)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "bad.pt" in lines[0]
    assert not src.with_suffix(".safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.pt"]  # no temporary left behind either


def test_cli_conversion_error_names_keys(small_sd, tmp_path):
    sd = {k: torch.from_numpy(v) for k, v in small_sd.items() if k != "ln_final.bias"}
    src = tmp_path / "broken.pt"
    save(sd, src, "zip")
    out = subprocess.run([sys.executable, "-m", "clip_jax.cli", "convert", str(src)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "broken.pt" in out.stderr and "missing: ln_final.bias" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not src.with_suffix(".safetensors").exists()


def test_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        clip_jax.load(tmp_path / "nope.pt")


# --- which config: open_clip_config.json beside, --config, --model, or inferred with a warning -----------


@pytest.fixture(scope="module")
def gelu_model():
    """A one-layer open_clip model trained (here: initialized) with exact GELU, which its weights can't show."""
    return open_clip_tiny(quick_gelu=False)


def _convert_cli(capsys, *argv) -> tuple[int, str]:
    """`clip-jax convert ARGV` in this process (a subprocess would start JAX again): (exit code, stderr)."""
    from clip_jax.cli.main import main

    capsys.readouterr()
    code = main(["convert", *map(str, argv)])
    return code, capsys.readouterr().err


def _config_source(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return f.metadata()["config_source"]


def test_convert_reads_open_clip_config_beside_the_file(gelu_model, tmp_path):
    """The layout of a Hugging Face snapshot: the config beside the weights gives exact GELU, as load does."""
    (tmp_path / "open_clip_model.safetensors").write_bytes(safetensors_bytes(gelu_model))
    (tmp_path / "open_clip_config.json").write_bytes(open_clip_config())
    out = subprocess.run([sys.executable, "-m", "convert", str(tmp_path / "open_clip_model.safetensors"), "-o",
                          str(tmp_path / "out.safetensors")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and not out.stderr, out.stderr
    model, preprocess = clip_jax.load(tmp_path / "out.safetensors")
    assert model.config.activation == "gelu" and preprocess.mean == (0.5, 0.5, 0.5)
    assert_matches(model, gelu_model)
    assert _config_source(tmp_path / "out.safetensors") == "open_clip_config.json beside the checkpoint"


def test_convert_config_file_and_architecture(gelu_model, tmp_path, monkeypatch, capsys):
    """--config takes an open_clip_config.json or a bare model config; --model an open_clip architecture
    (shrunk to the tiny one here, so the test needn't build a ViT-B/32); both as keywords of convert too."""
    import json

    from clip_jax import pretrained

    src = tmp_path / "weights" / "model.bin"
    src.parent.mkdir()
    save(gelu_model, src, "zip")
    (tmp_path / "bare.json").write_text(json.dumps(TINY))
    assert _convert_cli(capsys, src, "-o", tmp_path / "a.safetensors", "--config", tmp_path / "bare.json") == (0, "")
    assert_matches(clip_jax.load(tmp_path / "a.safetensors")[0], gelu_model)
    assert _config_source(tmp_path / "a.safetensors") == "config file bare.json"

    monkeypatch.setitem(pretrained.architectures(), "ViT-B-32", TINY)
    for arch, activation in (("ViT-B-32", "gelu"), ("ViT-B-32-quickgelu", "quick_gelu")):
        dst = tmp_path / f"{arch}.safetensors"
        assert _convert_cli(capsys, src, "-o", dst, "--model", arch) == (0, "")
        model, _ = clip_jax.load(dst)
        assert model.config.activation == activation
        assert _config_source(dst) == f"open_clip architecture {arch}"
    assert_matches(clip_jax.load(tmp_path / "ViT-B-32.safetensors")[0], gelu_model)
    assert_matches(clip_jax.load(clip_jax.convert(src, tmp_path / "kw.safetensors", model="ViT-B-32"))[0], gelu_model)
    assert_matches(clip_jax.load(clip_jax.convert(src, tmp_path / "kw2.safetensors", config=TINY))[0], gelu_model)
    assert_matches(clip_jax.load(src, model="ViT-B-32")[0], gelu_model)

    code, err = _convert_cli(capsys, src, "--model", "ViT-B-33")
    assert code == 1 and "unknown open_clip architecture 'ViT-B-33'; did you mean" in err
    with pytest.raises(SystemExit):
        _convert_cli(capsys, src, "--config", tmp_path / "bare.json", "--model", "ViT-B-32")
    assert "not allowed with" in capsys.readouterr().err


def test_convert_without_a_config_warns_in_one_line(gelu_model, tmp_path, capsys):
    """Nothing says which activation: converted with QuickGELU, one line on stderr says so and how to say
    otherwise, and the file records the assumption. OpenAI's own TorchScript archives need no warning."""
    src = tmp_path / "model.safetensors"
    save(gelu_model, src, "safetensors")
    code, err = _convert_cli(capsys, src, "-o", tmp_path / "out.safetensors")
    lines = err.strip().splitlines()
    assert code == 0 and len(lines) == 1, err
    assert "assumed OpenAI's QuickGELU" in lines[0] and "--model ARCH" in lines[0]
    assert str(src) in lines[0]
    assert read_params(tmp_path / "out.safetensors")[0].activation == "quick_gelu"
    assert _config_source(tmp_path / "out.safetensors") == "inferred from the weights' shapes; QuickGELU assumed"
    with pytest.warns(clip_jax.checkpoint.AssumedActivationWarning, match="model.safetensors"):
        clip_jax.load(src)

    openai = tmp_path / "openai.pt"
    save_torchscript(open_clip_tiny(quick_gelu=True), openai, fp16_mix=False)
    assert _convert_cli(capsys, openai) == (0, "")
    want = "inferred from the weights of OpenAI's TorchScript archive"
    assert _config_source(openai.with_suffix(".safetensors")) == want


def test_convert_reads_what_export_wrote(tmp_path, capsys):
    """An exact-GELU model exported by clip_jax converts back to itself, with nothing assumed and nothing on
    stderr, by `python -m convert` and `clip-jax convert`, from .pt and .safetensors, to clip_jax's format
    and to transformers'; even with the beside file gone (the file carries its config too)."""
    import dataclasses

    from .tiny import TINY, tiny_model

    config = dataclasses.replace(TINY, activation="gelu")
    model = tiny_model(config)
    want = clip_jax.flat_params(model)
    pt = clip_jax.export(model, tmp_path / "model.pt")
    out = subprocess.run([sys.executable, "-m", "convert", str(pt), "-o", str(tmp_path / "a.safetensors")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and not out.stderr, out.stderr
    assert read_params(tmp_path / "a.safetensors")[0] == config
    assert _config_source(tmp_path / "a.safetensors") == "open_clip config in the file"
    st = clip_jax.export(model, tmp_path / "model.safetensors")
    (tmp_path / "open_clip_config.json").unlink()
    for src in (pt, st):
        dst = tmp_path / f"b{src.suffix}.safetensors"
        assert _convert_cli(capsys, src, "-o", dst) == (0, "")
        got_config, params = read_params(dst)
        assert got_config == config and all(np.array_equal(params[k], v) for k, v in want.items())
        assert _convert_cli(capsys, src, "-o", tmp_path / f"hf{src.suffix}", "--format", "transformers") == (0, "")
        assert clip_jax.load(tmp_path / f"hf{src.suffix}")[0].config == config
