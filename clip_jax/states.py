"""What a tower computes, layer by layer (transformers' `output_hidden_states`): TowerStates and the
choice of which hidden states to keep."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np


class TowerStates(NamedTuple):
    """What a tower computes, field by field as transformers' CLIPTextModel / CLIPVisionModel outputs.

    last_hidden_state [B, L, D]; hidden_states: the input of block 0, then each block's output [B, L, D]
    (only the asked ones with `layers=`); pooled [B, D] (transformers' pooler_output); features
    [B, embed_dim], the projected features (encode_text / encode_image), None without a projection.
    """

    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...]
    pooled: jax.Array
    features: jax.Array | None


def layer_indices(layers, n_blocks: int) -> tuple[int, ...] | None:
    """`layers` (indices into the n_blocks + 1 hidden states, negative from the end; None: all) as
    non-negative ints, checked."""
    if layers is None:
        return None
    if isinstance(layers, int):
        raise TypeError(f"layers must be a sequence of indices, e.g. layers=({layers},)")
    out = []
    for i in layers:
        if not isinstance(i, (int, np.integer)) or not -(n_blocks + 1) <= i <= n_blocks:
            raise IndexError(f"layers: {i!r} is not an index of the {n_blocks + 1} hidden states "
                             f"(the input of block 0, then {n_blocks} blocks)")
        out.append(int(i) % (n_blocks + 1))
    return tuple(out)


def kept_layers(layers: tuple[int, ...] | None, n_blocks: int) -> frozenset[int]:
    return frozenset(range(n_blocks + 1) if layers is None else layers)


def select_states(kept: dict, layers: tuple[int, ...] | None, n_blocks: int) -> tuple[jax.Array, ...]:
    return tuple(kept[i] for i in (range(n_blocks + 1) if layers is None else layers))
