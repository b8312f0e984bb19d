"""The public calls (encode_image, encode_text, clip_logits): the model is split once and each call only
reads its current values, dispatch stays asynchronous, and inputs are checked without a host round trip
of image batches."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import clip_jax
from clip_jax import calls as model_lib
from tests.tiny import TINY, tiny_batch as batch, tiny_model


def test_calls_see_values_set_in_place(tiny):
    """Values changed after the first call (nnx.update, var[...] = x) are what the next call computes with."""
    images, tokens = batch()
    image_before, text_before = tiny.encode_image(images), tiny.encode_text(tokens)
    logits_before, _ = clip_jax.clip_logits(tiny, images, tokens)

    tiny.visual.proj[...] = 2 * tiny.visual.proj[...]
    state = nnx.state(tiny)
    state["text_projection"][...] = -state["text_projection"][...]
    nnx.update(tiny, state)
    tiny.logit_scale[...] = tiny.logit_scale[...] + np.log(3.0)

    np.testing.assert_allclose(tiny.encode_image(images), 2 * image_before, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tiny.encode_text(tokens), -text_before, rtol=1e-6, atol=1e-6)
    # Normalized features: the projections' signs flip the cosine, the scale triples the logits.
    logits_after, _ = clip_jax.clip_logits(tiny, images, tokens)
    np.testing.assert_allclose(logits_after, -3 * logits_before, rtol=1e-5, atol=1e-5)


def test_structure_changes_need_rebind(tiny):
    images, _ = batch()
    before = tiny.encode_image(images)
    tiny.visual.proj = nnx.Param(2 * tiny.visual.proj[...])  # a new Variable object, not a new value
    model_lib.rebind(tiny)
    np.testing.assert_allclose(tiny.encode_image(images), 2 * before, rtol=1e-6, atol=1e-6)


def test_calls_do_not_walk_the_graph(tiny, monkeypatch):
    """After the first call, a call never splits or merges the module graph (what cost nnx.jit 50-90 ms)."""
    images, tokens = batch()
    tiny.encode_image(images), tiny.encode_text(tokens), clip_jax.clip_logits(tiny, images, tokens)

    def refuse(*args, **kwargs):
        raise AssertionError("the module graph was walked during a call")

    for name in ("split", "merge", "state", "graphdef"):
        monkeypatch.setattr(nnx, name, refuse)
        monkeypatch.setattr(nnx.graphlib, name, refuse, raising=False)
    monkeypatch.setattr(nnx.graphlib, "flatten", refuse)
    tiny.encode_image(images), tiny.encode_text(tokens), clip_jax.clip_logits(tiny, images, tokens)


def test_models_of_one_architecture_share_programs():
    a, b = tiny_model(TINY, seed=0), tiny_model(TINY, seed=1)
    images, _ = batch()
    assert not np.allclose(a.encode_image(images), b.encode_image(images))
    assert model_lib._bound(a).program("image_features", ()) is model_lib._bound(b).program("image_features", ())


def test_calls_on_device_arrays_are_asynchronous(tiny):
    """No hidden block_until_ready and no transfer to the host: issuing calls on device arrays returns
    long before their work is done (a batch large enough to take ~100x the host's time per call)."""
    size = TINY.vision.image_size
    images = jax.device_put(np.random.RandomState(0).randn(512, size, size, 3).astype(np.float32))
    tokens = jax.device_put(batch()[1])
    tiny.encode_image(images).block_until_ready()
    clip_jax.clip_logits(tiny, images, np.asarray(tokens))[0].block_until_ready()
    with jax.transfer_guard_device_to_host("disallow"):
        start = time.perf_counter()
        outs = [tiny.encode_image(images) for _ in range(8)]
        outs += [clip_jax.clip_logits(tiny, images, batch()[1])[0] for _ in range(8)]
        issued = time.perf_counter() - start
        jax.block_until_ready(outs)
        done = time.perf_counter() - start
    assert issued < 0.5 * done, f"issuing took {issued:.3f} s of {done:.3f} s: a call waited for the device"


def test_device_tokens_are_checked(tiny):
    """A jax.Array of ids is range-checked like a numpy one (it gave NaN features for an id past the
    vocabulary and wrapped a negative id around)."""
    _, tokens = batch()
    for bad, shown in ((10**6, "max 1000000"), (-1, "min -1")):
        t = tokens.copy()
        t[1, 2] = bad
        with pytest.raises(ValueError, match=rf"\[0, 49408\).*{shown}"):
            tiny.encode_text(jnp.asarray(t))
        with pytest.raises(ValueError, match=rf"\[0, 49408\).*{shown}"):
            clip_jax.clip_logits(tiny, batch()[0], jnp.asarray(t))
    # A device batch isn't trimmed (that would fetch it): the same program as an untrimmed host batch.
    np.testing.assert_array_equal(tiny.encode_text(jnp.asarray(tokens)), tiny.encode_text(tokens, trim=False))


def test_empty_token_rows_are_refused(tiny):
    for tokens in (np.zeros((3, 0), np.int32), jnp.zeros((3, 0), jnp.int32)):
        with pytest.raises(ValueError, match=r"no columns.*\(3, 0\)"):
            tiny.encode_text(tokens)
