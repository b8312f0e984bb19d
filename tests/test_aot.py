"""Compiled for TPU pods and GPUs on this CPU machine, ahead of time (benchmarks/aot.py's helpers).

What these support: the programs compile for those chips; their memory at the recommended batch fits
the chip; the collectives are the ones the sharding implies (none at all in data-parallel inference,
the gradient's all-reduce over "data" in training, no all-gather of the image batch); no gather or
scatter over a batch (the uint8 normalization is a multiply-add there); the GPU program gets cuDNN
attention and convolutions. Not what they run like, nor their numerics on the chip: nothing here has
run on a TPU or a GPU (tests/test_gpu.py and benchmarks/gpu.sh do that when a GPU is lent).

The default run compiles, for TPUs (60-90 CPU-seconds here, 45 s wall under -n 2), with libtpu (pip
install -e ".[aot-tpu]"; .ci/run installs it; without it these skip, saying so):
- ViT-B/32's widths and patch grid, 2 blocks, at the recommended 256 images a chip on a v5e 2x2. The
  batch is the recommended one, not a smaller one scaled up: a TPU program's memory isn't linear in
  the batch (what fits in the chip's 128 MiB of VMEM never reaches HBM: 5.8, 0, 57, 243 MB of HBM
  temporaries at 8, 64, 128, 256 a chip). The depth is scaled by the params, which are linear in the
  blocks; inference temporaries grow little with them (243, 247, ~290 MB for 2, 4, 12 blocks: the
  scaled 0.55 GB against the full tower's 0.59 GB, of 16 GiB).
- The text and image steps of ShardedCLIP over the mesh make_mesh builds for a 4-host v5p 2x2x4.
- The pmap form, the training step (v5e 2x2 and the 4-host v5p) and the model-parallel split, on
  tests/tiny.py's CLIP (widths of 32): the collectives come from the shardings, whatever the widths.
- SigLIP So400m/14-384's towers, 2 blocks each, at 256 a chip on a v5e 2x2 (memory scaled to 27 blocks
  by the tower's params); on a small SigLIP its MAP head's Megatron split, its pmap form and ShardedCLIP's
  steps over the 4-host v5p; on an H200 its cuDNN attention (every block and the MAP head); the whole
  model under `pytest -m slow`.
Compile time grows with the code the TPU backend emits (about 58k instruction bundles per ViT-B/32
block at 256 a chip, 90% of the time in the backend passes), so a full ViT-B/32 tower takes minutes:
`pytest -m slow` has the full-size checks (ViT-B/32, ViT-L/14, RN50, bigG-14 with model parallel on
v5e 2x2 and 16x16, v5p 2x2x4, H200 x1 and x8; the pmap form and the train step at full size).

GPUs: the H200 checks need XLA's CUDA plugin (pip install -e ".[aot-gpu]") and skip without it, so CI
doesn't run them. The plugin can't join the test extra: on a machine without CUDA each of its shared
objects logs "Could not find cuda drivers" when jax loads it, 6 to 8 lines on stderr in every process
that imports jax, whatever JAX_PLATFORMS, TF_CPP_MIN_LOG_LEVEL, GLOG_minloglevel, ABSL_MIN_LOG_LEVEL or
CUDA_VISIBLE_DEVICES say (jax-cuda12-plugin 0.10.2), and the command line's one-line errors
(tests/test_convert.py, tests/test_cli.py) then fail. libtpu has its own extra for a like reason (it logs
TPU errors in every process without a TPU unless JAX_PLATFORMS=cpu), but .ci/run installs it and sets
JAX_PLATFORMS=cpu, where it is silent.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from benchmarks import aot
from clip_jax.parallel import ShardedCLIP, make_mesh
from tests.tiny import TINY

pytestmark = pytest.mark.aot


def target_devices(target: str):
    try:
        return aot.devices(target)
    except aot.Unavailable as e:
        pytest.skip(str(e))


def param_bytes(config) -> int:
    """Bytes of a CLIP's params and statistics in bf16, as the compiled programs hold them."""
    from clip_jax.checkpoint.torch_names import expected_params

    return 2 * sum(int(np.prod(s)) for s in expected_params(config).values())


