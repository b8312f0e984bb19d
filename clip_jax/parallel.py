"""Sharded scoring over every device of a host, and over many hosts.

A mesh has two axes: "data" (the batch is split along it) and "model" (size 1 by default; above 1, the
big attention and MLP kernels are split along it, for towers too big for one device). Batches are padded
to one of a few fixed sizes (multiples of the data axis, so every device gets equal rows; a short batch
takes the smallest that holds it, so a small job costs what its rows cost, with one compiled program per
size), moved to the devices by a background thread while the previous batch computes, and unpadded after.
Images travel as uint8 (4x fewer bytes than float32) and are normalized on the device, inside the jit.

Multi-host: call `initialize(...)` (jax.distributed) in every process first. Every process then runs the
same calls on the same global inputs; each one loads only its own rows of every batch (the rows its
devices hold), and the results come back to every process in input order.

    sharded = ShardedCLIP(model, batch_size=256)
    feats = sharded.encode_image(uint8_images)            # [N, embed_dim] float32, on the host
    for start, feats, ok, errors in sharded.embed_image_files(paths, preprocess): ...
"""

from __future__ import annotations

import collections
import math
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .calls import check_platform
from .checkpoint.declared import declared_by_name
from .checks import check_images, check_tokens
from .errors import InputError
from .families import family_of
from .image import Decoder
from .model import CLIP, functional, l2_normalize
from .roles import DATA, MODEL, declared, flat_name, is_variable
from .tokenizer import DEFAULT_BUCKETS, trim_tokens

__all__ = [
    "DATA", "FSDP_MIN_SIZE", "MODEL", "ShardedCLIP", "EmbeddedBatch", "initialize", "make_mesh", "param_specs",
    "place", "shard_params", "pmap_logits", "prefetch", "gather",
]


# --- meshes and parameter placement -----------------------------------------------------------------


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, **kwargs: Any) -> None:
    """jax.distributed.initialize, once per process, before any other JAX call. With no arguments JAX
    detects the cluster (SLURM, Open MPI, TPU pods, ...). On the CPU backend, cross-process collectives
    use gloo (the default in jax 0.10), which is how the tests run two processes on one machine."""
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)


