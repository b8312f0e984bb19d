"""SigLIP's preprocessing against its references, on real photographs.

References (what a SigLIP checkpoint's users run):
- transformers: `AutoImageProcessor.from_pretrained(folder)` on google/siglip-base-patch16-224's saved
  preprocessor_config.json, which transformers 5 answers with `SiglipImageProcessor`, its torchvision
  backend (`processor="transformers"`); and the PIL backend, `backend="pil"` (transformers 4's default,
  `processor="transformers_pil"`). "resample" 3 (bicubic) as SigLIP's configs, and 2 (bilinear) too.
- open_clip: the eval transform `create_model_and_transforms("ViT-B-16-SigLIP", pretrained="webli")` returns,
  `image_transform_v2(PreprocessCfg(...webli's preprocess cfg...), is_train=False)` (squash, bicubic, 0.5).

Tolerance: 0. Each path does the reference's integer resize (the same sums on the same weights) and then
its float32 normalization operations in its order, each a correctly rounded IEEE operation (or a table of
them: `pixel_table`), so every number must be equal; the device path's table lookup too. The device's
multiply-add (accelerators) is bounded separately, in ulps.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, reject, settings, strategies as st
from PIL import Image

from clip_jax.errors import InputError
from clip_jax.image import (
    AFFINE_ULPS_OPENAI,
    ImageError,
    image_transform,
    normalize_pixels,
    pixel_affine,
    pixel_table,
    transform_for,
)
from clip_jax.image_hf import torch_resize
from tests.images import in_mode, photos

HALF = (0.5, 0.5, 0.5)
SIZES = (224, 256, 384, 512)
MODES = ["L", "LA", "RGBA", "P", "P+trns", "1", "CMYK", "I;16"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """name -> file: the sample photographs as PNG and JPEG, one in each of MODES, a 1x1, a very wide one
    and a tall thin one."""
    d = tmp_path_factory.mktemp("photos")
    pics = photos()
    if not pics:
        pytest.skip("no sample photographs (scikit-image / matplotlib)")
    out = {}
    for i, (name, im) in enumerate(sorted(pics.items())):
        fmt = ("PNG", "JPEG")[i % 2]
        out[name] = str(d / f"{name}.{fmt.lower()}")
        im.save(out[name], fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    coffee = pics.get("coffee", next(iter(pics.values())))
    for mode in MODES:
        data, fmt = in_mode(coffee.resize((300, 200)), mode)
        out[mode] = str(d / f"mode_{mode.replace(';', '_').replace('+', '_')}.{fmt.lower()}")
        with open(out[mode], "wb") as f:
            f.write(data)
    extra = {"1x1": Image.new("RGB", (1, 1), (200, 30, 90)), "wide": coffee.resize((3000, 17)),
             "tall": coffee.resize((5, 700))}
    for name, im in extra.items():
        out[name] = str(d / f"{name}.png")
        im.save(out[name])
    return out


def _hf_folder(tmp_path_factory, n: int, resample: int) -> str:
    """google/siglip-base-patch16-224's preprocessor_config.json, at size n."""
    d = tmp_path_factory.mktemp(f"hf{n}_{resample}")
    cfg = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": list(HALF),
           "image_std": list(HALF), "image_processor_type": "SiglipImageProcessor",
           "processor_class": "SiglipProcessor", "resample": resample,
           "rescale_factor": 0.00392156862745098, "size": {"height": n, "width": n}}
    (d / "preprocessor_config.json").write_text(json.dumps(cfg))
    return str(d)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """(n, resample, backend) -> transformers' processor for that config; its pixel_values as NHWC numpy."""
    pytest.importorskip("torchvision")
    transformers = pytest.importorskip("transformers")
    cache = {}

    def get(n: int, resample: int = 3, backend: str | None = None):
        if (n, resample, backend) not in cache:
            kw = {"backend": backend} if backend else {}
            folder = _hf_folder(tmp_path_factory, n, resample)
            cache[n, resample, backend] = transformers.AutoImageProcessor.from_pretrained(folder, **kw)
        proc = cache[n, resample, backend]

        def run(path: str) -> np.ndarray:
            with Image.open(path) as im:
                return proc(images=im, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)

        return proc, run

    return get


