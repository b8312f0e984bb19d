"""SigLIP's and SigLIP 2's configuration: frozen dataclasses, the released shapes, and what a state dict's
shapes say.

A SigLIP is a ViT without class token (a MAP head pools it; no projection) and a bidirectional text
tower pooled at its last position with a biased linear head; logits are exp(t) * cos + b. Widths of the
MLPs are stored as they are (So400m's 4304 is no ratio of its 1152). Each field is declared once
(config_fields.declare) with its rule and its name in transformers' SiglipVisionConfig / SiglipTextConfig.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import MissingTensorError, field_error, parse_config_json, short_repr
from .config_fields import (
    MAX_CONTEXT,
    MAX_IMAGE_SIZE,
    MAX_LAYERS,
    MAX_VOCAB,
    MAX_WIDTH,
    NAME,
    OBJECT,
    RGB,
    WIDTH,
    declare,
    int_in,
    number_in,
    one_of,
)
from .errors import ClipJaxError, InputError, LimitError

__all__ = ["SIGLIP_ACTIVATIONS", "SIGLIP_PRESETS", "SiglipConfig", "SiglipTextConfig", "SiglipVisionConfig",
           "siglip_config_from_open_clip", "siglip_config_from_state_dict"]

# "gelu_tanh": transformers' gelu_pytorch_tanh and big_vision's default; "gelu": exact erf GELU, which
# open_clip's SigLIP 1 text towers use (their text_cfg names no act_kwargs).
SIGLIP_ACTIVATIONS = ("gelu_tanh", "gelu")
# A SigLIP's vocabulary and its settings, as Hugging Face repositories ship them (each optional).
VOCABULARY_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
PATH = (lambda v: v is None or (type(v) is str and 0 < len(v) <= 4096)), "a path or null"
HF_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
                  "gelu": "gelu"}


def _validate(config: Any, prefix: str) -> None:
    """Every field of a SigLIP config passes its declared rule (the same check for every source)."""
    for f in dataclasses.fields(config):
        rule = f.metadata.get("rule")
        value = getattr(config, f.name)
        if rule is not None and not isinstance(value, (SiglipVisionConfig, SiglipTextConfig)):
            check, expected = rule
            if not check(value):
                raise field_error(f"{prefix}{f.name}", expected, value)


def _check_heads(tower: str, width: int, heads: int) -> None:
    if width % heads:
        raise InputError(f"config field '{tower}.heads': {tower} width {width} is not divisible by {heads} heads")


@dataclass(frozen=True)
class SiglipVisionConfig:
    """The image tower: patches (a biased conv) + learned positions, pre-LN blocks, LayerNorm, MAP head."""

    image_size: int = declare(224, int_in(1, MAX_IMAGE_SIZE), hf="image_size")
    patch_size: int = declare(16, int_in(1, MAX_IMAGE_SIZE), hf="patch_size")
    width: int = declare(768, WIDTH, hf="hidden_size")
    layers: int = declare(12, int_in(1, MAX_LAYERS), hf="num_hidden_layers")
    heads: int = declare(12, int_in(1, MAX_WIDTH), hf="num_attention_heads")
    mlp_width: int = declare(3072, int_in(1, MAX_WIDTH * 64), hf="intermediate_size")
    activation: str = declare("gelu_tanh", one_of(*SIGLIP_ACTIVATIONS), hf="hidden_act", coded=("hf",))

    def __post_init__(self):
        _validate(self, "vision.")
        _check_heads("vision", self.width, self.heads)
        if self.patch_size > self.image_size:
            raise InputError(f"config field 'vision.patch_size': {self.patch_size} is larger than the image "
                             f"({self.image_size})")

    is_resnet = False  # what the image-tower calls shared with CLIP ask

    @property
    def grid_size(self) -> int:
        """Patches per side; a remainder of the image is dropped, as the reference's VALID convolution."""
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class SiglipTextConfig:
    """The text tower: bidirectional pre-LN blocks, a final LayerNorm, the last position pooled, a linear
    head with bias. The properties below are the CLIP text tower's options as SigLIP fixes them."""

    vocab_size: int = declare(32000, int_in(1, MAX_VOCAB), hf="vocab_size")
    context_length: int = declare(64, int_in(1, MAX_CONTEXT), hf="max_position_embeddings")
    width: int = declare(768, WIDTH, hf="hidden_size")
    layers: int = declare(12, int_in(1, MAX_LAYERS), hf="num_hidden_layers")
    heads: int = declare(12, int_in(1, MAX_WIDTH), hf="num_attention_heads")
    mlp_width: int = declare(3072, int_in(1, MAX_WIDTH * 64), hf="intermediate_size")
    activation: str = declare("gelu_tanh", one_of(*SIGLIP_ACTIVATIONS), hf="hidden_act", coded=("hf",))

    def __post_init__(self):
        _validate(self, "text.")
        _check_heads("text", self.width, self.heads)

    # What the shared text tower (text.TextTowerMixin) reads: SigLIP's text tower attends to its
    # padding (no mask, as big_vision and open_clip), so every position counts and none may be trimmed.
    ls_init_value = None
    no_causal_mask = True
    causal = False
    pool_type = "last"
    trimmable = False
    proj_bias = True
    eos_id = 1


