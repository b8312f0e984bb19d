"""The hostile-input contract every reader of outside bytes is fuzzed against.

    from .fuzz import bounded, mutated, FUZZ

    @FUZZ
    @given(data=mutated(valid_bytes))
    def test_reader_fuzz(data):
        bounded(lambda: read(data))

`bounded(call)` runs `call()` and asserts it returns, or raises the project's own error
(`clip_jax.errors.ClipJaxError`, whatever its builtin base), within a time and a memory bound: a
hang, a traceback of another type (IndexError, RecursionError, struct.error, MemoryError, OverflowError,
UnicodeDecodeError, ...) or an allocation past the bound fails the test with the input that caused it.

Memory is measured with tracemalloc, which sees Python objects and numpy's buffers (numpy reports
its allocations to it): a reader that believes a length field and allocates what it says is caught at
the bound, not when the machine runs out. Time is enforced with an interval timer (SIGALRM), so a
reader stuck in a loop is interrupted and reported rather than hanging the suite.
"""

from __future__ import annotations

import signal
import time
import tracemalloc
from collections.abc import Callable

from hypothesis import HealthCheck, settings, strategies as st

from clip_jax.errors import ClipJaxError

# Examples per test from the hypothesis profile (tests/conftest.py): 50 in the default run, enough to reach
# past the first header of each format (mutations of a valid file), about a second a reader on 2 cores;
# 1000 with `pytest --hypothesis-profile=ci-deep`. Derandomized: a run is repeatable. (`-m slow` also runs
# test_fuzz_checkpoints' test_fuzz_long, 3000 examples a format.)
FUZZ = settings(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SECONDS = 5.0  # per input: readers are linear in their input, which is a few KB here
MEGABYTES = 64  # per input: the seeds are a few KB, so anything near this believed a length field


class _Timeout(BaseException):  # BaseException: a reader's `except Exception` must not swallow it
    pass


def _alarm(signum, frame):
    raise _Timeout()


def bounded(call: Callable[[], object], *, seconds: float = SECONDS, megabytes: float = MEGABYTES,
            allowed: tuple[type[BaseException], ...] = ()) -> object:
    """call() -> its value, or None if it raised a ClipJaxError (or one of `allowed`). Fails the test on
    any other exception, on running past `seconds`, or on allocating more than `megabytes` at peak."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    try:
        return call()
    except _Timeout:
        raise AssertionError(f"did not return within {seconds} s") from None
    except (ClipJaxError, *allowed):
        return None
    except BaseException as e:  # noqa: BLE001 - anything else is the failure this harness exists to find
        raise AssertionError(f"raised {type(e).__name__}, not the project's own error: {e!s:.300}") from e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        peak = tracemalloc.get_traced_memory()[1] - base
        if not tracing:
            tracemalloc.stop()
        elapsed = time.perf_counter() - t0
        assert peak <= megabytes * 2**20, f"allocated {peak / 2**20:.1f} MB at peak (bound {megabytes} MB)"
        assert elapsed <= seconds * 1.5, f"took {elapsed:.1f} s (bound {seconds} s)"


_INTERESTING = [b"\x00", b"\xff", b"-1", b"0", b"99999999999", b"1e20", b"\x80", b"{", b"[", b'"', b"\n", b" ",
                b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00\x00\x00\x00\x00"]


@st.composite
def mutated(draw, seed: bytes, max_edits: int = 8) -> bytes:
    """A valid `seed` with up to `max_edits` edits: bytes flipped or set to boundary values, spans cut,
    repeated or moved, interesting tokens (-1, huge numbers, brackets) spliced in, or truncated anywhere.
    Random bytes alone rarely get past a format's first header; mutated valid files reach every field."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, max_edits))):
        n = len(data)
        op = draw(st.sampled_from(["flip", "set", "cut", "repeat", "insert", "truncate", "splice"]))
        i = draw(st.integers(0, max(n - 1, 0)))
        if op == "flip" and n:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            data[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, ord("9"), ord("-")]))
        elif op == "cut":
            j = draw(st.integers(i, min(n, i + 1024)))
            del data[i:j]
        elif op == "repeat" and n:
            j = draw(st.integers(i, min(n, i + 512)))
            data[i:i] = data[i:j] * draw(st.integers(1, 4))
        elif op == "insert":
            data[i:i] = draw(st.sampled_from(_INTERESTING))
        elif op == "splice":
            token = draw(st.sampled_from(_INTERESTING))
            data[i:i + len(token)] = token
        elif op == "truncate":
            del data[i:]
    return bytes(data)


def any_bytes(seed: bytes) -> st.SearchStrategy[bytes]:
    """Mutations of `seed`, plain random bytes, and every prefix of `seed` (truncation at each boundary)."""
    return st.one_of(mutated(seed), st.binary(max_size=2048),
                     st.integers(0, len(seed)).map(lambda n: seed[:n]))