def check_program(c: aot.Compiled, config, tower: str, full=None) -> None:
    """Memory, gathers and collectives of one compiled image or text program. `full`: the config
    `config` is a shallower copy of; the memory is then scaled to its depth by the params."""
    chip = aot.chip_of(c.target)
    # A program holds both towers' params; the blocks the shallow copy lacks add theirs.
    memory = c.memory + (param_bytes(full) - param_bytes(config) if full is not None else 0)
    assert memory < 0.9 * chip.hbm_bytes, f"{memory / 1e9:.1f} GB at {c.per_chip}/chip on {chip.name}"
    if c.target.startswith("h200"):
        assert memory < 0.9 * 80e9  # an 80 GB H100 holds it too
    # A gather over a whole batch (the uint8 table lookup, or a replicated activation): none. The pooled
    # token's row gather ([per_chip, width]) is small and allowed; the text tower's token embedding is
    # a row gather by design.
    if tower == "image":
        per_image = config.vision.image_size**2 * 3 // 4
        big = aot.batch_sized(aot.ops(c.text, "gather") + aot.ops(c.text, "scatter"), c.per_chip, per_image)
        assert not big, big[:3]
    # Data parallel, params replicated: each chip receives its own rows of the batch (uint8 images or
    # int32 tokens), computes them, and nothing crosses chips.
    batch = [dims for dt, dims in aot.entry_parameters(c.text) if dt in ("u8", "s32") and len(dims) in (2, 4)]
    assert batch and all(dims[0] == c.per_chip for dims in batch), batch
    assert not aot.collectives(c.text), aot.collectives(c.text)[:3]


# budget: 20 s; the default run compiles the image tower for TPU and checks it (check_program) on the multi-host v5p
@pytest.mark.slow
def test_image_tower_on_a_v5e_slice():
    """ViT-B/32's widths and patch grid (2 blocks), bf16, uint8 images, 256 a chip on a v5e 2x2; and
    what the cost analysis counts."""
    target_devices("v5e:2x2")
    full = aot.model_config("ViT-B/32")
    config = aot.shrunk(full)
    c = aot.compile_program(config, "v5e:2x2", "image_features")
    assert c.per_chip == aot.RECOMMENDED_PER_CHIP["tpu"]
    check_program(c, config, "image", full=full)
    cost = c.cost
    # The cost analysis is per chip: its FLOPs over one chip's images are the jaxpr's per image (over
    # the 1024 images of the whole program they would be 4x fewer).
    counted, _ = aot.flops_per_item(config, "image")
    assert cost["flops"] / c.per_chip == pytest.approx(counted, rel=0.03)
    # Its "bytes accessed" is every instruction's operands and results, padded to their tiles, in any
    # memory space: hbm_traffic counting every space gives the same sum; HBM alone is under half of it.
    every_space = sum(b for b, _ in aot.hbm_traffic(c.text, include_vmem=True))
    assert every_space == pytest.approx(cost["bytes accessed"], rel=0.05)
    hbm = aot.hbm_bytes(c.text) / c.per_chip
    # ~4 MB of HBM traffic an image for 2 blocks (the attention's f32 scores and probabilities, padded
    # from 50 to 128 lanes, are the most); the table-lookup normalization alone made it ~26 GB.
    assert hbm < 0.5 * cost["bytes accessed"] / c.per_chip and hbm < 6e6, hbm


def sharded_step(config, target: str, kind: str = "image", model_parallel: int = 1, per_chip: int = 256):
    devs = target_devices(target)
    mesh = make_mesh(model_parallel, devs)
    sharded = ShardedCLIP(aot.abstract_sharded(config, mesh), mesh, batch_size=per_chip * mesh.shape["data"])
    compiled = sharded.lower(kind, sharded.batch_size, normalized=True).compile()
    return sharded, aot.Compiled(target, f"sharded {kind}", sharded.batch_size, per_chip, compiled, 0.0)


