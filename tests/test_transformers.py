"""transformers' CLIP format in and out, single towers, and every hidden state, against transformers 5.x
(torch) models with random weights and shrunk depth (one or two blocks a tower). No network: the Hub is a
fake cache read offline (test_hub.fake_hub).

Tolerance: float32 with matmul precision "highest", every field (last_hidden_state, each hidden state,
pooled, features, logits) within ATOL of transformers'. Measured: at most 3.4e-6 on hidden states of
magnitude ~1-4 (ViT-L/14-336 shape: 4.3e-6); ATOL is about 3x that.

Cost: compiling dominates (3-6 s of CPU a program), and clip_jax keeps compiled programs by the model's
structure, so tests share a handful of models (module-scoped fixtures: a small CLIP, a text tower without
projection, a bigG-like text tower) and run under one matmul precision: a model built again from the same
config, or a copy of the same weights in another format, reuses what an earlier test compiled.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import clip_jax  # noqa: E402
from clip_jax.checkpoint import hf_format  # noqa: E402
from clip_jax.cli import main as cli  # noqa: E402
from clip_jax.cli.main import add_convert_args  # noqa: E402

from .test_hub import COMMIT1, fake_hub, open_clip_tiny  # noqa: E402,F401
from .tiny import TINY_RN, TRANSFORMERS_TINY as SMALL  # noqa: E402

ATOL = 1.5e-5
LOGIT_ATOL = 1e-4  # logits are scaled by exp(logit_scale) = 50
ROOT = Path(__file__).resolve().parents[1]
TOKENS = clip_jax.tokenize(["a photo of a dog", "a diagram of a cat on a mat", "!"])

# ViT-B/32 and ViT-L/14-336 shapes (quick_gelu), depth shrunk; the text towers at their widths.
B32 = dict(text=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8),
           vision=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, image_size=224, patch_size=32),
           projection_dim=512)
L14_336 = dict(text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12),
               vision=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, image_size=336,
                           patch_size=14),
               projection_dim=768)
# bigG's text tower traits (exact GELU, eos_token_id 49407, head width 64, projection) at a small width.
BIGG_TEXT = dict(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_hidden_layers=2,
                 hidden_act="gelu", eos_token_id=49407, projection_dim=256)


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """LayerNorms away from their init (so a wrong eps or a missing norm shows), logit_scale ln 50."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.add_(0.2 * torch.randn(m.bias.shape, generator=g))
        if hasattr(model, "logit_scale"):
            model.logit_scale.fill_(math.log(50.0))
    return model.eval()


def clip_model(shape: dict, layers: int = 2, act: str = "quick_gelu", eos: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.CLIPConfig(
        text_config=dict(shape["text"], num_hidden_layers=layers, hidden_act=act, eos_token_id=eos),
        vision_config=dict(shape["vision"], num_hidden_layers=layers, hidden_act=act),
        projection_dim=shape["projection_dim"])
    return perturbed(transformers.CLIPModel(cfg), seed)


def save(model, folder: Path, **kw) -> Path:
    model.save_pretrained(folder, **kw)
    return folder


def images_for(size: int, n: int = 2) -> np.ndarray:
    return np.random.RandomState(0).randn(n, size, size, 3).astype(np.float32)


def close(got, want, atol=ATOL, what=""):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=atol, rtol=0, err_msg=what)


def assert_text_states(model, ref_text, proj=None, tokens=TOKENS):
    """Every field of clip_jax.text_states against transformers' text tower (ref_text: a CLIPTextModel)."""
    with torch.no_grad():
        out = ref_text(input_ids=torch.from_numpy(tokens).long(), output_hidden_states=True)
        want_features = proj(out.pooler_output) if proj is not None else None
    with jax.default_matmul_precision("highest"):
        compare(clip_jax.text_states(model, tokens), out, want_features, lambda: model.encode_text(tokens))


def compare(s, out, want_features, encode):
    """clip_jax's TowerStates against transformers' output, field by field; encode(): the features."""
    close(s.last_hidden_state, out.last_hidden_state, what="last_hidden_state")
    assert len(s.hidden_states) == len(out.hidden_states)
    for i, (a, b) in enumerate(zip(s.hidden_states, out.hidden_states)):
        close(a, b, what=f"hidden_states[{i}]")
    close(s.pooled, out.pooler_output, what="pooled")
    if want_features is None:
        assert s.features is None
    else:
        close(s.features, want_features, what="features")
        close(encode(), want_features, what="encode")


