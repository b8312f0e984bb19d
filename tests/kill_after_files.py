"""`python -m tests.kill_after_files K[:N] ARGS...`: run `clip-jax ARGS...` and SIGKILL it while it writes
output shard K.

    K      right after shard K's data files are written, before its done marker says it is done
    K:N    right after the Nth file written from shard K's first file on, whatever the file: the image
           .npy (1), the text .npy (2, when the job embeds text), the metadata, then the done marker.
           Killing after each N in turn checks every write, so a job that wrote a commit point before its
           data would leave a shard marked done over files that are not there.

The embedding jobs know nothing of this: it wraps, from outside, the one place where an embedding
folder's files are written (embed_folder.Destination.write), which is also where a shard is committed
(its done/done_K.json).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import PurePosixPath

from clip_jax.cli.main import main
from clip_jax.jobs import embed_folder

# An output file of shard k: img_emb/img_emb_0001.npy, metadata/metadata_1.parquet, done/done_1.json
_SHARD_FILE = re.compile(r"(?:img_emb|text_emb|metadata|done)_(\d+)\.(?:npy|parquet|json)")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _shard_of(path) -> int | None:
    m = _SHARD_FILE.fullmatch(PurePosixPath(os.fspath(path)).name)
    return int(m.group(1)) if m else None


def kill_before_commit(k: int) -> None:
    """Make shard k's done marker kill this process instead of being written."""
    write = embed_folder.Destination.write

    def write_or_die(dest, rel: str, data: bytes):
        path = PurePosixPath(rel)
        if path.parent.name == embed_folder.DONE and _shard_of(path) == k:
            _die()  # shard k's data files are written; its marker would be next
        write(dest, rel, data)

    embed_folder.Destination.write = write_or_die


def kill_after_writes(k: int, n: int) -> None:
    """Kill this process right after the nth file written since shard k's first file."""
    count = 0
    write = embed_folder.Destination.write

    def write_then_maybe_die(dest, rel: str, data: bytes):
        nonlocal count
        if count or _shard_of(rel) == k:
            count += 1
        write(dest, rel, data)  # whole: an atomic rename, or one PUT
        if count == n:
            _die()

    embed_folder.Destination.write = write_then_maybe_die


if __name__ == "__main__":
    shard, _, nth = sys.argv[1].partition(":")
    if nth:
        kill_after_writes(int(shard), int(nth))
    else:
        kill_before_commit(int(shard))
    sys.exit(main(sys.argv[2:]))
