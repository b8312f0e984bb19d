"""LiT (Trainer(lock_image=..., lock_text=..., unlock_last=N), clip_jax.lit): which params a locked tower
freezes in a CLIP ViT, a ModifiedResNet and a Siglip; after training steps the locked params' bytes are
unchanged and the rest moved; the optimizer state holds the trainable params only; bad N refused."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from clip_jax.config import VisionConfig
from clip_jax.errors import InputError
from clip_jax.lit import block_of, locked_params, tower_of
from clip_jax.model import abstract_model
from clip_jax.roles import flat_name
from clip_jax.train import Trainer, optimizer
from tests.loss_checks import siglip_batch, tiny_siglip
from tests.tiny import TRAIN, TRAIN_RN, tiny_model, train_batch

# TRAIN with 3 image blocks, so that unlocking the last one leaves blocks locked below it
DEEP = dataclasses.replace(TRAIN, vision=VisionConfig(image_size=32, layers=3, width=64, patch_size=16))


def names_of(config) -> list[str]:
    _, state = abstract_model(config)
    return [flat_name(p) for p, _ in nnx.to_flat_state(state)]


def flat(tree) -> dict[str, np.ndarray]:
    return {flat_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_towers_and_blocks_by_name():
    assert tower_of("visual.conv1.kernel") == "image" and tower_of("text.ln_final.scale") == "text"
    assert tower_of("token_embedding.embedding") == "text" and tower_of("logit_scale") is None
    assert tower_of("logit_bias") is None
    assert block_of("visual.transformer.resblocks.11.mlp.c_fc.kernel") == (0, 11)
    assert block_of("visual.layer3.2.downsample.1.scale") == (3, 2)
    assert block_of("visual.attnpool.q_proj.kernel") is None and block_of("visual.proj") is None


def test_unlock_last_opens_the_last_blocks_and_the_head():
    """unlock_last=1 of a 3-block ViT: the last block, ln_post and proj train; the stem and blocks 0-1 stay
    locked; the text tower and logit_scale aren't touched. A ModifiedResNet's blocks are its Bottlenecks in
    stage order (unlock_last=2: layer3.0 and layer4.0 with the attention pool); a Siglip's vision tower ends in
    its MAP head and ln_post, its text tower in ln_final and text_projection."""
    names = names_of(DEEP)
    locked = locked_params(names, lock_image=True, unlock_last=1)
    image = {n for n in names if n.startswith("visual.")}
    assert image - locked == {n for n in image if ".resblocks.2." in n or n.startswith(("visual.ln_post.",
                                                                                          "visual.proj"))}
    assert "visual.conv1.kernel" in locked and "visual.transformer.resblocks.1.ln_1.scale" in locked
    assert locked <= image
    assert locked_params(names, lock_image=True) == image
    assert locked_params(names, lock_image=True, unlock_last=3) == {n for n in image if block_of(n) is None
                                                                    and not n.startswith(("visual.ln_post.",
                                                                                          "visual.proj"))}

    rn = [n for n in names_of(TRAIN_RN) if not n.endswith((".mean", ".var"))]
    open_rn = set(rn) - locked_params(rn, lock_image=True, unlock_last=2)
    assert {n.split(".")[1] for n in open_rn if n.startswith("visual.")} == {"layer3", "layer4", "attnpool"}
    assert "visual.bn1.scale" not in open_rn

    siglip = [flat_name(p) for p, _ in nnx.to_flat_state(nnx.state(tiny_siglip(), nnx.Param))]
    text_open = set(siglip) - locked_params(siglip, lock_text=True, unlock_last=1)
    assert {n for n in text_open if n.startswith("text.") and block_of(n) is None} == {
        "text.ln_final.bias", "text.ln_final.scale", "text.text_projection.bias", "text.text_projection.kernel"}
    assert "text.token_embedding.embedding" not in text_open and "logit_bias" in text_open
    image_open = set(siglip) - locked_params(siglip, lock_image=True, unlock_last=1)
    assert "visual.attn_pool.probe" in image_open and "visual.conv1.bias" not in image_open


def test_bad_unlock_last_refused():
    names = names_of(DEEP)
    with pytest.raises(InputError, match="has only 3 residual blocks"):
        locked_params(names, lock_image=True, unlock_last=4)
    with pytest.raises(InputError, match="whole number >= 0"):
        locked_params(names, lock_text=True, unlock_last=-1)
    with pytest.raises(InputError, match="lock one"):
        locked_params(names, unlock_last=1)
    with pytest.raises(InputError, match="has only 1 residual blocks"):
        Trainer(tiny_model(TRAIN), optimizer(1e-3, 10, 1), lock_text=True, unlock_last=2)


@pytest.mark.slow  # budget: 9 s; tests/test_train_evidence.py checks the same bytes after `clip-jax train --lock-image`
def test_locked_image_tower_bytes_unchanged_after_steps():
    """lock_image with unlock_last=1 on a 3-block ViT, 3 AdamW steps: every locked param is bit for bit the
    model's (they sit in state.frozen), every trainable one moved (the text tower, logit_scale, the last image
    block and the head); Adam's moments exist for the trainable params only; the model handed back computes
    with both."""
    model = tiny_model(DEEP)
    trainer = Trainer(model, optimizer(1e-3, 10, 1), lock_image=True, unlock_last=1)
    state = trainer.init()
    for i in range(3):
        state, _ = trainer.step(state, *train_batch(8, seed=i))
    before = flat(nnx.state(model, nnx.Param))
    params, frozen = flat(state.params), flat(state.frozen)
    assert set(frozen) == trainer.locked and len(frozen) == 5 + 2 * 12  # stem, blocks 0-1
    for name, x in frozen.items():
        assert x.tobytes() == before[name].tobytes(), name
    assert set(params) == set(before) - trainer.locked
    assert all(not np.array_equal(x, before[n]) for n, x in params.items() if not n.endswith("ln_post.bias")), [
        n for n, x in params.items() if np.array_equal(x, before[n])]
    moments = flat(state.opt_state[0].mu)
    assert set(moments) == set(params) and set(flat(state.opt_state[0].nu)) == set(params)
    tuned = trainer.model(state)
    assert np.array_equal(tuned.visual.conv1.kernel[...], model.visual.conv1.kernel[...])
    assert not np.array_equal(tuned.visual.proj[...], model.visual.proj[...])


def test_locked_text_tower_siglip():
    """lock_text on a Siglip with the sigmoid loss: the text tower's bytes unchanged, the image tower, logit_scale
    and logit_bias moved; the loss still falls."""
    model = tiny_siglip()
    trainer = Trainer(model, optimizer(1e-3, 10, 0), loss="sigmoid", lock_text=True)
    state, losses = trainer.init(), []
    for i in range(3):
        state, metrics = trainer.step(state, *siglip_batch(16, seed=0))
        losses.append(float(metrics["loss"]))
    before = flat(nnx.state(model, nnx.Param))
    frozen, params = flat(state.frozen), flat(state.params)
    assert set(frozen) == {n for n in before if n.startswith("text.")}
    assert all(x.tobytes() == before[n].tobytes() for n, x in frozen.items())
    assert {"logit_scale", "logit_bias"} <= set(params)
    assert not np.array_equal(params["logit_bias"], before["logit_bias"])
    assert not np.array_equal(params["visual.conv1.kernel"], before["visual.conv1.kernel"])
    assert losses[-1] < losses[0], losses
