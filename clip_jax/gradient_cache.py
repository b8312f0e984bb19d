"""The gradient cache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup"): the exact gradient of a contrastive loss over a batch too big for one pass's activations.

    (loss, aux), grads = value_and_grad(loss_fn, image_fn, text_fn, params, images, tokens, chunks=4)

A contrastive loss couples every pair of the batch (each image is scored against every text), so it does not
split into independent micro-batches: accumulating the gradients of K micro-batch losses gives the gradient
of a different loss, one with K times fewer negatives per positive (and, for the softmax loss, another
normalization). The gradient cache keeps the loss whole and splits only the towers, whose features are
row-wise functions of the inputs:

1. embed the batch in K chunks with no activations kept (a plain forward pass per chunk): the features of
   the whole batch, [N, E] per tower, are all that stays;
2. the loss over the whole batch and its gradient w.r.t. the features (and w.r.t. the params the loss reads
   directly: logit_scale, logit_bias) -- on a mesh, the same sharded losses as one pass;
3. per chunk, run the towers again under jax.vjp and pull the chunk's feature gradients back to the params;
   the sum over chunks is the gradient of the whole batch's loss, by the chain rule.

Memory: one chunk's activations (N / K rows) plus the [N, E] features and their gradients; compute: one
more forward pass of the towers (as remat). On a mesh, each chunk takes N / (K * devices) rows of every
device's share, so every chunk keeps all devices busy and nothing moves between them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .errors import InputError

__all__ = ["check_chunks", "value_and_grad"]


def check_chunks(batch: int, chunks: int, devices: int = 1) -> None:
    """InputError unless `batch` rows split into `chunks` chunks of equal rows on each of `devices` devices."""
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise InputError(f"accumulate must be a whole number >= 1, got {chunks!r}")
    if batch % (chunks * devices):
        raise InputError(f"batch size {batch} is not divisible by accumulate={chunks} x {devices} devices of the "
                         f"mesh axis 'data' ({chunks * devices}): each chunk takes equal rows on every device")


def _to_chunks(x: jax.Array, chunks: int, devices: int) -> jax.Array:
    """[N, ...] rows (device d holding rows d * N/devices ...) -> [chunks, N / chunks, ...]: chunk k holds
    rows k * c ... (k + 1) * c - 1 of every device's block (c = N / (chunks * devices)), in device order."""
    n = x.shape[0]
    x = x.reshape((devices, chunks, n // (devices * chunks)) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape((chunks, n // chunks) + x.shape[3:])


def _from_chunks(x: jax.Array, devices: int) -> jax.Array:
    """The inverse of _to_chunks: [chunks, N / chunks, ...] -> [N, ...] in the original row order."""
    chunks, m = x.shape[:2]
    x = x.reshape((chunks, devices, m // devices) + x.shape[2:])
    return jnp.swapaxes(x, 0, 1).reshape((chunks * m,) + x.shape[3:])


def _embed(fn: Callable, params: Any, x: jax.Array) -> jax.Array:
    """fn(params, chunk) -> [c, E] for every chunk of x [K, c, ...], one after another, nothing kept for a
    backward pass (no gradient is taken through this). -> [K, c, E]."""
    return jax.lax.map(lambda chunk: fn(params, chunk), x)


def value_and_grad(loss_fn: Callable, image_fn: Callable, text_fn: Callable, params: Any, images: jax.Array,
                   tokens: jax.Array, *, chunks: int, devices: int = 1, image_grad: bool = True,
                   text_grad: bool = True) -> tuple[tuple[jax.Array, Any], Any]:
    """The loss of the whole batch and its gradient w.r.t. `params`, the towers run in `chunks` chunks (module
    docstring); equal to jax.value_and_grad(lambda p: loss_fn(p, image_fn(p, images), text_fn(p, tokens)),
    has_aux=True)(params) up to float32 rounding.

    loss_fn(params, image_features [N, E], text_features [N, E]) -> (loss [], aux);
    image_fn(params, images [n, ...]) -> [n, E]; text_fn(params, tokens [n, L]) -> [n, E], row-wise functions
    (the same row gives the same features whatever else is in the chunk: true of the towers, whose BatchNorm
    uses its running statistics). images, tokens: [N, ...] with N divisible by chunks * devices; on a mesh
    split over `devices` devices along the batch. image_grad / text_grad: False when no param of that tower
    is trained (LiT): its chunks are not run again. -> ((loss, aux), grads like params).
    """
    check_chunks(images.shape[0], chunks, devices)
    image_chunks, token_chunks = _to_chunks(images, chunks, devices), _to_chunks(tokens, chunks, devices)
    img = _from_chunks(_embed(image_fn, params, image_chunks), devices)
    txt = _from_chunks(_embed(text_fn, params, token_chunks), devices)
    (loss, aux), (grads, d_img, d_txt) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(params, img, txt)

    def pull(fn: Callable, x: jax.Array, d: jax.Array, grads: Any) -> Any:
        """grads + the params' share of the cotangent d [N, E] of fn's features over every chunk of x."""
        def one(acc, chunk_and_d):
            chunk, d_chunk = chunk_and_d
            _, vjp = jax.vjp(lambda p: fn(p, chunk), params)
            return jax.tree.map(jnp.add, acc, vjp(d_chunk)[0]), None

        return jax.lax.scan(one, grads, (x, _to_chunks(d, chunks, devices)))[0]

    if image_grad:
        grads = pull(image_fn, image_chunks, d_img, grads)
    if text_grad:
        grads = pull(text_fn, token_chunks, d_txt, grads)
    return (loss, aux), grads
