"""Synthetic image-caption pairs: one shape on a plain background, drawn with PIL.

Every image shows a `size` `color` `shape` at a `position` ("a small red triangle on the left"); the
generator is a pure function of a seed, so a training run, a held-out set and the demo are reproducible
and need no data files. Continuous nuisances (exact place, radius, rotation, hue, background, pixel noise)
are drawn per image, so held-out images from a fresh seed are new pictures of the same categories.

    images, samples = generate(8, seed=0)          # 8 PIL images 64x64 and their Sample descriptions
    pixels, captions = batch(seed=0, index=3, batch_size=128)   # uint8 [128, 64, 64, 3], list[str]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .errors import InputError

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLORS = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (40, 75, 215),
    "yellow": (235, 205, 30),
    "purple": (135, 55, 175),
    "orange": (245, 125, 20),
}
SIZES = {"small": (0.12, 0.15), "large": (0.20, 0.24)}  # circumradius as a fraction of the side
POSITIONS = {  # centre as fractions of (width, height), and the caption's phrase
    "left": ((0.27, 0.5), "on the left"),
    "right": ((0.73, 0.5), "on the right"),
    "top": ((0.5, 0.27), "at the top"),
    "bottom": ((0.5, 0.73), "at the bottom"),
    "middle": ((0.5, 0.5), "in the middle"),
}
SUPERSAMPLE = 4  # draw 4x larger, then downsample with a box filter: antialiased edges


@dataclass(frozen=True)
class Sample:
    """What one image shows."""

    shape: str
    color: str
    size: str
    position: str

    @property
    def label(self) -> str:
        """The zero-shot class: "red triangle"."""
        return f"{self.color} {self.shape}"

    def caption(self, with_size: bool = True, with_position: bool = True) -> str:
        """"a small red triangle on the left"; the size and the place can be left out."""
        words = ([self.size] if with_size else []) + [self.color, self.shape]
        if with_position:
            words.append(POSITIONS[self.position][1])
        return _with_article(" ".join(words))


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def labels() -> list[str]:
    """Every zero-shot class, "red circle", ..., colors x shapes (30)."""
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def prompt(label: str) -> str:
    """The text a class is scored with: "a red circle", "an orange star" (the short caption form seen in
    training)."""
    return _with_article(label)


def random_sample(rng: np.random.Generator) -> Sample:
    return Sample(
        shape=SHAPES[rng.integers(len(SHAPES))],
        color=list(COLORS)[rng.integers(len(COLORS))],
        size=list(SIZES)[rng.integers(len(SIZES))],
        position=list(POSITIONS)[rng.integers(len(POSITIONS))],
    )


def _outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon vertices of `shape` with circumradius r around (cx, cy), rotated by `angle` radians."""
    if shape == "square":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif shape == "triangle":  # pointing up
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "star":  # five points, inner radius 0.45 r
        pts = [((r if k % 2 == 0 else 0.45 * r) * math.cos(a), (r if k % 2 == 0 else 0.45 * r) * math.sin(a))
               for k, a in enumerate(-math.pi / 2 + k * math.pi / 5 for k in range(10))]
    elif shape == "cross":  # a plus sign, arms 0.36 r wide
        w = 0.36 * r
        pts = [(w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w),
               (-w, -r)]
    else:
        raise InputError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def draw(sample: Sample, rng: np.random.Generator, image_size: int = 64) -> Image.Image:
    """One RGB image of `sample`, image_size x image_size; the nuisances are drawn from `rng`."""
    n = image_size * SUPERSAMPLE
    background = tuple(int(v) for v in rng.integers(200, 246) + rng.integers(-10, 11, size=3))
    img = Image.new("RGB", (n, n), background)
    fx, fy = POSITIONS[sample.position][0]
    cx, cy = (fx + rng.uniform(-0.05, 0.05)) * n, (fy + rng.uniform(-0.05, 0.05)) * n
    r = rng.uniform(*SIZES[sample.size]) * n
    color = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLORS[sample.color])
    d = ImageDraw.Draw(img)
    if sample.shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    else:
        d.polygon(_outline(sample.shape, cx, cy, r, rng.uniform(-0.25, 0.25)), fill=color)
    img = img.resize((image_size, image_size), Image.Resampling.BOX)
    noise = 4.0 * rng.standard_normal((image_size, image_size, 3), dtype=np.float32)
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8))


def generate(n: int, seed: int, image_size: int = 64) -> tuple[list[Image.Image], list[Sample]]:
    """n images and their descriptions, a function of (seed, image_size) only: the first k images of a
    seed are the same for every n >= k."""
    rng = np.random.default_rng([seed, 0x5EED])
    images, samples = [], []
    for _ in range(n):
        samples.append(random_sample(rng))
        images.append(draw(samples[-1], rng, image_size))
    return images, samples


def batch(seed: int, index: int, batch_size: int, image_size: int = 64) -> tuple[np.ndarray, list[str]]:
    """Training batch number `index` of the stream `seed`: (uint8 [B, S, S, 3] pixels, B captions).

    Each caption names color and shape, and the size and the place each with probability 1/2
    ("a red triangle", ..., "a small red triangle on the left"). Any batch can be made again from
    (seed, index) alone, which is what makes the data position resumable.
    """
    rng = np.random.default_rng([seed, index])
    pixels = np.empty((batch_size, image_size, image_size, 3), np.uint8)
    captions = []
    for i in range(batch_size):
        s = random_sample(rng)
        pixels[i] = np.asarray(draw(s, rng, image_size))
        captions.append(s.caption(with_size=bool(rng.integers(2)), with_position=bool(rng.integers(2))))
    return pixels, captions
