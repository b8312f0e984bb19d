"""LiT (Zhai et al. 2022, "locked-image tuning"): which params a locked tower freezes.

    locked = locked_params(names, lock_image=True, unlock_last=2)   # a set of clip_jax param names
    trainable = trainable_filter(locked)                            # an nnx filter: Params not in it

A tower is every param under `visual.` (the image tower) or the text tower's (CLIP's at the top level,
SigLIP's under `text.`); `logit_scale` and `logit_bias` belong to neither and always train (LiT trains the
temperature). Locking a tower freezes all of it: its params go to `TrainState.frozen`, with no gradient and
no optimizer state.

`unlock_last=N` keeps the last N residual blocks of each locked tower trainable, with everything after
them: the final norm, the pooling head and the projection (`ln_post`, `attnpool` / `attn_pool`, `proj`;
`ln_final`, `text_projection`). The blocks are a transformer's `resblocks.i` and a ModifiedResNet's
Bottlenecks (`layer1.0` ... `layer4.k`, in order); what comes before them (the stem: patch or conv stem,
class and positional embeddings, `ln_pre`, the token embedding) stays locked for any N <= the number of
blocks. So `unlock_last=N` is open_clip's `--lock-image-unlocked-groups N + 1` (its groups: the stem, each
block, the last block with the final norm, the projection alone) and `--lock-text-unlocked-layers N + 1`;
open_clip refuses partial locking of a ModifiedResNet, which is allowed here (the BatchNorm statistics are
never trained anyway).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from flax import nnx

from .errors import InputError
from .roles import flat_name

__all__ = ["HEAD", "STEM", "block_of", "locked_params", "tower_of", "trainable_filter"]

# The params of a tower before its first block (by the first name under the tower's prefix).
STEM = frozenset({"conv1", "conv2", "conv3", "bn1", "bn2", "bn3", "class_embedding", "positional_embedding",
                  "ln_pre", "token_embedding", "cls_emb"})
# The contrastive head's scalars: in no tower.
HEAD = frozenset({"logit_scale", "logit_bias"})

# A residual block: `...resblocks.<i>.` (transformers) or `...layer<s>.<i>.` (ModifiedResNet stages).
_BLOCK = re.compile(r"^(?:.*\.)?(?:resblocks|layer(\d+))\.(\d+)\.")


def tower_of(name: str) -> str | None:
    """"image", "text" or None (the head's scalars) for a clip_jax param name."""
    if name in HEAD:
        return None
    return "image" if name.startswith("visual.") else "text"


def block_of(name: str) -> tuple[int, int] | None:
    """The residual block a param belongs to, as an order within its tower ((stage, index): a
    ModifiedResNet's stages 1-4, 0 for a transformer stack), or None for a param outside the blocks."""
    m = _BLOCK.match(name)
    return None if m is None else (int(m.group(1) or 0), int(m.group(2)))


def _first(name: str) -> str:
    """The first name of `name` under its tower's prefix ("visual.conv1.kernel" -> "conv1")."""
    parts = name.split(".")
    return parts[1] if parts[0] in ("visual", "text") and len(parts) > 1 else parts[0]


def _tower_locked(names: list[str], tower: str, unlock_last: int) -> set[str]:
    """The names of one locked tower that stay frozen with its last `unlock_last` blocks open."""
    blocks = sorted({b for b in map(block_of, names) if b is not None})
    if unlock_last > len(blocks):
        raise InputError(f"unlock_last={unlock_last}: the {tower} tower has only {len(blocks)} residual blocks")
    opened = set(blocks[len(blocks) - unlock_last:]) if unlock_last else set()

    def frozen(name: str) -> bool:
        if not unlock_last:
            return True
        block = block_of(name)
        return block not in opened if block is not None else _first(name) in STEM

    return {n for n in names if frozen(n)}


def locked_params(names: Iterable[str], *, lock_image: bool = False, lock_text: bool = False,
                  unlock_last: int = 0) -> set[str]:
    """The clip_jax names of the params LiT freezes (module docstring), from all the trainable params' names.

    unlock_last: residual blocks left trainable at the end of each locked tower (with what follows them);
    0 <= unlock_last <= the tower's number of blocks, and only with a locked tower (InputError otherwise).
    """
    if not isinstance(unlock_last, int) or isinstance(unlock_last, bool) or unlock_last < 0:
        raise InputError(f"unlock_last must be a whole number >= 0, got {unlock_last!r}")
    if unlock_last and not (lock_image or lock_text):
        raise InputError(f"unlock_last={unlock_last} opens blocks of a locked tower: lock one "
                         "(lock_image=True or lock_text=True)")
    names = list(names)
    locked: set[str] = set()
    for tower, lock in (("image", lock_image), ("text", lock_text)):
        if lock:
            own = [n for n in names if tower_of(n) == tower]
            if not own:
                raise InputError(f"lock_{tower}: this model has no {tower} tower params")
            locked |= _tower_locked(own, tower, unlock_last)
    return locked


def trainable_filter(locked: set[str]) -> Callable[[tuple, object], bool]:
    """An nnx filter (for nnx.split / nnx.state) that takes the Params whose names are not in `locked`."""

    def trainable(path: tuple, value: object) -> bool:
        return isinstance(value, nnx.Param) and flat_name(path) not in locked

    return trainable
