"""The name registry: what the model declares (role, sharding) for a flat clip_jax param name, for params
dicts and plain pytrees that carry no metadata (a converted file, a state dict, an optax state). A new
variant that adds parameters declares the value that adds them (config_fields.declare(adds_params=...))."""

from __future__ import annotations

from functools import lru_cache

from ..config import CLIPConfig, TextConfig, VisionConfig
from ..config_fields import adds_params
from ..model import abstract_model
from ..roles import Declared, declarations
from ..siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

# A flat params dict has no metadata: its names are looked up in what the model declares, for models of
# every variant (digits, the block indices, stand for any index): a ViT with every option that gives it
# parameters it lacks at the option's default (config_fields.declare's adds_params), and a ResNet with the
# defaults (text_projection without a bias, ...). Tiny widths: only names matter.
_TINY_TEXT = {"context_length": 4, "vocab_size": 8, "width": 8, "heads": 1, "layers": 2}
_EVERY_VARIANT = (
    CLIPConfig(embed_dim=8, text=TextConfig(**_TINY_TEXT, **adds_params(TextConfig)), vision=VisionConfig(
        image_size=16, layers=2, width=8, patch_size=8, heads=1, **adds_params(VisionConfig))),
    CLIPConfig(embed_dim=8, text=TextConfig(**_TINY_TEXT), vision=VisionConfig(
        image_size=32, layers=(1, 2, 1, 1), width=8, patch_size=None, **adds_params(VisionConfig, resnet=True))),
    # SigLIP (its names are its own: visual.attn_pool, text.*, logit_bias)
    SiglipConfig(embed_dim=8, vision=SiglipVisionConfig(image_size=16, patch_size=8, width=8, layers=2, heads=1,
                                                        mlp_width=8),
                 text=SiglipTextConfig(vocab_size=8, context_length=4, width=8, layers=2, heads=1, mlp_width=8)),
)


def _pattern(name: str) -> str:
    return ".".join("#" if part.isdigit() else part for part in name.split("."))


@lru_cache(maxsize=1)
def _declared_patterns() -> dict[str, Declared]:
    table: dict[str, Declared] = {}
    for config in _EVERY_VARIANT:
        for name, info in declarations(abstract_model(config)[1]).items():
            table.setdefault(_pattern(name), info)
    return table


def declared_by_name(name: str) -> Declared:
    """What model.py declares for the param `name` (any clip_jax name, of any config), for flat params
    dicts and plain pytrees that carry no metadata. KeyError for a name no clip_jax model has."""
    try:
        return _declared_patterns()[_pattern(name)]
    except KeyError:
        raise KeyError(f"{name}: not a clip_jax parameter name") from None
