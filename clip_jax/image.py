"""Image preprocessing for CLIP, bit-exact with OpenAI CLIP / open_clip eval transforms.

The reference pipeline (OpenAI `clip._transform` and open_clip
`image_transform(n_px, is_train=False)`) runs on a PIL image:

1. `Resize`: Pillow `Image.resize` (bicubic by default, antialiased),
2. `CenterCrop` (zero padding first when the image is smaller than the crop),
3. `convert("RGB")` -- *after* the crop, which matters for "P", "RGBA", "CMYK", ...
4. `ToTensor` (`x / 255` in float32) and `Normalize` (`(x - mean) / std`).

Steps 1-3 are done here with the very same Pillow calls and the same integer
geometry as torchvision, so the uint8 pixels are identical. Step 4 is done
either on the host (`ImageTransform.__call__`: the same float32 operations in
the same order as torchvision, so bit-identical) or on the device inside
`jit` (`normalize_pixels`: a table lookup on the CPU, also bit-identical; a
per-channel multiply-add on accelerators, within 1 ulp), which lets the host
ship 4x fewer bytes (uint8 instead of float32).

No EXIF orientation is applied (OpenAI does not apply it either).

SigLIP's transformers checkpoints are preprocessed by transformers' image processor instead
(`processor="transformers"`, see ImageTransform and image_hf): RGB first, torch's uint8 resize, a fused
rescale-and-normalize; its open_clip / timm checkpoints by open_clip's squash transform (the above).
"""

from __future__ import annotations

import io
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from .config import OPENAI_MEAN, OPENAI_STD
from .errors import ClipJaxError, InputError
from .image_hf import rgb_like_transformers, torch_resize
from .resample import coefficients, resample_axis

RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
# Whose pipeline a transform reproduces (see ImageTransform): OpenAI / open_clip (torchvision transforms on a
# PIL image), or transformers' image processors, the torchvision backend (AutoImageProcessor's in transformers
# 5) or the PIL one. SigLIP's transformers checkpoints: "transformers"; its open_clip / timm ones: "open_clip".
PROCESSORS = ("open_clip", "transformers", "transformers_pil")

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]
_SOURCE_TYPES = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)

__all__ = [
    "OPENAI_MEAN",
    "OPENAI_STD",
    "PROCESSORS",
    "ImageError",
    "ImageTransform",
    "LoadedImages",
    "image_transform",
    "normalize_pixels",
    "normalize_pixels_np",
    "pixel_table",
    "pixel_affine",
    "load_image",
    "load_images",
    "read_into",
    "Decoder",
]


class ImageError(ClipJaxError, ValueError):
    """An image that cannot be read or preprocessed.

    `source` names the file (its path, or a short description for bytes and
    in-memory images) and `reason` says what is wrong with it.
    """

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")

    def __reduce__(self):  # keep picklable across processes
        return (type(self), (self.source, self.reason))


# --- normalization --------------------------------------------------------------------------------


def _three(v, name: str) -> tuple[float, float, float]:
    if isinstance(v, (int, float)):
        v = (v,) * 3
    v = tuple(float(x) for x in v)
    if len(v) != 3:
        raise InputError(f"{name} must have 3 values (R, G, B), got {len(v)}")
    return v


