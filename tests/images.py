"""Real photographs for image tests and benchmarks (from scikit-image / matplotlib sample data).

Nothing here downloads anything: the photos ship inside the scikit-image and
matplotlib wheels. :func:`photos` returns whichever are installed.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

# (package, path inside the package) of real photographs
_SKIMAGE_PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png"]


def photo_files() -> dict[str, Path]:
    """name -> file of every available sample photograph."""
    found: dict[str, Path] = {}
    try:
        import skimage

        d = Path(skimage.__file__).parent / "data"
        for name in _SKIMAGE_PHOTOS:
            if (d / name).is_file():
                found[name.rsplit(".", 1)[0]] = d / name
    except ImportError:
        pass
    try:
        import matplotlib

        p = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if p.is_file():
            found["grace_hopper"] = p
    except ImportError:
        pass
    return found


def photos() -> dict[str, Image.Image]:
    """name -> RGB PIL image of every available sample photograph (camera is grayscale, made RGB)."""
    out = {}
    for name, path in photo_files().items():
        with Image.open(path) as im:
            out[name] = im.convert("RGB")
    return out


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def in_mode(rgb: Image.Image, mode: str) -> tuple[bytes, str]:
    """Encode an RGB photo as a file whose decoded mode is ``mode``; returns (bytes, format).

    Modes: RGB, L, LA, RGBA, P, P+trns (palette with a transparent index), 1,
    I;16, I, F, CMYK. Alpha channels get a real gradient so premultiplied
    resizing actually matters.
    """
    w, h = rgb.size
    alpha = Image.fromarray(
        (np.add.outer(np.linspace(0, 255, h), np.linspace(0, 255, w)) / 2).astype(np.uint8), "L"
    )
    if mode == "RGB":
        return encode(rgb, "JPEG", quality=92), "JPEG"
    if mode == "L":
        return encode(rgb.convert("L"), "JPEG", quality=92), "JPEG"
    if mode == "LA":
        im = rgb.convert("L")
        im.putalpha(alpha)
        return encode(im, "PNG"), "PNG"
    if mode == "RGBA":
        im = rgb.copy()
        im.putalpha(alpha)
        return encode(im, "PNG"), "PNG"
    if mode == "P":
        return encode(rgb.quantize(64), "PNG"), "PNG"
    if mode == "P+trns":
        im = rgb.quantize(64)
        return encode(im, "PNG", transparency=3), "PNG"
    if mode == "P-gif":
        return encode(rgb.quantize(128), "GIF"), "GIF"
    if mode == "1":
        return encode(rgb.convert("1"), "PNG"), "PNG"
    if mode == "I;16":
        a = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257 + 3
        return encode(Image.fromarray(a), "PNG"), "PNG"
    if mode == "I":
        a = np.asarray(rgb.convert("L"), dtype=np.int32) * 3 - 100  # values outside 0..255 too
        return encode(Image.fromarray(a), "TIFF"), "TIFF"
    if mode == "F":
        a = np.asarray(rgb.convert("L"), dtype=np.float32) * 1.37 - 20.5
        return encode(Image.fromarray(a), "TIFF"), "TIFF"
    if mode == "CMYK":
        return encode(rgb.convert("CMYK"), "JPEG", quality=92), "JPEG"
    raise ValueError(mode)


def write_jpegs(directory: str | os.PathLike, count: int, seed: int = 0, quality: int = 90) -> list[str]:
    """Write ``count`` realistic JPEGs (500x375 .. 1024x768, landscape and portrait) made by
    resizing / cropping the sample photographs; returns their paths."""
    rng = np.random.default_rng(seed)
    srcs = list(photos().values())
    if not srcs:
        raise RuntimeError("no sample photographs: pip install scikit-image or matplotlib")
    sizes = [(500, 375), (640, 480), (800, 600), (1024, 768), (768, 1024), (375, 500), (960, 640), (1024, 576)]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        src = srcs[i % len(srcs)]
        w, h = sizes[int(rng.integers(len(sizes)))]
        # random crop of the source with the target aspect, then resize to the target size
        sw, sh = src.size
        scale = min(sw / w, sh / h) * float(rng.uniform(0.6, 1.0))
        cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
        x0 = int(rng.integers(0, sw - cw + 1))
        y0 = int(rng.integers(0, sh - ch + 1))
        im = src.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.LANCZOS)
        p = directory / f"img_{i:04d}.jpg"
        im.save(p, "JPEG", quality=quality)
        paths.append(str(p))
    return paths
