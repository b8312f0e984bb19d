"""Model configuration: frozen dataclasses, OpenAI presets, and inference from a state dict.

A config holds every hyperparameter that changes the numbers a model computes, so a converted file
(params + config JSON) rebuilds the model alone. Runtime choices (compute dtype, attention kernel) are
arguments of the model, not of the config.

Each field is declared once (config_fields.declare): its default, the rule its values pass, its names in
open_clip's and transformers' configs, and whether it adds parameters of its own. Validation, the open_clip
and transformers readers and writers, and checkpoint/declared's every-variant configs are derived from that.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config_fields import (
    BOOL,
    LAYER_SCALE,
    MAX_CONTEXT,
    MAX_IMAGE_SIZE,
    MAX_LAYERS,
    MAX_VOCAB,
    MAX_WIDTH,
    NAME,
    OBJECT,
    RATIO,
    RGB,
    TOWER_LAYERS,
    WIDTH,
    Rule,
    declare,
    int_in,
    number_in,
    one_of,
    source_default,
    source_keys,
    vit_only_defaults,
)
from .errors import ClipJaxError, InputError, LimitError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
ACTIVATIONS = ("quick_gelu", "gelu")
VISION_POOL_TYPES = ("tok", "avg")  # open_clip's 'none' returns every token, not a CLIP feature
TEXT_POOL_TYPES = ("argmax", "last", "first", "eos")  # open_clip's 'none' likewise


class MissingTensorError(ClipJaxError, ValueError):
    """A state dict lacks a tensor the architecture is read from: not a CLIP checkpoint."""


@dataclass(frozen=True)
class VisionConfig:
    """The image tower. `layers` an int: a ViT; a 4-tuple of block counts: OpenAI's ModifiedResNet."""

    image_size: int = declare(224, int_in(1, MAX_IMAGE_SIZE), coded=("open_clip",), hf="image_size")
    layers: int | tuple[int, int, int, int] = declare(12, TOWER_LAYERS, coded=("open_clip",), hf="num_hidden_layers")
    width: int = declare(768, WIDTH, hf="hidden_size")
    patch_size: int | None = declare(  # None for ModifiedResNet
        32, int_in(1, MAX_IMAGE_SIZE, optional=True), coded=("open_clip",), open_clip_default=16, hf="patch_size")
    heads: int | None = declare(  # derived as OpenAI's build_model does when None; open_clip gives head_width
        None, int_in(1, MAX_WIDTH, optional=True), open_clip="head_width", coded=("open_clip",),
        open_clip_default=64, hf="num_attention_heads", hf_default=12)
    mlp_ratio: float = declare(4.0, RATIO, coded=("open_clip", "hf"), hf="intermediate_size")
    # open_clip's ViT options (names as in its CLIPVisionCfg). ls_init_value: LayerScale after attention
    # and MLP (params ls_1.gamma, ls_2.gamma; the value only seeds a random init). pool_type: class token
    # ('tok') or the mean of the patch tokens ('avg'). final_ln_after_pool: ln_post on the pooled vector
    # instead of on every token (differs for 'avg'; transformers pools 'tok', where it changes nothing).
    # no_ln_pre: no LayerNorm before the transformer.
    ls_init_value: float | None = declare(None, LAYER_SCALE, vit_only=True, adds_params=0.1)
    pool_type: str = declare("tok", one_of(*VISION_POOL_TYPES), coded=("open_clip",), vit_only=True)
    final_ln_after_pool: bool = declare(False, BOOL, vit_only=True, coded=("hf",))
    no_ln_pre: bool = declare(False, BOOL, vit_only=True)

    def __post_init__(self):
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.pool_type not in VISION_POOL_TYPES:
            raise InputError(f"not supported: vision pool_type={short_repr(self.pool_type)} "
                             f"(one of {VISION_POOL_TYPES})")
        _check_fields_of(_own_fields(self), "vision.")  # every source's values pass here before use
        if self.heads is None:
            # OpenAI: ViT heads = width // 64; ResNet attention pool heads = width * 32 // 64.
            object.__setattr__(self, "heads", self.width * 32 // 64 if self.is_resnet else self.width // 64)
            if self.heads < 1:
                raise InputError(f"config field 'vision.width': {self.width} is narrower than one head of width 64")
        if self.is_resnet:
            if self.image_size % 32:
                raise InputError(f"ModifiedResNet image_size must be a multiple of 32, got {self.image_size}")
            for name, default in vit_only_defaults(VisionConfig).items():
                if getattr(self, name) != default:
                    raise InputError(f"not supported: {name}={getattr(self, name)!r} with a ModifiedResNet (ViT only)")
        else:
            if not self.patch_size:
                raise InputError("a ViT needs patch_size")
            if self.image_size % self.patch_size:
                raise InputError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise InputError(f"vision width {self.width} is not divisible by heads {self.heads}")
        _check_mlp_width("vision", self.width, self.mlp_ratio)

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
    context_length: int = declare(77, int_in(1, MAX_CONTEXT), hf="max_position_embeddings")
    vocab_size: int = declare(49408, int_in(1, MAX_VOCAB), hf="vocab_size")
    width: int = declare(512, WIDTH, hf="hidden_size")
    heads: int = declare(8, int_in(1, MAX_WIDTH), hf="num_attention_heads")
    layers: int = declare(12, int_in(1, MAX_LAYERS), hf="num_hidden_layers")
    mlp_ratio: float = declare(4.0, RATIO, coded=("open_clip", "hf"), hf="intermediate_size")
    # open_clip's text options (names as in its CLIPTextCfg). no_causal_mask: bidirectional attention.
    # pool_type: the token whose feature is the text's: 'argmax' (the EOT, the largest id), 'last', 'first',
    # or 'eos' (the first position holding eos_id). proj_bias: text_projection is a Linear with a bias.
    # transformers' eos_token_id gives both pool_type and eos_id (hf_format).
    ls_init_value: float | None = declare(None, LAYER_SCALE, adds_params=0.1)
    no_causal_mask: bool = declare(False, BOOL)
    pool_type: str = declare("argmax", one_of(*TEXT_POOL_TYPES), coded=("open_clip", "hf"), hf="eos_token_id")
    eos_id: int = declare(2, int_in(0, MAX_VOCAB), coded=("hf",), hf="eos_token_id")  # read by pool_type 'eos'
    proj_bias: bool = declare(False, BOOL, adds_params=True)

    def __post_init__(self):
        if self.pool_type not in TEXT_POOL_TYPES:
            raise InputError(f"not supported: text pool_type={short_repr(self.pool_type)} (one of {TEXT_POOL_TYPES})")
        _check_fields_of(_own_fields(self), "text.")  # every source's values pass here before use
        if self.width % self.heads:
            raise InputError(f"text width {self.width} is not divisible by heads {self.heads}")
        _check_mlp_width("text", self.width, self.mlp_ratio)

    @property
    def causal(self) -> bool:
        """True when each position attends only to itself and earlier positions."""
        return not self.no_causal_mask

    @property
    def trimmable(self) -> bool:
        """Whether cutting tokens after the batch's last EOT leaves the features unchanged: true for a
        causal tower pooled at the EOT (argmax) or the first token; not so for bidirectional attention
        (padding is attended to) or 'last' pooling (the last position moves)."""
        return self.causal and self.pool_type in ("argmax", "first")

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)


