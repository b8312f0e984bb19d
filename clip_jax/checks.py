"""Checks of user inputs, made before tracing so mistakes get a clear message, not an XLA error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError
from .image import LoadedImages


def _shape_dtype(x, what: str) -> tuple[tuple[int, ...], np.dtype]:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{what} must be an array (numpy or jax), got {type(x).__name__}")
    return tuple(x.shape), np.dtype(x.dtype)


def check_images(images, image_size: int):
    """images: [N, H, W, 3] (NHWC) float normalized, or uint8 pixels after resize and crop; or what
    `load_images` returns (a LoadedImages: its `.pixels` are the images). -> the images array."""
    if isinstance(images, LoadedImages):
        images = images.pixels
    shape, dtype = _shape_dtype(images, "images")
    if len(shape) == 3 and shape[-1] == 3:
        raise InputError(f"images must be a batch [N, H, W, 3]; got one image {shape}: use images[None]")
    if len(shape) != 4:
        raise InputError(f"images must be [N, H, W, 3] (NHWC); got shape {shape}")
    if shape[-1] != 3:
        if shape[1] == 3:
            raise InputError(
                f"images look channels-first (NCHW) with shape {shape}; clip_jax takes NHWC [N, H, W, 3]: "
                "use images.transpose(0, 2, 3, 1)"
            )
        raise InputError(f"images must have 3 channels last [N, H, W, 3]; got shape {shape}")
    if shape[1:3] != (image_size, image_size):
        raise InputError(f"this model takes {image_size}x{image_size} images; got {shape[1]}x{shape[2]} "
                         f"(shape {shape})")
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating) and dtype.name != "bfloat16":
        raise TypeError(f"images must be float (normalized) or uint8 (pixels); got dtype {dtype}")
    return images


def check_tokens(tokens, context_length: int, vocab_size: int):
    """tokens: integer [N, L] with 0 < L <= context_length, as clip_jax.tokenize returns.

    Ids must lie in [0, vocab_size): the embedding lookup would give NaN features for an id past the
    vocabulary and wrap a negative one around, with no error. A numpy batch is checked on the host;
    a device array with one small reduction on its device, which waits for the array (not for anything
    else queued): the only synchronization in a public call, avoided by passing numpy tokens.
    """
    shape, dtype = _shape_dtype(tokens, "tokens")
    if len(shape) != 2:
        raise InputError(f"tokens must be [N, L] (clip_jax.tokenize gives [N, 77]); got shape {shape}")
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"tokens must be integers; got dtype {dtype}")
    if shape[1] == 0:
        raise InputError(f"tokens have no columns (shape {shape}); each row needs at least an SOT and an EOT")
    if shape[1] > context_length:
        raise InputError(f"tokens have length {shape[1]}, longer than this model's context_length {context_length}")
    if not shape[0] or isinstance(tokens, jax.core.Tracer):  # inside the caller's own jit: nothing to read
        return tokens
    if isinstance(tokens, np.ndarray):
        lo, hi = tokens.min(), tokens.max()
    elif getattr(tokens, "is_fully_addressable", True):  # another process's rows can't be read here
        lo, hi = (int(i) for i in jax.device_get(_id_range(tokens)))  # explicit: allowed by transfer guards
    else:
        return tokens
    if lo < 0 or hi >= vocab_size:
        raise InputError(f"token ids must be in [0, {vocab_size}); got min {lo}, max {hi}")
    return tokens


@jax.jit
def _id_range(tokens: jax.Array) -> jax.Array:
    return jnp.stack([tokens.min(), tokens.max()])