def pixel_table(mean=OPENAI_MEAN, std=OPENAI_STD, processor: str = "open_clip") -> np.ndarray:
    """float32 [256, 3]: the normalized value of every uint8 level for each channel.

    Computed with the reference's float32 operations in its order, mean and std rounded to float32; each
    is a single correctly-rounded IEEE operation, so the table equals the reference's numbers bit for bit:
    "open_clip": torchvision's `ToTensor` (`float32(v) / 255`), then `Normalize` (`(x - mean) / std`);
    "transformers": the torchvision backend's fused rescale and normalize, `(v - mean * 255) / (std * 255)`
    (mean * (1 / rescale_factor) as a float32 tensor times 255);
    "transformers_pil": numpy's `float32(float64(v) * (1 / 255))`, then `(x - mean) / std` in float32.
    """
    m = np.asarray(_three(mean, "mean"), dtype=np.float32)
    s = np.asarray(_three(std, "std"), dtype=np.float32)
    if np.any(s == 0):
        raise InputError("std must be non-zero in float32")
    v = np.arange(256, dtype=np.float32)[:, None]
    if processor == "transformers":
        return ((v - m * np.float32(255)) / (s * np.float32(255))).astype(np.float32)
    if processor == "transformers_pil":
        x = (np.arange(256, dtype=np.float64)[:, None] * (1 / 255)).astype(np.float32)
    elif processor == "open_clip":
        x = v / np.float32(255)
    else:
        raise InputError(f"processor must be one of {PROCESSORS}, got {processor!r}")
    return ((x - m) / s).astype(np.float32)


