"""Writing output files safely; every file clip_jax writes goes through `atomic_write`.

- Atomic: the bytes go to a temporary file beside the target, which is renamed onto it only once
  complete and synced, so a reader never sees half a file and a failure leaves the old one.
- Only over regular files: a path that exists as anything else (a FIFO, a device such as /dev/null, a
  directory, a socket) is refused before anything is written. A symlink is written through: its
  target is replaced (atomically, in the target's folder) and the link stays.
- A full disk is one error, `DiskFullError` ("PATH: no space left on device"), whatever library
  wrote the bytes, and nothing is left behind.
- Temporary files are named `.clip_jax-tmp.<name>.<random>` and locked (flock) while being written.
  A process killed mid-write leaves one; the next write into that folder removes it, unless it is
  locked (a live writer) or newer than the running process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["DiskFullError", "PathError", "TMP_PREFIX", "atomic_write", "is_disk_full", "output_target",
           "remove_stale_temporaries"]

TMP_PREFIX = ".clip_jax-tmp."
_NAME_MAX = 120  # of the target's name inside a temporary name (file names are at most 255 bytes)
_STARTED = time.time()  # temporaries older than this can't belong to this process
_swept: set[str] = set()
_FULL = (errno.ENOSPC, errno.EDQUOT)
_KINDS = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device",
          stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}


class PathError(OSError):
    """An OS error on `path` (its .filename), worded "PATH: reason" like clip_jax's other messages."""

    def __init__(self, code: int, reason: str, path: str | os.PathLike):
        self.message = f"{path}: {reason}"
        super().__init__(code, reason, os.fspath(path))

    def __str__(self) -> str:  # not OSError's "[Errno 28] reason: 'path'"
        return self.message


class DiskFullError(PathError):
    """No space was left for a file being written; the target was left as it was."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(errno.ENOSPC, "no space left on device (nothing was written)", path)


def is_disk_full(e: BaseException) -> bool:
    """True for the errors a full disk (or quota) gives, including Rust-backed writers' (safetensors),
    which carry the OS error in their message only."""
    if isinstance(e, OSError) and e.errno in _FULL:
        return True
    return any(f"(os error {code})" in str(e) for code in _FULL)


def output_target(path: str | os.PathLike) -> Path:
    """The file that writing `path` replaces: `path`, or the end of its symlink chain. Raises
    FileExistsError if that exists and isn't a regular file (nothing is written over a device)."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target  # a new file (or a dangling link: the file it names is created)
    except OSError as e:  # a symlink loop, a permission error: named by the path given, not its target
        raise PathError(e.errno, e.strerror, path) from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS.items() if test(mode)), "not a regular file")
        shown = f"{path} (-> {target})" if target != path else str(path)
        raise FileExistsError(f"{shown}: exists and is {kind}, not a regular file; refusing to replace it")
    return target


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(tmp_path), then rename the temporary file onto `path` (see the module docstring)."""
    target = output_target(path)
    folder = target.parent
    if not folder.is_dir():  # else mkstemp's error would name the temporary file
        raise FileNotFoundError(f"{path}: no such directory: {folder}")
    remove_stale_temporaries(folder, once=True)
    mode = _mode_for(target)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{target.name[:_NAME_MAX]}.", dir=folder)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until closed: tells a sweeping process this file is live
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())  # a delayed-allocation filesystem may report a full disk only here
        except Exception as e:
            if is_disk_full(e):
                raise DiskFullError(path) from None
            raise
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        _unlink(tmp)
        raise
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | os.PathLike, once: bool = False) -> list[Path]:
    """Remove the temporary files that killed runs left in `folder`. -> the paths removed.

    A temporary counts as stale if nobody holds its lock and it is older than this process, so a
    write in progress in another process, or starting in this one, is never touched. once: do this
    at most once per folder in this process (atomic_write's case: one look per folder is enough).
    """
    key = os.path.realpath(folder)
    if once and key in _swept:
        return []
    _swept.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False) and _take_stale(entry.path):
            removed.append(Path(entry.path))
    return removed


def _take_stale(path: str) -> bool:
    """Unlink `path` if it is stale (see remove_stale_temporaries). -> whether it was removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_mtime >= _STARTED:
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)  # while holding the lock, so no writer can be mid-way
        return True
    except OSError:  # locked by a live writer, or already gone
        return False
    finally:
        os.close(fd)


def _mode_for(target: Path) -> int:
    """The replaced file's permissions, or a new file's: what open() would give (mkstemp makes 0600)."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
