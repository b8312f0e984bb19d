"""Training: the loss against open_clip's, the optimizer's masks and clamp, gradient checkpointing, bf16,
data parallelism over 4 host devices, and exact resume from an orbax checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

import clip_jax
from clip_jax.config import VisionConfig
from clip_jax.model import build
from clip_jax.roles import flat_name
from clip_jax.train import (
    LOGIT_SCALE_MAX,
    Trainer,
    contrastive_loss,
    decay_mask,
    latest_step,
    optimizer,
    restore_checkpoint,
    save_checkpoint,
    schedule,
    with_remat,
)

from .tiny import TRAIN, TRAIN_RN, tiny_model, train_batch as batch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return tiny_model(TRAIN)


@pytest.fixture(scope="module")
def trainer(model):
    """One compiled train step shared by the tests below (each Trainer compiles its own)."""
    return Trainer(model, optimizer(1e-3, 30, 3, weight_decay=0.1))


def with_logit_scale(state, value: float):
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.full_like(x, value) if flat_name(p) == "logit_scale" else x, state.params)
    return state.replace(params=params)


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(la, lb))


def test_loss_matches_open_clip():
    """The symmetric InfoNCE against open_clip's ClipLoss on the same features (float32; both compute
    the same log-softmax, 1e-6 is float32 rounding on values ~5)."""
    torch = pytest.importorskip("torch")
    from open_clip.loss import ClipLoss

    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(2, 16, 32)).astype(np.float32)
    img /= np.linalg.norm(img, axis=-1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=-1, keepdims=True)
    want = ClipLoss()(torch.from_numpy(img), torch.from_numpy(txt), torch.tensor(20.0)).item()
    got = contrastive_loss(20.0 * jnp.asarray(img) @ jnp.asarray(txt).T)
    np.testing.assert_allclose(got, want, rtol=1e-6)

    # Each direction counted once, and stable where exp() of a logit overflows float32: logits of OpenAI's
    # largest scale (100; exp(100) > 3.4e38) whose two directions differ by 1.5 (3% of the loss), against
    # the mean of the two cross-entropies in float64 (1e-6 relative is a few float32 ulps; measured 2e-9).
    logits = (100 * rng.uniform(-1, 1, (8, 8))).astype(np.float32)
    x, diag = logits.astype(np.float64), np.diag(logits).astype(np.float64)
    logsumexp = lambda axis: x.max(axis) + np.log(np.exp(x - x.max(axis, keepdims=True)).sum(axis))
    rows, columns = np.mean(logsumexp(1) - diag), np.mean(logsumexp(0) - diag)
    assert abs(rows - columns) > 1
    np.testing.assert_allclose(float(contrastive_loss(logits)), (rows + columns) / 2, rtol=1e-6)


def test_loss_decreases_on_a_fixed_batch(model, trainer):
    state = trainer.init()
    images, tokens = batch()
    losses = []
    for _ in range(30):
        state, metrics = trainer.step(state, images, tokens)
        losses.append(float(metrics["loss"]))
    assert losses[0] == pytest.approx(float(trainer.evaluate(trainer.init(), images, tokens)["loss"]), rel=1e-6)
    final = float(trainer.evaluate(state, images, tokens)["loss"])
    assert final < 0.25 * losses[0], losses
    assert int(state.step) == 30
    # the trained model is an ordinary CLIP holding the state's params; the input model is untouched
    trained = trainer.model(state)
    logits, _ = clip_jax.clip_logits(trained, images, tokens, trim=False)  # jitted (eager: ~6 s of CPU)
    np.testing.assert_allclose(float(contrastive_loss(logits)), final, atol=1e-6)  # another program's rounding
    assert not np.array_equal(trained.visual.proj[...], model.visual.proj[...])


def test_weight_decay_mask_by_name():
    """Decay on Linear/conv weights and the projections only; not on norms, biases, embeddings,
    logit_scale, nor on BatchNorm's scale and bias (ResNet)."""
    for config in (TRAIN, TRAIN_RN):
        _, params, _ = nnx.split(nnx.eval_shape(lambda: build(config)), nnx.Param, ...)
        mask = {flat_name(p): m for p, m in jax.tree_util.tree_leaves_with_path(decay_mask(params))}
        decayed = {n for n, m in mask.items() if m}
        assert decayed == {n for n in mask if n.endswith(".kernel") or n in ("visual.proj", "text_projection")}
        assert not any(mask[n] for n in ("logit_scale", "positional_embedding", "token_embedding.embedding"))
    assert "visual.bn1.scale" in mask and not mask["visual.bn1.scale"]
    assert not mask["visual.attnpool.positional_embedding"]


