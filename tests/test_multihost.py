"""Multi-host: two processes on this machine (CPU, 4 devices each, coordinator on 127.0.0.1) embed the same
files as one process, each decoding only its own rows, and both get every row back in input order.

Tolerance: 1e-5 absolute on normalized features (float32; the two runs split batches differently over
devices, so XLA's CPU matmuls round differently; measured <= 4e-7). A row out of order differs by ~1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import once
from .tiny import save_tiny

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "multihost_worker.py"
TIMEOUT = 240  # seconds for the whole two-process run; a hang fails the test instead of stalling the suite
ATOL = 1e-5


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A port on 127.0.0.1, held while the block runs: bound with SO_REUSEPORT and not listening, so no
    other socket can bind it or get it as an outgoing connection's local port, while the coordinator's
    gRPC server, which binds with SO_REUSEPORT too, can. (A port freed and then handed to the workers
    could be taken in between.)"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_reserved_port_is_held():
    """While the port is reserved no other socket can bind it: what freeing a port before handing it to
    the workers allowed. (That the coordinator can: the two-process tests below run on one.)"""
    with reserved_port() as port, socket.socket() as other:
        with pytest.raises(OSError) as refused:
            other.bind(("127.0.0.1", port))
        assert refused.value.errno == errno.EADDRINUSE


def start(args: list[str], devices: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT)}
    # A session of its own, so a hung worker and anything it started can be killed as a group.
    return subprocess.Popen([sys.executable, str(WORKER), *args], env=env, cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: float = TIMEOUT, what: str = "worker") -> None:
    """Wait for every process (`timeout` seconds in all); kill what is left (its process group); fail with a
    log's tail unless all exited 0."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, f"{what} exited {p.returncode}:\n{log.read_text()[-3000:]}"


def run_job(tmp: Path) -> None:
    """Two processes of 4 devices each and the one-process reference embed the same files into `tmp`."""
    rng = np.random.RandomState(0)
    paths = []
    for i in range(19):
        p = tmp / f"img{i:02d}.png"
        Image.fromarray(rng.randint(0, 256, (36 + i, 44, 3)).astype(np.uint8)).save(p)
        paths.append(str(p))
    (tmp / "bad.png").write_bytes(b"\x89PNG broken")
    paths.insert(6, str(tmp / "bad.png"))
    (tmp / "paths.txt").write_text("\n".join(paths) + "\n")
    (tmp / "captions.txt").write_text("\n".join(f"photo number {i} of a small dog" for i in range(13)) + "\n")
    model = save_tiny(tmp / "tiny.safetensors")
    common = [str(model), str(tmp / "paths.txt"), str(tmp / "captions.txt"), str(tmp)]
    logs = [tmp / f"log{i}.txt" for i in range(3)]
    with reserved_port() as port:
        procs = [start(common + [f"127.0.0.1:{port}", "2", str(i)], 4, logs[i]) for i in range(2)]
        procs.append(start(common + ["-", "1", "9"], 1, logs[2]))  # the one-process reference, one device
        wait_all(procs, logs)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """run_job's files and results, once a run for every xdist worker (tests/conftest.py's once)."""
    tmp = once(tmp_path_factory, "multihost", run_job)
    paths = (tmp / "paths.txt").read_text().splitlines()
    results = {i: dict(np.load(tmp / f"result_{i}.npz")) for i in (0, 1, 9)}
    return paths, results


def test_two_processes_see_eight_devices(job):
    _, r = job
    assert r[0]["devices"].tolist() == [8, 4]
    assert r[1]["devices"].tolist() == [8, 4]
    assert r[9]["devices"].tolist() == [1, 1]


def test_each_process_reads_its_own_slice(job):
    paths, r = job
    read0, read1 = set(r[0]["read"]), set(r[1]["read"])
    assert len(r[0]["read"]) == len(read0) and len(r[1]["read"]) == len(read1)  # no file decoded twice
    assert not read0 & read1
    assert read0 | read1 == set(paths)
    assert read0 and read1


def test_results_in_input_order_equal_one_process(job):
    paths, r = job
    ok = np.array([not p.endswith("bad.png") for p in paths])
    for pid in (0, 1):
        np.testing.assert_array_equal(r[pid]["ok"], ok)
        np.testing.assert_allclose(r[pid]["image"], r[9]["image"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(r[pid]["text"], r[9]["text"], atol=ATOL, rtol=0)
    assert r[0]["image"].shape == (20, 16) and r[0]["text"].shape == (13, 16)
    # Rows are distinct images, so equality above pins the order.
    assert np.abs(r[9]["image"][ok][1:] - r[9]["image"][ok][:-1]).max() > 0.1


def test_bad_file_reported_by_the_process_that_read_it(job):
    _, r = job
    errors = list(r[0]["errors"]) + list(r[1]["errors"])
    assert len(errors) == 1 and errors[0].split("\t")[0].endswith("bad.png")


def test_embed_command_on_two_processes_equals_one(job, tmp_path):
    """`clip-jax embed --coordinator ...` in two processes: process 0 writes the same folder as one process,
    the bad file listed once. Rows are stored as float16: a 4e-7 float32 difference can round to the
    neighbouring float16, one spacing (<= 2^-11 below 1) away, hence 5e-4 here."""
    paths, _ = job
    folder = Path(paths[0]).parent
    model = folder / "tiny.safetensors"

    def args(out):
        return ["-m", "clip_jax.cli", "embed", str(folder / "paths.txt"), "-o", str(out), "--model", str(model),
                "--shard-size", "6", "--batch-size", "64", "--no-progress"]  # 6 rows: a bucket of 32 (4 devices)

    def run(argv, devices, log):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
               "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
        return subprocess.Popen([sys.executable, *argv], env=env, cwd=ROOT, stdout=log.open("w"),
                                stderr=subprocess.STDOUT, start_new_session=True)

    logs = [tmp_path / f"log{i}.txt" for i in range(3)]
    with reserved_port() as port:
        coordinator = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
        procs = [run(args(tmp_path / "two") + coordinator + ["--process-id", str(i)], 2, logs[i]) for i in range(2)]
        procs.append(run(args(tmp_path / "one"), 1, logs[2]))
        wait_all(procs, logs)
    for k in range(4):
        two = np.load(tmp_path / "two" / "img_emb" / f"img_emb_{k}.npy").astype(np.float32)
        one = np.load(tmp_path / "one" / "img_emb" / f"img_emb_{k}.npy").astype(np.float32)
        np.testing.assert_allclose(two, one, atol=5e-4, rtol=0)
    for name in ["errors.tsv"] + [f"metadata/metadata_{k}.parquet" for k in range(4)]:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert (tmp_path / "two" / "errors.tsv").read_text().count("bad.png") == 1
    # Each process prints its own line (the rows of each batch it read: 20 in all), process 0 also the job's.
    out = [log.read_text().splitlines() for log in logs]
    own = [[line for line in out[i] if f": process {i} of 2: " in line] for i in (0, 1)]
    assert len(own[0]) == len(own[1]) == 1
    assert sum(int(line.split(" rows of ")[1].split(" items")[0]) for line in own[0] + own[1]) == 20
    assert [line for line in out[0] if ": in all: 19 rows of 20 items in 4 shards, 1 skipped" in line]
    assert not [line for line in out[1] if "in all" in line]
