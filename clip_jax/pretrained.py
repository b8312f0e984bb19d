"""The registry of downloadable weights: OpenAI's nine models and open_clip's pretrained tags.

Names `load` accepts (case of the tag ignored, "-" in a tag read as "_", as open_clip does):

    "ViT-B/32", "ViT-B-32", "ViT-L/14@336px", "ViT-L-14-336px", "RN50"   OpenAI's models, as clip.load
    "ViT-B-32/laion2b_s34b_b79k"                                         an open_clip tag (the listed spelling)
    "ViT-B-32:laion2b_s34b_b79k", ("ViT-B-32", "laion2b_s34b_b79k")      the same tag, open_clip's spellings
    "ViT-B-32-quickgelu/laion400m_e32"                                   open_clip's QuickGELU aliases

available_models() lists them as clip.available_models() does (OpenAI's names, then "arch/tag");
list_pretrained() as open_clip.list_pretrained() does ((architecture, tag) pairs, "-quickgelu" names too).

The table is clip_jax/assets/pretrained.json, generated from open_clip's own by tools/pretrained_table.py
(open_clip is not imported here). Each tag carries the preprocessing it was trained with and its
activation: a tag trained with QuickGELU gets QuickGELU under either architecture name (open_clip would
build exact GELU for "ViT-B-32" + "laion400m_e32" and only warn).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from .config import CLIPConfig, canonical_name, config_from_open_clip
from .errors import InputError

# OpenAI's names -> open_clip's architecture with the "openai" tag.
OPENAI = {
    "RN50": "RN50", "RN101": "RN101", "RN50x4": "RN50x4", "RN50x16": "RN50x16", "RN50x64": "RN50x64",
    "ViT-B/32": "ViT-B-32", "ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14", "ViT-L/14@336px": "ViT-L-14-336",
}
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")


@dataclass(frozen=True)
class Pretrained:
    """One set of downloadable weights.

    url + sha256: a direct download, verified (sha256 may be a prefix where that's all the source
    publishes). hf_hub: a Hugging Face Hub repo (for OpenAI's tags, the fallback when the URL can't be
    reached); filename None means open_clip's names
    (open_clip_model.safetensors, else open_clip_pytorch_model.bin). model_cfg: open_clip's
    architecture; None (OpenAI's tags) infers it from the weights, as clip.load does.
    """

    model: str
    tag: str
    url: str | None = None
    sha256: str | None = None
    hf_hub: str | None = None
    filename: str | None = None
    quick_gelu: bool = False
    preprocess: Mapping[str, Any] = field(default_factory=dict)
    model_cfg: Mapping[str, Any] | None = None

    @property
    def name(self) -> str:
        """The name available_models() lists."""
        if self.tag == "openai":
            return next((k for k, v in OPENAI.items() if v == self.model), f"{self.model}/openai")
        return f"{self.model}/{self.tag}"

    def config(self) -> CLIPConfig | None:
        """The architecture and preprocessing; None when it is to be inferred from the weights."""
        if self.model_cfg is None:
            return None
        return config_from_open_clip(self.model_cfg, self.preprocess, quick_gelu=self.quick_gelu)


@lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    return json.loads(resources.files("clip_jax").joinpath("assets/pretrained.json").read_text())


def architectures() -> Mapping[str, Mapping[str, Any]]:
    """open_clip's model configs (its model_configs/*.json) for the architectures the registry names."""
    return _data()["models"]


@lru_cache(maxsize=1)
def _table() -> dict[tuple[str, str], Pretrained]:
    data = _data()
    models = data["models"]
    table = {}
    for e in data["pretrained"]:
        e = dict(e)
        preprocess = {k: e.pop(k) for k in PREPROCESS_KEYS if k in e}
        openai = e["tag"] == "openai"
        table[(e["model"], e["tag"])] = Pretrained(
            **e, preprocess=preprocess, model_cfg=None if openai else models[e["model"]]
        )
    return table


def registry() -> dict[tuple[str, str], Pretrained]:
    """(architecture, tag) -> Pretrained. A mutable copy is not made: treat it as read-only."""
    return _table()


def available_models() -> list[str]:
    """OpenAI's nine names first (as clip.available_models()), then open_clip's tags as "arch/tag"."""
    tags = [p.name for p in registry().values() if p.tag != "openai"]
    return list(OPENAI) + tags


def list_pretrained(as_str: bool = False) -> list[tuple[str, str]] | list[str]:
    """Every (architecture, tag) pair `load` downloads, in open_clip.list_pretrained()'s form and order:
    the registry's pairs, then open_clip's "-quickgelu" names for the QuickGELU tags. as_str: "arch:tag".

        list_pretrained()[:2] -> [("RN50", "openai"), ("RN50", "yfcc15m")]
        load(("ViT-B-32", "laion2b_s34b_b79k")), load("ViT-B-32:laion2b_s34b_b79k")   what each pair loads
    """
    table = registry()
    pairs = list(table) + [(f"{model}-quickgelu", tag) for (model, tag), e in table.items() if e.quick_gelu]
    return [f"{model}:{tag}" for model, tag in pairs] if as_str else pairs


def _clean_tag(tag: str) -> str:
    return tag.lower().replace("-", "_")  # open_clip's _clean_tag


def _arch(model: str) -> str:
    """OpenAI-style spellings of an architecture -> open_clip's: "ViT-B/32" -> "ViT-B-32"."""
    canon = canonical_name(model)
    if canon in OPENAI:
        return OPENAI[canon]
    return model.replace("/", "-")


def resolve(name: str | tuple[str, str]) -> Pretrained | None:
    """The registry entry for a name or an (architecture, tag) pair; None if it names none."""
    table = registry()
    if isinstance(name, tuple):
        if len(name) != 2:
            raise InputError(f"expected (architecture, tag), got {name!r}")
        model, tag = name
    else:
        if canonical_name(name) in OPENAI:
            return table[(OPENAI[canonical_name(name)], "openai")]
        sep = max(name.rfind("/"), name.rfind(":"))
        if sep <= 0:
            return None
        model, tag = name[:sep], name[sep + 1 :]
    model, tag = _arch(model), _clean_tag(tag)
    quick_gelu_alias = model.endswith("-quickgelu")
    if quick_gelu_alias:
        model = model[: -len("-quickgelu")]
    entry = table.get((model, tag))
    if entry is None or (quick_gelu_alias and not entry.quick_gelu):
        return None  # open_clip's "-quickgelu" architectures have only the QuickGELU tags
    return entry


def suggest(name: Any) -> str:
    """A hint for an unknown name: the closest listed names."""
    close = difflib.get_close_matches(str(name), available_models(), n=3, cutoff=0.6)
    return f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""


def with_url(entry: Pretrained, url: str, sha256: str | None) -> Pretrained:
    """A copy of `entry` downloading from another URL (a mirror) with the given digest."""
    return dataclasses.replace(entry, url=url, sha256=sha256, hf_hub=None)

