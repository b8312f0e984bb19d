"""The 8-device half of tests/test_siglip_parallel.py: run as a script in a subprocess whose XLA_FLAGS ask
for 8 host CPU devices (JAX reads them once, at import; the rest of the suite keeps its single device).

    python tests/siglip_parallel_checks.py OUT.json

A small random SigLIP (TINY_SIGLIP below) scored by clip_jax.parallel (ShardedCLIP over a data mesh and a
data x model mesh, pmap_logits) and by the plain single-device model on the same inputs; writes what the
tests assert on (max differences, shapes, shardings) as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clip_jax.siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig  # noqa: E402
from tests.parallel_checks import max_diff  # noqa: E402

# Widths of 64 (4 heads of 16: a "model" axis of 2 or 4 splits them), 2 blocks a tower, 8x8 patches of
# 32x32 images (16 tokens), 16 text positions over a vocabulary of 100. The MLPs' 128 hidden units split
# along "model" too.
TINY_SIGLIP = SiglipConfig(
    embed_dim=64,
    vision=SiglipVisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=4, mlp_width=128),
    text=SiglipTextConfig(vocab_size=100, context_length=16, width=64, layers=2, heads=4, mlp_width=128),
)
LOGIT_SCALE = 2.0  # exp: 7.39, off big_vision's init (log 10)
LOGIT_BIAS = -3.7  # off its init (-10): a path that drops the bias is off by 3.7

# Params whose sharding the tests check, by clip_jax name.
WATCHED = (
    "visual.attn_pool.attn.in_proj.kernel", "visual.attn_pool.attn.out_proj.kernel", "visual.attn_pool.mlp.c_fc.kernel",
    "visual.attn_pool.mlp.c_proj.kernel", "visual.attn_pool.mlp.c_fc.bias", "visual.attn_pool.probe",
    "visual.transformer.resblocks.0.mlp.c_fc.kernel", "visual.transformer.resblocks.0.attn.out_proj.kernel",
    "text.transformer.resblocks.1.mlp.c_proj.kernel", "text.text_projection.kernel", "logit_bias",
)


def siglip_params(config: SiglipConfig = TINY_SIGLIP, seed: int = 0) -> dict:
    """Random params by clip_jax name, every one off its init: LayerNorm gains in [1, 1.2), biases ~0.1,
    kernels and embeddings scaled for unit-variance activations; logit_scale and logit_bias as above."""
    import numpy as np

    from clip_jax.checkpoint.torch_names import expected_params

    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in expected_params(config).items():
        if name == "logit_scale":
            value = np.asarray(LOGIT_SCALE)
        elif name == "logit_bias":
            value = np.asarray(LOGIT_BIAS)
        elif name.endswith(".scale"):
            value = 1 + 0.2 * rng.random(shape)
        elif name.endswith(".bias"):
            value = 0.1 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(max(int(np.prod(shape[:-1])), 1))
        params[name] = np.asarray(value, np.float32)
    return params


def siglip_model(dtype: str = "float32", seed: int = 0):
    import clip_jax

    return clip_jax.build(TINY_SIGLIP, siglip_params(TINY_SIGLIP, seed), dtype=dtype)


def siglip_batch(n_images: int = 21, n_texts: int = 20, seed: int = 0):
    """(uint8 images [n_images, 32, 32, 3], int32 tokens [n_texts, 16]): random pixels and ids, each text
    ending in SigLIP's eos id (1) and padded with it from a random place, as its tokenizer pads."""
    import numpy as np

    rng = np.random.default_rng(seed)
    c = TINY_SIGLIP
    images = rng.integers(0, 256, (n_images, c.vision.image_size, c.vision.image_size, 3), dtype=np.uint8)
    tokens = rng.integers(2, c.text.vocab_size, (n_texts, c.text.context_length)).astype(np.int32)
    ends = rng.integers(1, c.text.context_length, n_texts)
    tokens[np.arange(c.text.context_length)[None] >= ends[:, None]] = 1
    return images, tokens


