"""Evaluations with CLIP_benchmark's definitions and result format: zero-shot classification, zero-shot
retrieval and linear probes, with the features computed by a ShardedCLIP over every device.

    import clip_jax, clip_jax.jobs.eval as ev
    from clip_jax.jobs.eval_data import classification_data, retrieval_data
    model, preprocess = clip_jax.load("model.safetensors")
    data = classification_data("imagenet/val")                      # ImageFolder, or the wds_* layout
    ev.zeroshot_classification(model, preprocess, data)             # {"acc1", "acc5", "mean_per_class_recall"}
    ev.zeroshot_retrieval(model, preprocess, retrieval_data("pairs.csv"))
    ev.linear_probe(model, preprocess, classification_data("cifar", "train"),
                    classification_data("cifar", "test"))          # {"lp_acc1", ..., "weight_decay"}

The metrics are CLIP_benchmark's (clip_benchmark/metrics/*.py), computed the same way:
- classification: `acc1`/`acc5` are top-k accuracy on cosine scores against class weights (each class the
  renormalized mean of its normalized prompt embeddings); `acc5` is NaN under 5 classes;
  `mean_per_class_recall` is scikit-learn's balanced_accuracy_score of the top-1 prediction (the mean over
  the classes present in the labels of each class's recall).
- retrieval: `image_retrieval_recall@k` (text queries, over images) and `text_retrieval_recall@k` (image
  queries, over texts): the fraction of queries with at least one positive among the top k. A query
  without positives (an image without captions) counts as a miss. Equal scores rank by index.
- linear probe: CLIP_benchmark's regularization search (97 values of logspace(-6, 2), 7 first, then
  three-point refinement with spans 8, 4, 2, 1, keeping the first best), on a validation split carved from
  the training set; then a fit on train + validation and the test metrics `lp_acc1`, `lp_acc5`,
  `lp_mean_per_class_recall`. Where CLIP_benchmark fits each probe with minibatch AdamW (weight decay
  `wd`), this fits the objective that weight decay approximates exactly, with full-batch L-BFGS:
  mean cross-entropy + wd/2 * ||W||^2 (bias unregularized): scikit-learn's LogisticRegression with
  C = 1 / (wd * n), OpenAI's protocol, and deterministic.

The feature cache (cache_dir) holds one float32 .npy per (model, transform, data set): a file that is not
the array expected (corrupt, cut short, another shape or dtype) is a CacheWarning naming it, computed
again and replaced; a cache that can't be written is a CacheWarning, and the result stands.

The retrieval scores are never materialized whole: query blocks (split over this host's devices) meet key
blocks, and only per-query counts come back, so N x M never sits on one device. In a multi-host run every
process gets all features back from the ShardedCLIP and computes the same metrics from them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import warnings
import weakref
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from .. import download
from ..errors import InputError
from ..families import family_of
from ..fileio import atomic_write
from ..model import flat_params
from ..parallel import ShardedCLIP
from ..zeroshot import IMAGENET_TEMPLATES, check_templates, zeroshot_classifier
from .eval_data import CaptionedImages, LabelledImages, read_lines

__all__ = [
    "TASKS", "zeroshot_classification", "zeroshot_retrieval", "linear_probe", "classification_metrics",
    "accuracy", "mean_per_class_recall", "retrieval_metrics", "probe_sweep", "fit_probe", "image_features",
    "model_fingerprint", "sharded_model", "resolve_templates", "WD_LIST", "CacheWarning", "read_cache",
]

TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe")
WD_LIST = np.logspace(-6, 2, num=97)  # CLIP_benchmark's linear-probe sweep


# --- classification metrics (clip_benchmark.metrics.zeroshot_classification) -----------------------


def top_indices(scores: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """[N, C] -> [N, min(k, C)] column indices, best first; equal scores in index order."""
    k = min(k, scores.shape[1])
    out = np.empty((len(scores), k), np.int64)
    for s in range(0, len(scores), chunk):
        out[s:s + chunk] = np.argsort(-scores[s:s + chunk], axis=1, kind="stable")[:, :k]
    return out


def accuracy(top: np.ndarray, target: np.ndarray, topk: Sequence[int] = (1,)) -> list[float]:
    """CLIP_benchmark's accuracy: top [N, >= max(topk)] indices best first (top_indices) -> for each k
    the fraction of rows whose target is among the first k."""
    correct = top[:, :max(topk)] == np.asarray(target)[:, None]
    n = len(target)
    return [float(correct[:, :k].sum()) / n for k in topk]


def mean_per_class_recall(target: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's balanced_accuracy_score: mean over the classes present in `target` of the fraction
    of that class's rows predicted as it (predicted classes absent from `target` don't count)."""
    target, pred = np.asarray(target), np.asarray(pred)
    return float(np.mean([np.mean(pred[target == c] == c) for c in np.unique(target)]))


