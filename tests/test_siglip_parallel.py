"""SigLIP on devices and meshes: what works for CLIP works for a Siglip, checked on a small random one
(tests/siglip_parallel_checks.py's TINY_SIGLIP: widths of 64, 2 blocks a tower, 32x32 images of 8x8
patches, 16 text positions; every LayerNorm, bias, logit_scale and logit_bias off its init).

Here, on one CPU device: bf16 compute against float32, the pure form (clip_jax.functional) under jax.jit
against clip_logits, uint8 pixels normalized on the device against the host's float32. In a subprocess
with 8 host CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8, as tests/test_parallel.py):
ShardedCLIP over a data mesh (8) and data x model meshes (4 x 2, 2 x 4), and pmap_logits, against the
single-device model.

Tolerances, float32 on the CPU: sharded features equal single-device ones to 1e-5 absolute (image
features of norm up to ~10; measured <= 2.1e-6: each device multiplies B/8 rows, or 1/M of a kernel, and
XLA's CPU matmuls round by shape), logits (scale exp(2) = 7.4, bias -3.7) to 1e-4 (measured <= 1.9e-6).
A dropped logit_bias moves logits by 3.7, a wrong row or a mis-split kernel by >= 1e-1.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clip_jax
from clip_jax.image import normalize_pixels, normalize_pixels_np
from tests.conftest import device_checks, start_device_checks
from tests.siglip_parallel_checks import LOGIT_BIAS, TINY_SIGLIP, siglip_batch, siglip_model

FEATURE_ATOL = 1e-5
LOGIT_ATOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return siglip_model()


@pytest.fixture(scope="module")
def batch():
    return siglip_batch(8, 6)


def normalized(images: np.ndarray) -> np.ndarray:
    """The host path: uint8 -> float32, (x / 255 - 0.5) / 0.5, as torchvision's ToTensor + Normalize."""
    return normalize_pixels_np(images, TINY_SIGLIP.image_mean, TINY_SIGLIP.image_std)


# --- one device -------------------------------------------------------------------------------------


# budget: 20 s; bf16 compute is checked in the default run on CLIP (tests/test_parity.py), through the same layers
@pytest.mark.slow
def test_bf16_compute_is_close_to_float32(model, batch):
    """dtype=bfloat16 (params float32) against float32. bf16 keeps 8 significant bits (a relative rounding
    of 2^-9 = 2e-3 per operation); over 2 blocks the normalized features move by <= 4.0e-3 and the logits
    (scale 7.4) by <= 0.028, measured on 3 seeds. Bounds of 0.02 and 0.15 leave 5x; a feature read from
    another token or tower, or a dropped bias, moves them by >= 0.5 (the logits spread 0.5 across pairs)."""
    images, tokens = batch
    bf16 = siglip_model("bfloat16")
    assert bf16.compute_dtype == jnp.bfloat16
    for method, x in (("encode_image", images), ("encode_text", tokens)):
        want = np.asarray(clip_jax.l2_normalize(getattr(model, method)(x)))
        got = np.asarray(clip_jax.l2_normalize(getattr(bf16, method)(x)))
        assert got.dtype == np.float32
        assert 1e-4 < np.abs(got - want).max() < 0.02, method  # above 1e-4: bf16 really computed
    want = clip_jax.clip_logits(model, images, tokens)
    got = clip_jax.clip_logits(bf16, images, tokens)
    for g, w in zip(got, want):
        assert g.dtype == jnp.float32 and g.shape == w.shape
        assert np.abs(np.asarray(g) - np.asarray(w)).max() < 0.15


def test_functional_under_jit_equals_clip_logits(model, batch):
    """The pure form's program is the same jaxpr as clip_logits' (compiled apart, by the same XLA): equal
    to 1e-6 (measured: bit-equal), logit_bias included (the logits' mean is near it, not near 0)."""
    images, tokens = batch
    fn, params = clip_jax.functional(model, "__call__")
    per_image, per_text = jax.jit(fn)(params, images, tokens)
    want_image, want_text = clip_jax.clip_logits(model, images, tokens)
    assert per_image.shape == (8, 6) and per_text.shape == (6, 8)
    np.testing.assert_allclose(per_image, want_image, atol=1e-6, rtol=0)
    np.testing.assert_allclose(per_text, want_text, atol=1e-6, rtol=0)
    # cos of random features is small: the logits sit within exp(2) of the bias, and not around 0.
    assert abs(float(np.mean(per_image)) - LOGIT_BIAS) < np.exp(2.0) and float(np.max(per_image)) < 0
    for method, x, call in (("image_features", images, model.encode_image), ("text_features", tokens,
                                                                           model.encode_text)):
        fn, params = clip_jax.functional(model, method)
        np.testing.assert_allclose(jax.jit(fn)(params, x), call(x), atol=1e-6, rtol=0)