def test_weight_decay_applies_by_mask(trainer):
    """With zero gradients, AdamW's decoupled decay moves exactly the masked params."""
    params = trainer.init().params
    tx = optimizer(1e-2, 10, 0, weight_decay=0.5)
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    names = {flat_name(p): np.asarray(u) for p, u in jax.tree_util.tree_leaves_with_path(updates)}
    assert np.any(names["visual.proj"] != 0) and np.any(names["visual.conv1.kernel"] != 0)
    assert np.all(names["positional_embedding"] == 0) and np.all(names["visual.class_embedding"] == 0)
    assert np.all(names["visual.transformer.resblocks.0.ln_1.scale"] == 0)
    assert np.all(names["transformer.resblocks.0.mlp.c_fc.bias"] == 0)
    assert np.all(names["logit_scale"] == 0)


def test_schedule_warms_up_then_decays_by_cosine(trainer):
    """The learning rate: linear from 0 over warmup_steps, then half a cosine down to end_factor x the peak
    at total_steps, as written out here. The optimizer follows it update by update: for a constant unit
    gradient, AdamW's bias-corrected first moment over the root of its second is 1, so update t of each
    entry is -lr(t) / (1 + eps). Tolerance 1e-5 relative: float32 (measured 1.2e-6 for the schedule, 1.7e-6
    for the updates). Without warmup, update 0 is the peak instead of 0; a linear decay instead of the
    cosine is off by up to 10% of the peak."""
    peak, total, warmup = 1e-2, 12, 4

    def lr(t: int, end: float) -> float:
        if t < warmup:
            return peak * t / warmup
        t = min(t, total)
        return end * peak + (1 - end) * peak * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))) / 2

    steps = range(total + 2)
    for end in (0.0, 0.1):
        got = [float(schedule(peak, total, warmup, end_factor=end)(t)) for t in steps]
        np.testing.assert_allclose(got, [lr(t, end) for t in steps], rtol=1e-5, atol=1e-9)

    tx = optimizer(peak, total, warmup, weight_decay=0.0)
    params = trainer.init().params
    ones, opt_state = jax.tree.map(jnp.ones_like, params), tx.init(params)
    update = jax.jit(tx.update)
    for t in steps:
        updates, opt_state = update(ones, opt_state, params)
        for leaf in (updates["logit_scale"], updates["visual"]["proj"]):
            np.testing.assert_allclose(leaf[...], -lr(t, 0.0) / (1 + 1e-6), rtol=1e-5, atol=1e-9, err_msg=f"step {t}")


def test_max_grad_norm_clips_the_gradient(trainer):
    """optimizer(max_grad_norm=c) hands AdamW the gradient scaled down to global norm c when it is longer:
    two updates (a long gradient, then a short one of another direction: Adam's first update is about the
    gradient's sign whatever its length) equal those of AdamW without clipping on gradients clipped here,
    and differ from AdamW's on the raw ones by far more than the tolerance."""
    params = trainer.init().params
    rng = np.random.default_rng(0)
    draw = lambda scale: jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype), params)
    long, short = draw(1.0), draw(1e-4)
    norm = lambda g: math.sqrt(sum(float(np.sum(np.square(np.asarray(x, np.float64)))) for x in jax.tree.leaves(g)))
    assert norm(long) > 100 and norm(short) < 1
    clipped = jax.tree.map(lambda x: x * np.float32(1 / norm(long)), long)

    def updates(tx, *runs):
        """The updates of each run (gradients in order, from a fresh optimizer state), flattened."""
        update, out = jax.jit(tx.update), []
        for grads in runs:
            state, out_run = tx.init(params), []
            for g in grads:
                u, state = update(g, state, params)
                out_run.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(u)]))
            out.append(out_run)
        return out

    (got,) = updates(optimizer(1e-3, 10, 0, weight_decay=0.0, max_grad_norm=1.0), [long, short])
    plain, unclipped = updates(optimizer(1e-3, 10, 0, weight_decay=0.0), [clipped, short], [long, short])
    for g, w in zip(got, plain):  # updates of ~1e-3, float32 rounding of the clipped gradient: measured 3.5e-10
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-9)
    assert np.abs(unclipped[1] - plain[1]).max() > 1e-4  # measured 1.3e-3


