"""SigLIP B/16 on the CPU: the public calls beside transformers and open_clip, then loading and converting.

One full-size SigLIP B/16 (224 px, google/siglip-base-patch16-224's config, random weights) written by
transformers' `SiglipModel.save_pretrained` into a temporary folder and read back by `clip_jax.load(folder)`.

Towers (`--part towers`): on the same inputs, in the same process, alternating rounds (median):
  - clip_jax:      `model.encode_image` (float [N, 224, 224, 3], a device array), `model.encode_text`
                   ([N, 64] numpy int32 tokens), `clip_jax.clip_logits(model, images, tokens)`
  - transformers:  `SiglipModel.get_image_features` / `get_text_features` (input_ids only) / `SiglipModel(...)`
                   (torch float32, torch.no_grad)
  - open_clip:     `create_model("ViT-B-16-SigLIP")`'s `encode_image` / `encode_text` / forward + the sigmoid
                   logits, holding the same weights (`clip_jax.export(model, "x.safetensors")`)
image and text at batch 1 and 32, the logits at batch 1 (`--logits-batch`), after a warm-up call of each
(compilation for clip_jax); the first row of each call prints how far the references' outputs are from
clip_jax's (transformers': the same function; open_clip's timm trunk: exact GELU where the config says
tanh's, about 1e-3 on features). Both libraries get the same
cores: the process is pinned to `--threads` cores (default: all it may use) before jax and torch start, so
XLA's thread pool sizes itself to them, and torch.set_num_threads gets the same number.

Loads (`--part load`), each in a fresh process after its imports, rounds alternating (median), peak RSS
as in benchmarks/hf_load.py (whose child process this reuses: high-water mark after imports):
  - transformers:  SiglipModel.from_pretrained(folder) (+ a read of every weight)      the reference
  - clip_jax:      clip_jax.load(folder), clip_jax.load(x.npz) (+ a read of every weight), every parameter
                   on the device; the .npz is big_vision's layout, written by clip_jax.export(model, "x.npz")
  - clip_jax:      clip_jax.convert(folder | x.npz, out.safetensors)   (benchmarks/convert.py's child)

With 3 rounds the run took 13 minutes on the shared 2-core machine at a load average of 7-9 (towers 9, of
which the batch-32 image row 5; loads 4); the default 2 rounds (their median is their mean) cut a quarter
of that, by estimate. `--repeat 5` for figures to quote; `--part`, `--batch`, `--calls` to take less.

    python -m benchmarks.siglip                          # both parts, 2 rounds
    python -m benchmarks.siglip --part towers --batch 1 --repeat 1
    python -m benchmarks.siglip --part load --repeat 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OPEN_CLIP_NAME = "ViT-B-16-SigLIP"
CALLS = ("image", "text", "logits")
CONTEXT = 64  # google/siglip-base-patch16-224's max_position_embeddings: tokens are always padded to it


def _pin(threads: int | None) -> int:
    """Pin this process (and the children it starts) to `threads` of its cores, before jax and torch
    start, so that XLA's thread pool and torch's intra-op threads see the same count. -> the count."""
    cores = sorted(os.sched_getaffinity(0))
    n = min(threads or len(cores), len(cores))
    os.sched_setaffinity(0, cores[:n])
    return n


def _machine(n: int) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return f"{cpu}, {os.cpu_count()} cores on the machine, {n} used by each library ({platform.machine()})"


def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def write_folder(folder: Path) -> None:
    """A random-init transformers SiglipModel with google/siglip-base-patch16-224's sizes, save_pretrained."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # its default bos/eos ids lie outside SigLIP's vocabulary
    torch.manual_seed(0)
    config = transformers.SiglipConfig(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                         max_position_embeddings=CONTEXT, vocab_size=32000, hidden_act="gelu_pytorch_tanh",
                         layer_norm_eps=1e-6),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                           image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6))
    transformers.SiglipModel(config).save_pretrained(folder)


# ---------------------------------------------------------------------------------------------- towers


def _references(folder: Path, model, tmp: Path):
    """transformers' SiglipModel from the folder and open_clip's ViT-B-16-SigLIP holding the same weights
    (clip_jax's export to open_clip's state dict, loaded strictly). -> (hf, oc)."""
    import open_clip
    import transformers
    from safetensors.torch import load_file

    import clip_jax

    hf = transformers.SiglipModel.from_pretrained(folder).eval()
    oc = open_clip.create_model(OPEN_CLIP_NAME, pretrained=None).eval()
    with warnings.catch_warnings():  # "open_clip can't build this SigLIP" (its trunk's exact GELU): known
        warnings.simplefilter("ignore")
        path = clip_jax.export(model, tmp / "open_clip.safetensors")
    oc.load_state_dict(load_file(str(path)), strict=True)
    path.unlink()
    return hf, oc