@dataclass(frozen=True)
class SiglipConfig:
    """A SigLIP / SigLIP 2 (fixed resolution). image features are the MAP head's output (vision.width),
    text features text_projection's (embed_dim), so the two must agree."""

    embed_dim: int = declare(768, WIDTH, hf="projection_size")
    vision: SiglipVisionConfig = declare(rule=OBJECT, default_factory=SiglipVisionConfig)
    text: SiglipTextConfig = declare(rule=OBJECT, default_factory=SiglipTextConfig)
    layer_norm_eps: float = declare(1e-6, number_in(1e-12, 0.1), hf="layer_norm_eps")
    # Preprocessing that belongs to the weights: a square resize ("squash", no crop), bicubic, to [-1, 1].
    image_mean: tuple[float, float, float] = declare((0.5, 0.5, 0.5), RGB, hf="image_mean")
    image_std: tuple[float, float, float] = declare((0.5, 0.5, 0.5), RGB, hf="image_std")
    resize_mode: str = declare("squash", NAME)
    interpolation: str = declare("bicubic", NAME, hf="resample", coded=("hf",))
    fill_color: int = declare(0, int_in(0, 255))
    # Whose image processor the weights were released with (image.PROCESSORS): transformers' (its
    # torchvision backend, what AutoImageProcessor gives in transformers 5; "transformers_pil" its PIL
    # one) for Hugging Face and big_vision checkpoints, open_clip's transform for open_clip/timm ones.
    image_processor: str = declare("transformers", one_of("transformers", "transformers_pil", "open_clip"))
    # Where the vocabulary is (it comes with the checkpoint, not in its weights): a checkpoint folder or a
    # spiece.model / tokenizer.json; a relative path is relative to the converted file naming it. style:
    # whose settings tokenize with it, transformers' processor's ("hf") or open_clip's ("open_clip").
    tokenizer: str | None = declare(None, PATH)
    tokenizer_style: str = declare("hf", one_of("hf", "open_clip"))

    def __post_init__(self):
        for name, cls in (("vision", SiglipVisionConfig), ("text", SiglipTextConfig)):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, cls(**_known(value, cls, f"{name}.")))
            elif not isinstance(value, cls):
                raise InputError(f"config field {name!r}: expected a {cls.__name__}, got {type(value).__name__}")
        for name in ("image_mean", "image_std"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        _validate(self, "")
        for name in ("image_mean", "image_std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.embed_dim != self.vision.width:
            raise InputError(f"config field 'embed_dim': {self.embed_dim} must equal vision.width "
                             f"({self.vision.width}): SigLIP's image features are the MAP head's output, unprojected")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SiglipConfig:
        """The inverse of to_dict, every field checked: InputError / LimitError (ValueErrors) naming it."""
        if not isinstance(d, Mapping):
            raise InputError(f"a SigLIP config must be an object of fields, got {type(d).__name__}")
        return cls(**_known(d, cls, ""))

    @classmethod
    def from_json(cls, s: str | bytes) -> SiglipConfig:
        return cls.from_dict(parse_config_json(s))

    @classmethod
    def from_name(cls, name: str) -> SiglipConfig:
        """A released shape by big_vision's / open_clip's name: "B/16", "So400m/14-384", "ViT-SO400M-14-SigLIP-384",
        "siglip2-base-patch16-256" (the vocabulary: SigLIP 2's Gemma 256k, or siglip 1's 32k)."""
        return siglip_preset(name)


def _known(d: Mapping[str, Any], cls: type, prefix: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [f"{prefix}{k!s:.60}" for k in d if k not in names]
    if unknown:
        raise InputError(f"unknown config fields: {unknown[:5]}")
    return dict(d)


# --- the released shapes ---------------------------------------------------------------------------
#
# big_vision's ViT variants (vit.py decode_variant) and the text towers SigLIP pairs them with.
# (width, layers, heads, mlp_width) for the image tower; the text tower of the same name but g-opt's,
# which is So400m's (projected to 1536).
TOWERS = {
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "So400m": (1152, 27, 16, 4304),
    "g-opt": (1536, 40, 16, 6144),
}
_TEXT_OF = {"B": "B", "L": "L", "So400m": "So400m", "g-opt": "So400m"}
# SigLIP So400m/14 at 224 px was trained with 16 tokens (google/siglip-so400m-patch14-224); the rest 64.
_CONTEXT = {("So400m", 14, 224, "siglip"): 16}
VOCAB = {"siglip": 32000, "i18n": 250000, "siglip2": 256000}
_OPEN_CLIP_TOWER = {"B": "B", "L": "L", "SO400M": "So400m", "GOPT": "g-opt", "gopt": "g-opt", "so400m": "So400m",
                    "base": "B", "large": "L", "giant-opt": "g-opt"}


def siglip_preset(name: str) -> SiglipConfig:
    """A released SigLIP's config from its name (see SiglipConfig.from_name)."""
    tower, patch, size, vocab = _parse_name(name)
    width, layers, heads, mlp = TOWERS[tower]
    t_width, t_layers, t_heads, t_mlp = TOWERS[_TEXT_OF[tower]]
    return SiglipConfig(
        embed_dim=width,
        vision=SiglipVisionConfig(image_size=size, patch_size=patch, width=width, layers=layers, heads=heads,
                                  mlp_width=mlp),
        text=SiglipTextConfig(vocab_size=VOCAB[vocab], width=t_width, layers=t_layers, heads=t_heads, mlp_width=t_mlp,
                              context_length=_CONTEXT.get((tower, patch, size, vocab), 64)),
    )


_NAME_PATTERNS = (
    # big_vision: "So400m/14", "B/16-256", "g-opt/16-384"; an optional vocabulary tag "siglip2" / "i18n"
    re.compile(r"(?P<tower>B|L|So400m|g-opt)/(?P<patch>\d+)(?:-(?P<size>\d+))?(?:[-_ ](?P<vocab>siglip2|i18n))?"),
    # open_clip: "ViT-SO400M-14-SigLIP-384", "ViT-B-16-SigLIP2-256", "ViT-B-16-SigLIP-i18n-256"
    re.compile(r"ViT-(?P<tower>B|L|SO400M|gopt)-(?P<patch>\d+)-SigLIP(?P<two>2)?(?:-(?P<vocab>i18n))?"
               r"(?:-(?P<size>\d+))?"),
    # transformers: "google/siglip-so400m-patch14-384", "siglip2-base-patch16-256", "siglip-base-patch16-256-i18n"
    re.compile(r"(?:google/)?siglip(?P<two>2)?-(?P<tower>base|large|so400m|giant-opt)-patch(?P<patch>\d+)"
               r"(?:-(?P<size>\d+))?(?:-(?P<vocab>i18n|multilingual))?"),
)


def _parse_name(name: str) -> tuple[str, int, int, str]:
    """-> (big_vision tower name, patch, image size, vocabulary key)."""
    for pattern in _NAME_PATTERNS:
        m = pattern.fullmatch(name.removeprefix("hf-hub:").removeprefix("timm/"))
        if m:
            g = m.groupdict()
            tower = _OPEN_CLIP_TOWER.get(g["tower"], g["tower"])
            vocab = "siglip2" if g.get("two") or g.get("vocab") == "siglip2" else (
                "i18n" if g.get("vocab") in ("i18n", "multilingual") else "siglip")
            return tower, int(g["patch"]), int(g["size"] or 224), vocab
    raise InputError(f"unknown SigLIP name {name!r}: expected big_vision's (So400m/14-384), open_clip's "
                     f"(ViT-SO400M-14-SigLIP-384) or transformers' (google/siglip-so400m-patch14-384)")


SIGLIP_PRESETS = ("B/16", "B/16-256", "B/16-384", "B/16-512", "B/32-256", "L/16-256", "L/16-384", "So400m/14",
                  "So400m/14-384", "So400m/16-256", "So400m/16-384", "So400m/16-512", "g-opt/16-256", "g-opt/16-384")


# --- what the weights say --------------------------------------------------------------------------


def _heads(width: int) -> int:
    """SigLIP's heads are not in its weights: the released towers' (B 12, L / So400m / g-opt 16), else
    heads of width 64 (big_vision's default for other widths)."""
    for w, _, heads, _ in TOWERS.values():
        if w == width:
            return heads
    return max(1, width // 64)


def siglip_config_from_state_dict(state_dict: Mapping[str, Any], heads: tuple[int, int] | None = None,
                                  **fields: Any) -> SiglipConfig:
    """A SigLIP's config from its clip_jax-named tensors' shapes (siglip_spec's names: visual.conv1.weight,
    text.token_embedding.weight, ...). Heads can't be seen in weights: `heads` = (vision, text), else the
    released towers' for their widths. `fields`: anything else the source states (activations, eps,
    image_size when it isn't grid * patch). MissingTensorError names a tensor the shapes are read from."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise MissingTensorError(f"cannot infer a SigLIP architecture: the checkpoint has no {key!r}")
        return tuple(state_dict[key].shape)

    def count(prefix: str) -> int:
        return len({int(m[1]) for k in state_dict if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})

    try:
        width, _, patch, _ = shape("visual.conv1.weight")
        grid = round(shape("visual.positional_embedding")[0] ** 0.5)
        vocab, t_width = shape("text.token_embedding.weight")
        embed_dim = shape("text.text_projection.weight")[0]
        v_heads, t_heads = heads or (_heads(width), _heads(t_width))
        vision = dict(image_size=grid * patch, patch_size=patch, width=width, heads=v_heads,
                      layers=count("visual.transformer.resblocks."),
                      mlp_width=shape("visual.transformer.resblocks.0.mlp.c_fc.weight")[0])
        text = dict(vocab_size=vocab, context_length=shape("text.positional_embedding")[0], width=t_width,
                    layers=count("text.transformer.resblocks."), heads=t_heads,
                    mlp_width=shape("text.transformer.resblocks.0.mlp.c_fc.weight")[0])
        vision.update(fields.pop("vision", {}))
        text.update(fields.pop("text", {}))
        return SiglipConfig(embed_dim=embed_dim, vision=SiglipVisionConfig(**vision), text=SiglipTextConfig(**text),
                            **fields)
    except (MissingTensorError, LimitError):
        raise
    except ClipJaxError as e:
        raise type(e)(f"the SigLIP architecture inferred from the weights' shapes: {e}") from None
    except (ValueError, TypeError, IndexError) as e:  # shapes of the wrong rank
        raise InputError(f"cannot infer a SigLIP architecture from the weights' shapes: {type(e).__name__}: "
                         f"{str(e)[:200]}") from None


# --- open_clip's model config ----------------------------------------------------------------------
#
# open_clip builds SigLIP's image tower with timm (`vision_cfg.timm_model_name`: the name is the shape, and
# timm's own activation for it) and its text tower with its own TextTransformer.


def _refuse(field: str, value: Any, why: str = "") -> None:
    raise InputError(f"not supported: {field}={short_repr(value)}" + (f" ({why})" if why else ""))


# timm's MAP-pooled SigLIP ViTs (timm/models/vision_transformer.py): name -> (big_vision tower, patch,
# default image size, activation). timm gives some of them tanh GELU (`act_layer='gelu_tanh'`), the
# others nn.GELU (exact): each as timm builds it.
TIMM_MODELS = {
    "vit_base_patch32_siglip_256": ("B", 32, 256, "gelu_tanh"),
    **{f"vit_base_patch16_siglip_{n}": ("B", 16, n, "gelu") for n in (224, 256, 384, 512)},
    **{f"vit_large_patch16_siglip_{n}": ("L", 16, n, "gelu") for n in (256, 384)},
    "vit_large_patch16_siglip_512": ("L", 16, 512, "gelu_tanh"),
    **{f"vit_so400m_patch14_siglip_{n}": ("So400m", 14, n, "gelu") for n in (224, 378, 384)},
    **{f"vit_so400m_patch16_siglip_{n}": ("So400m", 16, n, "gelu_tanh") for n in (256, 384, 512)},
    **{f"vit_giantopt_patch16_siglip_{n}": ("g-opt", 16, n, "gelu_tanh") for n in (256, 384)},
}
TIMM_EPS = 1e-6  # timm's ViT LayerNorm
# open_clip's tokenizer for each SigLIP vocabulary (hf_tokenizer_name), by size
TOKENIZERS = {32000: "timm/ViT-B-16-SigLIP", 250000: "timm/ViT-B-16-SigLIP-i18n-256", 256000: "timm/ViT-B-16-SigLIP2"}
# what open_clip's text tower must be for a SigLIP: text_cfg key -> (value, its default when absent)
_TEXT_FIXED = {"no_causal_mask": (True, False), "proj_bias": (True, False), "pool_type": ("last", "argmax")}


def _object(cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = cfg.get(key)
    if not isinstance(value, Mapping):
        raise InputError(f"config field '{key}': expected an object, got {type(value).__name__}")
    return value


def _stand_ins(shapes: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Arrays of the given shapes that take no memory (what siglip_config_from_state_dict reads)."""
    return {k: np.broadcast_to(np.zeros((), np.uint8), tuple(getattr(v, "shape", v))) for k, v in shapes.items()}


def _vision(vision_cfg: Mapping[str, Any], shapes: Mapping[str, Any] | None) -> SiglipVisionConfig:
    """The timm trunk: its shapes from its name, or from the weights for a name clip_jax doesn't know."""
    for key, want in (("timm_pool", "map"), ("timm_proj", "none")):
        if vision_cfg.get(key, want) not in (want, None, ""):
            _refuse(f"vision_cfg.{key}", vision_cfg[key], f"open_clip's SigLIPs use {want!r}")
    name = vision_cfg.get("timm_model_name")
    size = vision_cfg.get("image_size")
    if name in TIMM_MODELS:
        tower, patch, default_size, act = TIMM_MODELS[name]
        width, layers, heads, mlp = TOWERS[tower]
        size = default_size if size is None else size
        if type(size) is not int:  # open_clip also takes (h, w); SigLIP's images are square
            raise field_error("vision_cfg.image_size", "an int", size)
        return SiglipVisionConfig(image_size=size, patch_size=patch, width=width, layers=layers, heads=heads,
                                  mlp_width=mlp, activation=act)
    if shapes is None:
        _refuse("vision_cfg.timm_model_name", name, f"clip_jax knows {', '.join(TIMM_MODELS)}; for another, "
                "the weights' shapes are needed")
    vision = siglip_config_from_state_dict(_stand_ins(shapes)).vision
    return vision if size is None else dataclasses.replace(vision, image_size=size)


def _text(text_cfg: Mapping[str, Any]) -> tuple[SiglipTextConfig, float]:
    """open_clip's text tower -> (SiglipTextConfig, its LayerNorm eps); what SigLIP can't be is refused."""
    if text_cfg.get("proj_type", "linear") != "linear":  # ViT-SO400M-16-SigLIP-i18n-256: the pooled token itself
        _refuse("text_cfg.proj_type", text_cfg["proj_type"], "a SigLIP text tower ends in a Linear with bias")
    for key, (want, default) in _TEXT_FIXED.items():
        if text_cfg.get(key, default) != want:
            _refuse(f"text_cfg.{key}", text_cfg.get(key, default), f"a SigLIP text tower has {want!r}")
    act = text_cfg.get("act_kwargs") or {}
    if not isinstance(act, Mapping) or set(act) - {"approximate"} or act.get("approximate", "none") not in (
            "tanh", "none"):
        _refuse("text_cfg.act_kwargs", act, "clip_jax builds GELU, exact or approximate='tanh'")
    norm = text_cfg.get("norm_kwargs") or {}
    if not isinstance(norm, Mapping) or set(norm) - {"eps"}:
        _refuse("text_cfg.norm_kwargs", norm, "clip_jax reads its eps alone")
    fields = {k: text_cfg[k] for k in ("context_length", "vocab_size", "width", "heads", "layers") if k in text_cfg}
    width = fields.get("width", 512)  # open_clip's CLIPTextCfg defaults
    ratio = text_cfg.get("mlp_ratio", 4.0)
    if type(ratio) not in (int, float) or not 0 < ratio <= 64:
        raise field_error("text_cfg.mlp_ratio", "a number in (0, 64]", ratio)
    text = SiglipTextConfig(**{"context_length": 77, "vocab_size": 49408, "heads": 8, "layers": 12, **fields},
                            mlp_width=int(width * ratio),  # open_clip's rounding
                            activation="gelu_tanh" if act.get("approximate") == "tanh" else "gelu")
    return text, norm.get("eps", 1e-5)  # nn.LayerNorm's default


def siglip_config_from_open_clip(model_cfg: Mapping[str, Any], shapes: Mapping[str, Any] | None = None,
                                 preprocess: Mapping[str, Any] | None = None) -> SiglipConfig:
    """open_clip's model config of a SigLIP (open_clip_config.json's model_cfg) -> SiglipConfig.
    shapes: our names -> shapes (or arrays), for a timm trunk clip_jax doesn't know by name; preprocess:
    open_clip's preprocess_cfg (mean, std, interpolation, resize_mode). Refusals name the field."""
    try:
        if not isinstance(model_cfg, Mapping):
            raise InputError(f"an open_clip model config must be an object, got {type(model_cfg).__name__}")
        vision = _vision(_object(model_cfg, "vision_cfg"), shapes)
        text, eps = _text(_object(model_cfg, "text_cfg"))
        if eps != TIMM_EPS:
            _refuse("text_cfg.norm_kwargs.eps", eps, f"timm's trunk has {TIMM_EPS}: clip_jax has one eps")
        pp = preprocess or {}
        if not isinstance(pp, Mapping):
            raise InputError(f"preprocess_cfg: expected an object, got {type(pp).__name__}")
        names = {"mean": "image_mean", "std": "image_std", "interpolation": "interpolation",
                 "resize_mode": "resize_mode"}
        extra = {ours: pp[theirs] for theirs, ours in names.items() if pp.get(theirs) is not None}
        return SiglipConfig(embed_dim=model_cfg.get("embed_dim", vision.width), vision=vision, text=text,
                            layer_norm_eps=eps, image_processor="open_clip", tokenizer_style="open_clip", **extra)
    except ClipJaxError as e:
        raise type(e)(f"open_clip config: {e}") from None


def timm_activation(vision: SiglipVisionConfig) -> str:
    """The GELU timm builds an image tower of these shapes with (TIMM_MODELS: its trunk of this tower,
    patch and size, else of this tower and patch); exact GELU, timm's ViT default, for another."""
    tower = next((name for name, (w, n, h, m) in TOWERS.items()
                  if (w, n, h, m) == (vision.width, vision.layers, vision.heads, vision.mlp_width)), None)
    fits = [(size == vision.image_size, act) for t, patch, size, act in TIMM_MODELS.values()
            if (t, patch) == (tower, vision.patch_size)]
    return max(fits)[1] if fits else "gelu"


def is_open_clip_siglip_config(model_cfg: Any) -> bool:
    """Whether an open_clip model config is a SigLIP's (a timm SigLIP image tower)."""
    v = model_cfg.get("vision_cfg") if isinstance(model_cfg, Mapping) else None
    name = v.get("timm_model_name") if isinstance(v, Mapping) else None
    return isinstance(name, str) and "_siglip" in name


def siglip_open_clip_architecture(name: str) -> SiglipConfig | None:
    """An open_clip SigLIP architecture name ("ViT-B-16-SigLIP", "ViT-SO400M-14-SigLIP2-378") -> its
    config as open_clip builds it (timm's exact-GELU image tower, the text tower's GELU as the config
    says: tanh for SigLIP 2; open_clip's preprocessing and tokenizer settings); None for another name."""
    if not _NAME_PATTERNS[1].fullmatch(name):
        return None
    preset = siglip_preset(name)
    two = "SigLIP2" in name
    return dataclasses.replace(
        preset, vision=dataclasses.replace(preset.vision, activation=timm_activation(preset.vision)),
        text=dataclasses.replace(preset.text, activation="gelu_tanh" if two else "gelu"),
        image_processor="open_clip", tokenizer_style="open_clip")
