"""SigLIP as a family: its blocks and head against torch, open_clip's timm-tower SigLIP (ViT-B-16-SigLIP,
random weights) feature for feature, its configs from every open_clip SigLIP config, and the family
path (save, load, score with the bias, classify with sigmoid probabilities).

Tolerances: float32 with "highest" matmul precision on both sides. Features of a 12-block B/16 differ by
summation order only (XLA's and torch's matmul and LayerNorm reductions): within 1e-5 absolute of
values of size ~1 (measured ~2e-6). Logits are exp(t) (10 at init) times a cosine plus b: 1e-4.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import clip_jax
from clip_jax import model as M
from clip_jax.checkpoint import store
from clip_jax.errors import InputError, LimitError
from clip_jax.families import family_of
from clip_jax.layers import ACTIVATION_FUNCTIONS
from clip_jax.parallel import ShardedCLIP
from clip_jax.siglip import Siglip, SiglipTextModel, SiglipVisionModel
from clip_jax.siglip_config import (
    SIGLIP_PRESETS,
    TIMM_MODELS,
    SiglipConfig,
    SiglipTextConfig,
    SiglipVisionConfig,
    siglip_config_from_open_clip,
    siglip_open_clip_architecture,
)
from clip_jax.towers import MissingTowerError
from clip_jax.zeroshot import top_k

open_clip = pytest.importorskip("open_clip")

TINY = SiglipConfig(
    embed_dim=64, vision=SiglipVisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=4, mlp_width=96),
    text=SiglipTextConfig(vocab_size=100, context_length=16, width=48, layers=2, heads=4, mlp_width=80))


def _moved(model: nnx.Module, seed: int = 1) -> nnx.Module:
    """Every parameter moved off its init (LayerNorms, biases, the logit bias included)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    moved = jax.tree.map(lambda x: x + jnp.asarray(0.2 * rng.standard_normal(x.shape), x.dtype), state)
    nnx.update(model, moved)
    return model


def test_tanh_gelu_is_torchs():
    x = np.linspace(-8, 8, 4001, dtype=np.float32)
    ours = np.asarray(ACTIVATION_FUNCTIONS["gelu_tanh"](jnp.asarray(x)))
    theirs = torch.nn.functional.gelu(torch.from_numpy(x), approximate="tanh").numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6)  # float32 tanh; exact erf GELU differs by 1e-3
    assert np.abs(ours - np.asarray(ACTIVATION_FUNCTIONS["gelu"](jnp.asarray(x)))).max() > 1e-4


OPEN_CLIP_SIGLIPS = [n for n in open_clip.list_models() if "SigLIP" in n and "SO400M-16-SigLIP-i18n" not in n]


@pytest.mark.parametrize("name", OPEN_CLIP_SIGLIPS)
def test_every_open_clip_siglip_config_reads(name):
    """Each of open_clip's SigLIP configs gives the shapes of its released model (the preset of the
    same name) and the text activation open_clip builds (exact GELU unless act_kwargs say tanh)."""
    cfg = open_clip.get_model_config(name)
    ours = siglip_config_from_open_clip(cfg)
    preset = SiglipConfig.from_name(name)
    timm_act = TIMM_MODELS[cfg["vision_cfg"]["timm_model_name"]][3]  # checked against timm's source elsewhere
    assert ours.vision == dataclasses.replace(preset.vision, activation=timm_act)
    by_name = siglip_open_clip_architecture(name)  # model="ViT-..." without the config file
    assert (by_name.vision, by_name.text, by_name.image_processor) == (ours.vision, ours.text, "open_clip")
    assert dataclasses.replace(ours.text, activation="gelu_tanh") == dataclasses.replace(
        preset.text, vocab_size=ours.text.vocab_size)
    assert ours.text.activation == ("gelu_tanh" if cfg["text_cfg"].get("act_kwargs") else "gelu")
    assert (ours.image_processor, ours.tokenizer_style) == ("open_clip", "open_clip")


def test_a_text_tower_without_its_head_is_refused_by_name():
    cfg = open_clip.get_model_config("ViT-SO400M-16-SigLIP-i18n-256")
    with pytest.raises(InputError, match="proj_type"):
        siglip_config_from_open_clip(cfg)


