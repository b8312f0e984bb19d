"""SigLIP's sigmoid loss, on one device and in chunks over a mesh axis, never the global N x N on one device.

    loss = sigmoid_loss(image_features, text_features, scale, bias)          # open_clip SigLipLoss.forward's args
    loss = sigmoid_loss_sharded(image_features, text_features, scale, bias, mesh)   # the same number, in a ring

The sharded form is a `jax.shard_map` over the mesh axis "data": each device scores its own images against its
own texts (the only block with positives), then passes its text features to the next device (`ppermute`) and
scores the chunk it receives, until every chunk has visited every device. Its gradient is a ring too (a
custom VJP: the backward pass sends each text chunk around again with its gradient accumulator, which arrives
home at the end), so what a device holds is its own features, one visiting chunk and one [n, n] block of
logits, n = N / devices: O(n^2 + n * D) memory, whatever the number of devices, and no all-gather.
big_vision's siglip.py leaves this as a TODO; open_clip's SigLipLoss "shift" is the same ring under
torch.distributed.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from .errors import InputError
from .roles import DATA

__all__ = ["contrastive_loss", "contrastive_loss_sharded", "sigmoid_loss", "sigmoid_loss_sharded", "top1_sharded"]


def _scalar(x, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.size != 1:
        raise InputError(f"sigmoid loss: {name} must be a scalar (one element), got shape {tuple(x.shape)}")
    return x.reshape(()).astype(jnp.float32)


def _check_features(image_features, text_features) -> None:
    if image_features.ndim != 2 or text_features.ndim != 2 or image_features.shape != text_features.shape:
        raise InputError(f"sigmoid loss: image and text features must both be [N, D] for N matching pairs, got "
                         f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")


def _labels(n: int, positives: bool) -> jax.Array:
    """[n, n]: +1 on the diagonal (the matching pairs) when the block holds them, -1 everywhere else."""
    return 2 * jnp.eye(n, dtype=jnp.float32) - 1 if positives else -jnp.ones((n, n), jnp.float32)


def _block_loss(img: jax.Array, txt: jax.Array, scale: jax.Array, bias: jax.Array, positives: bool) -> jax.Array:
    """sum over the block of -log sigmoid(label * (scale * img . txt + bias)): img [n, D], txt [m, D] -> []."""
    logits = scale * jnp.dot(img, txt.T, precision="highest") + bias
    return -jnp.sum(jax.nn.log_sigmoid(_labels(img.shape[0], positives) * logits))


def sigmoid_loss(image_features: jax.Array, text_features: jax.Array, scale, bias) -> jax.Array:
    """SigLIP's loss over N matching pairs, as open_clip's `SigLipLoss()(image_features, text_features,
    logit_scale, logit_bias)` computes it on one device.

    image_features, text_features: [N, D], L2-normalized; scale: exp(t) (already exponentiated, as open_clip
    passes logit_scale.exp()); bias: b. -> float32 []: -(1/N) * sum over all N x N pairs of
    log sigmoid(label * (scale * cos + bias)), label +1 for the N matching pairs and -1 for the rest
    (open_clip divides by the number of images). Computed in float32 whatever the features' dtype.
    """
    _check_features(image_features, text_features)
    img, txt = image_features.astype(jnp.float32), text_features.astype(jnp.float32)
    return _block_loss(img, txt, _scalar(scale, "scale"), _scalar(bias, "bias"), True) / img.shape[0]


# --- the ring -------------------------------------------------------------------------------------------


def _block_grads(img, txt, scale, bias, positives: bool):
    """The gradients of _block_loss w.r.t. (img, txt, scale, bias), recomputing the block's logits."""
    labels = _labels(img.shape[0], positives)
    cos = jnp.dot(img, txt.T, precision="highest")
    # d/dz of -log sigmoid(y z) is -y sigmoid(-y z)
    g = -labels * jax.nn.sigmoid(-labels * (scale * cos + bias))
    return (scale * jnp.dot(g, txt, precision="highest"), scale * jnp.dot(g.T, img, precision="highest"),
            jnp.sum(g * cos), jnp.sum(g))


def _shift(x, axis: str, size: int):
    """Each device's x to the next device along `axis` (device i receives device i-1's)."""
    return jax.lax.ppermute(x, axis, [(j, (j + 1) % size) for j in range(size)])


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _ring_sum(img, txt, scale, bias, axis: str, size: int):
    """Inside shard_map: the loss summed over every (image, text) pair of the global batch, on every device.
    img, txt: this device's [n, D] float32; scale, bias: []. -> [] (the same on every device)."""
    return _ring_forward(img, txt, scale, bias, axis, size)[0]


def _ring_forward(img, txt, scale, bias, axis, size):
    def visit(carry, _):
        chunk, total = carry
        chunk = _shift(chunk, axis, size)  # after k shifts: the texts of device i - k, all negatives here
        return (chunk, total + _block_loss(img, chunk, scale, bias, False)), None

    first = _block_loss(img, txt, scale, bias, True)
    (_, total), _ = jax.lax.scan(visit, (txt, first), length=size - 1)
    return jax.lax.psum(total, axis), (img, txt, scale, bias)


