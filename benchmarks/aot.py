"""Compiled for, not run on: TPU pods and GPUs from this CPU machine, ahead of time.

    python -m benchmarks.aot                        # every model x target below (minutes)
    python -m benchmarks.aot --models ViT-B/32 --targets v5e:2x2 h200:1x1x1

For each model x target it compiles the public image and text programs (`clip_jax.model.lower`) with
bf16 compute and params, uint8 images, sharded over the target's devices along "data" (and "model" for
bigG-14), and prints per chip: GFLOPs per image/text (clip_jax's program, counted from the jaxpr's
matmuls and convolutions; beside it open_clip's, which runs the last block over every token), HBM bytes
per item (the TPU compiler's cost analysis; the GPU compiler gives none), the roofline upper bound on
items/s per chip, and the memory the compiled program holds at the recommended batch.

Needs libtpu (`pip install "jax[tpu]==<jax version>"`) for the TPU targets and the CUDA plugin
(`pip install "jax[cuda12-local]==<jax version>" nvidia-cudnn-cu12`) for the GPU ones; run with
JAX_PLATFORMS=cpu on a machine without accelerators. tests/test_aot.py uses the same helpers.

What this supports: the programs compile for these chips, with the collectives, memory and kernels
(cuDNN attention and convolutions, no gathers) asserted there. What it doesn't: any speed measured on
real hardware (the roofline is an upper bound) or numerics on those chips (tests/test_gpu.py, gpu.sh).
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if __name__ == "__main__":  # run as a script: benchmarks/'s names must not shadow stdlib modules
    sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or ".") not in (HERE, ROOT)]

# libtpu probes the host (metadata server, worker names) when it loads: quiet it on a non-TPU machine.
for _k, _v in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
               ("TPU_ACCELERATOR_TYPE", "v5litepod-4"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
    os.environ.setdefault(_k, _v)
# Triton gemms are autotuned on a device; without one, cuBLAS(Lt) gemms compile deterministically.
if "--xla_gpu_enable_triton_gemm" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_triton_gemm=false").strip()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from clip_jax.config import PRESETS, CLIPConfig, config_from_open_clip  # noqa: E402
from clip_jax.model import abstract_model, lower  # noqa: E402
from clip_jax.parallel import DATA, make_mesh, param_specs, shard_params  # noqa: E402

# XLA's GpuTargetConfigProto for an H200 (openxla/xla xla/backends/gpu/target_config/specs/h200.txtpb),
# less the fields the jax 0.10 CUDA plugin doesn't know.
H200_SPEC = Path(ROOT) / "tests" / "data" / "h200.txtpb"


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    bf16_flops: float  # dense peak, FLOP/s
    hbm_bandwidth: float  # bytes/s
    hbm_bytes: float
    source: str


CHIPS = {
    "v5e": Chip("TPU v5e", 197e12, 819e9, 16 * 2**30, "Google Cloud TPU v5e docs: 197 TFLOP/s bf16, 819 GB/s, 16 GiB"),
    "v5p": Chip("TPU v5p", 459e12, 2765e9, 95 * 2**30, "Google Cloud TPU v5p docs: 459 TFLOP/s bf16, 2,765 GB/s, 95 GiB"),
    "v4": Chip("TPU v4", 275e12, 1228e9, 32 * 2**30, "Google Cloud TPU v4 docs: 275 TFLOP/s bf16, 1,228 GB/s, 32 GiB"),
    "h200": Chip("NVIDIA H200", 989e12, 4.8e12, 141e9,
                 "NVIDIA H200 SXM datasheet: 989 TFLOP/s dense bf16, 4.8 TB/s, 141 GB"),
}

# Recommended global batch per chip for inference (README "Running on TPU pods"): what the memory
# analysis leaves room for with margin on the smallest chip (v5e, 16 GiB).
RECOMMENDED_PER_CHIP = {"tpu": 256, "gpu": 1024}

TARGETS = ("v5e:2x2", "v5e:16x16", "v5p:2x2x4", "h200:1x1x1", "h200:1x1x8")
MODELS = ("ViT-B/32", "ViT-L/14", "RN50", "ViT-bigG-14")
MODEL_PARALLEL = {"ViT-bigG-14": 4}  # the "model" axis of the mesh: Megatron-split blocks


class Unavailable(Exception):
    """The compiler for a target isn't installed here (the message says what to install)."""