def sharded_checks(model, mp: int, images, tokens, refs: dict) -> dict:
    """ShardedCLIP over make_mesh(mp) (8 // mp along "data") against the single-device numbers."""
    from flax import nnx

    from clip_jax import parallel
    from clip_jax.roles import flat_name

    s = parallel.ShardedCLIP(model, parallel.make_mesh(mp), batch_size=8)
    per_image, per_text = s.clip_logits(images, tokens)
    flat = {flat_name(path): v[...] for path, v in nnx.to_flat_state(s.params)}
    # The splits the model's Variables declare (roles.declare), as ShardedCLIP placed them.
    specs = parallel.param_specs(nnx.state(model), s.mesh)
    spec_of = {flat_name(path): list(v.get_value()) for path, v in nnx.to_flat_state(specs)}
    return {
        "mesh": dict(s.mesh.shape),
        "head": s.head,
        "image": max_diff(s.encode_image(images), refs["image"]),
        "image_small": max_diff(s.encode_image(images[:3]), refs["image"][:3]),  # fewer rows than devices
        "image_float": max_diff(s.encode_image(refs["floats"]), refs["image_float"]),
        "text": max_diff(s.encode_text(tokens), refs["text"]),
        "per_image": max_diff(per_image, refs["per_image"]),
        "per_text": max_diff(per_text, refs["per_text"]),
        "shards": {n: [list(flat[n].shape), list(flat[n].addressable_shards[0].data.shape),
                       len(flat[n].sharding.device_set)] for n in WATCHED},
        "specs": {n: spec_of[n] for n in WATCHED},
        "specs_by_name": _specs_by_name(model, s.mesh),
    }


def _specs_by_name(model, mesh) -> dict | str:
    """param_specs of the params as a plain pytree (no Variables: specs looked up by clip_jax name), or
    the error it raises."""
    import jax
    from flax import nnx

    from clip_jax import parallel
    from clip_jax.roles import flat_name

    try:
        specs = parallel.param_specs(nnx.to_pure_dict(nnx.state(model)), mesh)
    except Exception as e:  # reported to the test, which says what is missing
        return f"{type(e).__name__}: {e}"
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
    leaves, _ = jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)
    return {flat_name(path): list(spec) for path, spec in leaves if flat_name(path) in WATCHED}


def pmap_checks(model, images, tokens) -> dict:
    """pmap_logits over the 8 devices: each scores its own 2 images against its own 3 texts."""
    import numpy as np

    import clip_jax
    from clip_jax import parallel

    per_dev_images = images[:16].reshape(8, 2, *images.shape[1:])
    per_dev_tokens = np.stack([tokens[i: i + 3] for i in range(8)])
    got = np.asarray(parallel.pmap_logits(model)(per_dev_images, per_dev_tokens))
    want = np.stack([np.asarray(clip_jax.clip_logits(model, per_dev_images[i], per_dev_tokens[i])[0])
                     for i in range(8)])
    no_bias = want - LOGIT_BIAS
    return {"shape": list(got.shape), "diff": max_diff(got, want), "diff_without_bias": max_diff(got, no_bias)}


def main(out_path: str) -> None:
    import jax
    import numpy as np

    import clip_jax
    from clip_jax.image import normalize_pixels_np

    model = siglip_model()
    images, tokens = siglip_batch()
    floats = normalize_pixels_np(images, TINY_SIGLIP.image_mean, TINY_SIGLIP.image_std)
    per_image, per_text = clip_jax.clip_logits(model, images, tokens)
    refs = {"image": np.asarray(model.encode_image(images)), "text": np.asarray(model.encode_text(tokens)),
            "per_image": np.asarray(per_image), "per_text": np.asarray(per_text), "floats": floats,
            "image_float": np.asarray(model.encode_image(floats))}
    r: dict = {"device_count": jax.device_count(), "logits_range": [float(per_image.min()), float(per_image.max())],
               "feature_norm": float(np.linalg.norm(refs["image"], axis=-1).max())}
    for mp in (1, 2, 4):
        r[f"mp{mp}"] = sharded_checks(model, mp, images, tokens, refs)
    r["pmap"] = pmap_checks(model, images, tokens)
    Path(out_path).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
