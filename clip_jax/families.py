"""Model families: what makes a CLIP a CLIP, declared in one place, so the code around the model asks.

A family is a config type; the model classes built from it, by checkpoint kind (both towers, or one);
how its config is read from a state dict's shapes and from open_clip's model config; what a file's
tensor shapes say about a config (the converted file's header check); its tokenizer and its image
preprocessing; and its head (the scalars turning two towers' features into logits). The checkpoint
name mapping needs no entry: PyTorch names and layouts follow from the roles each module declares
(`roles.declare`), whatever the family.

`load`, `convert`, `export`, `ShardedCLIP`, the jobs and `train` find a model's family with
`family_of(config or model)` and call these, so a new family (SigLIP next) is its own modules, which
`register` their Family, and one line in BUILTIN below, with no edits of theirs.

    family = family_of(model.config)
    tokens = family.tokenizer(model.config)(["a dog", "a cat"])        # int32 [2, context_length]
    preprocess = family.transform(model.config)                        # PIL image -> float32 [H, W, 3]
    per_image, per_text = family.logits(img_feats, txt_feats, **family.head(model))   # [N, M], [M, N]

This module imports no model code: each built-in family's module is imported on the first lookup (as
transformers' auto classes do), so low modules such as the converted-file store can name a family.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["BUILTIN", "FAMILIES", "Family", "Tokenizer", "check_shapes", "family_of", "register"]

Tokenizer = Callable[..., np.ndarray]  # (texts, truncate=False) -> int32 [N, context_length]

# Family name -> the module that declares it (imported on the first lookup).
BUILTIN = {"clip": "clip_jax.clip_family", "siglip": "clip_jax.siglip_family"}


@dataclass(frozen=True)
class Family:
    """One model family. Every callable takes the family's own config type.

    name: what configs and converted files call it ("clip").
    config_type: the frozen dataclass describing one model of the family (with from_dict / to_json).
    models: checkpoint kind -> model class: "clip" (both towers), "text", "vision".
    config_from_state_dict: PyTorch-named shapes -> config (what the weights alone say).
    config_from_open_clip: (open_clip model config, preprocess config) -> config.
    check_header: (config, flat clip_jax name -> shape) -> what contradicts, or None.
    tokenizer: config -> the tokenizer the reference uses for it.
    transform: config -> the eval preprocessing the reference uses for it (an image.ImageTransform).
    head: model -> the scalars `logits` takes, as keyword arguments (CLIP: logit_scale); arrays, or
      jax.ShapeDtypeStructs for a model built from shapes.
    logits: (image features [N, D], text features [M, D], **head) -> (per image [N, M], per text [M, N]).
    """

    name: str
    config_type: type
    models: Mapping[str, type]
    config_from_state_dict: Callable[..., Any]
    config_from_open_clip: Callable[..., Any]
    check_header: Callable[[Any, Mapping[str, tuple[int, ...]]], str | None]
    tokenizer: Callable[[Any], Tokenizer]
    transform: Callable[[Any], Any]
    head: Callable[[Any], dict[str, Any]]
    logits: Callable[..., tuple[Any, Any]]

    def build_args(self, kind: str, projection: bool = True) -> dict[str, Any]:
        """model.build()'s and abstract_model()'s arguments for one of this family's checkpoint kinds:
        {"model_type": the class, "options": its own keyword arguments (a single tower's projection)}."""
        if kind not in self.models:
            raise InputError(f"kind must be one of {tuple(self.models)} for {self.name} models, got {kind!r}")
        options = () if kind == "clip" else (("projection", projection),)
        return {"model_type": self.models[kind], "options": options}

    def kind_of(self, model: Any) -> str:
        """The checkpoint kind of one of this family's models ("clip", "text" or "vision")."""
        for kind, cls in self.models.items():
            if type(model) is cls:
                return kind
        raise InputError(f"{type(model).__name__} is not a {self.name} model ({', '.join(self.models)})")


def check_shapes(blocks: list[tuple[str, str, int]], implied: list[tuple[str, tuple[int, ...], str]],
                 shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """A family's check_header from its tables: what contradicts a file holding tensors of `shapes`, or
    None. blocks: (config field, tensor name prefix of the blocks, how many); implied: (tensor, shape,
    the config fields that set it). The model built afterwards checks every tensor; this makes a config
    that matches no file fail before that."""
    for field_name, prefix, n in blocks:
        found = {int(m[1]) for name in shapes if (m := re.match(re.escape(prefix) + r"(\d+)\.", name))}
        if found != set(range(n)):
            return f"config field '{field_name}' says {n} blocks, the file holds {len(found)} ({prefix}N)"
    for name, want, fields in implied:
        if shapes.get(name) != want:
            got = shapes[name] if name in shapes else "no such tensor"
            return f"config fields {fields} imply {name} of shape {want}, the file holds {got}"
    return None


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make `family` known to family_of (its name and config type must be new)."""
    for known in FAMILIES.values():
        if family.name == known.name or family.config_type is known.config_type:
            raise ValueError(f"family {family.name!r} ({family.config_type.__name__}) is registered already")
    FAMILIES[family.name] = family
    return family


def _builtins() -> None:
    for module in BUILTIN.values():
        importlib.import_module(module)  # registers its family


def family_of(thing: Any) -> Family:
    """The family of a config, a model (its `.config`), a family name, or a Family."""
    if isinstance(thing, Family):
        return thing
    _builtins()
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
