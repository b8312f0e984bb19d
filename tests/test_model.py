"""Configs, input checks and the pure functional form (jit, pmap, grad)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import open_clip
import pytest
from flax import nnx

import clip_jax
from clip_jax.checkpoint.torch_names import expected_params
from clip_jax.config import PRESETS, CLIPConfig, canonical_name

from .tiny import TINY, TINY_RN, tiny_batch as batch, tiny_model


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_match_open_clip_configs(name):
    """The nine presets equal open_clip's configs of the same OpenAI models."""
    oc = open_clip.get_model_config(name.replace("/", "-").replace("@336px", "-336"))
    cfg = PRESETS[name]
    v, t = oc["vision_cfg"], oc["text_cfg"]
    assert cfg.embed_dim == oc["embed_dim"]
    assert cfg.vision.image_size == v["image_size"]
    assert cfg.vision.width == v["width"]
    assert cfg.vision.layers == (tuple(v["layers"]) if isinstance(v["layers"], list) else v["layers"])
    assert cfg.vision.patch_size == v.get("patch_size")
    assert (cfg.text.width, cfg.text.heads, cfg.text.layers) == (t["width"], t["heads"], t["layers"])
    assert canonical_name(name.replace("/", "-").replace("@", "-")) == name


def test_config_json_round_trip():
    for cfg in (TINY, TINY_RN, PRESETS["RN50x64"]):
        assert CLIPConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown config fields"):
        CLIPConfig.from_dict({"embed_dim": 3, "bogus": 1})
    with pytest.raises(ValueError, match="activation"):
        CLIPConfig(activation="relu")


def test_expected_params_are_state_dict_names():
    """Converting the names back gives exactly open_clip's state_dict keys for RN50 and ViT-B/32."""
    from clip_jax.checkpoint.torch_names import torch_name

    for oc_name, name in (("RN50", "RN50"), ("ViT-B-32", "ViT-B/32")):
        import torch

        with torch.device("meta"):
            ref = open_clip.model.CLIP(**open_clip.get_model_config(oc_name), quick_gelu=True)
        want = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
        got = {torch_name(k): s for k, s in expected_params(PRESETS[name]).items()}
        assert set(got) == set(want)


def test_channels_first_is_refused(tiny):
    images, tokens = batch()
    with pytest.raises(ValueError, match="channels-first.*transpose"):
        clip_jax.clip_logits(tiny, images.transpose(0, 3, 1, 2), tokens)
    with pytest.raises(ValueError, match="32x32"):
        tiny.encode_image(np.zeros((1, 48, 48, 3), np.float32))
    with pytest.raises(ValueError, match=r"images\[None\]"):
        tiny.encode_image(images[0])
    with pytest.raises(TypeError, match="int32|dtype"):
        tiny.encode_image(images.astype(np.int32))