# CLIPConfig's fields: open_clip's model config and preprocess_cfg; transformers' top-level config, each
# tower's config.json (activation, eps) and preprocessor_config.json (preprocessing).
_IN_CODE = ("open_clip", "hf")


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = declare(512, WIDTH, hf="projection_dim", coded=("hf",))
    vision: VisionConfig = declare(rule=OBJECT, default_factory=VisionConfig, open_clip="vision_cfg",
                                   hf="vision_config", coded=_IN_CODE)
    text: TextConfig = declare(rule=OBJECT, default_factory=TextConfig, open_clip="text_cfg", hf="text_config",
                               coded=_IN_CODE)
    # OpenAI trained with QuickGELU, x * sigmoid(1.702 x); open_clip's non-"quickgelu" models use exact erf GELU.
    activation: str = declare("quick_gelu", one_of(*ACTIVATIONS), open_clip="quick_gelu", hf="hidden_act",
                              coded=_IN_CODE)
    # PyTorch's LayerNorm eps (Flax defaults to 1e-6); open_clip's norm_kwargs.eps of each tower.
    layer_norm_eps: float = declare(1e-5, number_in(1e-12, 0.1), open_clip=None, hf="layer_norm_eps",
                                    coded=_IN_CODE)
    # Preprocessing that belongs to the weights (open_clip tags differ from OpenAI's). transformers: the
    # CLIPImageProcessor of preprocessor_config.json, which resizes the shortest side and pads nothing.
    image_mean: tuple[float, float, float] = declare(OPENAI_MEAN, RGB, open_clip=None, preprocess="mean",
                                                     hf="image_mean", coded=("hf",))
    image_std: tuple[float, float, float] = declare(OPENAI_STD, RGB, open_clip=None, preprocess="std",
                                                    hf="image_std", coded=("hf",))
    resize_mode: str = declare("shortest", NAME, open_clip=None, preprocess="resize_mode", coded=("hf",))
    interpolation: str = declare("bicubic", NAME, open_clip=None, preprocess="interpolation", hf="resample",
                                 coded=("hf",))
    fill_color: int = declare(0, int_in(0, 255), open_clip=None, preprocess="fill_color",  # "longest" pads
                              coded=("hf",))

    def __post_init__(self):
        for name, cls in (("vision", VisionConfig), ("text", TextConfig)):
            if not isinstance(getattr(self, name), cls):
                raise InputError(f"config field {name!r}: expected a {cls.__name__}, got "
                                 f"{type(getattr(self, name)).__name__}")
        _check_fields_of({k: v for k, v in _own_fields(self).items() if k not in ("vision", "text")}, "")
        for name in ("image_mean", "image_std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    # --- presets and serialization ---

    @classmethod
    def from_name(cls, name: str) -> CLIPConfig:
        """One of OpenAI's nine models, e.g. "ViT-B/32" (or "ViT-B-32", "ViT-L-14-336px")."""
        key = canonical_name(name)
        if key not in PRESETS:
            raise InputError(f"unknown model {name!r}; known: {', '.join(PRESETS)}")
        return PRESETS[key]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CLIPConfig:
        """The inverse of to_dict. `d` is checked first (validate_config_dict): InputError (a ValueError)
        naming the field, LimitError for a value out of its range."""
        validate_config_dict(d)
        d = dict(d)
        d["vision"] = VisionConfig(**d.get("vision", {}))
        d["text"] = TextConfig(**d.get("text", {}))
        return cls(**d)

    @classmethod
    def from_json(cls, s: str | bytes) -> CLIPConfig:
        """The inverse of to_json; the text is bounded in size and nesting before it is parsed."""
        return cls.from_dict(parse_config_json(s))


# --- validating a config dict ----------------------------------------------------------------------

_RULES: dict[str, dict[str, Rule]] = {
    prefix: {f.name: f.metadata["rule"] for f in dataclasses.fields(cls)}
    for prefix, cls in (("", CLIPConfig), ("vision.", VisionConfig), ("text.", TextConfig))
}


def validate_config_dict(d: Any) -> None:
    """Check a config dict (CLIPConfig.to_dict's form, e.g. JSON read from a file) before anything is built:
    every field known, of its type and in its range. Raises InputError("config field 'vision.layers': ..."),
    LimitError (an InputError) for a number out of its range; both are ValueErrors."""
    _check_fields_of(d, "")
    for tower in ("vision", "text"):
        if tower in d:
            _check_fields_of(d[tower], f"{tower}.")


def check_field(field_name: str, value: Any, name: str | None = None) -> Any:
    """`value` checked against the rule of clip_jax's config field `field_name` ("vision.layers",
    "layer_norm_eps"): -> value, or InputError/LimitError naming it as `name` (the field as the source
    calls it, e.g. "vision_config.num_hidden_layers"). The one validation every config source goes
    through (open_clip's and transformers' configs, the converted file's, inference from weights)."""
    prefix, _, leaf = field_name.rpartition(".")
    check, expected = _RULES[f"{prefix}." if prefix else ""][leaf]
    if not check(value):
        raise field_error(name or field_name, expected, value)
    return value


def field_error(name: str, expected: str, value: Any) -> InputError:
    """A config field's value refused: LimitError for a number of the right type out of its range, else
    InputError (a wrong type, NaN)."""
    finite = type(value) is int or (type(value) is float and math.isfinite(value))
    cls = LimitError if finite else InputError
    return cls(f"config field '{name}': expected {expected}, got {short_repr(value)}")


def short_repr(value: Any) -> str:
    """repr of a value from outside, cut short (a 10^5-digit int or a deep list prints in bounded time)."""
    if type(value) is int and abs(value) > 10**30:
        return "an int of about 10^" + str(int(math.log10(abs(value))))
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # nested too deep, an int past Python's digit limit
        return f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def _own_fields(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _check_mlp_width(tower: str, width: int, ratio: float) -> None:
    if not 1 <= int(width * ratio) <= MAX_WIDTH * 64:
        raise LimitError(f"config field '{tower}.mlp_ratio': {ratio!r} gives an MLP width of {int(width * ratio)} "
                         f"for width {width}")


def _check_fields_of(d: Any, prefix: str) -> None:
    if not isinstance(d, dict):
        where = f"config field {prefix[:-1]!r}" if prefix else "a config"
        raise InputError(f"{where} must be an object of fields, got {type(d).__name__}")
    rules = _RULES[prefix]
    unknown = [f"{prefix}{name!s:.60}" for name in d if name not in rules]
    if unknown:
        raise InputError(f"unknown config fields: {unknown[:5]}")
    for name, value in d.items():
        check, expected = rules[name]
        if not check(value):
            raise field_error(f"{prefix}{name}", expected, value)


# --- reading config JSON ---------------------------------------------------------------------------
#
# Config files come from the Hub and from strangers: read with a byte cap, and their nesting measured
# before json parses them (json.loads of 200k nested brackets raises RecursionError). The largest real
# configs are a few KB, nested 3 deep.

MAX_CONFIG_BYTES = 16 << 20
MAX_JSON_DEPTH = 32
# A string, or an unterminated one to the end: one pass (a search restarted at each quote of an unterminated
# string would be quadratic).
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+"?', re.DOTALL)


def read_config_json(path: str | os.PathLike, where: str | None = None) -> Any:
    """A JSON config file -> its value. InputError naming the file (`where`, default the path) when it
    can't be read or parsed; LimitError past MAX_CONFIG_BYTES or nested deeper than MAX_JSON_DEPTH."""
    where = where or str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise InputError(f"{where}: unreadable: {e.strerror or e}") from None
    return parse_config_json(data, where)


def parse_config_json(data: str | bytes, where: str = "config") -> Any:
    """JSON text of a config -> its value, bounded in size and depth before it is parsed."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > MAX_CONFIG_BYTES:
        raise LimitError(f"{where}: over {MAX_CONFIG_BYTES >> 20} MiB, not a config")
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise LimitError(f"{where}: JSON nested {depth} deep (at most {MAX_JSON_DEPTH})")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, an int of 5000 digits
        raise InputError(f"{where}: not JSON ({str(e)[:200]})") from None


def json_depth(data: bytes) -> int:
    """The deepest nesting of brackets in JSON text, strings left out: numpy, linear in the size."""
    import numpy as np  # here: the command line imports this module before it needs numpy
    skeleton = np.frombuffer(_JSON_STRING.sub(b"", data), np.uint8)
    step = np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64) - np.isin(skeleton, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


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
    """Infer the architecture from OpenAI-named tensors, exactly as OpenAI's `build_model` does, plus the
    open_clip options that leave a trace in the weights (LayerScale gammas, a text projection bias, no
    ln_pre).

    Only shapes are read. What can't be seen in the weights takes OpenAI's values: QuickGELU, heads of
    width 64, causal text pooled at the EOT, class-token vision pooling. open_clip models that differ
    (e.g. ViT-H-14's head width 80, exact-GELU models) need their config: see `config_from_open_clip`.
    A tensor it reads that the state dict lacks raises MissingTensorError (a ValueError) naming it; shapes
    that give no valid config (20,000 blocks, a width of 0) an InputError or LimitError naming the field.
    """
    try:
        return _infer_from_state_dict(state_dict, activation)
    except ClipJaxError as e:
        if isinstance(e, MissingTensorError):
            raise
        raise type(e)(f"the architecture inferred from the weights' shapes: {e}") from None
    except (ValueError, TypeError, ZeroDivisionError, IndexError, AttributeError) as e:  # shapes of the wrong rank
        raise InputError(f"cannot infer the architecture from the weights' shapes: {type(e).__name__}: "
                         f"{str(e)[:200]}") from None


def _infer_from_state_dict(state_dict: Mapping[str, Any], activation: str) -> CLIPConfig:
    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise MissingTensorError(f"cannot infer the architecture: the checkpoint has no {key!r}")
        return tuple(state_dict[key].shape)

    def count(prefix: str, pos: int) -> int:
        return len({k.split(".")[pos] for k in state_dict if k.startswith(prefix)})

    # LayerScale's init value isn't in the weights; 1e-5 is open_clip's LayerScale default (init only).
    layer_scale = lambda prefix: 1e-5 if f"{prefix}resblocks.0.ls_1.gamma" in state_dict else None

    if "visual.proj" in state_dict:
        width, _, patch_size, _ = shape("visual.conv1.weight")
        layers = len([k for k in state_dict if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        grid = round((shape("visual.positional_embedding")[0] - 1) ** 0.5)
        mlp = shape("visual.transformer.resblocks.0.mlp.c_fc.weight")[0]
        vision = VisionConfig(
            image_size=patch_size * grid, layers=layers, width=width, patch_size=patch_size, mlp_ratio=mlp / width,
            ls_init_value=layer_scale("visual.transformer."), no_ln_pre="visual.ln_pre.weight" not in state_dict,
        )
    else:
        layers = tuple(count(f"visual.layer{b}", 2) for b in (1, 2, 3, 4))
        width = shape("visual.layer1.0.conv1.weight")[0]
        n_pos = shape("visual.attnpool.positional_embedding")[0]
        grid = round((n_pos - 1) ** 0.5)
        if grid**2 + 1 != n_pos:
            raise InputError(f"visual.attnpool.positional_embedding has {n_pos} rows, not a square grid + 1")
        vision = VisionConfig(image_size=grid * 32, layers=layers, width=width, patch_size=None)

    text_width = shape("ln_final.weight")[0]
    proj_bias = "text_projection.weight" in state_dict  # open_clip's proj_bias: an nn.Linear [out, in]
    text = TextConfig(
        context_length=shape("positional_embedding")[0],
        vocab_size=shape("token_embedding.weight")[0],
        width=text_width,
        heads=text_width // 64,
        layers=count("transformer.resblocks", 2),
        mlp_ratio=shape("transformer.resblocks.0.mlp.c_fc.weight")[0] / text_width,
        ls_init_value=layer_scale("transformer."),
        proj_bias=proj_bias,
    )
    embed_dim = shape("text_projection.weight")[0] if proj_bias else shape("text_projection")[1]
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=text, activation=activation)


# --- open_clip's model configs --------------------------------------------------------------------
#
# open_clip describes a model by a JSON model_cfg (embed_dim, vision_cfg, text_cfg, quick_gelu, ...) and a
# preprocess_cfg. Every field either maps to this config, provably changes nothing for inference in
# open_clip's CLIP class (listed in _NO_OP with the reason), or is refused: a field we don't know might
# change the numbers, and a silently different model is worse than an error.

_NO_OP = {
    "patch_dropout": "drops patches in training only",
    "output_tokens": "changes what open_clip returns, not the features",
    "attn_pooler_queries": "read only with attentional_pool",
    "attn_pooler_heads": "read only with attentional_pool",
    "pad_id": "open_clip's CLIP text tower has no padding mask",
    "final_ln_after_pool": "the text LayerNorm is per token, so pooling first changes nothing",
    "init_logit_scale": "initial value only",
    "nonscalar_logit_scale": "logit_scale of shape [1] instead of []",
    "output_dict": "changes what open_clip returns",
    "cast_dtype": "a runtime choice: pass dtype= to clip_jax",
    "timm_model_pretrained": "read only with timm_model_name",
    "timm_pool": "read only with timm_model_name",
    "timm_proj": "read only with timm_model_name",
    "timm_proj_bias": "read only with timm_model_name",
    "timm_drop": "read only with timm_model_name",
    "timm_drop_path": "read only with timm_model_name",
    "hf_model_pretrained": "read only with hf_model_name",
    "hf_proj_type": "read only with hf_model_name",
    "hf_pooler_type": "read only with hf_model_name",
}

# Fields that change the model in ways clip_jax doesn't implement: refused unless they hold this value.
_REFUSED_UNLESS = {
    "timm_model_name": None, "hf_model_name": None, "attentional_pool": False, "embed_cls": False,
    "block_type": ("default", None), "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "act_kwargs": (None, {}),
    "proj_type": "linear", "pos_embed_type": ("learnable", "sin_cos_2d"), "custom_text": False,
    "init_logit_bias": None, "multimodal_cfg": None,
    # clip_jax.tokenize is OpenAI's BPE: a model trained on another tokenizer's ids would get wrong input.
    "hf_tokenizer_name": (None, ""), "tokenizer_mode": None, "tokenizer_kwargs": (None, {}),
}


def _refuse(where: str, field_name: str, value: Any, why: str = "") -> None:
    raise InputError(f"not supported: {where}{field_name}={short_repr(value)}" + (f" ({why})" if why else ""))


def _check_fields(cfg: Mapping[str, Any], supported: set[str], where: str) -> None:
    for name, value in cfg.items():
        if name in supported or name in _NO_OP:
            continue
        if name in _REFUSED_UNLESS:
            allowed = _REFUSED_UNLESS[name]
            allowed = allowed if isinstance(allowed, tuple) else (allowed,)
            if not any(value == a for a in allowed):
                _refuse(where, name, value)
            continue
        _refuse(where, name, value, "an open_clip field clip_jax doesn't know")


def _square(value: Any, field_name: str, where: str) -> int:
    """open_clip's size: an int, or [h, w] with h == w; checked as clip_jax's `field_name`."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            _refuse(where, "", value, "only square sizes")
        value = value[0]
    return check_field(field_name, value, where)


def _section(cfg: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    """A nested object of a config (absent or null: empty); anything else an InputError naming it."""
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(f"config field '{where}{key}': expected an object, got {type(value).__name__}")
    return dict(value)


def _norm_eps(cfg: Mapping[str, Any], where: str) -> float | None:
    kwargs = _section(cfg, "norm_kwargs", where)
    extra = set(kwargs) - {"eps"}
    if extra:
        _refuse(where, "norm_kwargs", kwargs, "only eps")
    eps = kwargs.get("eps")
    return None if eps is None else check_field("layer_norm_eps", eps, f"{where}norm_kwargs.eps")


# The keys open_clip's configs may hold, from the fields' declarations; norm_kwargs: each tower's LayerNorm
# eps, clip_jax's one layer_norm_eps.
_VISION_FIELDS = set(source_keys(VisionConfig, "open_clip").values()) | {"norm_kwargs"}
_TEXT_FIELDS = set(source_keys(TextConfig, "open_clip").values()) | {"norm_kwargs"}
_MODEL_FIELDS = set(source_keys(CLIPConfig, "open_clip").values())


def _defaults(cls: type) -> dict[str, Any]:
    """A config dataclass's field defaults (fields with a default factory left out)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def _open_clip_defaults(cls: type) -> dict[str, Any]:
    """open_clip's defaults (its CLIPVisionCfg, CLIPTextCfg) for the keys a config may leave out, by
    open_clip's names: clip_jax's own defaults, but where the declaration gives open_clip's."""
    keys = source_keys(cls, "open_clip")
    return {keys[f.name]: source_default(f, "open_clip") for f in dataclasses.fields(cls) if f.name in keys}


_OPEN_CLIP_VISION = _open_clip_defaults(VisionConfig)
_OPEN_CLIP_TEXT = _open_clip_defaults(TextConfig)
_OPEN_CLIP_MODEL = {**_defaults(CLIPConfig), "quick_gelu": False}


def config_from_open_clip(
    model_cfg: Mapping[str, Any], preprocess_cfg: Mapping[str, Any] | None = None, *, quick_gelu: bool | None = None
) -> CLIPConfig:
    """An open_clip model config (`open_clip.get_model_config(name)`, or "model_cfg" of a Hub
    open_clip_config.json) and its "preprocess_cfg" -> CLIPConfig.

    quick_gelu overrides the model config's flag (a pretrained tag records the activation it was trained
    with). Raises InputError (a ValueError) "not supported: <field>=<value>" for any field clip_jax does not
    implement, and for a value of the wrong type or out of its range (LimitError) naming the field.
    """
    if not isinstance(model_cfg, Mapping):
        raise InputError(f"an open_clip model config must be an object, got {type(model_cfg).__name__}")
    model_cfg = dict(model_cfg)
    _check_fields(model_cfg, _MODEL_FIELDS, "")
    v, t = _section(model_cfg, "vision_cfg", ""), _section(model_cfg, "text_cfg", "")
    _check_fields(v, _VISION_FIELDS, "vision_cfg.")
    _check_fields(t, _TEXT_FIELDS, "text_cfg.")
    if quick_gelu is None:
        quick_gelu = model_cfg.get("quick_gelu", _OPEN_CLIP_MODEL["quick_gelu"])
        if type(quick_gelu) is not bool:
            raise field_error("quick_gelu", "true or false", quick_gelu)
    vision = _open_clip_vision(v)
    text = _open_clip_text(t)
    eps = _open_clip_layer_norm_eps(v, t, vision.is_resnet)
    preprocess = _open_clip_preprocess(_section({"preprocess_cfg": preprocess_cfg}, "preprocess_cfg", ""))
    return CLIPConfig(
        embed_dim=check_field("embed_dim", model_cfg.get("embed_dim", _OPEN_CLIP_MODEL["embed_dim"])),
        vision=vision,
        text=text,
        activation="quick_gelu" if quick_gelu else "gelu",
        layer_norm_eps=eps,
        **preprocess,
    )


def _open_clip_vision(v: Mapping[str, Any]) -> VisionConfig:
    """open_clip's vision_cfg -> VisionConfig (heads from head_width, as open_clip computes them)."""
    c = {**_OPEN_CLIP_VISION, **v}
    layers = check_field("vision.layers", c["layers"], "vision_cfg.layers")
    resnet = isinstance(layers, (list, tuple))
    plain = _copied(VisionConfig, c, "vision")
    width = plain["width"]
    head_width = check_field("vision.width", c["head_width"], "vision_cfg.head_width")
    if width * (32 if resnet else 1) % head_width or width * (32 if resnet else 1) < head_width:
        _refuse("vision_cfg.", "head_width", head_width, f"does not divide the width {width}")
    return VisionConfig(
        image_size=_square(c["image_size"], "vision.image_size", "vision_cfg.image_size"),
        layers=tuple(layers) if resnet else layers,
        patch_size=None if resnet else _square(c["patch_size"], "vision.patch_size", "vision_cfg.patch_size"),
        heads=width * 32 // head_width if resnet else width // head_width,
        mlp_ratio=float(check_field("vision.mlp_ratio", c["mlp_ratio"], "vision_cfg.mlp_ratio")),
        pool_type=c["pool_type"],  # VisionConfig refuses another: "not supported: vision pool_type=..."
        **plain,
    )


def _copied(cls: type, c: Mapping[str, Any], tower: str) -> dict[str, Any]:
    """The fields open_clip holds as clip_jax does, each checked by its field's rule under open_clip's name."""
    return {name: check_field(f"{tower}.{name}", c[key], f"{tower}_cfg.{key}")
            for name, key in source_keys(cls, "open_clip", coded=False).items()}


def _open_clip_text(t: Mapping[str, Any]) -> TextConfig:
    """open_clip's text_cfg -> TextConfig."""
    c = {**_OPEN_CLIP_TEXT, **t}
    mlp_ratio = float(check_field("text.mlp_ratio", c["mlp_ratio"], "text_cfg.mlp_ratio"))
    return TextConfig(mlp_ratio=mlp_ratio, pool_type=c["pool_type"],  # TextConfig checks pool_type
                      **_copied(TextConfig, c, "text"))


def _open_clip_layer_norm_eps(v: Mapping[str, Any], t: Mapping[str, Any], resnet: bool) -> float:
    """One LayerNorm eps for the model: open_clip's norm_kwargs may set it per tower (the vision one is
    read only by a ViT); a ResNet's BatchNorm keeps torch's 1e-5."""
    torch_eps = _defaults(CLIPConfig)["layer_norm_eps"]
    text_eps = _norm_eps(t, "text_cfg.")
    vision_eps = None if resnet else _norm_eps(v, "vision_cfg.")
    eps = {e if e is not None else torch_eps for e in (text_eps, vision_eps)}
    if len(eps) > 1 or (resnet and eps != {torch_eps}):
        _refuse("", "norm_kwargs", {"vision": vision_eps, "text": text_eps}, "one LayerNorm eps for both towers")
    return eps.pop()


# open_clip's preprocess_cfg name -> CLIPConfig field (an absent or empty value takes the field's default);
# size is the vision tower's image_size, mode the colour mode (RGB).
_PREPROCESS_FIELDS = {**{f.metadata["preprocess"]: f.name for f in dataclasses.fields(CLIPConfig)
                         if f.metadata["preprocess"]}, "size": None, "mode": None}


def _open_clip_preprocess(pp: Mapping[str, Any]) -> dict[str, Any]:
    """open_clip's preprocess_cfg -> CLIPConfig's preprocessing fields. "size" is the vision tower's
    image_size (read there); "mode" must be RGB."""
    unknown = set(pp) - set(_PREPROCESS_FIELDS)
    if unknown:
        _refuse("preprocess_cfg.", sorted(unknown)[0], pp[sorted(unknown)[0]], "an unknown preprocessing field")
    if pp.get("mode", "RGB") != "RGB":
        _refuse("preprocess_cfg.", "mode", pp["mode"])
    defaults = _defaults(CLIPConfig)
    out = {field: check_field(field, pp.get(name) or defaults[field], f"preprocess_cfg.{name}")
           for name, field in _PREPROCESS_FIELDS.items() if field}
    return {**out, "image_mean": tuple(out["image_mean"]), "image_std": tuple(out["image_std"])}


# --- writing open_clip's config ---------------------------------------------------------------------
#
# The inverse of config_from_open_clip, so that a file clip_jax writes carries the model it holds (open_clip's
# hub layout: open_clip_config.json beside the weights). Each tower lists its shape, as open_clip's own model
# configs do; any other key only where it differs from open_clip's default (older open_clip releases know
# fewer keys, and a key at its default changes nothing).
_OPEN_CLIP_SHAPE = ("image_size", "layers", "width", "patch_size", "context_length", "vocab_size", "heads")


def config_to_open_clip(config: CLIPConfig) -> dict[str, Any]:
    """CLIPConfig -> open_clip's open_clip_config.json: {"model_cfg": {...}, "preprocess_cfg": {...}}, which
    open_clip.create_model("local-dir:FOLDER") and config_from_open_clip read back as the same model."""
    v, t = config.vision, config.text
    vision = {**_plain_open_clip(v), "image_size": v.image_size, "layers": list(v.layers) if v.is_resnet else v.layers,
              "head_width": v.width * (32 if v.is_resnet else 1) // v.heads, "mlp_ratio": v.mlp_ratio,
              "pool_type": v.pool_type}
    if not v.is_resnet:
        vision["patch_size"] = v.patch_size
    text = {**_plain_open_clip(t), "mlp_ratio": t.mlp_ratio, "pool_type": t.pool_type}
    if config.layer_norm_eps != _defaults(CLIPConfig)["layer_norm_eps"]:  # a ResNet's towers keep torch's eps
        text["norm_kwargs"] = vision["norm_kwargs"] = {"eps": config.layer_norm_eps}
    model_cfg = {"embed_dim": config.embed_dim, "quick_gelu": config.activation == "quick_gelu",
                 "vision_cfg": _beyond_defaults(vision, _OPEN_CLIP_VISION),
                 "text_cfg": _beyond_defaults(text, _OPEN_CLIP_TEXT)}
    preprocess = {name: getattr(config, field) for name, field in _PREPROCESS_FIELDS.items() if field}
    preprocess = {"size": v.image_size, **{k: list(x) if isinstance(x, tuple) else x for k, x in preprocess.items()}}
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess}


def _plain_open_clip(tower: VisionConfig | TextConfig) -> dict[str, Any]:
    """The tower's fields open_clip holds as clip_jax does, by open_clip's names."""
    return {key: getattr(tower, name) for name, key in source_keys(type(tower), "open_clip", coded=False).items()}


def _beyond_defaults(cfg: dict[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    return {k: x for k, x in cfg.items() if k in _OPEN_CLIP_SHAPE or k not in defaults or x != defaults[k]}
