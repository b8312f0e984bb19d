"""Tower throughput through the calls users make: clip_jax's `model.encode_image` / `model.encode_text`
beside its jitted functional form and open_clip's `encode_image` / `encode_text`, in the same process.

For each model, tower and batch size, three contenders run on the same inputs: the public call (images
as a device array, tokens as the numpy array `clip_jax.tokenize` returns, so the text call trims to the
EOT bucket by itself), the functional form (`jax.jit(clip_jax.functional(model, ...)[0])`) on the same
arrays, and open_clip (fp16 on GPU, as people deploy it; fp32 on CPU). Rounds alternate the contenders
and each figure is the median over rounds, because these machines are shared. Random-init weights.

Also printed: the host time of one call (from the call to its return, device work not waited for),
public and functional, which is the per-call overhead a loop of calls can't hide; and the kernel's
rate as a share of the best fp32/bf16 matmul rate measured in the same process ("of matmul").

    python -m benchmarks.models                          # CPU: ViT-B/32 (QuickGELU, GELU), RN50; batch 1, 8, 32
    python -m benchmarks.models --overhead-only --models ViT-B-32 ViT-L-14 RN50    # host time per call only
    python -m benchmarks.models --device gpu             # the four models, batch 1024, XLA and cuDNN attention

On a GPU every (model, tower, attention) row is measured on its own: one that fails (a cuDNN limit, out
of memory) prints its error in the row and the run goes on.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import time
import traceback

import numpy as np

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) from the vendors' datasheets.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}
CAPTIONS = [
    "a photo of a dog", "a red car parked on the street next to a tree", "two people riding bikes",
    "a close-up of a bowl of ramen with an egg", "an aerial view of a city at night",
    "a cat sleeping on a laptop keyboard", "the logo of a coffee shop", "a bird on a branch",
]
GPU_MODELS = ["ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50"]
CPU_MODELS = ["ViT-B-32-quickgelu", "ViT-B-32", "RN50"]
# The goals on the CPU: the public image call at least open_clip's speed, the text call (trimmed
# by itself) 1.5x; below them, the row is followed by a profile of the public call.
GOALS = {"image": 1.0, "text": 1.5}


def median_rounds(contenders: dict, sync, rounds: int, inner: int) -> dict[str, float]:
    """Seconds per call of each contender: the median over `rounds` rounds; in each round every
    contender runs `inner` calls, in turn (alternating which goes first)."""
    for fn in contenders.values():  # warm up (and compile)
        sync(fn())
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            fn = contenders[name]
            t = time.perf_counter()
            for _ in range(inner):
                out = fn()
            sync(out)
            times[name].append((time.perf_counter() - t) / inner)
    return {name: statistics.median(ts) for name, ts in times.items()}


def host_time(fn, sync, rounds: int = 21) -> float:
    """Median seconds from a call to its return (its device work is waited for after, not timed)."""
    sync(fn())
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
        sync(out)
    return statistics.median(ts)


def profile_summary(fn, sync, calls: int = 5, lines: int = 8) -> str:
    """Where a call's host time goes (cProfile, by own time); the rest of the call is the XLA kernel."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        sync(fn())
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(lines)
    body = [line for line in buf.getvalue().splitlines() if line.strip()]
    return "\n".join("    | " + line for line in body[-lines - 1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="default: 1 8 32 on CPU, 1024 on GPU")
    ap.add_argument("--dtype", default=None, help="clip_jax compute dtype (default: bfloat16 on GPU, float32 on CPU)")
    ap.add_argument("--models", nargs="+", default=None, help="open_clip names (default: three on CPU, four on GPU)")
    ap.add_argument("--towers", nargs="+", default=["image", "text"], choices=["image", "text"])
    ap.add_argument("--attention", nargs="+", default=None, choices=["default", "xla", "cudnn"],
                    help="jax.nn.dot_product_attention implementations to time "
                         "(default: xla on CPU; xla and cudnn on GPU)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--overhead-only", action="store_true", help="only the host time per call, batch 1")
    args = ap.parse_args()
    gpu = args.device == "gpu"
    batches = args.batch or ([1024] if gpu else [1, 8, 32])
    dtype = args.dtype or ("bfloat16" if gpu else "float32")
    names = args.models or (GPU_MODELS if gpu else CPU_MODELS)
    attentions = args.attention or (["xla", "cudnn"] if gpu else ["xla"])
    if gpu:
        # Both frameworks share the card: JAX would otherwise reserve 75% of it at its first allocation.
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    else:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import jax.numpy as jnp
    import open_clip
    import torch

    import clip_jax
    from clip_jax.checkpoint.torch_names import from_torch

    start = time.perf_counter()
    tdev = torch.device("cuda" if gpu else "cpu")
    tdtype = torch.float16 if gpu else torch.float32
    kind = torch.cuda.get_device_name() if gpu else "CPU"
    jsync = lambda o=None: jax.block_until_ready(o)
    tsync = (lambda o=None: torch.cuda.synchronize()) if gpu else (lambda o=None: None)

    n = 8192 if gpu else 1024
    a = jnp.ones((n, n), dtype)
    mm = jax.jit(lambda x: jnp.dot(x, x, precision="highest" if dtype == "float32" else None))
    matmul_s = median_rounds({"mm": lambda: mm(a)}, jsync, 7, 3)["mm"]
    matmul = 2 * n**3 / matmul_s / 1e12
    peak = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in kind), None) if gpu else None
    print(f"device: {kind} ({jax.devices()[0].device_kind}), jax {jax.__version__}, torch {torch.__version__}, "
          f"open_clip {open_clip.__version__}, clip_jax {dtype}, open_clip {tdtype}, {args.rounds} rounds (median)")
    print(f"best {dtype} matmul in this process ({n}^3): {matmul:.3f} TFLOP/s"
          + (f"; datasheet peak {peak:.0f} TFLOP/s" if peak else ""))
    print(f"{'model':19s} {'tower':5s} {'attn':4s} {'batch':>5s} {'public/s':>9s} {'funct./s':>9s} "
          f"{'open_clip/s':>11s} {'public/oc':>9s} {'funct./oc':>9s} {'host ms pub':>11s} {'funct.':>6s} "
          f"{'of matmul':>9s}", flush=True)

    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(max(batches))]
    for name in names:
        ref = open_clip.create_model(name, pretrained=None).eval()
        cfg = open_clip.get_model_config(name)
        config, params = from_torch({k: v.numpy() for k, v in ref.state_dict().items()},
                                    clip_jax.config_from_open_clip(cfg) if cfg else None)
        ref = ref.to(tdev, tdtype)
        size = config.vision.image_size
        built: dict = {}
        for attention in attentions:
            try:
                built[attention] = clip_jax.build(config, params, dtype=dtype, param_dtype=dtype,
                                                  attention=None if attention == "default" else attention)
            except Exception as e:  # noqa: BLE001 -- one failing build must not cost the other rows
                print(f"{name:19s} {attention}: build failed: {type(e).__name__}: {e}", flush=True)
        for tower in args.towers:
            for batch in [1] if args.overhead_only else batches:
                images = np.random.RandomState(0).randn(batch, size, size, 3).astype(np.float32)
                tokens = clip_jax.tokenize(captions[:batch])  # numpy, 77 columns: encode_text trims them
                if tower == "image":
                    tx = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(tdev, tdtype)
                    t_run = lambda: ref.encode_image(tx)
                else:
                    tx = torch.from_numpy(tokens).long().to(tdev)  # open_clip always runs the full context
                    t_run = lambda: ref.encode_text(tx)
                for attention, model in built.items():
                    row = f"{name:19s} {tower:5s} {attention[:4]:4s} {batch:5d}"
                    try:
                        if tower == "image":
                            x = jax.device_put(jnp.asarray(images, dtype))
                            public = lambda: model.encode_image(x)
                            fn, p = clip_jax.functional(model, "image_features")
                            fx = x
                        else:
                            x = tokens
                            public = lambda: model.encode_text(x)
                            fn, p = clip_jax.functional(model, "text_features")
                            fx = jax.device_put(clip_jax.trim_tokens(tokens) if config.text.trimmable else tokens)
                        compiled = jax.jit(fn).lower(p, fx).compile()
                        funct = lambda: compiled(p, fx)
                        host_pub, host_fn = host_time(public, jsync), host_time(funct, jsync)
                        if args.overhead_only:
                            print(f"{row} {'':9s} {'':9s} {'':11s} {'':9s} {'':9s} {1e3 * host_pub:11.2f} "
                                  f"{1e3 * host_fn:6.2f}", flush=True)
                            continue
                        cost = compiled.cost_analysis()
                        flops = (cost[0] if isinstance(cost, list) else cost or {}).get("flops", 0.0)
                        contenders = {"public": public, "functional": funct}
                        times = median_rounds(contenders, jsync, args.rounds, 3)
                        with torch.inference_mode():
                            times["open_clip"] = median_rounds({"oc": t_run}, tsync, args.rounds, 3)["oc"]
                    except Exception as e:  # noqa: BLE001 -- one failing row must not cost the others
                        print(f"{row} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
                        if os.environ.get("BENCH_TRACEBACK"):
                            traceback.print_exc()
                        continue
                    oc = times["open_clip"]
                    share = f"{100 * flops / times['functional'] / (matmul * 1e12):8.0f}%" if flops else "       -"
                    print(f"{row} {batch / times['public']:9.1f} {batch / times['functional']:9.1f} {batch / oc:11.1f} "
                          f"{oc / times['public']:9.2f} {oc / times['functional']:9.2f} {1e3 * host_pub:11.2f} "
                          f"{1e3 * host_fn:6.2f} {share}", flush=True)
                    if not gpu and oc / times["public"] < GOALS[tower]:
                        print(f"    below the {GOALS[tower]}x goal; host profile of 5 public calls "
                              f"({1e3 * times['public']:.1f} ms each):\n{profile_summary(public, jsync)}", flush=True)
        ref = None  # free the reference model before the next one
        if gpu:
            torch.cuda.empty_cache()
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