def model_config(name: str) -> CLIPConfig:
    if name in PRESETS:
        return PRESETS[name]
    import open_clip  # the bigG-14 shape: open_clip's config (no weights)

    return config_from_open_clip(open_clip.get_model_config(name))


def shrunk(config: CLIPConfig, layers: int = 2) -> CLIPConfig:
    """The same widths, token counts and kernels, with fewer blocks: the structure the compile tests
    check (collectives, gathers, custom calls) in seconds instead of a minute."""
    v, t = config.vision, config.text
    vision = dataclasses.replace(v, layers=layers if isinstance(v.layers, int) else tuple(1 for _ in v.layers))
    return dataclasses.replace(config, vision=vision, text=dataclasses.replace(t, layers=layers))


@functools.lru_cache(maxsize=None)
def devices(target: str) -> tuple:
    """The devices of a target ("v5e:16x16", "h200:1x1x8"), described, not attached."""
    from jax.experimental import topologies

    chip, shape = target.split(":")
    if chip == "h200":
        try:
            import jax_plugins.xla_cuda12  # noqa: F401
        except ImportError as e:
            raise Unavailable(f"no CUDA plugin to compile for GPUs ({e}): pip install "
                              f"'jax[cuda12-local]=={jax.__version__}' nvidia-cudnn-cu12") from None
        topo = topologies.get_topology_desc(platform="cuda", topology_name="", topology=shape,
                                            target_config=H200_SPEC.read_text())
    else:
        try:
            import libtpu  # noqa: F401
        except ImportError:
            raise Unavailable(f"no libtpu to compile for TPUs: pip install 'jax[tpu]=={jax.__version__}'") from None
        topo = topologies.get_topology_desc(topology_name=target, platform="tpu")
    return tuple(topo.devices)


def chip_of(target: str) -> Chip:
    return CHIPS[target.split(":")[0]]


def platform_of(target: str) -> str:
    return "gpu" if target.startswith("h200") else "tpu"


def abstract_sharded(config: CLIPConfig, mesh, attention: str | None = None, dtype: str = "bfloat16"):
    """A CLIP whose Variables hold jax.ShapeDtypeStructs placed on `mesh` as ShardedCLIP places params
    (replicated along "data", Megatron-split along "model"): what `lower` compiles for the target."""
    graphdef, state = abstract_model(config, dtype=dtype, param_dtype=dtype, attention=attention)
    return nnx.merge(graphdef, shard_params(state, mesh))


@dataclasses.dataclass
class Compiled:
    target: str
    program: str
    batch: int  # global
    per_chip: int
    compiled: object
    seconds: float

    @functools.cached_property
    def text(self) -> str:
        return self.compiled.as_text()

    @property
    def memory(self) -> int:
        """Bytes the program holds on one chip: arguments + outputs + temporaries (aliases counted once)."""
        m = self.compiled.memory_analysis()
        return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes

    @property
    def cost(self) -> dict | None:
        c = self.compiled.cost_analysis()
        if isinstance(c, list):  # older jax: one dict per program
            c = c[0] if c else None
        return c or None


