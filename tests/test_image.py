"""clip_jax.image against open_clip / torchvision on real photographs.

The reference is ``open_clip.image_transform(n, is_train=False)`` (for
resize_mode "shortest" it is OpenAI CLIP's ``_transform``: Resize, CenterCrop,
convert RGB, ToTensor, Normalize) applied to the same file opened by Pillow.

Why exact equality is expected: the geometric part (resize, crop/pad, RGB
conversion) calls the same Pillow functions with the same integer sizes and
offsets, so the uint8 pixels must be identical; the normalization is
``(float32(v) / 255 - mean) / std`` in float32, each step one correctly
rounded IEEE operation, in torchvision's order, so it is bit-identical too.
The float comparison still allows 1e-5 (float32 normalization is the only
floating-point step, so any deviation would be a few ulp), but we also assert
bit equality.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_jax.image import (
    OPENAI_MEAN,
    OPENAI_STD,
    ImageError,
    ImageTransform,
    image_transform,
    load_images,
    normalize_pixels,
    pixel_table,
)
from tests.images import in_mode, photos

MODES = ["RGB", "L", "LA", "RGBA", "P", "P+trns", "P-gif", "1", "I;16", "I", "F", "CMYK"]


# ----------------------------------------------------------------------------
# reference


@pytest.fixture(scope="module")
def open_clip_mod():
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    return pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def pics():
    p = photos()
    if not p:
        pytest.skip("no sample photographs (pip install scikit-image matplotlib)")
    return p


def _pick(pics, i):
    names = sorted(pics)
    return pics[names[i % len(names)]]


def _open(src):
    if isinstance(src, (bytes, bytearray)):
        return Image.open(io.BytesIO(src))
    if isinstance(src, Image.Image):
        return src.copy()
    return Image.open(src)


def reference(open_clip, src, n_px, resize_mode="shortest", interpolation="bicubic", fill_color=0):
    """(uint8 HWC pixels before ToTensor, float32 HWC normalized) from open_clip."""
    from torchvision.transforms import Compose

    tf = open_clip.image_transform(
        n_px, is_train=False, resize_mode=resize_mode, interpolation=interpolation, fill_color=fill_color
    )
    assert type(tf.transforms[-2]).__name__ == "MaybeToTensor"
    geo = Compose(tf.transforms[:-2])  # resize, crop (or pad), convert("RGB")
    u8 = np.asarray(geo(_open(src)))
    f32 = tf(_open(src)).numpy().transpose(1, 2, 0)
    return u8, f32


def check(open_clip, src, n_px, resize_mode="shortest", interpolation="bicubic", fill_color=0):
    ref_u8, ref_f32 = reference(open_clip, src, n_px, resize_mode, interpolation, fill_color)
    tf = image_transform(n_px, resize_mode=resize_mode, interpolation=interpolation, fill_color=fill_color)
    u8 = tf.pixels(src)
    f32 = tf(src)
    assert u8.dtype == np.uint8 and u8.shape == (n_px, n_px, 3) and u8.flags.writeable
    assert f32.dtype == np.float32 and f32.shape == (n_px, n_px, 3)
    np.testing.assert_array_equal(u8, ref_u8)
    assert np.abs(f32 - ref_f32).max() <= 1e-5
    np.testing.assert_array_equal(f32.view(np.uint32), ref_f32.view(np.uint32))  # bit-exact
    return u8


# ----------------------------------------------------------------------------
# exactness on real photographs


@pytest.mark.parametrize("mode", MODES)
def test_modes_match_open_clip(open_clip_mod, pics, mode):
    rgb = _pick(pics, MODES.index(mode))
    # odd sizes so the crop offsets are not whole halves: exercises round-half-even
    rgb = rgb.crop((0, 0, rgb.width - 3, rgb.height - 1))
    data, _ = in_mode(rgb, mode)
    for rm in ("shortest", "longest", "squash"):
        check(open_clip_mod, data, 224, resize_mode=rm)


@pytest.mark.parametrize("n_px", [224, 288, 336, 384, 448])
def test_sizes(open_clip_mod, pics, n_px):
    rgb = _pick(pics, n_px)
    data, _ = in_mode(rgb, "RGB")
    check(open_clip_mod, data, n_px)
    check(open_clip_mod, rgb, n_px, interpolation="bilinear")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P+trns", "LA", "1", "CMYK", "I;16", "F"])
def test_bilinear_and_padding_modes(open_clip_mod, pics, mode):
    # a small image: "longest" pads (the fill value is 0 in the image's own mode: palette
    # index 0 for P, white after conversion for CMYK), "shortest" upsamples
    rgb = _pick(pics, MODES.index(mode) + 1).resize((150, 97), Image.Resampling.LANCZOS)
    data, _ = in_mode(rgb, mode)
    for rm in ("shortest", "longest", "squash"):
        check(open_clip_mod, data, 224, resize_mode=rm, interpolation="bilinear")
        check(open_clip_mod, data, 224, resize_mode=rm)


@pytest.mark.parametrize(
    "size",
    [
        (1000, 3),  # extreme aspect ratios: shortest upsamples to 74666 x 224
        (3, 1000),
        (224, 500),  # short side already n_px: no resize at all
        (500, 224),
        (224, 224),
        (225, 400),  # crop offset (225-224)/2 = 0.5 -> round half even -> 0
        (227, 301),  # 1.5 -> 2
        (400, 229),  # 2.5 -> 2
        (100, 60),  # smaller than the crop
        (223, 223),
        (1, 1),
    ],
)
def test_geometry_edge_cases(open_clip_mod, pics, size):
    rgb = _pick(pics, sum(size)).resize(size, Image.Resampling.LANCZOS)
    for mode in ("RGB", "P"):
        data, _ = in_mode(rgb, mode)
        for rm in ("shortest", "longest", "squash"):
            check(open_clip_mod, data, 224, resize_mode=rm)


# Thin images: the short side is upsampled, the long side becomes huge and the crop keeps n_px of it;
# only the crop's window is resampled (clip_jax.image._resize_crop_window), with the same pixels.
THIN = [((150, 5), 224), ((5, 150), 224), ((300, 1), 64), ((1, 301), 64)]  # (size, n_px)


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA", "P+trns", "1", "CMYK"])
def test_extreme_aspect_matches_open_clip(open_clip_mod, pics, mode):
    from clip_jax.image import _resize_would_waste, _resized_size

    for i, (size, n_px) in enumerate(THIN):
        assert _resize_would_waste(*size, _resized_size(*size, n_px, "shortest"), n_px)
        rgb = _pick(pics, i).resize(size, Image.Resampling.LANCZOS)
        data, _ = in_mode(rgb, mode)
        check(open_clip_mod, data, n_px)
        if mode in ("RGB", "RGBA"):
            check(open_clip_mod, data, n_px, interpolation="bilinear")
        check(open_clip_mod, data, n_px, resize_mode="squash")  # these two never resize past n_px x n_px
        if round(min(size) * n_px / max(size)) > 0:  # else "longest" rounds a side to 0, as in open_clip
            check(open_clip_mod, data, n_px, resize_mode="longest")


def test_extreme_aspect_refused_in_modes_without_a_window():
    """"I", "F" and "I;16" images resample in other arithmetic: past MAX_RESIZE_FACTOR they are refused."""
    for mode in ("I", "F"):
        im = Image.new(mode, (3000, 2), 7)
        with pytest.raises(ImageError, match="aspect ratio too extreme: 3000x2 in mode " + mode):
            image_transform(224).pixels(im)
        assert image_transform(224).pixels(im.resize((60, 20))).shape == (224, 224, 3)  # within the limit


def _peak_rss_mib(code: str) -> float:
    """Peak resident memory of a fresh Python running `code`, as its otherwise idle parent sees it."""
    runner = ("import resource, subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1]], check=True); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", runner, code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout) / 1024  # Linux reports KiB


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units and address-space limits are Linux's")
def test_thin_png_memory_is_bounded():
    """A 20000x1 PNG (140 bytes) resized as open_clip does would be 4.48M x 224 pixels, 4 GB in Pillow's
    4-byte pixels; the crop keeps 224 x 224. The window holds the source (80 KB), the crop's window and
    the output (200 KB each), so the peak may exceed a 224 x 224 image's by at most 32 MiB (allocator
    slack, numpy temporaries of n_px x 5 taps). image.py and config.py alone are loaded (numpy, Pillow;
    no JAX: the package's __init__ is skipped), and the address space is capped at 2 GiB so a regression
    fails fast instead of exhausting the machine."""
    package = Path(__file__).resolve().parents[1] / "clip_jax"
    code = f"""
import io, resource, sys, types
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from PIL import Image
sys.modules["clip_jax"] = types.ModuleType("clip_jax")
sys.modules["clip_jax"].__path__ = [{str(package)!r}]
import clip_jax.image as image
assert "jax" not in sys.modules
tf = image.image_transform(224)
for size in SIZES:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buf, "PNG")
    assert tf.pixels(buf.getvalue()).shape == (224, 224, 3)