def classification_metrics(scores: np.ndarray, target: np.ndarray, with_acc5: bool) -> dict[str, float]:
    """{"acc1", "acc5", "mean_per_class_recall"} from scores [N, C] (higher is better) and labels [N].
    with_acc5: CLIP_benchmark's rule (zero-shot: at least 5 classes; probe: a test label >= 5), else NaN."""
    top = top_indices(scores, 5 if with_acc5 else 1)
    if with_acc5:
        acc1, acc5 = accuracy(top, target, (1, 5))
    else:
        (acc1,), acc5 = accuracy(top, target, (1,)), float("nan")
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": mean_per_class_recall(target, top[:, 0])}


# --- retrieval metrics, blocked (clip_benchmark.metrics.zeroshot_retrieval) --------------------------


def _local_mesh():

    devices = jax.local_devices()
    return jax.make_mesh((len(devices),), ("data",), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))


@jax.jit
def _best_positive_block(q, q_owner, k, k_owner, k_start, best, best_idx):
    """Running max over key blocks of each query's positive scores, and the first key reaching it."""
    s = jnp.dot(q, k.T, precision="highest")
    pos = q_owner[:, None] == k_owner[None, :]
    masked = jnp.where(pos, s, -jnp.inf)
    m = masked.max(axis=1)
    j = k_start + jnp.argmax(masked, axis=1)  # the first index reaching the max
    better = m > best
    return jnp.where(better, m, best), jnp.where(better, j, best_idx)


@jax.jit
def _ahead_block(q, q_owner, k, k_owner, k_start, best, best_idx, count):
    """Add, per query, the negatives of this key block ranked ahead of its best positive."""
    s = jnp.dot(q, k.T, precision="highest")
    idx = k_start + jnp.arange(k.shape[0])
    negative = (q_owner[:, None] != k_owner[None, :]) & (k_owner[None, :] >= 0)
    ahead = (s > best[:, None]) | ((s == best[:, None]) & (idx[None, :] < best_idx[:, None]))
    return count + jnp.sum(negative & ahead, axis=1, dtype=jnp.int32)