def compile_program(config: CLIPConfig, target: str, program: str, per_chip: int | None = None,
                    model_parallel: int = 1, attention: str | None = None, uint8: bool = True,
                    length: int | None = None) -> Compiled:
    """Compile the public program `program` ("image_features", "text_features" or "__call__") for
    `target`, the batch split along "data" over every chip."""
    devs = devices(target)
    mesh = make_mesh(model_parallel, devs)
    per_chip = per_chip or RECOMMENDED_PER_CHIP[platform_of(target)]
    n = per_chip * mesh.shape[DATA]
    rows = NamedSharding(mesh, P(DATA))
    size = config.vision.image_size
    images = jax.ShapeDtypeStruct((n, size, size, 3), jnp.uint8 if uint8 else jnp.bfloat16, sharding=rows)
    tokens = jax.ShapeDtypeStruct((n, length or config.text.context_length), jnp.int32, sharding=rows)
    args = {"image_features": (images,), "text_features": (tokens,), "__call__": (images, tokens)}[program]
    model = abstract_sharded(config, mesh, attention)
    start = time.perf_counter()
    compiled = lower(model, program, *args).compile()
    return Compiled(target, program, n, per_chip, compiled, time.perf_counter() - start)


# --- what the compiled HLO does ----------------------------------------------------------------------

_OP = re.compile(r"=\s*(\w[\w\[\]\{\},\d: ]*?)\s+([\w\-]+)\(", re.M)


def ops(text: str, name: str) -> list[str]:
    """The lines of the compiled HLO whose op is `name` (e.g. "gather", "all-gather", "custom-call")."""
    pat = re.compile(rf"=\s*\S.*?\s{re.escape(name)}(-start)?\(")
    return [line.strip() for line in text.splitlines() if pat.search(line)]


def shape_elements(line: str) -> int:
    """Elements of the (first) result shape of an HLO line, e.g. f32[256,224,224,3]{...} -> 38535168."""
    m = re.search(r"=\s*\(?\s*\w+\[([\d,]*)\]", line)
    if not m:
        return 0
    dims = [int(d) for d in m.group(1).split(",") if d]
    return int(np.prod(dims)) if dims else 1


def batch_sized(lines: list[str], per_chip: int, per_item: int) -> list[str]:
    """The lines whose result holds at least per_chip * per_item elements (a whole batch's worth)."""
    return [line for line in lines if shape_elements(line) >= per_chip * per_item]


# --- FLOPs from the shapes ---------------------------------------------------------------------------


def jaxpr_flops(fn, *args) -> float:
    """2 x multiply-adds of every dot_general and convolution in fn's jaxpr (nested ones included)."""
    def count(jaxpr) -> float:
        total = 0.0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (lc, _), _ = eqn.params["dimension_numbers"]
                a = eqn.invars[0].aval
                total += 2 * np.prod(eqn.outvars[0].aval.shape) * np.prod([a.shape[i] for i in lc])
            elif eqn.primitive.name == "conv_general_dilated":
                k = eqn.invars[1].aval.shape
                dn = eqn.params["dimension_numbers"]
                rhs = dn.rhs_spec  # (out, in, spatial...)
                macs = np.prod([k[i] for i in rhs[1:]])
                total += 2 * np.prod(eqn.outvars[0].aval.shape) * macs
            for sub in jax.core.jaxprs_in_params(eqn.params) if hasattr(jax.core, "jaxprs_in_params") else _subjaxprs(eqn):
                total += count(sub)
        return total

    return float(count(jax.make_jaxpr(fn)(*args).jaxpr))


def _subjaxprs(eqn):
    for v in eqn.params.values():
        for x in v if isinstance(v, (tuple, list)) else (v,):
            if hasattr(x, "jaxpr") and hasattr(x.jaxpr, "eqns"):
                yield x.jaxpr
            elif hasattr(x, "eqns"):
                yield x


