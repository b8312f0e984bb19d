"""What transformers' image processors do to pixels, in numpy: SigLIP's `SiglipImageProcessor`.

transformers 5 has two backends for an image processor, and `AutoImageProcessor.from_pretrained` picks the
torchvision one (`SiglipImageProcessor`, `backend == "torchvision"`) when torchvision is installed; the PIL one
(`SiglipImageProcessorPil`) with `backend="pil"` (transformers 4's default for SigLIP, `use_fast=False`).
Both first make the image RGB, compositing any transparency onto white (`rgb_like_transformers`); then

- torchvision: `tvF.resize(uint8 CHW, (n, n), BICUBIC, antialias=True)`, which on the CPU is torch's uint8
  antialiased resample: Pillow's separable passes (horizontal, then vertical, each rounded to uint8) and
  Pillow's filter weights, but fixed-point int16 weights with a precision chosen per pass
  (`torch_coefficients`) where Pillow has 22 bits in int32, so ~0.1-1% of the pixels come out 1-2 levels
  apart from Pillow's. `torch_resize` does the same integer sums;
- pil: Pillow's `Image.resize((n, n), resample)` on the RGB image.

Normalization is in `clip_jax.image.pixel_table` (the float32 operations of each backend).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .errors import InputError
from .resample import filter_weights, fixed_point, resample_axis


def rgb_like_transformers(img: Image.Image) -> Image.Image:
    """transformers' `convert_to_rgb` for a PIL image: an image with alpha (an "A" band, or a palette or
    colour-key transparency) composited onto opaque white, any other `convert("RGB")`. Before the resize."""
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _torch_cubic(x: np.ndarray) -> np.ndarray:
    """torch's antialiased bicubic filter (a = -0.5, as Pillow), cubic_convolution1/2's operations in their
    order (Pillow's far branch is written differently, which can differ in the last bit of a double)."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _torch_linear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


# torch's interp_size / 2: the filter's support before it is widened by the downscale factor
_TORCH_FILTERS = {"bicubic": (_torch_cubic, 2.0), "bilinear": (_torch_linear, 1.0)}


def _int16_precision(w_max: float) -> int:
    """torch's weights_precision: the most bits (< 22) that keep 2 * w_max * 2^bits under 2^15."""
    bits = 0
    while bits < 22 and int(0.5 + w_max * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    return bits


def torch_coefficients(in_size: int, out_size: int, interpolation: str) -> tuple[np.ndarray, np.ndarray, int]:
    """torch's uint8 antialiased 1-D resize in_size -> out_size (_compute_index_ranges_int16_weights).

    Returns (first int64 [out_size], weights int64 [out_size, ksize] (each fits an int16), bits): output i
    is `(2^(bits-1) + sum_k x[first[i] + k] * weights[i, k]) >> bits`, clipped to 0..255.
    """
    filt, support = _TORCH_FILTERS[interpolation]
    first, w = filter_weights(in_size, out_size, 0, out_size, filt, support, in_size / out_size)
    bits = _int16_precision(float(w.max(initial=0.0)))  # one precision for the whole pass
    return first, fixed_point(w, bits), bits


# Rows per slice of the horizontal pass: ~2^18 output values, so its int64 sums stay ~2 MB (cache-sized)
# whatever the image's height; what it keeps is uint8, as torch's (and less than Pillow's 4-byte pixels).
_SLICE_VALUES = 1 << 18


def _horizontal(pixels: np.ndarray, n: int, interpolation: str) -> np.ndarray:
    """uint8 [H, W, C] -> [H, n, C], torch's horizontal pass, in slices of rows."""
    first, weights, bits = torch_coefficients(pixels.shape[1], n, interpolation)
    out = np.empty((pixels.shape[0], n, pixels.shape[2]), np.uint8)
    step = max(1, _SLICE_VALUES // (n * pixels.shape[2]))
    for r in range(0, pixels.shape[0], step):
        out[r : r + step] = resample_axis(pixels[r : r + step], 1, first, weights, bits)
    return out


def torch_resize(pixels: np.ndarray, n: int, interpolation: str = "bicubic") -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [n, n, C], equal to `tvF.resize(x, [n, n], interpolation, antialias=True)` on
    the CPU for a uint8 tensor: the horizontal pass (if the width changes), then the vertical one.

    numpy, one pass over the image per filter tap, where Pillow's C does the same kind of sums: a few times
    Pillow's time for a photo of ~0.3 MP (~10-20 ms at 224), up to ~10x for a 12 MP one (~1 s)."""
    if pixels.ndim != 3 or pixels.dtype != np.uint8:
        raise InputError(f"expected uint8 pixels [H, W, C], got {pixels.dtype} {pixels.shape}")
    h, w = pixels.shape[:2]
    if w != n:
        pixels = _horizontal(pixels, n, interpolation)
    if h != n:
        pixels = resample_axis(pixels, 0, *torch_coefficients(h, n, interpolation))
    return np.ascontiguousarray(pixels)
