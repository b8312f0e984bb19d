"""Contrastive training and fine-tuning: CLIP's softmax and SigLIP's sigmoid losses, AdamW with warmup then
cosine decay, a jitted train step (data parallel, FSDP, LiT, gradient cache), and exact checkpoint/resume
with orbax.

    tx = optimizer(learning_rate=1e-5, total_steps=10_000, warmup_steps=500)
    trainer = Trainer(model, tx, remat=True)           # mesh=clip_jax.parallel.make_mesh(): data parallel
    state = trainer.init()
    for step in range(10_000):
        state, metrics = trainer.step(state, images, tokens)   # uint8 or normalized NHWC, int tokens
    model = trainer.model(state)                       # a CLIP with the trained params
    save_checkpoint("ckpt/", state, data={"next_batch": step + 1})

    # on a pod: state split over the devices, a locked image tower, a batch 4x larger than one pass holds
    trainer = Trainer(model, tx, mesh=make_mesh(), loss="sigmoid", fsdp=True, lock_image=True, accumulate=4)
    state, metrics = trainer.step(state, *trainer.global_batch(local_images, local_tokens))

The optimizer state lives next to the params as a pure pytree (params from `nnx.split`), so the whole
training state is one pytree that jit, sharding and orbax handle as they are.

BatchNorm (ModifiedResNet) keeps using its running statistics and they are not updated: fine-tuning
normalizes with the pretrained statistics (eval-mode BatchNorm, as is usual with small per-device
batches); the BatchNorm affine scale and bias are trained, without weight decay.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import gradient_cache
from .calls import rebind
from .checkpoint.declared import declared_by_name
from .checks import check_images, check_tokens
from .errors import InputError
from .gradient_cache import check_chunks
from .layers import Transformer, check_remat_policy
from .lit import locked_params, tower_of, trainable_filter
from .losses import contrastive_loss, contrastive_loss_sharded, sigmoid_loss, sigmoid_loss_sharded, top1_sharded
from .model import CLIP, l2_normalize
from .parallel import param_specs, place
from .resnet import ResNetStage
from .roles import DATA as DATA_AXIS, declared, flat_name, is_variable

# OpenAI: "clipped to prevent scaling the logits by more than 100".
LOGIT_SCALE_MAX = math.log(100.0)
LOSSES = ("softmax", "sigmoid")


# --- the optimizer ----------------------------------------------------------------------------------


def decays(name: str) -> bool:
    """Whether AdamW decays the param `name`: the role model.py declares for it says so (Linear and
    conv weights and the projections do; norm gains and biases, Linear biases, embeddings, LayerScale
    gains and logit_scale don't: open_clip's rule)."""
    return declared_by_name(name).role.decays


def decay_mask(params: Any) -> Any:
    """The params pytree with a bool per leaf: True where weight decay applies, as each param's
    declared role says (for a plain pytree of arrays, looked up by its clip_jax name)."""
    if any(is_variable(x) for x in jax.tree.leaves(params, is_leaf=is_variable)):
        return jax.tree.map(lambda v: v.replace(declared(v).role.decays), params, is_leaf=is_variable)
    return jax.tree_util.tree_map_with_path(lambda path, x: decays(flat_name(path)), params)


def schedule(learning_rate: float, total_steps: int, warmup_steps: int, end_factor: float = 0.0) -> optax.Schedule:
    """Linear warmup from 0 to learning_rate over warmup_steps, then cosine decay to
    end_factor * learning_rate at total_steps."""
    if not 0 <= warmup_steps < total_steps:
        raise InputError(f"need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
                         f"total_steps={total_steps}")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps, decay_steps=total_steps,
        end_value=end_factor * learning_rate,
    )


def optimizer(
    learning_rate: float,
    total_steps: int,
    warmup_steps: int = 0,
    *,
    weight_decay: float = 0.2,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-6,
    max_grad_norm: float | None = None,
) -> optax.GradientTransformation:
    """AdamW with warmup then cosine decay; weight decay only where the params' declared roles say so (`decay_mask`).

    Defaults are the CLIP paper's (b2 0.98, eps 1e-6, decoupled weight decay 0.2); for fine-tuning a
    pretrained model use a small learning rate (1e-5) and often weight_decay=0.1. max_grad_norm: clip the
    global gradient norm first (off by default, as OpenAI trained).
    """
    adamw = optax.adamw(
        schedule(learning_rate, total_steps, warmup_steps), b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
        mask=decay_mask,
    )
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw) if max_grad_norm else adamw


def clamp_logit_scale(params: nnx.State) -> nnx.State:
    """logit_scale clipped to [0, ln 100] in place of the parameter, after the update, as OpenAI and
    open_clip do. Clipping the parameter (not the value used in the loss) keeps the stored value equal to
    the one the model computes with, and leaves Adam no gradient-free region to drift in."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.clip(x, 0.0, LOGIT_SCALE_MAX).astype(x.dtype) if flat_name(path) == "logit_scale" else x,
        params,
    )


