"""Test-session settings, applied before any test module imports jax, and the shared model fixtures."""

import collections
import errno
import os
import socket

import pytest

# The aot-tpu and aot-gpu extras install libtpu and the CUDA plugin (tests/test_aot.py compiles for TPU and
# GPU targets from the CPU). With them installed, jax would probe for a TPU or GPU at start-up; these
# machines have neither, so the suite runs on the CPU unless JAX_PLATFORMS says otherwise (benchmarks/gpu.sh
# does).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# pyarrow's own allocator (jemalloc, with its background threads) beside torch's and faiss's in one worker:
# the system allocator rules out one suspect of a rare crash inside pyarrow (tests/test_embed_hostile.py).
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


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