def test_logit_scale_clamped_after_update(trainer):
    """The parameter itself is clipped to [0, ln 100] after each update, as OpenAI and open_clip do."""
    state, metrics = trainer.step(with_logit_scale(trainer.init(), 5.0), *batch())  # above ln(100) = 4.605
    assert float(state.params["logit_scale"][...]) == np.float32(LOGIT_SCALE_MAX)
    np.testing.assert_allclose(metrics["logit_scale"], 100.0, rtol=1e-6)
    state, _ = trainer.step(with_logit_scale(trainer.init(), -1.0), *batch())
    assert float(state.params["logit_scale"][...]) == 0.0
    state, _ = trainer.step(with_logit_scale(trainer.init(), 3.0), *batch())
    assert 2.9 < float(state.params["logit_scale"][...]) < 3.1  # inside the range: left to the optimizer
    assert LOGIT_SCALE_MAX == math.log(100)


def saved_residual_bytes(trainer, images, tokens, capsys) -> int:
    """Bytes the backward pass keeps from the forward pass (jax.ad_checkpoint.print_saved_residuals)."""
    state = trainer.init()
    capsys.readouterr()
    print_saved_residuals(lambda p: trainer._loss(p, state.frozen, images, tokens)[0], state.params)
    sizes = {"f32": 4, "bf16": 2, "f16": 2, "i32": 4, "bool": 1, "u8": 1}
    return sum(sizes[dt] * math.prod(int(d) for d in dims.split(",") if d)
               for dt, dims in re.findall(r"\b(f32|bf16|f16|i32|bool|u8)\[([\d,]*)\]", capsys.readouterr().out))


def test_remat_same_step_and_keeps_less(model, trainer, capsys):
    """Gradient checkpointing: the same updated params (the recomputation repeats the same float32
    operations), and much less kept for the backward pass; a policy that saves the matmuls keeps more."""
    images, tokens = batch()
    remat = Trainer(model, optimizer(1e-3, 30, 3, weight_decay=0.1), remat=True)
    # what the backward pass keeps, on a deeper tower (tracing only, nothing compiled): measured 3.4 MB
    # with remat vs 28 MB without for 4 vision blocks and 16 pairs (remat keeps each block's input), and
    # 12 MB when the matmuls' outputs are saved too ("dots_saveable")
    deep = tiny_model(dataclasses.replace(TRAIN, vision=VisionConfig(image_size=32, layers=4, width=64, patch_size=4)))
    deep_images, deep_tokens = batch(16)
    kept = [saved_residual_bytes(Trainer(deep, optimizer(1e-3, 10, 0), remat=r, remat_policy=policy), deep_images,
                                 deep_tokens, capsys)
            for r, policy in ((True, "nothing_saveable"), (True, "dots_saveable"), (False, "nothing_saveable"))]
    assert 0 < kept[0] < 0.25 * kept[2] and 2 * kept[0] < kept[1] < kept[2], kept
    a, _ = trainer.step(trainer.init(), images, tokens)
    b, _ = remat.step(remat.init(), images, tokens)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    # the model handed back computes without remat, and the input model was not changed
    assert remat.model(b).visual.transformer.remat is False and remat.model(b).transformer.remat is False
    assert model.visual.transformer.remat is False and remat.graphdef != trainer.graphdef
    with pytest.raises(ValueError, match="remat_policy must be one of"):
        Trainer(model, optimizer(1e-3, 10, 0), remat=True, remat_policy="everything")


@pytest.mark.slow  # budget: 9 s; test_remat_same_step_and_keeps_less checks a remat step in the default run
@pytest.mark.parametrize("config,blocks", [(TRAIN, 1 + 1), (TRAIN_RN, 4 + 1)], ids=["vit", "resnet"])
def test_remat_gradients_equal_and_remat_applies(config, blocks):
    """The gradient of the loss with remat equals the one without, to float32 rounding: 4e-6 of its
    largest entry (measured 0 for the ViT, 9.7e-7 for the ResNet, whose recomputed convolutions XLA fuses
    otherwise). And the option is applied: the gradient's program holds one remat per residual block
    (ViT and text blocks, or Bottlenecks), none without."""
    model, (images, tokens) = tiny_model(config), batch()
    grads, counts = [], []
    for remat in (False, True):
        trainer = Trainer(model, optimizer(1e-3, 10, 0), remat=remat)
        state = trainer.init()
        grad = jax.grad(lambda p: trainer._loss(p, state.frozen, images, tokens)[0])
        counts.append(str(jax.make_jaxpr(grad)(state.params)).count("remat2["))
        grads.append(jax.tree.leaves(jax.jit(grad)(state.params)))
    assert counts == [0, blocks]
    scale = max(float(np.abs(g).max()) for g in grads[0])
    assert scale > 0.1
    for want, got in zip(*grads):
        np.testing.assert_allclose(got, want, rtol=0, atol=4e-6 * scale)