# --- gradient checkpointing -------------------------------------------------------------------------


def set_remat(model: nnx.Module, remat: bool = True, policy: str = "nothing_saveable") -> None:
    """Set the remat option of every transformer stack and ResNet stage in `model`, in place: with
    `remat`, each residual block's activations are recomputed in the backward pass, keeping what the
    jax.checkpoint policy named `policy` saves (clip_jax.layers.REMAT_POLICIES). Names and params don't
    change."""
    check_remat_policy(policy)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, (Transformer, ResNetStage)):
            module.remat, module.remat_policy = remat, policy
    rebind(model)  # its jitted calls were compiled for the structure before


def with_remat(model: CLIP, policy: str = "nothing_saveable") -> CLIP:
    """A copy of `model` (sharing its arrays) whose residual blocks are rematerialized (`set_remat`): the
    backward pass recomputes each block's activations instead of keeping them, for about one more
    forward pass of compute; with the default policy what is kept is each block's input."""
    copy = nnx.merge(*nnx.split(model))
    set_remat(copy, True, policy)
    return copy


# --- the training state and step -------------------------------------------------------------------


class TrainState(struct.PyTreeNode):
    """Everything that changes during training, as one pytree (what a checkpoint holds).

    step: int32 [], updates applied so far (the schedule's position).
    params: the trainable params (nnx.Param), an nnx.State.
    opt_state: the optax state for `params`.
    frozen: the rest of the model's state (BatchNorm running statistics), not trained.
    """

    step: jax.Array
    params: nnx.State
    opt_state: Any
    frozen: nnx.State