def positive_ranks(queries: np.ndarray, query_owner: np.ndarray, keys: np.ndarray, key_owner: np.ndarray,
                   query_block: int = 1024, key_block: int = 8192) -> np.ndarray:
    """For each query, the rank (0 = first) of its best positive among all keys, where key j is a
    positive of query i when key_owner[j] == query_owner[i]; -1 for a query with no positive.

    Scores are dot products (normalized features: cosines), in float32 at full matmul precision. Query
    blocks are split over this host's devices; each step holds one [query_block, key_block] tile.
    """
    mesh = _local_mesh()
    n_dev = mesh.shape["data"]
    qb = -(-max(1, min(query_block, len(queries))) // n_dev) * n_dev
    kb = max(1, min(key_block, len(keys)))
    rows, whole = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

    def pad(x, n, fill):
        out = np.full((n,) + x.shape[1:], fill, x.dtype)
        out[: len(x)] = x
        return out

    keys = np.asarray(keys, np.float32)
    key_owner = np.asarray(key_owner, np.int32)
    key_blocks = []
    for ks in range(0, len(keys), kb):
        key_blocks.append((jax.device_put(pad(keys[ks:ks + kb], kb, 0), whole),
                           jax.device_put(pad(key_owner[ks:ks + kb], kb, -1), whole), jnp.int32(ks)))
    ranks = np.empty(len(queries), np.int64)
    for qs in range(0, len(queries), qb):
        n = min(qb, len(queries) - qs)
        q = jax.device_put(pad(np.asarray(queries[qs:qs + qb], np.float32), qb, 0), rows)
        qo = jax.device_put(pad(np.asarray(query_owner[qs:qs + qb], np.int32), qb, -2), rows)
        best = jax.device_put(np.full(qb, -np.inf, np.float32), rows)
        best_idx = jax.device_put(np.full(qb, np.iinfo(np.int32).max, np.int32), rows)
        for k, ko, ks in key_blocks:
            best, best_idx = _best_positive_block(q, qo, k, ko, ks, best, best_idx)
        count = jax.device_put(np.zeros(qb, np.int32), rows)
        for k, ko, ks in key_blocks:
            count = _ahead_block(q, qo, k, ko, ks, best, best_idx, count)
        found = np.isfinite(np.asarray(best))[:n]
        ranks[qs:qs + n] = np.where(found, np.asarray(count)[:n], -1)
    return ranks


def retrieval_metrics(image_features: np.ndarray, text_features: np.ndarray, text_image_index: np.ndarray,
                      recall_k: Sequence[int] = (1, 5, 10), **blocks) -> dict[str, float]:
    """CLIP_benchmark's recall@k from normalized features: image_features [N, D], text_features [M, D],
    text_image_index [M] (the image each text describes). Keys in CLIP_benchmark's order."""
    text_image_index = np.asarray(text_image_index)
    image_owner = np.arange(len(image_features))
    by_text = positive_ranks(text_features, text_image_index, image_features, image_owner, **blocks)
    by_image = positive_ranks(image_features, image_owner, text_features, text_image_index, **blocks)
    metrics = {}
    for k in recall_k:
        metrics[f"image_retrieval_recall@{k}"] = float(np.mean((by_text >= 0) & (by_text < k)))
        metrics[f"text_retrieval_recall@{k}"] = float(np.mean((by_image >= 0) & (by_image < k)))
    return metrics


# --- linear probe -----------------------------------------------------------------------------------


_FITS: dict = {}


def _fitter(max_iter: int, tol: float):
    """A jitted full-batch L-BFGS fit of mean cross-entropy + wd/2 ||W||^2 (rows weighted by `mask`)."""
    if (max_iter, tol) in _FITS:
        return _FITS[max_iter, tol]
    @partial(jax.jit, static_argnums=(3,))
    def fit(x, y, mask, num_classes, wd):
        n = jnp.sum(mask)

        def loss(p):
            logits = jnp.dot(x, p["w"], precision="highest") + p["b"]
            ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, y)
            return jnp.sum(ce * mask) / n + 0.5 * wd * jnp.sum(p["w"] ** 2)

        init = {"w": jnp.zeros((x.shape[1], num_classes), jnp.float32), "b": jnp.zeros((num_classes,), jnp.float32)}
        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(loss)

        def step(carry):
            p, state = carry
            value, grad = value_and_grad(p, state=state)
            updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
            return optax.apply_updates(p, updates), state

        def going(carry):
            _, state = carry
            count = optax.tree.get(state, "count")
            grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
            return (count == 0) | ((count < max_iter) & (grad_norm >= tol))

        p, _ = jax.lax.while_loop(going, step, (init, opt.init(init)))
        return p

    _FITS[max_iter, tol] = fit
    return fit


