"""Trainer(accumulate=K), the gradient cache (clip_jax.gradient_cache): on one device its gradient and updates
equal one pass's (softmax and sigmoid losses), plain micro-batch accumulation would not, its step keeps less
memory, a batch the chunks don't divide is refused; over 4 host devices (tests/gradient_cache_checks.py, in a
subprocess started before the first test) the same with the sharded losses, with fsdp and a locked tower."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clip_jax.errors import InputError
from clip_jax.train import Trainer, optimizer
from tests.loss_checks import module_run, siglip_batch, tiny_siglip
from tests.tiny import TRAIN, tiny_model, train_batch

# The 4-device subprocess, started before this module's first test.
device_run, checks = module_run("gradient_cache_checks.py", 4, timeout=600)


@pytest.fixture(scope="module")
def model():
    return tiny_model(TRAIN)


def step_diff(model, batch, steps: int, tx, **kw) -> tuple[float, float, list]:
    """`steps` steps with accumulate 1 and 4 from the same params. -> (max param difference, max param move,
    [losses with 1, losses with 4])."""
    states, losses = {}, {}
    for k in (1, 4):
        trainer = Trainer(model, tx, accumulate=k, **kw)
        state, losses[k] = trainer.init(), []
        for _ in range(steps):
            state, metrics = trainer.step(state, *batch)
            losses[k].append(float(metrics["loss"]))
        states[k] = jax.tree.leaves(state.params)
        if k == 1:
            start = jax.tree.leaves(trainer.init().params)
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(states[1], states[4]))
    move = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(states[1], start))
    return diff, move, [losses[1], losses[4]]


# budget: 19 s; the default run checks the gradient cache on 4 devices (softmax, sigmoid, fsdp + LiT) and on one
# device through the command (tests/test_train_cli.py)
@pytest.mark.slow
def test_gradient_equals_one_pass_softmax(model):
    """One SGD step at lr 1 (the update is minus the gradient) with accumulate=4 (4 chunks of 4 pairs) equals
    accumulate=1 on the batch of 16: the params within 1e-6 of gradients up to ~2 (float32 rounding: the towers
    run on chunks of another size and XLA rounds a matmul by its shape; measured 2.4e-7 on 4 devices), the loss
    to 1e-6 relative."""
    diff, move, (one, four) = step_diff(model, train_batch(16), 1, optax.sgd(1.0))
    assert move > 0.5 and diff <= 1e-6 * max(move, 1), (diff, move)
    assert four == pytest.approx(one, rel=1e-6)


@pytest.mark.slow  # budget: two more compiled steps
def test_updates_equal_one_pass_adamw(model):
    """3 AdamW steps with accumulate=4 and 1: params within 5e-5 (Adam's m / sqrt(v) can enlarge the rounding
    of a near-zero gradient to a fraction of the learning rate, 1e-3; a wrong gradient moves params by ~1e-3)."""
    diff, move, (one, four) = step_diff(model, train_batch(16), 3, optimizer(1e-3, 10, 0))
    assert move > 1e-3 and diff <= 5e-5, (diff, move)
    assert four == pytest.approx(one, rel=1e-6)


@pytest.mark.slow  # budget: the sigmoid loss is in the 4-device run below too
def test_gradient_equals_one_pass_sigmoid():
    """The same for SigLIP's loss on a tiny Siglip (logit_scale and logit_bias get their gradient from the loss
    over the whole batch): one SGD step at lr 1, params within 1e-6 (measured 1.2e-7 on 4 devices)."""
    diff, move, (one, four) = step_diff(tiny_siglip(), siglip_batch(16), 1, optax.sgd(1.0), loss="sigmoid")
    assert move > 0.1 and diff <= 1e-6, (diff, move)
    assert four == pytest.approx(one, rel=1e-6)


@pytest.mark.slow  # budget: 20 s, two more compiles of the step's gradient (a README figure, not a code path)
def test_plain_accumulation_would_be_wrong(model):
    """Why a contrastive loss needs the gradient cache: the mean of the gradients of 4 micro-batch losses (each
    image against the 3 other texts of its chunk only) is another gradient, far from the whole batch's (here
    more than 10% of its norm), and its loss another number."""
    trainer = Trainer(model, optax.sgd(1.0))
    state = trainer.init()
    images, tokens = (jnp.asarray(x) for x in train_batch(16))
    grad = jax.jit(jax.value_and_grad(lambda p, i, t: trainer._loss(p, state.frozen, i, t)[0]))
    full_loss, full = grad(state.params, images, tokens)
    parts = [grad(state.params, images[k:k + 4], tokens[k:k + 4]) for k in range(0, 16, 4)]
    mean = jax.tree.map(lambda *g: sum(g) / 4, *[g for _, g in parts])
    flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
    assert np.linalg.norm(flat(mean) - flat(full)) > 0.1 * np.linalg.norm(flat(full))
    assert abs(np.mean([float(v) for v, _ in parts]) - float(full_loss)) > 0.5  # log(4) vs log(16) negatives


# budget: 16 s, a README figure (two compiles at a batch of 128); the default run checks the gradient cache's
# values on 4 devices and through the command
@pytest.mark.slow
def test_accumulate_keeps_less_memory(model):
    """The compiled step's scratch memory with accumulate=8 is well under one pass's at a batch of 128: what a
    backward pass keeps is one chunk's activations (plus the [N, E] features), not the whole batch's."""
    images = jax.ShapeDtypeStruct((128, 32, 32, 3), jnp.uint8)
    tokens = jax.ShapeDtypeStruct((128, 8), jnp.int32)
    temp = {k: Trainer(model, optax.sgd(1.0), accumulate=k).lower(images, tokens).compile().memory_analysis()
            .temp_size_in_bytes for k in (1, 8)}
    assert temp[8] < 0.5 * temp[1], temp


def test_batch_the_chunks_dont_divide_refused(model):
    trainer = Trainer(model, optax.sgd(1.0), accumulate=4)
    with pytest.raises(InputError, match=r"batch size 10 is not divisible by accumulate=4 x 1 devices"):
        trainer.step(trainer.init(), *train_batch(10))
    for bad in (0, -2, 1.5, True):
        with pytest.raises(InputError, match="accumulate must be a whole number"):
            Trainer(model, optax.sgd(1.0), accumulate=bad)


@pytest.mark.parametrize("case", ["softmax", "sigmoid", "fsdp_lit"])
def test_gradient_equals_one_pass_on_a_mesh(checks, case):
    """On 4 devices, a batch of 32 in 4 chunks (2 rows of each device per chunk): one SGD step at lr 1 equals
    accumulate=1 (the softmax loss by rows, the sigmoid ring, and fsdp=True with a locked image tower): params
    within 1e-6 of gradients up to ~2 (measured <= 4.2e-7), loss and grad_norm to 1e-6 relative. Chunking
    gathers no batch: the step has no more all-gathers than the one-pass step, except fsdp's parameter
    gathers inside the chunk loop."""
    c = checks[case]
    one, four = c["metrics"]
    assert c["max_grad"] > 0.1 and c["max_param_diff"] <= 1e-6, c
    for name in one:
        assert four[name] == pytest.approx(one[name], rel=1e-6), name
    if case != "fsdp_lit":
        assert c["collectives"][1]["all-gather"] <= c["collectives"][0]["all-gather"], c["collectives"]
