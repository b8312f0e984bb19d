"""Model configuration: frozen dataclasses, OpenAI presets, and inference from a state dict.

A config holds every hyperparameter that changes the numbers a model computes, so a converted file
(params + config JSON) rebuilds the model alone. Runtime choices (compute dtype, attention kernel) are
arguments of the model, not of the config.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class VisionConfig:
    """The image tower. `layers` an int: a ViT; a 4-tuple of block counts: OpenAI's ModifiedResNet."""

    image_size: int = 224
    layers: int | tuple[int, int, int, int] = 12
    width: int = 768
    patch_size: int | None = 32  # None for ModifiedResNet
    heads: int | None = None  # derived as OpenAI's build_model does when None
    mlp_ratio: float = 4.0

    def __post_init__(self):
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.heads is None:
            # OpenAI: ViT heads = width // 64; ResNet attention pool heads = width * 32 // 64.
            object.__setattr__(self, "heads", self.width * 32 // 64 if self.is_resnet else self.width // 64)
        if self.is_resnet:
            if len(self.layers) != 4:
                raise ValueError(f"ModifiedResNet needs 4 stage depths, got layers={self.layers}")
            if self.image_size % 32:
                raise ValueError(f"ModifiedResNet image_size must be a multiple of 32, got {self.image_size}")
        else:
            if not self.patch_size:
                raise ValueError("a ViT needs patch_size")
            if self.image_size % self.patch_size:
                raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"vision width {self.width} is not divisible by heads {self.heads}")

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.layers, tuple)

    @property
    def grid_size(self) -> int:
        """Tokens per side: patches for a ViT, the final feature map for a ResNet."""
        return self.image_size // (32 if self.is_resnet else self.patch_size)

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)


@dataclass(frozen=True)
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} is not divisible by heads {self.heads}")

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    # OpenAI trained with QuickGELU, x * sigmoid(1.702 x); open_clip's non-"quickgelu" models use exact erf GELU.
    activation: str = "quick_gelu"
    # PyTorch's LayerNorm eps (Flax defaults to 1e-6).
    layer_norm_eps: float = 1e-5
    # Preprocessing that belongs to the weights (open_clip tags differ from OpenAI's).
    image_mean: tuple[float, float, float] = OPENAI_MEAN
    image_std: tuple[float, float, float] = OPENAI_STD
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        for name in ("image_mean", "image_std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    # --- presets and serialization ---

    @classmethod
    def from_name(cls, name: str) -> CLIPConfig:
        """One of OpenAI's nine models, e.g. "ViT-B/32" (or "ViT-B-32", "ViT-L-14-336px")."""
        key = canonical_name(name)
        if key not in PRESETS:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(PRESETS)}")
        return PRESETS[key]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CLIPConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        d["vision"] = VisionConfig(**d.get("vision", {}))
        d["text"] = TextConfig(**d.get("text", {}))
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> CLIPConfig:
        return cls.from_dict(json.loads(s))


def _openai(embed_dim, image_size, layers, width, patch_size, text_width) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed_dim,
        vision=VisionConfig(image_size=image_size, layers=layers, width=width, patch_size=patch_size),
        text=TextConfig(width=text_width, heads=text_width // 64, layers=12),
    )


# The nine OpenAI models, as OpenAI's build_model infers them from the released weights.
PRESETS: dict[str, CLIPConfig] = {
    "RN50": _openai(1024, 224, (3, 4, 6, 3), 64, None, 512),
    "RN101": _openai(512, 224, (3, 4, 23, 3), 64, None, 512),
    "RN50x4": _openai(640, 288, (4, 6, 10, 6), 80, None, 640),
    "RN50x16": _openai(768, 384, (6, 8, 18, 8), 96, None, 768),
    "RN50x64": _openai(1024, 448, (3, 15, 36, 10), 128, None, 1024),
    "ViT-B/32": _openai(512, 224, 12, 768, 32, 512),
    "ViT-B/16": _openai(512, 224, 12, 768, 16, 512),
    "ViT-L/14": _openai(768, 224, 24, 1024, 14, 768),
    "ViT-L/14@336px": _openai(768, 336, 24, 1024, 14, 768),
}


def canonical_name(name: str) -> str:
    """Accept OpenAI's names and the file-style spellings: "ViT-B-32" -> "ViT-B/32",
    "ViT-L-14-336px" -> "ViT-L/14@336px"."""
    if name in PRESETS:
        return name
    m = re.fullmatch(r"ViT-([BL])[-/](\d+)(?:[-@](\d+)px)?", name)
    if m:
        tower, patch, px = m.groups()
        return f"ViT-{tower}/{patch}" + (f"@{px}px" if px else "")
    return name


def config_from_state_dict(state_dict: Mapping[str, Any], activation: str = "quick_gelu") -> CLIPConfig:
    """Infer the architecture from OpenAI-named tensors, exactly as OpenAI's `build_model` does.

    Only shapes are read. The activation can't be seen in the weights: OpenAI's models use QuickGELU.
    """

    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise KeyError(f"cannot infer the architecture: the checkpoint has no {key!r}")
        return tuple(state_dict[key].shape)

    def count(prefix: str, pos: int) -> int:
        return len({k.split(".")[pos] for k in state_dict if k.startswith(prefix)})

    if "visual.proj" in state_dict:
        width, _, patch_size, _ = shape("visual.conv1.weight")
        layers = len([k for k in state_dict if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        grid = round((shape("visual.positional_embedding")[0] - 1) ** 0.5)
        mlp = shape("visual.transformer.resblocks.0.mlp.c_fc.weight")[0]
        vision = VisionConfig(
            image_size=patch_size * grid, layers=layers, width=width, patch_size=patch_size, mlp_ratio=mlp / width
        )
    else:
        layers = tuple(count(f"visual.layer{b}", 2) for b in (1, 2, 3, 4))
        width = shape("visual.layer1.0.conv1.weight")[0]
        n_pos = shape("visual.attnpool.positional_embedding")[0]
        grid = round((n_pos - 1) ** 0.5)
        if grid**2 + 1 != n_pos:
            raise ValueError(f"visual.attnpool.positional_embedding has {n_pos} rows, not a square grid + 1")
        vision = VisionConfig(image_size=grid * 32, layers=layers, width=width, patch_size=None)

    text_width = shape("ln_final.weight")[0]
    text = TextConfig(
        context_length=shape("positional_embedding")[0],
        vocab_size=shape("token_embedding.weight")[0],
        width=text_width,
        heads=text_width // 64,
        layers=count("transformer.resblocks", 2),
        mlp_ratio=shape("transformer.resblocks.0.mlp.c_fc.weight")[0] / text_width,
    )
    return CLIPConfig(embed_dim=shape("text_projection")[1], vision=vision, text=text, activation=activation)
