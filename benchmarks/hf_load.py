"""Loading a checkpoint: `clip_jax.load` of a transformers folder, of the converted clip_jax
.safetensors and of a torch.save .pt, beside `transformers.CLIPModel.from_pretrained(folder)`.

Writes a full-size ViT-B/32-shaped transformers checkpoint (a random-init `CLIPModel` with
openai/clip-vit-base-patch32's config, float32 model.safetensors, about 577 MB) with save_pretrained, the
same weights as a converted clip_jax file (clip_jax.convert) and as a torch.save zip of the OpenAI-named
state dict (about 578 MB each), then times each load in a fresh process, all of them in turn round by round
(the order reversed every other round); the figures are medians over the rounds, for the load alone and for
the load followed by one read of every weight (transformers maps model.safetensors and may not have read it
when from_pretrained returns):
  - transformers:  CLIPModel.from_pretrained(folder).eval()            (torch)
  - clip_jax:      clip_jax.load(folder | .safetensors | .pt), every parameter on the device (block_until_ready)
"x file" divides the peak by the size of the file that load read (the folder's for the folder).
Imports are not timed: each process imports its library and touches what the load will use (transformers' lazy
CLIPModel; jax's CPU backend, Flax's module machinery on a small model and clip_jax's lazy `load`, whose first
touch imports clip_jax.hub and huggingface_hub) before the clock starts. Peak RSS
is the process's high-water mark (reset after imports) minus its RSS after imports, as in
benchmarks/convert.py, so torch's and jax's import footprints don't hide the working memory. Usage: python -m
benchmarks.hf_load [--repeat 5] [--root CHECKOUT] [--before CHECKOUT] (--root: time another checkout's clip_jax,
e.g. an older commit exported with `git archive`, on the same files; --before: a second checkout, its loads
alternating with --root's in the same rounds, so a before/after comparison sees the same machine load)
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
    clip_jax.load  # a lazy attribute: imports clip_jax.hub (huggingface_hub, ...), as CLIPModel above
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark (VmHWM) so import-time peaks don't count
base = status_mb("VmRSS")
t = time.perf_counter()
if mode == "transformers":
    model = CLIPModel.from_pretrained(folder).eval()
    n = sum(p.numel() for p in model.parameters())
else:
    import warnings
    warnings.simplefilter("ignore")  # the .pt has no config beside it: QuickGELU is inferred, as it is
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

# mode -> (what is timed, the file it reads relative to the folder's parent)
MODES = {"transformers": ("transformers CLIPModel.from_pretrained", "clip-vit-base-patch32"),
         "clip_jax": ("clip_jax.load(folder)", "clip-vit-base-patch32"),
         "clip_jax.safetensors": ("clip_jax.load(converted .safetensors)", "converted.safetensors"),
         "clip_jax.pt": ("clip_jax.load(torch.save .pt)", "state_dict.pt")}


def write_folder(folder: Path) -> None:
    # here: torch and transformers write the checkpoint; each timed run is a child importing what it measures
    import numpy as np
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
    sys.path.insert(0, str(ROOT))
    import clip_jax.checkpoint as ckpt

    converted = ckpt.convert(folder, folder.parent / "converted.safetensors")
    _, params = ckpt.store.load(converted)
    # contiguous, as torch.save writes a model's own state dict
    state_dict = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ckpt.to_torch_state_dict(params).items()}
    torch.save(state_dict, folder.parent / "state_dict.pt")


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in (path.iterdir() if path.is_dir() else [path])) / 2**20


def run(mode: str, path: Path, root: Path) -> tuple[float, float, float, float, int]:
    env = {**os.environ, "ROOT": str(root), "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    which = "transformers" if mode == "transformers" else "clip_jax"
    res = subprocess.run([sys.executable, "-c", CHILD, which, str(path)], env=env, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{mode} failed:\n{res.stderr[-4000:]}")
    *figures, n = res.stdout.split()[-5:]
    return (*map(float, figures), int(n))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5, help="rounds (median); each round runs every load in turn")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose clip_jax is timed (default: this one)")
    ap.add_argument("--before", type=Path, help="another checkout, timed in the same rounds (e.g. a git worktree of "
                                                "an older commit): its clip_jax loads, alternating with --root's")
    ap.add_argument("--files", type=Path, help="keep the checkpoints in this folder (written once, then reused)")
    args = ap.parse_args()
    roots = {"": args.root, **({"before: ": args.before} if args.before else {})}
    cases = [(m, tag) for m in MODES for tag in (roots if m != "transformers" else [""])]
    with tempfile.TemporaryDirectory() as tmp:
        d = args.files or tmp
        folder = Path(d) / "clip-vit-base-patch32"
        if not folder.is_dir():
            write_folder(folder)
        sizes = {m: size_mb(Path(d) / name) for m, (_, name) in MODES.items()}
        print(f"folder: {sizes['clip_jax']:.0f} MB (config.json + float32 model.safetensors, ViT-B/32 shapes); "
              f"converted .safetensors {sizes['clip_jax.safetensors']:.0f} MB; .pt {sizes['clip_jax.pt']:.0f} MB")
        print("clip_jax from " + ", ".join(f"{tag or 'after: '}{root}" for tag, root in roots.items()))
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        runs: dict[tuple, list] = {c: [] for c in cases}
        for i in range(args.repeat):
            for mode, tag in cases if i % 2 == 0 else cases[::-1]:
                runs[mode, tag].append(run(mode, Path(d) / MODES[mode][1], roots[tag]))
        counts = {r[0][4] for r in runs.values()}
        if len(counts) != 1:
            raise RuntimeError(f"the loads hold different parameter counts: {counts}")
        print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{args.repeat} rounds, median; {counts.pop() / 1e6:.1f} M parameters each")
        for k, what in ((0, "load"), (2, "load, then read every weight once")):
            _report(k, what, runs, sizes)


def _report(k: int, what: str, runs: dict[tuple, list], sizes: dict[str, float]) -> None:
    med = {c: (statistics.median(r[k] for r in rs), statistics.median(r[k + 1] for r in rs)) for c, rs in runs.items()}
    t_ref, m_ref = med["transformers", ""]
    print(f"\n{what + ':':48s} {'s':>7s} {'peak MB':>8s} {'x file':>7s} {'time / tf':>10s} {'peak / tf':>10s}")
    for (mode, tag), (t, m) in med.items():
        label = tag + MODES[mode][0]
        print(f"{label:48s} {t:7.3f} {m:8.0f} {m / sizes[mode]:7.2f} {t / t_ref:10.2f} {m / m_ref:10.2f}")
    for (mode, tag), rs in runs.items():
        print(f"  {tag + MODES[mode][0]} times: {' '.join(f'{r[k]:.2f}' for r in rs)}")


if __name__ == "__main__":
    main()
