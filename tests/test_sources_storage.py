"""clip_jax.storage: a local path and an fsspec URL read the same way, through one module (sources,
eval_data and embed_folder's Destination all use it)."""

from __future__ import annotations

import ast
from pathlib import Path

import fsspec
import pytest
from hypothesis import given

from clip_jax.data import storage
from clip_jax.errors import ClipJaxError, InputError, LimitError
from clip_jax.jobs.embed_folder import Destination

from .fuzz import FUZZ, bounded, mutated

PACKAGE = Path(__file__).resolve().parent.parent / "clip_jax"


@pytest.fixture
def both(tmp_path):
    """The same small tree as a local folder and at a memory:// URL."""
    files = {"a/x.txt": b"hello world", "a/b/y.bin": bytes(range(256)), "z.txt": b"caf\xc3\xa9\n"}
    mem = fsspec.filesystem("memory")
    root_url = f"memory://storage_{tmp_path.name}"
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
        mem.pipe_file(f"/storage_{tmp_path.name}/{rel}", data)
    yield str(tmp_path), root_url
    mem.rm(f"/storage_{tmp_path.name}", recursive=True)


def test_a_path_and_a_url_read_alike(both):
    for root in both:
        assert storage.is_url(root) == root.startswith("memory://")
        a = storage.join(root, "a")
        assert storage.isdir(a) and not storage.isfile(a) and storage.isfile(storage.join(a, "x.txt"))
        assert not storage.isfile(storage.join(root, "nothing"))
        assert storage.listdir(a) == ["b", "x.txt"]
        assert storage.basename(a) == "a" and storage.basename(a + "/") == "a"
        assert storage.parent(storage.join(a, "x.txt")).rstrip("/") == a
        y = storage.join(root, "a", "b", "y.bin")
        assert storage.read_bytes(y) == bytes(range(256))
        assert storage.read_bytes(y, 10, 5) == bytes(range(10, 15))  # a ranged read
        assert storage.read_bytes(y, 250) == bytes(range(250, 256))
        assert storage.read_text(storage.join(root, "z.txt"), 100) == "café\n"
        with storage.open_binary(y) as f:
            assert f.read(3) == bytes([0, 1, 2])
        assert storage.glob(storage.join(root, "a", "*.txt")) == [storage.join(root, "a", "x.txt")]
        with pytest.raises(FileNotFoundError):
            storage.listdir(storage.join(root, "nothing"))


def test_text_past_its_bound_or_not_utf8_names_the_file(both):
    for root in both:
        path = storage.join(root, "a", "x.txt")
        with pytest.raises(LimitError, match=r"x.txt: larger than 5 bytes"):
            storage.read_text(path, 5)
        with pytest.raises(InputError, match=r"y.bin: not UTF-8 text \(byte 128"):
            storage.read_text(storage.join(root, "a", "b", "y.bin"), 1000)


def test_an_unknown_protocol_names_the_url():
    """Before, fsspec's bare "Protocol not known: nosuch" (a ValueError without the URL) reached sources'
    and Destination's callers; eval_data alone named the URL. Now every caller gets the InputError."""
    with pytest.raises(InputError, match=r"nosuch://bucket/out: Protocol not known"):
        Destination("nosuch://bucket/out")
    with pytest.raises(InputError, match=r"nosuch://x/y: Protocol not known"):
        storage.isfile("nosuch://x/y")


def test_destination_reads_through_storage(both):
    for root in both:
        dest = Destination(root)
        assert dest.read("a/x.txt") == b"hello world" and dest.read("a/none.txt") is None
        assert dest.listdir() == ["a", "z.txt"] and dest.listdir("a") == ["b", "x.txt"] and dest.listdir("no") == []


def test_only_storage_imports_fsspec():
    """One local-path-or-URL abstraction: no other module of the package talks to fsspec itself."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n == "fsspec" or n.startswith("fsspec.") for n in names):
                found.append(path.name)
    assert sorted(set(found)) == ["storage.py"]


@FUZZ
@given(mutated(b"classnames\ncat\ndog\n"))
def test_read_text_fuzz(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("t") / "classnames.txt"
    path.write_bytes(data)
    text = bounded(lambda: storage.read_text(str(path), 64))
    assert text is None or (len(text.encode()) <= 64)


def test_read_text_refusals_are_project_errors(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xff" * 10)
    with pytest.raises(ClipJaxError):
        storage.read_text(str(path), 64)
