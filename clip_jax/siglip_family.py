"""The SigLIP family, declared: SigLIP and SigLIP 2 (fixed resolution), sigmoid-trained, scored as
exp(t) * cos + b (clip_jax.families says what a family declares and how the code around the model finds
it).

    from clip_jax.families import family_of
    family = family_of(config)                      # this SIGLIP_FAMILY for a SiglipConfig
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
from flax import nnx

from .errors import InputError
from .families import Family, Tokenizer, check_shapes, register
from .image import transform_for
from .siglip import KINDS, sigmoid_logits
from .siglip_config import SiglipConfig, siglip_config_from_open_clip, siglip_config_from_state_dict
from .siglip_tokenizer import tokenizer_from_path

__all__ = ["SIGLIP_FAMILY"]


def _siglip_head(model: nnx.Module) -> dict[str, jax.Array]:
    # raw values: jax.ShapeDtypeStructs in a model built from shapes
    return {"logit_scale": model.logit_scale.get_raw_value(), "logit_bias": model.logit_bias.get_raw_value()}


def _implied_shapes(c: SiglipConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """(flat clip_jax name, shape, the config fields that set it) for tensors every SigLIP of `c` holds."""
    v, t = c.vision, c.text
    return [
        ("text.token_embedding.embedding", (t.vocab_size, t.width), "text.vocab_size, text.width"),
        ("text.positional_embedding", (t.context_length, t.width), "text.context_length, text.width"),
        ("text.transformer.resblocks.0.mlp.c_fc.kernel", (t.width, t.mlp_width), "text.width, text.mlp_width"),
        ("text.text_projection.kernel", (t.width, c.embed_dim), "text.width, embed_dim"),
        ("visual.conv1.kernel", (v.patch_size, v.patch_size, 3, v.width), "vision.patch_size, vision.width"),
        ("visual.positional_embedding", (v.grid_size**2, v.width), "vision.image_size, vision.patch_size"),
        ("visual.transformer.resblocks.0.mlp.c_fc.kernel", (v.width, v.mlp_width), "vision.width, vision.mlp_width"),
    ]


def _check_header(config: SiglipConfig, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """What in `config` contradicts a file holding tensors of `shapes`, or None (as CLIP's check)."""
    blocks = [("text.layers", "text.transformer.resblocks.", config.text.layers),
              ("vision.layers", "visual.transformer.resblocks.", config.vision.layers)]
    return check_shapes(blocks, _implied_shapes(config), shapes)


def _config_from_state_dict(state_dict: Mapping, activation: str | None = None) -> SiglipConfig:
    return siglip_config_from_state_dict(state_dict)


def _tokenizer(config: SiglipConfig) -> Tokenizer:
    """The vocabulary the config names (SiglipConfig.tokenizer: a checkpoint folder or a vocabulary
    file), with the settings of its reference (tokenizer_style)."""
    if config.tokenizer is None:
        raise InputError("this SigLIP has no vocabulary: its checkpoint came without one (a big_vision .npz, "
                         "weights alone); pass tokenizer=FILE (a spiece.model or tokenizer.json, or the "
                         "checkpoint's folder) to clip_jax.load, or --tokenizer FILE on the command line")
    return tokenizer_from_path(config.tokenizer, config.text.context_length, config.tokenizer_style)


def _config_from_open_clip(model_cfg: Mapping, preprocess_cfg: Mapping | None = None) -> SiglipConfig:
    return siglip_config_from_open_clip(model_cfg, preprocess=preprocess_cfg)


SIGLIP_FAMILY = register(Family(
    name="siglip",
    config_type=SiglipConfig,
    models=KINDS,
    config_from_state_dict=_config_from_state_dict,
    config_from_open_clip=_config_from_open_clip,
    check_header=_check_header,
    tokenizer=_tokenizer,
    transform=transform_for,
    head=_siglip_head,
    logits=sigmoid_logits,
))
