"""The embedding folder both embedding jobs write (embed.py over image files and captions, embed_shards.py
over tar or parquet shards), on local disk or any fsspec URL: its layout, its manifest, how a shard is
committed and how a rerun resumes.

    OUT/img_emb/img_emb_{k}.npy          float16 [rows_k, embed_dim], L2-normalized (clip-retrieval's layout)
    OUT/text_emb/text_emb_{k}.npy        the captions' embeddings, the same rows
    OUT/metadata/metadata_{k}.parquet    row i describes row i of the .npy files (columns: the job's)
    OUT/done/done_{k}.json               shard k is complete: its input, items, rows, errors, and the
                                         byte size of each file written for it
    OUT/errors.tsv                       what was skipped, one line each (columns: the job's)
    OUT/manifest.json                    the job's identity; its "shards" lists every shard once all are done

k is zero-padded to the width clip-retrieval uses (int(log10(shards)) + 1), so a name sort is the shard
order, which is how clip-retrieval, autofaiss and embedding-reader read the folder.

Resume: a shard is done once done_{k}.json exists; it is written after the shard's data files, and every
file is replaced whole (an atomic rename locally, one PUT on object storage), so a process killed at any
point leaves each shard either done or redone whole by the next run. A rerun skips done shards whose
files are all there with the sizes their marker records; a shard whose marker is unreadable, or whose
files are missing or of another size, is warned about in one line and embedded again.

Identity: the manifest, written before any shard, records the job (model, dtypes, a fingerprint of the
inputs, ...). A rerun with another identity is refused in one line naming what differs, unless no shard
was ever done there (a run that failed at its start binds nothing). On local disk a lock file keeps a
second job out while one runs. A run that claimed a new folder and ends before writing any shard (a
model that won't load, say) removes what it made: a failed first run leaves no folder behind.

Format versions ("format_version"): 1 (image folders) kept the shards done in the manifest alone, 2
(shards) and 3 (both jobs) write done markers; clip_jax.jobs.search reads all three.
"""

from __future__ import annotations

import fcntl
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ..data.storage import is_url, listdir, read_bytes, url_to_fs
from ..errors import InputError
from ..fileio import atomic_write

MANIFEST = "manifest.json"
ERRORS = "errors.tsv"
DONE = "done"
LOCK = ".clip_jax_embed.lock"  # flock'ed by the running job; removed when it ends
FORMAT = "clip_jax.embed"  # the manifest's "format", whichever job wrote it
FORMAT_VERSION = 3


# --- records ------------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike) -> dict:
    """An embedding folder's manifest.json as a dict; InputError (a ValueError) naming the file if it
    isn't one."""
    path = Path(path)
    if not path.is_file():  # a FIFO would block the read
        raise InputError(f"{path}: not a regular file")
    return parse_manifest(path.read_bytes(), str(path))


def parse_manifest(data: bytes, where: str) -> dict:
    """A manifest's bytes (any version, from any storage) -> a dict; InputError naming `where` if it isn't one."""
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


def read_marker(data: bytes, name: str, paths: dict[str, str]) -> tuple[dict | None, str | None]:
    """A done marker -> (summary, None), or (None, what is wrong with it). name: the input it must be for;
    paths: the files it must record, {"image": "img_emb/img_emb_0.npy", ...}."""
    try:
        summary = json.loads(data)
    except (ValueError, RecursionError):
        return None, "not JSON" if data.strip() else "empty"
    if not isinstance(summary, dict):
        return None, f"not a JSON object ({type(summary).__name__})"
    ints = [summary.get(f) for f in ("items", "rows")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in ints) or ints[1] > ints[0]:
        return None, "no valid items and rows"
    errors = summary.get("errors")
    if not (isinstance(errors, list) and all(_is_error(e) for e in errors)):
        return None, "no valid errors list"
    if summary.get("shard") != name:
        return None, f"written for another input shard ({summary.get('shard')!r})"
    files = summary.get("files")
    if not (isinstance(files, dict) and sorted(files) == sorted(paths.values())
            and all(isinstance(n, int) and not isinstance(n, bool) for n in files.values())):
        return None, "does not record its files and their sizes"
    return summary, None


