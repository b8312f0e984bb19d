"""Positional-embedding resizing, as open_clip's `pos_embed.py` / `resize_pos_embed`: a ViT checkpoint
used at another image size. numpy only."""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter a (torch: -0.75 plain, -0.5 antialiased, as PIL)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_weights(in_size: int, out_size: int, antialias: bool = True) -> np.ndarray:
    """[out_size, in_size] float64 matrix of torch's F.interpolate(mode="bicubic", align_corners=False)
    along one axis.

    antialias=True is torch's separable "aa" kernel (as PIL): a = -0.5, taps over the input pixels that
    fall inside the support (stretched by the scale when downsampling), weights normalized to sum 1.
    antialias=False is the plain kernel: a = -0.75, four taps with indices clamped at the border.
    jax.image.resize's bicubic matches neither (a = -0.5 and a different border), hence this table.
    """
    scale = in_size / out_size
    out = np.zeros((out_size, in_size))
    if antialias:
        # aten/src/ATen/native/cpu/UpSampleKernel.cpp, _compute_indices_min_size_weights_aa.
        support = 2.0 * scale if scale >= 1.0 else 2.0
        invscale = 1.0 / scale if scale >= 1.0 else 1.0
        for i in range(out_size):
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)  # int() truncates toward zero, like static_cast
            hi = min(int(center + support + 0.5), in_size)
            w = _cubic((np.arange(lo, hi) - center + 0.5) * invscale, -0.5)
            out[i, lo:hi] = w / w.sum() if w.sum() != 0 else w
        return out
    for i in range(out_size):
        real = scale * (i + 0.5) - 0.5  # not clamped at 0 for cubic (area_pixel_compute_source_index)
        base = int(np.floor(real))
        t = real - base
        for k, w in zip(range(-1, 3), _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)):
            out[i, min(max(base + k, 0), in_size - 1)] += w
    return out


def resize_pos_embed(pos_embed, grid_size: int, antialias: bool = True) -> np.ndarray:
    """A ViT's positional embedding [1 + g*g, D] (class token first) -> [1 + grid_size**2, D].

    As open_clip's resize_pos_embed: the class token's row is kept, the g x g grid is resized with
    torch's bicubic F.interpolate(align_corners=False, antialias=True). Computed in float64 and returned
    in the input's dtype.
    """
    pos_embed = np.asarray(pos_embed)
    if pos_embed.ndim != 2:
        raise InputError(f"positional embedding must be [1 + grid**2, width]; got shape {pos_embed.shape}")
    n, width = pos_embed.shape
    g = math.isqrt(n - 1) if n > 1 else 0
    if g * g + 1 != n:
        raise InputError(f"positional embedding has {n} rows, not a square grid + 1 class token")
    if grid_size == g:
        return pos_embed
    rows = bicubic_weights(g, grid_size, antialias)
    grid = pos_embed[1:].astype(np.float64).reshape(g, g, width)
    grid = np.einsum("ij,jkd,lk->ild", rows, grid, rows).reshape(grid_size * grid_size, width)
    return np.concatenate([pos_embed[:1], grid.astype(pos_embed.dtype)], axis=0)
