"""The training job behind `clip-jax train DATA --model M -o RUN`: contrastive training or fine-tuning of
a CLIP or a SigLIP from WebDataset tar shards or parquet files, resumable.

    from clip_jax.jobs.train import train
    train(["data/{00000..00127}.tar"], "ViT-B-32", "RUN", batch_size=4096, steps=10_000, lr=5e-4, warmup=500)
    model, preprocess = clip_jax.load("RUN/final.safetensors")

RUN holds:
    args.json            the run's arguments; a rerun must give the same ones that decide its numbers
    metrics.jsonl        one JSON object per logged step (train_log.py): step, loss, accuracy, lr,
                         samples_per_s, logit_scale, logit_bias (sigmoid), grad_norm, epoch; eval_* metrics
    tensorboard/         the same as TensorBoard scalars (tensorboardX)
    checkpoints/<step>/  orbax checkpoints of the whole train state and the data position (the last --keep)
    errors.tsv           shard <TAB> key <TAB> reason: samples and shards the loader skipped (each once)
    final.safetensors    the trained model, as clip_jax.load reads it (a SigLIP's vocabulary beside it,
                         in final.tokenizer/)

Running the same command again resumes from the newest checkpoint: the train state and the loader's
position in the data, so the run continues with the batches an uninterrupted run would have seen next
(bit for bit on the CPU). What may change on a rerun: the process and device counts (the global batch
does not depend on them, see clip_jax.data.loader), --save-every, --keep, --log-every, --eval-*, --remat,
--fsdp, --accumulate, --model-parallel and the progress bar. Anything else that differs is refused (InputError naming
each field), since it would make a run that is neither the old one nor a new one.

Multi-process (after clip_jax.parallel.initialize, every process calls train with the same arguments):
each process reads its own rows of every global batch, every process takes part in the collective steps
(gathers, checkpoint writes), and process 0 writes the logs, errors.tsv and final.safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .. import parallel
from ..checkpoint import store
from ..checkpoint.vocabulary import VOCABULARY_SUFFIX, carry_vocabulary
from ..data.loader import Loader, merge_positions
from ..dtypes import FLOAT_DTYPES, one_of
from ..errors import InputError, require_extra
from ..fileio import atomic_write
from ..layers import REMAT_POLICIES
from ..model import flat_params
from ..roles import DATA as DATA_AXIS
from ..train import LOSSES, Trainer, latest_step, optimizer, restore_checkpoint, save_checkpoint, schedule
from .embed_folder import progress_bar
from .train_log import TrainLog, read_metrics
from .train_model import ResolvedModel, resolve_model

__all__ = ["TrainArgs", "train", "ARGS", "CHECKPOINTS", "ERRORS", "FINAL", "RESUMABLE"]

ARGS = "args.json"
CHECKPOINTS = "checkpoints"
ERRORS = "errors.tsv"
FINAL = "final.safetensors"
# The arguments a rerun may change: they don't change which batches are seen or what a step computes.
# --accumulate and --fsdp change how a step is computed, not what (its gradient to float rounding): a run
# resumed on fewer chips may need them.
RESUMABLE = ("output", "save_every", "keep", "log_every", "eval_data", "eval_every", "remat", "remat_policy",
             "fsdp", "accumulate", "model_parallel", "progress", "num_threads")


@dataclasses.dataclass
class TrainArgs:
    """train()'s arguments (the command line's options; see `train`)."""

    data: list[str]
    model: str
    output: str
    loss: str = "softmax"
    batch_size: int = 256
    steps: int | None = None
    epochs: float | None = None
    lr: float = 5e-4
    warmup: int = 0
    weight_decay: float = 0.2
    dtype: str = "float32"
    remat: bool = False
    remat_policy: str = "nothing_saveable"
    fsdp: bool = False
    lock_image: bool = False
    lock_text: bool = False
    unlock_last: int = 0
    accumulate: int = 1
    save_every: int = 1000
    keep: int = 3
    eval_data: str | None = None
    eval_every: int | None = None
    log_every: int = 10
    seed: int = 0
    model_parallel: int = 1
    progress: bool = True
    tokenizer: str | None = None
    image_column: str | None = None
    caption_column: str | None = None
    num_threads: int | None = None

    def identity(self) -> dict[str, Any]:
        """The arguments that decide the run's numbers (all but RESUMABLE), as args.json compares them."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUMABLE}


