"""Loading a transformers folder: `clip_jax.load(folder)` beside
`transformers.CLIPModel.from_pretrained(folder)`.

Writes a full-size ViT-B/32-shaped transformers checkpoint (a random-init `CLIPModel` with
openai/clip-vit-base-patch32's config, float32 model.safetensors, about 577 MB) with save_pretrained, then
times each load in a fresh process, the two alternating round by round; the figures are medians over the
rounds, for the load alone and for the load followed by one read of every weight (transformers maps
model.safetensors and may not have read it when from_pretrained returns):
  - transformers: CLIPModel.from_pretrained(folder).eval()            (torch)
  - clip_jax:     clip_jax.load(folder), every parameter on the device (block_until_ready)
Imports are not timed: each process imports its library and touches what the load will use (transformers' lazy
CLIPModel, jax's CPU backend and Flax's module machinery on a small model) before the clock starts. Peak RSS
is the process's high-water mark (reset after imports) minus its RSS after imports, as in
benchmarks/convert.py, so torch's and jax's import footprints don't hide the working memory. Usage: python -m
benchmarks.hf_load [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import os, sys, time
mode, folder = sys.argv[1:3]
def status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field)) / 1024
if mode == "transformers":
    import torch, transformers
    CLIPModel = transformers.CLIPModel  # transformers imports its model modules lazily: an import cost
else:
    sys.path.insert(0, os.environ["ROOT"])
    import jax, clip_jax, numpy as np
    from flax import nnx
    jax.block_until_ready(nnx.state(clip_jax.build(clip_jax.CLIPConfig(  # warm the backend and Flax, as imports
        embed_dim=32, vision=clip_jax.VisionConfig(image_size=32, layers=1, width=64, patch_size=16),
        text=clip_jax.TextConfig(width=64, heads=1, layers=1)))))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark (VmHWM) so import-time peaks don't count
base = status_mb("VmRSS")
t = time.perf_counter()
if mode == "transformers":
    model = CLIPModel.from_pretrained(folder).eval()
    n = sum(p.numel() for p in model.parameters())
else:
    model, _ = clip_jax.load(folder)
    state = jax.block_until_ready(nnx.state(model, nnx.Param))
    n = sum(x.size for x in jax.tree.leaves(state))
dt = time.perf_counter() - t
peak = status_mb("VmHWM")
# Then read every weight once (a sum over each): what a first forward pass does. transformers maps
# model.safetensors and reads it as it is used, so its load alone need not have read the file.
if mode == "transformers":
    with torch.no_grad():
        for p in model.parameters():
            p.sum()
else:
    for x in jax.tree.leaves(state):
        np.asarray(x).sum()
dt2 = time.perf_counter() - t
peak2 = status_mb("VmHWM")
print(f"{dt:.3f} {peak - base:.1f} {dt2:.3f} {peak2 - base:.1f} {n}")
"""

MODES = {"transformers": "transformers CLIPModel.from_pretrained", "clip_jax": "clip_jax.load(folder)"}


def write_folder(folder: Path) -> None:
    # here: torch and transformers write the checkpoint; each timed run is a child importing what it measures
    import torch
    import transformers

    torch.manual_seed(0)
    # openai/clip-vit-base-patch32's config.json, sizes and all (quick_gelu, eos_token_id 2).
    cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12,
                         max_position_embeddings=77, vocab_size=49408),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                           image_size=224, patch_size=32),
        projection_dim=512)
    transformers.CLIPModel(cfg).save_pretrained(folder)


def run(mode: str, folder: Path) -> tuple[float, float, float, float, int]:
    env = {**os.environ, "ROOT": str(ROOT), "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder)], env=env, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{mode} failed:\n{res.stderr[-4000:]}")
    *figures, n = res.stdout.split()[-5:]
    return (*map(float, figures), int(n))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5, help="rounds (median); each round runs both, alternating")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "clip-vit-base-patch32"
        write_folder(folder)
        size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        print(f"folder: {size:.0f} MB (config.json + float32 model.safetensors, ViT-B/32 shapes)")
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        runs: dict[str, list] = {m: [] for m in MODES}
        for i in range(args.repeat):
            order = list(MODES) if i % 2 == 0 else list(MODES)[::-1]
            for mode in order:
                runs[mode].append(run(mode, folder))
        counts = {runs[m][0][4] for m in MODES}
        if len(counts) != 1:
            raise RuntimeError(f"the two loads hold different parameter counts: {counts}")
        print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{args.repeat} rounds, median; {counts.pop() / 1e6:.1f} M parameters each")
        for k, what in ((0, "load"), (2, "load, then read every weight once")):
            med = {m: (statistics.median(r[k] for r in runs[m]), statistics.median(r[k + 1] for r in runs[m]))
                   for m in MODES}
            t_ref, m_ref = med["transformers"]
            print(f"\n{what + ':':40s} {'s':>7s} {'peak MB':>8s} {'x file':>7s} {'time / tf':>10s} {'peak / tf':>10s}")
            for mode, label in MODES.items():
                t, m = med[mode]
                print(f"{label:40s} {t:7.3f} {m:8.0f} {m / size:7.2f} {t / t_ref:10.2f} {m / m_ref:10.2f}")
            for mode, label in MODES.items():
                print(f"  {label} times: {' '.join(f'{r[k]:.2f}' for r in runs[mode])}")


if __name__ == "__main__":
    main()
