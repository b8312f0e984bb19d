"""Model families: what makes a CLIP a CLIP, declared in one place, so the code around the model asks.

A family is a config type; the model classes built from it, by checkpoint kind (both towers, or one);
how its config is read from a state dict's shapes and from open_clip's model config; its tokenizer and
its image preprocessing; and its head (the scalars turning two towers' features into logits). The
checkpoint name mapping needs no entry: PyTorch names and layouts follow from the roles each module
declares (`roles.declare`), whatever the family.

`load`, `convert`, `export`, `ShardedCLIP`, the jobs and `train` find a model's family with
`family_of(config or model)` and call these, so a new family (SigLIP next) is its own modules and one
`register(...)` below, with no edits of theirs.

    family = family_of(model.config)
    tokens = family.tokenizer(model.config)(["a dog", "a cat"])        # int32 [2, context_length]
    preprocess = family.transform(model.config)                        # PIL image -> float32 [H, W, 3]
    per_image, per_text = family.logits(img_feats, txt_feats, **family.head(model))   # [N, M], [M, N]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from flax import nnx

from .config import CLIPConfig, config_from_open_clip, config_from_state_dict
from .errors import InputError
from .image import ImageTransform, transform_for
from .model import logits as clip_logits_of_features
from .tokenizer import tokenize
from .towers import KINDS

__all__ = ["Family", "FAMILIES", "register", "family_of", "CLIP_FAMILY"]

Tokenizer = Callable[..., np.ndarray]  # (texts, truncate=False) -> int32 [N, context_length]


@dataclass(frozen=True)
class Family:
    """One model family. Every callable takes the family's own config type.

    name: what configs and converted files call it ("clip").
    config_type: the frozen dataclass describing one model of the family.
    models: checkpoint kind -> model class: "clip" (both towers), "text", "vision".
    config_from_state_dict: PyTorch-named shapes -> config (what the weights alone say).
    config_from_open_clip: (open_clip model config, preprocess config) -> config.
    tokenizer: config -> the tokenizer the reference uses for it.
    transform: config -> the eval preprocessing the reference uses for it.
    head: model -> the scalars `logits` takes, as keyword arguments (CLIP: logit_scale); arrays, or
      jax.ShapeDtypeStructs for a model built from shapes.
    logits: (image features [N, D], text features [M, D], **head) -> (per image [N, M], per text [M, N]).
    """

    name: str
    config_type: type
    models: Mapping[str, type]
    config_from_state_dict: Callable[..., Any]
    config_from_open_clip: Callable[..., Any]
    tokenizer: Callable[[Any], Tokenizer]
    transform: Callable[[Any], ImageTransform]
    head: Callable[[nnx.Module], dict[str, jax.Array]]
    logits: Callable[..., tuple[jax.Array, jax.Array]]

    def kind_of(self, model: nnx.Module) -> str:
        """The checkpoint kind of one of this family's models ("clip", "text" or "vision")."""
        for kind, cls in self.models.items():
            if type(model) is cls:
                return kind
        raise InputError(f"{type(model).__name__} is not a {self.name} model ({', '.join(self.models)})")


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make `family` known to family_of (its name and config type must be new)."""
    for known in FAMILIES.values():
        if family.name == known.name or family.config_type is known.config_type:
            raise ValueError(f"family {family.name!r} ({family.config_type.__name__}) is registered already")
    FAMILIES[family.name] = family
    return family


def family_of(thing: Any) -> Family:
    """The family of a config, a model (its `.config`), a family name, or a Family."""
    if isinstance(thing, Family):
        return thing
    if isinstance(thing, str):
        if thing in FAMILIES:
            return FAMILIES[thing]
        raise InputError(f"unknown model family {thing!r}; known: {', '.join(FAMILIES)}")
    config = getattr(thing, "config", thing)
    for family in FAMILIES.values():
        if type(config) is family.config_type:  # exact: a family's config may subclass another's
            return family
    raise InputError(f"no model family has the config type {type(config).__name__} "
                     f"(known: {', '.join(f.config_type.__name__ for f in FAMILIES.values())})")


def _clip_tokenizer(config: CLIPConfig) -> Tokenizer:
    """OpenAI's BPE at the text tower's context length (`clip.tokenize`, open_clip's SimpleTokenizer)."""

    def tok(texts: str | Sequence[str], truncate: bool = False) -> np.ndarray:
        return tokenize(texts, context_length=config.text.context_length, truncate=truncate)

    return tok


def _clip_head(model: nnx.Module) -> dict[str, jax.Array]:
    return {"logit_scale": model.logit_scale.get_raw_value()}  # raw: a ShapeDtypeStruct in a model of shapes


CLIP_FAMILY = register(Family(
    name="clip",
    config_type=CLIPConfig,
    models=KINDS,
    config_from_state_dict=config_from_state_dict,
    config_from_open_clip=config_from_open_clip,
    tokenizer=_clip_tokenizer,
    transform=transform_for,
    head=_clip_head,
    logits=clip_logits_of_features,
))
