"""Training at pod scale, compiled for, not run on: the train step for a TPU slice, from this CPU machine.

    python -m benchmarks.aot_train                       # the pod rows below (tens of minutes each here)
    python -m benchmarks.aot_train --rows small          # a shallow B/16 SigLIP on a v5e 2x2, in a minute
    python -m benchmarks.aot_train --rows b16-siglip --per-chip 64 --target v5e:16x16

Each row compiles `clip_jax.train.Trainer`'s step (`Trainer.lower(...).compile()`) for a TPU topology
described by libtpu (`jax.experimental.topologies`, as benchmarks/aot.py does), with an abstract model
(`clip_jax.model.abstract_model`: shapes only, nothing allocated), uint8 images and int32 tokens as
`jax.ShapeDtypeStruct`s, bf16 compute and float32 params and AdamW state. It prints per row:

- compile seconds on this machine;
- FLOPs per step: the TPU cost analysis's count (per chip) times the chips, beside clip_jax's own count
  from the jaxpr (forward x 3, x 4 with remat: the backward pass is twice the forward's matmuls);
- HBM per chip from the memory analysis: arguments (the state shard and the batch rows), outputs, temps,
  the total (aliases counted once: the step donates its state) against the chip's 16 GiB;
- the collectives of the optimized HLO (counts of collective-permute, all-gather, reduce-scatter,
  all-reduce, all-to-all), the largest all-gather's result, and every all-gather whose result has a dim
  of the global batch (the sigmoid loss's ring has none; the softmax loss gathers the [N, D] features);
- the roofline: step time = FLOPs per chip / 197 TFLOP/s (a v5e's bf16 peak), the samples/s a chip it
  implies, and what that rate would be at a stated MFU (the anchors' below).

Anchors, published, not measured here: open_clip's ViT-B/32 on LAION-400M, ~770 samples/s per A100
(issue 26); its MFU from the FLOPs per sample (DESIGN.md: 8.82 + 5.96 GFLOP forward, x 3 for a step)
against the A100's 312 TFLOP/s is ANCHOR_MFU. SigLIP B/16 (transformers' model card for
google/siglip-base-patch16-224): "trained on 16 TPU-v4 chips for three days", 48 chip-days; the samples
it saw aren't stated there, so the comparison is what 48 v4 chip-days buy at a given MFU.

What this supports: the step compiles for that slice with these compiler versions, fits the chip's HBM by
the compiler's own memory analysis, and moves data the way the HLO says. What it doesn't: any speed (the
roofline is an upper bound; nothing here ran on a TPU), the input pipeline, or jax.distributed on a pod.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if __name__ == "__main__":  # run as a script: benchmarks/'s names must not shadow stdlib modules
    sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or ".") not in (HERE, ROOT)]

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import inspect  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import aot  # noqa: E402  (sets libtpu's environment before jax loads it)
from clip_jax.config import CLIPConfig, TextConfig, VisionConfig  # noqa: E402
from clip_jax.model import abstract_model  # noqa: E402
from clip_jax.parallel import DATA, FSDP_MIN_SIZE, make_mesh  # noqa: E402
from clip_jax.siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig  # noqa: E402
from clip_jax.train import Trainer, optimizer  # noqa: E402

A100_BF16 = 312e12  # NVIDIA A100 datasheet, dense bf16
V4_BF16 = 275e12  # Google Cloud TPU v4 docs
# open_clip ViT-B/32 on LAION-400M: ~770 samples/s per A100; a step is 3 forward passes of 8.82 + 5.96 GFLOP.
ANCHOR_MFU = 770 * 3 * (8.82e9 + 5.96e9) / A100_BF16
SIGLIP_CHIP_SECONDS = 16 * 3 * 86400  # "16 TPU-v4 chips for three days"


# Small models whose matrices FSDP splits (each kernel at least FSDP_MIN_SIZE elements: 128 x 256), compiled
# in seconds: the collectives come from the shardings and the loss, whatever the widths.
SMALL = {
    "small-siglip": SiglipConfig(
        embed_dim=128,
        vision=SiglipVisionConfig(image_size=32, patch_size=8, width=128, layers=2, heads=4, mlp_width=256),
        text=SiglipTextConfig(vocab_size=256, context_length=16, width=128, layers=2, heads=4, mlp_width=256)),
    "small-clip": CLIPConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=32, layers=2, width=128, patch_size=8, heads=4),
        text=TextConfig(context_length=16, vocab_size=256, width=128, heads=4, layers=2)),
}
assert all(c.vision.width * 2 * c.vision.width >= FSDP_MIN_SIZE for c in SMALL.values())


def model_config(name: str) -> CLIPConfig | SiglipConfig:
    """SMALL's names, or anything benchmarks.aot.model_config takes ("B/16", "ViT-L/14", ...)."""
    return SMALL[name] if name in SMALL else aot.model_config(name)