def _siglip_config(n: int, processor: str, interpolation: str = "bicubic"):
    """The fields transform_for reads, as SiglipConfig carries them."""
    return SimpleNamespace(vision=SimpleNamespace(image_size=n), image_mean=HALF, image_std=HALF,
                           resize_mode="squash", interpolation=interpolation, image_processor=processor)


def _assert_exact(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == np.float32, what
    assert np.array_equal(ours, ref), f"{what}: max |diff| {np.abs(ours - ref).max()}"


def test_autoimageprocessor_is_the_torchvision_backend(hf):
    proc, _ = hf(224)
    assert type(proc).__name__ == "SiglipImageProcessor" and proc.backend == "torchvision"
    assert hf(224, backend="pil")[0].backend == "pil"


@pytest.mark.parametrize("n", SIZES)
def test_transformers_exact(hf, files, n):
    """Every photograph and mode at every size: bit-equal to AutoImageProcessor's pixel_values, on the host
    path and on the uint8 path normalized as the device does on the CPU."""
    import jax

    _, run = hf(n)
    preprocess = transform_for(_siglip_config(n, "transformers"))
    norm = jax.jit(lambda p: normalize_pixels(p, HALF, HALF, exact=True, processor="transformers"))
    for name, path in files.items():
        ref = run(path)
        _assert_exact(preprocess(path), ref, f"{name} at {n}")
        _assert_exact(np.asarray(norm(preprocess.pixels(path))), ref, f"{name} at {n}, device path")


@pytest.mark.parametrize("n", (224, 384))
def test_transformers_pil_backend_exact(hf, files, n):
    _, run = hf(n, backend="pil")
    preprocess = transform_for(_siglip_config(n, "transformers_pil"))
    for name, path in files.items():
        _assert_exact(preprocess(path), run(path), f"{name} at {n}")


def test_transformers_bilinear_exact(hf, files):
    """resample 2 (bilinear), in case a checkpoint's config asks for it: both backends exact too."""
    for backend, processor in ((None, "transformers"), ("pil", "transformers_pil")):
        _, run = hf(224, resample=2, backend=backend)
        preprocess = transform_for(_siglip_config(224, processor, "bilinear"))
        for name, path in files.items():
            _assert_exact(preprocess(path), run(path), f"{name}, {processor}")


def test_the_two_transformers_backends_differ(hf, files):
    """What picking the wrong backend costs: torch's int16 weights against Pillow's 22-bit ones move a few
    pixels in a thousand by 1-2 levels (2 / 127.5 = 0.0157 after normalization)."""
    _, fast = hf(384)
    _, slow = hf(384, backend="pil")
    diffs = [np.abs(fast(files[k]) - slow(files[k])) for k in ("astronaut", "coffee") if k in files]
    assert max(d.max() for d in diffs) > 0.007  # at least a level somewhere: the two must not be confused
    assert max(d.max() for d in diffs) <= 2 / 127.5 + 1e-6
    assert max((d > 1e-6).mean() for d in diffs) < 0.02


@pytest.mark.parametrize("n", SIZES)
def test_open_clip_exact(files, n):
    """open_clip's eval transform of ViT-B-16-SigLIP(-n) with webli's preprocess cfg (squash, bicubic, 0.5)."""
    open_clip = pytest.importorskip("open_clip")
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = open_clip.get_pretrained_cfg("ViT-B-16-SigLIP" + ("" if n == 224 else f"-{n}"), "webli")
    keys = ("mean", "std", "interpolation", "resize_mode")
    assert (tuple(cfg["mean"]), cfg["interpolation"], cfg["resize_mode"]) == (HALF, "bicubic", "squash")
    ref_tf = image_transform_v2(PreprocessCfg(size=n, **{k: cfg[k] for k in keys}), is_train=False)
    preprocess = transform_for(_siglip_config(n, "open_clip"))
    for name, path in files.items():
        with Image.open(path) as im:
            ref = ref_tf(im).numpy().transpose(1, 2, 0)
        _assert_exact(preprocess(path), ref, f"{name} at {n}")


@pytest.mark.parametrize("processor", ["open_clip", "transformers", "transformers_pil"])
def test_device_normalization_bounds(processor):
    """The table (CPU) equals the host path for every level; the multiply-add (accelerators) is within
    AFFINE_ULPS_OPENAI ulp of it for SigLIP's 0.5, with the product rounded or fused."""
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    table = pixel_table(HALF, HALF, processor)
    host = image_transform(4, HALF, HALF, "squash", processor=processor).normalize(levels[None])[0]
    assert np.array_equal(np.asarray(normalize_pixels(levels, HALF, HALF, exact=True, processor=processor)), table)
    assert np.array_equal(host, table)
    scale, shift = pixel_affine(HALF, HALF)
    x = np.arange(256, dtype=np.float64)[:, None]
    rounded = ((x * scale).astype(np.float32) + shift).astype(np.float32)
    fused = (x * scale.astype(np.float64) + shift.astype(np.float64)).astype(np.float32)
    ulp = np.spacing(np.float32(np.abs(table).max()))
    for approx in (rounded, fused):
        assert np.abs(approx - table).max() <= AFFINE_ULPS_OPENAI * ulp


def test_clip_configs_keep_open_clip(tiny):
    """A config without image_processor (CLIPConfig) keeps the open_clip pipeline, default arguments too."""
    assert transform_for(tiny.config).processor == "open_clip"
    assert image_transform(224).processor == "open_clip"
    assert "processor" not in repr(image_transform(224))
    assert image_transform(224, resize_mode="squash", processor="transformers") != image_transform(
        224, resize_mode="squash")


def test_bad_processor_arguments():
    with pytest.raises(InputError, match="processor must be one of"):
        image_transform(224, resize_mode="squash", processor="torchvision")
    with pytest.raises(InputError, match="squash"):
        image_transform(224, processor="transformers")  # transformers' SigLIP processor never crops
    with pytest.raises(InputError, match="processor must be one of"):
        pixel_table(HALF, HALF, "tf")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(h=st.integers(1, 48), w=st.integers(1, 48), n=st.integers(1, 64), seed=st.integers(0, 2**32 - 1),
       interpolation=st.sampled_from(["bicubic", "bilinear"]))
def test_torch_resize_equals_torch_on_any_shape(h, w, n, seed, interpolation):
    """Any up/down factor, either axis alone or both, down to 1 pixel: noise is the hardest content for
    rounding (every weight and every clip at 0 and 255 counts)."""
    torch = pytest.importorskip("torch")
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mode = {"bicubic": tvf.InterpolationMode.BICUBIC, "bilinear": tvf.InterpolationMode.BILINEAR}[interpolation]
    try:
        ref = tvf.resize(torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous(), [n, n], interpolation=mode,
                         antialias=True)[0].permute(1, 2, 0).numpy()
    except RuntimeError:  # torch's AVX kernel asserts on a few tiny shapes (2x1 -> 1x1): no reference there
        reject()
    assert np.array_equal(torch_resize(pixels, n, interpolation), ref)


def test_bad_files_raise_image_error_on_the_transformers_path(tmp_path, files):
    """Decoding is shared with the open_clip path: a truncated or foreign file is the same ImageError."""
    preprocess = image_transform(224, HALF, HALF, "squash", processor="transformers")
    data = open(files["astronaut"], "rb").read()
    for name, content in (("cut.png", data[: len(data) // 3]), ("text.png", b"not an image"), ("empty.png", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageError) as e:
            preprocess.pixels(tmp_path / name)
        assert e.value.source == str(tmp_path / name)
    with pytest.raises(InputError, match="uint8"):
        torch_resize(np.zeros((4, 4, 3), np.float32), 2)
