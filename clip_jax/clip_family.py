"""The CLIP family, declared: OpenAI's CLIP and open_clip's variants (clip_jax.families says what a
family declares and how the code around the model finds it).

    from clip_jax.families import family_of
    family = family_of(config)                      # this CLIP_FAMILY for a CLIPConfig
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from .config import CLIPConfig, config_from_open_clip, config_from_state_dict
from .families import Family, Tokenizer, check_shapes, register
from .image import transform_for
from .model import logits
from .tokenizer import tokenize
from .towers import KINDS

__all__ = ["CLIP_FAMILY"]


def _clip_tokenizer(config: CLIPConfig) -> Tokenizer:
    """OpenAI's BPE at the text tower's context length (`clip.tokenize`, open_clip's SimpleTokenizer)."""

    def tok(texts: str | Sequence[str], truncate: bool = False) -> np.ndarray:
        return tokenize(texts, context_length=config.text.context_length, truncate=truncate)

    return tok


def _clip_head(model: nnx.Module) -> dict[str, jax.Array]:
    return {"logit_scale": model.logit_scale.get_raw_value()}  # raw: a ShapeDtypeStruct in a model of shapes


def _block_counts(c: CLIPConfig) -> list[tuple[str, str, int]]:
    """(config field, tensor name prefix of the blocks, how many) for each tower."""
    text = [("text.layers", "transformer.resblocks.", c.text.layers)]
    if c.vision.is_resnet:
        return text + [(f"vision.layers[{i}]", f"visual.layer{i + 1}.", n) for i, n in enumerate(c.vision.layers)]
    return text + [("vision.layers", "visual.transformer.resblocks.", c.vision.layers)]


def _implied_shapes(c: CLIPConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """(tensor, shape, the config fields that set it) for tensors every model of this config holds."""
    t, v, e = c.text, c.vision, c.embed_dim
    out = [
        ("token_embedding.embedding", (t.vocab_size, t.width), "text.vocab_size, text.width"),
        ("positional_embedding", (t.context_length, t.width), "text.context_length, text.width"),
        ("transformer.resblocks.0.mlp.c_fc.kernel", (t.width, t.mlp_width), "text.width, text.mlp_ratio"),
        ("text_projection.kernel" if t.proj_bias else "text_projection", (t.width, e), "text.width, embed_dim"),
    ]
    tokens = v.grid_size**2 + 1  # the class token (ViT) or the mean token (ResNet) first
    if v.is_resnet:
        return out + [
            ("visual.conv1.kernel", (3, 3, 3, v.width // 2), "vision.width"),
            ("visual.attnpool.positional_embedding", (tokens, v.width * 32), "vision.image_size, vision.width"),
            ("visual.attnpool.c_proj.kernel", (v.width * 32, e), "vision.width, embed_dim"),
        ]
    p = v.patch_size
    return out + [
        ("visual.conv1.kernel", (p, p, 3, v.width), "vision.patch_size, vision.width"),
        ("visual.positional_embedding", (tokens, v.width), "vision.image_size, vision.patch_size, vision.width"),
        ("visual.transformer.resblocks.0.mlp.c_fc.kernel", (v.width, v.mlp_width), "vision.width, vision.mlp_ratio"),
        ("visual.proj", (v.width, e), "vision.width, embed_dim"),
    ]


def _check_header(config: CLIPConfig, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """What in `config` contradicts a file holding tensors of `shapes` (from its header alone), or None:
    the number of blocks of each tower and the shapes that fix its widths, sizes and vocabulary."""
    return check_shapes(_block_counts(config), _implied_shapes(config), shapes)


CLIP_FAMILY = register(Family(
    name="clip",
    config_type=CLIPConfig,
    models=KINDS,
    config_from_state_dict=config_from_state_dict,
    config_from_open_clip=config_from_open_clip,
    tokenizer=_clip_tokenizer,
    transform=transform_for,
    head=_clip_head,
    logits=logits,
    check_header=_check_header,
))
