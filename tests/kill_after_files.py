"""`python -m tests.kill_after_files K[:N] ARGS...`: run `clip-jax ARGS...` and SIGKILL it while it writes
output shard K.

    K      right after shard K's data files are written, before the folder says shard K is done (the
           moment the tests have always covered)
    K:N    right after the Nth file written from shard K's first file on, whatever the file: in
           embed_shards.py the image .npy (1), the text .npy (2), the metadata (3), the done marker (4);
           in embed.py the image .npy (1), the text .npy (2, with --captions), the metadata, errors.tsv,
           then the manifest. Killing after each N in turn checks every write, so a job that wrote a
           commit point before its data would leave a shard marked done over files that are not there.

The embedding jobs know nothing of this: it wraps their write path from outside, where files are
written (embed.py: atomic_write; embed_shards.py: Destination.write) and where a shard is committed
(embed.py: the manifest written after the shard is recorded; embed_shards.py: its done/done_K.json).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import PurePosixPath

from clip_jax.cli.main import main
from clip_jax.jobs import embed, embed_shards

# An output file of shard k, in either job: img_emb/img_emb_0001.npy, metadata/metadata_1.parquet, done/done_1.json
_SHARD_FILE = re.compile(r"(?:img_emb|text_emb|metadata|done)_(\d+)\.(?:npy|parquet|json)")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _shard_of(path) -> int | None:
    m = _SHARD_FILE.fullmatch(PurePosixPath(os.fspath(path)).name)
    return int(m.group(1)) if m else None


def kill_before_commit(k: int) -> None:
    """Make shard k's commit kill this process instead, in both embedding jobs."""
    commit = embed.EmbedJob._commit

    def commit_or_die(job):
        if str(k) in job.done:  # write_shard has written shard k's files and recorded it
            _die()
        commit(job)

    write = embed_shards.Destination.write

    def write_or_die(dest, rel: str, data: bytes):
        path = PurePosixPath(rel)
        if path.parent.name == embed_shards.DONE and _shard_of(path) == k:
            _die()  # shard k's data files are written; its marker would be next
        write(dest, rel, data)

    embed.EmbedJob._commit = commit_or_die
    embed_shards.Destination.write = write_or_die


def kill_after_writes(k: int, n: int) -> None:
    """Kill this process right after the nth file written since shard k's first file, in both jobs."""
    count = 0

    def counted(write, path_arg: int):
        def write_then_maybe_die(*args):
            nonlocal count
            if count or _shard_of(args[path_arg]) == k:
                count += 1
            write(*args)  # whole: an atomic rename, or one PUT
            if count == n:
                _die()

        return write_then_maybe_die

    embed_shards.Destination.write = counted(embed_shards.Destination.write, 1)  # (dest, rel, data)
    embed.atomic_write = counted(embed.atomic_write, 0)  # embed.py's every file goes through this name


if __name__ == "__main__":
    shard, _, nth = sys.argv[1].partition(":")
    if nth:
        kill_after_writes(int(shard), int(nth))
    else:
        kill_before_commit(int(shard))
    sys.exit(main(sys.argv[2:]))