def fit_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, wd: float, max_iter: int = 1000,
              tol: float = 1e-6, rows: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A logistic-regression probe -> (W [D, C], b [C]): rows split over this host's devices.

    rows: pad to at least this many rows (weight 0), so fits on different row counts share one
    compiled program (the L-BFGS loop takes a while to compile)."""
    mesh = _local_mesh()
    n_dev = mesh.shape["data"]
    n = -(-max(len(features), rows) // n_dev) * n_dev
    x = np.zeros((n, features.shape[1]), np.float32)
    x[: len(features)] = features
    y = np.zeros(n, np.int32)
    y[: len(labels)] = labels
    mask = np.zeros(n, np.float32)
    mask[: len(labels)] = 1
    rows = NamedSharding(mesh, P("data"))
    p = _fitter(max_iter, tol)(jax.device_put(x, rows), jax.device_put(y, rows), jax.device_put(mask, rows),
                                num_classes, np.float32(wd))
    return np.asarray(p["w"]), np.asarray(p["b"])


def _probe_scores(features: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(features, np.float32) @ w + b


def probe_sweep(train_x, train_y, val_x, val_y, num_classes: int, wd_list: Sequence[float] = WD_LIST,
                fit=fit_probe, progress: bool = False) -> tuple[float, dict[float, float]]:
    """CLIP_benchmark's find_peak search -> (best weight decay, {wd: validation acc1} of every fit).

    7 values spread over the list, then around the best: the two points `span` away, span 8, 4, 2, 1,
    the first best kept (ties go to the earlier point; all-zero accuracy keeps index 0, as there).
    fit(x, y, num_classes, wd) -> (W, b); each value is fitted once.
    """
    seen: dict[int, float] = {}

    def acc(idx):
        if idx not in seen:
            w, b = fit(train_x, train_y, num_classes, float(wd_list[idx]))
            (seen[idx],) = accuracy(top_indices(_probe_scores(val_x, w, b), 1), val_y, (1,))
            if progress:
                print(f"weight decay {wd_list[idx]:.3g}: validation acc1 {seen[idx]:.4f}", file=sys.stderr)
        return seen[idx]

    def find_peak(idxs):
        best, top = 0, 0
        for i in idxs:
            if top < acc(i):
                best, top = i, acc(i)
        return best

    # CLIP_benchmark's first 7: the indices of logspace(-6, 2, 7) in logspace(-6, 2, 97), 0, 16, ..., 96
    peak = find_peak(sorted({int(i) for i in np.linspace(0, len(wd_list) - 1, 7).round()}))
    span = 8
    while span > 0:
        peak = find_peak([max(peak - span, 0), peak, min(peak + span, len(wd_list) - 1)])
        span //= 2
    return float(wd_list[peak]), {float(wd_list[i]): a for i, a in sorted(seen.items())}


def _split_val(n: int, proportion: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(proportion * n))
    if not 0 < n_val < n:
        raise InputError(f"val_proportion={proportion} of {n} training rows leaves no validation or no training rows")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _fewshot(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """CLIP_benchmark's few-shot pick: walk a seeded permutation, keep k rows per class (all if k < 0)."""
    perm = np.random.default_rng(seed).permutation(len(labels))
    if k < 0:
        return perm
    counts: dict[int, int] = {}
    keep = []
    for p in perm:
        c = int(labels[p])
        if counts.get(c, 0) < k:
            counts[c] = counts.get(c, 0) + 1
            keep.append(p)
    short = {c: n for c, n in counts.items() if n != k}
    if short:
        raise InputError(f"fewshot_k={k}: too few training rows for classes {sorted(short)[:10]}")
    return np.asarray(keep)


def probe_metrics(train_x, train_y, test_x, test_y, num_classes: int, val_x=None, val_y=None,
                  val_proportion: float | None = 0.2, fewshot_k: int = -1, seed: int = 0, max_iter: int = 1000,
                  normalized: bool = True, progress: bool = False) -> dict:
    """The linear probe on features -> CLIP_benchmark's metrics dict (see the module docstring).

    The validation rows: val_x/val_y if given, else `val_proportion` of the training rows (a seeded
    permutation); None and no val_x: no search, weight decay 0 (CLIP_benchmark without a validation split).
    """
    train_x, train_y = np.asarray(train_x, np.float32), np.asarray(train_y, np.int64)
    if val_x is None and val_proportion:
        tr, va = _split_val(len(train_x), val_proportion, seed)
        train_x, train_y, val_x, val_y = train_x[tr], train_y[tr], train_x[va], train_y[va]
    pick = _fewshot(train_y, fewshot_k, seed)
    fx, fy = train_x[pick], train_y[pick]

    rows = len(fx) + (len(val_x) if val_x is not None and fewshot_k < 0 else 0)  # the largest fit

    def fit(x, y, c, wd):
        return fit_probe(x, y, c, wd, max_iter=max_iter, rows=rows)

    sweep = {}
    if val_x is not None:
        best_wd, sweep = probe_sweep(fx, fy, np.asarray(val_x, np.float32), np.asarray(val_y), num_classes,
                                     fit=fit, progress=progress)
        if fewshot_k < 0:  # the full training set: train + validation, as CLIP_benchmark
            fx, fy = np.concatenate([fx, val_x]), np.concatenate([fy, val_y])
    else:
        best_wd = 0.0
    w, b = fit(fx, fy, num_classes, best_wd)
    test_y = np.asarray(test_y)
    m = classification_metrics(_probe_scores(test_x, w, b), test_y, with_acc5=bool(test_y.max() >= 5))
    return {"lp_acc1": m["acc1"], "lp_acc5": m["acc5"], "lp_mean_per_class_recall": m["mean_per_class_recall"],
            "weight_decay": best_wd, "seed": seed, "fewshot_k": fewshot_k, "normalized": normalized,
            "solver": "lbfgs", "max_iter": max_iter, "validation_acc1": sweep}