"""
    base = _peak_rss_mib("SIZES = [(224, 224), (300, 224)]" + code)
    thin = _peak_rss_mib("SIZES = [(20000, 1), (1, 20000), (100000, 3)]" + code)
    assert thin - base <= 32, (base, thin)


def test_short_side_equal_is_not_resampled(pics):
    rgb = _pick(pics, 0).resize((224, 300))
    px = image_transform(224).pixels(rgb)
    np.testing.assert_array_equal(px, np.asarray(rgb)[38:262])  # top = round(76 / 2) = 38


def test_longest_degenerate_aspect_raises_like_open_clip(open_clip_mod):
    im = Image.new("RGB", (3000, 3), (10, 20, 30))  # longest: height rounds to 0
    with pytest.raises(ValueError):
        open_clip_mod.image_transform(224, is_train=False, resize_mode="longest")(im)
    with pytest.raises(ImageError, match="3000x3"):
        image_transform(224, resize_mode="longest")(im)


def test_fill_color_longest(open_clip_mod, pics):
    rgb = _pick(pics, 2).resize((300, 120))
    check(open_clip_mod, rgb, 224, resize_mode="longest", fill_color=128)


def test_exif_orientation_not_applied(open_clip_mod, pics):
    rgb = _pick(pics, 3).resize((320, 240))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path_bytes = io.BytesIO()
    rgb.save(path_bytes, "JPEG", exif=exif.tobytes(), quality=90)
    data = path_bytes.getvalue()
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == 6
    u8 = check(open_clip_mod, data, 224)
    from PIL import ImageOps

    rotated = image_transform(224).pixels(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    assert not np.array_equal(u8, rotated)


def test_custom_mean_std(open_clip_mod, pics):
    from torchvision.transforms import Normalize

    data, _ = in_mode(_pick(pics, 4), "RGB")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    tf = open_clip_mod.image_transform(224, is_train=False, mean=mean, std=std)
    assert isinstance(tf.transforms[-1], Normalize)
    ref = tf(Image.open(io.BytesIO(data))).numpy().transpose(1, 2, 0)
    ours = image_transform(224, mean=mean, std=std)(data)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_pixel_table_bit_exact_all_levels(open_clip_mod):
    import torchvision.transforms.functional as TF

    levels = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # 1 x 256 x 3
    cases = [(OPENAI_MEAN, OPENAI_STD), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.1, 0.7, 0.3), (0.9, 0.11, 0.013))]
    for mean, std in cases:
        ref = TF.normalize(TF.to_tensor(Image.fromarray(levels)), mean, std).numpy()[:, 0, :].T  # 256 x 3
        assert ref.dtype == np.float32
        table = pixel_table(mean, std)
        np.testing.assert_array_equal(table.view(np.uint32), ref.view(np.uint32))


# ----------------------------------------------------------------------------
# input kinds, repr


def test_input_kinds_agree(tmp_path, pics):
    rgb = _pick(pics, 5)
    data, _ = in_mode(rgb, "RGB")
    p = tmp_path / "x.jpg"
    p.write_bytes(data)
    tf = image_transform(224)
    a = tf.pixels(str(p))
    for src in (p, data, bytearray(data), Image.open(p)):
        np.testing.assert_array_equal(tf.pixels(src), a)
    assert tf.prepare(p).mode == "RGB" and tf.prepare(p).size == (224, 224)
    with pytest.raises(TypeError):
        tf.pixels(12345)


def test_repr_and_attributes():
    tf = image_transform(336, resize_mode="squash", interpolation="bilinear")
    assert isinstance(tf, ImageTransform)
    assert tf.n_px == 336 and tf.mean == OPENAI_MEAN and tf.std == OPENAI_STD
    assert tf.resize_mode == "squash" and tf.interpolation == "bilinear"
    assert tf.shape == (336, 336, 3)
    r = repr(tf)
    assert "n_px=336" in r and "'squash'" in r and "'bilinear'" in r and "0.48145466" in r
    assert tf == image_transform(336, resize_mode="squash", interpolation="bilinear")
    assert tf != image_transform(336)
    with pytest.raises(ValueError):
        image_transform(224, resize_mode="crop")
    with pytest.raises(ValueError):
        image_transform(224, interpolation="lanczos")


# ----------------------------------------------------------------------------
# device-side normalize


def test_jax_normalize_under_jit_matches_float_path(pics):
    import jax

    tf = image_transform(224)
    batch = np.stack([tf.pixels(_pick(pics, i)) for i in range(3)])
    batch[0, 0, :, :] = np.arange(224)[:, None]  # make sure every level 0..255 is present
    batch[0, 1, :32, :] = np.arange(224, 256)[:, None]
    host = tf.normalize(batch)
    np.testing.assert_array_equal(host[1], tf(_pick(pics, 1)))
    dev = np.asarray(jax.jit(normalize_pixels)(batch))
    assert dev.dtype == np.float32 and dev.shape == batch.shape
    assert np.abs(dev - host).max() <= 1e-6
    np.testing.assert_array_equal(dev.view(np.uint32), host.view(np.uint32))  # table lookup: bit-exact
    arith = np.asarray(jax.jit(lambda x: normalize_pixels(x, exact=False))(batch))
    assert np.abs(arith - host).max() <= 1e-6  # XLA: x / 255 -> x * (1 / 255), 1 ulp at most
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ref = image_transform(224, mean=mean, std=std).normalize(batch)
    for exact in (True, False):
        custom = jax.jit(lambda x: normalize_pixels(x, mean, std, exact=exact))(batch)
        assert np.abs(np.asarray(custom) - ref).max() <= 1e-6
    with pytest.raises(TypeError):
        normalize_pixels(batch.astype(np.float32))


def test_affine_normalize_within_stated_ulps_of_the_table():
    """The accelerators' multiply-add against torchvision's numbers, for every uint8 level and channel,
    with the product rounded before the add and fused with it (XLA backends may do either)."""
    import jax

    from clip_jax.image import AFFINE_ULPS_ANY, AFFINE_ULPS_OPENAI, pixel_affine

    v = np.arange(256, dtype=np.float64)[:, None]
    rng = np.random.RandomState(0)
    cases = [(OPENAI_MEAN, OPENAI_STD, AFFINE_ULPS_OPENAI), ((0.5,) * 3, (0.5,) * 3, AFFINE_ULPS_OPENAI)]
    cases += [(tuple(rng.uniform(0, 1, 3)), tuple(rng.uniform(0.01, 1, 3)), AFFINE_ULPS_ANY) for _ in range(200)]
    for mean, std, ulps in cases:
        table = pixel_table(mean, std)
        scale, shift = pixel_affine(mean, std)
        fused = (v * scale.astype(np.float64) + shift.astype(np.float64)).astype(np.float32)  # exact, then one rounding
        rounded = v.astype(np.float32) * scale + shift
        bound = ulps * np.spacing(np.abs(table).max())
        assert np.abs(fused - table).max() <= bound and np.abs(rounded - table).max() <= bound, (mean, std)
    assert AFFINE_ULPS_OPENAI * np.spacing(np.abs(pixel_table()).max()) < 2.5e-7
    # exact=False is that multiply-add; the default is the table on the CPU (lowered for "cpu").
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    arith = np.asarray(jax.jit(lambda x: normalize_pixels(x, exact=False))(levels))
    assert np.abs(arith - pixel_table()).max() <= AFFINE_ULPS_OPENAI * np.spacing(np.abs(pixel_table()).max())
    np.testing.assert_array_equal(np.asarray(jax.jit(normalize_pixels)(levels)), pixel_table())


# ----------------------------------------------------------------------------
# threaded loader


def _write_set(tmp_path, pics, count=7):
    paths = []
    for i in range(count):
        rgb = _pick(pics, i)
        mode = ["RGB", "RGB", "P", "RGBA", "L", "CMYK", "RGB"][i % 7]
        data, fmt = in_mode(rgb.resize((300 + 37 * i, 200 + 29 * i)), mode)
        p = tmp_path / f"im{i}.{fmt.lower()}"
        p.write_bytes(data)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("threads", [1, 3, None])
def test_loader_equals_single_image_path(tmp_path, pics, threads):
    paths = _write_set(tmp_path, pics)
    tf = image_transform(224)
    res = load_images(paths, tf, num_threads=threads)
    pixels, errors, kept = res
    assert pixels.dtype == np.uint8 and pixels.shape == (len(paths), 224, 224, 3)
    assert errors == [] and kept.tolist() == list(range(len(paths)))
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(pixels[i], tf.pixels(p))
    np.testing.assert_array_equal(tf.normalize(pixels[2]), tf(paths[2]))
    normed = load_images(paths, tf, num_threads=threads, normalized=True).pixels
    assert normed.dtype == np.float32
    np.testing.assert_array_equal(normed, tf.normalize(pixels))
    np.testing.assert_array_equal(normed[4], tf(paths[4]))


def test_loader_empty():
    px, errors, kept = load_images([], image_transform(224))
    assert px.shape == (0, 224, 224, 3) and errors == [] and kept.shape == (0,)


# ----------------------------------------------------------------------------
# bad files


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bad_files(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (path, expected words in the reason)."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    jpg = io.BytesIO()
    noise.save(jpg, "JPEG", quality=95)
    png = io.BytesIO()
    noise.save(png, "PNG")
    files = {
        "truncated.jpg": (jpg.getvalue()[: len(jpg.getvalue()) // 2], "truncated"),
        "truncated.png": (png.getvalue()[: len(png.getvalue()) // 2], ""),
        "random.jpg": (rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "not a recognized image"),
        "bomb.png": (_png_header_only(100_000, 100_000), "decompression bomb"),
        "empty.jpg": (b"", "empty"),
    }
    out = {}
    for name, (data, why) in files.items():
        p = tmp_path / name
        p.write_bytes(data)
        out[name] = (str(p), why)
    out["missing.jpg"] = (str(tmp_path / "missing.jpg"), "not found")
    d = tmp_path / "a_directory.jpg"
    d.mkdir()
    out["a_directory.jpg"] = (str(d), "directory")
    return out


def test_bad_files_raise_image_error_naming_the_file(tmp_path):
    tf = image_transform(224)
    for name, (path, why) in _bad_files(tmp_path).items():
        with pytest.raises(ImageError) as ei:
            tf(path)
        err = ei.value
        assert isinstance(err, ValueError)
        assert err.source == path and path in str(err), str(err)
        assert why in err.reason, (name, err.reason)
        with pytest.raises(ImageError):
            tf.pixels(Path(path))
    with pytest.raises(ImageError, match="bytes"):
        tf(b"definitely not an image")


def test_loader_skip_and_raise(tmp_path, pics):
    good = _write_set(tmp_path, pics, count=4)
    bad = _bad_files(tmp_path)
    bad_paths = [p for p, _ in bad.values()]
    mixed = [bad_paths[0], good[0], bad_paths[1], good[1], good[2]] + bad_paths[2:] + [good[3]]
    tf = image_transform(224)
    for threads in (1, 2):
        pixels, errors, kept = load_images(mixed, tf, num_threads=threads, on_error="skip")
        assert [mixed[i] for i in kept] == good
        assert pixels.shape == (4, 224, 224, 3)
        for row, p in zip(pixels, good):
            np.testing.assert_array_equal(row, tf.pixels(p))
        assert [e[0] for e in errors] == bad_paths
        assert all(isinstance(r, str) and r for _, r in errors)
        with pytest.raises(ImageError) as ei:
            load_images(mixed, tf, num_threads=threads)
        assert ei.value.source == bad_paths[0]  # the first bad one in input order
    with pytest.raises(ValueError):
        load_images(good, tf, on_error="ignore")


def test_bomb_limits_follow_pillow(tmp_path, monkeypatch):
    im = Image.new("RGB", (100, 100), (1, 2, 3))
    p = tmp_path / "big.png"
    im.save(p)
    tf = image_transform(32)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10000 px: above 1x, below 2x -> warning only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert tf.pixels(p).shape == (32, 32, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # above 2x -> error
    with pytest.raises(ImageError, match="decompression bomb"):
        tf.pixels(p)
    px, errors, kept = load_images([str(p)], tf, on_error="skip")
    assert px.shape == (0, 32, 32, 3) and len(errors) == 1 and kept.size == 0


def test_the_calls_take_load_images_result_as_its_pixels(tmp_path, tiny):
    """README passes load_images' result to the calls: a LoadedImages is taken as its .pixels."""
    import clip_jax
    from clip_jax.parallel import ShardedCLIP

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 36, 3), dtype=np.uint8)).save(paths[-1])
    loaded = load_images(paths, image_transform(tiny.config.vision.image_size))
    want = np.asarray(tiny.encode_image(loaded.pixels))
    np.testing.assert_array_equal(np.asarray(tiny.encode_image(loaded)), want)
    # ShardedCLIP pads the 3 images to its batch of 4: another program, which XLA's CPU code may round apart
    # from the batch of 3 by an ulp or two of these ~1 features (measured 7.2e-7 on an AVX-512 machine, 0 on others).
    np.testing.assert_allclose(ShardedCLIP(tiny, batch_size=4).encode_image(loaded), want, rtol=0, atol=2e-6)
    tokens = clip_jax.tokenize(["a photo"])
    logits = [np.asarray(clip_jax.clip_logits(tiny, x, tokens)[0]) for x in (loaded, loaded.pixels)]
    np.testing.assert_array_equal(*logits)
