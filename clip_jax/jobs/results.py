"""CLIP_benchmark's result file: the dict `clip-jax eval` writes, and the path its `--output` template names.

Light on purpose (no jax, no numpy): the command line checks an `--output` template before it loads a
model, so a typo costs nothing and a finished evaluation is never lost to it.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

from ..errors import InputError
from ..fileio import atomic_write, output_target

__all__ = ["RESULT_FIELDS", "check_output", "output_path", "result", "write_result"]

RESULT_FIELDS = ("dataset", "model", "pretrained", "task", "language")  # the placeholders of a result path


def output_path(template: str | os.PathLike, res: dict) -> Path:
    """The result file a template names for `res`: CLIP_benchmark's placeholders {dataset}, {model},
    {pretrained}, {task}, {language} filled in ("/" in a value becomes "_"). Any other placeholder, or a
    template str.format refuses, is an InputError naming it and listing the valid ones."""
    template = os.fspath(template)
    slug = {k: str(res.get(k, "")).replace("/", "_") for k in RESULT_FIELDS}
    valid = " ".join(f"{{{k}}}" for k in RESULT_FIELDS)
    try:
        for _, name, _, _ in string.Formatter().parse(template):
            if name is not None and name not in RESULT_FIELDS:
                raise InputError(f"--output {template}: unknown placeholder {{{name}}}; the valid ones are {valid} "
                                 "(write a literal brace as {{ or }})")
        return Path(template.format(**slug))
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"--output {template}: not a valid template ({e}); placeholders: {valid}") from None


def check_output(template: str | os.PathLike) -> Path:
    """Before any work: the template is valid (output_path), and the file it names could be written: not
    an existing folder or device, its nearest existing folder writable (missing folders are made when the
    result is written). -> the path with placeholder values "x". Raises InputError or OSError naming it."""
    path = output_path(template, dict.fromkeys(RESULT_FIELDS, "x"))
    output_target(path)  # refuses an existing folder, FIFO or device
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"{template}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{template}: the folder {folder} is not writable")
    return path



def result(dataset: str, model: str, pretrained: str, task: str, metrics: dict, language: str = "en", **extra) -> dict:
    """The dict CLIP_benchmark's `eval` dumps (and its `build` step collects)."""
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": metrics,
            "language": language, **extra}


def write_result(path: str | os.PathLike, res: dict) -> Path:
    """Write `res` as JSON, atomically, making missing folders. `path` may use CLIP_benchmark's
    placeholders (see output_path)."""
    target = output_path(path, res)
    text = json.dumps(res, indent=None) + "\n"

    def write(tmp):
        Path(tmp).write_text(text, encoding="utf-8")

    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, write)
    return target