def test_uint8_pixels_normalized_on_the_device_equal_the_host_path(model, batch):
    """mean = std = 0.5: uint8 pixels normalized inside the program give the host's float32 features and
    logits. On the CPU the device path is a table lookup, bit-equal to the host's pixels (checked); the
    features then differ by float32 rounding only, as the normalization fuses into the patch convolution
    of another program (measured 1.4e-6 on features of norm ~10): 1e-5, and 1e-4 for the logits. On
    accelerators it is a multiply-add (exact=False, checked here too), within 2^-23 (1 ulp at 1) of the host's pixels.
    CLIP's mean and std instead of 0.5 would move the pixels by > 0.1 and the features by far more."""
    images, tokens = batch
    host = normalized(images)
    assert host.min() == -1.0 and host.max() == 1.0  # SigLIP's range, not CLIP's mean/std
    c = TINY_SIGLIP
    table = np.asarray(jax.jit(lambda x: normalize_pixels(x, c.image_mean, c.image_std))(images))
    np.testing.assert_array_equal(table, host)
    np.testing.assert_allclose(model.encode_image(images), model.encode_image(host), atol=FEATURE_ATOL, rtol=0)
    for got, want in zip(clip_jax.clip_logits(model, images, tokens), clip_jax.clip_logits(model, host, tokens)):
        np.testing.assert_allclose(got, want, atol=LOGIT_ATOL, rtol=0)
    affine = np.asarray(jax.jit(lambda x: normalize_pixels(x, c.image_mean, c.image_std, exact=False))(images))
    assert np.abs(affine - host).max() <= 2.0**-23  # float32's spacing at 1, the top of the range
    np.testing.assert_allclose(model.encode_image(affine), model.encode_image(host), atol=FEATURE_ATOL, rtol=0)


# --- 8 CPU devices, in a subprocess -----------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def eight_devices(tmp_path_factory) -> Path:
    """The 8-device subprocess, started (once a run, for every xdist worker) before this module's first
    test, so it runs beside the one-device tests; -> its folder."""
    return start_device_checks(tmp_path_factory, "siglip_parallel_checks")


@pytest.fixture(scope="module")
def checks(eight_devices) -> dict:
    return device_checks(eight_devices)


def test_eight_devices(checks):
    assert checks["device_count"] == 8
    # Logits around the bias (-3.7 +- exp(2) * |cos|): the scale and the bias both enter.
    low, high = checks["logits_range"]
    assert -3.7 - 7.4 < low < high < 0


@pytest.mark.parametrize("mp", [1, 2, 4])
def test_sharded_siglip_equals_single_device(checks, mp):
    """ShardedCLIP(model, make_mesh(mp)), batches of 8 (21 images: a ragged last batch; 3: fewer rows than
    devices): encode_image (uint8 and float), encode_text and clip_logits (both directions, bias included)
    equal the single-device model's."""
    r = checks[f"mp{mp}"]
    assert r["mesh"] == {"data": 8 // mp, "model": mp}
    assert r["head"] == pytest.approx({"logit_scale": 2.0, "logit_bias": LOGIT_BIAS})
    for key in ("image", "image_small", "image_float", "text"):
        assert r[key] < FEATURE_ATOL, key
    assert r["per_image"] < LOGIT_ATOL and r["per_text"] < LOGIT_ATOL


# (whole shape, one device's shard shape) under make_mesh(2): the Megatron split the roles declare.
SPLIT_BY_2 = {
    "visual.attn_pool.attn.in_proj.kernel": ([64, 192], [64, 192]),  # q|k|v fused: replicated (layers.py)
    "visual.attn_pool.attn.out_proj.kernel": ([64, 64], [32, 64]),  # input rows (heads)
    "visual.attn_pool.mlp.c_fc.kernel": ([64, 128], [64, 64]),  # output columns
    "visual.attn_pool.mlp.c_fc.bias": ([128], [64]),
    "visual.attn_pool.mlp.c_proj.kernel": ([128, 64], [64, 64]),  # input rows
    "visual.attn_pool.probe": ([1, 1, 64], [1, 1, 64]),
    "visual.transformer.resblocks.0.mlp.c_fc.kernel": ([64, 128], [64, 64]),
    "visual.transformer.resblocks.0.attn.out_proj.kernel": ([64, 64], [32, 64]),
    "text.transformer.resblocks.1.mlp.c_proj.kernel": ([128, 64], [64, 64]),
    "text.text_projection.kernel": ([64, 64], [64, 64]),
    "logit_bias": ([], []),
}


def test_map_head_and_blocks_split_as_declared(checks):
    """model_parallel=2: the MAP head's attention and MLP split as every block's (layers.MultiheadAttention
    and layers.MLP declare it), the probe, projection and logit_bias replicated; on all 8 devices."""
    r = checks["mp2"]
    for name, (whole, shard) in SPLIT_BY_2.items():
        assert r["shards"][name] == [whole, shard, 8], name
    assert r["specs"]["visual.attn_pool.mlp.c_fc.kernel"] == [None, "model"]
    assert r["specs"]["visual.attn_pool.attn.out_proj.kernel"] == ["model", None]
    assert r["specs"]["logit_bias"] == []
    # With a model axis of 4 the shards are quarters.
    assert checks["mp4"]["shards"]["visual.attn_pool.mlp.c_proj.kernel"][:2] == [[128, 64], [32, 64]]


def test_param_specs_by_name_match_the_declared_ones(checks):
    """param_specs of the same params as a plain pytree (no Variables: looked up by clip_jax name, as for a
    loaded params dict or an optimizer state) give the splits the Variables declare."""
    r = checks["mp2"]
    assert r["specs_by_name"] == r["specs"]


def test_pmap_logits(checks):
    """pmap_logits on 8 devices, 2 images against 3 texts each: clip_logits per device, bias included."""
    r = checks["pmap"]
    assert r["shape"] == [8, 2, 3]
    assert r["diff"] < LOGIT_ATOL
    assert r["diff_without_bias"] == pytest.approx(abs(LOGIT_BIAS), abs=LOGIT_ATOL)
