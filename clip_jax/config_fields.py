"""How a config field is declared (`declare`), and the rules its values pass.

A field's declaration carries its default, the rule its values pass, its names in open_clip's and
transformers' configs, and whether it adds parameters; config.py's validation, the open_clip and
transformers readers and writers (config.py, checkpoint/hf_format.py) and checkpoint/declared's
every-variant configs are derived from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

# --- the rules a field's values pass --------------------------------------------------------------
#
# A converted file's config is input like any other: its types and ranges are checked before anything is
# built from it (a ViT of 20,000 layers takes minutes and gigabytes to find out it matches no weights).
# The ranges are generous: the largest released CLIP towers have 48 blocks (ViT-bigG-14), 36 in one
# ResNet stage (RN50x64), width 1664, 448 px images, 77 tokens.

MAX_LAYERS = 256
MAX_WIDTH = 1 << 14
MAX_IMAGE_SIZE = 1 << 13
MAX_CONTEXT = 1 << 13
MAX_VOCAB = 1 << 24

Rule = tuple[Callable[[Any], bool], str]  # (accepts the value, what it expects, for messages)


def int_in(lo: int, hi: int, optional: bool = False) -> Rule:
    def check(v: Any) -> bool:
        return (optional and v is None) or (type(v) is int and lo <= v <= hi)  # bool is no int here
    return check, f"an int in [{lo}, {hi}]" + (" or null" if optional else "")


def number_in(lo: float, hi: float, optional: bool = False) -> Rule:
    def check(v: Any) -> bool:
        return (optional and v is None) or (type(v) in (int, float) and lo <= v <= hi)  # NaN fails both
    return check, f"a number in [{lo:g}, {hi:g}]" + (" or null" if optional else "")


def one_of(*choices: str) -> Rule:
    return (lambda v: type(v) is str and v in choices), f"one of {choices}"


def _resnet_layers(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 4 and all(int_in(1, MAX_LAYERS)[0](n) for n in v)


BOOL = (lambda v: type(v) is bool), "true or false"
NAME = (lambda v: type(v) is str and 0 < len(v) <= 64), "a name"
OBJECT = (lambda v: isinstance(v, dict)), "an object"
RGB = (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(number_in(-1e3, 1e3)[0](x) for x in v),
       "3 numbers")
TOWER_LAYERS = (lambda v: int_in(1, MAX_LAYERS)[0](v) or _resnet_layers(v),
                f"an int in [1, {MAX_LAYERS}] (ViT) or 4 of them (ResNet)")
WIDTH = int_in(1, MAX_WIDTH)
RATIO = number_in(1e-3, 64)
LAYER_SCALE = number_in(-1e3, 1e3, optional=True)

# --- declaring a field ----------------------------------------------------------------------------

SAME = object()  # open_clip= / hf=: the source names the field as clip_jax does


def declare(default: Any = dataclasses.MISSING, rule: Rule | None = None, *, open_clip: str | None | object = SAME,
            hf: str | None = None, coded: tuple[str, ...] = (), vit_only: bool = False,
            adds_params: Any = dataclasses.MISSING, open_clip_default: Any = dataclasses.MISSING,
            hf_default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING,
            preprocess: str | None = None) -> Any:
    """A config field and everything derived from it.

    rule: what a value must be (checked wherever a config comes from). open_clip: its key in open_clip's
    tower config (vision_cfg/text_cfg, or the model config for CLIPConfig), None if open_clip has none.
    hf: its key in transformers' CLIPTextConfig/CLIPVisionConfig (the model config for CLIPConfig); None:
    transformers' CLIP has no such option, so only its default is exported. coded: the sources ("open_clip",
    "hf") whose value is converted by code (config_from_open_clip, hf_format) rather than copied as it is.
    vit_only: a ResNet holds the default. adds_params: a value that gives the model parameters it lacks
    at its default (checkpoint/declared builds models with them). open_clip_default / hf_default: where
    theirs differ. preprocess: its key in open_clip's preprocess_cfg."""
    metadata = {"rule": rule, "open_clip": open_clip, "hf": hf, "coded": coded, "vit_only": vit_only,
                "adds_params": adds_params, "open_clip_default": open_clip_default, "hf_default": hf_default,
                "preprocess": preprocess}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def _meta(f: dataclasses.Field, key: str) -> Any:
    value = f.metadata[key]
    if key in ("open_clip", "hf") and value is SAME:
        return f.name
    return value


def source_keys(cls: type, source: str, *, coded: bool | None = None) -> dict[str, str]:
    """{field: its key in `source` ("open_clip" or "hf")} for the fields of `cls` that source has;
    coded True/False: only the fields that source's reader converts in code / copies as they are."""
    return {f.name: _meta(f, source) for f in dataclasses.fields(cls) if _meta(f, source) is not None
            and (coded is None or (source in f.metadata["coded"]) == coded)}


def source_default(f: dataclasses.Field, source: str) -> Any:
    """The value `source` ("open_clip" or "hf") gives a field its config leaves out."""
    theirs = f.metadata[f"{source}_default"]
    return f.default if theirs is dataclasses.MISSING else theirs


def adds_params(cls: type, resnet: bool = False) -> dict[str, Any]:
    """{field: a value giving the model parameters of its own} for `cls` (ResNet: the fields it holds)."""
    return {f.name: f.metadata["adds_params"] for f in dataclasses.fields(cls)
            if f.metadata["adds_params"] is not dataclasses.MISSING and not (resnet and f.metadata["vit_only"])}


def vit_only_defaults(cls: type) -> dict[str, Any]:
    """{field: its default} for the fields a ResNet holds at their default."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.metadata["vit_only"]}
