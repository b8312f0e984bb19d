"""Checks of user inputs, made before tracing so mistakes get a clear message, not an XLA error."""

from __future__ import annotations

import numpy as np


def _shape_dtype(x, what: str) -> tuple[tuple[int, ...], np.dtype]:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{what} must be an array (numpy or jax), got {type(x).__name__}")
    return tuple(x.shape), np.dtype(x.dtype)


def check_images(images, image_size: int):
    """images: [N, H, W, 3] (NHWC) float normalized, or uint8 pixels after resize and crop."""
    shape, dtype = _shape_dtype(images, "images")
    if len(shape) == 3 and shape[-1] == 3:
        raise ValueError(f"images must be a batch [N, H, W, 3]; got one image {shape}: use images[None]")
    if len(shape) != 4:
        raise ValueError(f"images must be [N, H, W, 3] (NHWC); got shape {shape}")
    if shape[-1] != 3:
        if shape[1] == 3:
            raise ValueError(
                f"images look channels-first (NCHW) with shape {shape}; clip_jax takes NHWC [N, H, W, 3]: "
                "use images.transpose(0, 2, 3, 1)"
            )
        raise ValueError(f"images must have 3 channels last [N, H, W, 3]; got shape {shape}")
    if shape[1:3] != (image_size, image_size):
        raise ValueError(f"this model takes {image_size}x{image_size} images; got {shape[1]}x{shape[2]} (shape {shape})")
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating) and dtype.name != "bfloat16":
        raise TypeError(f"images must be float (normalized) or uint8 (pixels); got dtype {dtype}")
    return images


def check_tokens(tokens, context_length: int, vocab_size: int):
    """tokens: integer [N, L] with L <= context_length, as clip_jax.tokenize returns."""
    shape, dtype = _shape_dtype(tokens, "tokens")
    if len(shape) != 2:
        raise ValueError(f"tokens must be [N, L] (clip_jax.tokenize gives [N, 77]); got shape {shape}")
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"tokens must be integers; got dtype {dtype}")
    if shape[1] > context_length:
        raise ValueError(f"tokens have length {shape[1]}, longer than this model's context_length {context_length}")
    if isinstance(tokens, np.ndarray) and tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        # JAX clamps out-of-range gathers silently, so an id past the vocabulary would give wrong features.
        raise ValueError(f"token ids must be in [0, {vocab_size}); got min {tokens.min()}, max {tokens.max()}")
    return tokens