class Trainer:
    """Contrastive training of a CLIP or a Siglip with an optax optimizer.

    Args:
      model: the model to train (its dtype is the compute dtype: build(..., dtype="bfloat16") trains in
        bf16 with float32 params, LayerNorm, softmax and loss). The model itself is not changed.
      tx: the optimizer, e.g. `optimizer(...)`.
      remat: gradient checkpointing over the residual blocks (see `set_remat`), keeping what the
        jax.checkpoint policy named `remat_policy` saves ("nothing_saveable": each block's input only).
      mesh: data parallelism, e.g. clip_jax.parallel.make_mesh(): the batch is split over the mesh axis
        "data"; params and optimizer state are replicated over it (split along a "model" axis as the
        params declare). The loss is over the global batch: each image is scored against every text of
        every device, so the result equals single-device training on the whole batch. Feed batches as
        host numpy arrays (one process) or through `global_batch` (any number of processes).
      donate: let the step reuse the input state's buffers (halves the state's memory; the old state,
        and any model from `model(old_state)`, can't be used afterwards).
      loss: "softmax" (CLIP's symmetric InfoNCE, `contrastive_loss`) or "sigmoid" (SigLIP's,
        `clip_jax.losses.sigmoid_loss`, for a model with a `logit_bias`: a Siglip). Both take the
        normalized features and exp(logit_scale) (and the sigmoid loss logit_bias); on a mesh the sigmoid
        loss is a ring over "data" (`sigmoid_loss_sharded`) and the softmax loss one block of rows per
        device (`contrastive_loss_sharded`), never the global N x N on one device, with the same result.
      fsdp: (with a mesh) params, gradients and optimizer state split over "data" too (ZeRO-3,
        `clip_jax.parallel.param_specs(..., fsdp=True)`): each device keeps 1/data of them, XLA gathers
        a parameter where the step uses it and reduces its gradient to each device's share (a
        reduce-scatter where the compiler makes one; on some TPU slices an all-reduce and a slice:
        benchmarks/RESULTS.md). The same numbers as without.
      lock_image, lock_text: LiT (clip_jax.lit): the locked tower's params live in `TrainState.frozen`,
        with no gradient and no optimizer state; unlock_last=N keeps the last N residual blocks of each
        locked tower (and the norm, pooling head and projection after them) trainable.
      accumulate: K > 1 computes the gradient with the gradient cache (clip_jax.gradient_cache): the
        towers run in K chunks, the loss over the whole batch, the same gradient as one pass for about a
        K-th of its activation memory and one more forward pass. The batch must divide by K x the "data"
        devices.

    Attributes: state_sharding (None without a mesh): a TrainState of NamedShardings, how `init`, `step`
    and a restored checkpoint (`restore_checkpoint(dir, like=trainer.init())`) place the state; locked:
    the clip_jax names of the params LiT froze.
    """

    def __init__(self, model: CLIP, tx: optax.GradientTransformation, *, remat: bool = False,
                 remat_policy: str = "nothing_saveable", mesh: Mesh | None = None, donate: bool = False,
                 loss: str = "softmax", fsdp: bool = False, lock_image: bool = False, lock_text: bool = False,
                 unlock_last: int = 0, accumulate: int = 1):
        _check_loss(model, loss)
        _check_mesh(mesh, fsdp)
        check_chunks(accumulate, accumulate)  # a whole number >= 1
        self.config, self.loss, self.tx, self.mesh, self.fsdp = model.config, loss, tx, mesh, fsdp
        self.accumulate = accumulate
        if remat:
            model = with_remat(model, remat_policy)
        names = [flat_name(path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
        self.locked = locked_params(names, lock_image=lock_image, lock_text=lock_text, unlock_last=unlock_last)
        self.graphdef, params, frozen = nnx.split(model, trainable_filter(self.locked), ...)
        self._init_params, self._init_frozen = params, frozen
        # which towers have a trained param (the gradient cache runs a tower's chunks again only for those)
        self._trains = {tower_of(n) for n in names if n not in self.locked}
        self.state_sharding = None if mesh is None else self._state_sharding(fsdp)
        # with fsdp, where the step uses the params: whole along "data" (each gathered where it is used)
        self._in_use = self.state_sharding if not fsdp else self._state_sharding(False)
        self._jit(donate)

    def _jit(self, donate: bool) -> None:
        """The jitted step, evaluation and init, with the state's and the batch's shardings on a mesh."""
        kw, eval_kw, init_kw = {}, {}, {}
        if self.mesh is not None:
            batch = self.batch_sharding()
            kw = dict(in_shardings=(self.state_sharding, batch, batch),
                      out_shardings=(self.state_sharding, self.replicated()))
            eval_kw = dict(in_shardings=kw["in_shardings"], out_shardings=self.replicated())
            init_kw = dict(out_shardings=self.state_sharding)
        self._step = jax.jit(self._train_step, donate_argnums=(0,) if donate else (), **kw)
        self._eval = jax.jit(self._metrics, **eval_kw)
        self._init = jax.jit(self._fresh_state, **init_kw)

    # --- shardings

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def batch_sharding(self) -> NamedSharding:
        """Leading (batch) axis split over "data"."""
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    def _state_sharding(self, fsdp: bool) -> TrainState:
        """Every leaf's NamedSharding: params, their optimizer moments (Variables carrying the params'
        declarations) and the frozen state as `param_specs` says; the step and other scalars replicated."""
        specs = param_specs(self._abstract_state(), self.mesh, fsdp=fsdp)
        return jax.tree.map(lambda spec: NamedSharding(self.mesh, spec), specs)

    def global_batch(self, images_local, tokens_local) -> tuple[jax.Array, jax.Array]:
        """This process's rows of a global batch -> the global arrays, split over "data".

        images_local: [n, H, W, 3] uint8 or float; tokens_local: int [n, L]: block `jax.process_index()`
        of the global batch of n * jax.process_count() pairs (on one process: the whole batch). The token
        ids are checked here, on the host. Without a mesh: the arrays on the default device.
        """
        images = check_images(np.asarray(images_local), self.config.vision.image_size)
        tokens = check_tokens(np.asarray(tokens_local), self.config.text.context_length, self.config.text.vocab_size)
        if images.shape[0] != tokens.shape[0]:
            raise InputError(f"a batch of matching pairs needs as many images as texts, got images "
                             f"{tuple(images.shape)} and tokens {tuple(tokens.shape)}")
        if self.mesh is None:
            return jnp.asarray(images), jnp.asarray(tokens)
        batch = self.batch_sharding()
        return (jax.make_array_from_process_local_data(batch, images),
                jax.make_array_from_process_local_data(batch, tokens))

    # --- state

    def _fresh_state(self, params: nnx.State, frozen: nnx.State) -> TrainState:
        # jit's outputs are new buffers: donating the state never frees the model's arrays
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params), frozen=frozen)

    def _abstract_state(self) -> TrainState:
        return jax.eval_shape(self._fresh_state, self._init_params, self._init_frozen)

    def init(self) -> TrainState:
        """A fresh state from the model's current params: step 0, the optimizer's initial state; on a mesh
        placed as `state_sharding` says (each process passes the same model)."""
        params, frozen = self._init_params, self._init_frozen
        if self.mesh is not None:
            params = place(params, self.state_sharding.params)
            frozen = place(frozen, self.state_sharding.frozen)
        return self._init(params, frozen)

    def model(self, state: TrainState) -> CLIP:
        """A model holding the state's arrays (not copies; without gradient checkpointing), e.g. to
        evaluate it or to `export` it. On a mesh its params keep the state's sharding (with fsdp: split;
        `clip_jax.parallel.gather` brings one to the host whole)."""
        model = nnx.merge(self.graphdef, state.params, state.frozen)
        set_remat(model, False)
        return model

    # --- steps

    def _check(self, images, tokens) -> tuple[jax.Array, jax.Array]:
        images = check_images(images, self.config.vision.image_size)
        tokens = check_tokens(tokens, self.config.text.context_length, self.config.text.vocab_size)
        if images.shape[0] != tokens.shape[0]:
            raise InputError(f"a batch of matching pairs needs as many images as texts, got images "
                             f"{tuple(images.shape)} and tokens {tuple(tokens.shape)}")
        if self.mesh is not None and images.shape[0] % self.mesh.shape[DATA_AXIS]:
            raise InputError(f"batch size {images.shape[0]} is not divisible by the {self.mesh.shape[DATA_AXIS]} "
                             f"devices of the mesh axis {DATA_AXIS!r}")
        check_chunks(images.shape[0], self.accumulate, self._devices())
        return images, tokens

    def _devices(self) -> int:
        """The devices the batch is split over."""
        return 1 if self.mesh is None else self.mesh.shape[DATA_AXIS]

    def step(self, state: TrainState, images, tokens) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer update on a batch of N matching pairs.

        images: [N, H, W, 3] uint8 pixels or float normalized; tokens: int [N, L], L <= context_length.
        -> (new state, metrics: loss (before the update), logit_scale (exp, after), logit_bias (after; the
        sigmoid loss), grad_norm, accuracy (in-batch image->text top-1 before the update)).
        """
        return self._step(state, *self._check(images, tokens))

    def lower(self, images, tokens, state: TrainState | None = None) -> jax.stages.Lowered:
        """The jitted step lowered for a batch of these shapes (arrays or jax.ShapeDtypeStruct); state
        default: the shapes of `init()`'s. `.compile()` it ahead of time, e.g. for a mesh of a TPU
        topology's devices and a model built from shapes (clip_jax.model.abstract_model)."""
        return self._step.lower(self._abstract_state() if state is None else state, images, tokens)

    def evaluate(self, state: TrainState, images, tokens) -> dict[str, jax.Array]:
        """The step's metrics for a batch, without updating (loss, accuracy, logit_scale)."""
        return self._eval(state, *self._check(images, tokens))

    # --- the loss

    def _merge(self, params, frozen) -> CLIP:
        if self.fsdp:
            # Gathered over "data" where they are used: left to itself, XLA carries the params' "data" split
            # into the activations (against the batch's) and reshards them whole. The transpose of this
            # constraint reduces the gradient back to each device's share.
            params = jax.lax.with_sharding_constraint(params, self._in_use.params)
            frozen = jax.lax.with_sharding_constraint(frozen, self._in_use.frozen)
        return nnx.merge(self.graphdef, params, frozen)

    def _image(self, params, frozen, images) -> jax.Array:
        """images [n, H, W, 3] -> L2-normalized float32 image features [n, E]."""
        return l2_normalize(self._merge(params, frozen).image_features(images))

    def _text(self, params, frozen, tokens) -> jax.Array:
        """tokens int [n, L] -> L2-normalized float32 text features [n, E]."""
        return l2_normalize(self._merge(params, frozen).text_features(tokens))

    def _head_loss(self, params, img, txt) -> tuple[jax.Array, jax.Array]:
        """The loss of normalized features img, txt [N, E] with the params' logit_scale (and logit_bias)
        -> (loss, in-batch image -> text top-1 accuracy), float32 []."""
        scale = jnp.exp(params["logit_scale"][...].astype(jnp.float32))
        if self.loss == "sigmoid":
            bias = params["logit_bias"][...]
            if self.mesh is None:
                return sigmoid_loss(img, txt, scale, bias), _accuracy(jnp.dot(img, txt.T, precision="highest"))
            return sigmoid_loss_sharded(img, txt, scale, bias, self.mesh), top1_sharded(img, txt, self.mesh)
        if self.mesh is None:
            logits = scale * jnp.dot(img, txt.T, precision="highest")  # as clip_jax.model.logits
            return contrastive_loss(logits), _accuracy(logits)
        # One [N / devices, N] block of logits per device: value and gradient at N = 8192 over 8 CPU devices
        # measured 2.1 blocks of scratch, where XLA's own split of the N x N logits above took 4.1.
        return contrastive_loss_sharded(img, txt, scale, self.mesh), top1_sharded(img, txt, self.mesh)

    def _loss(self, params, frozen, images, tokens) -> tuple[jax.Array, jax.Array]:
        """-> (loss, in-batch image -> text top-1 accuracy) of a batch, in one pass."""
        return self._head_loss(params, self._image(params, frozen, images), self._text(params, frozen, tokens))

    def _scalars(self, params) -> dict[str, jax.Array]:
        scalars = {"logit_scale": jnp.exp(params["logit_scale"][...])}
        if self.loss == "sigmoid":
            scalars["logit_bias"] = params["logit_bias"][...]
        return scalars

    def _metrics(self, state: TrainState, images, tokens) -> dict[str, jax.Array]:
        loss, accuracy = self._loss(state.params, state.frozen, images, tokens)
        return {"loss": loss, "accuracy": accuracy, **self._scalars(state.params)}

    def _grads(self, state: TrainState, images, tokens):
        """-> ((loss, accuracy), the loss's gradient w.r.t. state.params): in one pass, or with accumulate=K
        by the gradient cache (clip_jax.gradient_cache: the towers in K chunks, the loss over the whole batch)."""
        if self.accumulate == 1:
            return jax.value_and_grad(self._loss, has_aux=True)(state.params, state.frozen, images, tokens)
        frozen = state.frozen
        return gradient_cache.value_and_grad(
            self._head_loss, lambda p, x: self._image(p, frozen, x), lambda p, t: self._text(p, frozen, t),
            state.params, images, tokens, chunks=self.accumulate, devices=self._devices(),
            image_grad="image" in self._trains, text_grad="text" in self._trains)

    def _train_step(self, state: TrainState, images, tokens):
        (loss, accuracy), grads = self._grads(state, images, tokens)
        if self.mesh is not None:  # each device's share of the gradient, as its params (fsdp: split)
            grads = jax.lax.with_sharding_constraint(grads, self.state_sharding.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = clamp_logit_scale(optax.apply_updates(state.params, updates))
        metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads), **self._scalars(params)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _check_mesh(mesh: Mesh | None, fsdp: bool) -> None:
    if mesh is not None and DATA_AXIS not in mesh.axis_names:
        raise InputError(f"the mesh needs an axis named {DATA_AXIS!r}, got {mesh.axis_names}")
    if fsdp and mesh is None:
        raise InputError("fsdp=True splits the state over the mesh axis 'data': pass mesh=make_mesh()")


