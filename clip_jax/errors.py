"""The project's own errors: what clip_jax raises on purpose, a reader of outside bytes included.

Every reader of bytes or values that come from outside (tar/pax shards, parquet tables, zip and pickle
checkpoints, safetensors headers, msgpack, npz, JSON configs, CSV, caches) either returns or raises a
`ClipJaxError`; the fuzz and hostile-input tests (tests/fuzz.py and its users, tests/test_*_hostile.py)
hold each reader to that. The subclasses keep the builtin base a caller would already catch (`ValueError`
for bad contents, `OSError` for a file that can't be read), so `except ValueError` still works. The
command line prints any of them as one line (cli.common.is_user_error); any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

from importlib.util import find_spec

__all__ = ["ClipJaxError", "InputError", "LimitError", "MissingExtraError", "ShardError", "SourceFallbackWarning",
           "decode_utf8", "require_extra"]


class ClipJaxError(Exception):
    """Base of every error clip_jax raises on purpose; its message names the file, key or field."""


class InputError(ClipJaxError, ValueError):
    """Bytes or values from outside that are malformed, of the wrong type, or not what they claim."""


class LimitError(InputError):
    """An input that would exceed a bound set before using it (a length, a count, a depth, a size)."""


class MissingExtraError(ClipJaxError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


class SourceFallbackWarning(UserWarning):
    """A pretrained model's URL failed and its Hub copy is loaded instead; the message names both sources.
    (Here rather than in hub.py so the command line can print it as one line without importing jax.)"""


class ShardError(ClipJaxError, OSError):
    """A shard that could not be read (missing, not a tar or parquet file, cut short): that shard fails
    alone, and a rerun retries it."""


def decode_utf8(data: bytes, where: object) -> str:
    """`data` as UTF-8 text; bytes that are not UTF-8 are an InputError naming `where` (the file) and the
    offset, not a UnicodeDecodeError (which the command line would show as a bug, with its traceback)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: not UTF-8 text (byte {e.start})") from None


def require_extra(extra: str, what: str, *modules: str) -> None:
    """Raise MissingExtraError, one line naming `pip install 'clip-jax[extra]'`, when any of `modules` is
    not installed. Looked up with find_spec: nothing is imported, so the check costs no start-up time."""
    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"{what} needs {', '.join(missing)}, not installed: pip install 'clip-jax[{extra}]'")