def train(data: Sequence[str | os.PathLike] | str, model: str | os.PathLike, output: str | os.PathLike,
          **options: Any) -> dict[str, Any]:
    """Train `model` on `data` into the folder `output`, resuming the run there if it has a checkpoint.

    data: tar shards / parquet files (local or fsspec URLs, brace patterns), image + caption per sample.
    model: an open_clip architecture name or model-config JSON (from scratch) or anything clip_jax.load
      takes (fine-tuning); see clip_jax.jobs.train_model.
    options (TrainArgs' fields): loss "softmax" | "sigmoid"; batch_size (global, over all processes);
      steps, or epochs (parquet: its row count is known); lr (peak), warmup (steps of linear warmup, then
      cosine decay to 0); weight_decay (AdamW's, decoupled, on the weights the roles say); dtype (compute:
      float32, bfloat16, float16); remat, remat_policy; fsdp; lock_image, lock_text, unlock_last (LiT);
      accumulate (gradient cache: the batch in K chunks); save_every, keep (checkpoints); eval_data (a
      zero-shot classification set, as `clip-jax eval zeroshot_classification` reads) and eval_every
      (default: at the end only); log_every; seed (init and data order); model_parallel (the mesh's
      "model" axis); progress; tokenizer (a SigLIP's vocabulary); image_column, caption_column (parquet);
      num_threads (decoding threads per process).
    -> the last metrics record ({"step", "loss", ...}, eval_* when evaluated), also on a rerun of a
    finished run (nothing is trained again; a missing final.safetensors is written).
    """
    require_extra("train", "clip-jax train", "orbax", "tensorboardX")  # checkpoints and TensorBoard events
    names = [os.fspath(data)] if isinstance(data, (str, os.PathLike)) else [os.fspath(d) for d in data]
    paths = {k: os.fspath(v) for k, v in options.items() if isinstance(v, os.PathLike)}  # args.json holds text
    args = TrainArgs(data=names, model=os.fspath(model), output=os.fspath(output), **{**options, **paths})
    check_args(args)
    run = Path(args.output)
    writer = jax.process_index() == 0
    check_run_folder(run, args)
    resolved = resolve_model(args.model, seed=args.seed, dtype=args.dtype, tokenizer=args.tokenizer,
                             progress=args.progress and writer)
    mesh = parallel.make_mesh(args.model_parallel)
    errors = ErrorLog(run / ERRORS, writer)
    loader = _loader(args, resolved, errors)
    total = total_steps(args, loader.samples_per_epoch())
    trainer = make_trainer(resolved.model, args, total, mesh)
    eval_set = _eval_set(args)
    state, step, position = _restore(trainer, run / CHECKPOINTS)
    if step > total:
        raise InputError(f"{run}: its checkpoint is at step {step}, past this run's {total} steps")
    if writer:  # only now: a mistyped option leaves no folder behind that a corrected command would refuse
        write_args(run, args)
        print(f"clip-jax train: {resolved.origin}; {'resuming at step ' + str(step) if step else 'starting'} "
              f"of {total}", file=sys.stderr)
    loop = _Loop(args, run, trainer, total, writer, errors)
    try:
        if step < total or not (run / FINAL).exists():  # a finished run's rerun writes nothing again
            if step < total:
                state = loop.run(state, step, loader.batches(position), resolved, eval_set)
            _write_final(run, trainer, state, resolved, writer)
    finally:
        loop.close()
    records = read_metrics(run / "metrics.jsonl") if writer else []
    return _last_record(records, int(state.step))


# --- arguments and the run folder --------------------------------------------------------------------


