"""PyTorch state_dict <-> clip_jax params, as one table of name rules used in both directions.

The model's attribute paths already equal the PyTorch names (see model.py), so only the leaves differ:
Flax calls a Linear's weight `kernel` and stores it [in, out] (torch: [out, in]), a conv kernel
(kh, kw, I, O) (torch: [O, I, kh, kw]), a norm's weight `scale`, BatchNorm's running stats `mean`/`var`,
an embedding table `embedding`, and nn.MultiheadAttention's fused `in_proj_weight` becomes the Linear
`in_proj`. The expected params come from the model itself (an abstract instance, no memory), so every
missing, unexpected or mis-shaped tensor is found and reported at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from ..config import CLIPConfig, MissingTensorError, config_from_state_dict

# (clip_jax leaf pattern, torch name, transform). First match wins.
RULES: list[tuple[str, str, str | None]] = [
    (r"(.*)\.in_proj\.kernel", r"\1.in_proj_weight", "kernel"),
    (r"(.*)\.in_proj\.bias", r"\1.in_proj_bias", None),
    (r"(.*)\.kernel", r"\1.weight", "kernel"),
    (r"(.*)\.scale", r"\1.weight", None),
    (r"(.*)\.mean", r"\1.running_mean", None),
    (r"(.*)\.var", r"\1.running_var", None),
    (r"(.*)\.embedding", r"\1.weight", None),
    (r"logit_scale", "logit_scale", "scalar"),
    (r"(.*)", r"\1", None),  # biases, class/positional embeddings, proj, text_projection
]

# Tensors of OpenAI and open_clip checkpoints that aren't parameters.
IGNORED = re.compile(r"(^|.*\.)(input_resolution|context_length|vocab_size|attn_mask|num_batches_tracked)$")


class ConversionError(ValueError):
    """Names every missing, unexpected and mis-shaped tensor at once."""


def torch_name(name: str) -> tuple[str, str | None]:
    """clip_jax param name -> (PyTorch name, transform)."""
    for pattern, target, transform in RULES:
        m = re.fullmatch(pattern, name)
        if m:
            return m.expand(target), transform


def to_jax(x: np.ndarray, transform: str | None) -> np.ndarray:
    if transform == "kernel":  # Linear [out, in] -> [in, out]; conv [O, I, kh, kw] -> [kh, kw, I, O]
        return x.T if x.ndim == 2 else x.transpose(2, 3, 1, 0)
    if transform == "scalar" and x.size == 1:  # logit_scale: 0-d in OpenAI's files, [1] in some others
        return x.reshape(())
    return x


def to_torch(x: np.ndarray, transform: str | None) -> np.ndarray:
    if transform == "kernel":
        return x.T if x.ndim == 2 else x.transpose(3, 2, 0, 1)
    return x


def expected_params(config: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """The flat param names of a model and their shapes, without allocating it."""
    from ..model import abstract_model, param_shapes

    return param_shapes(abstract_model(config)[1])


def from_torch(state_dict: Mapping[str, np.ndarray], config: CLIPConfig | None = None) -> tuple[CLIPConfig, dict[str, np.ndarray]]:
    """A PyTorch CLIP state_dict (OpenAI names) -> (config, flat clip_jax params). Dtypes are kept."""
    if config is None:
        try:
            config = config_from_state_dict(state_dict)
        except MissingTensorError as e:
            raise ConversionError(f"not a CLIP checkpoint: {e}") from None
    params, missing, mismatched, used = {}, [], [], set()
    for name, shape in expected_params(config).items():
        src, transform = torch_name(name)
        if src not in state_dict:
            missing.append(src)
            continue
        used.add(src)
        value = to_jax(np.asarray(state_dict[src]), transform)
        if tuple(value.shape) != shape:
            want = to_torch(np.empty(shape, np.uint8), transform).shape
            mismatched.append(f"{src}: {tuple(state_dict[src].shape)}, expected {want}")
            continue
        params[name] = value
    unexpected = sorted(k for k in state_dict if k not in used and not IGNORED.match(k))
    _raise_if_any(missing, unexpected, mismatched)
    return config, params


def to_torch_state_dict(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat clip_jax params -> a state_dict with OpenAI/open_clip names and layouts."""
    out = {}
    for name, value in params.items():
        src, transform = torch_name(name)
        out[src] = to_torch(np.asarray(value), transform)
    return out


def check_params(params: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Every expected param (name -> shape, as expected_params gives) present with its shape, nothing else."""
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    mismatched = [
        f"{k}: {tuple(params[k].shape)}, expected {expected[k]}"
        for k in sorted(set(params) & set(expected))
        if tuple(params[k].shape) != expected[k]
    ]
    _raise_if_any(missing, unexpected, mismatched)


def _raise_if_any(missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if items:
            shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
            parts.append(f"{len(items)} {label}: {shown}")
    raise ConversionError("; ".join(parts))