def assert_image_states(model, ref_vision, proj=None, images=None):
    size = model.config.vision.image_size
    images = images_for(size) if images is None else images
    with torch.no_grad():
        out = ref_vision(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2), output_hidden_states=True)
        want_features = proj(out.pooler_output) if proj is not None else None
    with jax.default_matmul_precision("highest"):
        compare(clip_jax.image_states(model, images), out, want_features, lambda: model.encode_image(images))


def assert_logits(model, ref):
    images = images_for(model.config.vision.image_size)
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(TOKENS).long(), pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2))
    per_image, per_text = clip_jax.clip_logits(model, images, TOKENS)
    close(per_image, out.logits_per_image, LOGIT_ATOL, "logits_per_image")
    close(per_text, out.logits_per_text, LOGIT_ATOL, "logits_per_text")


def assert_clip(model, ref, logits=True):
    assert isinstance(model, clip_jax.CLIP)
    assert_text_states(model, ref.text_model, ref.text_projection)
    assert_image_states(model, ref.vision_model, ref.visual_projection)
    if logits:
        assert_logits(model, ref)


@pytest.fixture(scope="module", autouse=True)
def highest_precision():
    """Every program in this module compiled once, at the precision the tolerance is stated for."""
    with jax.default_matmul_precision("highest"):
        yield


def loaded(ref, folder: Path) -> SimpleNamespace:
    """A transformers model saved to folder and read back by clip_jax, shared by the tests that take it."""
    save(ref, folder)
    return SimpleNamespace(ref=ref, folder=folder, model=clip_jax.load(folder)[0])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """SMALL CLIPModel, two blocks a tower, quick_gelu, legacy eos_token_id 2."""
    return loaded(clip_model(SMALL), tmp_path_factory.mktemp("small") / "hf")


@pytest.fixture(scope="module")
def text_tower(tmp_path_factory):
    """A CLIPTextModel (no projection), SMALL text widths, two blocks."""
    torch.manual_seed(2)
    cfg = transformers.CLIPTextConfig(**dict(SMALL["text"], num_hidden_layers=2, eos_token_id=2))
    return loaded(perturbed(transformers.CLIPTextModel(cfg)), tmp_path_factory.mktemp("text") / "text_encoder")


@pytest.fixture(scope="module")
def bigg(tmp_path_factory):
    """A CLIPTextModelWithProjection with bigG's text traits (BIGG_TEXT)."""
    torch.manual_seed(1)
    ref = perturbed(transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**BIGG_TEXT)))
    return loaded(ref, tmp_path_factory.mktemp("bigg") / "text_encoder_2")


# --- reading: full models ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("eos", [2, 49407], ids=["legacy-eos", "eos-49407"])
def test_vit_b32_safetensors_every_field(tmp_path, eos):
    ref = clip_model(B32, eos=eos)
    model, preprocess = clip_jax.load(save(ref, tmp_path / "hf"))
    assert model.config.text.pool_type == ("argmax" if eos == 2 else "eos")
    assert preprocess.n_px == 224
    assert_clip(model, ref)


@pytest.mark.slow
def test_vit_l14_336_pytorch_model_bin(tmp_path):
    ref = clip_model(L14_336, layers=1)
    folder = save(ref, tmp_path / "hf")
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    (folder / "model.safetensors").unlink()
    torch.save(sd, folder / "pytorch_model.bin")
    model, preprocess = clip_jax.load(folder)
    assert (model.config.vision.image_size, model.config.vision.patch_size, preprocess.n_px) == (336, 14, 336)
    assert_clip(model, ref)


def test_eos_pooling_rules_differ_where_transformers_does(tmp_path, small):
    """eos_token_id 2 pools at argmax(ids); another value at its first occurrence. With padding by the
    EOT (CLIPTokenizer's) both agree; with a token id above the EOS id only the first rule moves."""
    tokens = TOKENS.copy()
    tokens[0, 10] = 49407  # a second EOT after the first: argmax still finds the first
    assert small.model.config.text.pool_type == "argmax"
    assert_text_states(small.model, small.ref.text_model, small.ref.text_projection, tokens)
    ref = clip_model(SMALL, eos=49406)  # 49406 (SOT) at position 0: first-eos pools there, argmax at the EOT
    model, _ = clip_jax.load(save(ref, tmp_path / "eos49406"))
    assert model.config.text.pool_type == "eos"
    assert_text_states(model, ref.text_model, ref.text_projection, tokens)


