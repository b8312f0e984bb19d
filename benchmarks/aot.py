"""Compiled for, not run on: TPU pods and GPUs from this CPU machine, ahead of time.

    python -m benchmarks.aot                        # every model x target below (an hour or more)
    python -m benchmarks.aot --models ViT-B/32 --targets v5e:2x2 h200:1x1x1
    python -m benchmarks.aot --models ViT-B/32 --targets v5e:2x2 --trace 12   # the 12 costliest ops
    python -m benchmarks.aot --models So400m/14-384 --targets v5e:2x2 h200:1x1x1   # SigLIP: any SiglipConfig name

For each model x target it compiles the public image and text programs (`clip_jax.calls.lower`) with bf16
compute and params, uint8 images, sharded over the target's devices along "data" (and "model" for bigG-14),
and prints per chip: GFLOPs per image/text (clip_jax's program, counted from the jaxpr's matmuls and
convolutions, for the whole item even where "model" splits it over chips; beside it open_clip's, which runs
the last block over every token, and the TPU compiler's own count), bytes per item two ways (the TPU cost
analysis's "bytes accessed", and the HBM traffic read from the compiled program's buffer assignment, see
`hbm_traffic`; the GPU compiler gives no cost analysis), the arithmetic intensity (FLOPs per HBM byte), the
roofline upper bound on items/s per chip, and the memory the compiled program holds at the recommended batch
(arguments, i.e. both towers' params and the batch, + temporaries = the total, against the chip's HBM).
SigLIP models (`SiglipConfig.from_name` names: "So400m/14-384", "B/16", ...) are compiled the same way.
`--trace N` lists the N instructions that move the most HBM bytes, per item.

The TPU cost analysis is per chip: it describes the partitioned program one chip runs (the same
per-chip batch on 1 chip and on 4 gives the same FLOPs and bytes; the same global batch on 1 chip gives
4x), so every figure here is divided by the images one chip holds. Its "bytes accessed" sums the
operands and results of every instruction, including those the compiler placed in the chip's on-chip
VMEM (`S(1)` in a layout), in their padded tiled sizes: an upper bound on HBM traffic, not a
measurement of it.

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

from clip_jax.calls import lower  # noqa: E402
from clip_jax.config import PRESETS, CLIPConfig, config_from_open_clip  # noqa: E402
from clip_jax.errors import InputError  # noqa: E402
from clip_jax.model import abstract_model  # noqa: E402
from clip_jax.parallel import DATA, make_mesh, pmap_logits, shard_params  # noqa: E402
from clip_jax.siglip_config import SiglipConfig  # noqa: E402
from clip_jax.train import Trainer, optimizer  # noqa: E402

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
    "v5p": Chip("TPU v5p", 459e12, 2765e9, 95 * 2**30,
                "Google Cloud TPU v5p docs: 459 TFLOP/s bf16, 2,765 GB/s, 95 GiB"),
    "v4": Chip("TPU v4", 275e12, 1228e9, 32 * 2**30, "Google Cloud TPU v4 docs: 275 TFLOP/s bf16, 1,228 GB/s, 32 GiB"),
    "h200": Chip("NVIDIA H200", 989e12, 4.8e12, 141e9,
                 "NVIDIA H200 SXM datasheet: 989 TFLOP/s dense bf16, 4.8 TB/s, 141 GB"),
}

# Recommended global batch per chip for inference (README "Running on TPU pods"): what the memory
# analysis leaves room for with margin on the smallest chip (v5e, 16 GiB).
RECOMMENDED_PER_CHIP = {"tpu": 256, "gpu": 1024}
# Pairs a chip for the train step (bf16 compute, float32 params and AdamW state, no remat, no
# donation): ViT-B/32 at 128 a chip holds 7.7 GB of a v5e's 16 GiB (1.8 GB state in, 1.8 GB out, 4.0 GB
# of activations); OpenAI's 32k batch over 256 chips is the same 128.
TRAIN_PER_CHIP = {"ViT-B/32": 128}

TARGETS = ("v5e:2x2", "v5e:16x16", "v5p:2x2x4", "h200:1x1x1", "h200:1x1x8")
MODELS = ("ViT-B/32", "ViT-L/14", "RN50", "ViT-bigG-14")
MODEL_PARALLEL = {"ViT-bigG-14": 4}  # the "model" axis of the mesh: Megatron-split blocks
SIGLIP_MODELS = ("So400m/14-384",)  # SigLIP's largest released fixed-resolution shape most used


class Unavailable(Exception):
    """The compiler for a target isn't installed here (the message says what to install)."""


