"""`python -m tests.kill_after_files K ARGS...`: run `clip-jax ARGS...` and SIGKILL it right after output
shard K's data files are written, before the folder says shard K is done (the worst moment to die).

The embedding jobs know nothing of this: it wraps their write path from outside, where a shard is
committed (embed.py: the manifest written after the shard is recorded; embed_shards.py: its
done/done_K.json marker).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import PurePosixPath

from clip_jax import embed, embed_shards
from clip_jax.cli import main


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_files(k: int) -> None:
    """Make shard k's commit kill this process instead, in both embedding jobs."""
    commit = embed.EmbedJob._commit

    def commit_or_die(job):
        if str(k) in job.done:  # write_shard has written shard k's files and recorded it
            _die()
        commit(job)

    write = embed_shards.Destination.write

    def write_or_die(dest, rel: str, data: bytes):
        path = PurePosixPath(rel)
        if path.parent.name == embed_shards.DONE and path.stem.startswith("done_") and int(path.stem[5:]) == k:
            _die()  # shard k's data files are written; its marker would be next
        write(dest, rel, data)

    embed.EmbedJob._commit = commit_or_die
    embed_shards.Destination.write = write_or_die


if __name__ == "__main__":
    kill_after_files(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