def check_args(a: TrainArgs) -> None:
    """Every argument in its range, before anything is loaded: InputError naming the option."""
    if not a.data:
        raise InputError("no training data: give tar shards or parquet files")
    if "://" in a.output:
        raise InputError(f"-o {a.output}: the run's folder must be a path (for several hosts, on a file system they "
                         "share: NFS, a GCS FUSE mount); URLs are not supported for it yet")
    if a.loss not in LOSSES:
        raise InputError(f"--loss must be {one_of(LOSSES)}, got {a.loss!r}")
    if a.dtype not in FLOAT_DTYPES:
        raise InputError(f"--dtype must be {one_of(FLOAT_DTYPES)}, got {a.dtype!r}")
    if a.remat_policy not in REMAT_POLICIES:
        raise InputError(f"--remat-policy must be {one_of(tuple(REMAT_POLICIES))}, got {a.remat_policy!r}")
    if (a.steps is None) == (a.epochs is None):
        raise InputError("give the run's length: --steps N or --epochs E (one of them)")
    for name in ("batch_size", "save_every", "keep", "log_every", "accumulate", "model_parallel"):
        _at_least(name, getattr(a, name), 1)
    for name in ("steps", "eval_every", "num_threads"):
        if getattr(a, name) is not None:
            _at_least(name, getattr(a, name), 1)
    for name in ("warmup", "unlock_last", "seed"):
        _at_least(name, getattr(a, name), 0)
    if a.epochs is not None and not (isinstance(a.epochs, (int, float)) and a.epochs > 0 and math.isfinite(a.epochs)):
        raise InputError(f"--epochs must be a positive number, got {a.epochs!r}")
    for name in ("lr", "weight_decay"):
        value = getattr(a, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (name == "lr" and not value):
            raise InputError(f"--{name.replace('_', '-')} must be a {'positive' if name == 'lr' else 'non-negative'} "
                             f"number, got {value!r}")
    if a.steps is not None and a.warmup >= a.steps:
        raise InputError(f"--warmup {a.warmup} must be fewer than the run's {a.steps} steps")
    if a.batch_size % a.accumulate:
        raise InputError(f"--accumulate {a.accumulate} must divide --batch-size {a.batch_size}")
    if a.eval_every is not None and a.eval_data is None:
        raise InputError("--eval-every needs --eval-data (a zero-shot classification data set)")


def _at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")


def check_run_folder(run: Path, args: TrainArgs) -> None:
    """RUN: new, empty, or a run of these same arguments (its args.json; resumed), else InputError. A
    folder with other files and no args.json is not taken over."""
    saved_path = run / ARGS
    if saved_path.exists():
        try:
            saved = json.loads(saved_path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise InputError(f"{saved_path}: not the JSON clip-jax train writes ({type(e).__name__})") from None
        if not isinstance(saved, dict):
            raise InputError(f"{saved_path}: not the JSON object clip-jax train writes")
        _check_same(run, saved, args.identity())
    elif run.exists() and (not run.is_dir() or any(run.iterdir())):
        raise InputError(f"{run}: {'not a folder' if not run.is_dir() else 'a folder with files and no ' + ARGS}; "
                         "give a new or empty folder, or the folder of an earlier clip-jax train run to resume")


def write_args(run: Path, args: TrainArgs) -> None:
    """RUN/args.json (atomically): every argument, the ones a rerun may change included."""
    run.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dataclasses.asdict(args), indent=1, sort_keys=True) + "\n"
    atomic_write(run / ARGS, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _check_same(run: Path, saved: dict, now: dict) -> None:
    """A field args.json doesn't hold (written before the field existed) counts as its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainArgs)}
    then = {k: saved.get(k, defaults.get(k)) for k in now}
    differ = [k for k in now if then[k] != now[k]]
    if differ:
        said = "; ".join(f"{k}: {json.dumps(then[k])} then, {json.dumps(now[k])} now" for k in differ)
        raise InputError(f"{run} holds a run with other arguments ({said}). Rerun with the same ones to resume it, "
                         "or give another -o folder for a new run")


def total_steps(args: TrainArgs, samples_per_epoch: int | None) -> int:
    """--steps, or ceil(epochs x samples per epoch / batch size)."""
    if args.steps is not None:
        return args.steps
    if not samples_per_epoch:
        raise InputError("--epochs needs the data's size, known for parquet files (their metadata) but not for "
                         "tar shards: give --steps for tar shards")
    return max(1, math.ceil(args.epochs * samples_per_epoch / args.batch_size))


# --- the model, the trainer and the data ----------------------------------------------------------------

def make_trainer(model: Any, args: TrainArgs, total: int, mesh: Any) -> Trainer:
    """The Trainer: AdamW with warmup then cosine decay over `total` steps, on `mesh`, with the run's
    options (remat, loss, FSDP, LiT's locks, the gradient cache's chunks); the state's buffers donated."""
    if args.warmup >= total:
        raise InputError(f"--warmup {args.warmup} must be fewer than the run's {total} steps")
    data_devices = mesh.shape[DATA_AXIS]
    if args.batch_size % data_devices:
        raise InputError(f"--batch-size {args.batch_size} must divide by the {data_devices} devices of the mesh's "
                         "data axis")
    tx = optimizer(args.lr, total, args.warmup, weight_decay=args.weight_decay)
    return Trainer(model, tx, remat=args.remat, remat_policy=args.remat_policy, mesh=mesh, donate=True,
                   loss=args.loss, fsdp=args.fsdp, lock_image=args.lock_image, lock_text=args.lock_text,
                   unlock_last=args.unlock_last, accumulate=args.accumulate)


def _loader(args: TrainArgs, resolved: ResolvedModel, errors: ErrorLog) -> Loader:
    tokenizer = resolved.tokenizer
    return Loader(args.data, batch_size=args.batch_size, transform=resolved.preprocess.pixels,
                  tokenize=lambda texts: tokenizer(texts, truncate=True), seed=args.seed,
                  process_index=jax.process_index(), process_count=jax.process_count(),
                  num_threads=args.num_threads, image_column=args.image_column,
                  caption_column=args.caption_column, on_error=errors.add)


def _eval_set(args: TrainArgs):
    """The zero-shot classification set, read (and checked) before training starts; None without one."""
    if args.eval_data is None:
        return None
    from . import eval_data  # only with --eval-data

    return eval_data.classification_data(args.eval_data)


def _restore(trainer: Trainer, checkpoints: Path) -> tuple[Any, int, dict | None]:
    """(state, step, data position): the newest checkpoint's, else a fresh state at step 0."""
    state = trainer.init()
    if not checkpoints.is_dir() or latest_step(checkpoints) is None:
        return state, 0, None
    state, data = restore_checkpoint(checkpoints, like=state)
    return state, int(state.step), data.get("position")


# --- across processes ------------------------------------------------------------------------------


def allgather_json(value: Any) -> list[Any]:
    """Every process's JSON value, in process order (the same list in every process)."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils  # only with several processes

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(row[:n].tobytes()) for row, n in zip(rows, sizes)]


class ErrorLog:
    """errors.tsv: every process's skipped samples, gathered at each logged step, each (shard, key,
    reason) once (a resumed run reads the last batches again and meets their bad samples again).
    `add` is the loader's on_error, called from its threads (list.append is atomic)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self.pending: list[tuple[str, str, str]] = []
        self.seen: set[tuple[str, ...]] = set()
        if enabled and path.exists():
            text = path.read_text(encoding="utf-8", errors="replace")
            if not text.endswith("\n") and text:  # a line cut short by a kill: dropped
                text = text[:text.rfind("\n") + 1]
                atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
            self.seen = {tuple(line.split("\t")) for line in text.splitlines()}

    def add(self, shard: str, key: str, reason: str) -> None:
        self.pending.append((shard, key, reason))

    def drain(self) -> None:
        mine = [list(e) for e in self.pending[:]]
        del self.pending[:len(mine)]
        rows = [tuple(_tsv(x) for x in e) for part in allgather_json(mine) for e in part]
        new = [r for r in dict.fromkeys(rows) if r not in self.seen]
        if new and self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join("\t".join(r) + "\n" for r in new))
        self.seen.update(new)