# --- features, with the on-disk cache ---------------------------------------------------------------


def model_fingerprint(model) -> str:
    """A digest of a CLIP's config, compute dtype and every parameter (keys the feature cache)."""
    h = hashlib.sha256()
    h.update(repr(model.config).encode())
    h.update(str(getattr(model.visual, "dtype", "")).encode())
    h.update(str(getattr(model, "attention", "")).encode())
    for name, value in sorted(flat_params(model).items()):
        a = np.asarray(value)
        h.update(f"{name}:{a.dtype}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    return Path(download.default_cache_dir(None)) / "eval_features"


def _agree(flag: bool) -> bool:
    """True only if every process says True (so all processes take the same branch)."""

    if jax.process_count() == 1:
        return flag
    return bool(np.all(multihost_utils.process_allgather(np.asarray([flag]))))


_MAX_NPY_HEADER = 10_000  # numpy's own max_header_size: np.save's headers are ~100 bytes


class CacheWarning(UserWarning):
    """A feature cache file that was unusable (computed again) or could not be written (not stored)."""


def read_cache(path: str | os.PathLike, shape: tuple[int, ...]) -> np.ndarray:
    """A feature cache file -> its float32 array of `shape`. Anything else (not a .npy, another dtype,
    shape or length, cut short, trailing bytes) is an InputError naming the file. The header is checked
    before any data is read, so a header claiming a huge shape allocates nothing."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
            if version not in ((1, 0), (2, 0)):  # what np.save writes for a float array
                raise ValueError(f"unknown .npy version {version}")
            # the header's length, bounded before numpy reads that many bytes (a 4-byte field in 2.0)
            length_field = f.read(2 if version == (1, 0) else 4)
            length = int.from_bytes(length_field, "little")
            if len(length_field) < (2 if version == (1, 0) else 4) or length > _MAX_NPY_HEADER:
                raise ValueError(f"a header of {length} bytes")
            header = io.BytesIO(length_field + f.read(length))
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            got_shape, fortran, dtype = read_header(header)
        except Exception as e:  # noqa: BLE001 - numpy's header parse (tokenize, literal_eval) of outside bytes
            raise InputError(f"{path}: not a .npy file ({type(e).__name__}: {e!s:.200})") from None
        if dtype != np.dtype("<f4") or tuple(got_shape) != tuple(shape) or fortran:
            raise InputError(f"{path}: a {dtype} array of shape {tuple(got_shape)}, expected float32 {tuple(shape)}")
        out = np.empty(shape, np.float32)
        n = f.readinto(memoryview(out).cast("B")) if out.size else 0
        if n != out.nbytes or f.read(1):
            raise InputError(f"{path}: {'cut short' if n != out.nbytes else 'trailing bytes'} "
                             f"(the array is {out.nbytes} bytes)")
    return out


def _load_cached(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array, None if there is none or it is unusable (then a CacheWarning naming the file)."""
    if not path.is_file():
        return None
    try:
        return read_cache(path, shape)
    except (OSError, InputError) as e:
        warnings.warn(f"{path}: feature cache unusable, computing it again: {e}", CacheWarning, stacklevel=3)
        return None


def _cached(cache_dir, key: str, compute, shape: tuple[int, ...]):
    """compute() -> float32 array of `shape`, stored as CACHE/key.npy (written by process 0, atomically).
    A cache file that is corrupt, cut short or of another shape is computed again and replaced; one that
    can't be written is a warning, not the loss of what was computed."""

    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{key}.npy"
    value = _load_cached(path, shape)
    if _agree(value is not None):  # every process embeds (a collective) if any one must
        return value
    value = compute()
    if jax.process_index() == 0:

        def write(tmp):
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(value, np.float32))

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, write)
        except OSError as e:
            warnings.warn(f"{path}: feature cache not stored: {e}", CacheWarning, stacklevel=2)
    return value


