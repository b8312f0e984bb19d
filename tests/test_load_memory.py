"""clip_jax.load holds each weight once: the model's arrays, plus at most about one tensor being read.

A ~55 MB float32 checkpoint (no tensor over 3 MB) is written in each format load reads from safetensors or
a torch zip (each read a tensor at a time from its place in the file); a fresh interpreter (jax and
clip_jax imported, its backend warmed) loads it and reports its peak resident memory over what it held
before the load (VmHWM reset through /proc/self/clear_refs, as benchmarks/hf_load.py does). The eager
path (every tensor read, then the model built from them) is measured the same way, so the measurement is
known to see a second copy when there is one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clip_jax.checkpoint import store, to_torch_state_dict
from clip_jax.checkpoint.hf_format import write_folder
from clip_jax.checkpoint.torch_names import expected_params
from clip_jax.checkpoint.torch_writer import write_safetensors, write_torch_zip
from clip_jax.config import CLIPConfig, TextConfig, VisionConfig
from tests.conftest import once

REPO = Path(__file__).resolve().parents[1]
# Peak extra memory / file size. Measured at this file's size (where fixed overheads weigh more than at
# ViT-B/32's 1.00-1.03x): 1.09x for the converted file, 1.12x for the folder and open_clip's .safetensors,
# 1.14x for the torch zip (read a storage at a time, its CRC-32s checked beside through a 1 MiB buffer).
# A second copy shows as 1.6x or more (test_the_measurement_sees_a_second_copy).
LIMIT = 1.25

CHILD = r"""
import json, sys, warnings
import jax, numpy as np
import clip_jax
from clip_jax.checkpoint import store
from flax import nnx
warnings.simplefilter("ignore")  # the .pt's config is inferred (QuickGELU assumed, with a warning)
jax.block_until_ready(nnx.state(clip_jax.build(clip_jax.CLIPConfig(  # the backend and Flax, before measuring
    embed_dim=32, vision=clip_jax.VisionConfig(image_size=32, layers=1, width=64, patch_size=16),
    text=clip_jax.TextConfig(width=64, heads=1, layers=1)))))
def status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field)) / 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status_mb("VmRSS")
how, path = sys.argv[1:3]
if how == "load":
    model, _ = clip_jax.load(path)
else:  # every tensor in memory first, then the model: two copies at the end
    config, params = store.load(path)
    model = clip_jax.build(config, params)
state = jax.block_until_ready(nnx.state(model, nnx.Param))
print(json.dumps({"peak_mb": status_mb("VmHWM") - base,
                  "sums": sorted(float(np.asarray(x, np.float64).sum()) for x in jax.tree.leaves(state))}))
"""


def _config() -> CLIPConfig:
    return CLIPConfig(embed_dim=256, vision=VisionConfig(image_size=64, patch_size=16, width=384, layers=6),
                      text=TextConfig(vocab_size=1000, width=256, heads=4, layers=4))


NAMES = {"converted": "converted.safetensors", "open_clip": "open_clip.safetensors", "torch zip": "state_dict.pt",
         "transformers": "transformers"}


def write_files(d: Path) -> None:
    """The same random weights as a converted file, a transformers folder, an open_clip .safetensors and a
    torch.save zip in `d`, and the sums of the weights (sums.json)."""
    config = _config()
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(shape, np.float32) * 0.02 for k, shape in expected_params(config).items()}
    store.save(d / NAMES["converted"], params, config)
    torch_sd = {k: np.ascontiguousarray(v) for k, v in to_torch_state_dict(params).items()}
    write_safetensors(d / NAMES["open_clip"], torch_sd)
    write_torch_zip(d / NAMES["torch zip"], torch_sd)
    write_folder(d / NAMES["transformers"], params, config, "clip", True)
    (d / "sums.json").write_text(json.dumps(sorted(float(np.asarray(v, np.float64).sum()) for v in params.values())))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """write_files' paths by format and "sums", written once a run for every xdist worker."""
    d = once(tmp_path_factory, "load_memory", write_files)
    return {**{fmt: d / name for fmt, name in NAMES.items()}, "sums": json.loads((d / "sums.json").read_text())}


def _measure(how: str, path: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, how, str(path)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in (path.iterdir() if path.is_dir() else [path])) / 2**20


@pytest.mark.parametrize("fmt", ["converted", "transformers", "open_clip", "torch zip"])
def test_load_holds_each_weight_once(files, fmt):
    size = _size_mb(files[fmt])
    assert size > 30
    got = _measure("load", files[fmt])
    assert got["peak_mb"] < LIMIT * size, f"{fmt}: peak {got['peak_mb']:.0f} MB for a {size:.0f} MB file"
    assert got["sums"] == files["sums"]  # every weight as written, read once, laid out as clip_jax's


def test_the_measurement_sees_a_second_copy(files):
    """Reading every tensor before building (two copies at the end) peaks well above the limit: a load
    that held the weights twice would fail the test above."""
    size = _size_mb(files["converted"])
    got = _measure("eager", files["converted"])
    assert got["peak_mb"] > 1.6 * size
    assert got["sums"] == files["sums"]