def _tsv(field: str) -> str:
    return " ".join(str(field).split("\t")).replace("\n", " ").replace("\r", " ")


# --- the loop --------------------------------------------------------------------------------------


class _Loop:
    """Steps from a start to `total`: logging, evaluation, checkpoints, the progress bar."""

    def __init__(self, args: TrainArgs, run: Path, trainer: Trainer, total: int, writer: bool, errors: ErrorLog):
        self.args, self.folder, self.trainer, self.total, self.writer = args, run, trainer, total, writer
        self.schedule = schedule(args.lr, total, args.warmup)
        self.log: TrainLog | None = None
        self.bar = None
        self.errors = errors

    def run(self, state, start: int, batches, resolved: ResolvedModel, eval_set) -> Any:
        """Steps start+1 .. total on `batches`; -> the final state (its checkpoint saved)."""
        a = self.args
        self.log = TrainLog(self.folder, resume_step=start, enabled=self.writer)
        self.bar = progress_bar(self.total * a.batch_size, start * a.batch_size, "sample", a.progress and self.writer)
        self.bar.unit_scale = True
        # samples_per_s: samples over the time between two points where the device is idle (a logged step,
        # the first step, an evaluation, a checkpoint), so neither compiling nor evaluating nor saving counts.
        clock = (time.perf_counter(), start)
        try:
            for step in range(start + 1, self.total + 1):
                batch = next(batches)
                state, metrics = self.trainer.step(state, *self.trainer.global_batch(batch.images, batch.tokens))
                self.bar.update(a.batch_size)
                last = step == self.total
                if step % a.log_every == 0 or last:
                    clock = self._log(step, metrics, batch.epoch, clock)
                elif step == start + 1:
                    clock = (_after(metrics), step)
                if eval_set is not None and ((a.eval_every and step % a.eval_every == 0) or last):
                    self.log.write(step, self._evaluate(state, resolved, eval_set))
                    clock = (time.perf_counter(), step)
                if step % a.save_every == 0 or last:
                    self._save(step, state, batch.position)
                    clock = (time.perf_counter(), step)
        finally:
            batches.close()
        return state

    def _save(self, step: int, state, position: dict) -> None:
        """A checkpoint of `state` with every process's data position (merged), errors.tsv brought up to date."""
        self.errors.drain()
        merged = merge_positions(allgather_json(position))
        save_checkpoint(self.folder / CHECKPOINTS, state, {"position": merged, "step": step},
                        max_to_keep=self.args.keep)

    def _log(self, step: int, metrics: dict, epoch: int, clock: tuple[float, int]) -> tuple[float, int]:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}  # waits for the step
        now = time.perf_counter()
        record = {"loss": values.pop("loss"), "accuracy": values.pop("accuracy", None),
                  "lr": float(self.schedule(step - 1)),  # the rate step `step` applied (optax counts from 0)
                  "samples_per_s": (step - clock[1]) * self.args.batch_size / max(now - clock[0], 1e-9),
                  "epoch": epoch, **values}
        self.log.write(step, {k: v for k, v in record.items() if v is not None})
        self.errors.drain()
        self.bar.set_postfix(step=step, loss=f"{record['loss']:.4f}", refresh=False)
        return time.perf_counter(), step  # the next window starts once this bookkeeping is done

    def _evaluate(self, state, resolved: ResolvedModel, eval_set) -> dict[str, float]:
        """Zero-shot classification on eval_set (clip_jax.jobs.eval) -> {"eval_acc1", "eval_acc5", ...}."""
        from . import eval as ev  # only with --eval-data

        model = self.trainer.model(state)
        batch = self.args.batch_size // self.args.accumulate  # what the devices' memory takes in one pass
        metrics = ev.zeroshot_classification(model, resolved.preprocess, eval_set, batch_size=batch,
                                             cache_dir=None, progress=False)
        return {f"eval_{k}": v for k, v in metrics.items()}

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.log is not None:
            self.log.close()


