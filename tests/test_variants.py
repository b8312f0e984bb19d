"""open_clip's variants of the CLIP architecture: parity with open_clip's CLIP class (random init, small
layer counts) for every supported config field, refusal of the others, full-size shapes of the big
models, and positional-embedding interpolation against open_clip's resize_pos_embed.

Tolerances as in test_parity.py (float32, matmul precision "highest"): normalized features to 2e-6
absolute (measured <= 3e-7 here), logits at scale 50 to 1e-4. For each field that changes no
parameter shape, the test also shows that getting it wrong misses that tolerance by far, so a port
that ignored the field would fail.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types

import jax
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

import clip_jax
from clip_jax.checkpoint.torch_names import expected_params, from_torch, to_torch, torch_name
from clip_jax.config import CLIPConfig, config_from_open_clip, config_from_state_dict
from clip_jax.model import abstract_model
from clip_jax.pos_embed import bicubic_weights, resize_pos_embed
from clip_jax.roles import declarations

from .tiny import OPEN_CLIP_TINY as TINY  # one layer a tower (test_exact_gelu_vs_quick_gelu uses two)

FEATURE_ATOL = 2e-6
LOGIT_ATOL = 1e-4
WRONG = 10 * FEATURE_ATOL  # a wrong field moves features by more (measured: >= 8e-5 for eps, else >= 1e-3)

CAPTIONS = ["a photo of a dog", "a diagram", "two cats sleeping on a red sofa next to an open window, at night"]
TOKENS = open_clip.tokenize(CAPTIONS).numpy().astype(np.int32)


def variant(quick_gelu: bool = False, base=TINY, **fields) -> dict:
    """TINY with fields set: "vision_cfg.pool_type": "avg" etc. (passed as vision__pool_type=...)."""
    cfg = copy.deepcopy(base)
    for key, value in fields.items():
        tower, _, name = key.partition("__")
        cfg[f"{tower}_cfg"][name] = value
    cfg["quick_gelu"] = quick_gelu
    return cfg


def open_clip_model(cfg: dict, seed: int = 0) -> torch.nn.Module:
    """open_clip's CLIP from `cfg`, with the parameters that init to constants moved off them (LayerNorm
    gains and biases, LayerScale gammas, the text projection bias) so that each one shows."""
    cfg = copy.deepcopy(cfg)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**cfg).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".gamma"):  # LayerScale inits to ls_init_value (1e-4 would hide the blocks)
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.startswith(("ln_", "visual.ln_", "transformer", "visual.transformer")) and "ln_" in name \
                    and name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif name == "text_projection.bias":
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        model.logit_scale.fill_(math.log(50.0))
    return model


def images_for(config: CLIPConfig, n: int = 2) -> np.ndarray:
    size = config.vision.image_size
    return np.random.RandomState(0).randn(n, size, size, 3).astype(np.float32)


@torch.no_grad()
def reference(model: torch.nn.Module, images: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    img = model.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True).numpy()
    txt = model.encode_text(torch.from_numpy(tokens).long(), normalize=True).numpy()
    return {"image": img, "text": txt, "logits": model.logit_scale.exp().item() * img @ txt.T}


def ours(config: CLIPConfig, params, images=None, tokens=None) -> dict[str, np.ndarray]:
    model = clip_jax.build(config, params)
    out = {}
    with jax.default_matmul_precision("highest"):
        if images is not None:
            out["image"] = np.asarray(clip_jax.l2_normalize(model.encode_image(images)))
        if tokens is not None:
            out["text"] = np.asarray(clip_jax.l2_normalize(model.encode_text(tokens)))
        if images is not None and tokens is not None:
            out["logits"] = np.asarray(clip_jax.clip_logits(model, images, tokens)[0])
    return out


def state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def check_parity(cfg: dict, towers: str = "image text"):
    """-> (config, params, images, reference outputs) after asserting parity of the towers a variant
    changes (jit compiling the other would only cost time); the logits too when both."""
    model = open_clip_model(cfg)
    config = config_from_open_clip(cfg)
    _, params = from_torch(state_dict(model), config)
    images = images_for(config)
    ref = reference(model, images, TOKENS)
    got = ours(config, params, images if "image" in towers else None, TOKENS if "text" in towers else None)
    for key in got:
        np.testing.assert_allclose(got[key], ref[key], atol=LOGIT_ATOL if key == "logits" else FEATURE_ATOL, rtol=0)
    return config, params, images, ref


def assert_wrong(config: CLIPConfig, params, images, ref, tower: str) -> None:
    """The same params under a wrong config miss the reference by far more than the tolerance."""
    got = ours(config, params, images if tower == "image" else None, TOKENS if tower == "text" else None)
    assert np.abs(got[tower] - ref[tower]).max() > WRONG


def replace(config: CLIPConfig, **fields) -> CLIPConfig:
    """dataclasses.replace on the towers: vision__pool_type="tok" etc."""
    towers = {"vision": {}, "text": {}, "": {}}
    for key, value in fields.items():
        tower, _, name = key.rpartition("__")
        towers[tower][name] = value
    return dataclasses.replace(
        config, vision=dataclasses.replace(config.vision, **towers["vision"]),
        text=dataclasses.replace(config.text, **towers["text"]), **towers[""],
    )


# --- parity, one field (or one open_clip model family's combination) at a time ----------------------


def test_exact_gelu_vs_quick_gelu():
    """open_clip's non-"-quickgelu" models use exact erf GELU; the flag is recorded in the config."""
    cfg = variant(quick_gelu=False, vision__layers=2, text__layers=2)
    config, params, images, ref = check_parity(cfg)
    assert config.activation == "gelu"
    assert_wrong(replace(config, activation="quick_gelu"), params, images, ref, "image")
    assert config_from_open_clip(variant(quick_gelu=True)).activation == "quick_gelu"