def make_mesh(model_parallel: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "model") mesh over `devices` (default: all devices of all processes).

    model_parallel: size of the "model" axis (1: params replicated everywhere). Devices are ordered by
    process first, so each process's devices hold one contiguous block of every batch.
    """
    devices = sorted(devices if devices is not None else jax.devices(), key=lambda d: (d.process_index, d.id))
    n = len(devices)
    if model_parallel < 1 or n % model_parallel:
        raise InputError(f"model_parallel={model_parallel} must divide the number of devices ({n})")
    # Auto axes: shardings are given at the jit boundary and XLA propagates them inside (GSPMD).
    auto = (jax.sharding.AxisType.Auto,) * 2
    processes = sorted({d.process_index for d in devices})
    if len(processes) == 1:
        return jax.make_mesh((n // model_parallel, model_parallel), (DATA, MODEL), axis_types=auto, devices=devices)
    # Many hosts: jax.make_mesh orders a TPU slice's chips by their physical layout, which interleaves
    # hosts along "data" (on a 4-host v5p 2x2x4, host 0 would hold rows 0-31 and 128-159). Each process
    # gets one block of rows instead, its own chips in physical order within it (the "model" axis stays
    # on one host's interconnect).
    per_process = n // len(processes)
    if per_process % model_parallel or any(sum(d.process_index == p for d in devices) != per_process
                                           for p in processes):
        raise InputError(f"model_parallel={model_parallel} must divide each process's {per_process} devices, "
                         "and every process must bring as many")
    try:
        grid = mesh_utils.create_hybrid_device_mesh((per_process // model_parallel, model_parallel),
                                                    (len(processes), 1), devices, process_is_granule=True)
    except (ValueError, NotImplementedError):  # no physical layout to follow: the process-sorted order
        grid = np.array(devices, dtype=object).reshape(n // model_parallel, model_parallel)
    return Mesh(grid, (DATA, MODEL), axis_types=auto)


# FSDP leaves a parameter replicated below this many elements (64 KiB in float32): every gain, bias and
# LayerNorm vector of a ViT-L/14 (at most 4096 wide), whose all-gather would cost a collective's latency for
# bytes that don't matter, while every matrix is split. big_vision's fsdp rule has the same kind of floor.
FSDP_MIN_SIZE = 2**14


def _spec(axes: tuple, shape: tuple, sizes: dict, fsdp: bool, min_size: int) -> P:
    """One parameter's PartitionSpec: its declared "model" split where the axis divides those dims, then (fsdp)
    "data" on its largest dim that "model" leaves free and the data axis divides."""
    m, d = sizes.get(MODEL, 1), sizes.get(DATA, 1)
    dims: list = [None] * len(shape)
    if m > 1 and len(axes) == len(shape) and all(a is None or shape[i] % m == 0 for i, a in enumerate(axes)):
        dims = list(axes)
    if fsdp and d > 1 and math.prod(shape) >= min_size:
        free = [i for i in range(len(shape)) if dims[i] is None and shape[i] % d == 0]
        if free:
            dims[max(free, key=lambda i: (shape[i], -i))] = DATA  # the largest; the first of equals
    return P(*dims) if any(a is not None for a in dims) else P()


def param_specs(params: Any, mesh: Mesh, fsdp: bool = False, min_size: int | None = None) -> Any:
    """A PartitionSpec for every leaf of `params`: the split each parameter declares (model.py: a
    Megatron split of the attention and MLP kernels along "model", the first matmul of each pair by
    output columns, the second by input rows; everything else replicated). A dim the "model" axis
    doesn't divide leaves that parameter replicated along "model".

    fsdp: also split each parameter of at least `min_size` elements along "data" (ZeRO-3): its largest
    dim that is not on "model" and that the data axis divides; one with no such dim stays replicated.
    min_size: default FSDP_MIN_SIZE (read when called).
    With jit's in/out shardings from these specs, XLA all-gathers a parameter where it is used and reduces
    its gradient to each device's share (a reduce-scatter where the compiler makes one, else an all-reduce
    and a slice), so each device keeps 1/data of the params, gradients and Adam moments.

    params: a model's nnx.State (its Variables carry the declarations; leaves that are not Variables, e.g.
    an optimizer's step count, are replicated), or any pytree of arrays whose paths are clip_jax names
    (looked up with checkpoint.declared.declared_by_name)."""
    sizes = dict(mesh.shape)
    floor = FSDP_MIN_SIZE if min_size is None else min_size
    spec = lambda axes, shape: _spec(axes, tuple(shape), sizes, fsdp, floor)

    if any(is_variable(x) for x in jax.tree.leaves(params, is_leaf=is_variable)):
        return jax.tree.map(lambda v: v.replace(spec(declared(v).axes, v.shape)) if is_variable(v) else P(),
                            params, is_leaf=is_variable)
    if sizes.get(MODEL, 1) == 1 and not fsdp:
        return jax.tree.map(lambda x: P(), params)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: spec(declared_by_name(flat_name(path)).axes, x.shape), params)


def shard_params(params: Any, mesh: Mesh, fsdp: bool = False) -> Any:
    """Place `params` on the mesh: split along "model" (and along "data" with fsdp) by param_specs,
    replicated along the rest. Every process must pass the same values (e.g. loaded from the same file)."""
    return place(params, jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(params, mesh, fsdp)))


def place(tree: Any, shardings: Any) -> Any:
    """Each leaf of `tree` put on the devices as the matching NamedSharding of `shardings` (a pytree of the
    same structure) says; a jax.ShapeDtypeStruct gets the sharding attached (an abstract model, to compile
    for a target ahead of time). With several processes every one must pass the same values: each fills
    its own devices from its copy."""

    def put(x, sharding):
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree, shardings)


def gather(x: jax.Array) -> np.ndarray:
    """A global array -> numpy on this host, whole and in order (an all-gather across processes)."""
    if jax.process_count() == 1 or x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils  # only with several processes: not loaded by one

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _head(model, family) -> dict[str, float]:
    """The family's head scalars of a two-tower model as floats; {} for a single tower (it embeds, it
    doesn't score pairs) or a model built from shapes (nothing to read)."""
    if family.kind_of(model) != "clip":
        return {}
    values = family.head(model)
    if any(isinstance(v, jax.ShapeDtypeStruct) for v in values.values()):
        return {}
    return {name: float(np.asarray(v)) for name, v in values.items()}