def normalize_pixels_np(pixels: np.ndarray, mean=OPENAI_MEAN, std=OPENAI_STD,
                        out: np.ndarray | None = None, processor: str = "open_clip") -> np.ndarray:
    """Host-side normalization of uint8 `[..., W, 3]` pixels to float32, bit-exact with the reference.

    "open_clip": the same float32 operations as `ToTensor` + `Normalize` (`x / 255`, `- mean`, `/ std`),
    run on rows of `W * 3` contiguous values with mean and std tiled along the row
    (much faster than broadcasting over a trailing axis of 3). The others: their `pixel_table`, looked up.
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim < 2 or pixels.shape[-1] != 3:
        raise InputError(f"expected uint8 pixels [..., W, 3], got {pixels.dtype} {pixels.shape}")
    m = np.asarray(_three(mean, "mean"), dtype=np.float32)
    s = np.asarray(_three(std, "std"), dtype=np.float32)
    if out is None:
        out = np.empty(pixels.shape, dtype=np.float32)
    elif out.shape != pixels.shape or out.dtype != np.float32:
        raise InputError(f"out must be float32 {pixels.shape}, got {out.dtype} {out.shape}")
    w = pixels.shape[-2]
    rows_in = pixels.reshape(-1, w * 3)
    rows = out.reshape(-1, w * 3)  # a view: out is C-contiguous when we allocate it
    if not np.may_share_memory(rows, out):
        raise InputError("out must be C-contiguous")
    if processor != "open_clip":
        out[...] = pixel_table(mean, std, processor)[pixels, np.arange(3)]
        return out
    np.copyto(rows, rows_in, casting="unsafe")
    np.divide(rows, np.float32(255), out=rows)
    np.subtract(rows, np.tile(m, w), out=rows)
    np.divide(rows, np.tile(s, w), out=rows)
    return out


def pixel_affine(mean=OPENAI_MEAN, std=OPENAI_STD) -> tuple[np.ndarray, np.ndarray]:
    """float32 (scale [3], shift [3]) with `x * scale + shift` ~= `(x / 255 - mean) / std` per channel.

    Both come from float64 (`1 / (255 std)` and `-mean / std`, mean and std rounded to float32
    first, as torchvision does) and are rounded once to float32.
    """
    m = np.asarray(_three(mean, "mean"), dtype=np.float32).astype(np.float64)
    s = np.asarray(_three(std, "std"), dtype=np.float32).astype(np.float64)
    if np.any(s == 0):
        raise InputError("std must be non-zero in float32")
    return (1.0 / (255.0 * s)).astype(np.float32), (-m / s).astype(np.float32)


# How far the multiply-add is from the table (torchvision's float32 numbers), in ulps of the largest
# normalized magnitude |table| over all channels. Checked for every uint8 level, with the product
# rounded before the add and fused with it (a backend may do either): 1 for OpenAI's mean/std and for
# (0.5, 0.5, 0.5); up to 3 for arbitrary mean/std, where torchvision's three roundings (/ 255, - mean,
# / std) are themselves up to ~1.5 such ulps from the exact value. OpenAI's constants: 2.4e-7 at most.
AFFINE_ULPS_OPENAI = 1
AFFINE_ULPS_ANY = 3


def normalize_pixels(pixels, mean=OPENAI_MEAN, std=OPENAI_STD, exact: bool | None = None,
                     processor: str = "open_clip"):
    """Device-side normalization, usable inside `jax.jit`: uint8 `[..., 3]` (NHWC) -> float32.

    processor: whose float32 operations the table reproduces (`pixel_table`); the multiply-add is the
    same for all (SigLIP's mean = std = 0.5: within 1 ulp of each).

    exact=None (default) picks per platform when the program is lowered: on the CPU, the
    `pixel_table` lookup (a 768-entry gather, bit-identical to the host path and to
    torchvision); on accelerators, `x * scale + shift` per channel (`pixel_affine`), one
    multiply-add an elementwise fusion absorbs, within `AFFINE_ULPS_OPENAI` ulp of the table for
    OpenAI's mean/std. An elementwise gather over a whole image batch is an access pattern TPUs
    handle poorly, and the multiply-add can't be made bit-exact: torchvision's `x / 255` and
    `/ std` round three times, and XLA rewrites division by a constant into a multiplication.
    exact=True: the table on every backend. exact=False: the multiply-add on every backend.
    """
    # Here, not at the top: preprocessing on the host (data loader workers) never loads jax.
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(pixels)
    if x.dtype != jnp.uint8 or x.ndim < 1 or x.shape[-1] != 3:
        raise TypeError(f"expected uint8 pixels [..., 3], got {x.dtype} {x.shape}")
    table = pixel_table(mean, std, processor).T.reshape(-1)  # channel c, level v at c * 256 + v
    scale, shift = pixel_affine(mean, std)

    def lookup(x):
        idx = x.astype(jnp.int32) + jnp.asarray([0, 256, 512], dtype=jnp.int32)
        return jnp.take(jnp.asarray(table), idx, mode="clip")

    def affine(x):
        return x.astype(jnp.float32) * jnp.asarray(scale) + jnp.asarray(shift)

    if exact is None:
        return jax.lax.platform_dependent(x, cpu=lookup, default=affine)
    return lookup(x) if exact else affine(x)


# --- opening --------------------------------------------------------------------------------------


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or ""
        return name or f"<PIL.Image mode={source.mode} size={source.size[0]}x{source.size[1]}>"
    return repr(source)


def _reason(e: BaseException) -> str:
    if isinstance(e, Image.DecompressionBombError):
        return f"decompression bomb: {e}"
    if isinstance(e, Image.UnidentifiedImageError):
        return "not a recognized image format"
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    msg = str(e)
    if "truncated" in msg:
        return f"truncated or corrupt image data ({msg})"
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _open(source: ImageSource) -> Image.Image:
    """Open and fully decode an image (first frame), without EXIF transposition."""
    if isinstance(source, Image.Image):
        source.load()
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise _Bad("empty data")
        img = Image.open(io.BytesIO(source))
        img.load()
        return img
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            raise _Bad("is a directory")
        with open(path, "rb") as f:
            data = f.read()
        if not data:
            raise _Bad("empty file")
        img = Image.open(io.BytesIO(data))
        img.load()
        return img
    raise TypeError(f"expected a path, bytes or a PIL image, got {type(source).__name__}")


class _Bad(Exception):
    """Internal: a reason already phrased for the user."""


# --- geometry (torchvision / open_clip rules, reproduced exactly) ---------------------------------


def _pad_like_torchvision(img: Image.Image, ltrb: list[int], fill) -> Image.Image:
    """torchvision.transforms.functional.pad(img, ltrb, fill) for a PIL image, constant mode."""
    nch = len(img.getbands())
    if isinstance(fill, (int, float)) and nch > 1:
        fill = tuple([fill] * nch)
    if img.mode != "F":
        fill = tuple(int(x) for x in fill) if isinstance(fill, tuple) else int(fill)
    if img.mode == "P":
        palette = img.getpalette()
        out = ImageOps.expand(img, border=tuple(ltrb), fill=fill)
        out.putpalette(palette)
        return out
    return ImageOps.expand(img, border=tuple(ltrb), fill=fill)


def _center_crop_or_pad(img: Image.Image, n: int, fill=0) -> Image.Image:
    """torchvision `center_crop` / open_clip `center_crop_or_pad` for a square n x n crop."""
    w, h = img.size
    if n > w or n > h:
        ltrb = [
            (n - w) // 2 if n > w else 0,
            (n - h) // 2 if n > h else 0,
            (n - w + 1) // 2 if n > w else 0,
            (n - h + 1) // 2 if n > h else 0,
        ]
        img = _pad_like_torchvision(img, ltrb, fill)
        w, h = img.size
        if w == n and h == n:
            return img
    top = int(round((h - n) / 2.0))
    left = int(round((w - n) / 2.0))
    if (left, top, w, h) == (0, 0, n, n):
        return img
    return img.crop((left, top, left + n, top + n))


def _resized_size(w: int, h: int, n: int, resize_mode: str) -> tuple[int, int]:
    """Target (width, height) of the resize step."""
    if resize_mode == "shortest":
        # torchvision _compute_resized_output_size(size=[n]) -- float division, then int()
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = n, int(n * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)
    if resize_mode == "squash":
        return n, n
    # "longest": open_clip ResizeKeepRatio(longest=1).get_params, Python round()
    ratio_h, ratio_w = h / n, w / n
    ratio = max(ratio_h, ratio_w) * 1.0 + min(ratio_h, ratio_w) * (1.0 - 1.0)
    new_h, new_w = (round(x * 1.0 / ratio) for x in (h, w))
    return new_w, new_h


# --- the crop's window of a resize ----------------------------------------------------------------
#
# Resizing the short side of a thin image up to n_px makes the long side huge (a 20000x1 image becomes
# 4.48M x 224: 4 GB in Pillow's 4-byte pixels) and the center crop keeps n_px of it. Pillow's
# `resize(box=...)` can't compute just that window with the same pixels: the box is float32, so the
# filter centers move by float32 rounding and ~1 pixel in 10^3 comes out one level off. Instead:
# Pillow resizes in two 1-D passes, horizontal then vertical, each pixel a fixed-point sum over a window
# of its row or column. The short axis's pass is Pillow's own call on the rows or columns the crop needs;
# the long axis's pass is done here, for the crop's window only, with Pillow's coefficients computed as
# libImaging/Resample.c does (precompute_coeffs, normalize_coeffs_8bpc) and the same integer sums, so
# every pixel equals Pillow's resize-then-crop. This covers the 8-bit modes Pillow resamples band by
# band, and "1" and "P", which Pillow resizes with nearest neighbour; the others ("I", "F", "I;16",
# resampled in other arithmetic) are refused past MAX_RESIZE_FACTOR.

# A resize may hold at most this many times the crop's pixels (or the source's, if more) in memory.
MAX_RESIZE_FACTOR = 16
_WINDOW_MODES = {"L", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "RGBa", "La"}
_PREMULTIPLIED = {"RGBA": "RGBa", "LA": "La"}  # Pillow resizes these premultiplied, as here


def _as_bands(img: Image.Image) -> np.ndarray:
    a = np.asarray(img)
    return a[:, :, None] if a.ndim == 2 else a


def _resize_crop_window(img: Image.Image, size: tuple[int, int], n: int, resample) -> Image.Image:
    """img.resize(size, resample) center-cropped to n x n, without resizing what the crop drops.

    size is the "shortest" resize's: one side n, the other longer.
    """
    mode = img.mode
    if mode in _PREMULTIPLIED:
        img = img.convert(_PREMULTIPLIED[mode])
    (w, h), (new_w, new_h) = img.size, size
    if new_h == n:  # wide: the long axis is Pillow's first (horizontal) pass
        first, weights = coefficients(w, new_w, int(round((new_w - n) / 2.0)), n, resample)
        lo, hi = int(first[0]), min(w, int(first[-1]) + weights.shape[1])
        rows = resample_axis(_as_bands(img.crop((lo, 0, hi, h))), 1, first - lo, weights)
        out = Image.frombytes(img.mode, (n, h), rows.tobytes()).resize((n, n), resample)
    else:  # tall: the short axis first (Pillow's own pass, on the rows the crop needs), then the long one
        first, weights = coefficients(h, new_h, int(round((new_h - n) / 2.0)), n, resample)
        lo, hi = int(first[0]), min(h, int(first[-1]) + weights.shape[1])
        strip = img.crop((0, lo, w, hi)).resize((n, hi - lo), resample)
        cols = resample_axis(_as_bands(strip), 0, first - lo, weights)
        out = Image.frombytes(img.mode, (n, n), cols.tobytes())
    return out.convert(mode) if mode in _PREMULTIPLIED else out


def _nearest_indices(in_size: int, out_size: int, start: int, count: int) -> np.ndarray:
    """Pillow's nearest-neighbour source index (-1: none) of outputs start..start+count of a 1-D resize.

    Pillow ("1" and "P" images; ImagingScaleAffine) starts at scale / 2 and adds scale once per output:
    the same float64 additions in the same order here, in bounded chunks.
    """
    scale = float(np.float32(in_size)) / out_size
    x, chunk = scale * 0.5, 1 << 16
    for done in range(0, start, chunk):
        x = np.add.accumulate(np.concatenate(([x], np.full(min(chunk, start - done), scale))))[-1]
    coords = np.add.accumulate(np.concatenate(([x], np.full(count - 1, scale))))
    index = np.trunc(coords).astype(np.int64)  # coords >= 0: C's (int) cast
    return np.where(index < in_size, index, -1)


def _nearest_crop_window(img: Image.Image, size: tuple[int, int], n: int) -> Image.Image:
    """img.resize(size) center-cropped to n x n for "1" and "P" images, which Pillow resizes with nearest
    neighbour whatever the filter asked for."""
    (w, h), (new_w, new_h) = img.size, size
    rows = _nearest_indices(h, new_h, int(round((new_h - n) / 2.0)), n)
    cols = _nearest_indices(w, new_w, int(round((new_w - n) / 2.0)), n)
    src = np.asarray(img)
    out = np.zeros((n, n), src.dtype)  # Pillow fills what maps outside the source with 0
    out[np.ix_(rows >= 0, cols >= 0)] = src[np.ix_(rows[rows >= 0], cols[cols >= 0])]
    if img.mode == "1":
        return Image.fromarray(out)
    result = Image.frombytes(img.mode, (n, n), out.tobytes())
    result.putpalette(img.palette)
    result.info = dict(img.info)
    return result


def _resize_would_waste(w: int, h: int, size: tuple[int, int], n: int) -> bool:
    """True when the full resize holds more than MAX_RESIZE_FACTOR x the crop's (or the source's) pixels."""
    return size[0] * size[1] > MAX_RESIZE_FACTOR * max(n * n, w * h)


class ImageTransform:
    """PIL image (or path / bytes) -> model input, the eval transform of OpenAI CLIP / open_clip, or of
    transformers' image processor (SigLIP's `SiglipImageProcessor`).

    `transform(img)` gives float32 `[n_px, n_px, 3]` normalized (HWC);
    `transform.pixels(img)` the uint8 `[n_px, n_px, 3]` RGB pixels before
    normalization (to normalize on the device with `normalize_pixels(..., processor=transform.processor)`);
    `transform.prepare(img)` the cropped RGB PIL image.

    processor (see PROCESSORS): "open_clip": Pillow's resize (then the crop), RGB after the crop,
    torchvision's normalization. "transformers" (resize_mode "squash" only): RGB first (transparency over
    white), torch's uint8 resize (`image_hf.torch_resize`), the fused normalization; "transformers_pil": the
    same RGB, Pillow's resize, numpy's normalization. Each bit-exact with its reference (`pixel_table`).
    """

    def __init__(
        self,
        n_px: int,
        mean=OPENAI_MEAN,
        std=OPENAI_STD,
        resize_mode: str = "shortest",
        interpolation: str = "bicubic",
        fill_color: int = 0,
        processor: str = "open_clip",
    ):
        if isinstance(n_px, (tuple, list)):
            if len(n_px) != 2 or n_px[0] != n_px[1]:
                raise InputError(f"only square sizes are supported, got {n_px}")
            n_px = n_px[0]
        n_px = int(n_px)
        if n_px <= 0:
            raise InputError(f"n_px must be positive, got {n_px}")
        if resize_mode not in RESIZE_MODES:
            raise InputError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        if interpolation not in INTERPOLATIONS:
            raise InputError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {interpolation!r}")
        if processor not in PROCESSORS:
            raise InputError(f"processor must be one of {PROCESSORS}, got {processor!r}")
        if processor != "open_clip" and resize_mode != "squash":
            raise InputError(f"processor {processor!r} resizes to a square (resize_mode 'squash'), "
                             f"got resize_mode {resize_mode!r}")
        self.processor = processor
        self.n_px = n_px
        self.mean = _three(mean, "mean")
        self.std = _three(std, "std")
        self.resize_mode = resize_mode
        self.interpolation = interpolation
        # open_clip uses fill_color only for "longest"; torchvision CenterCrop always pads with 0.
        self.fill_color = int(fill_color)
        self._resample = INTERPOLATIONS[interpolation]

    def __repr__(self) -> str:
        extra = f", fill_color={self.fill_color}" if self.fill_color else ""
        extra += f", processor={self.processor!r}" if self.processor != "open_clip" else ""
        return (
            f"{type(self).__name__}(n_px={self.n_px}, resize_mode={self.resize_mode!r}, "
            f"interpolation={self.interpolation!r}, mean={self.mean}, std={self.std}{extra})"
        )

    def __eq__(self, other):
        return isinstance(other, ImageTransform) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def _key(self):
        return (self.n_px, self.mean, self.std, self.resize_mode, self.interpolation, self.fill_color, self.processor)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_px, self.n_px, 3)

    # -- the geometric part, on a decoded PIL image --
    def _prepare_pil(self, img: Image.Image) -> Image.Image:
        n = self.n_px
        w, h = img.size
        if w <= 0 or h <= 0:
            raise _Bad(f"empty image ({w}x{h})")
        if self.processor != "open_clip":
            return self._prepare_transformers(img)
        new_w, new_h = _resized_size(w, h, n, self.resize_mode)
        if new_w <= 0 or new_h <= 0:
            raise _Bad(f"aspect ratio too extreme: {w}x{h} resizes to {new_w}x{new_h}")
        if self.resize_mode == "shortest" and _resize_would_waste(w, h, (new_w, new_h), n):
            img = self._resize_crop(img, (new_w, new_h))
        elif (new_w, new_h) != (w, h):  # torchvision skips the resize when the size already matches
            img = img.resize((new_w, new_h), self._resample)
        if self.resize_mode != "squash":  # squash: Resize((n, n)) only, no crop
            fill = self.fill_color if self.resize_mode == "longest" else 0
            img = _center_crop_or_pad(img, n, fill)
        if img.mode != "RGB":  # convert AFTER the crop, as the reference does
            img = img.convert("RGB")
        return img

    def _prepare_transformers(self, img: Image.Image) -> Image.Image:
        """transformers' square resize: RGB first (its convert_to_rgb), then its backend's resize."""

        n, img = self.n_px, rgb_like_transformers(img)
        if self.processor == "transformers_pil":
            return img.resize((n, n), self._resample)
        return Image.fromarray(torch_resize(np.asarray(img), n, self.interpolation))

    def _resize_crop(self, img: Image.Image, size: tuple[int, int]) -> Image.Image:
        """The n x n center of img.resize(size), for a resize too big to hold (see MAX_RESIZE_FACTOR)."""
        if img.mode in ("1", "P"):
            return _nearest_crop_window(img, size, self.n_px)
        mode = _PREMULTIPLIED.get(img.mode, img.mode)
        if mode not in _WINDOW_MODES:
            w, h = img.size
            raise _Bad(f"aspect ratio too extreme: {w}x{h} in mode {img.mode} would resize to {size[0]}x{size[1]} "
                       f"(over {MAX_RESIZE_FACTOR}x the crop); convert it to RGB first")
        return _resize_crop_window(img, size, self.n_px, self._resample)

    def _run(self, source: ImageSource, fn):
        if not isinstance(source, _SOURCE_TYPES):
            raise TypeError(f"expected a path, bytes or a PIL image, got {type(source).__name__}")
        try:
            img = self._prepare_pil(_open(source))
        except _Bad as e:
            raise ImageError(_describe(source), str(e)) from None
        except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, zlib.error, ...
            raise ImageError(_describe(source), _reason(e)) from e
        return fn(img)

    # -- public API --
    def prepare(self, source: ImageSource) -> Image.Image:
        """Resized, center-cropped RGB PIL image (n_px x n_px)."""
        return self._run(source, lambda im: im)

    def pixels(self, source: ImageSource, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 [n_px, n_px, 3] RGB pixels after resize + crop (no normalization)."""

        def to_array(im):
            a = np.asarray(im)  # read-only view of Pillow's bytes
            if out is None:
                return a.copy()
            out[...] = a
            return out

        return self._run(source, to_array)

    def normalize(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Host-side normalization of uint8 [..., 3] pixels, bit-exact with the processor's reference."""
        return normalize_pixels_np(pixels, self.mean, self.std, out=out, processor=self.processor)

    def __call__(self, source: ImageSource) -> np.ndarray:
        """float32 [n_px, n_px, 3] normalized, HWC."""
        return self._run(source, lambda im: self.normalize(np.asarray(im)))


def image_transform(
    n_px: int,
    mean=OPENAI_MEAN,
    std=OPENAI_STD,
    resize_mode: str = "shortest",
    interpolation: str = "bicubic",
    fill_color: int = 0,
    processor: str = "open_clip",
) -> ImageTransform:
    """The CLIP eval transform (OpenAI `_transform` / open_clip `image_transform(is_train=False)`), or
    transformers' image processor's with `processor="transformers"` (see ImageTransform)."""
    return ImageTransform(n_px, mean, std, resize_mode, interpolation, fill_color, processor)


def transform_for(config) -> ImageTransform:
    """The eval transform a model of this config expects (the `preprocess` clip_jax.load returns). A config
    without `image_processor` (CLIPConfig) or `fill_color` gets "open_clip" and 0."""
    return ImageTransform(config.vision.image_size, config.image_mean, config.image_std, config.resize_mode,
                          config.interpolation, getattr(config, "fill_color", 0),
                          getattr(config, "image_processor", "open_clip"))


def load_image(source: ImageSource, transform: ImageTransform) -> np.ndarray:
    """uint8 [n_px, n_px, 3] pixels of one image (raises `ImageError`)."""
    return transform.pixels(source)


# --- batch loading --------------------------------------------------------------------------------


def read_into(source: ImageSource, transform: ImageTransform, out: np.ndarray,
              normalized: bool = False) -> ImageError | None:
    """Decode one image into `out`: uint8 [n_px, n_px, 3] pixels (`transform.pixels`), or float32
    normalized ones with `normalized=True` (`transform(source)`, normalized while the image is hot in
    cache). A bad image's `ImageError` is returned, not raised, so one bad file doesn't stop a batch."""
    try:
        if normalized:
            transform.normalize(transform.pixels(source), out=out)
        else:
            transform.pixels(source, out=out)
        return None
    except ImageError as e:
        return e


class Decoder:
    """Threads that decode images into rows the caller allocated (the threaded decoding of
    `load_images`, `ShardedCLIP.embed_image_files` and the shard embedding jobs).

    Pillow releases the GIL while decoding and resizing (and numpy while normalizing), so threads scale
    with cores. Use it as a context manager: leaving it cancels what hasn't started and waits for the rest.
    """

    def __init__(self, transform: ImageTransform, num_threads: int | None = None, normalized: bool = False):
        self.transform = transform
        self.normalized = normalized
        self.threads = max(1, int(num_threads or os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="clip_jax_decode")

    def submit(self, sources: Sequence[ImageSource], rows: Sequence[np.ndarray]) -> list[Future]:
        """Start decoding `sources[i]` into `rows[i]` (an array's rows, or a list of row views); each
        future's result is None, or the image's `ImageError`."""
        return [self._pool.submit(read_into, s, self.transform, row, self.normalized) for s, row in zip(sources, rows)]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LoadedImages(NamedTuple):
    """Result of `load_images`. The calls that take images (model.encode_image, clip_logits, ShardedCLIP)
    take it as its `pixels`.

    pixels: uint8 [N_ok, n_px, n_px, 3], the good images in input order.
    errors: `[(source, reason), ...]` for the skipped ones.
    kept:   int64 [N_ok], the input index of each row of `pixels`.
    """

    pixels: np.ndarray
    errors: list
    kept: np.ndarray


def load_images(
    sources: Sequence[ImageSource],
    transform: ImageTransform,
    num_threads: int | None = None,
    on_error: str = "raise",
    normalized: bool = False,
) -> LoadedImages:
    """Load and preprocess many images with a thread pool (see `Decoder`).

    By default the rows are uint8, each equal to `transform.pixels(source)`: normalize them with
    `normalize_pixels` on the device, inside jit. With `normalized=True` the rows are float32, each
    equal to `transform(source)` (normalized in the worker threads).

    `on_error="raise"` raises the `ImageError` of the first bad image (in input order);
    `on_error="skip"` leaves bad images out and lists them in `errors` as `(source, reason)`; `kept`
    gives the input index of each returned row.
    """
    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if isinstance(sources, (str, os.PathLike, bytes, Image.Image)):
        raise TypeError("load_images takes a sequence of images; use transform.pixels for one")
    sources = list(sources)
    n = len(sources)
    out = np.empty((n,) + transform.shape, dtype=np.float32 if normalized else np.uint8)
    threads = max(1, min(int(os.cpu_count() or 1) if num_threads is None else int(num_threads), n))
    stop = on_error == "raise"
    if threads == 1:  # no pool: each image in turn, up to the first bad one when that raises
        results = []
        for i, source in enumerate(sources):
            results.append(read_into(source, transform, out[i], normalized))
            if stop and results[-1] is not None:
                raise results[-1]
    else:
        with Decoder(transform, threads, normalized) as decoder:
            results = []
            for future in decoder.submit(sources, out):
                results.append(future.result())
                if stop and results[-1] is not None:
                    raise results[-1]  # leaving the Decoder cancels the images not started
    return _kept_rows(sources, out, results)


def _kept_rows(sources: list, out: np.ndarray, results: list[ImageError | None]) -> LoadedImages:
    """`load_images`' result from every row's outcome: the good rows, and the bad ones' reasons."""
    errors, kept = [], []
    for i, r in enumerate(results):
        if r is None:
            kept.append(i)
        else:
            src = sources[i]
            errors.append((src if isinstance(src, (str, os.PathLike)) else r.source, r.reason))
    kept_arr = np.asarray(kept, dtype=np.int64)
    if len(kept) != len(sources):
        out = out[kept_arr]
    return LoadedImages(out, errors, kept_arr)