def test_exact_gelu_and_layer_norm_eps(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(SMALL["text"], num_hidden_layers=1, hidden_act="gelu", layer_norm_eps=1e-3),
        vision_config=dict(SMALL["vision"], num_hidden_layers=1, hidden_act="gelu", layer_norm_eps=1e-3),
        projection_dim=32)
    ref = perturbed(transformers.CLIPModel(cfg))
    model, _ = clip_jax.load(save(ref, tmp_path / "hf"))
    assert (model.config.activation, model.config.layer_norm_eps) == ("gelu", 1e-3)
    # Both towers' states and features; not the logits (a scale times features' cosines: no activation or
    # norm of their own), whose compile costs as much as a tower's and which small's tests check.
    assert_clip(model, ref, logits=False)


def test_openai_and_transformers_copies_give_the_same_numbers(tmp_path, small):
    """The same weights in OpenAI's names (clip_jax.export to .pt) and in transformers' format."""
    from_hf = small.model
    clip_jax.export(from_hf, tmp_path / "openai.pt")
    from_openai, _ = clip_jax.load(tmp_path / "openai.pt", config=from_hf.config)
    images = images_for(64)
    np.testing.assert_array_equal(from_openai.encode_image(images), from_hf.encode_image(images))
    np.testing.assert_array_equal(from_openai.encode_text(TOKENS), from_hf.encode_text(TOKENS))


def test_preprocessor_config_mean_std(tmp_path, small):
    folder = Path(shutil.copytree(small.folder, tmp_path / "hf"))
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "crop_size": 64}))
    model, preprocess = clip_jax.load(folder)
    assert (preprocess.mean, preprocess.std, preprocess.interpolation) == ((0.5,) * 3, (0.5,) * 3, "bilinear")
    assert model.config.image_mean == (0.5,) * 3


# --- reading: single towers -------------------------------------------------------------------------


def test_bigg_like_text_tower_with_projection(bigg):
    model, ref = bigg.model, bigg.ref
    assert isinstance(model, clip_jax.TextTower) and model.config.activation == "gelu"
    assert model.config.text.pool_type == "eos"
    assert_text_states(model, ref.text_model, ref.text_projection)
    with pytest.raises(clip_jax.MissingTowerError, match="single text tower.*no image tower"):
        model.encode_image(images_for(224))
    with pytest.raises(clip_jax.MissingTowerError, match="no image tower"):
        clip_jax.image_states(model, images_for(224))
    with pytest.raises(clip_jax.MissingTowerError):
        clip_jax.clip_logits(model, images_for(224), TOKENS)


def test_text_tower_without_projection(text_tower):
    model, ref = text_tower.model, text_tower.ref
    assert isinstance(model, clip_jax.TextTower) and not model.text_projected
    assert_text_states(model, ref, None)
    with pytest.raises(ValueError, match="no projection.*pooled"):
        model.encode_text(TOKENS)
    # The penultimate layer (Stable Diffusion 2): kept alone.
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(TOKENS).long(), output_hidden_states=True).hidden_states[-2]
    s = clip_jax.text_states(model, TOKENS, layers=(-2,))
    assert len(s.hidden_states) == 1
    close(s.hidden_states[0], want)


@pytest.mark.parametrize("projection", [True, False], ids=["with-projection", "no-projection"])
def test_vision_tower(tmp_path, projection):
    torch.manual_seed(3)
    cfg = transformers.CLIPVisionConfig(**dict(SMALL["vision"], num_hidden_layers=2, projection_dim=48))
    cls = transformers.CLIPVisionModelWithProjection if projection else transformers.CLIPVisionModel
    ref = perturbed(cls(cfg))
    model, preprocess = clip_jax.load(save(ref, tmp_path / "image_encoder"))
    assert isinstance(model, clip_jax.VisionTower) and preprocess.n_px == 64
    if projection:
        assert_image_states(model, ref.vision_model, ref.visual_projection)
    else:
        assert_image_states(model, ref, None)
        with pytest.raises(ValueError, match="no projection"):
            model.encode_image(images_for(64))
    with pytest.raises(clip_jax.MissingTowerError, match="single image tower.*no text tower"):
        model.encode_text(TOKENS)


