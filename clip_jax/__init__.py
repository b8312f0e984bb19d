"""clip_jax: CLIP-family models (OpenAI's CLIP, open_clip's variants, SigLIP and SigLIP 2) in JAX/Flax NNX.

    model, preprocess = clip_jax.load("ViT-B-32.safetensors")
    logits_per_image, logits_per_text = clip_jax.clip_logits(model, images, clip_jax.tokenize(texts))
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

# Each public name is imported from its module on first use (PEP 562), so `import clip_jax` (and with it
# `clip-jax --help`, whose module lives in this package) doesn't wait ~1.5 s for jax and flax.
_EXPORTS = {
    "checkpoint": ["convert"],
    "checkpoint.export": ["export"],
    "compilation": ["enable_compilation_cache", "warmup"],
    "config": ["CLIPConfig", "TextConfig", "VisionConfig", "config_from_open_clip", "config_from_state_dict"],
    "hub": ["available_models", "get_tokenizer", "load", "load_params"],
    "image": ["ImageError", "image_transform", "load_images"],
    "model": ["CLIP", "build", "clip_logits", "flat_params", "functional", "image_states", "l2_normalize",
              "text_states"],
    "parallel": ["ShardedCLIP", "make_mesh", "pmap_logits"],
    "pos_embed": ["resize_pos_embed"],
    "pretrained": ["list_pretrained"],
    "siglip": ["Siglip", "SiglipTextModel", "SiglipVisionModel"],
    "siglip_config": ["SiglipConfig", "SiglipTextConfig", "SiglipVisionConfig"],
    "states": ["TowerStates"],
    "tokenizer": ["tokenize", "trim_tokens"],
    "towers": ["MissingTowerError", "TextTower", "VisionTower"],
    "zeroshot": ["IMAGENET_TEMPLATES", "zeroshot_classifier"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
# Modules that moved into the applications' subpackages: `clip_jax.eval` still answers, with a warning.
_MOVED = {"embed": "jobs.embed", "eval": "jobs.eval", "search": "jobs.search", "sources": "data.sources",
          "demo": "cli.demo"}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    elif name in _MOVED:
        warnings.warn(f"clip_jax.{name} is now clip_jax.{_MOVED[name]}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(f".{_MOVED[name]}", __name__)  # not cached: each use warns
    else:
        try:  # a submodule not imported yet: `import clip_jax; clip_jax.jobs`
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value  # once: later lookups don't come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and editors see: the names above, eagerly (noqa: __all__ is computed)
    from .checkpoint import convert  # noqa: F401
    from .checkpoint.export import export  # noqa: F401
    from .compilation import enable_compilation_cache, warmup  # noqa: F401
    from .config import CLIPConfig, TextConfig, VisionConfig, config_from_open_clip, config_from_state_dict  # noqa: F401
    from .hub import available_models, get_tokenizer, load, load_params  # noqa: F401
    from .image import ImageError, image_transform, load_images  # noqa: F401
    from .model import (  # noqa: F401
        CLIP,
        build,
        clip_logits,
        flat_params,
        functional,
        image_states,
        l2_normalize,
        text_states,
    )
    from .parallel import ShardedCLIP, make_mesh, pmap_logits  # noqa: F401
    from .pos_embed import resize_pos_embed  # noqa: F401
    from .pretrained import list_pretrained  # noqa: F401
    from .siglip import Siglip, SiglipTextModel, SiglipVisionModel  # noqa: F401
    from .siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig  # noqa: F401
    from .states import TowerStates  # noqa: F401
    from .tokenizer import tokenize, trim_tokens  # noqa: F401
    from .towers import MissingTowerError, TextTower, VisionTower  # noqa: F401
    from .zeroshot import IMAGENET_TEMPLATES, zeroshot_classifier  # noqa: F401