def _contenders(kind: str, model, hf, oc, images: np.ndarray, tokens: np.ndarray) -> dict:
    """The three calls of one row, as zero-argument functions on inputs already placed."""
    import jax
    import torch

    import clip_jax

    x = jax.device_put(images)
    px = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    ids = torch.from_numpy(tokens).long()
    if kind == "image":
        return {"clip_jax": lambda: model.encode_image(x), "transformers": lambda: hf.get_image_features(px),
                "open_clip": lambda: oc.encode_image(px)}
    if kind == "text":
        return {"clip_jax": lambda: model.encode_text(tokens),
                "transformers": lambda: hf.get_text_features(input_ids=ids), "open_clip": lambda: oc.encode_text(ids)}

    def oc_logits():
        image, text, scale, bias = oc(px, ids)
        return scale * image @ text.T + bias

    return {"clip_jax": lambda: clip_jax.clip_logits(model, x, tokens),
            "transformers": lambda: hf(input_ids=ids, pixel_values=px).logits_per_image, "open_clip": oc_logits}


def _as_numpy(out) -> np.ndarray:
    """A contender's result (jax array, torch tensor, transformers output or a logits pair) as numpy."""
    out = getattr(out, "pooler_output", out)
    out = out[0] if isinstance(out, tuple) else out
    return out.detach().numpy() if hasattr(out, "detach") else np.asarray(out)


def _agreement(contenders: dict) -> str:
    """Largest difference of each reference from clip_jax on this row's inputs (the same weights):
    that the three compute the same function. open_clip's timm trunk uses exact GELU where the
    transformers config says tanh's, so it agrees less closely."""
    ours = _as_numpy(contenders["clip_jax"]())
    diffs = [f"{name} {np.abs(_as_numpy(fn()) - ours).max():.1e}" for name, fn in contenders.items()
             if name != "clip_jax"]
    return "max |diff| from clip_jax: " + ", ".join(diffs)


def _sync(out) -> None:
    import jax

    if isinstance(out, (jax.Array, tuple)):
        jax.block_until_ready(out)  # torch on the CPU has returned when its call has


def towers(folder: Path, tmp: Path, rows: list[tuple[str, int]], rounds: int) -> None:
    """Times every (call, batch) row: ms per call of each contender (median) and clip_jax / reference.
    The first row of each call also prints how far the references' outputs are from clip_jax's."""
    import torch

    import clip_jax

    model, _ = clip_jax.load(folder)
    hf, oc = _references(folder, model, tmp)
    print(f"{'call':6s} {'batch':>5s} {'clip_jax ms':>11s} {'transformers':>12s} {'open_clip':>9s} "
          f"{'cj / tf':>8s} {'cj / oc':>8s}   (ms per call, median of {rounds}; ratio = clip_jax time / theirs)")
    seen: set[str] = set()
    with torch.no_grad():
        for kind, batch in rows:
            print(_row(kind, batch, model, hf, oc, rounds, check=kind not in seen), flush=True)
            seen.add(kind)


def _row(kind: str, batch: int, model, hf, oc, rounds: int, check: bool) -> str:
    """One row of the towers table, on random images [batch, 224, 224, 3] and tokens [batch, 64]."""
    from benchmarks.models import median_rounds

    rng = np.random.default_rng(batch)
    images = rng.standard_normal((batch, 224, 224, 3), dtype=np.float32)
    tokens = rng.integers(0, model.config.text.vocab_size, (batch, CONTEXT), dtype=np.int32)
    contenders = _contenders(kind, model, hf, oc, images, tokens)
    agreement = f"   {_agreement(contenders)}" if check else ""
    ms = {k: 1e3 * v for k, v in median_rounds(contenders, _sync, rounds, 1).items()}
    cj, tf, ocm = ms["clip_jax"], ms["transformers"], ms["open_clip"]
    return f"{kind:6s} {batch:5d} {cj:11.1f} {tf:12.1f} {ocm:9.1f} {cj / tf:8.2f} {cj / ocm:8.2f}{agreement}"


# ---------------------------------------------------------------------------------------------- loads