def test_towers_jit_bf16_and_functional(bigg):
    f32 = bigg.model
    bf16, _ = clip_jax.load(bigg.folder, dtype="bfloat16")
    a, b = np.asarray(f32.encode_text(TOKENS)), np.asarray(bf16.encode_text(TOKENS))
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() > 0.995
    # The states' dtypes from the program's signature: lowered (traced), not compiled; the bf16 numbers are
    # checked through encode_text above.
    s = clip_jax.calls.lower(bf16, "text_hidden_states", TOKENS, layers=(0, 1)).out_info
    assert s.hidden_states[0].dtype == jnp.bfloat16 and s.pooled.dtype == jnp.float32
    fn, params = clip_jax.functional(f32, "text_features")
    np.testing.assert_allclose(jax.jit(fn)(params, TOKENS), a, atol=1e-6)
    sharded = clip_jax.ShardedCLIP(f32, batch_size=2)  # a tower over the mesh, as a full model
    np.testing.assert_allclose(sharded.encode_text(TOKENS), a, atol=1e-6)
    with pytest.raises(clip_jax.MissingTowerError):
        sharded.encode_image(np.zeros((1, 224, 224, 3), np.uint8))
    with pytest.raises(ValueError, match="no logit scale"):
        sharded.clip_logits(np.zeros((1, 224, 224, 3), np.uint8), TOKENS)


# --- hidden states on OpenAI/open_clip-format models ------------------------------------------------


def test_states_of_an_open_clip_model_match_its_transformers_copy(tmp_path):
    """An open_clip model's states equal those of its transformers export, read by transformers."""
    oc = open_clip_tiny(quick_gelu=True)
    torch.save(oc.state_dict(), tmp_path / "oc.pt")
    model, _ = clip_jax.load(tmp_path / "oc.pt", config=clip_jax.config_from_open_clip(
        {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": 1, "width": 128, "patch_size": 16},
         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 1}},
        quick_gelu=True))
    clip_jax.export(model, tmp_path / "hf", format="transformers")
    ref = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    assert_clip(model, ref, logits=False)  # logit_scale's export: test_export_round_trip_through_transformers
    with torch.no_grad():  # and open_clip's own features
        want = oc.encode_image(torch.from_numpy(images_for(64)).permute(0, 3, 1, 2)).numpy()
    close(model.encode_image(images_for(64)), want)


def test_layers_argument(small):
    model = small.model  # two blocks a tower: three hidden states
    full = clip_jax.text_states(model, TOKENS)
    assert len(full.hidden_states) == 3
    some = clip_jax.text_states(model, TOKENS, layers=(-1, 0))  # out of order, one left out
    for got, i in zip(some.hidden_states, (2, 0)):
        np.testing.assert_array_equal(got, full.hidden_states[i])
    np.testing.assert_array_equal(some.last_hidden_state, full.last_hidden_state)
    # Only what is asked for is kept: the compiled program returns one state, not three.
    lowered = clip_jax.calls.lower(model, "text_hidden_states", TOKENS, layers=(1,))
    assert len(jax.tree.leaves(lowered.out_info)) == 4  # last, one state, pooled, features
    for bad in ((3,), (-4,)):
        with pytest.raises(IndexError, match="not an index of the 3 hidden states"):
            clip_jax.text_states(model, TOKENS, layers=bad)
    with pytest.raises(TypeError, match=r"layers=\(1,\)"):
        clip_jax.text_states(model, TOKENS, layers=1)
    s = clip_jax.image_states(model, np.zeros((1, 64, 64, 3), np.uint8), layers=(-2,))
    assert s.hidden_states[0].shape == (1, 17, 64) and s.features.shape == (1, 32)


def test_resnet_has_no_image_states():
    cfg = TINY_RN
    model = SimpleNamespace(config=cfg)  # refused from the config, before anything is built or traced
    with pytest.raises(ValueError, match="needs a ViT image tower.*ModifiedResNet"):
        clip_jax.image_states(model, np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="not supported: vision.layers=.*no CLIP ResNet"):
        hf_format.config_to_transformers(cfg, "clip", True)


# --- writing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ["CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel",
                                 "CLIPVisionModelWithProjection", "CLIPModel"])
