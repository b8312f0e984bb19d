"""The losses over a mesh (clip_jax.losses). SigLIP's sigmoid loss on one device against open_clip's
SigLipLoss (value and gradients, torch autograd vs jax.grad); the Trainer's loss="sigmoid" on a tiny Siglip
against SigLipLoss on the same features; the ring over 4 and 8 host devices (tests/loss_checks.py, in a
subprocess started with XLA_FLAGS=--xla_force_host_platform_device_count=8 before the first test, so it runs
beside them) against the one-device loss, with what its compiled program communicates and holds; CLIP's
softmax loss computed by rows on each device against the one-device contrastive_loss."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from clip_jax.errors import InputError
from clip_jax.losses import sigmoid_loss, sigmoid_loss_sharded
from clip_jax.parallel import make_mesh
from clip_jax.train import Trainer
from tests.loss_checks import BIAS, SCALE, features, module_run, tiny_siglip

ROOT = Path(__file__).resolve().parents[1]


# The 8-device subprocess, started before this module's first test.
device_run, checks = module_run("loss_checks.py", 8, timeout=300)


def open_clip_loss(img, txt, scale: float, bias: float):
    """open_clip's SigLipLoss on one process and its gradients (torch autograd) w.r.t. the features, the
    scale and the bias. -> (loss, [d img, d txt, d scale, d bias]) as numpy."""
    torch = pytest.importorskip("torch")
    from open_clip.loss import SigLipLoss

    args = [torch.tensor(np.asarray(x, np.float32), requires_grad=True) for x in (img, txt, scale, bias)]
    loss = SigLipLoss()(*args)
    loss.backward()
    return loss.item(), [a.grad.numpy() for a in args]


# --- one device -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale, bias", [(10.0, -10.0), (SCALE, BIAS), (1.0, 0.5)])
def test_sigmoid_loss_equals_open_clip(scale, bias):
    """Value and gradient (features, scale, bias) against SigLipLoss()(img, txt, scale, bias) at big_vision's
    init (10, -10), at (10, -3) and at (1, 0.5). Tolerance: 1e-6 relative on the value and 1e-6 of the largest
    gradient entry, float32 rounding (both sum N^2 float32 terms, in different orders; measured <= 2.6e-7
    relative). A loss normalized by N^2 instead of N, labels without the -1s or a missing bias is off by far more."""
    img, txt = features(16, 32)
    want, want_grads = open_clip_loss(img, txt, scale, bias)
    got, got_grads = jax.value_and_grad(sigmoid_loss, argnums=(0, 1, 2, 3))(img, txt, scale, bias)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    for name, g, w in zip(("image", "text", "scale", "bias"), got_grads, want_grads):
        assert np.shape(g) == np.shape(w), name
        np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=1e-6 * max(np.abs(w).max(), 1e-3), err_msg=name)


def test_tiny_siglip_first_step_loss_equals_open_clip(checks):
    """Trainer(loss="sigmoid") on a tiny Siglip (one device, in the subprocess): its loss before the first
    update is SigLipLoss on the model's normalized features with exp(logit_scale) and logit_bias; with plain
    SGD at lr 1, the step moves logit_bias by minus open_clip's gradient w.r.t. the bias, and logit_scale by
    minus its gradient w.r.t. t (through exp). Tolerance: 1e-6 relative on the loss (float32 rounding of a
    sum of 256 terms); 1e-5 on the moves, each the difference of two float32 params ~2-4 (ulp 2.4e-7 to
    4.8e-7) against a move of ~0.5-0.7 (measured <= 8.3e-8 relative)."""
    torch = pytest.importorskip("torch")
    from open_clip.loss import SigLipLoss

    c = checks["trainer"]
    t = torch.tensor(c["t"], requires_grad=True)
    b = torch.tensor(c["b"], requires_grad=True)
    features = [torch.tensor(c[k], dtype=torch.float32) for k in ("image_features", "text_features")]
    want = SigLipLoss()(*features, t.exp(), b)
    want.backward()
    np.testing.assert_allclose(c["loss_single"], want.item(), rtol=1e-6)
    np.testing.assert_allclose(c["b_step"], b.grad.item(), rtol=1e-5)
    np.testing.assert_allclose(c["t_step"], t.grad.item(), rtol=1e-5)
    assert abs(c["b_step"]) > 1e-2 and abs(c["t_step"]) > 1e-2  # both moved: the comparison has something to see
    assert c["logit_bias"][0] == c["logit_bias"][2]  # the metric is the param after the step


def test_loss_argument_checked(tiny):
    with pytest.raises(InputError, match="loss must be one of"):
        Trainer(tiny_siglip(), optax.sgd(1.0), loss="hinge")
    with pytest.raises(InputError, match="needs a model with a logit_bias"):
        Trainer(tiny, optax.sgd(1.0), loss="sigmoid")  # a CLIP


def test_bad_features_named():
    img, txt = features(8, 4)
    with pytest.raises(InputError, match=r"\[N, D\]"):
        sigmoid_loss(img, txt[:7], SCALE, BIAS)
    with pytest.raises(InputError, match="scale must be a scalar"):
        sigmoid_loss(img, txt, np.ones(2), BIAS)
    with pytest.raises(InputError, match="no axis 'batch'"):
        sigmoid_loss_sharded(img, txt, SCALE, BIAS, make_mesh(), axis="batch")


# --- over 4 and 8 devices (the subprocess) ----------------------------------------------------------


@pytest.mark.parametrize("mesh", ["4", "8", "4x2"])
def test_ring_equals_unsharded(checks, mesh):
    """The ring on a batch of 64 over 4 and 8 devices and over a 4 x 2 (data x model) mesh equals the one-device
    loss: value to 2e-7 relative (measured 1.1e-7, the sum of 4096 terms in another order) and every gradient
    to 1e-6 of its largest entry (measured <= 2.7e-7 relative). A ring that skipped a chunk, counted the
    diagonal twice or lost the text gradients' way home is off by far more (each chunk is 1/4 or 1/8 of the
    loss)."""
    ring = checks[f"ring{mesh}"]
    assert ring["mesh"]["data"] == (4 if mesh != "8" else 8)
    assert ring["loss"] <= 2e-7 * checks["unsharded"]
    for diff, scale in zip(ring["grads"], ring["grad_scale"]):
        assert diff <= 1e-6 * scale, ring
    assert ring["top1"] == checks["top1_unsharded"]  # the ring's in-batch accuracy: argmax of the global rows
    assert 0 < checks["top1_unsharded"] < 1  # some right and some wrong: the check sees both


@pytest.mark.parametrize("mesh", ["4", "8", "4x2"])
def test_ring_communicates_by_permutes_only(checks, mesh):
    """The compiled value-and-gradient program passes text chunks to neighbours (collective-permutes: forward
    and backward rings) and gathers nothing: no all-gather (of the text features or anything else)."""
    ops = checks[f"ring{mesh}"]["collectives"]
    assert ops["all-gather"] == 0 and ops["all-to-all"] == 0, ops
    assert ops["collective-permute"] >= 2, ops


def test_ring_memory_is_per_device_blocks(checks):
    """At N = 2048 over 8 devices, the one-device program's scratch holds the N x N logits (>= 16 MiB); the
    ring's is under four [256, 256] float32 blocks (1 MiB): less than even one device's rows of the global
    logits (2 MiB)."""
    m = checks["memory"]
    n, local = m["n"], m["n"] // m["devices"]
    assert m["temp_unsharded"] >= n * n * 4, m
    assert m["temp_ring"] <= 4 * local * local * 4, m


def test_trainer_sigmoid_step_on_a_mesh_equals_one_device(checks):
    """One SGD step (lr 1) of a tiny Siglip with loss="sigmoid" on 4 devices (4 pairs each) equals the step on
    one device: loss to 1e-6 relative (measured equal), params to 2e-6 (a few float32 ulps of params up to ~4,
    moved by up to 0.73: the gradients summed in another order; measured 1.8e-7); the compiled step gathers
    no features (no all-gather)."""
    t = checks["trainer"]
    assert t["devices"] == 4
    assert t["loss_sharded"] == pytest.approx(t["loss_single"], rel=1e-6)
    assert t["accuracy"][0] == t["accuracy"][1]
    assert t["logit_bias"][0] == pytest.approx(t["logit_bias"][1], abs=1e-6)
    assert t["max_update"] > 1e-2  # the step moved the params: equal params are not two no-ops
    assert t["max_param_diff"] <= 2e-6, t
    assert t["collectives"]["all-gather"] == 0 and t["collectives"]["collective-permute"] >= 2, t["collectives"]


@pytest.mark.parametrize("mesh", ["4", "8", "4x2"])
def test_softmax_rows_per_device_equal_unsharded(checks, mesh):
    """contrastive_loss_sharded (each device its own rows of both directions, features all-gathered) equals
    contrastive_loss of the global logits on a batch of 64: value to 1e-6 relative and every gradient to 1e-6
    absolute (unit features: the gradients are at most ~0.2; measured <= 6.6e-8). Labels that ignored the
    device's offset, or one direction dropped, are off by far more. Its collectives are what it says: the
    text features gathered (all-gather), the columns' max and sums reduced, the texts' gradients
    reduce-scattered back; nothing passed around a ring."""
    s = checks[f"softmax{mesh}"]
    assert s["loss"] <= 1e-6 * checks["softmax_unsharded"], s
    assert max(s["grads"]) <= 1e-6, s
    assert s["collectives"]["all-gather"] >= 1 and s["collectives"]["collective-permute"] == 0, s


def test_softmax_memory_is_one_block_of_rows(checks):
    """At N = 2048 over 8 devices (features split over "data"), contrastive_loss_sharded's value and gradient
    hold under three [256, 2048] float32 blocks of scratch (2 MiB each; measured 2.1 at N = 8192: the block and
    its gradient), and less than XLA's own split of the N x N logits (measured 4.1 blocks)."""
    m = checks["memory"]
    block = m["n"] // m["devices"] * m["n"] * 4
    assert m["temp_softmax_rows"] <= 3 * block, m
    assert m["temp_softmax_rows"] < 0.75 * m["temp_softmax_xla"], m


def test_ring_refuses_a_batch_the_devices_dont_divide(checks):
    assert checks["ragged_error"] == ["InputError", "batch size 6 is not divisible by the 4 devices of the mesh axis "
                                      "'data'"]
