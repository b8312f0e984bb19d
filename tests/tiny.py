"""A tiny random CLIP for the parallel / CLI tests: real tokenizer and vocabulary, widths of 32.

Params are drawn with numpy and handed to clip_jax.build (a random init through nnx compiles dozens of
small programs: ~10 s on the test machine; this takes well under one), and written as a converted
.safetensors so subprocesses load the very same model with clip_jax.load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clip_jax.config import CLIPConfig, TextConfig, VisionConfig

TINY = CLIPConfig(
    embed_dim=16,
    vision=VisionConfig(image_size=32, layers=2, width=32, patch_size=8, heads=2),
    text=TextConfig(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
)


def tiny_params(config: CLIPConfig = TINY, seed: int = 0) -> dict[str, np.ndarray]:
    from clip_jax.checkpoint.torch_names import expected_params

    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in expected_params(config).items():
        if name == "logit_scale":
            value = np.asarray(np.log(1 / 0.07))
        elif name.endswith((".scale", "running_var")):  # LayerNorm gains, BatchNorm variances: near 1
            value = 1 + 0.2 * rng.random(shape)
        elif name.endswith(("bias", "running_mean")):
            value = 0.1 * rng.standard_normal(shape)
        else:  # kernels, embeddings, projections: unit-variance activations
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            value = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        params[name] = np.asarray(value, np.float32)
    return params


def tiny_model(config: CLIPConfig = TINY, seed: int = 0, **kw):
    import clip_jax

    return clip_jax.build(config, tiny_params(config, seed), **kw)


def save_tiny(path: str | Path, config: CLIPConfig = TINY, seed: int = 0) -> Path:
    from clip_jax.checkpoint import store

    store.save(path, tiny_params(config, seed), config)
    return Path(path)