def _load_cases(folder: Path, npz: Path, out: Path) -> dict:
    """label -> (a function that runs it in a fresh process, the size in MB of what it reads). The load
    children are benchmarks/hf_load.py's (transformers' class swapped for SiglipModel), the convert child
    benchmarks/convert.py's, whose `convert` is clip_jax.convert."""
    from benchmarks import convert as convert_bench, hf_load

    child = hf_load.CHILD.replace("CLIPModel", "SiglipModel")
    if "SiglipModel.from_pretrained(folder)" not in child:
        raise RuntimeError("benchmarks/hf_load.py's child changed: it no longer names CLIPModel.from_pretrained")

    def load(mode: str, path: Path):
        def go():
            with mock.patch.object(hf_load, "CHILD", child):  # its clip_jax branch has no CLIPModel
                return hf_load.run(mode, path, ROOT)
        return go

    def convert(path: Path):
        def go():
            dt, peak = convert_bench.run("convert", path, out)
            return dt, peak, dt, peak, None  # as a load's figures: nothing to read after it
        return go

    folder_mb, npz_mb = hf_load.size_mb(folder), hf_load.size_mb(npz)
    return {"transformers SiglipModel.from_pretrained": (load("transformers", folder), folder_mb),
            "clip_jax.load(folder)": (load("clip_jax", folder), folder_mb),
            "clip_jax.load(big_vision .npz)": (load("clip_jax", npz), npz_mb),
            "clip_jax.convert(folder, .safetensors)": (convert(folder), folder_mb),
            "clip_jax.convert(.npz, .safetensors)": (convert(npz), npz_mb)}


def loads(folder: Path, npz: Path, out: Path, rounds: int) -> None:
    """Every load and conversion, `rounds` times, in turn (reversed every other round); medians."""
    cases = _load_cases(folder, npz, out)
    sizes = {label: mb for label, (_, mb) in cases.items()}
    print(f"folder {sizes['clip_jax.load(folder)']:.0f} MB (config.json + float32 model.safetensors), "
          f"big_vision .npz {sizes['clip_jax.load(big_vision .npz)']:.0f} MB; load average before: {_load_average()}",
          flush=True)
    runs: dict[str, list] = {label: [] for label in cases}
    order = list(cases)
    for i in range(rounds):
        for label in order if i % 2 == 0 else order[::-1]:
            runs[label].append(cases[label][0]())
    counts = {label: r[0][4] for label, r in runs.items() if r[0][4] is not None}
    print(f"load average after: {_load_average()}; {rounds} rounds, median; parameters: "
          + ", ".join(f"{label} {n / 1e6:.2f} M" for label, n in counts.items()))
    _load_table(runs, sizes)


def _load_table(runs: dict[str, list], sizes: dict[str, float]) -> None:
    """Two tables: the load alone and the load followed by one read of every weight (conversions: the
    whole conversion, in both), each against transformers' figure of the same table."""
    ref = "transformers SiglipModel.from_pretrained"
    for k, what in ((0, "load"), (2, "load, then read every weight once")):
        def med(label: str, j: int) -> float:
            return statistics.median(r[j] for r in runs[label])
        t_ref, m_ref = med(ref, k), med(ref, k + 1)
        print(f"\n{what + ':':42s} {'s':>7s} {'peak MB':>8s} {'x file':>7s} {'time / tf':>10s} {'peak / tf':>10s}")
        for label in runs:
            t, m = med(label, k), med(label, k + 1)
            print(f"{label:42s} {t:7.2f} {m:8.0f} {m / sizes[label]:7.2f} {t / t_ref:10.2f} {m / m_ref:10.2f}")
        for label, rs in runs.items():
            print(f"  {label} times: {' '.join(f'{r[k]:.2f}' for r in rs)}")


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["towers", "load", "all"], default="all")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="tower batch sizes (default: 1 32)")
    ap.add_argument("--calls", nargs="+", default=list(CALLS), choices=CALLS, help="tower calls to time")
    ap.add_argument("--logits-batch", type=int, nargs="+", default=[1],
                    help="batch sizes of the clip_logits rows (default: 1; at 32 a row costs an image and a text "
                         "row together)")
    ap.add_argument("--repeat", type=int, default=2, help="rounds (median), for the towers and the loads")
    ap.add_argument("--threads", type=int, default=None,
                    help="cores for each library (default: every core this process may use)")
    args = ap.parse_args(argv)
    n = _pin(args.threads)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(ROOT))
    import jax
    import open_clip
    import torch
    import transformers

    torch.set_num_threads(n)
    start = time.perf_counter()
    print(f"machine: {_machine(n)}; torch threads {torch.get_num_threads()}, XLA: the process's {n} cores")
    print(f"python {platform.python_version()}, jax {jax.__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, open_clip {open_clip.__version__}; float32 everywhere; "
          f"load average before: {_load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        folder = tmp / "siglip-base-patch16-224"
        write_folder(folder)
        if args.part in ("towers", "all"):
            rows = [(kind, b) for kind in args.calls
                    for b in (args.logits_batch if kind == "logits" else args.batch)]
            towers(folder, tmp, rows, args.repeat)
            print(f"load average after the towers: {_load_average()}", flush=True)
        if args.part in ("load", "all"):
            import clip_jax

            model, _ = clip_jax.load(folder)
            npz = clip_jax.export(model, tmp / "siglip-b16.npz")
            del model
            loads(folder, npz, tmp / "converted.safetensors", args.repeat)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
