"""What every checkpoint reader returns, and the check every weight passes before a model is built.

Each format's reader (a converted file, a PyTorch file, a transformers folder, the Hub) ends in a
`Checkpoint`; this module imports no reader, so each of them (and hub.py) can import it."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..config import CLIPConfig
from .torch_files import CheckpointError

FLOAT_NAMES = ("float16", "float32", "float64", "bfloat16")  # bfloat16: ml_dtypes' type


class Checkpoint(NamedTuple):
    """A checkpoint read into clip_jax's terms.

    params: flat clip_jax names -> numpy arrays; kind: "clip" (both towers), "text" or "vision" (one
    tower); projection: whether the tower(s) project to embed_dim; origin: what the config came from."""

    config: CLIPConfig
    params: dict[str, np.ndarray]
    kind: str
    projection: bool
    origin: str


def check_weight_dtype(name: str, array: np.ndarray) -> None:
    """A weight must be floating point: a bool, int, complex or object tensor is refused, naming it."""
    if array.dtype.name not in FLOAT_NAMES:
        raise CheckpointError(f"{name}: a tensor of dtype {array.dtype}, not floating point")
