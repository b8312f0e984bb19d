"""The checkpoint reader's memory budget: reading allocates about what the file holds plus the tensors it
really contains, and every hostile file below is refused before its cost is allocated.

Each file is at most ~1 MB but, read without a budget, costs 256 MiB to 1 GiB. Peaks are measured in a
fresh interpreter (`ru_maxrss` of a child), never with timing. The copy budget is also tested at its
boundary (test_copy_budget_boundary): exactly at it is read, one element or byte past it is refused.
"""

from __future__ import annotations

import math
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from clip_jax.checkpoint import torch_pickle
from clip_jax.checkpoint.torch_files import CheckpointError, load_state_dict
from tests import hostile as H

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "clip_jax" / "checkpoint" / "torch_files.py"
MiB = 1 << 20

# The reader is loaded from its file (numpy and ml_dtypes only, not jax), so the baseline is small.
# Its one clip_jax import (errors, for the error's base type) is found through stand-in packages whose
# __init__ files never run.
CHILD = f"""
import importlib.util, sys, types
for name, folder in [('clip_jax', {str(MODULE.parents[1])!r}), ('clip_jax.checkpoint', {str(MODULE.parent)!r})]:
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = [folder]
spec = importlib.util.spec_from_file_location('clip_jax.checkpoint.torch_files', {str(MODULE)!r})
reader = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reader)
try:
    state = reader.load_state_dict(sys.argv[1])
    print('ok', sum(a.nbytes for a in state.values()))
except reader.CheckpointError as e:
    print('refused', e)
"""
RUNNER = """
import resource, subprocess, sys
r = subprocess.run([sys.executable, '-c', sys.argv[1], sys.argv[2]], capture_output=True, text=True)
print(r.stdout + r.stderr, end='')
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss(path: Path) -> tuple[int, str]:
    """Read `path` in a child interpreter -> (the child's peak resident set in bytes, what it printed)."""
    out = subprocess.run([sys.executable, "-c", RUNNER, CHILD, str(path)], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    *lines, kib = out.strip().splitlines()
    return int(kib) * 1024, "\n".join(lines)  # Linux reports ru_maxrss in KiB


def floats_pkl(views: dict[str, tuple[int, tuple, tuple]], numel: int) -> bytes:
    """A state dict of views {name: (offset, size, stride)} into one float32 storage '0'."""
    pid = H.storage_pid("0", numel)
    return H.PROTO2 + H.dict_(**{k: H.tensor(pid, *v) for k, v in views.items()}) + H.STOP


def stride0(tmp_path: Path) -> Path:  # one 256 MiB view of a single float
    return H.write_zip(tmp_path / "stride0.pt", floats_pkl({"w": (0, (64 * MiB,), (0,))}, 1), {"0": bytes(4)})


def eight_stride0(tmp_path: Path) -> Path:  # eight 64 MiB views of a single float
    views = {f"w{i}": (0, (16 * MiB,), (0,)) for i in range(8)}
    return H.write_zip(tmp_path / "eight.pt", floats_pkl(views, 1), {"0": bytes(4)})


def aliasing(tmp_path: Path) -> Path:  # 256 names for one 1 MiB storage: 255 copies
    views = {f"w{i}": (0, (MiB // 4,), (1,)) for i in range(256)}
    return H.write_zip(tmp_path / "alias.pt", floats_pkl(views, MiB // 4), {"0": bytes(MiB)})


def storage_bomb(tmp_path: Path) -> Path:  # a 1.1 MB entry that inflates to 256 MiB
    pkl = floats_pkl({"w": (0, (64 * MiB,), (1,))}, 64 * MiB)
    return H.write_deflated_zeros(tmp_path / "bomb.pt", pkl, "data/0", 256 * MiB)


def data_pkl_bomb(tmp_path: Path) -> Path:  # data.pkl itself inflates to 256 MiB
    return H.write_deflated_zeros(tmp_path / "pkl_bomb.pt", b"", "data.pkl", 256 * MiB)


def memo_bomb_zip(tmp_path: Path) -> Path:  # a 12-byte data.pkl asking for a 512 MiB memo table
    return H.write_zip(tmp_path / "memo.pt", H.memo_bomb(0x01FFFFFF))


def memo_bomb_legacy(tmp_path: Path) -> Path:
    return H.write_legacy(tmp_path / "memo_legacy.pt", H.memo_bomb(0x01FFFFFF))


HOSTILE = {
    stride0: "would copy", eight_stride0: "would copy", aliasing: "would copy",
    storage_bomb: "inflates", data_pkl_bomb: "data.pkl", memo_bomb_zip: "memo", memo_bomb_legacy: "memo",
}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> int:
    """Peak of the same child reading a valid 16-byte file: the interpreter, numpy and the reader."""
    path = tmp_path_factory.mktemp("ok") / "ok.pt"
    H.write_zip(path, floats_pkl({"w": (0, (4,), (1,))}, 4), {"0": bytes(16)})
    rss, out = peak_rss(path)
    assert out.startswith("ok"), out
    return rss


@pytest.mark.parametrize("build", list(HOSTILE), ids=lambda f: f.__name__)
def test_hostile_files_are_refused_within_budget(tmp_path, baseline, build):
    path = build(tmp_path)
    assert path.stat().st_size < 2 * MiB
    rss, out = peak_rss(path)
    assert out.startswith(f"refused {path}:") and HOSTILE[build] in out, out
    # Each file is refused before anything of its cost is allocated: beyond the baseline, the child
    # holds at most the file (< 2 MiB), the pickle's objects and the zip index. 48 MiB is that with
    # allocator headroom, and far below the 256 MiB to 1 GiB these files cost without a budget.
    assert rss <= baseline + 48 * MiB, f"peak {rss / MiB:.0f} MiB, baseline {baseline / MiB:.0f} MiB"


def test_zip_entry_sizes_must_agree_with_the_layout(tmp_path):
    """A stored entry is read straight from the file: its central-directory size must match its local
    header (or data descriptor) and must not run into the next entry, even with a matching CRC-32."""
    torch = pytest.importorskip("torch")
    four = np.arange(4, dtype="<f4").tobytes()
    # zipfile writes sizes into local headers; torch.save writes zeros there and a data descriptor.
    by_zipfile = H.write_zip(tmp_path / "zipfile.pt", floats_pkl({"w": (0, (4,), (1,))}, 4), {"0": four})
    by_torch = tmp_path / "torch.pt"
    torch.save({"w": torch.arange(4.0)}, by_torch)
    for src, entry, needle in ((by_zipfile, "archive/data/0", "local header"),
                               (by_torch, "torch/data/0", "next entry")):
        data = src.read_bytes()
        start = data.index(four)
        longer = data[start:start + 80]  # the storage and the next 64 bytes (past a data descriptor)
        path = H.patch_central_entry(src, tmp_path / f"long_{src.name}", entry, 80, zlib.crc32(longer))
        with pytest.raises(CheckpointError, match=needle) as info:
            load_state_dict(path)
        assert str(path) in str(info.value) and entry in str(info.value)


def test_real_torch_files_within_budget(tmp_path):
    """What torch.save writes for tied parameters and slices of one tensor is read (one tensor takes the
    storage's buffer, the others are copies: at most the storage once more); an expand()ed tensor
    larger than the slack is refused, since materializing it costs more than the file holds."""
    torch = pytest.importorskip("torch")
    big = torch.arange(8 * MiB, dtype=torch.float32)  # 32 MiB, twice the copy slack
    qkv = torch.arange(8 * MiB, dtype=torch.float32)
    shared = {"a": big, "tied": big, "qkv": qkv, "q": qkv[: 2 * MiB], "kv": qkv[2 * MiB:].view(2, 3 * MiB)}
    torch.save(shared, tmp_path / "shared.pt")
    got = load_state_dict(tmp_path / "shared.pt")
    for name, tensor in shared.items():
        np.testing.assert_array_equal(got[name], tensor.numpy())
    got["a"][0] = -1
    got["qkv"][0] = -1
    assert got["tied"][0] == 0 and got["q"][0] == 0  # no output aliases another

    torch.save({"ones": torch.ones(1).expand(4)}, tmp_path / "small_expand.pt")
    np.testing.assert_array_equal(load_state_dict(tmp_path / "small_expand.pt")["ones"], np.ones(4, "f4"))
    torch.save({"ones": torch.ones(1).expand(32 * MiB)}, tmp_path / "expand.pt")
    with pytest.raises(CheckpointError, match="'ones'.*would copy"):
        load_state_dict(tmp_path / "expand.pt")


# --- the copy budget at its boundary ----------------------------------------------------------------
#
# Copies may take the storages' bytes + COPY_SLACK. Each case sits exactly at that budget (read) or one
# element or byte past it (refused). The over-budget cases are over in BYTES but far under in ELEMENTS
# (float32: a quarter as many), so a budget that counted elements, or counted the storages in elements,
# or the view that owns its storage's buffer as a copy, or `>=` for `>`, fails one of them.

SLACK = torch_pickle.COPY_SLACK
F4, U1 = "FloatStorage", "ByteStorage"
ITEMSIZE = {F4: 4, U1: 1}
WHOLE = 1 << 20  # a 4 MiB float32 storage: its owner view, then full-size copies of it (tied parameters)
COPIES = SLACK // (4 * WHOLE) + 1  # full copies that fill the budget exactly: the storage's bytes + SLACK
TIED = {f"w{i}": ("0", 0, (WHOLE // 4, 4), (4, 1)) for i in range(1 + COPIES)}  # w0 owns the buffer

# name: ({storage key: (type, numel)}, {tensor: (storage key, offset, size, stride)}, bytes over the budget)
BOUNDARY = {
    "stride0_at_budget": ({"0": (F4, 1)}, {"w": ("0", 0, (SLACK // 4 + 1,), (0,))}, 0),
    "stride0_one_element_over": ({"0": (F4, 1)}, {"w": ("0", 0, (SLACK // 4 + 2,), (0,))}, 4),
    # a float32 and a uint8 storage: the budget is 5 bytes + SLACK, so one byte over is expressible
    "mixed_at_budget": ({"0": (F4, 1), "1": (U1, 1)},
                        {"w": ("0", 0, (SLACK // 4,), (0,)), "b": ("1", 0, (5,), (0,))}, 0),
    "mixed_one_byte_over": ({"0": (F4, 1), "1": (U1, 1)},
                            {"w": ("0", 0, (SLACK // 4,), (0,)), "b": ("1", 0, (6,), (0,))}, 1),
    "tied_at_budget": ({"0": (F4, WHOLE)}, TIED, 0),
    "tied_one_element_over": ({"0": (F4, WHOLE)}, {**TIED, "last": ("0", WHOLE - 1, (1,), (1,))}, 4),
}


def views_file(path: Path, storages: dict, views: dict, legacy: bool) -> Path:
    """A state dict of `views` into `storages` (their elements 0, 1, 2, ...), as a zip or legacy file."""
    pids = {key: H.storage_pid(key, numel, kind, legacy) for key, (kind, numel) in storages.items()}
    pkl = H.PROTO2 + H.dict_(**{name: H.tensor(pids[key], offset, size, stride)
                                for name, (key, offset, size, stride) in views.items()}) + H.STOP
    data = {key: storage_values(kind, numel).tobytes() for key, (kind, numel) in storages.items()}
    if legacy:
        return H.write_legacy(path, pkl, [(key, storages[key][1], data[key]) for key in storages])
    return H.write_zip(path, pkl, data)


def storage_values(kind: str, numel: int) -> np.ndarray:
    return np.arange(numel, dtype="<f4") if kind == F4 else (np.arange(numel) % 251).astype(np.uint8)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("case", list(BOUNDARY))
def test_copy_budget_boundary(tmp_path, case, legacy):
    storages, views, over = BOUNDARY[case]
    # The case is what its name says: copies (all views but the buffer's owner) - stored bytes - SLACK.
    copied = sum(math.prod(size) * ITEMSIZE[storages[key][0]] for key, _, size, _ in views.values())
    owned = 4 * WHOLE if "w0" in views else 0
    stored = sum(numel * ITEMSIZE[kind] for kind, numel in storages.values())
    assert copied - owned - stored - SLACK == over
    path = views_file(tmp_path / f"{case}.pt", storages, views, legacy)
    if over:
        with pytest.raises(CheckpointError, match="would copy") as info:
            load_state_dict(path)
        assert str(path) in str(info.value)
        return
    got = load_state_dict(path)
    for name, (key, offset, size, stride) in views.items():
        flat = storage_values(*storages[key])
        want = np.lib.stride_tricks.as_strided(flat[offset:], size, tuple(s * flat.itemsize for s in stride))
        np.testing.assert_array_equal(got[name], want)
