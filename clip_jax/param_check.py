"""Whether a flat params dict (name -> array) fits a model: every expected name present with its shape,
nothing else. Below the model, as `model.build` checks what it is given, and the checkpoint readers
raise the same ConversionError (the model imports no checkpoint module)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ClipJaxError


class ConversionError(ClipJaxError, ValueError):
    """A set of params that doesn't fit the model: names every missing, unexpected and mis-shaped tensor at once."""


def check_params(params: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Every expected param (name -> shape, as param_shapes gives) present with its shape, nothing else."""
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    mismatched = [
        f"{k}: {tuple(params[k].shape)}, expected {expected[k]}"
        for k in sorted(set(params) & set(expected))
        if tuple(params[k].shape) != expected[k]
    ]
    raise_if_any(missing, unexpected, mismatched)


def raise_if_any(missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
    """ConversionError listing every problem (20 of each kind), or nothing if there is none."""
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if items:
            shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
            parts.append(f"{len(items)} {label}: {shown}")
    raise ConversionError("; ".join(parts))
