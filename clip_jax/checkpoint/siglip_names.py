"""SigLIP's parameter names in the three formats it comes in, as tables, and the layout changes between them.

clip_jax names a SigLIP as PyTorch would (siglip_spec: `visual.conv1.weight`, `visual.attn_pool.probe`,
`text.text_projection.weight`, ...; torch layouts, q|k|v stacked in `in_proj_weight`); these are the
"ours" below. Each format is a table of rules, one per parameter of ours: the source's name(s) and the
layout change that turns them into ours (and back):

    transformers  SiglipModel: `vision_model.encoder.layers.3.self_attn.q_proj.weight`, ... (q, k, v apart)
    open_clip     timm trunk:  `visual.trunk.blocks.3.attn.qkv.weight`, the MAP head's `q` and `kv` apart;
                  the text tower's names are already ours
    big_vision    .npz:        `img/Transformer/encoderblock_3/MultiHeadDotProductAttention_0/query/kernel`
                  [D, heads, head_dim] (the key mapping of transformers' convert_siglip_to_hf.py)

    ours = to_ours(theirs, HF, "clip", where)          # every missing / unexpected / mis-laid tensor at once
    theirs = dict(from_ours(ours, HF, heads=(12, 12)))  # one array at a time (a generator)

A LazyArray (torch_files) stays one: its layout is changed as it is read, so a reader holds one tensor
at a time. The tables know no shapes; the config is read from ours (siglip_config_from_state_dict), or
from open_clip's model config (siglip_config_from_open_clip, below).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config_fields import MAX_LAYERS
from ..errors import ClipJaxError, InputError
from ..param_check import ConversionError, raise_if_any
from ..roles import declarations
from ..siglip_config import (
    TIMM_EPS,
    TIMM_MODELS,
    TOKENIZERS,
    TOWERS,
    SiglipConfig,
    SiglipVisionConfig,
    siglip_config_from_open_clip,
    siglip_config_from_state_dict,
)
from .hf_format import _refuse
from .result import Checkpoint, check_weight_dtype
from .torch_files import CheckpointError, LazyArray, apply_lazily
from .torch_names import abstract_as_built, from_torch, to_jax, to_torch_state_dict, torch_name

KINDS = ("clip", "text", "vision")
# Our block prefixes; "{i}" is the block index.
VISION_BLOCK = "visual.transformer.resblocks.{i}."
TEXT_BLOCK = "text.transformer.resblocks.{i}."


@dataclass(frozen=True)
class Rule:
    """One parameter of ours: the source's names for it and the layout change (a key of LAYOUTS)."""

    ours: str
    theirs: tuple[str, ...]
    layout: str = ""


@dataclass(frozen=True)
class Format:
    """A format's rules: `top` outside the blocks; for each tower's blocks, `towers` holds (our block prefix,
    theirs, the block's (leaf of ours, leaves of theirs, layout)); `ignored` matches tensors that aren't
    weights."""

    name: str
    top: tuple[Rule, ...]
    towers: tuple[tuple[str, str, tuple[tuple[str, tuple[str, ...], str], ...]], ...]
    ignored: re.Pattern = re.compile(r"$^")


# --- layouts: (theirs -> ours, ours -> theirs) -------------------------------------------------------