def test_export_round_trip_through_transformers(tmp_path, cls):
    torch.manual_seed(5)
    if cls == "CLIPModel":
        ref = clip_model(SMALL, eos=49407)
    else:
        config = (transformers.CLIPTextConfig(**dict(SMALL["text"], num_hidden_layers=1)) if "Text" in cls
                  else transformers.CLIPVisionConfig(**dict(SMALL["vision"], num_hidden_layers=1)))
        ref = perturbed(getattr(transformers, cls)(config))
    model, _ = clip_jax.load(save(ref, tmp_path / "in"))
    out = clip_jax.export(model, tmp_path / "out", format="transformers")
    back, info = getattr(transformers, cls).from_pretrained(out, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    want = ref.state_dict()
    for k, v in back.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert json.loads((out / "config.json").read_text())["architectures"] == [cls]


def test_convert_command_to_transformers(tmp_path, capsys):
    """python -m convert SRC -o folder/ --format transformers, from an open_clip checkpoint."""
    oc = open_clip_tiny(quick_gelu=True)
    torch.save(oc.state_dict(), tmp_path / "oc.pt")
    cmd = [sys.executable, "-m", "convert", str(tmp_path / "oc.pt"), "-o", str(tmp_path / "hf"), "--format",
           "transformers", "--model", "ViT-B-32-quickgelu"]
    # The refusal through the command's own parser and runner, in this process (an interpreter start and
    # jax's import cost more than the conversion); the success below runs `python -m convert` itself.
    p = argparse.ArgumentParser(prog="python -m convert")
    add_convert_args(p)
    assert cli.run(p, [str(a) for a in cmd[3:]]) == 1
    assert "visual" in capsys.readouterr().err  # ViT-B-32's shapes aren't the tiny model's
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 64, "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": 1, "width": 128, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 1}}}))
    run = subprocess.run(cmd[:-2], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    ref = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    images = images_for(64)
    with torch.no_grad():
        want = oc.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
        got = ref.get_image_features(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2))
    close(getattr(got, "pooler_output", got), want)
    # and back to a clip_jax file
    dst = clip_jax.convert(tmp_path / "hf", tmp_path / "back.safetensors")
    np.testing.assert_allclose(clip_jax.load(dst)[0].encode_image(images), want, atol=ATOL)


def test_convert_refuses_a_tower_to_clip_jax_format(tmp_path):
    torch.manual_seed(6)
    ref = transformers.CLIPTextModel(transformers.CLIPTextConfig(**dict(SMALL["text"], num_hidden_layers=1)))
    with pytest.raises(ValueError, match="single text tower.*format='transformers'"):
        clip_jax.convert(save(ref, tmp_path / "t"))
    out = clip_jax.convert(tmp_path / "t", format="transformers", dtype="float16")
    back = transformers.CLIPTextModel.from_pretrained(out)
    assert back.final_layer_norm.weight.dtype == torch.float16 or back.dtype == torch.float32


# --- Flax msgpack and sharded checkpoints -----------------------------------------------------------


def flax_params(state_dict: dict) -> dict:
    """transformers' torch state dict -> FlaxCLIPModel's params tree (transformers' own conversion)."""
    tree: dict = {}
    for name, value in state_dict.items():
        x = value.detach().numpy()
        *parents, leaf = name.split(".")
        if leaf == "weight" and x.ndim == 4:
            leaf, x = "kernel", x.transpose(2, 3, 1, 0)
        elif leaf == "weight" and parents[-1].endswith("embedding"):
            leaf = "embedding"
        elif leaf == "weight" and ("norm" in parents[-1] or "layrnorm" in parents[-1]):
            leaf = "scale"
        elif leaf == "weight":
            leaf, x = "kernel", x.T
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = np.ascontiguousarray(x)
    return tree


def test_flax_msgpack(tmp_path, small):
    """transformers 5 removed FlaxCLIPModel (and 4.57's needs an older jax), so the file is written here
    with flax's own serializer in FlaxCLIPModel's layout: what save_pretrained wrote. Every field and the
    logits: small's full check, on weights read from the msgpack."""
    from flax.serialization import msgpack_serialize

    ref = small.ref
    folder = tmp_path / "hf"
    folder.mkdir()
    shutil.copy(small.folder / "config.json", folder)
    sd = {k: v for k, v in ref.state_dict().items() if "position_ids" not in k}
    (folder / "flax_model.msgpack").write_bytes(msgpack_serialize(flax_params(sd)))
    model, _ = clip_jax.load(folder)
    assert_clip(model, ref)