@dataclasses.dataclass(frozen=True)
class Row:
    """One compiled train step: `model` (aot.model_config's names), its loss, per-chip batch and options."""

    model: str
    loss: str
    target: str
    per_chip: int
    fsdp: bool = True
    remat: bool = False
    layers: int | None = None  # fewer blocks a tower (aot.shrunk): the structure, compiled in seconds


ROWS = {
    # SigLIP's own recipe: B/16 at a 32k batch, the chunked sigmoid loss, 256 v5e chips (128 pairs a chip).
    "b16-siglip": Row("B/16", "sigmoid", "v5e:16x16", 128),
    # CLIP's: ViT-L/14 at OpenAI's 32k batch, softmax over the gathered features, with remat.
    "l14-softmax": Row("ViT-L/14", "softmax", "v5e:16x16", 128, remat=True),
    "small": Row("small-siglip", "sigmoid", "v5e:2x2", 12),
    "small-softmax": Row("small-clip", "softmax", "v5e:2x2", 12, remat=True),
    # B/16's widths and SigLIP's 32k vocabulary, 2 blocks a tower (minutes here)
    "b16-shallow": Row("B/16", "sigmoid", "v5e:2x2", 8, layers=2),
}


def fsdp_supported() -> bool:
    """Whether this clip_jax's Trainer takes fsdp=True (params, grads and optimizer state over "data")."""
    return "fsdp" in inspect.signature(Trainer).parameters


def trainer_for(config, mesh, *, loss: str, fsdp: bool, remat: bool, donate: bool = True) -> Trainer:
    """A Trainer of an abstract `config` model (bf16 compute, float32 params) over `mesh`. fsdp falls back
    to replicated params where the Trainer has no fsdp option (the row then says so)."""
    graphdef, state = abstract_model(config, dtype="bfloat16", param_dtype="float32")
    kw = {"fsdp": True} if fsdp and fsdp_supported() else {}
    return Trainer(nnx.merge(graphdef, state), optimizer(1e-3, 10_000, 500), remat=remat, mesh=mesh,
                   loss=loss, donate=donate, **kw)


def batch_structs(config, n: int) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """[n, H, W, 3] uint8 images and [n, L] int32 tokens, as shapes."""
    size = config.vision.image_size
    return (jax.ShapeDtypeStruct((n, size, size, 3), jnp.uint8),
            jax.ShapeDtypeStruct((n, config.text.context_length), jnp.int32))


def compile_train(config, target: str, per_chip: int, *, loss: str, fsdp: bool = True, remat: bool = False,
                  donate: bool = True) -> aot.Compiled:
    """Trainer's step for `target`'s chips (make_mesh: all along "data"), per_chip pairs a chip. Raises
    aot.Unavailable without libtpu."""
    mesh = make_mesh(1, aot.devices(target))
    trainer = trainer_for(config, mesh, loss=loss, fsdp=fsdp, remat=remat, donate=donate)
    n = per_chip * mesh.shape[DATA]
    lowered = trainer.lower(*batch_structs(config, n))
    start = time.perf_counter()
    compiled = lowered.compile()
    name = f"train {loss}" + (" fsdp" if fsdp and fsdp_supported() else " replicated") + (" remat" if remat else "")
    return aot.Compiled(target, name, n, per_chip, compiled, time.perf_counter() - start)


# --- the compiled HLO ---------------------------------------------------------------------------------


