"""The small configs the tests share, random params for them, and input batches.

Every test that needs a small CLIP takes one of these (tests/conftest.py has fixtures built from them),
so a new test rarely needs a config of its own, and tests that share a config share its compiled
programs (clip_jax keeps them by the model's structure):

- TINY: a whole CLIP as the command line, parallel, zero-shot and file tests load it: the real
  tokenizer's vocabulary and context (77), widths of 32, two layers a tower, 8x8 patches of 32x32 images.
- TINY_RN: TINY with a ModifiedResNet image tower: all four stages of one Bottleneck each, 32x32 images.
- TRAIN: the training tests' CLIP: a vocabulary of 1000 and 8 token positions keep the optimizer state
  and the steps small; one layer a tower.
- TRAIN_RN: TRAIN with TINY_RN's image tower.
- OPEN_CLIP_TINY: open_clip's config dict (model_cfg) of a CLIP with one layer a tower, for the tests
  that build the reference with open_clip.
- TRANSFORMERS_TINY: transformers' widths and heads of a small CLIP (the tests choose the depth).

Params are drawn with numpy and handed to clip_jax.build (a random init through nnx compiles dozens of
small programs: ~10 s on the test machine; this takes well under one), and written as a converted
.safetensors so subprocesses load the very same model with clip_jax.load.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from clip_jax.config import CLIPConfig, TextConfig, VisionConfig

TINY = CLIPConfig(
    embed_dim=16,
    vision=VisionConfig(image_size=32, layers=2, width=32, patch_size=8, heads=2),
    text=TextConfig(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
)
TINY_RN = dataclasses.replace(
    TINY, vision=VisionConfig(image_size=32, layers=(1, 1, 1, 1), width=16, patch_size=None, heads=2)
)

TRAIN_VOCAB = 1000  # token ids below it; EOT is the largest, TRAIN_VOCAB - 1
TRAIN = CLIPConfig(
    embed_dim=32,
    vision=VisionConfig(image_size=32, layers=1, width=64, patch_size=16),
    text=TextConfig(context_length=8, vocab_size=TRAIN_VOCAB, width=64, heads=1, layers=1),
)
TRAIN_RN = dataclasses.replace(TRAIN, vision=TINY_RN.vision)

OPEN_CLIP_TINY = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 128, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 1},
}
TRANSFORMERS_TINY = dict(
    text=dict(hidden_size=64, intermediate_size=256, num_attention_heads=2),
    vision=dict(hidden_size=64, intermediate_size=256, num_attention_heads=2, image_size=64, patch_size=16),
    projection_dim=32,
)


def tiny_params(config: CLIPConfig = TINY, seed: int = 0) -> dict[str, np.ndarray]:
    """Random params by clip_jax name: kernels, embeddings and projections scaled for unit-variance
    activations; LayerNorm gains and BatchNorm variances in [1, 1.2); biases and BatchNorm means small."""
    from clip_jax.checkpoint.torch_names import expected_params

    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in expected_params(config).items():
        if name == "logit_scale":
            value = np.asarray(np.log(1 / 0.07))
        elif name.endswith((".scale", ".var")):  # LayerNorm/BatchNorm gains, BatchNorm variances: near 1
            value = 1 + 0.2 * rng.random(shape)
        elif name.endswith((".bias", ".mean")):  # biases, BatchNorm means
            value = 0.1 * rng.standard_normal(shape)
        else:  # kernels, embeddings, projections: unit-variance activations
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            # ReLU halves the variance of what a ResNet's convolutions see: He's gain keeps the image in
            # the features after 4 stages (without it, a 1% part of them).
            gain = np.sqrt(2) if config.vision.is_resnet and len(shape) == 4 else 1
            value = gain * rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        params[name] = np.asarray(value, np.float32)
    return params


def tiny_model(config: CLIPConfig = TINY, seed: int = 0, **kw):
    import clip_jax

    return clip_jax.build(config, tiny_params(config, seed), **kw)


def save_tiny(path: str | Path, config: CLIPConfig = TINY, seed: int = 0) -> Path:
    from clip_jax.checkpoint import store

    store.save(path, tiny_params(config, seed), config)
    return Path(path)


def tiny_batch(config: CLIPConfig = TINY, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(normalized float32 images [n, size, size, 3], int32 tokens [3, context_length]): three rows of
    SOT, a few words (ids 320, 1929 in row 0, else "!") and EOT at positions 3, 5 and 9."""
    rng = np.random.RandomState(0)
    images = rng.randn(n, config.vision.image_size, config.vision.image_size, 3).astype(np.float32)
    tokens = np.zeros((3, config.text.context_length), np.int32)
    tokens[:, 0] = 49406
    tokens[np.arange(3), [3, 5, 9]] = 49407
    tokens[0, 1:3] = [320, 1929]
    return images, tokens


def train_batch(n: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For TRAIN: (uint8 images [n, 32, 32, 3], int32 tokens [n, 8]): random ids, the start-of-text id
    (TRAIN_VOCAB - 2) first and EOT (the largest id) at varied places, zeros after it."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    tokens = rng.integers(1, TRAIN_VOCAB - 2, (n, 8)).astype(np.int32)
    tokens[:, 0] = TRAIN_VOCAB - 2
    ends = rng.integers(2, 8, n)
    tokens[np.arange(n), ends] = TRAIN_VOCAB - 1
    tokens[np.arange(8)[None] > ends[:, None]] = 0
    return images, tokens