def model_config(name: str) -> CLIPConfig | SiglipConfig:
    """A CLIP preset, a SigLIP name (big_vision's "So400m/14-384", open_clip's, transformers'), or an
    open_clip architecture ("ViT-bigG-14")."""
    if name in PRESETS:
        return PRESETS[name]
    try:
        return SiglipConfig.from_name(name)
    except InputError:  # no SigLIP name: open_clip's
        pass
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
    def memory_parts(self) -> tuple[int, int, int]:
        """(arguments, temporaries, total) bytes on one chip: the params and the batch; what the program
        allocates; `memory` (arguments + outputs + temporaries, aliases counted once)."""
        m = self.compiled.memory_analysis()
        return m.argument_size_in_bytes, m.temp_size_in_bytes, self.memory

    @property
    def cost(self) -> dict | None:
        c = self.compiled.cost_analysis()
        if isinstance(c, list):  # older jax: one dict per program
            c = c[0] if c else None
        return c or None


def _compiled(target: str, program: str, n: int, per_chip: int, lowered) -> Compiled:
    start = time.perf_counter()
    compiled = lowered.compile()
    return Compiled(target, program, n, per_chip, compiled, time.perf_counter() - start)


def compile_program(config: CLIPConfig, target: str, program: str, per_chip: int | None = None,
                    model_parallel: int = 1, attention: str | None = None, uint8: bool = True,
                    length: int | None = None) -> Compiled:
    """Compile the public program `program` ("image_features", "text_features" or "__call__") for
    `target`, the batch split along "data" over every chip."""
    mesh = make_mesh(model_parallel, devices(target))
    per_chip = per_chip or RECOMMENDED_PER_CHIP[platform_of(target)]
    n = per_chip * mesh.shape[DATA]
    rows = NamedSharding(mesh, P(DATA))
    size = config.vision.image_size
    images = jax.ShapeDtypeStruct((n, size, size, 3), jnp.uint8 if uint8 else jnp.bfloat16, sharding=rows)
    tokens = jax.ShapeDtypeStruct((n, length or config.text.context_length), jnp.int32, sharding=rows)
    args = {"image_features": (images,), "text_features": (tokens,), "__call__": (images, tokens)}[program]
    return _compiled(target, program, n, per_chip, lower(abstract_sharded(config, mesh, attention), program, *args))


def compile_pmap(config: CLIPConfig, target: str, per_device: int, dtype: str = "bfloat16") -> Compiled:
    """Compile `clip_jax.pmap_logits` (clip_logits under jax.pmap) over every chip of `target`: each
    chip scores its own `per_device` uint8 images against its own `per_device` texts."""
    devs = devices(target)
    graphdef, state = abstract_model(config, dtype=dtype, param_dtype=dtype)
    scores = pmap_logits(nnx.merge(graphdef, state), devices=devs)
    size = config.vision.image_size
    images = jax.ShapeDtypeStruct((len(devs), per_device, size, size, 3), jnp.uint8)
    tokens = jax.ShapeDtypeStruct((len(devs), per_device, config.text.context_length), jnp.int32)
    return _compiled(target, "pmap logits", per_device * len(devs), per_device, scores.lower(images, tokens))