def _ring_backward(axis, size, residuals, ct):
    img, txt, scale, bias = residuals

    def visit(carry, _):
        chunk, d_chunk, d_img, d_scale, d_bias = carry
        # the chunk travels with its gradient so far: what every device's images add to it
        chunk, d_chunk = _shift((chunk, d_chunk), axis, size)
        gi, gt, gs, gb = _block_grads(img, chunk, scale, bias, False)
        return (chunk, d_chunk + gt, d_img + gi, d_scale + gs, d_bias + gb), None

    # The diagonal block first: it starts the accumulators (varying over `axis`, as the scan carries them).
    gi, gt, gs, gb = _block_grads(img, txt, scale, bias, True)
    (_, d_txt, d_img, d_scale, d_bias), _ = jax.lax.scan(visit, (txt, gt, gi, gs, gb), length=size - 1)
    d_txt = _shift(d_txt, axis, size)  # after size - 1 shifts it sits on device i + 1: one more takes it home
    # scale and bias are the same on every device: their gradient is every device's part, summed
    return ct * d_img, ct * d_txt, ct * jax.lax.psum(d_scale, axis), ct * jax.lax.psum(d_bias, axis)


_ring_sum.defvjp(_ring_forward, _ring_backward)


def _ring_size(mesh: Mesh, axis: str, n: int) -> int:
    """The number of devices along `axis`, which must divide the batch size n."""
    if axis not in mesh.axis_names:
        raise InputError(f"the mesh has no axis {axis!r} to split the batch over (its axes: {mesh.axis_names})")
    size = mesh.shape[axis]
    if n % size:
        raise InputError(f"batch size {n} is not divisible by the {size} devices of the mesh axis {axis!r}")
    return size


def sigmoid_loss_sharded(image_features: jax.Array, text_features: jax.Array, scale, bias, mesh: Mesh,
                         axis: str = DATA) -> jax.Array:
    """`sigmoid_loss` of the global batch, computed in a ring over the mesh axis `axis` (module docstring):
    equal to it to float32 rounding, value and gradient, with O((N / devices)^2) memory per device.

    image_features, text_features: [N, D], L2-normalized, N divisible by mesh.shape[axis] (row r on the
    device holding rows r // (N / devices)); they may live anywhere (jit reshards them along `axis`).
    scale: exp(t); bias: b. -> float32 [], replicated. Usable inside jit (the Trainer's step) and under
    jax.grad. Other mesh axes (e.g. "model") see the same computation on each of their devices.
    """
    _check_features(image_features, text_features)
    n = image_features.shape[0]
    size = _ring_size(mesh, axis, n)
    rows = PartitionSpec(axis)
    ring = jax.shard_map(lambda i, t, s, b: _ring_sum(i, t, s, b, axis, size), mesh=mesh,
                         in_specs=(rows, rows, PartitionSpec(), PartitionSpec()), out_specs=PartitionSpec())
    total = ring(image_features.astype(jnp.float32), text_features.astype(jnp.float32), _scalar(scale, "scale"),
                 _scalar(bias, "bias"))
    return total / n  # open_clip's normalization: by the number of images of the global batch


def _ring_top1(img, txt, axis: str, size: int):
    """Inside shard_map: how many of this device's images score their own text above every other text of
    the global batch (cosines: a positive scale and a shared bias don't change the order). -> [] summed
    over devices. A tie with another text counts as a miss (argmax would pick the lower index)."""
    block = jnp.dot(img, txt.T, precision="highest")
    own = jnp.diagonal(block)
    best = jnp.max(jnp.where(jnp.eye(img.shape[0], dtype=bool), -jnp.inf, block), axis=1)

    def visit(carry, _):
        chunk, best = carry
        chunk = _shift(chunk, axis, size)
        return (chunk, jnp.maximum(best, jnp.max(jnp.dot(img, chunk.T, precision="highest"), axis=1))), None

    (_, best), _ = jax.lax.scan(visit, (txt, best), length=size - 1)
    return jax.lax.psum(jnp.sum(own > best, dtype=jnp.int32), axis)


def top1_sharded(image_features: jax.Array, text_features: jax.Array, mesh: Mesh, axis: str = DATA) -> jax.Array:
    """In-batch image -> text top-1 accuracy of the global batch, in the same ring as `sigmoid_loss_sharded`
    (no all-gather, O((N / devices)^2) memory): the fraction of images whose own text has the highest
    cosine. image_features, text_features: [N, D] normalized. -> float32 [], replicated."""
    _check_features(image_features, text_features)
    size = _ring_size(mesh, axis, image_features.shape[0])
    rows = PartitionSpec(axis)
    ring = jax.shard_map(lambda i, t: _ring_top1(i, t, axis, size), mesh=mesh, in_specs=(rows, rows),
                         out_specs=PartitionSpec())
    hits = ring(image_features.astype(jnp.float32), text_features.astype(jnp.float32))
    return jax.lax.stop_gradient(hits.astype(jnp.float32) / image_features.shape[0])