def _expect(x: np.ndarray, ndim: int, what: str) -> np.ndarray:
    if x.ndim != ndim:
        raise ValueError(f"{what}: expected {ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def _split(x: np.ndarray, parts: int) -> list[np.ndarray]:
    if x.shape[0] % parts:
        raise ValueError(f"{tuple(x.shape)} does not split in {parts}")
    return np.split(x, parts)


def _heads_in(x: np.ndarray) -> np.ndarray:
    """big_vision's query/key/value kernel [D, heads, head_dim] -> a Linear weight [heads*head_dim, D];
    its bias [heads, head_dim] -> [heads*head_dim]."""
    if x.ndim == 3:
        return x.reshape(x.shape[0], -1).T
    return _expect(x, 2, "an attention bias").reshape(-1)


def _heads_out(x: np.ndarray, heads: int) -> np.ndarray:
    if x.ndim == 2:  # [heads*head_dim, D] -> [D, heads, head_dim]
        return x.T.reshape(x.shape[1], heads, -1)
    return x.reshape(heads, -1)


def _lead(x: np.ndarray) -> np.ndarray:
    """timm's and big_vision's position embeddings [1, N, D] -> [N, D]."""
    if x.ndim != 3 or x.shape[0] != 1:
        raise ValueError(f"a [1, N, D] embedding, got shape {tuple(x.shape)}")
    return x[0]


def _scalar(x: np.ndarray) -> np.ndarray:
    if x.size != 1 or x.ndim > 1:
        raise ValueError(f"a scalar, got shape {tuple(x.shape)}")
    return x.reshape(())


# layout -> (theirs (a list, one per source name) -> ours, (ours, heads) -> theirs (a list))
LAYOUTS: dict[str, tuple[Callable[[list[np.ndarray]], np.ndarray], Callable[[np.ndarray, int], list[np.ndarray]]]] = {
    "": (lambda xs: xs[0], lambda x, h: [x]),
    "scalar1": (lambda xs: _scalar(xs[0]), lambda x, h: [np.reshape(x, (1,))]),  # transformers', big_vision's [1]
    "scalar": (lambda xs: _scalar(xs[0]), lambda x, h: [np.reshape(x, ())]),  # open_clip's 0-d
    "lead": (lambda xs: _lead(xs[0]), lambda x, h: [x[None]]),
    "T": (lambda xs: _expect(xs[0], 2, "a Dense kernel").T, lambda x, h: [x.T]),
    "conv": (lambda xs: _expect(xs[0], 4, "a patch kernel [p, p, 3, D]").transpose(3, 2, 0, 1),
             lambda x, h: [x.transpose(2, 3, 1, 0)]),
    # q, k, v apart -> stacked (transformers' three Linears)
    "qkv": (lambda xs: np.concatenate(xs), lambda x, h: _split(x, 3)),
    # timm's MAP head: q [D, ...] and kv [2D, ...] -> stacked
    "q_kv": (lambda xs: np.concatenate(xs), lambda x, h: (lambda p: [p[0], np.concatenate(p[1:])])(_split(x, 3))),
    # big_vision: query, key, value kernels [D, heads, head_dim] (biases [heads, head_dim]) -> stacked
    "heads_qkv": (lambda xs: np.concatenate([_heads_in(x) for x in xs]),
                  lambda x, h: [_heads_out(p, h) for p in _split(x, 3)]),
    # big_vision's out kernel [heads, head_dim, D] -> a Linear weight [D, heads*head_dim]
    "heads_out": (lambda xs: _expect(xs[0], 3, "an out kernel").reshape(-1, xs[0].shape[-1]).T,
                  lambda x, h: [x.T.reshape(h, -1, x.shape[0])]),
}


def _wb(ours: str, theirs: str, leaves: tuple[str, str] = ("weight", "bias"), sep: str = ".",
        layout: str = "") -> tuple[tuple[str, tuple[str, ...], str], ...]:
    """A module's weight (laid out by `layout`) and bias, by their leaf names in the source."""
    weight, bias = (f"{theirs}{sep}{leaf}" for leaf in leaves)
    return ((f"{ours}.weight", (weight,), layout), (f"{ours}.bias", (bias,), ""))


def _bv_norm(ours: str, theirs: str) -> tuple[tuple[str, tuple[str, ...], str], ...]:
    return _wb(ours, theirs, ("scale", "bias"), "/")


def _bv_dense(ours: str, theirs: str) -> tuple[tuple[str, tuple[str, ...], str], ...]:
    return _wb(ours, theirs, ("kernel", "bias"), "/", "T")


# --- transformers -------------------------------------------------------------------------------------

_HF_ATTN = "self_attn"
_HF_BLOCK = (
    *_wb("ln_1", "layer_norm1"),
    ("attn.in_proj_weight", tuple(f"{_HF_ATTN}.{p}_proj.weight" for p in "qkv"), "qkv"),
    ("attn.in_proj_bias", tuple(f"{_HF_ATTN}.{p}_proj.bias" for p in "qkv"), "qkv"),
    *_wb("attn.out_proj", f"{_HF_ATTN}.out_proj"),
    *_wb("ln_2", "layer_norm2"),
    *_wb("mlp.c_fc", "mlp.fc1"),
    *_wb("mlp.c_proj", "mlp.fc2"),
)
HF = Format(
    "transformers",
    top=(
        Rule("logit_scale", ("logit_scale",), "scalar1"),
        Rule("logit_bias", ("logit_bias",), "scalar1"),
        *(Rule(o, t, lay) for o, t, lay in (
            *_wb("visual.conv1", "vision_model.embeddings.patch_embedding"),
            ("visual.positional_embedding", ("vision_model.embeddings.position_embedding.weight",), ""),
            *_wb("visual.ln_post", "vision_model.post_layernorm"),
            ("visual.attn_pool.probe", ("vision_model.head.probe",), ""),
            ("visual.attn_pool.attn.in_proj_weight", ("vision_model.head.attention.in_proj_weight",), ""),
            ("visual.attn_pool.attn.in_proj_bias", ("vision_model.head.attention.in_proj_bias",), ""),
            *_wb("visual.attn_pool.attn.out_proj", "vision_model.head.attention.out_proj"),
            *_wb("visual.attn_pool.ln", "vision_model.head.layernorm"),
            *_wb("visual.attn_pool.mlp.c_fc", "vision_model.head.mlp.fc1"),
            *_wb("visual.attn_pool.mlp.c_proj", "vision_model.head.mlp.fc2"),
            ("text.token_embedding.weight", ("text_model.embeddings.token_embedding.weight",), ""),
            ("text.positional_embedding", ("text_model.embeddings.position_embedding.weight",), ""),
            *_wb("text.ln_final", "text_model.final_layer_norm"),
            *_wb("text.text_projection", "text_model.head"),
        )),
    ),
    towers=((VISION_BLOCK, "vision_model.encoder.layers.{i}.", _HF_BLOCK),
            (TEXT_BLOCK, "text_model.encoder.layers.{i}.", _HF_BLOCK)),
    # buffers older transformers versions saved
    ignored=re.compile(r"(text_model|vision_model)\.embeddings\.position_ids$"),
)

# --- open_clip (timm trunk) ---------------------------------------------------------------------------

_TRUNK = "visual.trunk."
_TEXT_SAME = ("text.token_embedding.weight", "text.positional_embedding", "text.ln_final.weight",
              "text.ln_final.bias", "text.text_projection.weight", "text.text_projection.bias")
_BLOCK_LEAVES = ("ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                 "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias")
_TIMM_BLOCK = dict(zip(_BLOCK_LEAVES, (
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")))
OPEN_CLIP = Format(
    "open_clip",
    top=(
        Rule("logit_scale", ("logit_scale",), "scalar"),
        Rule("logit_bias", ("logit_bias",), "scalar"),
        *(Rule(o, t, lay) for o, t, lay in (
            *_wb("visual.conv1", _TRUNK + "patch_embed.proj"),
            ("visual.positional_embedding", (_TRUNK + "pos_embed",), "lead"),
            *_wb("visual.ln_post", _TRUNK + "norm"),
            ("visual.attn_pool.probe", (_TRUNK + "attn_pool.latent",), ""),
            ("visual.attn_pool.attn.in_proj_weight", (_TRUNK + "attn_pool.q.weight", _TRUNK + "attn_pool.kv.weight"),
             "q_kv"),
            ("visual.attn_pool.attn.in_proj_bias", (_TRUNK + "attn_pool.q.bias", _TRUNK + "attn_pool.kv.bias"),
             "q_kv"),
            *_wb("visual.attn_pool.attn.out_proj", _TRUNK + "attn_pool.proj"),
            *_wb("visual.attn_pool.ln", _TRUNK + "attn_pool.norm"),
            *_wb("visual.attn_pool.mlp.c_fc", _TRUNK + "attn_pool.mlp.fc1"),
            *_wb("visual.attn_pool.mlp.c_proj", _TRUNK + "attn_pool.mlp.fc2"),
        )),
        *(Rule(name, (name,)) for name in _TEXT_SAME),
    ),
    # the text blocks' names are ours; the vision blocks' timm's
    towers=((VISION_BLOCK, "visual.trunk.blocks.{i}.",
             tuple((leaf, (_TIMM_BLOCK[leaf],), "") for leaf in _BLOCK_LEAVES)),
            (TEXT_BLOCK, TEXT_BLOCK, tuple((leaf, (leaf,), "") for leaf in _BLOCK_LEAVES))),
    # open_clip's text tower keeps its causal-mask buffer in some versions
    ignored=re.compile(r"(^|.*\.)(attn_mask|input_resolution|context_length|vocab_size)$"),
)
# --- big_vision ---------------------------------------------------------------------------------------

_MHA = "MultiHeadDotProductAttention_0"


def _bv_attention(ours: str, theirs: str) -> tuple[tuple[str, tuple[str, ...], str], ...]:
    return (
        (f"{ours}.in_proj_weight", tuple(f"{theirs}/{p}/kernel" for p in ("query", "key", "value")), "heads_qkv"),
        (f"{ours}.in_proj_bias", tuple(f"{theirs}/{p}/bias" for p in ("query", "key", "value")), "heads_qkv"),
        (f"{ours}.out_proj.weight", (f"{theirs}/out/kernel",), "heads_out"),
        (f"{ours}.out_proj.bias", (f"{theirs}/out/bias",), ""),
    )


def _bv_mlp(ours: str, theirs: str) -> tuple[tuple[str, tuple[str, ...], str], ...]:
    return (*_bv_dense(f"{ours}.c_fc", f"{theirs}/Dense_0"), *_bv_dense(f"{ours}.c_proj", f"{theirs}/Dense_1"))


_MAP = "img/MAPHead_0"
_BV_BLOCK = (*_bv_norm("ln_1", "LayerNorm_0"), *_bv_attention("attn", _MHA), *_bv_norm("ln_2", "LayerNorm_1"),
             *_bv_mlp("mlp", "MlpBlock_0"))
BIG_VISION = Format(
    "big_vision",
    top=(
        Rule("logit_scale", ("t",), "scalar1"),
        Rule("logit_bias", ("b",), "scalar1"),
        *(Rule(o, t, lay) for o, t, lay in (
            ("visual.conv1.weight", ("img/embedding/kernel",), "conv"),
            ("visual.conv1.bias", ("img/embedding/bias",), ""),
            ("visual.positional_embedding", ("img/pos_embedding",), "lead"),
            *_bv_norm("visual.ln_post", "img/Transformer/encoder_norm"),
            ("visual.attn_pool.probe", (f"{_MAP}/probe",), ""),
            *_bv_attention("visual.attn_pool.attn", f"{_MAP}/{_MHA}"),
            *_bv_norm("visual.attn_pool.ln", f"{_MAP}/LayerNorm_0"),
            *_bv_mlp("visual.attn_pool.mlp", f"{_MAP}/MlpBlock_0"),
            ("text.token_embedding.weight", ("txt/Embed_0/embedding",), ""),
            ("text.positional_embedding", ("txt/pos_embedding",), "lead"),
            *_bv_norm("text.ln_final", "txt/Encoder_0/encoder_norm"),
            *_bv_dense("text.text_projection", "txt/head"),
        )),
    ),
    towers=((VISION_BLOCK, "img/Transformer/encoderblock_{i}/", _BV_BLOCK),
            (TEXT_BLOCK, "txt/Encoder_0/encoderblock_{i}/", _BV_BLOCK)),
)


# --- the rules of one checkpoint ----------------------------------------------------------------------


def _block_rules(fmt: Format, ours_prefix: str, n: int) -> list[Rule]:
    """The block rules of a tower of n blocks."""
    ((theirs_prefix, pairs),) = [(t, b) for o, t, b in fmt.towers if o == ours_prefix]
    return [Rule(ours_prefix.format(i=i) + leaf, tuple(theirs_prefix.format(i=i) + t for t in theirs), layout)
            for i in range(n) for leaf, theirs, layout in pairs]


def theirs_block_prefix(fmt: Format, ours_prefix: str) -> str:
    """The source's name of our block prefix (with its "{i}")."""
    return next(t for o, t, _ in fmt.towers if o == ours_prefix)


def count_blocks(names: Any, prefix: str, where: str = "") -> int:
    """The number of blocks named `prefix` ("...{i}.") in `names`: one more than the highest index (a gap
    shows as missing tensors), at most MAX_LAYERS (a hostile index can't make the rules huge)."""
    pattern = re.compile(re.escape(prefix).replace(re.escape("{i}"), r"(\d{1,9})"))
    highest = -1
    for name in names:
        m = pattern.match(name)
        if m:
            highest = max(highest, int(m[1]))
    if highest >= MAX_LAYERS:
        raise ConversionError(f"{where}{prefix.format(i=highest)}...: block index {highest}; a tower has at most "
                              f"{MAX_LAYERS} blocks")
    return highest + 1


def rules(fmt: Format, kind: str, layers: Mapping[str, int]) -> list[Rule]:
    """Every rule of a checkpoint of `kind` ("clip", "text", "vision") with `layers` blocks per tower
    ({VISION_BLOCK: n, TEXT_BLOCK: m})."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    towers = {"clip": ("visual.", "text."), "text": ("text.",), "vision": ("visual.",)}[kind]
    out = [r for r in fmt.top if r.ours.startswith(towers) or (kind == "clip" and "." not in r.ours)]
    for prefix in (VISION_BLOCK, TEXT_BLOCK):
        if prefix.startswith(towers):
            out += _block_rules(fmt, prefix, layers.get(prefix, 0))
    return out


def _converted(sources: list[str], arrays: list[Any], layout: str) -> Any:
    for source, array in zip(sources, arrays):
        check_weight_dtype(source, array)
    return apply_lazily(LAYOUTS[layout][0], arrays)


def to_ours(state_dict: Mapping[str, Any], fmt: Format, kind: str, where: str = "") -> dict[str, Any]:
    """A source's state dict (its names; numpy arrays or LazyArrays) -> ours. Block counts are read from
    the names. Every missing, unexpected and mis-laid tensor is reported at once (ConversionError); a
    weight of a non-float dtype is a CheckpointError naming it."""
    layers = {p: count_blocks(state_dict, theirs_block_prefix(fmt, p), where) for p in (VISION_BLOCK, TEXT_BLOCK)}
    out, missing, mismatched, used = {}, [], [], set()
    for rule in rules(fmt, kind, layers):
        absent = [s for s in rule.theirs if s not in state_dict]
        if absent:
            missing += absent
            continue
        used.update(rule.theirs)
        arrays = [a if isinstance(a, LazyArray) else np.asarray(a) for a in (state_dict[s] for s in rule.theirs)]
        try:
            out[rule.ours] = _converted(list(rule.theirs), arrays, rule.layout)
        except CheckpointError as e:
            raise CheckpointError(f"{where}{e}") from None
        except ValueError as e:  # a rank or a size the layout can't take
            got = ", ".join(f"{s} {tuple(a.shape)}" for s, a in zip(rule.theirs, arrays))
            mismatched.append(f"{got} ({str(e)[:120]})")
    unexpected = sorted(k for k in state_dict if k not in used and not fmt.ignored.match(k))
    try:
        raise_if_any(missing, unexpected, mismatched)
    except ConversionError as e:
        raise ConversionError(f"{where}not a {fmt.name} SigLIP of kind {kind!r}: {e}") from None
    return out


def from_ours(params: Mapping[str, Any], fmt: Format, kind: str, heads: tuple[int, int]
              ) -> Iterator[tuple[str, np.ndarray]]:
    """Ours -> the source's (name, array) pairs, one parameter at a time (a writer holds one converted
    tensor at a time). heads: (vision, text), which big_vision's attention kernels show as an axis."""
    layers = {p: count_blocks(params, p) for p in (VISION_BLOCK, TEXT_BLOCK)}
    table = rules(fmt, kind, layers)
    raise_if_any(sorted({r.ours for r in table} - set(params)), sorted(set(params) - {r.ours for r in table}), [])
    for rule in table:
        h = heads[0] if rule.ours.startswith("visual.") else heads[1]
        parts = LAYOUTS[rule.layout][1](np.asarray(params[rule.ours]), h)
        for name, part in zip(rule.theirs, parts):
            yield name, np.ascontiguousarray(part) if part.ndim else part


def torch_style(params: Mapping[str, Any], config: SiglipConfig, kind: str = "clip") -> Mapping[str, Any]:
    """Params by our torch-style names: as they are, or flat clip_jax names (a model's `flat_params`:
    `.kernel`, `.scale`, `.embedding` leaves) renamed and laid out by the roles the model of `config` and
    `kind` declares."""
    if not any(k.endswith((".kernel", ".scale", ".embedding")) for k in params):
        return params
    declared = declarations(abstract_as_built(config, kind, kind == "text"))
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ConversionError(f"not params of this SigLIP ({kind}): {', '.join(unknown[:5])}")
    return to_torch_state_dict(params, declared)


def as_checkpoint(ours: Mapping[str, Any], config: SiglipConfig, kind: str, origin: str, where: Any
                  ) -> Checkpoint:
    """Our torch-style state dict -> a Checkpoint of flat clip_jax params (torch_names.from_torch: each
    name and layout from the roles the SigLIP modules declare; LazyArrays stay lazy). `where` (the file)
    prefixes errors."""
    try:
        params = from_torch(ours, config)[1] if kind == "clip" else _tower_params(ours, config, kind)
    except ClipJaxError as e:
        raise type(e)(f"{where}: {e}") from None
    return Checkpoint(config, params, kind, kind != "vision", origin)


def _tower_params(ours: Mapping[str, Any], config: SiglipConfig, kind: str) -> dict[str, Any]:
    """A single tower's flat params (from_torch builds the two-tower model's): each declared param's
    torch name and layout (torch_names); shapes are checked by model.build before anything is read."""
    abstract = abstract_as_built(config, kind, kind == "text")
    wanted = {torch_name(name, info): (name, info) for name, info in declarations(abstract).items()}
    raise_if_any(sorted(set(wanted) - set(ours)), sorted(set(ours) - set(wanted)), [])
    return {name: apply_lazily(lambda xs, info=info: to_jax(xs[0], info), [ours[src]])
            for src, (name, info) in wanted.items()}


def names_of(fmt: Format, kind: str, layers: Mapping[str, int]) -> set[str]:
    """Every name a checkpoint of `fmt` and `kind` holds (for recognising one)."""
    return {t for r in rules(fmt, kind, layers) for t in r.theirs}


def is_open_clip_siglip(state_dict_keys: Any) -> bool:
    """Names of open_clip's SigLIP (a timm trunk with a MAP head, open_clip's text tower with a biased
    projection, logit_bias): `open_clip.create_model("ViT-B-16-SigLIP").state_dict()`'s keys."""
    keys = set(state_dict_keys)
    return {"logit_bias", _TRUNK + "attn_pool.latent", "text.text_projection.bias"} <= keys


# --- open_clip's model config -----------------------------------------------------------------------
#
# open_clip builds a SigLIP (`open_clip.create_model("ViT-B-16-SigLIP")`) as a CustomTextCLIP: a timm ViT
# trunk named by `vision_cfg.timm_model_name` (its shapes, patch and activation are the timm model's; only
# the image size is open_clip's to set) and open_clip's own text tower, bidirectional (`no_causal_mask`),
# pooled at its last position (`pool_type` "last"), projected with a bias; `text_cfg.act_kwargs.approximate`
# "tanh" makes its GELU tanh's (SigLIP 2's configs), none exact erf's (SigLIP 1's).
#
#     config = siglip_config_from_open_clip(model_cfg)                 # open_clip_config.json's model_cfg
#     model_cfg = siglip_config_to_open_clip(config)                   # what open_clip.create_model builds
#     config, ours = open_clip_siglip(state_dict, model_cfg)           # a loaded state dict -> ours

def timm_model_name(vision: SiglipVisionConfig, exact: bool = True) -> str:
    """timm's SigLIP trunk of this image tower: its shapes, patch and activation (preferring the one whose
    default size is the tower's; open_clip sets the image size either way). exact=False: another GELU
    will do where timm has none of the tower's (timm's ViT-B/16 and L/16 SigLIPs are exact GELU, the
    weights tanh's: open_clip runs them so)."""
    fits = [name for name, (tower, patch, _, act) in TIMM_MODELS.items()
            if TOWERS[tower] == (vision.width, vision.layers, vision.heads, vision.mlp_width)
            and patch == vision.patch_size and (act == vision.activation or not exact)]
    fits.sort(key=lambda name: TIMM_MODELS[name][3] != vision.activation)  # its own activation first
    if not fits:
        raise InputError(f"no timm SigLIP trunk has this image tower (width {vision.width}, {vision.layers} layers, "
                         f"{vision.heads} heads, MLP {vision.mlp_width}, patch {vision.patch_size}, "
                         f"{vision.activation}): open_clip can't build it" + ("" if not exact else
                                                                               " (exact=False: with another GELU)"))
    return next((n for n in fits if TIMM_MODELS[n][2] == vision.image_size), fits[0])


def _mlp_ratio(width: int, mlp_width: int) -> float:
    """A ratio open_clip's int(width * ratio) turns back into mlp_width (So400m's 4304 / 1152: 3.7362)."""
    for digits in (4, 6, 10):
        for ratio in (round(mlp_width / width, digits), round(mlp_width / width, digits) + 10.0**-digits):
            if int(width * ratio) == mlp_width:
                return ratio
    raise InputError(f"text.mlp_width {mlp_width}: no mlp_ratio of width {width} gives it in open_clip")


def siglip_config_to_open_clip(config: SiglipConfig, exact: bool = True) -> dict[str, Any]:
    """The model config open_clip.create_model builds this SigLIP from (the released ones' as open_clip
    ships them, up to the tokenizer's name). InputError for what open_clip can't build (an image tower
    no timm trunk has, an eps other than timm's); exact=False: the trunk of the tower's shapes whatever
    its GELU (timm_model_name)."""
    if config.layer_norm_eps != TIMM_EPS:
        _refuse("layer_norm_eps", config.layer_norm_eps, f"open_clip's timm trunk has {TIMM_EPS}")
    t = config.text
    text = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
            "layers": t.layers, "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
            "norm_kwargs": {"eps": config.layer_norm_eps}, "tokenizer_kwargs": {"clean": "canonicalize"}}
    if t.mlp_width != 4 * t.width:
        text["mlp_ratio"] = _mlp_ratio(t.width, t.mlp_width)
    if t.activation == "gelu_tanh":
        text["act_kwargs"] = {"approximate": "tanh"}
    if t.vocab_size in TOKENIZERS:
        text["hf_tokenizer_name"] = TOKENIZERS[t.vocab_size]
    vision = {"image_size": config.vision.image_size, "timm_model_name": timm_model_name(config.vision, exact),
              "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"}
    return {"embed_dim": config.embed_dim, "init_logit_bias": -10, "custom_text": True, "vision_cfg": vision,
            "text_cfg": text}


def siglip_preprocess_cfg(config: SiglipConfig) -> dict[str, Any]:
    """open_clip_config.json's preprocess_cfg for this SigLIP."""
    return {"mean": list(config.image_mean), "std": list(config.image_std), "interpolation": config.interpolation,
            "resize_mode": config.resize_mode, "fill_color": config.fill_color}


def open_clip_siglip(state_dict: Mapping[str, Any], model_cfg: Mapping[str, Any] | None = None,
                     preprocess: Mapping[str, Any] | None = None, where: str = ""
                     ) -> tuple[SiglipConfig, dict[str, Any]]:
    """open_clip's SigLIP state dict (numpy arrays or LazyArrays) -> (config, ours). The config is
    model_cfg's when given, else the weights' shapes (heads: the released towers' for their widths;
    activations: tanh GELU, big_vision's)."""
    ours = to_ours(state_dict, OPEN_CLIP, "clip", where)
    try:
        if model_cfg is not None:
            return siglip_config_from_open_clip(model_cfg, ours, preprocess), ours
        return siglip_config_from_state_dict(ours), ours
    except ClipJaxError as e:
        raise type(e)(f"{where}{e}") from None


def open_clip_export(params: Mapping[str, Any], config: SiglipConfig, exact: bool = True
                     ) -> tuple[dict[str, np.ndarray], dict]:
    """(open_clip's state dict, open_clip_config.json's content) for a SigLIP's params (ours or flat
    clip_jax names): what `open_clip.create_model("local-dir:FOLDER")` builds and loads strictly. exact:
    see siglip_config_to_open_clip."""
    heads = (config.vision.heads, config.text.heads)
    state_dict = dict(from_ours(torch_style(params, config), OPEN_CLIP, "clip", heads))
    cfg = {"model_cfg": siglip_config_to_open_clip(config, exact), "preprocess_cfg": siglip_preprocess_cfg(config)}
    return state_dict, cfg


__all__ = ["BIG_VISION", "HF", "KINDS", "LAYOUTS", "OPEN_CLIP", "TEXT_BLOCK", "TIMM_MODELS", "VISION_BLOCK", "Format",
           "Rule", "as_checkpoint", "count_blocks", "from_ours", "is_open_clip_siglip", "names_of", "open_clip_export",
           "open_clip_siglip", "rules", "siglip_config_from_open_clip",
           "siglip_config_to_open_clip", "siglip_preprocess_cfg", "to_ours", "torch_style"]