def test_sharded_steps_on_a_multi_host_v5p_slice():
    """ShardedCLIP's compiled steps over the mesh make_mesh builds for 16 chips on 4 hosts: each host's
    chips hold one contiguous block of the batch, and neither step has a collective."""
    devs = target_devices("v5p:2x2x4")
    assert len({d.process_index for d in devs}) == 4
    config = aot.shrunk(aot.model_config("ViT-B/32"), layers=1)
    for kind in ("image", "text"):
        sharded, c = sharded_step(config, "v5p:2x2x4", kind, per_chip=32)
        rows = np.arange(sharded.batch_size).reshape(sharded.mesh.shape["data"], -1)
        for p in range(4):
            held = sorted(i for d, r in zip(sharded.mesh.devices[:, 0], rows) if d.process_index == p for i in r)
            assert held == list(range(held[0], held[0] + len(held)))
        check_program(c, config, kind)


def test_pmap_form_on_a_v5e_slice():
    """clip_jax.pmap_logits for the 4 chips of a v5e 2x2: each chip scores its own 8 images against its
    own 8 texts, with no collective."""
    target_devices("v5e:2x2")
    c = aot.compile_pmap(TINY, "v5e:2x2", per_device=8)
    assert not aot.collectives(c.text), aot.collectives(c.text)[:3]
    # Bigger than the token embedding's row gather (by design) and than a quarter image per pair.
    per_pair = max(TINY.vision.image_size**2 * 3 // 4, TINY.text.context_length * TINY.text.width + 1)
    big = aot.batch_sized(aot.ops(c.text, "gather") + aot.ops(c.text, "scatter"), 8, per_pair)
    assert not big, big[:3]
    assert c.memory < 0.9 * aot.chip_of("v5e:2x2").hbm_bytes


def trainable_elements(config) -> int:
    from clip_jax.checkpoint.torch_names import expected_params

    return sum(int(np.prod(s)) for name, s in expected_params(config).items() if "running_" not in name)


def check_train_step(c: aot.Compiled, config, n_devices: int) -> None:
    """The data-parallel step's collectives: every trainable param's gradient summed over "data", and
    nothing gathered but the features the global contrastive loss scores against each other; nothing
    permuted bigger than one chip's chunk of features (the in-batch accuracy's ring, top1_sharded, which
    XLA serves mostly from the gathered features)."""
    reduces = aot.ops(c.text, "all-reduce")
    assert reduces and all(aot.group_size(line, n_devices) == n_devices for line in reduces), reduces[:3]
    summed = sum(int(np.prod(s)) for line in reduces for s in aot.result_shapes(line))
    assert summed >= trainable_elements(config), (summed, trainable_elements(config))
    gathered = {s for line in aot.ops(c.text, "all-gather") for s in aot.result_shapes(line)}
    assert gathered <= {(c.batch, config.embed_dim)}, gathered
    assert not aot.ops(c.text, "all-to-all")
    chunk = c.per_chip * config.embed_dim
    assert all(np.prod(s) <= chunk for line in aot.ops(c.text, "collective-permute") for s in aot.result_shapes(line)
               if len(s) == 2), aot.ops(c.text, "collective-permute")[:2]
    assert c.memory < 0.9 * aot.chip_of(c.target).hbm_bytes


# budget: the 4-host v5p slice's step is slow (10 s); its multi-host sharding is checked on inference in the default run
@pytest.mark.parametrize("target", ["v5e:2x2", pytest.param("v5p:2x2x4", marks=pytest.mark.slow)])
def test_train_step_data_parallel(target):
    """Trainer's jitted step over make_mesh's mesh of a v5e 2x2 and of a 4-host v5p 2x2x4, 8 pairs a
    chip: the gradient is all-reduced over all chips, the batch is never all-gathered."""
    devs = target_devices(target)
    c = aot.compile_train_step(TINY, target, per_chip=8)
    check_train_step(c, TINY, len(devs))


@functools.cache
def model_parallel_program(target: str, model_parallel: int, program: str) -> aot.Compiled:
    return aot.compile_program(TINY, target, program, per_chip=8, model_parallel=model_parallel)


def test_model_parallel_collectives_stay_in_the_model_axis():
    """make_mesh(model_parallel=2) on a v5e 2x2 (2 x 2): the Megatron split's collectives run within
    each "model" pair, never across the "data" axis, and nothing batch-sized is all-gathered over it."""
    target_devices("v5e:2x2")
    c = model_parallel_program("v5e:2x2", 2, "image_features")
    lines = aot.collectives(c.text)
    # Partition i is mesh.devices.flat[i]: the "model" pairs are (0, 1) and (2, 3).
    groups = [g for line in lines for g in aot.replica_groups(line, 4)]
    assert lines and all(len({i // 2 for i in g}) == 1 for g in groups), lines[:3]


def test_model_parallel_split_is_megatron():
    """The split as declared: per block, one all-reduce after out_proj and one after c_proj, over
    "model"; no all-gather or all-to-all, and nothing of activation size permuted. (What a contiguous
    split of the fused q|k|v columns and of ViT's patch embedding gave before: 32 collectives for 2
    blocks, permutes of q, k, v and LayerNorm statistics all-reduced.) One permute of the in_proj
    bias's k, v part in the pooled last block (a vector of the width) is left: 2 x width bytes."""
    target_devices("v5e:2x2")
    c = model_parallel_program("v5e:2x2", 2, "image_features")
    others = [line for line in aot.collectives(c.text) if " all-reduce" not in line]
    small = lambda line: "collective-permute" in line and aot.shape_elements(line) <= TINY.vision.width
    assert all(small(line) for line in others), others
    assert len(aot.ops(c.text, "all-reduce")) == 2 * TINY.vision.layers


def test_gpu_cudnn_attention_and_convolutions():
    """An H200 from XLA's spec: cuDNN fused attention in both towers (the pooled query with key
    lengths in the text tower), the patch embedding as a cuDNN convolution, cuBLASLt matmuls."""
    target_devices("h200:1x1x1")
    config = aot.shrunk(aot.model_config("ViT-B/32"))
    image = aot.compile_program(config, "h200:1x1x1", "image_features", attention="cudnn")
    text = aot.compile_program(config, "h200:1x1x1", "text_features", attention="cudnn")
    for c, tower in ((image, "image"), (text, "text")):
        check_program(c, config, tower, full=aot.model_config("ViT-B/32"))
        calls = "\n".join(aot.ops(c.text, "custom-call"))
        assert "__cudnn$fmha" in calls and "__cublas$lt$matmul" in calls
    assert "__cudnn$conv" in "\n".join(aot.ops(image.text, "custom-call"))
    # The text tower's last block queries the pooled token only, with key lengths (causal).
    assert sum("fmha" in line for line in aot.ops(text.text, "custom-call")) >= config.text.layers


# --- full size: minutes each ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("target", aot.TARGETS)
@pytest.mark.parametrize("name", aot.MODELS)
def test_full_model_compiles_and_fits(name, target):
    target_devices(target)
    config = aot.model_config(name)
    mp = aot.MODEL_PARALLEL.get(name, 1)
    attention = "cudnn" if aot.platform_of(target) == "gpu" and not config.vision.is_resnet else None
    for tower, program in (("image", "image_features"), ("text", "text_features")):
        c = aot.compile_program(config, target, program, model_parallel=mp, attention=attention)
        if mp == 1:
            check_program(c, config, tower)
        else:  # the Megatron split's collectives, within "model" only (see the xfail above)
            assert c.memory < 0.9 * aot.chip_of(target).hbm_bytes
            n = len(aot.devices(target))
            assert all(len({i // mp for i in g}) == 1 for line in aot.collectives(c.text)
                       for g in aot.replica_groups(line, n))
        if aot.platform_of(target) == "gpu" and config.vision.is_resnet and tower == "image":
            assert "__cudnn$convBiasActivationForward" in c.text  # conv + folded BN + ReLU in one kernel


@pytest.mark.slow
@pytest.mark.parametrize("target", ["v5e:16x16", "h200:1x1x8"])
def test_clip_logits_and_sharded_step_full_size(target):
    target_devices(target)
    config = aot.model_config("ViT-B/32")
    c = aot.compile_program(config, target, "__call__")
    assert c.memory < 0.9 * aot.chip_of(target).hbm_bytes
    _, step = sharded_step(config, target)
    check_program(step, config, "image")


@pytest.mark.slow
def test_pmap_form_full_size():
    """ViT-B/32 under pmap_logits at 256 pairs a chip on a v5e 2x2: fits, no collective."""
    target_devices("v5e:2x2")
    c = aot.compile_pmap(aot.model_config("ViT-B/32"), "v5e:2x2", per_device=256)
    assert not aot.collectives(c.text)
    assert c.memory < 0.9 * aot.chip_of("v5e:2x2").hbm_bytes


@pytest.mark.slow
@pytest.mark.parametrize("target", ["v5e:2x2", "v5p:2x2x4"])
def test_train_step_full_size(target):
    """ViT-B/32's train step at the recommended batch (aot.TRAIN_PER_CHIP): fits, gradient all-reduced."""
    devs = target_devices(target)
    config = aot.model_config("ViT-B/32")
    c = aot.compile_train_step(config, target, per_chip=aot.TRAIN_PER_CHIP["ViT-B/32"])
    check_train_step(c, config, len(devs))


# --- SigLIP: So400m/14-384 ---------------------------------------------------------------------------
#
# SigLIP's image program holds only the image tower's params (and its text program the text tower's):
# its names are all under "visual." or "text.". So the depth of a shallow copy is scaled by that tower's
# params alone. What the full size measured (pytest -m slow, benchmarks/aot.py), bf16, 256 a chip on a
# v5e 2x2: image 0.97 GB of arguments + 13.73 GB of temporaries = 14.70 GB of 17.2 (the attention's
# float32 scores over 729 tokens, 16 heads, are most of it), text 1.63 GB; 670 GFLOP an image.

SIGLIP = "So400m/14-384"


def tower_param_bytes(config, tower: str) -> int:
    """Bytes of one SigLIP tower's params in bf16 (image: "visual.*", text: "text.*")."""
    from clip_jax.checkpoint.torch_names import expected_params

    prefix = "visual." if tower == "image" else "text."
    return 2 * sum(int(np.prod(s)) for name, s in expected_params(config).items() if name.startswith(prefix))


def check_siglip_program(c: aot.Compiled, config, tower: str, full=None) -> None:
    """check_program's checks (fits, no batch-sized gather, each chip its own rows, no collective), the
    memory scaled to `full`'s depth by the params of the one tower the program holds."""
    check_program(c, config, tower)
    args, _, _ = c.memory_parts
    tower_bytes = tower_param_bytes(config, tower)
    per_item = config.vision.image_size**2 * 3 if tower == "image" else 4 * config.text.context_length
    assert args == pytest.approx(tower_bytes + c.per_chip * per_item, rel=0.01)  # its tower and rows, not both
    memory = c.memory + (tower_param_bytes(full, tower) - tower_bytes if full is not None else 0)
    assert memory < 0.9 * aot.chip_of(c.target).hbm_bytes, f"{memory / 1e9:.1f} GB on {c.target}"
    if c.target.startswith("h200"):
        assert memory < 0.9 * 80e9  # an 80 GB H100 holds it too


@pytest.mark.parametrize("tower", [pytest.param("image", marks=pytest.mark.slow),
                                   pytest.param("text", marks=pytest.mark.slow)])  # slow: budget (see below)
def test_siglip_towers_on_a_v5e_slice(tower):
    """So400m/14-384's widths, 729 patches (27 x 27 of 14 pixels, no class token), MAP head and 64-token
    text, 2 blocks a tower, bf16, 256 images or texts a chip on a v5e 2x2: fits once scaled to 27 blocks,
    no collective, no batch-sized gather; the compiler's FLOPs are the jaxpr's."""
    target_devices("v5e:2x2")
    full = aot.model_config(SIGLIP)
    assert (full.vision.grid_size, full.vision.width, full.vision.mlp_width, full.text.context_length) == (
        27, 1152, 4304, 64)
    config = aot.shrunk(full)
    c = aot.compile_program(config, "v5e:2x2", f"{tower}_features")
    assert c.per_chip == aot.RECOMMENDED_PER_CHIP["tpu"]
    check_siglip_program(c, config, tower, full=full)
    counted, open_clip = aot.flops_per_item(config, tower)
    assert c.cost["flops"] / c.per_chip == pytest.approx(counted, rel=0.03)
    # The image tower runs every block over every token (the MAP head reads them all), as open_clip;
    # the text tower's last block over the pooled (last) token only.
    assert (open_clip == counted) == (tower == "image")


def test_siglip_model_parallel_map_head_is_megatron():
    """A small SigLIP (tests/siglip_parallel_checks.py) with make_mesh(model_parallel=2) on a v5e 2x2: per
    block and in the MAP head, one all-reduce after out_proj and one after c_proj, each within a "model"
    pair; nothing gathered or permuted bigger than a vector of the width."""
    from tests.siglip_parallel_checks import TINY_SIGLIP

    target_devices("v5e:2x2")
    c = aot.compile_program(TINY_SIGLIP, "v5e:2x2", "image_features", per_chip=8, model_parallel=2)
    lines = aot.collectives(c.text)
    groups = [g for line in lines for g in aot.replica_groups(line, 4)]
    assert lines and all(len({i // 2 for i in g}) == 1 for g in groups), lines[:3]
    assert len(aot.ops(c.text, "all-reduce")) == 2 * TINY_SIGLIP.vision.layers + 2
    others = [line for line in lines if " all-reduce" not in line]
    assert all(aot.shape_elements(line) <= TINY_SIGLIP.vision.width for line in others), others


def test_siglip_pmap_form_and_sharded_steps():
    """A small SigLIP under pmap_logits on a v5e 2x2 (8 pairs a chip) and in ShardedCLIP's image and text
    steps over the 4-host v5p 2x2x4 mesh: no collective, no batch-sized gather, each chip its own rows."""
    from tests.siglip_parallel_checks import TINY_SIGLIP

    target_devices("v5e:2x2")
    c = aot.compile_pmap(TINY_SIGLIP, "v5e:2x2", per_device=8)
    assert not aot.collectives(c.text), aot.collectives(c.text)[:3]
    per_pair = max(TINY_SIGLIP.vision.image_size**2 * 3 // 4, TINY_SIGLIP.text.context_length * 64 + 1)
    assert not aot.batch_sized(aot.ops(c.text, "gather") + aot.ops(c.text, "scatter"), 8, per_pair)
    target_devices("v5p:2x2x4")
    for kind in ("image", "text"):
        _, step = sharded_step(TINY_SIGLIP, "v5p:2x2x4", kind, per_chip=32)
        check_program(step, TINY_SIGLIP, kind)


def check_siglip_gpu_kernels(image: aot.Compiled, text: aot.Compiled, config) -> None:
    """cuDNN fused attention in every block of both towers and in the MAP head, the patch embedding a
    cuDNN convolution, cuBLASLt matmuls."""
    for c in (image, text):
        calls = "\n".join(aot.ops(c.text, "custom-call"))
        assert "__cudnn$fmha" in calls and "__cublas$lt$matmul" in calls
    fmha = lambda c: sum("__cudnn$fmha" in line for line in aot.ops(c.text, "custom-call"))
    assert fmha(image) >= config.vision.layers + 1 and fmha(text) >= config.text.layers
    assert "__cudnn$conv" in "\n".join(aot.ops(image.text, "custom-call"))


def test_siglip_gpu_cudnn_attention():
    """So400m/14-384, 2 blocks a tower, on an H200 from XLA's spec at 1024 a chip: cuDNN attention and
    convolutions; fits once scaled to 27 blocks."""
    target_devices("h200:1x1x1")
    full = aot.model_config(SIGLIP)
    config = aot.shrunk(full)
    image = aot.compile_program(config, "h200:1x1x1", "image_features", attention="cudnn")
    text = aot.compile_program(config, "h200:1x1x1", "text_features", attention="cudnn")
    check_siglip_program(image, config, "image", full=full)
    check_siglip_program(text, config, "text", full=full)
    check_siglip_gpu_kernels(image, text, config)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["v5e:2x2", "h200:1x1x1"])
def test_siglip_full_size_compiles_and_fits(target):
    """So400m/14-384 whole (27 blocks a tower), both towers at the recommended batch a chip."""
    target_devices(target)
    config = aot.model_config(SIGLIP)
    gpu = aot.platform_of(target) == "gpu"
    attention = "cudnn" if gpu else None
    image = aot.compile_program(config, target, "image_features", attention=attention)
    text = aot.compile_program(config, target, "text_features", attention=attention)
    check_siglip_program(image, config, "image")
    check_siglip_program(text, config, "text")
    if gpu:
        check_siglip_gpu_kernels(image, text, config)