def _check_loss(model: nnx.Module, loss: str) -> None:
    if loss not in LOSSES:
        raise InputError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss == "sigmoid" and not hasattr(model, "logit_bias"):
        raise InputError(f"the sigmoid loss needs a model with a logit_bias (a Siglip), got a {type(model).__name__}")


def _accuracy(logits_per_image: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits_per_image, axis=-1) == jnp.arange(logits_per_image.shape[0]))


# --- checkpoints ------------------------------------------------------------------------------------


def save_checkpoint(directory: str | os.PathLike, state: TrainState, data: Mapping[str, Any] | None = None,
                    *, max_to_keep: int | None = 3) -> Path:
    """Save the whole training state under directory/<step>/ with orbax, and `data` (JSON: the data
    loader's position, seeds, ...) next to it. Orbax writes to a temporary folder and renames it when
    complete, so a crash never leaves a half checkpoint that restore would pick. -> the step's folder."""
    import orbax.checkpoint as ocp  # the optional `train` extra: imported where it is used

    directory = Path(directory).absolute()
    step = int(state.step)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    with ocp.CheckpointManager(directory, options=options) as manager:
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data or {}))
        ), force=True)
        manager.wait_until_finished()
    return directory / str(step)


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest complete checkpoint's step in `directory`, or None."""
    import orbax.checkpoint as ocp  # the optional `train` extra

    with ocp.CheckpointManager(Path(directory).absolute()) as manager:
        return manager.latest_step()


def restore_checkpoint(directory: str | os.PathLike, like: TrainState, step: int | None = None
                       ) -> tuple[TrainState, dict[str, Any]]:
    """Restore (state, data) saved by `save_checkpoint`; step None takes the newest.

    like: a state of the same structure (e.g. `trainer.init()`), which gives the shapes, dtypes and
    shardings to restore into. Values come back bit for bit.
    """
    import orbax.checkpoint as ocp  # the optional `train` extra

    directory = Path(directory).absolute()
    with ocp.CheckpointManager(directory) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
        ))
    return restored["state"], dict(restored["data"] or {})


__all__ = [
    "LOGIT_SCALE_MAX", "LOSSES", "Trainer", "TrainState", "clamp_logit_scale", "contrastive_loss", "decay_mask",
    "decays", "latest_step", "optimizer", "restore_checkpoint", "save_checkpoint", "schedule", "set_remat",
    "sigmoid_loss", "sigmoid_loss_sharded", "with_remat",
]