def test_token_checks(tiny):
    _, tokens = batch()
    with pytest.raises(ValueError, match="context_length 77"):
        tiny.encode_text(np.zeros((1, 78), np.int32))
    with pytest.raises(TypeError, match="integers"):
        tiny.encode_text(tokens.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[0, 49408\)"):
        tiny.encode_text(tokens + 100)
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        tiny.encode_text(tokens[0])


def test_uint8_images_normalized_on_device(tiny):
    pixels = np.random.RandomState(1).randint(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    mean, std = np.array(TINY.image_mean, np.float32), np.array(TINY.image_std, np.float32)
    floats = ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
    np.testing.assert_allclose(tiny.encode_image(pixels), tiny.encode_image(floats), atol=1e-6)


def test_functional_under_jit_pmap_and_grad(tiny):
    images, tokens = batch()
    want, _ = clip_jax.clip_logits(tiny, images, tokens, trim=False)  # fn sees all 77 token columns

    fn, params = clip_jax.functional(tiny)
    got, _ = jax.jit(fn)(params, images, tokens)
    np.testing.assert_allclose(got, want, atol=1e-6)

    n = jax.local_device_count()
    stacked_images = np.broadcast_to(images, (n, *images.shape))
    stacked_tokens = np.broadcast_to(tokens, (n, *tokens.shape))
    pm, _ = jax.pmap(fn, in_axes=(None, 0, 0))(params, stacked_images, stacked_tokens)
    np.testing.assert_allclose(pm[0], want, atol=1e-6)

    def loss(p):
        per_image, _ = fn(p, images, tokens)
        return jax.nn.logsumexp(per_image, axis=1).mean()

    grads = jax.jit(jax.grad(loss))(params)  # jitted: op by op, the backward pass takes ~30 s of CPU
    g = grads["visual"]["conv1"]["kernel"][...]
    assert g.shape == (8, 8, 3, 32) and float(jnp.abs(g).max()) > 0
    assert float(jnp.abs(grads["logit_scale"][...])) > 0


def test_resnet_from_tiny_params_runs(tiny_rn):
    """A ModifiedResNet from tests/tiny.py's random params (their BatchNorm variances are drawn near 1: a
    negative one gives NaN features) encodes images to finite, distinct features. Its numbers against
    open_clip: test_parity's RN50 and test_blocks' Bottleneck and AttentionPool2d."""
    images, _ = batch(TINY_RN)
    features = np.asarray(tiny_rn.encode_image(images))
    assert features.shape == (2, TINY_RN.embed_dim) and np.isfinite(features).all()
    assert np.abs(features[0] - features[1]).max() > 0.1


def test_build_checks_params():
    params = {k: np.asarray(v) for k, v in clip_jax.flat_params(clip_jax.build(TINY)).items()}
    rebuilt = clip_jax.build(TINY, params)
    images, tokens = batch()
    np.testing.assert_array_equal(
        clip_jax.clip_logits(rebuilt, images, tokens)[0], clip_jax.clip_logits(clip_jax.build(TINY), images, tokens)[0]
    )
    del params["ln_final.bias"]
    with pytest.raises(ValueError, match="missing: ln_final.bias"):
        clip_jax.build(TINY, params)


def test_trimmed_text_equals_full_context():
    """Causal mask + pooling at EOT: cutting tokens after the batch's last EOT changes no feature. XLA may
    tile a 16-long and a 77-long matmul differently, so the check is to float32 rounding: 4e-6 on
    features of magnitude ~3 (measured 1.7e-6, a few float32 ulps)."""
    model = tiny_model(TINY, seed=1)
    tokens = clip_jax.tokenize(["a dog", "a photo of two cats on a red sofa", "!"])
    assert clip_jax.trim_tokens(tokens).shape == (3, 16)
    full = np.asarray(model.encode_text(tokens, trim=False))
    trimmed = np.asarray(model.encode_text(tokens, trim=True))
    np.testing.assert_allclose(trimmed, full, atol=4e-6, rtol=0)
    np.testing.assert_allclose(model.encode_text(tokens), full, atol=4e-6, rtol=0)  # the default trims
    images = np.zeros((1, 32, 32, 3), np.float32)
    np.testing.assert_allclose(clip_jax.clip_logits(model, images, tokens)[0],
                               clip_jax.clip_logits(model, images, tokens, trim=False)[0], atol=1e-5, rtol=0)


def test_trim_refused_for_bidirectional_tower():
    cfg = dataclasses.replace(TINY, text=dataclasses.replace(TINY.text, no_causal_mask=True, pool_type="last"))
    model = tiny_model(cfg, seed=1)
    tokens = clip_jax.tokenize(["a dog"])
    with pytest.raises(ValueError, match="can't be trimmed"):
        model.encode_text(tokens, trim=True)
    full = model.encode_text(tokens)  # the default leaves the 77 columns alone
    assert full.shape == (1, 16)
    with pytest.raises(ValueError, match="needs all 77"):
        model.encode_text(tokens[:, :16])
    causal = dataclasses.replace(cfg.text, no_causal_mask=False, pool_type="argmax")
    assert causal.trimmable and not cfg.text.trimmable


def test_attention_choice_checked():
    with pytest.raises(ValueError, match="'xla' or 'cudnn'"):
        clip_jax.build(TINY, attention="flash")
    with pytest.raises(ValueError, match="needs dtype bfloat16 or float16.*got dtype float32"):
        clip_jax.build(TINY, attention="cudnn")
    if jax.default_backend() != "gpu":
        # Built anywhere (to compile for a GPU target ahead of time); refused where it would run.
        cudnn = tiny_model(TINY, attention="cudnn", dtype="bfloat16")
        images, tokens = batch()
        with pytest.raises(ValueError, match="needs an NVIDIA GPU; this program is for 'cpu'"):
            cudnn.encode_image(images)
        with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
            clip_jax.clip_logits(cudnn, images, tokens)
        with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
            clip_jax.calls.lower(cudnn, "text_features", jax.ShapeDtypeStruct((2, 16), np.int32))
    model = tiny_model(TINY, attention="xla")
    images, tokens = batch()
    assert clip_jax.clip_logits(model, images, tokens)[0].shape == (2, 3)


@pytest.mark.parametrize("config", [TINY, TINY_RN], ids=["vit", "resnet"])
def test_convolutions_by_platform(config):
    """Non-overlapping convolutions (ViT's patch embedding, ResNet's 1x1s) lower to matmuls for the CPU,
    where XLA's matmul is about twice as fast as its conv; lowered for a GPU, every conv stays one, for
    cuDNN. (Lowering for CUDA needs no GPU.)"""
    model = tiny_model(config)
    convs = [m for _, m in nnx.iter_modules(model.visual) if isinstance(m, nnx.Conv)]
    patches = [c for c in convs if c.kernel_size == (c.strides, c.strides) and c.padding in ("VALID", ((0, 0), (0, 0)))]
    assert patches  # ViT: the patch embedding; ResNet: the 1x1 convs
    fn, params = clip_jax.functional(model, "image_features")
    size = config.vision.image_size
    traced = jax.jit(fn).trace(params, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
    count = lambda platform: traced.lower(lowering_platforms=(platform,)).as_text().count("stablehlo.convolution")
    assert count("cuda") == len(convs)
    assert count("cpu") == len(convs) - len(patches)


def branch(name: str, calls: list):
    """A stand-in for jax.lax.platform_dependent that runs the `cpu` or the `default` (every other
    platform's) branch wherever it runs, and records each call: that branch checked on the CPU."""

    def platform_dependent(*args, cpu, default):
        calls.append(name)
        return (cpu if name == "cpu" else default)(*args)

    return platform_dependent


@pytest.mark.parametrize("layer,size", [("vit", 32), ("vit", 36), ("resnet", 8)],
                         ids=["patches", "patches-remainder", "1x1"])
def test_conv2d_branches_match_torch(layer, size, tiny, tiny_rn, monkeypatch):
    """Both lowerings of a non-overlapping convolution against torch's conv2d: the CPU's matmul over
    patches and the convolution every other platform runs (cuDNN on a GPU), the latter called here on
    the CPU. ViT's 8x8 patch embedding (also on 36x36, where VALID drops a remainder) and a ResNet 1x1.
    Float32, precision "highest": 2e-6 on outputs of magnitude ~4, 4x the largest difference measured
    (4.8e-7, the matmul for the 1x1; the patch embeddings agree exactly); a patch kernel with its height
    and width swapped is off by ~5."""
    import torch

    conv = tiny.visual.conv1 if layer == "vit" else tiny_rn.visual.layer1[0].conv1
    kh, kw, cin, _ = conv.kernel.shape
    assert conv.kernel_size == (conv.strides, conv.strides) == (kh, kw)  # conv2d's matmul case
    x = np.random.RandomState(0).randn(2, size, size, cin).astype(np.float32)
    kernel = np.array(conv.kernel[...])
    want = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2),
                                      torch.from_numpy(kernel.transpose(3, 2, 0, 1)), stride=conv.strides)
    want = want.permute(0, 2, 3, 1).numpy()
    for name in ("cpu", "default"):
        calls = []
        monkeypatch.setattr(jax.lax, "platform_dependent", branch(name, calls))
        with jax.default_matmul_precision("highest"):
            got = np.asarray(clip_jax.layers.conv2d(conv, jnp.asarray(x)))
        assert calls == [name]
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=0, err_msg=name)