def compile_train_step(config: CLIPConfig, target: str, per_chip: int, remat: bool = False) -> Compiled:
    """Compile `clip_jax.train.Trainer`'s step, data parallel over every chip of `target` (make_mesh):
    bf16 compute, float32 params and AdamW state, uint8 images, `per_chip` pairs a chip."""
    mesh = make_mesh(1, devices(target))
    graphdef, state = abstract_model(config, dtype="bfloat16", param_dtype="float32")
    trainer = Trainer(nnx.merge(graphdef, state), optimizer(1e-5, 1000, 100), remat=remat, mesh=mesh)
    n = per_chip * mesh.shape[DATA]
    size = config.vision.image_size
    images = jax.ShapeDtypeStruct((n, size, size, 3), jnp.uint8)
    tokens = jax.ShapeDtypeStruct((n, config.text.context_length), jnp.int32)
    return _compiled(target, "train step" + (" (remat)" if remat else ""), n, per_chip, trainer.lower(images, tokens))


# --- what the compiled HLO does ----------------------------------------------------------------------

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def ops(text: str, name: str) -> list[str]:
    """The lines of the compiled HLO whose op is `name` (e.g. "gather", "all-gather", "custom-call"),
    async starts included, in fused and called computations too."""
    pat = re.compile(rf"=\s*\S.*?\s{re.escape(name)}(-start)?\(")
    return [line.strip() for line in text.splitlines() if pat.search(line)]


def collectives(text: str) -> list[str]:
    """Every cross-chip collective of the compiled HLO (see COLLECTIVES), one line each."""
    return [line for name in COLLECTIVES for line in ops(text, name)]


_SHAPE = re.compile(r"\b(pred|bf16|[suf]\d+)\[([\d,]*)\](\{[^}]*\})?")


def result_shapes(line: str) -> list[tuple[int, ...]]:
    """The result shapes of an HLO line, every element of a tuple: (f32[8], bf16[2,3]) -> [(8,), (2, 3)]."""
    return [dims for _, dims, _ in _result_arrays(line)]


def _result_arrays(line: str) -> list[tuple[str, tuple[int, ...], str]]:
    head = line.split("=", 1)[1]
    op = re.search(r"\s[a-z][\w\-]*\(", head)  # the op name: results and layouts come before it
    return [(m.group(1), tuple(int(d) for d in m.group(2).split(",") if d), m.group(3) or "")
            for m in _SHAPE.finditer(head[: op.start()] if op else head)]


def entry_parameters(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, shape) of each argument of the compiled program as one chip receives it."""
    entry = text[text.index("\nENTRY"):]
    entry = entry[: entry.index("\n}")]
    return [(dt, dims) for line in entry.splitlines() if re.search(r"\sparameter\(\d+\)", line)
            for dt, dims, _ in _result_arrays(line)]


def shape_elements(line: str) -> int:
    """Elements of the (first) result shape of an HLO line, e.g. f32[256,224,224,3]{...} -> 38535168."""
    shapes = result_shapes(line)
    return int(np.prod(shapes[0])) if shapes else 0


def batch_sized(lines: list[str], per_chip: int, per_item: int) -> list[str]:
    """The lines whose result holds at least per_chip * per_item elements (a whole batch's worth)."""
    return [line for line in lines if shape_elements(line) >= per_chip * per_item]


def replica_groups(line: str, n_devices: int) -> list[tuple[int, ...]]:
    """The groups of chips (partition ids, in the mesh's device order) each collective of an HLO line
    runs within: replica_groups={{0,1},{2,3}}, [2,2]<=[2,2]T(1,0) (iota), mesh['axis_0'=2,'axis_1'=2]
    {'axis_1'}; a collective-permute's source_target_pairs={{0,1},{1,0}} as pairs."""
    ids = np.arange(n_devices)
    if m := re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line):
        names, sizes = zip(*((k, int(v)) for k, v in re.findall(r"'(\w+)'=(\d+)", m.group(1))))
        over = [names.index(a.strip().strip("'")) for a in m.group(2).split(",") if a.strip()]
        keep = [i for i in range(len(names)) if i not in over]
        grid = ids.reshape(sizes).transpose(keep + over)
        return [tuple(map(int, g)) for g in grid.reshape(-1, int(np.prod([sizes[i] for i in over])))]
    if m := re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line):
        grid = ids.reshape([int(d) for d in m.group(3).split(",")])
        if m.group(4):
            grid = grid.transpose([int(d) for d in m.group(4).split(",")])
        return [tuple(map(int, g)) for g in grid.reshape(int(m.group(1)), int(m.group(2)))]
    if m := re.search(r"(?:replica_groups|source_target_pairs)=\{(\{[\d,{} ]*\})\}", line):
        return [tuple(int(i) for i in g.split(",") if i) for g in re.findall(r"\{([\d,]*)\}", m.group(1))]
    return [tuple(map(int, ids))]  # no groups given: every chip


