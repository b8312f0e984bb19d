"""Test-session settings, applied before any test module imports jax, and the shared model fixtures."""

import collections
import errno
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import hypothesis
import pytest

# The aot-tpu and aot-gpu extras install libtpu and the CUDA plugin (tests/test_aot.py compiles for TPU and
# GPU targets from the CPU). With them installed, jax would probe for a TPU or GPU at start-up; these
# machines have neither, so the suite runs on the CPU unless JAX_PLATFORMS says otherwise (benchmarks/gpu.sh
# does).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# pyarrow's own allocator (jemalloc, with its background threads) beside torch's and faiss's in one worker:
# the system allocator rules out one suspect of a rare crash inside pyarrow (tests/test_embed_hostile.py).
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
# jax's persistent compilation cache, one folder a run: set here, in the process that starts pytest-xdist's
# workers, it is theirs too and that of every subprocess a test starts (the command-line tests, the
# multi-device checks), so a program that two processes compile (the tiny models' towers, mostly) compiles
# once. Compilation is most of a tiny model's cost: a fresh process scoring TINY takes 8.5 s of CPU without
# the cache and 2.8 s with it. A size bound turns on jax's file lock, so a worker never reads an entry that
# another is still writing. Removed at the end of the run (pytest_sessionfinish below).
_JIT_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _JIT_CACHE = tempfile.mkdtemp(prefix="clip_jax_test_jit_cache_")
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_JIT_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", JAX_COMPILATION_CACHE_MAX_SIZE=str(4 << 30))

# Examples per property test (tests/fuzz.py's FUZZ and any @given without its own count): 50 in the default
# run, 1000 with `--hypothesis-profile=ci-deep`. No per-example deadline: on 2 shared cores an example's time
# says more about the machine than about the code (fuzz.bounded has its own time bound).
hypothesis.settings.register_profile("default-run", max_examples=50, deadline=None)
hypothesis.settings.register_profile("ci-deep", max_examples=1000, deadline=None)
hypothesis.settings.load_profile("default-run")


# --- shared models (configs, params and batches: tests/tiny.py) ------------------------------------
#
# Function-scoped, as tests may change a model in place: building one from numpy params takes well under
# a second, and models of one config share their compiled programs.


@pytest.fixture
def tiny():
    """A random CLIP of TINY (tests/tiny.py: ViT, the real vocabulary and context)."""
    from tests.tiny import TINY, tiny_model

    return tiny_model(TINY)


@pytest.fixture
def tiny_rn():
    """A random CLIP of TINY_RN (TINY with a ModifiedResNet image tower)."""
    from tests.tiny import TINY_RN, tiny_model

    return tiny_model(TINY_RN)


@pytest.fixture
def hits() -> collections.Counter:
    """Requests by path, for a test's own tests/local_server.serve(handler, hits): counts no other test sees."""
    return collections.Counter()


# --- work done once a run, shared by pytest-xdist's workers ------------------------------------------
#
# A module fixture runs once per worker that runs any of the module's tests: with `-n 2`, usually twice.
# The costly ones (8-device subprocesses, multi-process jobs, files of tens of MB) are done once a run in a
# folder both workers see, and read by each.

ROOT = Path(__file__).resolve().parents[1]
_started: list[subprocess.Popen] = []


def shared_folder(tmp_path_factory, name: str) -> Path:
    """A folder for `name` that every worker of this run sees (the run's own base folder without xdist)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own (popen-gw0, popen-gw1)
    folder = root / f"shared-{name}"
    folder.mkdir(exist_ok=True)
    return folder


def once(tmp_path_factory, name: str, fill: Callable[[Path], None]) -> Path:
    """fill(folder) once a run, whichever worker comes first; the other waits for it -> the folder."""
    folder = shared_folder(tmp_path_factory, name)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (folder / ".done").exists():
            fill(folder)
            (folder / ".done").touch()
    return folder


# Runs a command, its stderr to FOLDER/stderr.txt, and writes its exit status (or "timeout") to FOLDER/rc
# last, by a rename: a waiter that sees rc sees everything the command wrote.
_WRAPPER = """
import os, subprocess, sys
folder, timeout, *cmd = sys.argv[1:]
with open(os.path.join(folder, "stderr.txt"), "w") as err:
    try:
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                            timeout=float(timeout)).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
with open(os.path.join(folder, "rc.tmp"), "w") as f:
    f.write(str(rc))