def tsv_field(s: str) -> str:
    """`s` as one field of errors.tsv: tabs and line feeds become spaces."""
    return s.replace("\t", " ").replace("\n", " ")


def tsv_line(*fields: str) -> bytes:
    """One errors.tsv line: a name's own bytes where it wasn't UTF-8 (surrogateescape), escapes otherwise."""
    out = []
    for f in fields:
        f = tsv_field(str(f))
        try:
            out.append(f.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:  # a surrogate no byte maps to (from a JSON "\\ud800" escape)
            out.append(f.encode("utf-8", "backslashreplace"))
    return b"\t".join(out)


def progress_bar(total: int | None, initial: int, unit: str, enabled: bool) -> tqdm:
    """The job's progress bar: on stderr, so stdout stays clean for the summary; items/s is tqdm's rate."""
    return tqdm(total=total, initial=initial, unit=unit, disable=not enabled, file=sys.stderr, smoothing=0.1,
                dynamic_ncols=True)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    return buf.getvalue()


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


# --- the destination ---------------------------------------------------------------------------------


def _write_bytes(path: str, data: bytes) -> None:
    # f.write reports a full disk with its errno (numpy's and pyarrow's own file writers do not always).
    with open(path, "wb") as f:
        f.write(data)


class Destination:
    """An output folder: a local path (atomic renames) or an fsspec URL (one PUT per file)."""

    def __init__(self, root: str | os.PathLike):
        root = os.fspath(root)
        if root.startswith("file://"):
            root = root[len("file://"):]
        self.root = root.rstrip("/") or "/"
        self.local = not is_url(self.root)
        if not self.local:
            self.fs, self.path = url_to_fs(self.root)

    def __str__(self) -> str:
        return self.root

    def _remote(self, rel: str) -> str:
        return f"{self.path.rstrip('/')}/{rel}"

    def makedirs(self, *subs: str) -> None:
        for sub in subs:
            if self.local:
                (Path(self.root) / sub).mkdir(parents=True, exist_ok=True)
            else:
                self.fs.makedirs(self._remote(sub), exist_ok=True)

    def write(self, rel: str, data: bytes) -> None:
        if self.local:
            atomic_write(Path(self.root) / rel, lambda tmp: _write_bytes(tmp, data))
        else:
            self.fs.pipe_file(self._remote(rel), data)

    def remove(self, rel: str) -> None:
        if self.local:
            (Path(self.root) / rel).unlink(missing_ok=True)
        elif self.fs.exists(self._remote(rel)):
            self.fs.rm_file(self._remote(rel))

    def _at(self, rel: str) -> str:
        """The path or URL of `rel` in the folder, as clip_jax.data.storage reads it."""
        return str(Path(self.root) / rel) if self.local else f"{self.root}/{rel}"

    def read(self, rel: str) -> bytes | None:
        try:
            return read_bytes(self._at(rel))
        except FileNotFoundError:
            return None

    def sizes(self, sub: str) -> dict[str, int]:
        """{"sub/name": byte size} of the files in folder `sub`: one listing (one request on object storage)."""
        try:
            if self.local:
                with os.scandir(Path(self.root) / sub) as entries:
                    return {f"{sub}/{e.name}": e.stat().st_size for e in entries if e.is_file()}
            return {f"{sub}/{info['name'].rstrip('/').rsplit('/', 1)[-1]}": int(info.get("size") or 0)
                    for info in self.fs.ls(self._remote(sub), detail=True) if info.get("type") != "directory"}
        except FileNotFoundError:
            return {}

    def listdir(self, sub: str = "") -> list[str]:
        try:
            return listdir(self._at(sub) if sub else self.root)
        except FileNotFoundError:
            return []


# --- the folder --------------------------------------------------------------------------------------


class EmbeddingFolder:
    """One output folder of an embedding job: its identity, which shards are done, and writing a shard.

    inputs: what identifies the job's inputs besides the model ({"inputs_sha256": ..., ...}); it joins
    the manifest, so a rerun with other inputs cannot mix two jobs in one folder. image, text: which
    embeddings each shard has. open() (one process: the one that claims the folder) before any shard.
    """

    def __init__(self, output: str | os.PathLike, *, num_shards: int, model: str, dtype: str, emb_dtype: str,
                 image: bool, text: bool, inputs: dict):
        self.dest = Destination(output)
        self.num_shards = num_shards
        self.digits = int(math.log10(max(num_shards, 1))) + 1  # clip-retrieval's zero padding
        self.emb_dtype, self.image, self.text = emb_dtype, image, text
        self.identity = {"format": FORMAT, "format_version": FORMAT_VERSION, "num_shards": num_shards, "model": model,
                         "dtype": dtype, "emb_dtype": emb_dtype, "image": image, "text": text, **inputs}
        self._lock_fd: int | None = None
        self._made: bool | None = None  # open() claimed a new folder: whether it made the root directory too
        self._committed = False  # a shard or the end of the job was written in this run

    def __str__(self) -> str:
        return str(self.dest)

    def key(self, k: int) -> str:
        return str(k).zfill(self.digits)

    def paths(self, k: int) -> dict[str, str]:
        """Shard k's data files, relative to the folder: {"image"?, "text"?, "metadata"}."""
        key, out = self.key(k), {}
        if self.image:
            out["image"] = f"img_emb/img_emb_{key}.npy"
        if self.text:
            out["text"] = f"text_emb/text_emb_{key}.npy"
        out["metadata"] = f"metadata/metadata_{key}.parquet"
        return out

    def marker(self, k: int) -> str:
        return f"{DONE}/done_{self.key(k)}.json"

    # -- claiming the folder --

    def open(self) -> None:
        """Lock the folder (on local disk), check it holds this same job or nothing, and claim it."""
        made_root = self.dest.local and not Path(self.dest.root).exists()
        if self.dest.local:
            self._lock()
        try:
            if self._check():
                self._made = made_root
        except BaseException:
            self.close()
            raise

    def _check(self) -> bool:
        """-> whether the folder was new (nothing of a job there), and is claimed now."""
        old = self.dest.read(MANIFEST)
        if old is not None:
            old = parse_manifest(old, f"{self.dest}/{MANIFEST}")
            diff = [k for k in self.identity if old.get(k) != self.identity[k]]
            if not diff:
                return False
            if old.get("shards") or self.dest.listdir(DONE):
                detail = ", ".join(f"{k}: {repr(old.get(k))[:80]} there, {self.identity[k]!r} now" for k in diff[:4])
                raise InputError(f"{self.dest} holds another embedding job ({detail}); use a new output folder")
            self._remove_uncommitted()  # its run failed before any shard was done: nothing there is kept
        elif any(name != LOCK for name in self.dest.listdir()):
            raise InputError(f"{self.dest}: folder is not empty and has no {MANIFEST}; use a new output folder")
        self.dest.makedirs(*self._subfolders())
        self.write_manifest({})
        return old is None

    def _subfolders(self) -> list[str]:
        return sorted({rel.split("/", 1)[0] for rel in self.paths(0).values()} | {DONE})

    def _discard(self) -> None:
        """Remove the manifest and empty folders open() made, if the folder holds nothing else (another
        process of the job may have written shards there: then everything stays)."""
        if any(self.dest.listdir(sub) for sub in self._subfolders()):
            return
        self.dest.remove(MANIFEST)
        if self.dest.local:
            for sub in self._subfolders():
                try:
                    (Path(self.dest.root) / sub).rmdir()
                except OSError:  # not empty after all: keep it
                    pass

    def _remove_uncommitted(self) -> None:
        """Data files no done marker counts (a shard in progress when its run failed)."""
        for sub in ("img_emb", "text_emb", "metadata"):
            for rel in self.dest.sizes(sub):
                self.dest.remove(rel)

    def _lock(self) -> None:
        """Take OUT/.clip_jax_embed.lock, or refuse: two jobs writing one folder would mix their shards."""
        root = Path(self.dest.root)
        root.mkdir(parents=True, exist_ok=True)
        path = root / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # The holder unlinks the file before releasing it: a lock on an unlinked file is no lock.
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    self._lock_fd = fd
                    return
            except BlockingIOError:
                os.close(fd)
                raise InputError(f"{self.dest}: another clip-jax embed is writing to this folder ({path} is "
                                 "locked); wait for it to end or use another output folder") from None
            except FileNotFoundError:
                pass
            os.close(fd)

    def close(self) -> None:
        """Release the folder's lock (a killed process releases it too: the kernel drops flock locks). A
        new folder claimed by open() in which nothing was written since is removed (see _discard)."""
        made, self._made = self._made, None
        try:
            if made is not None and not self._committed:
                self._discard()
        finally:
            if self._lock_fd is not None:
                (Path(self.dest.root) / LOCK).unlink(missing_ok=True)  # while still holding it; see _lock
                os.close(self._lock_fd)
                self._lock_fd = None
        if made and not self._committed:
            try:
                Path(self.dest.root).rmdir()  # the root it made, if still empty (another job may be in it now)
            except OSError:
                pass

    # -- shards --

    def done_shards(self, ks: Sequence[int], names: Sequence[str]) -> dict[str, dict]:
        """{str(k): summary} of the shards of `ks` that are done: a valid marker for input names[k], and
        every file it names there with the size it records. Any other marker is warned about, and its
        shard embedded again."""
        sizes: dict[str, int] = {}
        for sub in {rel.split("/", 1)[0] for rel in self.paths(0).values()}:
            sizes.update(self.dest.sizes(sub))
        markers = set(self.dest.listdir(DONE))  # one listing, not a read per shard never started
        done = {}
        for k in ks:
            data = self.dest.read(self.marker(k)) if self.marker(k).split("/", 1)[1] in markers else None
            if data is None:
                continue
            summary, problem = read_marker(data, names[k], self.paths(k))
            if problem is None:
                problem = next((f"{rel} is missing" if rel not in sizes else f"{rel} has {sizes[rel]} bytes, not "
                                f"{size}" for rel, size in summary["files"].items() if sizes.get(rel) != size), None)
            if problem is None:
                done[str(k)] = summary
            else:
                print(f"warning: {self.dest}/{self.marker(k)}: {problem}; shard {k} is embedded again",
                      file=sys.stderr)
        return done

    def write_shard(self, k: int, name: str, items: int, image_emb: np.ndarray | None, text_emb: np.ndarray | None,
                    metadata: pa.Table, errors: list[tuple[str, str]]) -> dict:
        """Shard k's data files, then its done marker (the commit: it records each file's size).
        image_emb, text_emb: [rows, D] (None for the kind the folder doesn't hold); metadata: rows rows;
        name: the input the shard was made from; items: how many it had, rows included; errors: (key or
        path, reason). -> the marker's summary."""
        self._committed = True
        paths, files = self.paths(k), {}
        data = {"image": image_emb, "text": text_emb}
        for kind, rel in paths.items():
            blob = parquet_bytes(metadata) if kind == "metadata" else npy_bytes(data[kind].astype(self.emb_dtype))
            self.dest.write(rel, blob)
            files[rel] = len(blob)
        summary = {"shard": name, "items": items, "rows": metadata.num_rows, "errors": [list(e) for e in errors],
                   "files": files}
        self.dest.write(self.marker(k), json.dumps(summary, sort_keys=True).encode())
        return summary

    def write_manifest(self, shards: dict) -> None:
        self.dest.write(MANIFEST, json.dumps({**self.identity, "shards": shards}, indent=1, sort_keys=True).encode())

    def finish(self, shards: dict[str, dict], header: Sequence[str], rows: Sequence[Sequence[str]],
               complete: bool) -> None:
        """Once every shard has run: errors.tsv (header, then rows), then, if complete, the manifest listing
        `shards` (the last file written: a job whose manifest lists its shards is complete)."""
        self._committed = True
        self.dest.write(ERRORS, b"\n".join([tsv_line(*header)] + [tsv_line(*r) for r in rows]) + b"\n")
        if complete:
            self.write_manifest(shards)