def collective_counts(text: str) -> dict[str, int]:
    """How many of each collective the HLO holds (async starts counted once, in loop bodies once), and how
    many all-reduce-scatter fusions (see reduce_scattered)."""
    counts = {name: len(aot.ops(text, name)) for name in aot.COLLECTIVES}
    return {**counts, "all-reduce-scatter": len(_FUSED_RS.findall(text))}


# On TPU a reduce-scatter doesn't survive as an op: a pass after layout assignment decomposes it into an
# all-reduce and a dynamic-slice, and a later one fuses each such pair it can into a fusion that calls a
# computation named all-reduce-scatter[.N], whose results are the shards only. That fusion is TPU's
# reduce-scatter.
_FUSED_RS = re.compile(r"^\s*(?:ROOT\s+)?%[\w.\-]+ = .*\bfusion\(.*\bcalls=%all-reduce-scatter(?:\.\d+)?\b", re.M)


def reduce_scattered(text: str) -> list[tuple[int, ...]]:
    """The result shapes (each chip's shard) of every all-reduce-scatter fusion of the compiled HLO."""
    return [s for m in _FUSED_RS.finditer(text) for s in aot.result_shapes(m.group(0))]


def largest(text: str, name: str) -> tuple[tuple[int, ...], int] | None:
    """(shape, elements) of the largest array any `name` op returns (tuple results: each element), or None."""
    shapes = [s for line in aot.ops(text, name) for s in aot.result_shapes(line)]
    return max(((s, int(np.prod(s))) for s in shapes), key=lambda x: x[1], default=None)


def batch_gathers(text: str, batch: int, per_chip: int) -> list[tuple[int, ...]]:
    """The result shapes of every all-gather of the whole batch's rows (features, logits or activations
    on each chip): leading dim the global batch, or [chips, per_chip, ...] (a gather over the chips that
    XLA reshapes after). Choose a batch that no param has as its first dim."""
    chips = batch // per_chip
    return [s for line in aot.ops(text, "all-gather") for s in aot.result_shapes(line)
            if s[:1] == (batch,) or s[:2] == (chips, per_chip)]


def state_bytes(config) -> int:
    """Bytes of the replicated training state a chip would hold: float32 params and AdamW's two moments
    (x 3), and the frozen state (BatchNorm statistics)."""
    graphdef, state = abstract_model(config, dtype="bfloat16", param_dtype="float32")
    params = nnx.state(nnx.merge(graphdef, state), nnx.Param)
    sizes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    return 3 * sizes(params) + sizes(state) - sizes(params)


def is_ring(line: str, n: int) -> bool:
    """Whether a collective-permute's source_target_pairs send each of n chips' data to one other chip,
    every chip receiving once, in a single cycle through all n (a ring), as the chunked losses do."""
    pairs = aot.replica_groups(line, n)
    if len(pairs) != n or any(len(p) != 2 for p in pairs):
        return False
    nxt = dict(pairs)
    seen, at = set(), 0
    while at not in seen:
        seen.add(at)
        at = nxt.get(at, at)
    return len(seen) == n and sorted(nxt.values()) == list(range(n))


# --- the row ------------------------------------------------------------------------------------------


def counted_flops(config, per_chip: int, remat: bool) -> float:
    """clip_jax's FLOPs a chip per step from the jaxpr's matmuls: both towers forward, x 3 (x 4 with
    remat, which runs each block's forward again in the backward pass). The loss's are left out."""
    forward = sum(aot.flops_per_item(config, tower)[0] for tower in ("image", "text"))
    return (4 if remat else 3) * forward * per_chip


def memory_parts(c: aot.Compiled) -> dict[str, float]:
    m = c.compiled.memory_analysis()
    return {"args": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes, "temps": m.temp_size_in_bytes,
            "aliased": m.alias_size_in_bytes, "total": c.memory}