@pytest.mark.parametrize("name", SIGLIP_PRESETS)
def test_presets_build_from_shapes(name):
    config = SiglipConfig.from_name(name)
    _, state = M.abstract_model(config)
    shapes = M.param_shapes(state)
    assert family_of(config).check_header(config, shapes) is None
    v = config.vision
    assert shapes["visual.positional_embedding"] == ((v.image_size // v.patch_size) ** 2, v.width)


@pytest.mark.parametrize("bad, error", [
    ({"vision": {"layers": 0}}, LimitError), ({"text": {"activation": "relu"}}, InputError),
    ({"embed_dim": 32}, InputError), ({"vision": {"width": 30, "heads": 4}}, InputError),
    ({"text": {"heads": True}}, InputError), ({"bogus": 1}, InputError), ([1, 2], InputError),
    ({"vision": {"patch_size": 500}}, InputError), ({"tokenizer": 5}, InputError),
])
def test_bad_configs_are_refused_by_field(bad, error):
    with pytest.raises(error):
        SiglipConfig.from_dict(bad)


def test_config_round_trips_through_json():
    config = dataclasses.replace(TINY, tokenizer="vocab/spiece.model", image_processor="open_clip")
    assert SiglipConfig.from_json(config.to_json()) == config


@pytest.fixture(scope="module")
def b16():
    """open_clip's ViT-B-16-SigLIP (timm trunk), random weights moved off their init, and ours from its
    state dict through open_clip's names."""
    from clip_jax.checkpoint.siglip_names import OPEN_CLIP, as_checkpoint, to_ours
    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-16-SigLIP").eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name or name.endswith("bias") or "logit" in name or "latent" in name or "ln_" in name:
                p.add_(0.2 * torch.randn_like(p))
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    config = siglip_config_from_open_clip(open_clip.get_model_config("ViT-B-16-SigLIP"))
    checkpoint = as_checkpoint(to_ours(sd, OPEN_CLIP, "clip"), config, "clip", "open_clip", "ViT-B-16-SigLIP")
    return ref, M.build(config, checkpoint.params)


def test_open_clip_timm_siglip_features(b16):
    ref, ours = b16
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 224, 224, 3)).astype(np.float32)
    tokens = rng.integers(0, 32000, (3, 64)).astype(np.int32)
    with torch.no_grad():
        img = ref.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
        txt = ref.encode_text(torch.from_numpy(tokens).long()).numpy()
        scale, bias = ref.logit_scale.exp().item(), ref.logit_bias.item()
    np.testing.assert_allclose(np.asarray(ours.encode_image(images)), img, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.encode_text(tokens)), txt, atol=1e-5)
    norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    per_image, per_text = clip_jax.clip_logits(ours, images, tokens)
    np.testing.assert_allclose(np.asarray(per_image), scale * norm(img) @ norm(txt).T + bias, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(per_text), np.asarray(per_image).T)


def test_single_towers_have_what_they_hold():
    full = Siglip(TINY, rngs=nnx.Rngs(0))
    params = M.flat_params(full)
    family = family_of(TINY)
    text = M.build(TINY, {k: v for k, v in params.items() if k.startswith("text.")}, **family.build_args("text"))
    vision = M.build(TINY, {k: v for k, v in params.items() if k.startswith("visual.")},
                     **family.build_args("vision"))
    assert (type(text), type(vision)) == (SiglipTextModel, SiglipVisionModel)
    tokens = np.arange(32, dtype=np.int32).reshape(2, 16)
    images = np.zeros((1, 32, 32, 3), np.uint8)
    np.testing.assert_array_equal(np.asarray(text.encode_text(tokens)), np.asarray(full.encode_text(tokens)))
    np.testing.assert_array_equal(np.asarray(vision.encode_image(images)), np.asarray(full.encode_image(images)))
    with pytest.raises(MissingTowerError, match="SiglipTextModel.encode_image: .* no image tower"):
        text.encode_image(images)
    with pytest.raises(MissingTowerError, match="no text tower"):
        vision.encode_text(tokens)


def test_text_is_never_trimmed_and_needs_its_context():
    model = Siglip(TINY, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="needs all 16 token columns"):
        model.encode_text(np.ones((1, 8), np.int32))
    with pytest.raises(ValueError):
        model.encode_text(np.full((1, 16), 100, np.int32))  # past the vocabulary


def test_states_are_transformers_fields():
    """pooled is the head's output for both towers (transformers' pooler_output), which are the features."""
    model = _moved(Siglip(TINY, rngs=nnx.Rngs(0)))
    tokens = np.random.default_rng(0).integers(0, 100, (2, 16)).astype(np.int32)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    ts, vs = clip_jax.text_states(model, tokens), clip_jax.image_states(model, images)
    # Two programs (the states keep every block's output), which XLA's CPU code may round apart by a few ulps
    # of these features (up to ~4.4): measured 1.2e-6 on an AVX-512 machine. A wrong head is off by ~1.
    np.testing.assert_allclose(np.asarray(ts.pooled), np.asarray(model.encode_text(tokens)), rtol=0, atol=3e-6)
    np.testing.assert_allclose(np.asarray(vs.pooled), np.asarray(model.encode_image(images)), rtol=0, atol=3e-6)
    assert len(ts.hidden_states) == len(vs.hidden_states) == 3
    assert vs.last_hidden_state.shape == (2, 16, 64)


