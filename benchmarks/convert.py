"""Conversion speed and memory: `python -m convert` beside `torch.jit.load(f).state_dict()`.

Writes a full-size ViT-B/32 TorchScript archive in OpenAI's release form (traced, fp16 mix, extra keys;
about the size of OpenAI's ViT-B-32.pt) with random weights, then times, each in a fresh process:
  - torch:    torch.jit.load(f).state_dict()           (what `clip.load(jit=False)` starts with)
  - clip_jax: read + convert + write the .safetensors  (python -m convert)
  - clip_jax: read + convert only, in memory            (what `clip_jax.load(path.pt)` does)
Peak RSS is the process's high-water mark (reset after imports) minus its RSS after imports, so library import costs
(torch ~0.4 GB, jax ~0.2 GB) don't hide the working memory. Usage: python benchmarks/convert.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import os, sys, time
mode, path, out = sys.argv[1:4]
def status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field)) / 1024
if mode == "torch":
    import torch
else:
    sys.path.insert(0, os.environ["ROOT"])
    import clip_jax.checkpoint as ck
    from clip_jax.checkpoint.torch_names import expected_params
    from clip_jax.config import PRESETS
    expected_params(PRESETS["RN50"])  # warm flax/jax tracing machinery, as an import cost
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark (VmHWM) so import-time peaks don't count
base = status_mb("VmRSS")
t = time.perf_counter()
if mode == "torch":
    sd = torch.jit.load(path, map_location="cpu").state_dict()
    n = len(sd)
elif mode == "convert":
    ck.convert(path, out)
    n = 0
else:
    config, params = ck.read_params(path)
    n = len(params)
dt = time.perf_counter() - t
peak = status_mb("VmHWM")
print(f"{dt:.3f} {peak - base:.1f} {n}")
"""


def write_archive(path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    # here: the PyTorch reference writes the archive; each timed run is a child importing what it measures
    from tests.reference import reference_model, save_torchscript

    model = reference_model("ViT-B-32")
    save_torchscript(model, path)


def run(mode: str, src: Path, out: Path) -> tuple[float, float]:
    env = {**os.environ, "ROOT": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(out)], env=env, capture_output=True,
                         text=True, check=True)
    dt, mem, _ = res.stdout.split()
    return float(dt), float(mem)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "ViT-B-32.pt", Path(d) / "ViT-B-32.safetensors"
        write_archive(src)
        size = src.stat().st_size / 2**20
        print(f"archive: {size:.0f} MB (traced TorchScript, OpenAI fp16 mix)")
        results = {}
        for mode in ("torch", "convert", "read"):
            runs = [run(mode, src, out) for _ in range(args.repeat)]
            results[mode] = (min(r[0] for r in runs), max(r[1] for r in runs))
        t_torch, m_torch = results["torch"]
        print(f"{'':34s} {'best s':>8s} {'peak MB':>8s} {'x file':>7s} {'time / torch':>12s}")
        labels = {"torch": "torch.jit.load().state_dict()", "convert": "clip_jax convert (read+write)",
                  "read": "clip_jax read + convert in memory"}
        for mode, (t, m) in results.items():
            print(f"{labels[mode]:34s} {t:8.3f} {m:8.0f} {m / size:7.2f} {t / t_torch:12.2f}")
        print(f"converted file: {out.stat().st_size / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