def test_head_width():
    """vision_cfg.head_width 32 on width 128: 4 heads (OpenAI's rule, width // 64, would give 2)."""
    config, params, images, ref = check_parity(variant(vision__head_width=32), "image")
    assert config.vision.heads == 4
    assert_wrong(replace(config, vision__heads=2), params, images, ref, "image")


def test_mlp_ratio():
    """ViT-bigG-14's vision mlp_ratio 4.9231 and a text mlp_ratio other than 4 (int(width * ratio))."""
    config, *_ = check_parity(variant(vision__mlp_ratio=4.9231, text__mlp_ratio=3.7362))
    assert (config.vision.mlp_width, config.text.mlp_width) == (int(128 * 4.9231), int(128 * 3.7362))


def test_layer_scale():
    """ls_init_value: LayerScale params ls_1.gamma / ls_2.gamma in both towers."""
    config, params, images, ref = check_parity(variant(vision__ls_init_value=1e-4, text__ls_init_value=1e-4))
    assert "visual.transformer.resblocks.0.ls_2.gamma" in params and "transformer.resblocks.0.ls_1.gamma" in params
    ones = {k: np.ones_like(v) if k.endswith(".gamma") else v for k, v in params.items()}
    assert_wrong(config, ones, images, ref, "image")


def test_text_proj_bias():
    """proj_bias: text_projection is an nn.Linear; its weight is [out, in] and it adds a bias."""
    config, params, images, ref = check_parity(variant(text__proj_bias=True), "text")
    assert params["text_projection.kernel"].shape == (128, 64) and "text_projection.bias" in params
    assert_wrong(config, {**params, "text_projection.bias": np.zeros(64, np.float32)}, images, ref, "text")


def test_no_causal_mask_last_pool():
    """CLIPA's text tower: bidirectional attention, pooled at the last position. Not trimmable: shorter
    token arrays are refused rather than silently giving other features."""
    # Two layers: with one, the last position sees every token under either mask.
    cfg = variant(text__no_causal_mask=True, text__pool_type="last", text__layers=2)
    config, params, images, ref = check_parity(cfg, "text")
    assert not config.text.causal and not config.text.trimmable
    assert_wrong(replace(config, text__no_causal_mask=False), params, images, ref, "text")
    model = clip_jax.build(config, params)
    with pytest.raises(ValueError, match="needs all 77 token columns"):
        model.encode_text(TOKENS[:, :20])


def test_text_pool_eos_and_first():
    """pool_type 'eos' reads the first eos_id (position 0 in a row without it, as torch's argmax);
    'first' reads position 0."""
    eos_id = int(TOKENS[0, 3])  # a word of the first caption only
    config, params, images, ref = check_parity(variant(text__pool_type="eos", text__eos_id=eos_id), "text")
    assert_wrong(replace(config, text__pool_type="argmax"), params, images, ref, "text")
    config, *_ = check_parity(variant(text__pool_type="first"), "text")
    assert config.text.trimmable