# --- CLIP's softmax loss, on one device and by rows on each device -------------------------------------


def contrastive_loss(logits_per_image: jax.Array) -> jax.Array:
    """Symmetric InfoNCE over a batch of N matching pairs.

    logits_per_image: [N, N], row i = image i against every text; the positive is the diagonal.
    -> float32 []: the mean of cross-entropy image->text (rows) and text->image (columns), as OpenAI's
    and open_clip's ClipLoss.
    """
    logits = logits_per_image.astype(jnp.float32)
    labels = jnp.arange(logits.shape[0])
    per_image = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    per_text = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    return (per_image + per_text) / 2


def _infonce_block(img, txt, scale, axis: str):
    """Inside shard_map: this device's block of the global logits, scale * img @ every text^T, [n, N], the
    texts gathered along `axis`; and the global column of each of its rows' matching text."""
    txt_all = jax.lax.all_gather(txt, axis, tiled=True)
    labels = jax.lax.axis_index(axis) * img.shape[0] + jnp.arange(img.shape[0])  # row r of device k: pair k n + r
    return scale * jnp.dot(img, txt_all.T, precision="highest"), txt_all, labels


def _column_lse(logits, axis: str):
    """log-sum-exp of each column of the global logits, [N], from each device's rows: the max first (pmax),
    so that exp never overflows, then the sums of exp across devices (psum)."""
    top = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(logits, axis=0)), axis)
    return top + jnp.log(jax.lax.psum(jnp.sum(jnp.exp(logits - top), axis=0), axis))


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _infonce_sum(img, txt, scale, axis: str):
    """Inside shard_map: both directions' cross-entropies summed over the global batch, on every device.
    img, txt: this device's [n, D] float32; scale: []. -> []. One [n, N] block of logits per device: the
    rows' log-sum-exp is local, the columns' is reduced across devices, and the backward pass computes the
    block again instead of keeping it."""
    return _infonce_forward(img, txt, scale, axis)[0]


def _infonce_forward(img, txt, scale, axis):
    logits, _, labels = _infonce_block(img, txt, scale, axis)
    rows = jax.nn.logsumexp(logits, axis=1)
    columns = _column_lse(logits, axis)  # the same [N] on every device
    positives = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    # every positive appears once per direction: in its image's row and in its text's column
    total = jax.lax.psum(jnp.sum(rows) - 2 * jnp.sum(positives), axis) + jnp.sum(columns)
    return total, (img, txt, scale, rows, columns)


def _infonce_backward(axis, residuals, ct):
    img, txt, scale, rows, columns = residuals
    logits, txt_all, labels = _infonce_block(img, txt, scale, axis)
    # d total / d logits: the row softmax plus the column softmax, minus 2 at each positive
    d_logits = (jnp.exp(logits - rows[:, None]) + jnp.exp(logits - columns[None, :])
                - 2 * jax.nn.one_hot(labels, logits.shape[1], dtype=logits.dtype))
    d_img = scale * jnp.dot(d_logits, txt_all, precision="highest")
    # every device's rows add to every text's gradient: summed and scattered back to the texts' devices
    d_txt = jax.lax.psum_scatter(scale * jnp.dot(d_logits.T, img, precision="highest"), axis, tiled=True)
    d_scale = jax.lax.psum(jnp.sum(d_logits * logits), axis) / scale
    return ct * d_img, ct * d_txt, ct * d_scale


_infonce_sum.defvjp(_infonce_forward, _infonce_backward)


def contrastive_loss_sharded(image_features: jax.Array, text_features: jax.Array, scale, mesh: Mesh,
                             axis: str = DATA) -> jax.Array:
    """CLIP's symmetric InfoNCE of the global batch (contrastive_loss of scale * img @ txt.T,
    open_clip's ClipLoss with gather_with_grad) with each device computing only its own block of the logits:
    its images against every text (the texts all-gathered along `axis`), the rows' log-sum-exp on the device
    and the columns' reduced across devices (a max, then a sum of [N] vectors), and a custom gradient that
    computes the block again and reduce-scatters the texts' gradients home. Memory per device: the gathered
    text features [N, D] and one [N / devices, N] block of logits (with its gradient in the backward pass).

    image_features, text_features: [N, D], L2-normalized, N divisible by mesh.shape[axis]; scale: the
    exponentiated logit scale. -> float32 [], replicated; usable inside jit and under jax.grad."""
    _check_features(image_features, text_features)
    n = image_features.shape[0]
    _ring_size(mesh, axis, n)
    rows = PartitionSpec(axis)
    local = jax.shard_map(lambda i, t, s: _infonce_sum(i, t, s, axis), mesh=mesh,
                          in_specs=(rows, rows, PartitionSpec()), out_specs=PartitionSpec())
    total = local(image_features.astype(jnp.float32), text_features.astype(jnp.float32), _scalar(scale, "scale"))
    return total / (2 * n)  # the mean over images and over texts, halved: the two directions' mean
