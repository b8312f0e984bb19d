"""Start-up time: process start to first logits, ViT-B/32 on the CPU, cold and with the persistent
compilation cache (clip_jax.compilation.enable_compilation_cache), beside open_clip in the same run.

Each measurement is a fresh Python process timed from before its interpreter starts, so imports count.
    python -m benchmarks.startup [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OURS = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[3])
import clip_jax
if sys.argv[2] != "-":
    from clip_jax.compilation import enable_compilation_cache
    enable_compilation_cache(sys.argv[2])
model, preprocess = clip_jax.load(sys.argv[1])
images = np.zeros((1, 224, 224, 3), np.uint8)
logits, _ = clip_jax.clip_logits(model, images, clip_jax.tokenize(["a photo of a dog", "a cat"]))
print(np.asarray(logits).shape)
"""

THEIRS = r"""
import sys, torch, open_clip
model = open_clip.create_model("ViT-B-32", pretrained=None)
model.load_state_dict(torch.load(sys.argv[1], weights_only=True))
model.eval()
with torch.inference_mode():
    image = torch.zeros(1, 3, 224, 224)
    img, txt, scale = model(image, open_clip.tokenize(["a photo of a dog", "a cat"]))
print((scale * img @ txt.T).shape)
"""


def timed(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, capture_output=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3, help="rounds (median)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    # After the path: tests.reference is found from the repository root; torch only to write the checkpoint.
    import torch

    import clip_jax
    from tests.reference import reference_model

    with tempfile.TemporaryDirectory() as d:
        pt = Path(d) / "ViT-B-32.pt"
        torch.save(reference_model("ViT-B-32").state_dict(), pt)
        converted = clip_jax.convert(pt)
        cache = Path(d) / "xla"
        rows = {
            "open_clip (torch.load + first logits)": lambda: timed(["-c", THEIRS, str(pt)]),
            "clip_jax cold (no compilation cache)": lambda: timed(["-c", OURS, str(converted), "-", str(ROOT)]),
        }
        timed(["-c", OURS, str(converted), str(cache), str(ROOT)])  # fills the cache
        rows["clip_jax warm (persistent cache)"] = lambda: timed(["-c", OURS, str(converted), str(cache), str(ROOT)])
        # Rounds alternate the three (each round in the other order than the last), and each figure is the
        # median over rounds: the same statistic as benchmarks/models.py, fair on a shared machine.
        times: dict[str, list[float]] = {name: [] for name in rows}
        for r in range(args.repeat):
            for name in list(rows) if r % 2 == 0 else list(rows)[::-1]:
                times[name].append(rows[name]())
        results = {name: statistics.median(ts) for name, ts in times.items()}
        base = results["open_clip (torch.load + first logits)"]
        print(f"{'':40s} {'median s':>8s} {'/ open_clip':>11s}")
        for name, t in results.items():
            print(f"{name:40s} {t:8.2f} {t / base:11.2f}")


if __name__ == "__main__":
    main()