def test_vision_avg_pool():
    """pool_type 'avg': mean of the patch tokens after ln_post."""
    config, params, images, ref = check_parity(variant(vision__pool_type="avg"), "image")
    assert_wrong(replace(config, vision__pool_type="tok"), params, images, ref, "image")


def test_clipa_vision_tower():
    """CLIPA's vision tower: no ln_pre, 'avg' pooling, ln_post after the pooling."""
    cfg = variant(vision__no_ln_pre=True, vision__pool_type="avg", vision__final_ln_after_pool=True)
    config, params, images, ref = check_parity(cfg, "image")
    assert "visual.ln_pre.scale" not in params
    assert_wrong(replace(config, vision__final_ln_after_pool=False), params, images, ref, "image")


def test_vit_b_16_plus_240_resolution():
    """ViT-B-16-plus-240's widths (vision 896, text 640, embed 640) at 240 px, with one layer a tower."""
    cfg = copy.deepcopy(open_clip.get_model_config("ViT-B-16-plus-240"))
    cfg["vision_cfg"]["layers"] = cfg["text_cfg"]["layers"] = 1
    config, *_ = check_parity(cfg, "image")
    assert (config.vision.image_size, config.vision.grid_size, config.vision.heads) == (240, 15, 14)


def test_resnet_head_width():
    """A ModifiedResNet's attention pool has width * 32 // head_width heads."""
    cfg = {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
           "text_cfg": TINY["text_cfg"]}
    config, *_ = check_parity(cfg, "image")
    assert config.vision.heads == 16


def test_no_op_fields_and_norm_eps():
    """Fields that don't change inference in open_clip's CLIP class are accepted (patch dropout is off in
    eval, pad_id is never read, sin-cos position embeddings are stored params); norm_kwargs eps is
    the LayerNorm eps."""
    cfg = variant(vision__patch_dropout=0.5, vision__pos_embed_type="sin_cos_2d", text__pad_id=7,
                  vision__norm_kwargs={"eps": 1e-6}, text__norm_kwargs={"eps": 1e-6})
    config, params, images, ref = check_parity(cfg)
    assert config.layer_norm_eps == 1e-6
    assert_wrong(replace(config, layer_norm_eps=1e-5), params, images, ref, "image")


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("where,field,value", [
    ("vision_cfg", "attentional_pool", True),
    ("vision_cfg", "timm_model_name", "convnext_base"),
    ("vision_cfg", "pool_type", "none"),
    ("vision_cfg", "qk_norm", True),
    ("vision_cfg", "scaled_cosine_attn", True),
    ("vision_cfg", "block_type", "custom"),
    ("vision_cfg", "act_kwargs", {"approximate": "tanh"}),
    ("vision_cfg", "image_size", [224, 256]),
    ("vision_cfg", "norm_kwargs", {"elementwise_affine": False}),
    ("vision_cfg", "some_future_field", 1),
    ("text_cfg", "embed_cls", True),
    ("text_cfg", "hf_model_name", "roberta-base"),
    ("text_cfg", "hf_tokenizer_name", "bert-base-uncased"),
    ("text_cfg", "proj_type", "none"),
    ("text_cfg", "pool_type", "none"),
    ("text_cfg", "norm_kwargs", {"eps": 1e-6}),  # a different eps from the vision tower's
    (None, "init_logit_bias", -10),
    (None, "custom_text", True),
    (None, "multimodal_cfg", {"width": 512}),
])
def test_refused_fields(where, field, value):
    cfg = copy.deepcopy(TINY)
    (cfg[where] if where else cfg)[field] = value
    with pytest.raises(ValueError, match=f"not supported: .*{field}"):
        config_from_open_clip(cfg)


def test_refused_in_config_too():
    with pytest.raises(ValueError, match="not supported: vision pool_type='none'"):
        clip_jax.VisionConfig(pool_type="none")
    with pytest.raises(ValueError, match="not supported: ls_init_value=.* ModifiedResNet"):
        clip_jax.VisionConfig(layers=(1, 1, 1, 1), width=16, patch_size=None, ls_init_value=1e-5)


def test_state_dict_inference_sees_the_weights_traces():
    """LayerScale, the text projection bias and a missing ln_pre show in a state dict's names."""
    cfg = variant(vision__ls_init_value=1e-4, text__proj_bias=True, vision__no_ln_pre=True)
    sd = {k: v.detach() for k, v in open_clip_model(cfg).state_dict().items()}
    inferred = config_from_state_dict(sd)
    assert inferred.vision.ls_init_value is not None and inferred.text.ls_init_value is None
    assert inferred.text.proj_bias and inferred.vision.no_ln_pre and inferred.embed_dim == 64