def _transform_key(preprocess) -> list:
    return [type(preprocess).__name__, getattr(preprocess, "n_px", None), getattr(preprocess, "mean", None),
            getattr(preprocess, "std", None), getattr(preprocess, "resize_mode", None),
            getattr(preprocess, "interpolation", None), getattr(preprocess, "fill_color", None),
            getattr(preprocess, "processor", None)]  # SigLIP's transformers and open_clip resizes round apart


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]


def image_features(sharded, preprocess, images: Sequence, progress: bool = True, desc: str = "images") -> np.ndarray:
    """Normalized image features [N, D] of paths (or encoded image bytes), in order. An unreadable image
    is an error naming it: an evaluation that silently dropped rows would not be comparable."""
    out = np.zeros((len(images), sharded.config.embed_dim), np.float32)
    errors, bad = [], []
    with tqdm(total=len(images), unit="img", desc=desc, disable=not progress or jax.process_index() != 0,
              file=sys.stderr) as bar:
        for batch in sharded.embed_image_files(images, preprocess, normalized=True):
            out[batch.start: batch.start + len(batch.features)] = batch.features
            errors += batch.errors  # this process's rows
            bad += (batch.start + np.flatnonzero(~np.asarray(batch.ok, bool))).tolist()  # every process's
            bar.update(len(batch.features))
    if bad:  # every process sees the same rows, so every process stops
        i = bad[0]
        shown = images.describe(i) if hasattr(images, "describe") else str(images[i])
        # the reason: this process's first error, which is row i's when this process read every row
        reason = f": {errors[0][1]}" if errors and len(errors) == len(bad) else ""
        raise InputError(f"{len(bad)} unreadable image(s), e.g. image {i}, {shown}{reason}")
    return out


def text_features(sharded, texts: Sequence[str], truncate: bool = True, batch: int = 65536) -> np.ndarray:
    """Normalized text features [M, D]; texts longer than the context are cut (as open_clip's tokenizer
    in CLIP_benchmark) unless truncate=False."""
    tok = sharded.family.tokenizer(sharded.config)
    parts = [sharded.encode_text(tok(list(texts[s:s + batch]), truncate=truncate), normalized=True)
             for s in range(0, len(texts), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, sharded.config.embed_dim), np.float32)


_SHARDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def sharded_model(model, batch_size: int = 256, mesh=None):
    """The ShardedCLIP of `model` (one per model, batch size and mesh, kept while the model lives), so
    several evaluations in one process compile the towers once."""
    if isinstance(model, ShardedCLIP):
        raise TypeError("pass the CLIP itself (clip_jax.load's model); the mesh goes in mesh=")
    per_model = _SHARDED.setdefault(model, {})
    key = (batch_size, id(mesh) if mesh is not None else None)
    if key not in per_model:
        per_model[key] = (ShardedCLIP(model, mesh, batch_size=batch_size), mesh)  # the mesh kept alive with its id
    return per_model[key][0]


class _Runner:
    """A model made ready for evaluation: the ShardedCLIP, and the cache key of its features."""

    def __init__(self, model, preprocess, batch_size: int, mesh, cache_dir, progress: bool):
        self.sharded = sharded_model(model, batch_size, mesh)
        self.preprocess = preprocess if preprocess is not None else family_of(model).transform(model.config)
        self.progress = progress
        self.cache_dir = cache_dir
        self.model_key = model_fingerprint(model) if cache_dir is not None else ""

    def images(self, data, desc: str = "images") -> np.ndarray:
        key = _key("image", self.model_key, _transform_key(self.preprocess), data.fingerprint)
        return _cached(self.cache_dir if data.fingerprint else None, key,
                       lambda: image_features(self.sharded, self.preprocess, data.images, self.progress, desc),
                       (len(data.images), self.sharded.config.embed_dim))

    def texts(self, texts: Sequence[str], truncate: bool) -> np.ndarray:
        key = _key("text", self.model_key, list(texts), truncate)
        return _cached(self.cache_dir, key, lambda: text_features(self.sharded, texts, truncate),
                       (len(texts), self.sharded.config.embed_dim))