def test_saved_loaded_sharded_and_classified(tmp_path):
    """build -> store.save -> clip_jax.load -> ShardedCLIP: the same logits, bias included; zero-shot
    probabilities are each class's sigmoid."""
    model = _moved(Siglip(TINY, rngs=nnx.Rngs(0)))
    path = tmp_path / "tiny_siglip.safetensors"
    store.save(path, M.flat_params(model), TINY)
    loaded, preprocess = clip_jax.load(path)
    assert type(loaded) is Siglip and loaded.config == TINY
    assert preprocess.processor == "transformers" and preprocess.n_px == 32
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    tokens = rng.integers(0, 100, (4, 16)).astype(np.int32)
    want = np.asarray(clip_jax.clip_logits(model, images, tokens)[0])
    np.testing.assert_array_equal(np.asarray(clip_jax.clip_logits(loaded, images, tokens)[0]), want)
    sharded = ShardedCLIP(loaded, batch_size=4)
    np.testing.assert_allclose(np.asarray(sharded.clip_logits(images, tokens)[0]), want, atol=1e-5)
    img = np.asarray(M.l2_normalize(model.encode_image(images)))
    weights = np.asarray(M.l2_normalize(model.encode_text(tokens))).T
    probs, idx = top_k(img, weights, float(np.exp(model.logit_scale[...])), 4, bias=float(model.logit_bias[...]))
    np.testing.assert_allclose(probs, np.take_along_axis(1 / (1 + np.exp(-want)), idx, axis=1), rtol=1e-5)
    np.testing.assert_array_equal(idx, np.argsort(-want, axis=1, kind="stable"))


def _hf_siglip(text: dict, vision: dict):
    """transformers' SiglipModel of these shapes, random weights moved off their init."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias") or "logit" in name or "probe" in name:
                p.add_(0.2 * torch.randn_like(p))
    return hf


SHAPES = {
    "tiny": (dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80, vocab_size=100,
                  max_position_embeddings=16, projection_size=64),
             dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, image_size=32,
                  patch_size=8)),
    "odd": (dict(hidden_size=72, num_hidden_layers=3, num_attention_heads=6, intermediate_size=100, vocab_size=77,
                 max_position_embeddings=12, projection_size=96),
            dict(hidden_size=96, num_hidden_layers=1, num_attention_heads=8, intermediate_size=136, image_size=30,
                 patch_size=7)),  # 30 px in patches of 7: 4 a side, the remainder dropped as HF's VALID conv
    "B/16": (dict(), dict()),  # transformers' defaults are google/siglip-base-patch16-224's
}


@pytest.mark.parametrize("shape", [pytest.param("B/16", marks=pytest.mark.slow), "tiny",
                                   pytest.param("odd", marks=pytest.mark.slow)])  # slow: budget
def test_every_field_equals_transformers(shape, tmp_path):
    """clip_logits, encode_*, text_states and image_states field by field against transformers'
    SiglipModel called on input_ids alone, float32: features and logits within 1e-5 absolute (measured
    ~2e-6); hidden states within 2e-5: the residual stream of a 12-block B/16 grows to |x| ~ 5, where
    summation order alone moves float32 by about 1e-5 (measured 1.1e-5 on 3 of 147,456 values)."""
    text, vision = SHAPES[shape]
    hf = _hf_siglip(text, vision)
    hf.save_pretrained(tmp_path)
    model, _ = clip_jax.load(tmp_path)
    c = model.config
    rng = np.random.default_rng(1)
    images = rng.standard_normal((2, c.vision.image_size, c.vision.image_size, 3)).astype(np.float32)
    tokens = rng.integers(0, c.text.vocab_size, (3, c.text.context_length)).astype(np.int32)
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)), input_ids=torch.from_numpy(tokens).long(),
                 output_hidden_states=True)
    close = lambda ours, theirs: np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-5)
    per_image, per_text = clip_jax.clip_logits(model, images, tokens)
    close(per_image, out.logits_per_image)
    close(per_text, out.logits_per_text)
    close(model.encode_image(images), out.vision_model_output.pooler_output)
    close(model.encode_text(tokens), out.text_model_output.pooler_output)
    for ours, theirs in ((clip_jax.text_states(model, tokens), out.text_model_output),
                         (clip_jax.image_states(model, images), out.vision_model_output)):
        np.testing.assert_allclose(np.asarray(ours.last_hidden_state), theirs.last_hidden_state.numpy(), atol=2e-5)
        close(ours.pooled, theirs.pooler_output)
        assert len(ours.hidden_states) == len(theirs.hidden_states)
        for a, b in zip(ours.hidden_states, theirs.hidden_states):
            np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=2e-5)
