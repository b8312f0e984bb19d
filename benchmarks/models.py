"""Tower throughput: clip_jax beside open_clip on the same device, in the same process.

For each model, the image tower and the text tower (full 77 tokens, and trimmed to the longest-EOT
bucket on captions of realistic length) are timed with random-init weights: items/s, MFU against the
device's peak, and the ratio clip_jax / open_clip. open_clip runs fp16 on GPU (as people deploy it) and
fp32 on CPU; clip_jax runs bf16 on GPU and fp32 on CPU unless --dtype says otherwise. Timings interleave
the two frameworks and keep the best of --repeat rounds, because these machines are shared.

    python -m benchmarks.models                                  # CPU: ViT-B/32, batch 32
    python -m benchmarks.models --device gpu                     # the four models, batch 1024, XLA and cuDNN attention

On a GPU every (model, tower, attention) row is measured on its own: one that fails (a cuDNN limit, out
of memory) prints its error in the row and the run goes on.
"""

from __future__ import annotations

import argparse
import os
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


def best_time(fn, sync, repeat: int, inner: int) -> float:
    fn(); sync()  # warm up (and compile)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(inner):
            out = fn()
        sync(out)
        best = min(best, (time.perf_counter() - t) / inner)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--batch", type=int, default=None, help="default: 32 on CPU, 1024 on GPU")
    ap.add_argument("--dtype", default=None, help="clip_jax compute dtype (default: bfloat16 on GPU, float32 on CPU)")
    ap.add_argument("--models", nargs="+", default=None, help="open_clip names (default: ViT-B-32 on CPU, four on GPU)")
    ap.add_argument("--towers", nargs="+", default=["image", "text", "text-trimmed"])
    ap.add_argument("--attention", nargs="+", default=None, choices=["default", "xla", "cudnn"],
                    help="jax.nn.dot_product_attention implementations to time (default: xla on CPU; xla and cudnn on GPU)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    gpu = args.device == "gpu"
    batch = args.batch or (1024 if gpu else 32)
    dtype = args.dtype or ("bfloat16" if gpu else "float32")
    names = args.models or (GPU_MODELS if gpu else ["ViT-B-32"])
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
    from clip_jax.checkpoint.convert import from_torch

    start = time.perf_counter()
    tdev = torch.device("cuda" if gpu else "cpu")
    tdtype = torch.float16 if gpu else torch.float32
    jdev = jax.devices()[0]
    kind = torch.cuda.get_device_name() if gpu else "CPU"
    peak = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in kind), None) if gpu else None

    def cpu_peak() -> float:
        """The CPU's achievable fp32 rate: the best of several large matmuls, in TFLOP/s."""
        a = jnp.ones((2048, 2048), jnp.float32)
        mm = jax.jit(lambda x: x @ x)
        return 2 * 2048**3 / best_time(lambda: mm(a), lambda o=None: jax.block_until_ready(o), 10, 2) / 1e12

    if not gpu:
        peak = cpu_peak()
    print(f"device: {kind} ({jdev.device_kind}), jax {jax.__version__}, torch {torch.__version__}, "
          f"open_clip {open_clip.__version__}, batch {batch}, clip_jax {dtype}, open_clip {tdtype}")
    print(f"peak used for MFU: {peak:.3f} TFLOP/s" if peak else "peak unknown: MFU not shown")
    print(f"{'model':10s} {'tower':13s} {'attention':9s} {'compile s':>9s} {'clip_jax/s':>11s} {'MFU':>6s} "
          f"{'open_clip/s':>12s} {'MFU':>6s} {'ratio':>6s}", flush=True)

    tokens_full = clip_jax.tokenize([CAPTIONS[i % len(CAPTIONS)] for i in range(batch)])
    tokens_trim = clip_jax.trim_tokens(tokens_full)
    jsync = lambda o=None: jax.block_until_ready(o)
    tsync = (lambda o=None: torch.cuda.synchronize()) if gpu else (lambda o=None: None)
    for name in names:
        ref = open_clip.create_model(name, pretrained=None).eval()
        config, params = from_torch({k: v.numpy() for k, v in ref.state_dict().items()})
        ref = ref.to(tdev, tdtype)
        size = config.vision.image_size
        images = np.random.RandomState(0).randn(batch, size, size, 3).astype(np.float32)
        built = {}
        for tower in args.towers:
            if tower == "image":
                tx = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(tdev, tdtype)
                t_run = lambda: ref.encode_image(tx)
            else:
                tx = torch.from_numpy(tokens_full).long().to(tdev)  # open_clip always runs the full context
                t_run = lambda: ref.encode_text(tx)
            with torch.inference_mode():
                t_time = best_time(t_run, tsync, args.repeat, 3)
            for attention in attentions:
                row = f"{name:10s} {tower:13s} {attention:9s}"
                try:
                    if attention not in built:  # one build per attention, shared by the towers
                        built[attention] = clip_jax.build(config, params, dtype=dtype, param_dtype=dtype,
                                                          attention=None if attention == "default" else attention)
                    model = built[attention]
                    if tower == "image":
                        fn, p = clip_jax.functional(model, "image_features")
                        x = jax.device_put(jnp.asarray(images, dtype))
                    else:
                        fn, p = clip_jax.functional(model, "text_features")
                        x = jax.device_put(tokens_trim if tower == "text-trimmed" else tokens_full)
                    t0 = time.perf_counter()
                    compiled = jax.jit(fn).lower(p, x).compile()
                    compile_s = time.perf_counter() - t0
                    cost = compiled.cost_analysis()
                    flops = (cost[0] if isinstance(cost, list) else cost or {}).get("flops", 0.0)
                    j_time = best_time(lambda: compiled(p, x), jsync, args.repeat, 3)
                except Exception as e:  # noqa: BLE001 -- one failing row must not cost the others
                    print(f"{row} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
                    if os.environ.get("BENCH_TRACEBACK"):
                        traceback.print_exc()
                    continue
                mfu = lambda t: f"{100 * flops / t / (peak * 1e12):5.1f}%" if peak and flops else "   - "
                # open_clip's MFU uses clip_jax's FLOP count; for the trimmed row it ran 77 tokens, so none.
                print(f"{row} {compile_s:9.1f} {batch / j_time:11.1f} {mfu(j_time):>6s} {batch / t_time:12.1f} "
                      f"{mfu(t_time) if tower != 'text-trimmed' else '   - ':>6s} {t_time / j_time:6.2f}", flush=True)
        del ref
        if gpu:
            torch.cuda.empty_cache()
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