os.replace(os.path.join(folder, "rc.tmp"), os.path.join(folder, "rc"))
"""


def start_once(tmp_path_factory, name: str, command: Callable[[Path], list[str]], env: dict, timeout: float) -> Path:
    """Start command(folder) (arguments after the interpreter; it writes its results into the folder) in the
    background, once a run, so that it runs beside other tests -> the folder, for wait_once."""
    folder = shared_folder(tmp_path_factory, name)
    try:
        (folder / "started").mkdir()  # atomic: one worker starts it
    except FileExistsError:
        return folder
    (folder / "timeout").write_text(str(timeout))
    wrapped = [sys.executable, "-c", _WRAPPER, str(folder), str(timeout), sys.executable, *command(folder)]
    _started.append(subprocess.Popen(wrapped, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return folder


def wait_once(folder: Path) -> Path:
    """Wait for what start_once started in `folder` to exit; fail with its stderr unless it succeeded."""
    while not (folder / "timeout").exists():  # the starting worker is between its mkdir and its write
        time.sleep(0.05)
    deadline = time.monotonic() + float((folder / "timeout").read_text()) + 60
    while not (folder / "rc").exists():
        assert time.monotonic() < deadline, f"{folder.name}: no exit status after its timeout"
        time.sleep(0.1)
    rc = (folder / "rc").read_text()
    assert rc == "0", f"{folder.name} exited {rc}:\n{(folder / 'stderr.txt').read_text()[-4000:]}"
    return folder


def start_device_checks(tmp_path_factory, script: str, devices: int = 8) -> Path:
    """Start tests/{script}.py OUT.json once a run with `devices` host CPU devices (JAX fixes its device
    count at import: the rest of the suite keeps one) -> the folder, for device_checks."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    command = lambda folder: [str(ROOT / "tests" / f"{script}.py"), str(folder / "checks.json")]
    return start_once(tmp_path_factory, script, command, env, timeout=300)


def device_checks(folder: Path) -> dict:
    """What start_device_checks' script measured, once it has exited."""
    return json.loads((wait_once(folder) / "checks.json").read_text())


def pytest_sessionfinish(session, exitstatus):
    for proc in _started:  # bounded by the wrapper's timeout; usually long finished
        proc.wait()
    if _JIT_CACHE and not os.environ.get("PYTEST_XDIST_WORKER"):  # the process that made it, after its workers
        shutil.rmtree(_JIT_CACHE, ignore_errors=True)


# --- no network ------------------------------------------------------------------------------------


def block_network(monkeypatch) -> list[str]:
    """Refuse every name lookup and connection except to this machine (the tests' own servers are on
    127.0.0.1); -> the list of refused attempts. Each raises OSError where it is made, which a library may
    catch (huggingface_hub then falls back to its cache), so the caller checks the list."""
    attempts = []

    def guarded(real, host_of):
        def call(*args, **kwargs):
            host = host_of(*args)
            if isinstance(host, bytes):
                host = host.decode()
            if host not in (None, "127.0.0.1", "::1", "localhost"):
                attempts.append(f"{real.__name__} {host}")
                raise OSError(errno.ENETUNREACH, f"no network in this test: {real.__name__} {host}")
            return real(*args, **kwargs)

        return call

    lookup_host = lambda host, *args: host
    peer_host = lambda sock, address: address[0] if isinstance(address, tuple) else None  # AF_UNIX: a path
    monkeypatch.setattr(socket, "getaddrinfo", guarded(socket.getaddrinfo, lookup_host))
    monkeypatch.setattr(socket.socket, "connect", guarded(socket.socket.connect, peer_host))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(socket.socket.connect_ex, peer_host))
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)  # a proxy on this machine would be a way out
    return attempts


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """A Hugging Face cache folder and offline mode, set as a user may after huggingface_hub was imported
    (its own HF_HUB_OFFLINE was read then: False here), with the network blocked: the test fails on any
    attempt to reach the Hub (an offline mode that were ignored would only make it slower otherwise)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # huggingface_hub 2.4 fetches a registry of agent harnesses for its user-agent header once a process,
    # local_files_only or not, unless its import-time HF_HUB_OFFLINE or HF_HUB_DISABLE_TELEMETRY is set:
    # off here, so that what is counted is clip_jax's own use of the network.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    attempts = block_network(monkeypatch)
    yield cache
    assert not attempts, f"network use in offline mode: {attempts}"