def flops_per_item(config: CLIPConfig, tower: str) -> tuple[float, float]:
    """(clip_jax's program, open_clip's) FLOPs per image ("image") or 77-token text ("text")."""
    graphdef, state = abstract_model(config, dtype="bfloat16", param_dtype="bfloat16")
    size = config.vision.image_size
    if tower == "image":
        x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.uint8)
        ours = jaxpr_flops(lambda s, x: nnx.merge(graphdef, s).image_features(x), state, x)
        v = config.vision
        tokens, width, mlp = (size // v.patch_size) ** 2 + 1 if not v.is_resnet else 0, v.width, getattr(v, "mlp_width", 4 * v.width)
    else:
        x = jax.ShapeDtypeStruct((1, config.text.context_length), jnp.int32)
        ours = jaxpr_flops(lambda s, x: nnx.merge(graphdef, s).text_features(x), state, x)
        t = config.text
        tokens, width, mlp = t.context_length, t.width, t.mlp_width
    if tower == "image" and config.vision.is_resnet:
        return ours, ours  # the attention pool queries the mean token only, in both
    # open_clip runs the last block over every token; clip_jax over the pooled one: add the difference.
    block = lambda n: 2 * n * width * (4 * width + 2 * mlp) + 4 * n * tokens * width
    return ours, ours + block(tokens) - block(1)


# --- the table ---------------------------------------------------------------------------------------


def report(name: str, target: str, attention: str | None = None) -> list[dict]:
    config = model_config(name)
    chip = chip_of(target)
    mp = MODEL_PARALLEL.get(name, 1)
    rows = []
    for tower, program in (("image", "image_features"), ("text", "text_features")):
        c = compile_program(config, target, program, model_parallel=mp, attention=attention)
        ours, oc = flops_per_item(config, tower)
        cost = c.cost
        hbm = cost["bytes accessed"] / c.per_chip if cost and "bytes accessed" in cost else None
        xla_flops = cost["flops"] / c.per_chip if cost and "flops" in cost else None
        bound = chip.bf16_flops / ours
        if hbm:
            bound = min(bound, chip.hbm_bandwidth / hbm)
        rows.append(dict(model=name, target=target, tower=tower, per_chip=c.per_chip, gflops=ours / 1e9,
                         open_clip_gflops=oc / 1e9, xla_gflops=None if xla_flops is None else xla_flops / 1e9,
                         hbm_mb=None if hbm is None else hbm / 1e6, roofline=bound,
                         memory_gb=c.memory / 1e9, hbm_gb=chip.hbm_bytes / 1e9, compile_s=c.seconds,
                         model_parallel=mp))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--targets", nargs="+", default=list(TARGETS))
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__}; bf16 compute and params, uint8 images; per chip; roofline = "
          f"min(peak bf16 FLOP/s / FLOPs, HBM B/s / bytes) (GPU: FLOPs only: no cost analysis there)")
    for t in sorted({t.split(':')[0] for t in args.targets}):
        print(f"  {CHIPS[t].name}: {CHIPS[t].source}")
    head = ("model", "target", "tower", "batch/chip", "GFLOP/item", "open_clip", "XLA GFLOP", "HBM MB/item",
            "roofline/s/chip", "memory GB", "compile s")
    print(" | ".join(head))
    for target in args.targets:
        for name in args.models:
            try:
                rows = report(name, target)
            except Unavailable as e:
                print(f"{name} | {target} | skipped: {e}")
                continue
            for r in rows:
                fmt = lambda x, f: "-" if x is None else format(x, f)
                print(" | ".join([r["model"] + (f" (model {r['model_parallel']})" if r["model_parallel"] > 1 else ""),
                                  r["target"], r["tower"], str(r["per_chip"]), fmt(r["gflops"], ".2f"),
                                  fmt(r["open_clip_gflops"], ".2f"), fmt(r["xla_gflops"], ".2f"),
                                  fmt(r["hbm_mb"], ".1f"), fmt(r["roofline"], ",.0f"),
                                  f"{r['memory_gb']:.2f} / {r['hbm_gb']:.0f}", f"{r['compile_s']:.0f}"]), flush=True)


if __name__ == "__main__":
    main()
