"""The embedding folder both embedding jobs write (embed.py over image files, embed_shards.py over
shards): the names of its files, its manifest, its errors.tsv lines, and the progress bar they show."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from ..errors import InputError

MANIFEST = "manifest.json"
ERRORS = "errors.tsv"
FORMAT = "clip_jax.embed"  # the manifest's "format", whichever job wrote it


def read_manifest(path: str | os.PathLike) -> dict:
    """An embedding folder's manifest.json as a dict; InputError (a ValueError) naming the file if it
    isn't one."""
    path = Path(path)
    if not path.is_file():  # a FIFO would block the read
        raise InputError(f"{path}: not a regular file")
    return parse_manifest(path.read_bytes(), str(path))


def parse_manifest(data: bytes, where: str) -> dict:
    """A manifest's bytes (either job's, from any storage) -> a dict; InputError naming `where` if it isn't one."""
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise InputError(f"{where}: not a valid manifest ({str(e)[:200]})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards", {}), dict):
        raise InputError(f"{where}: not a valid manifest (expected a JSON object with a 'shards' object)")
    for k, shard in manifest.get("shards", {}).items():  # what a rerun reads of each shard done
        if not (isinstance(shard, dict) and isinstance(shard.get("items"), int) and isinstance(shard.get("rows"), int)
                and isinstance(shard.get("errors"), list) and all(_is_error(e) for e in shard["errors"])):
            raise InputError(f"{where}: not a valid manifest (shard {k[:40]!r} lacks its items, rows or errors)")
    return manifest


def _is_error(entry) -> bool:
    """An errors entry of a manifest or done marker: [path or key, reason]."""
    return isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)


def tsv_field(s: str) -> str:
    """`s` as one field of errors.tsv: tabs and line feeds become spaces."""
    return s.replace("\t", " ").replace("\n", " ")


def progress_bar(total: int | None, initial: int, unit: str, enabled: bool) -> tqdm:
    """The job's progress bar: on stderr, so stdout stays clean for the summary; items/s is tqdm's rate."""
    return tqdm(total=total, initial=initial, unit=unit, disable=not enabled, file=sys.stderr, smoothing=0.1,
                dynamic_ncols=True)