def test_sharded_safetensors_and_bin(tmp_path, small):
    ref = small.ref
    folder = save(ref, tmp_path / "st", max_shard_size="200KB")
    assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    model, _ = clip_jax.load(folder)
    assert_logits(model, ref)
    # pytorch_model.bin shards, as transformers 4.x wrote them
    bins = tmp_path / "bin"
    bins.mkdir()
    (bins / "config.json").write_text((folder / "config.json").read_text())
    sd = ref.state_dict()
    keys = sorted(sd)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: sd[k].contiguous() for k in part}, bins / name)
        weight_map.update({k: name for k in part})
    (bins / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    np.testing.assert_array_equal(clip_jax.load(bins)[0].encode_text(TOKENS), model.encode_text(TOKENS))
    weight_map[keys[0]] = "../escape.bin"
    (bins / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(clip_jax.checkpoint.CheckpointError, match="not a file name in the same folder"):
        clip_jax.load(bins)


# --- the Hub, and what is refused -------------------------------------------------------------------


def folder_files(folder: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_hf_hub_transformers_repo_and_subfolder(hf_cache, tmp_path, small, bigg):
    clip, text2 = small.ref, bigg.ref
    fake_hub(hf_cache, "openai/clip-tiny", folder_files(small.folder), COMMIT1)
    fake_hub(hf_cache, "org/sdxl", {**folder_files(bigg.folder, "text_encoder_2/"), "model_index.json": b"{}"},
             COMMIT1)
    model, _ = clip_jax.load("hf-hub:openai/clip-tiny", cache_dir=tmp_path / "c")
    assert_logits(model, clip)
    tower, _ = clip_jax.load("hf-hub:org/sdxl", subfolder="text_encoder_2", cache_dir=tmp_path / "c")
    assert_text_states(tower, text2.text_model, text2.text_projection)
    with pytest.raises(FileNotFoundError, match="no open_clip_config.json .* and no transformers config.json"):
        clip_jax.load("hf-hub:org/sdxl", subfolder="unet", cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="a single text tower; clip_jax.load builds it"):
        clip_jax.load_params("hf-hub:org/sdxl", subfolder="text_encoder_2", cache_dir=tmp_path / "c")


def test_local_diffusers_folder_subfolder(tmp_path, text_tower, bigg):
    """A local Stable Diffusion XL-style folder: clip_jax.load(folder, subfolder=...) picks one encoder."""
    root = tmp_path / "sdxl"
    shutil.copytree(text_tower.folder, root / "text_encoder")
    shutil.copytree(bigg.folder, root / "text_encoder_2")
    (root / "unet").mkdir()
    (root / "model_index.json").write_text("{}")
    two, _ = clip_jax.load(root, subfolder="text_encoder_2")
    assert isinstance(two, clip_jax.TextTower) and two.text_projected
    assert two.config.text.width == BIGG_TEXT["hidden_size"]
    assert_text_states(two, bigg.ref.text_model, bigg.ref.text_projection)
    one, _ = clip_jax.load(str(root), subfolder="text_encoder")  # a str path as well as a Path
    assert isinstance(one, clip_jax.TextTower) and not one.text_projected
    assert_text_states(one, text_tower.ref, None)
    with pytest.raises(FileNotFoundError, match="unet: not a transformers checkpoint"):
        clip_jax.load(root, subfolder="unet")
    with pytest.raises(FileNotFoundError):  # the root holds no checkpoint of its own
        clip_jax.load(root)
    with pytest.raises(FileNotFoundError, match=r"vae: no such folder \(subfolder='vae'"):
        clip_jax.load(root, subfolder="vae")
    with pytest.raises(ValueError, match="subfolder= is for hf-hub: repositories and local folders"):
        clip_jax.load(root / "text_encoder" / "config.json", subfolder="text_encoder")


@pytest.mark.parametrize("change, message", [
    ({"text_config": {"hidden_act": "gelu_new"}}, "not supported: text_config.hidden_act='gelu_new'"),
    ({"vision_config": {"hidden_act": "gelu"}}, "not supported: vision_config.hidden_act='gelu'.*one activation"),
    ({"architectures": ["CLIPSegForImageSegmentation"]}, "not supported: architectures="),
    ({"vision_config": {"num_channels": 1}}, "not supported: vision_config.num_channels=1"),
])
def test_refused_configs(tmp_path, change, message):
    ref = clip_model(SMALL, layers=1)
    folder = save(ref, tmp_path / "hf")
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message):
        clip_jax.load(folder)


def test_mismatched_weights_are_all_named(tmp_path):
    ref = clip_model(SMALL, layers=1)
    folder = save(ref, tmp_path / "hf")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] = 2
    cfg["projection_dim"] = 16
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(clip_jax.checkpoint.ConversionError, match="missing: text_model.encoder.layers.1.*wrong shape"):
        clip_jax.load(folder)