def group_size(line: str, n_devices: int) -> int:
    """How many chips take part in each group of a collective (the largest group)."""
    return max(len(g) for g in replica_groups(line, n_devices))


# HLO ops that move no bytes of their own (views, tuples, the completion half of an async pair).
_FREE = {"parameter", "constant", "bitcast", "get-tuple-element", "tuple", "partition-id", "replica-id",
         "after-all", "opt-barrier"}
_ENTRY_OP = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")


def _tiled_bytes(dtype: str, dims: tuple[int, ...], layout: str) -> int:
    """Bytes of an array in its TPU layout: the two minor-most dims padded to the layout's first tile
    ({2,1,0:T(8,128)}: dim 2 to a multiple of 128, dim 1 of 8)."""
    dims = list(dims)
    m = re.match(r"\{([\d,]*):T\(([\d,]+)\)", layout)
    if m and dims and m.group(1):
        order = [int(i) for i in m.group(1).split(",")]
        for d, t in zip(order, reversed([int(t) for t in m.group(2).split(",")])):
            dims[d] = -(-dims[d] // t) * t
    bits = 8 if dtype == "pred" else int(re.sub(r"\D", "", dtype))
    return int(np.prod(dims)) * bits // 8


def hbm_traffic(text: str, include_vmem: bool = False) -> list[tuple[int, str]]:
    """(bytes, HLO line) for each instruction of the compiled TPU program's entry computation, largest
    first: its operands and results in their padded tiled sizes, counting only those in HBM (memory
    space 0; the compiler's memory-space assignment puts others in VMEM, `S(1)`), each operand whole
    (a slice: its own elements). An estimate of the program's HBM traffic: a fusion that reads an
    operand twice counts it once, one that reads part of it counts all of it. include_vmem: count
    every operand whole in every memory space (what the cost analysis's "bytes accessed" sums)."""
    entry = text[text.index("\nENTRY"):]
    entry = entry[: entry.index("\n}")]
    arrays, rows = {}, []
    for line in entry.splitlines()[1:]:
        m = _ENTRY_OP.match(line)
        if not m:
            continue
        name, _, op, rest = m.groups()
        results = arrays[name] = _result_arrays(line)
        if op in _FREE or op.endswith("-done"):
            continue
        operands = re.findall(r"%([\w.\-]+)", rest.split("), ")[0])
        if op.endswith("-start"):  # (operands, destination, context), or (destination, source, context)
            results = results[:1] if op == "copy-start" else results[-2:-1]
            inputs = [arrays.get(o, [])[:1] for o in operands]
        else:
            inputs = [arrays.get(o, []) for o in operands]
        if op in ("slice", "slice-start", "dynamic-slice") and inputs and inputs[0] and not include_vmem:
            # A slice reads its own elements of the operand, not all of it (weights DMA'd in pieces).
            inputs = [[(results[0][0], results[0][1], inputs[0][0][2])]] if results else inputs
        counted = [a for a in results + [a for i in inputs for a in i] if include_vmem or "S(" not in a[2]]
        rows.append((sum(_tiled_bytes(*a) for a in counted), line.strip()))
    return sorted(rows, key=lambda r: -r[0])


def hbm_bytes(text: str) -> int:
    """The compiled TPU program's HBM traffic, estimated (see `hbm_traffic`)."""
    return sum(b for b, _ in hbm_traffic(text))


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
            elif eqn.primitive.name == "cond":  # platform_dependent (conv2d, normalize): one branch runs
                total += max(count(b.jaxpr) for b in eqn.params["branches"])
                continue
            for sub in _subjaxprs(eqn):
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


def flops_per_item(config: CLIPConfig | SiglipConfig, tower: str) -> tuple[float, float]:
    """(clip_jax's program, open_clip's) FLOPs per image ("image") or context_length-token text ("text")."""
    graphdef, state = abstract_model(config, dtype="bfloat16", param_dtype="bfloat16")
    size = config.vision.image_size
    if tower == "image":
        x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.uint8)
        ours = jaxpr_flops(lambda s, x: nnx.merge(graphdef, s).image_features(x), state, x)
        v = config.vision
        tokens = (size // v.patch_size) ** 2 + 1 if not v.is_resnet else 0
        width, mlp = v.width, getattr(v, "mlp_width", 4 * v.width)
    else:
        x = jax.ShapeDtypeStruct((1, config.text.context_length), jnp.int32)
        ours = jaxpr_flops(lambda s, x: nnx.merge(graphdef, s).text_features(x), state, x)
        t = config.text
        tokens, width, mlp = t.context_length, t.width, t.mlp_width
    if tower == "image" and config.vision.is_resnet:
        return ours, ours  # the attention pool queries the mean token only, in both
    if tower == "image" and isinstance(config, SiglipConfig):
        return ours, ours  # the MAP head reads every token, so every block runs over all of them, in both
    # open_clip runs the last block over every token; clip_jax over the pooled one: add the difference.
    block = lambda n: 2 * n * width * (4 * width + 2 * mlp) + 4 * n * tokens * width
    return ours, ours + block(tokens) - block(1)


# --- the table ---------------------------------------------------------------------------------------


def report(name: str, target: str, attention: str | None = None, trace: int = 0, dump: str | None = None,
           per_chip: int | None = None) -> list[dict]:
    """One row per tower of `name` compiled for `target` (see the module docstring), `per_chip` items a
    chip (default: the recommended batch)."""
    config = model_config(name)
    chip = chip_of(target)
    mp = MODEL_PARALLEL.get(name, 1)
    rows = []
    for tower, program in (("image", "image_features"), ("text", "text_features")):
        c = compile_program(config, target, program, per_chip=per_chip, model_parallel=mp, attention=attention)
        ours, oc = flops_per_item(config, tower)
        cost = c.cost or {}
        per = lambda x, n=c.per_chip: None if x is None else x / n  # the cost analysis is per chip
        xla_bytes, xla_flops = per(cost.get("bytes accessed")), per(cost.get("flops"))
        hbm = per(hbm_bytes(c.text)) if platform_of(target) == "tpu" else None
        # Split along "model", a chip does 1/mp of each item's FLOPs, for mp times fewer items a chip.
        bound = chip.bf16_flops / (ours / mp)
        if hbm:
            bound = min(bound, chip.hbm_bandwidth / hbm)
        bound /= mp
        args, temps, total = c.memory_parts
        rows.append(dict(model=name, target=target, tower=tower, per_chip=c.per_chip, gflops=ours / 1e9,
                         open_clip_gflops=oc / 1e9, xla_gflops=None if xla_flops is None else xla_flops / 1e9,
                         xla_mb=None if xla_bytes is None else xla_bytes / 1e6,
                         hbm_mb=None if hbm is None else hbm / 1e6, roofline=bound,
                         intensity=ours / mp / hbm if hbm else None,  # FLOPs per HBM byte, a chip's share
                         args_gb=args / 1e9, temps_gb=temps / 1e9,
                         memory_gb=total / 1e9, hbm_gb=chip.hbm_bytes / 1e9, compile_s=c.seconds,
                         model_parallel=mp, collectives=len(collectives(c.text))))
        for b, line in hbm_traffic(c.text)[:trace] if platform_of(target) == "tpu" else ():
            print(f"    {tower}: {b / c.per_chip / 1e3:8.1f} KB/item  {line[:160]}")
        if dump:
            path = Path(dump) / f"{name.replace('/', '-')}_{target.replace(':', '_')}_{tower}.hlo.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(c.text)
    return rows


HEAD = ("model", "target", "tower", "batch/chip", "GFLOP/item", "open_clip", "XLA GFLOP", "XLA MB/item",
        "HBM MB/item", "FLOP/HBM byte", "roofline/s/chip", "memory GB (args + temps = total / HBM)", "collectives",
        "compile s")


def row_text(r: dict) -> str:
    """One row of `report` as a line of the table under HEAD."""
    fmt = lambda x, f: "-" if x is None else format(x, f)
    memory = f"{r['args_gb']:.2f} + {r['temps_gb']:.2f} = {r['memory_gb']:.2f} / {r['hbm_gb']:.0f}"
    return " | ".join([r["model"] + (f" (model {r['model_parallel']})" if r["model_parallel"] > 1 else ""),
                       r["target"], r["tower"], str(r["per_chip"]), fmt(r["gflops"], ".2f"),
                       fmt(r["open_clip_gflops"], ".2f"), fmt(r["xla_gflops"], ".2f"), fmt(r["xla_mb"], ".1f"),
                       fmt(r["hbm_mb"], ".1f"), fmt(r["intensity"], ".0f"), fmt(r["roofline"], ",.0f"), memory,
                       str(r["collectives"]), f"{r['compile_s']:.0f}"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS + SIGLIP_MODELS))
    ap.add_argument("--targets", nargs="+", default=list(TARGETS))
    ap.add_argument("--trace", type=int, default=0, metavar="N",
                    help="list the N instructions of each TPU program that move the most HBM bytes")
    ap.add_argument("--dump", metavar="DIR", help="write each compiled program's HLO text there")
    ap.add_argument("--train", type=int, default=0, metavar="PER_CHIP",
                    help="also compile the train step (data parallel, bf16 compute, float32 params) at this "
                         "batch per chip, without and with remat, on the TPU targets")
    ap.add_argument("--per-chip", type=int, default=None, metavar="N",
                    help="inference batch per chip (default: the recommended one, RECOMMENDED_PER_CHIP)")
    ap.add_argument("--attention", choices=("xla", "cudnn"), default=None,
                    help="dot_product_attention's implementation on the GPU targets (default: JAX's choice; "
                         "tests/test_aot.py's full-size GPU checks use cudnn)")
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__}, libtpu {_version('libtpu')}, CUDA plugin {_version('jax-cuda12-plugin')}; "
          f"bf16 compute and params, uint8 images; per chip; roofline = min(peak bf16 FLOP/s / FLOPs, HBM B/s / "
          f"HBM bytes), both per chip, over the chips a \"model\" split shares an item with (GPU: FLOPs only: no "
          f"cost analysis there)")
    for t in sorted({t.split(':')[0] for t in args.targets}):
        print(f"  {CHIPS[t].name}: {CHIPS[t].source}")
    print(" | ".join(HEAD))
    for target in args.targets:
        for name in args.models:
            try:
                attention = args.attention if platform_of(target) == "gpu" else None
                rows = report(name, target, attention, trace=args.trace, dump=args.dump, per_chip=args.per_chip)
            except Unavailable as e:
                print(f"{name} | {target} | skipped: {e}")
                continue
            for r in rows:
                print(row_text(r), flush=True)
            if args.train and platform_of(target) == "tpu":
                for remat in (False, True):
                    c = compile_train_step(model_config(name), target, args.train, remat=remat)
                    print(f"{name} | {target} | {c.program} | {c.per_chip} | memory {c.memory / 1e9:.2f} / "
                          f"{chip_of(target).hbm_bytes / 1e9:.0f} GB | {len(collectives(c.text))} collectives "
                          f"| {c.seconds:.0f} s", flush=True)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