def test_with_remat_sets_the_option_on_a_copy(model):
    """with_remat: a copy whose transformer stacks carry the option (the arrays shared, the model itself
    unchanged); its forward pass is the model's."""
    copy = with_remat(model, "dots_with_no_batch_dims_saveable")
    stacks = (copy.visual.transformer, copy.transformer)
    assert all(s.remat and s.remat_policy == "dots_with_no_batch_dims_saveable" for s in stacks)
    assert model.visual.transformer.remat is False
    assert copy.visual.proj[...] is model.visual.proj[...]


def test_bf16_compute_trains_float32_params():
    model = tiny_model(TRAIN, dtype="bfloat16")
    trainer = Trainer(model, optimizer(1e-3, 20, 2, weight_decay=0.1))
    state = trainer.init()
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    images, tokens = batch()
    first = float(trainer.evaluate(state, images, tokens)["loss"])
    for _ in range(20):
        state, metrics = trainer.step(state, images, tokens)
    assert metrics["loss"].dtype == jnp.float32
    assert float(trainer.evaluate(state, images, tokens)["loss"]) < 0.5 * first
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}


def test_bad_batches_named(trainer):
    state = trainer.init()
    images, tokens = batch()
    with pytest.raises(ValueError, match="as many images as texts"):
        trainer.step(state, images, tokens[:4])
    with pytest.raises(ValueError, match="32x32"):
        trainer.step(state, np.zeros((8, 64, 64, 3), np.uint8), tokens)
    with pytest.raises(ValueError, match="warmup_steps"):
        optimizer(1e-3, 10, 10)


def test_resnet_remat_and_frozen_batchnorm_statistics():
    """ModifiedResNet: the bottlenecks are rematerialized too (their gradients: the test above);
    BatchNorm's running statistics are kept apart from the trained params (in `frozen`), its scale and
    bias are trained."""
    trainer = Trainer(tiny_model(TRAIN_RN), optimizer(1e-3, 10, 0), remat=True)
    images, tokens = batch()
    state = trainer.init()
    assert str(jax.make_jaxpr(trainer._train_step)(state, images, tokens)).count("remat2[") == 4 + 1
    frozen = {flat_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.frozen)}
    params = {flat_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.params)}
    assert "visual.bn1.mean" in frozen and "visual.layer4.0.downsample.1.var" in frozen
    assert all(n.rsplit(".", 1)[1] in ("mean", "var") for n in frozen)
    assert "visual.bn1.scale" in params and not any(n.endswith((".mean", ".var")) for n in params)
    # The optimizer moves every BatchNorm scale and bias at the learning rate: for a unit gradient AdamW's
    # first update is -1e-3 (1e-3 / (1 + eps)) per entry, no weight decay on them. (That the loss has a
    # gradient for them: tests/test_blocks.py, test_bottleneck[downsample], against torch's.)
    updates, _ = jax.jit(trainer.tx.update)(jax.tree.map(jnp.ones_like, state.params), state.opt_state, state.params)
    norms = {flat_name(p): np.asarray(u) for p, u in jax.tree_util.tree_leaves_with_path(updates)
             if re.search(r"(\.|^)(bn\d|downsample\.1)\.(scale|bias)$", flat_name(p))}
    assert len(norms) == 2 * (3 + 4 * 3 + 4)  # the stem's 3, each Bottleneck's 3 and its downsample's
    for name, update in norms.items():
        np.testing.assert_allclose(update, -1e-3, rtol=1e-5, err_msg=name)


@pytest.mark.slow
def test_resnet_step_keeps_batchnorm_statistics():
    trainer = Trainer(tiny_model(TRAIN_RN), optimizer(1e-3, 10, 0), remat=True)
    before = trainer.init()
    after, _ = trainer.step(before, *batch())
    assert leaves_equal(before.frozen, after.frozen)
    assert not np.array_equal(before.params["visual"]["bn1"]["scale"][...], after.params["visual"]["bn1"]["scale"][...])


