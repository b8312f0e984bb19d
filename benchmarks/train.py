"""Training throughput from WebDataset shards: `clip-jax train` vs open_clip's own trainer (open_clip_train).

Both commands train the same architecture (an open_clip model-config JSON; by default the bundled demo
model's: ViT 64 px, 16 px patches, width 64, 3 blocks; text width 64, 2 blocks, context 16, CLIP's
49,408-token vocabulary) from random init on the same shards (clip_jax.synthetic's images as JPEGs with
their captions, tests/train_shards.py), float32, the same global batch, steps, AdamW settings (b1 0.9,
b2 0.98, eps 1e-6, weight decay 0.2), warmup then cosine, softmax loss, on the CPU, in the same run:

  open_clip_train   python -m open_clip_train.main's main() with --dataset-type webdataset, --device cpu,
                    --precision fp32, --workers W DataLoader processes, --log-every-n-steps 1, one epoch of
                    steps x batch samples (--train-num-samples); the config registered with
                    open_clip.add_model_config
  clip-jax train    python -m clip_jax.cli train SHARDS --model CONFIG.json -o RUN, --log-every 1

Warm steady-state samples/s: each trainer logs every step's time (open_clip: "Batch (t)", the time from
the end of one step to the end of the next, data wait included; clip-jax: metrics.jsonl's samples_per_s
of each step). The first --skip steps are dropped (compilation, the first batch's shard reads and
shuffle-buffer fill, worker start-up), and the rate is batch x steps / the summed time of the rest. Each
command runs --rounds times, alternately (the machine may be shared); the best round of each is reported,
with the median. The end-to-end wall time of each command (process start, model init, compilation,
training, checkpoint and final file) is printed beside it.

Samples per CPU-second: each command also runs --short steps; the CPU time (user + system, every thread
and worker process) of the long run minus the short one's, over the extra samples, is what a sample costs
once the run is going, with start-up and compilation cancelled out. On a shared machine this moves less
than wall-clock rates do (another job's load doesn't count toward it), but it doesn't see parallelism:
a trainer that keeps 2 cores busy and one that keeps 1 busy at the same CPU cost per sample look equal.

    python -m benchmarks.train                                   # defaults: batch 64, 40 steps, 2 rounds
    python -m benchmarks.train --batch-size 128 --steps 30 --cores 1 --workers 1

open_clip_train's webdataset reader predates webdataset 1.0's end-of-shard marker ({} after each shard,
which its group_by_keys_nothrow can't read): the launcher turns the marker off (eof_value=None), which
is what the older webdataset did. Needs pandas (open_clip_train imports it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, benchmarks/ is sys.path[0], and its tokenize.py would shadow the standard library's.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (HERE, ROOT)]

CONFIG_NAME = "clip-jax-bench-train"  # the name open_clip registers the config under (the file's stem)

OPEN_CLIP = """
import functools, sys
import open_clip
open_clip.add_model_config(sys.argv[1])
import open_clip_train.data as data
# webdataset >= 1.0 yields {} at the end of each shard, which open_clip_train's grouping can't read.
data.tar_file_expander = functools.partial(data.tar_file_expander, eof_value=None)
from open_clip_train.main import main
main(sys.argv[2:])
"""

STEP_TIME = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+ .*?Batch \(t\): ([0-9.]+),.*?Loss: ([0-9.]+)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64, help="global batch, both trainers")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps a run")
    p.add_argument("--skip", type=int, default=5, help="first steps left out of the steady-state rate")
    p.add_argument("--rounds", type=int, default=2, help="runs of each command, alternately")
    p.add_argument("--short", type=int, default=10,
                   help="steps of a shorter run of each command (CPU-seconds per sample at the margin); 0: none")
    p.add_argument("--shards", type=int, default=8, help="tar shards (at least --workers)")
    p.add_argument("--workers", type=int, default=1, help="open_clip's DataLoader worker processes")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--config", type=Path, help="an open_clip model-config JSON (default: the demo model's)")
    p.add_argument("--cores", type=int, default=0, help="pin each command to this many cores (taskset); 0: all")
    p.add_argument("--fmt", choices=("jpg", "png"), default="jpg", help="the images' format in the shards")
    p.add_argument("--keep", type=Path, help="write shards and runs here and keep them (default: a temp folder)")
    args = p.parse_args(argv)
    if args.skip >= args.steps:
        p.error(f"--skip {args.skip} leaves no step of --steps {args.steps} to time")
    if not 0 <= args.short < args.steps:
        p.error(f"--short must be in [0, --steps), got {args.short}")
    if args.steps % args.workers or args.short % args.workers:
        p.error("--steps and --short must be multiples of --workers (open_clip splits an epoch's batches over them)")
    return args


def prepare(args: argparse.Namespace, tmp: Path) -> tuple[str, Path, dict]:
    """Shards holding at least one epoch of steps x batch samples (open_clip's epoch must not run dry),
    and the model config. -> (shard pattern, config file, the architecture)."""
    from tests.train_shards import DEMO_ARCH, write_model_config, write_synthetic_shards

    arch = json.loads(args.config.read_text()) if args.config else DEMO_ARCH
    per_shard = -(-args.steps * args.batch_size // args.shards)
    pattern = write_synthetic_shards(tmp / "shards", args.shards, per_shard,
                                     image_size=arch["vision_cfg"]["image_size"], fmt=args.fmt)
    return pattern, write_model_config(tmp / f"{CONFIG_NAME}.json", arch), arch


def _pinned(cmd: list[str], cores: int) -> list[str]:
    if not cores:
        return cmd
    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:cores])
    return ["taskset", "-c", cpus, *cmd]


def _cpu_seconds() -> float:
    """User + system CPU seconds of every waited-for descendant so far (DataLoader workers and threads
    included: a child's waited-for children count toward it)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(cmd: list[str], env: dict, log: Path) -> tuple[float, float]:
    """Run to completion; -> (wall seconds, CPU seconds). A failure raises with the log's tail."""
    t, cpu = time.perf_counter(), _cpu_seconds()
    with log.open("w") as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {proc.returncode}:\n{log.read_text()[-4000:]}")
    return time.perf_counter() - t, _cpu_seconds() - cpu


def run_open_clip(args, steps: int, pattern: str, config: Path, out: Path) -> dict:
    """One open_clip_train run of `steps` steps. -> {"wall": s, "cpu": s, "step_s": [per-step seconds],
    "loss": [per-step loss]}."""
    cmd = _pinned([sys.executable, "-c", OPEN_CLIP, str(config),
                   "--train-data", pattern, "--train-num-samples", str(steps * args.batch_size),
                   "--dataset-type", "webdataset", "--batch-size", str(args.batch_size), "--epochs", "1",
                   "--lr", str(args.lr), "--warmup", str(args.warmup), "--beta1", "0.9", "--beta2", "0.98",
                   "--eps", "1e-6", "--wd", "0.2", "--workers", str(args.workers), "--device", "cpu",
                   "--precision", "fp32", "--model", CONFIG_NAME, "--logs", str(out), "--name", "run",
                   "--save-frequency", "1", "--zeroshot-frequency", "0", "--val-frequency", "0",
                   "--report-to", "", "--log-every-n-steps", "1", "--seed", "0"], args.cores)
    out.mkdir(parents=True)
    wall, cpu = _run(cmd, {**os.environ, "CUDA_VISIBLE_DEVICES": ""}, out / "stdout.log")
    logged = STEP_TIME.findall((out / "run" / "out.log").read_text())
    if len(logged) != steps:
        raise RuntimeError(f"open_clip_train logged {len(logged)} steps, expected {steps}")
    return {"wall": wall, "cpu": cpu, "step_s": [float(t) for _, t, _ in logged],
            "loss": [float(v) for _, _, v in logged]}


def run_clip_jax(args, steps: int, pattern: str, config: Path, out: Path) -> dict:
    """One `clip-jax train` run. -> as run_open_clip; a step's seconds are batch / its samples_per_s."""
    cmd = _pinned([sys.executable, "-m", "clip_jax.cli", "train", pattern, "--model", str(config), "-o", str(out),
                   "--batch-size", str(args.batch_size), "--steps", str(steps), "--lr", str(args.lr),
                   "--warmup", str(args.warmup), "--weight-decay", "0.2", "--log-every", "1", "--seed", "0",
                   "--save-every", str(steps), "--no-progress"], args.cores)
    log = out.parent / f"{out.name}.log"
    wall, cpu = _run(cmd, {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}, log)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if [r["step"] for r in records] != list(range(1, steps + 1)):
        raise RuntimeError(f"clip-jax train logged steps {[r['step'] for r in records]}")
    return {"wall": wall, "cpu": cpu, "step_s": [args.batch_size / r["samples_per_s"] for r in records],
            "loss": [r["loss"] for r in records]}


def steady_rate(run: dict, batch: int, skip: int) -> float:
    """Samples/s over the steps after the first `skip`: batch x steps / their summed seconds."""
    kept = run["step_s"][skip:]
    return batch * len(kept) / sum(kept)


def per_cpu_second(long: list[dict], short: list[dict], samples: int) -> float:
    """Samples per CPU-second at the margin: the extra samples of the long runs over the short ones / the
    extra CPU seconds (the least of each), so start-up, compilation and saving cancel out, and so does
    another job's load (CPU time counts only this command's own work)."""
    return samples / (min(r["cpu"] for r in long) - min(r["cpu"] for r in short))


def header(args, arch: dict) -> list[str]:
    import jax
    import open_clip
    import torch

    v, t = arch["vision_cfg"], arch["text_cfg"]
    pinned = f", each command pinned to {args.cores} core(s)" if args.cores else ""
    return [
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{pinned}; load average "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1 / 5 / 15 min, at the end); jax {jax.__version__}, "
        f"clip_jax {metadata.version('clip-jax')}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"open_clip {open_clip.__version__}",
        f"model: ViT {v['image_size']} px / {v['patch_size']}, width {v['width']}, {v['layers']} blocks; text "
        f"width {t['width']}, {t['layers']} blocks, context {t['context_length']}; embed {arch['embed_dim']}; "
        f"float32, softmax loss, from random init",
        f"data: {args.shards} tar shards of synthetic {args.fmt} + txt, {args.steps * args.batch_size} samples; "
        f"batch {args.batch_size}, {args.steps} steps, lr {args.lr}, warmup {args.warmup}; open_clip "
        f"--workers {args.workers}",
        f"steady state: steps {args.skip + 1}..{args.steps} (the first {args.skip} left out), best (median) of "
        f"{args.rounds} rounds run alternately"
        + (f"; per CPU-second: runs of {args.steps} vs {args.short} steps" if args.short else ""),
    ]


def report(args, arch: dict, results: dict[str, list[dict]], short: dict[str, list[dict]]) -> None:
    print("\n".join(header(args, arch)))
    rates = {name: [steady_rate(r, args.batch_size, args.skip) for r in runs] for name, runs in results.items()}
    cpu = {name: per_cpu_second(results[name], short[name], (args.steps - args.short) * args.batch_size)
           for name in short} if args.short else {}
    base = max(rates["open_clip_train"])
    for name, runs in results.items():
        best, med = max(rates[name]), statistics.median(rates[name])
        # A negative or absurd figure means start-up noise (compiling, mostly) outweighed the extra steps.
        per_cpu = "" if not cpu else (
            f"   {cpu[name]:6.1f} samples/CPU-s ({cpu[name] / cpu['open_clip_train']:4.2f}x)"
            if cpu[name] > 0 and cpu["open_clip_train"] > 0 else "   samples/CPU-s: not measurable (more --steps)")
        loss = runs[0]["loss"]
        print(f"  {name:16s} {best:7.1f} samples/s ({med:6.1f})  {best / base:5.2f}x open_clip_train{per_cpu}   "
              f"end to end {min(r['wall'] for r in runs):6.1f} s   loss {loss[0]:.3f} -> {loss[-1]:.3f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="clip_jax_train_bench_"))
    tmp.mkdir(parents=True, exist_ok=True)
    runners = {"open_clip_train": run_open_clip, "clip-jax train": run_clip_jax}
    try:
        pattern, config, arch = prepare(args, tmp)
        results: dict[str, list[dict]] = {name: [] for name in runners}
        short: dict[str, list[dict]] = {name: [] for name in runners}
        for r in range(args.rounds):  # alternately: a burst of load from elsewhere hits both
            for k, (name, run) in enumerate(runners.items()):
                results[name].append(run(args, args.steps, pattern, config, tmp / f"{k}_{r}"))
                if args.short:
                    short[name].append(run(args, args.short, pattern, config, tmp / f"{k}_{r}_short"))
        (tmp.parent / "train_bench_results.json").write_text(json.dumps({"results": results, "short": short}))
        report(args, arch, results, short)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
