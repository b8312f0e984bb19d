"""A training run's logs: RUN/metrics.jsonl and TensorBoard scalars (tensorboardX: a small maintained
event writer, no TensorFlow).

    log = TrainLog("RUN", resume_step=1200)   # lines past step 1200 (a killed run's tail) are dropped
    log.write(1210, {"loss": 3.2, "lr": 4e-4, ...})   # one JSON line, flushed; scalars "train/loss", ...
    log.close()

metrics.jsonl holds one JSON object a line, `{"step": ..., <metric>: value, ...}`, in step order. A run
killed and resumed from the checkpoint at step S replays steps S+1...: the lines it wrote past S are
dropped first, so every step appears once, with the values of the run that produced the final model
(the same values, on the CPU, since a resumed run repeats them bit for bit). A line cut short by a
kill (no newline, not JSON) is dropped too. TensorBoard gets the same values under "train/<name>"
("eval/<name>" for names starting with "eval_"); a resumed run's writer is opened with purge_step=S+1,
which tells TensorBoard to discard the earlier events from S+1 on.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..fileio import atomic_write

__all__ = ["METRICS", "TENSORBOARD", "TrainLog", "read_metrics", "truncate_metrics", "scalar_tag"]

METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"  # RUN/tensorboard/events.out.tfevents.*
EVAL_PREFIX = "eval_"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a metrics.jsonl, in order; a last line cut short (no newline, or not JSON) is
    left out, as is any line that is not an object with an integer "step"."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        record = _record(line)
        if record is not None:
            out.append(record)
    return out


def _record(line: str) -> dict[str, Any] | None:
    if not line.endswith("\n"):
        return None
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # a damaged line (nested past Python's stack) is dropped like a cut one
        return None
    ok = isinstance(record, dict) and isinstance(record.get("step"), int) and not isinstance(record["step"], bool)
    return record if ok else None


def truncate_metrics(path: str | os.PathLike, step: int) -> list[dict[str, Any]]:
    """Keep the lines of steps <= `step` (rewritten atomically, only when something goes); -> the kept
    records."""
    path = Path(path)
    if not path.exists():
        return []
    records = read_metrics(path)
    kept = [r for r in records if r["step"] <= step]
    text = "".join(_line(r) for r in kept)
    if text.encode() != path.read_bytes():
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return kept


def _plain(value: Any) -> Any:
    """A number as JSON holds it (NaN and inf as null: a diverged loss stays readable JSON)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, allow_nan=False, separators=(", ", ": ")) + "\n"


def scalar_tag(name: str) -> str:
    """A metric's TensorBoard tag: "loss" -> "train/loss", "eval_acc1" -> "eval/acc1"."""
    if name.startswith(EVAL_PREFIX):
        return "eval/" + name[len(EVAL_PREFIX):]
    return "train/" + name


def _summary_writer() -> type:
    """tensorboardX's SummaryWriter (the `train` extra: imported where it is used). tensorboardX imports
    torch, when installed, only to recognize torch tensors among its inputs (4 s here); the scalars
    written here are floats, so a torch not imported yet is hidden from that import."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter  # the train extra, as above

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError: tensorboardX's own fallback
    try:
        from tensorboardX import SummaryWriter  # the train extra, as above
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class TrainLog:
    """metrics.jsonl and TensorBoard events of the run in `folder`.

    resume_step: the step the run restarts from (its checkpoint's), None or 0 for a fresh start (a
    metrics.jsonl left by a run that never saved a checkpoint is emptied). enabled: False in processes
    other than 0, which write nothing. tensorboard: False writes metrics.jsonl only.
    """

    def __init__(self, folder: str | os.PathLike, *, resume_step: int | None = None, enabled: bool = True,
                 tensorboard: bool = True):
        self.folder = Path(folder)
        self.enabled = enabled
        self._writer = None
        self._file = None
        if not enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.records = truncate_metrics(self.folder / METRICS, resume_step or 0)
        self._file = open(self.folder / METRICS, "a", encoding="utf-8")
        if tensorboard:
            SummaryWriter = _summary_writer()
            purge = (resume_step or 0) + 1 if resume_step else None
            # The file is named by the second it was opened in and the host; the suffix keeps a rerun in the
            # same second from overwriting the file before it.
            self._writer = SummaryWriter(str(self.folder / TENSORBOARD), purge_step=purge, flush_secs=10,
                                         filename_suffix=f".{os.getpid()}.{resume_step or 0}")

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """One line {"step": step, **metrics} (numbers as floats, NaN as null), flushed; each metric a
        TensorBoard scalar at `step`. -> the record written."""
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        if not self.enabled:
            return record
        self._file.write(_line(record))
        self._file.flush()
        if self._writer is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(scalar_tag(name), value, global_step=int(step))
        return record

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TrainLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
