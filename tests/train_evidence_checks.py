"""`clip-jax train` as a user runs it, in subprocesses, for tests/test_train_evidence.py: one process with N
host devices, several processes joined by jax.distributed on 127.0.0.1, and a run SIGKILLed from outside.

    argv = train_argv(pattern, "tiny.json", run, batch_size=16, steps=12, lock_image=True)  # the command line
    run_train(argv, devices=4)                        # to the end; fails with the output's tail otherwise
    proc = start_train(argv, devices=4, log=...)      # killed with kill_at_step(proc, run, step=6)
    run_processes(argv, processes=2, devices=2, logs=tmp)   # 2 processes x 2 devices, --coordinator ...
    params(run), losses(run)                          # final.safetensors as numpy; {step: loss} of metrics.jsonl
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from clip_jax.checkpoint import store

from .test_multihost import reserved_port, wait_all

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 420  # seconds for one command; a hang fails the test instead of stalling the suite


def train_argv(data: str, model: str | os.PathLike, run: str | os.PathLike, **options) -> list[str]:
    """`python -m clip_jax.cli train DATA --model M -o RUN --no-progress` with each option as its flag:
    batch_size=16 -> --batch-size 16, lock_image=True -> --lock-image (False and None: left out)."""
    argv = [sys.executable, "-m", "clip_jax.cli", "train", data, "--model", os.fspath(model), "-o", os.fspath(run),
            "--no-progress"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, str(value)]
    return argv


def env(devices: int) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def start_train(argv: list[str], devices: int, log: Path) -> subprocess.Popen:
    """The command in a session of its own (so it and anything it started can be killed as a group)."""
    return subprocess.Popen(argv, env=env(devices), cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _finish(procs: list[subprocess.Popen], logs: list[Path], timeout: float = TIMEOUT) -> None:
    wait_all(procs, logs, timeout, what="clip-jax train")


def run_train(argv: list[str], devices: int = 1, log: Path | None = None, timeout: float = TIMEOUT) -> None:
    """Run the command to its end with `devices` host devices (one process); log: its output (default
    RUN.log beside the run's folder)."""
    log = log or Path(argv[argv.index("-o") + 1] + ".log")
    _finish([start_train(argv, devices, log)], [log], timeout)


def run_processes(argv: list[str], processes: int, devices: int, logs: Path) -> None:
    """The same command in `processes` processes of `devices` host devices each, joined by jax.distributed
    through a coordinator on 127.0.0.1 (logs: a folder for each process's output)."""
    logs.mkdir(parents=True, exist_ok=True)
    paths = [logs / f"process_{i}.log" for i in range(processes)]
    with reserved_port() as port:
        procs = [start_train([*argv, "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                              "--process-id", str(i)], devices, paths[i]) for i in range(processes)]
        _finish(procs, paths)


def kill_at_step(proc: subprocess.Popen, run: Path, step: int, timeout: float = TIMEOUT) -> int:
    """SIGKILL the command (its whole process group) as soon as metrics.jsonl shows a step >= `step`.
    -> the newest step it had logged (the kill lands mid-run, wherever the run then is). Fails if the run
    ended first or never got there."""
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            seen = max(losses(metrics.parent), default=0) if metrics.exists() else 0
            if seen >= step:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return seen
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before step {step} was logged"
            time.sleep(0.02)
        raise AssertionError(f"step {step} not logged within {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def params(path: Path) -> dict[str, np.ndarray]:
    """A converted clip_jax file's params, or a run's (RUN/final.safetensors): {clip_jax name: numpy array}."""
    path = path / "final.safetensors" if path.is_dir() else path
    return {k: np.asarray(v) for k, v in store.load(path)[1].items()}


def losses(run: Path) -> dict[int, float]:
    """{step: loss} of RUN/metrics.jsonl's whole lines (a line a kill cut short is left out)."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            record = json.loads(line)
            if "loss" in record:
                out[record["step"]] = record["loss"]
    return out