# --- host-to-device prefetch ------------------------------------------------------------------------


class _Raised(NamedTuple):
    error: BaseException


_END = object()


def prefetch(items: Iterable, size: int = 2) -> Iterator:
    """Iterate `items` in a background thread, `size` ahead of the consumer.

    Used with a generator that loads a batch and device_puts it: the transfer and the loading of batch
    i+1 overlap the compute of batch i. An exception in the producer is re-raised in the consumer;
    closing the consumer early stops the producer.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, size))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(_Raised(e))
            return
        put(_END)

    thread = threading.Thread(target=produce, name="clip_jax_prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


# --- the sharded model ------------------------------------------------------------------------------


class EmbeddedBatch(NamedTuple):
    """One batch of `embed_image_files`.

    start: input index of the first row; features: float32 [n, D] (rows of bad files are zeros);
    ok: bool [n], False for bad files; errors: [(path, reason)] of the bad files this process read.
    """

    start: int
    features: np.ndarray
    ok: np.ndarray
    errors: list


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


MIN_BUCKET = 8  # rows per "data" device of the smallest default bucket


def _bucket_sizes(batch_size: int, n_data: int, buckets: Sequence[int] | None) -> tuple[int, ...]:
    """The padded batch sizes, ascending, each a multiple of n_data and at most batch_size (included).
    Default: n_data * 8 * 2**k, so a job compiles at most log2(batch_size / (8 * n_data)) + 2 programs.
    Not below 8 rows a device: fewer save little, and a one-row step is a matrix-vector product, whose
    float32 rounding differs more from a batch's."""
    if buckets is None:
        smallest = MIN_BUCKET * n_data
        buckets = [smallest << k for k in range(max(batch_size // smallest, 1).bit_length())]
    return tuple(sorted({min(_round_up(max(1, b), n_data), batch_size) for b in buckets} | {batch_size}))


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    if len(x) == rows:
        return x
    out = np.zeros((rows,) + x.shape[1:], x.dtype)  # zero pixels / token id 0: any valid input will do
    out[: len(x)] = x
    return out


class ShardedCLIP:
    """A CLIP whose batches are split over a mesh (params replicated, or split along "model").

    Args:
      model: a clip_jax two-tower model of any family (CLIP, Siglip), or a single tower (it embeds, it
        doesn't score pairs), in any compute dtype. clip_logits scores with the family's logits and head
        (SigLIP: exp(logit_scale) * cos + logit_bias).
      mesh: from make_mesh; default: all devices along "data".
      batch_size: global rows per step, rounded up to a multiple of the "data" axis. Full batches are
        this size; a shorter one (the last of a job, or a small job) is padded to the smallest of
        `buckets` that holds it, so each size compiles once and a small job doesn't pay a full batch.
      buckets: the padded sizes a short batch may take, each rounded up to a multiple of the "data" axis
        (default: the data axis size times 8, 16, 32, ... below batch_size; () pads every batch to
        batch_size: one program per job). See padded_rows. What padding rows hold never changes the real
        rows; on the CPU a row's last float32 bits can follow the padded size (XLA rounds matmuls by shape).
      prefetch: batches moved to the devices ahead of the compute.
      text_buckets: token lengths the text batches are trimmed to (exact: see tokenizer.trim_tokens).

    Attributes: mesh, batch_size, buckets (ascending, batch_size last), config, family
    (clip_jax.families), params (the sharded pytree), head (the scalars the family's logits take, as
    floats; {} for a single tower or a model built from shapes), logit_scale (a float, log scale, or None).
    """

    def __init__(self, model: CLIP, mesh: Mesh | None = None, batch_size: int = 256, prefetch: int = 2,
                 text_buckets: Sequence[int] = DEFAULT_BUCKETS, buckets: Sequence[int] | None = None):
        self.mesh = mesh if mesh is not None else make_mesh()
        check_platform(model, self.mesh.devices.flat[0].platform)
        self.n_data = self.mesh.shape[DATA]
        self.batch_size = _round_up(max(1, batch_size), self.n_data)
        self.buckets = _bucket_sizes(self.batch_size, self.n_data, buckets)
        self._local: dict[int, slice] = {}
        self.prefetch = prefetch
        self.config = model.config
        self.family = family_of(model)
        self.text_buckets = tuple(sorted(text_buckets))
        self.rows = NamedSharding(self.mesh, P(DATA))  # any rank: the trailing dims are replicated
        image_fn, params = functional(model, "image_features")
        text_fn, _ = functional(model, "text_features")
        self.params = shard_params(params, self.mesh)
        shardings = jax.tree.map(lambda s: NamedSharding(self.mesh, s), param_specs(params, self.mesh))
        self.head = _head(model, self.family)
        self.logit_scale = self.head.get("logit_scale")

        # The programs take the params as a flat list: flattening an nnx.State walks it in Python, about a
        # millisecond per call for ViT-B/32, where a list is flattened in C++.
        self._leaves, treedef = jax.tree.flatten(self.params)
        leaf_shardings = jax.tree.leaves(shardings)

        def jitted(fn, norm: bool):
            def run(leaves, x):
                y = fn(jax.tree.unflatten(treedef, leaves), x)
                return l2_normalize(y) if norm else y

            return jax.jit(run, in_shardings=(leaf_shardings, self.rows), out_shardings=self.rows)

        self._fns = {(kind, norm): jitted(fn, norm) for kind, fn in (("image", image_fn), ("text", text_fn))
                     for norm in (False, True)}

    def lower(self, kind: str, rows: int, normalized: bool = False, length: int | None = None,
              uint8: bool = True) -> jax.stages.Lowered:
        """The compiled step of `kind` ("image" or "text") for a global batch of `rows`, lowered from
        shapes; `.compile()` it ahead of time. Built from an abstract model (Variables holding
        jax.ShapeDtypeStructs) over a target's mesh (a TPU topology's devices), it compiles for
        hardware this machine doesn't have. length: token length (default: the context length)."""
        if kind == "image":
            size = self.config.vision.image_size
            shape, dtype = (rows, size, size, 3), np.uint8 if uint8 else np.float32
        else:
            shape, dtype = (rows, length or self.config.text.context_length), np.int32
        x = jax.ShapeDtypeStruct(shape, dtype, sharding=self.rows)
        return self._fns[kind, normalized].lower(self._leaves, x)

    # -- which rows this process feeds --

    def padded_rows(self, n: int) -> int:
        """The rows a global batch of n <= batch_size rows is padded to: the smallest bucket that holds it.
        A function of n alone, so every process of a multi-process call steps the same shapes."""
        return next(b for b in self.buckets if b >= n) if n <= self.batch_size else self.batch_size

    def local_rows(self, batch_rows: int) -> slice:
        """The rows of a [batch_rows, ...] global batch that this process's devices hold (contiguous)."""
        if batch_rows not in self._local:
            self._local[batch_rows] = self._local_rows(batch_rows)
        return self._local[batch_rows]

    def _local_rows(self, batch_rows: int) -> slice:
        idx = self.rows.addressable_devices_indices_map((batch_rows,))
        starts = sorted({s[0].start or 0 for s in idx.values()})
        stops = sorted({s[0].stop if s[0].stop is not None else batch_rows for s in idx.values()})
        lo, hi = starts[0], stops[-1]
        if sum(b - a for a, b in zip(starts, stops)) != hi - lo:
            raise ValueError("this process's devices do not hold a contiguous block of the batch; use make_mesh")
        return slice(lo, hi)

    def _to_device(self, local: np.ndarray, global_rows: int) -> jax.Array:
        if jax.process_count() == 1:
            return jax.device_put(local, self.rows)
        return jax.make_array_from_process_local_data(self.rows, local, (global_rows,) + local.shape[1:])

    def _stream(self, kind: str, n: int, load: Callable[[int, int, slice], tuple[np.ndarray, Any]],
                normalized: bool) -> Iterator[tuple[int, np.ndarray, Any]]:
        """Yield (start, features [rows, D], info) per global batch, in order.

        load(start, stop, local) -> (this process's rows of the batch [start, stop), info); `local` is
        the slice of the padded batch (padded_rows(stop - start) rows) those rows fill. Loading and the
        transfer run in the prefetch thread; one batch stays in flight on the devices while the previous
        result comes back.
        """
        bs = self.batch_size
        fn = self._fns[kind, normalized]

        def host_batches():
            for start in range(0, n, bs):
                stop = min(start + bs, n)
                rows = self.padded_rows(stop - start)
                local = self.local_rows(rows)
                x, info = load(start, stop, local)
                yield start, stop, self._to_device(_pad_rows(x, local.stop - local.start), rows), info

        pending: collections.deque = collections.deque()
        for start, stop, x, info in prefetch(host_batches(), self.prefetch):
            pending.append((start, stop, fn(self._leaves, x), info))
            if len(pending) > 1:  # dispatch batch i+1 before waiting on batch i
                s, e, y, i = pending.popleft()
                yield s, gather(y)[: e - s], i
        while pending:
            s, e, y, i = pending.popleft()
            yield s, gather(y)[: e - s], i

    # -- arrays in memory --

    def encode_image(self, images: np.ndarray, normalized: bool = False) -> np.ndarray:
        """images: [N, H, W, 3] uint8 pixels (normalized on the device) or float normalized, the same
        global array in every process -> float32 [N, embed_dim] on the host (L2-normalized if asked)."""
        images = check_images(images, self.config.vision.image_size)
        n = len(images)

        def load(start, stop, local):
            return np.asarray(images[start + local.start: min(start + local.stop, stop)]), None

        parts = [y for _, y, _ in self._stream("image", n, load, normalized)]
        return np.concatenate(parts) if parts else np.zeros((0, self.config.embed_dim), np.float32)

    def encode_text(self, tokens: np.ndarray, normalized: bool = False) -> np.ndarray:
        """tokens: int [N, L] (clip_jax.tokenize), the same in every process -> float32 [N, embed_dim].
        Each batch is cut to the shortest bucket that holds its end tokens where that gives identical
        features (TextConfig.trimmable); other towers see all context_length columns."""
        t = self.config.text
        tokens = np.asarray(check_tokens(tokens, t.context_length, t.vocab_size), np.int32)
        n = len(tokens)

        trim = t.trimmable  # exact only for causal towers pooled at the EOT or first token

        def load(start, stop, local):
            # Trim on the global batch, so every process picks the same length; as encode_text's auto
            # mode, a batch with a row without EOT is kept whole.
            batch = tokens[start:stop]
            width = trim_tokens(batch, self.text_buckets, strict=False).shape[1] if trim else batch.shape[1]
            return tokens[start + local.start: min(start + local.stop, stop), :width], None

        parts = [y for _, y, _ in self._stream("text", n, load, normalized)]
        return np.concatenate(parts) if parts else np.zeros((0, self.config.embed_dim), np.float32)

    def clip_logits(self, images: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (logits_per_image [N_img, N_txt], logits_per_text), float32, as clip_jax.clip_logits."""
        if not self.head:
            raise InputError("this model has no logit scale (a single tower, or built from shapes only): "
                             "clip_logits needs both towers")
        img = self.encode_image(images)
        txt = self.encode_text(tokens)
        head = {name: jnp.asarray(value, jnp.float32) for name, value in self.head.items()}
        per_image, per_text = self.family.logits(jnp.asarray(img), jnp.asarray(txt), **head)
        return np.asarray(per_image), np.asarray(per_text)

    # -- files --

    def embed_image_files(self, paths: Sequence[str], transform, num_threads: int | None = None,
                          normalized: bool = True) -> Iterator[EmbeddedBatch]:
        """Embed image files batch by batch, in input order; bad files are skipped, not fatal.

        paths: the global list (the same in every process); each process decodes only its rows.
        transform: clip_jax.image.image_transform(...) (its uint8 `pixels` path is used).
        num_threads: decoding threads per process (default: the CPU count). Decoding runs ahead of the
        devices by `prefetch` batches.
        """
        n = len(paths)
        shape = (self.config.vision.image_size,) * 2 + (3,)
        if tuple(transform.shape) != shape:
            raise InputError(f"transform makes {transform.shape} images; this model takes {shape}")
        with Decoder(transform, num_threads) as decoder:
            load = self._file_loader(paths, decoder)
            for start, feats, (ok_local, errs) in self._stream("image", n, load, normalized):
                ok = self._gather_mask(ok_local, self.padded_rows(len(feats)))[: len(feats)]
                feats = np.where(ok[:, None], feats, 0).astype(np.float32)
                yield EmbeddedBatch(start, feats, ok, errs)

    def _file_loader(self, paths: Sequence[str],
                     decoder: Decoder) -> Callable[[int, int, slice], tuple[np.ndarray, tuple]]:
        """`_stream`'s load for image files: this process's rows of each batch, decoded on `decoder`
        `prefetch + 1` batches ahead of the one asked for -> (uint8 pixels, (ok [rows], errors))."""
        n, bs = len(paths), self.batch_size
        pending: dict[int, tuple[np.ndarray, list[Future]]] = {}
        ahead = self.prefetch + 1  # batches being decoded beyond the one the devices need next

        def submit(start):
            if start >= n or start in pending:
                return
            stop = min(start + bs, n)
            local = self.local_rows(self.padded_rows(stop - start))
            lo, hi = start + local.start, min(start + local.stop, stop)
            buf = np.zeros((max(hi - lo, 0),) + decoder.transform.shape, np.uint8)
            pending[start] = (buf, decoder.submit(paths[lo:hi], buf))

        def load(start, stop, local):
            for k in range(ahead + 1):
                submit(start + k * bs)
            buf, futures = pending.pop(start)
            lo = start + local.start
            results = [f.result() for f in futures]
            errors = [(os.fspath(paths[lo + i]), e.reason) for i, e in enumerate(results) if e is not None]
            return buf, (np.array([e is None for e in results], bool), errors)

        return load

    def _gather_mask(self, ok_local: np.ndarray, bs: int) -> np.ndarray:
        """This process's per-row flags -> the whole batch's, in order (padding rows are False)."""
        rows = self.local_rows(bs)
        padded = _pad_rows(ok_local, rows.stop - rows.start)
        if jax.process_count() == 1:
            out = np.zeros(bs, bool)
            out[rows] = padded
            return out
        return gather(self._to_device(padded, bs)).astype(bool)


# --- pmap -------------------------------------------------------------------------------------------


def pmap_logits(model: CLIP, devices: Sequence[jax.Device] | None = None) -> Callable[[Any, Any], jax.Array]:
    """clip_logits under jax.pmap, params replicated (the older per-device API many TPU codebases use): the
    model's own __call__, so each family's logits (SigLIP's with its logit_bias).

    Returns f(images [n_dev, B, H, W, 3], tokens [n_dev, T, L]) -> logits_per_image [n_dev, B, T]: each
    device scores its own images against its own texts. devices: jax.pmap's (default: all local ones).
    `f.lower(images, tokens)` lowers the same program from shapes, e.g. for a TPU topology's devices
    and a model built from shapes, to `.compile()` it ahead of time.
    """
    check_platform(model, (devices or jax.local_devices())[0].platform)
    fn, params = functional(model)
    scores = jax.pmap(lambda p, im, tok: fn(p, im, tok)[0], in_axes=(None, 0, 0), devices=devices)

    def run(images, tokens):
        return scores(params, images, tokens)

    run.lower = lambda images, tokens: scores.lower(params, images, tokens)
    return run