def test_bf16_logits_are_float32():
    """With bfloat16 compute the logits are still float32 math on the (float32) features: the model's
    logits equal float64 logits from the features the same program computes to 2e-6 (logits ~6; measured
    5.7e-7), where rounding them to bf16 moves them by 1.4e-2."""
    model = tiny_model(TINY, dtype="bfloat16")
    images, tokens = batch()
    img, txt, got = map(np.asarray, nnx.jit(lambda m, i, t: (m.image_features(i), m.text_features(t), m(i, t)[0]))(
        model, images, tokens))
    unit = lambda x: x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
    want = np.exp(np.float64(model.logit_scale[...])) * unit(img) @ unit(txt).T
    assert got.dtype == img.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    assert np.abs(want.astype(jnp.bfloat16).astype(np.float64) - want).max() > 1000 * 2e-6


@pytest.mark.parametrize("dtype,short", [("float16", "f16"), ("bfloat16", "bf16")])
def test_half_compute_reduces_in_float32(dtype, short):
    """Half-precision compute, lowered for a GPU (XLA's CPU backend has no float16 matmul accumulating in
    float32, "F16_F16_F32 is not supported by dot_general on CPU", so float16 can't run here): the Linear
    layers and attention take the half type, every reduction (LayerNorm statistics, softmax, L2 norms) is
    float32 or wider, and the logits are one float32 matmul. For bf16 this is the check that doesn't depend
    on the CPU's rounding: a softmax in bf16 moves test_parity's logits less than two CPUs differ."""
    import collections
    import re

    model = tiny_model(TINY, dtype=dtype)
    fn, params = clip_jax.functional(model)
    images, tokens = batch()
    lowered = jax.jit(fn).trace(params, jax.ShapeDtypeStruct(images.shape, jnp.float32),
                                jax.ShapeDtypeStruct(tokens.shape, jnp.int32)).lower(lowering_platforms=("cuda",))
    text = lowered.as_text()
    element = lambda t: t.rsplit("x", 1)[-1].rstrip(">")
    dots = collections.Counter(tuple(map(element, d)) for d in re.findall(
        r"stablehlo\.dot_general .*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)", text))
    reduced = collections.Counter(element(t) for t in re.findall(r"stablehlo\.reduce\(.*? : \((tensor<[^>]*>)", text))
    linears = sum(isinstance(m, nnx.Linear) for _, m in nnx.iter_modules(model))
    assert dots[(short, short, short)] + dots[(short, short, "f32")] >= linears, dots
    assert {t for (a, b, _), n in dots.items() for t in (a, b) if t != short} == {"f32"}
    assert dots[("f32", "f32", "f32")] == 1
    assert reduced and not {"f16", "bf16"} & set(reduced), reduced


def test_float16_on_the_cpu_is_refused_with_a_message():
    """float16 can't run on XLA's CPU backend (above): a call says so and what to use instead, rather
    than failing inside XLA's lowering; ShardedCLIP and pmap_logits over CPU devices likewise."""
    model = tiny_model(TINY, dtype="float16")
    images, tokens = batch()
    for call in (lambda: model.encode_image(images), lambda: model.encode_text(tokens),
                 lambda: clip_jax.clip_logits(model, images, tokens), lambda: clip_jax.ShardedCLIP(model),
                 lambda: clip_jax.pmap_logits(model)):
        with pytest.raises(ValueError, match="dtype='float16' doesn't run on the CPU.*bfloat16"):
            call()