# --- the end ---------------------------------------------------------------------------------------


def _after(metrics: dict) -> float:
    """The time once the step that gave `metrics` is done."""
    jax.block_until_ready(metrics)
    return time.perf_counter()


def _write_final(run: Path, trainer: Trainer, state, resolved: ResolvedModel, writer: bool) -> Path:
    """RUN/final.safetensors (atomically), float32 params as the state holds them and the model's config,
    so clip_jax.load reads the trained model; a SigLIP's vocabulary copied beside it (final.tokenizer/).
    Every process takes part in gathering sharded params; process 0 writes."""
    path = run / FINAL
    params = {k: parallel.gather(v) for k, v in flat_params(trainer.model(state)).items()}
    if writer:
        config = resolved.config
        if getattr(config, "tokenizer", None):
            config = carry_vocabulary(config, Path(config.tokenizer), run / (Path(FINAL).stem + VOCABULARY_SUFFIX))
        origin = f"clip-jax train from {resolved.origin} ({int(state.step)} steps)"
        store.save(path, params, config, origin=origin)
    return path


def _last_record(records: list[dict], step: int) -> dict[str, Any]:
    """The last logged step's metrics, with the eval_* metrics of that step merged in."""
    out: dict[str, Any] = {"step": step}
    for r in records:
        if r["step"] == step:
            out.update(r)
    return out
