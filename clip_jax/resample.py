"""Pillow's antialiased 1-D resampling, as libImaging/Resample.c computes it (precompute_coeffs,
normalize_coeffs_8bpc, the 8bpc passes), and torch's uint8 resize, which shares its weights: the kernel
both of clip_jax's bit-exact resizes (image.py for Pillow's, image_hf.py for torch's) are built on."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

PRECISION_BITS = 22  # Pillow's 32 - 8 - 2: fixed-point weights, 2 bits of headroom


def bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic_filter (a = -0.5), the same operations in the same order."""
    x = np.abs(x)
    near = (1.5 * x - 2.5) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * -0.5
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


FILTERS = {Image.Resampling.BICUBIC: (bicubic, 2.0), Image.Resampling.BILINEAR: (bilinear, 1.0)}


def filter_weights(in_size: int, out_size: int, start: int, count: int, filt, support: float,
                    scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The float64 weights of a 1-D antialiased resize in_size -> out_size (scale = in_size / out_size), outputs
    start..start+count only, as Pillow's precompute_coeffs and torch's _compute_indices_min_size_weights_aa
    (the same operations in the same order in both).

    Returns (first int64 [count]: each output's first input index, weights float64 [count, ksize]: those of
    inputs first..first+ksize-1, normalized to sum 1, zero past the input's end).
    """
    filterscale = max(scale, 1.0)
    support *= filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(start, start + count, dtype=np.float64) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)  # C's (int) truncates
    taps = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - first
    x = np.arange(ksize)[None, :]
    w = np.where(x < taps[:, None], filt(((x + first[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    total = np.zeros(count)
    for i in range(ksize):  # in C's order: numpy's sum would pair terms differently
        total = total + w[:, i]
    return first, np.divide(w, total[:, None], out=w, where=total[:, None] != 0.0)


def fixed_point(w: np.ndarray, bits: int) -> np.ndarray:
    """int64 weights w * 2^bits rounded half away from zero, as C's (int)(v +- 0.5) (Pillow and torch alike)."""
    scaled = w * (1 << bits)
    return np.trunc(np.where(w < 0, scaled - 0.5, scaled + 0.5)).astype(np.int64)


def coefficients(in_size: int, out_size: int, start: int, count: int, resample) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's 1-D resize in_size -> out_size, outputs start..start+count only.

    Returns (first int64 [count]: each output's first input index, weights int64 [count, ksize]: the
    fixed-point weights of inputs first..first+ksize-1, zero past the input's end).
    """
    filt, support = FILTERS[resample]
    scale = float(np.float32(in_size)) / out_size  # Pillow's box is float32
    first, w = filter_weights(in_size, out_size, start, count, filt, support, scale)
    return first, fixed_point(w, PRECISION_BITS)


def resample_axis(pixels: np.ndarray, axis: int, first: np.ndarray, weights: np.ndarray,
                   bits: int = PRECISION_BITS) -> np.ndarray:
    """uint8 pixels [H, W, bands] resampled along `axis` with fixed-point weights, as Pillow's 8bpc passes
    (and torch's uint8 ones, with their `bits`):
    output i = clip((2^(bits-1) + sum_k pixels[first[i] + k] * weights[i, k]) >> bits, 0, 255)."""
    shape = [1, 1, 1]
    shape[axis] = len(first)
    acc = np.full(pixels.shape[:axis] + (len(first),) + pixels.shape[axis + 1 :], (1 << bits) >> 1, np.int64)
    last = pixels.shape[axis] - 1
    for k in range(weights.shape[1]):
        taps = np.take(pixels, np.minimum(first + k, last), axis=axis)  # past the end: weight 0
        acc += taps * weights[:, k].reshape(shape)
    return np.clip(acc >> bits, 0, 255).astype(np.uint8)