def run_steps(trainer: Trainer, state, start: int, stop: int):
    for i in range(start, stop):
        state, _ = trainer.step(state, *batch(seed=i))  # the data position is the step
    return state


# budget: 10 s; tests/test_train_evidence.py resumes a SIGKILLed `clip-jax train` (the Trainer's checkpoints)
# to the same bits in the default run
@pytest.mark.slow
def test_resume_is_bit_exact(trainer, tmp_path):
    """4 steps straight == 2 steps, save, restore into a fresh state, 2 more: identical params,
    optimizer state and step; the data position comes back with it."""
    straight = run_steps(trainer, trainer.init(), 0, 4)

    half = run_steps(trainer, trainer.init(), 0, 2)
    save_checkpoint(tmp_path, half, data={"next_batch": 2, "seed": 0})
    fresh = trainer.init()
    assert not leaves_equal(fresh.params, half.params)
    del half
    restored, data = restore_checkpoint(tmp_path, fresh)
    assert data == {"next_batch": 2, "seed": 0} and int(restored.step) == 2 and latest_step(tmp_path) == 2
    resumed = run_steps(trainer, restored, data["next_batch"], 4)
    assert leaves_equal(resumed.params, straight.params)
    assert leaves_equal(resumed.opt_state, straight.opt_state)
    assert int(resumed.step) == int(straight.step) == 4
    assert jax.tree.structure(resumed) == jax.tree.structure(straight)


def test_restore_without_checkpoint(trainer, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        restore_checkpoint(tmp_path / "none", trainer.init())


SHARDED = textwrap.dedent("""
    import json, jax, numpy as np
    from clip_jax.model import clip_logits
    from clip_jax.parallel import make_mesh
    from clip_jax.train import Trainer, contrastive_loss, optimizer
    from tests.tiny import TRAIN, tiny_model, train_batch as batch
    assert jax.device_count() == 4, jax.devices()
    model = tiny_model(TRAIN)
    single = Trainer(model, optimizer(1e-3, 10, 1, weight_decay=0.1))
    mesh = make_mesh()
    sharded = Trainer(model, optimizer(1e-3, 10, 1, weight_decay=0.1), mesh=mesh)
    a, b = single.init(), sharded.init()
    out = {"loss_single": [], "loss_sharded": []}
    for i in range(3):
        images, tokens = batch(16, seed=i)
        a, ma = single.step(a, images, tokens)
        b, mb = sharded.step(b, images, tokens)
        out["loss_single"].append(float(ma["loss"]))
        out["loss_sharded"].append(float(mb["loss"]))
    # the mean of per-device losses (each device's 4 pairs alone) is not what the loss computes
    images, tokens = batch(16, seed=0)
    logits = np.asarray(clip_logits(model, images, tokens)[0])
    out["local_mean"] = float(np.mean([contrastive_loss(logits[i:i + 4, i:i + 4]) for i in range(0, 16, 4)]))
    out["global"] = float(contrastive_loss(logits))
    pairs = zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params))
    out["max_param_diff"] = max(float(np.abs(x - y).max()) for x, y in pairs)
    out["replicated"] = all(x.sharding.is_fully_replicated for x in jax.tree.leaves(b))
    out["devices"] = len(jax.tree.leaves(b.params)[0].sharding.device_set)
    print(json.dumps(out))
""")


def test_data_parallel_matches_single_device():
    """3 steps on a batch of 16 split over 4 host devices (4 pairs each) equal single-device training.

    Tolerance: losses 1e-5 relative and params 5e-5 absolute: the gradients are summed across devices
    in another order than on one device (float32 rounding, ~1e-7 relative), and Adam divides by
    sqrt(v), which can enlarge the difference of tiny gradients to a fraction of the learning rate (1e-3).
    Measured: losses within 1e-7 relative, params within 1.1e-5 (a wrong gradient reduction moves
    params by about the learning rate).
    The loss is over the global batch: it matches the single-device loss, not the mean of the four
    per-device losses.
    """
    env = {**__import__("os").environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SHARDED], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["replicated"]
    np.testing.assert_allclose(out["loss_sharded"], out["loss_single"], rtol=1e-5)
    assert out["max_param_diff"] < 5e-5, out
    # the first step's loss (before any update) is the global batch's
    assert out["loss_sharded"][0] == pytest.approx(out["global"], rel=1e-5)
    assert abs(out["local_mean"] - out["global"]) > 0.1, out