def measure(row: Row, per_chip: int | None = None, target: str | None = None) -> dict:
    """Compile `row` (per_chip / target override it) and read its figures (module docstring)."""
    full = model_config(row.model)
    config = aot.shrunk(full, row.layers) if row.layers else full
    per_chip, target = per_chip or row.per_chip, target or row.target
    c = compile_train(config, target, per_chip, loss=row.loss, fsdp=row.fsdp, remat=row.remat)
    chip, chips = aot.chip_of(target), len(aot.devices(target))
    flops_chip = (c.cost or {}).get("flops", float("nan"))
    step_s = flops_chip / chip.bf16_flops
    permutes = aot.ops(c.text, "collective-permute")
    return dict(row=row, model=row.model + (f" ({row.layers} blocks)" if row.layers else ""), program=c.program,
                target=target, chips=chips, per_chip=per_chip, batch=c.batch, compile_s=c.seconds,
                flops_step=flops_chip * chips, counted_step=counted_flops(config, per_chip, row.remat) * chips,
                memory=memory_parts(c), hbm=chip.hbm_bytes, collectives=collective_counts(c.text),
                largest_gather=largest(c.text, "all-gather"), batch_gathers=batch_gathers(c.text, c.batch, per_chip),
                replicated_state=state_bytes(config),
                batch_bytes=per_chip * (config.vision.image_size**2 * 3 + 4 * config.text.context_length),
                rings=sum(is_ring(line, chips) for line in permutes), step_s=step_s,
                samples_chip=per_chip / step_s)


def row_text(r: dict) -> str:
    """A row of `measure` as a few lines."""
    gb = lambda b: f"{b / 1e9:.2f}"
    m, coll = r["memory"], r["collectives"]
    gather = r["largest_gather"]
    return "\n".join([
        f"{r['model']} | {r['program']} | {r['target']} ({r['chips']} chips) | batch {r['batch']:,} "
        f"({r['per_chip']}/chip) | compiled in {r['compile_s']:.0f} s",
        f"  FLOPs/step: XLA {r['flops_step']:.3e}, counted {r['counted_step']:.3e} (matmuls, x3 or x4 with remat)",
        f"  HBM/chip GB: args {gb(m['args'])} + outputs {gb(m['outputs'])} + temps {gb(m['temps'])} - aliased "
        f"{gb(m['aliased'])} = {gb(m['total'])} of {gb(r['hbm'])} ({100 * m['total'] / r['hbm']:.0f}%); the replicated "
        f"state alone would be {gb(r['replicated_state'])}",
        "  collectives: " + ", ".join(f"{k} {v}" for k, v in coll.items()) + f" (rings over all chips: {r['rings']})"
        f"; largest all-gather {gather[0] if gather else '-'}; batch-sized all-gathers {r['batch_gathers'] or 'none'}",
        f"  roofline: {r['step_s'] * 1e3:.0f} ms/step, {r['samples_chip']:,.0f} samples/s/chip at 100% MFU; "
        f"{r['samples_chip'] * ANCHOR_MFU:,.0f} at open_clip's B/32 anchor MFU ({100 * ANCHOR_MFU:.0f}%), "
        f"{r['samples_chip'] * 0.4:,.0f} at 40%",
    ])


def siglip_anchor(r: dict, mfu: float) -> float:
    """Billions of samples 48 TPU-v4 chip-days (SigLIP B/16's stated budget) would process at `mfu`, by
    this row's FLOPs per sample."""
    return SIGLIP_CHIP_SECONDS * V4_BF16 * mfu / (r["flops_step"] / r["batch"]) / 1e9


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=["small", "b16-siglip", "l14-softmax"])
    ap.add_argument("--per-chip", type=int, default=None, help="pairs a chip (default: the row's)")
    ap.add_argument("--target", default=None, help="TPU topology (default: the row's, e.g. v5e:16x16)")
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__}, libtpu {aot._version('libtpu')}; Trainer fsdp option: {fsdp_supported()}; "
          f"compiled here for TPU, nothing run on a TPU. Anchor MFU (open_clip B/32, 770/s/A100): {ANCHOR_MFU:.3f}")
    for name in args.rows:
        try:
            r = measure(ROWS[name], args.per_chip, args.target)
        except aot.Unavailable as e:
            print(f"{name}: skipped: {e}")
            continue
        print(row_text(r))
        print(f"  SigLIP's 48 v4 chip-days at this row's FLOPs/sample: {siglip_anchor(r, 1.0):.1f} B samples at "
              f"100% MFU, {siglip_anchor(r, ANCHOR_MFU):.1f} B at the anchor's", flush=True)


if __name__ == "__main__":
    main()