# --- the three tasks --------------------------------------------------------------------------------


def resolve_templates(spec: str | Sequence[str] | None, data: LabelledImages | None = None) -> list[str]:
    """Prompt templates: None or "auto" (the data set's own if it ships them, as CLIP_benchmark, else
    OpenAI's 80 ImageNet templates), "imagenet", "dataset", a file (one a line), one template, or a list.
    Both `{c}` (CLIP_benchmark's) and `{}` mark where the class name goes."""
    if spec is None or spec == "auto":
        templates = list(data.templates) if data is not None and data.templates else list(IMAGENET_TEMPLATES)
    elif spec == "imagenet":
        templates = list(IMAGENET_TEMPLATES)
    elif spec == "dataset":
        if data is None or not data.templates:
            raise InputError("--templates dataset: this data set ships no zeroshot_classification_templates.txt")
        templates = list(data.templates)
    elif isinstance(spec, str):
        if os.path.isfile(spec):
            templates = read_lines(spec)
        else:
            templates = [spec]
    else:
        templates = list(spec)
    return list(check_templates([t.replace("{c}", "{}") for t in templates], marker="{c} or {}"))


def zeroshot_classification(model, preprocess, data: LabelledImages, templates=None, batch_size: int = 256,
                            mesh=None, cache_dir: str | os.PathLike | None = None, truncate: bool = True,
                            progress: bool = True) -> dict[str, float]:
    """-> {"acc1", "acc5", "mean_per_class_recall"} (CLIP_benchmark's zero-shot classification).

    model: a clip_jax CLIP; preprocess: its transform (None: the one its config gives); data: from
    classification_data / image_folder / wds_dataset; templates: see resolve_templates; cache_dir: a
    folder for the image features (None: no cache).
    """
    run = _Runner(model, preprocess, batch_size, mesh, cache_dir, progress)
    weights = zeroshot_classifier(run.sharded, data.classnames, resolve_templates(templates, data), truncate=truncate)
    feats = run.images(data)
    return classification_metrics(feats @ weights, data.labels, with_acc5=len(data.classnames) >= 5)


def zeroshot_retrieval(model, preprocess, data: CaptionedImages, recall_k: Sequence[int] = (1, 5, 10),
                       batch_size: int = 256, mesh=None, cache_dir=None, truncate: bool = True,
                       progress: bool = True) -> dict[str, float]:
    """-> {"image_retrieval_recall@k", "text_retrieval_recall@k", ...} (CLIP_benchmark's retrieval)."""
    run = _Runner(model, preprocess, batch_size, mesh, cache_dir, progress)
    texts = [t for caps in data.captions for t in caps]
    owner = np.asarray([i for i, caps in enumerate(data.captions) for _ in caps], np.int64)
    if not texts:
        raise InputError(f"{data.name}: no captions")
    image_feats = run.images(data)
    text_feats = run.texts(texts, truncate)
    return retrieval_metrics(image_feats, text_feats, owner, recall_k)


def linear_probe(model, preprocess, train: LabelledImages, test: LabelledImages, val: LabelledImages | None = None,
                 val_proportion: float | None = 0.2, fewshot_k: int = -1, seed: int = 0, max_iter: int = 1000,
                 batch_size: int = 256, mesh=None, cache_dir=None, progress: bool = True) -> dict:
    """-> CLIP_benchmark's linear-probe metrics ("lp_acc1", "lp_acc5", "lp_mean_per_class_recall",
    "weight_decay", ...) of a probe on the frozen, normalized image features (see probe_metrics)."""
    num_classes = len(train.classnames)
    if len(test.classnames) != num_classes:
        raise InputError(f"train has {num_classes} classes, test {len(test.classnames)}")
    run = _Runner(model, preprocess, batch_size, mesh, cache_dir, progress)
    train_x = run.images(train, "train")
    val_x = run.images(val, "val") if val is not None else None
    test_x = run.images(test, "test")
    return probe_metrics(train_x, train.labels, test_x, test.labels, num_classes, val_x,
                         val.labels if val is not None else None, val_proportion if val is None else None,
                         fewshot_k, seed, max_iter, progress=progress)


# --- CLIP_benchmark's result file -------------------------------------------------------------------