# --- full-size shapes (no forward pass) -----------------------------------------------------------


@pytest.mark.parametrize("name", ["ViT-H-14", "ViT-g-14", "ViT-bigG-14", "ViT-B-16-plus-240", "ViT-H-14-378-quickgelu"])
def test_big_model_shapes(name):
    """expected_params(config) gives exactly open_clip's state_dict names and shapes (built on torch's
    meta device: no memory)."""
    oc_cfg = open_clip.get_model_config(name)
    with torch.device("meta"):
        ref = open_clip.model.CLIP(**oc_cfg)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    config = config_from_open_clip(oc_cfg)
    got = {}
    declared = declarations(abstract_model(config)[1])
    for k, shape in expected_params(config).items():
        got[torch_name(k, declared[k])] = to_torch(np.empty(shape, np.uint8), declared[k]).shape
    assert got == want
    v = oc_cfg["vision_cfg"]
    assert config.vision.heads == v["width"] // v.get("head_width", 64)
    assert config.vision.mlp_width == int(v["width"] * v.get("mlp_ratio", 4.0))
    assert config.activation == ("quick_gelu" if oc_cfg.get("quick_gelu") else "gelu")


# --- positional-embedding interpolation -----------------------------------------------------------

SIZES = [(7, 8), (7, 12), (14, 24), (16, 24), (24, 16), (16, 7), (5, 17), (17, 5)]


@pytest.mark.parametrize("antialias", [True, False])
def test_bicubic_weights_equal_torch(antialias):
    """The interpolation matrix equals torch's F.interpolate(bicubic, align_corners=False), read off by
    resizing basis vectors in float64: equal to 1e-12 (up, down, antialiased or not)."""
    for a, b in SIZES:
        basis = torch.eye(a, dtype=torch.float64)[:, None, None, :]
        want = F.interpolate(basis, size=(1, b), mode="bicubic", align_corners=False, antialias=antialias)
        np.testing.assert_allclose(bicubic_weights(a, b, antialias), want[:, 0, 0, :].numpy().T, atol=1e-12)


def test_resize_pos_embed_matches_open_clip():
    """Against open_clip's resize_pos_embed (torch bicubic, antialias=True): exact in float64 (1e-12);
    in float32 to 1e-5 relative to the largest value, since torch computes its interpolation weights in
    float32 (each off by up to ~1e-6, measured) where we use float64."""
    for a, b in SIZES:
        for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            pos = torch.randn(a * a + 1, 32, generator=torch.Generator().manual_seed(a * b), dtype=dtype)
            sd = {"visual.positional_embedding": pos.clone()}
            open_clip.model.resize_pos_embed(sd, types.SimpleNamespace(visual=types.SimpleNamespace(grid_size=(b, b))))
            want = sd["visual.positional_embedding"].numpy()
            got = resize_pos_embed(pos.numpy(), b)
            assert got.dtype == want.dtype and got.shape == (b * b + 1, 32)
            np.testing.assert_allclose(got, want, atol=atol * np.abs(want).max(), rtol=0)
            np.testing.assert_array_equal(got[0], pos[0].numpy())  # the class token's row is kept
    with pytest.raises(ValueError, match="not a square grid"):
        resize_pos_embed(np.zeros((11, 4)), 3)


def test_load_at_another_resolution(tmp_path):
    """load(path, image_size=96) of a 64 px model equals open_clip's model built at 96 px and loaded with
    its own resize (factory.load_checkpoint -> resize_pos_embed)."""
    from safetensors.torch import save_file

    cfg = variant()
    small = open_clip_model(cfg)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(path))
    big_cfg = variant(vision__image_size=96)
    big = open_clip.model.CLIP(**big_cfg).eval()
    open_clip.factory.load_checkpoint(big, str(path))

    model, preprocess = clip_jax.load(path, config=config_from_open_clip(cfg), image_size=96)
    assert model.config.vision.image_size == 96 and preprocess.n_px == 96
    images = images_for(model.config)
    ref = reference(big, images, TOKENS)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(clip_jax.l2_normalize(model.encode_image(images)))
    # Through a resized float32 embedding: the 1e-6 weight rounding above adds to the usual 2e-6.
    np.testing.assert_allclose(got, ref["image"], atol=4e-6, rtol=0)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        clip_jax.load(path, config=config_from_open_clip(cfg), image_size=100)
