"""PyTorch state_dict <-> clip_jax params, from what the model declares for each parameter.

The model's attribute paths already equal the PyTorch names (see model.py), so only the leaves differ,
and each parameter's declared role (roles.py) says how: a kernel is torch's `weight`, stored [out, in]
for a Linear (Flax: [in, out]) and [O, I, kh, kw] for a conv (Flax: (kh, kw, I, O)); a norm's `scale`
and an embedding table are `weight`; BatchNorm's `mean`/`var` are `running_mean`/`running_var`;
logit_scale may be 0-d or [1]; nn.MultiheadAttention keeps its input projection as `in_proj_weight` /
`in_proj_bias` (declared as such). The expected params come from the model itself (an abstract
instance, no memory), so every missing, unexpected or mis-shaped tensor is found and reported at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..config import CLIPConfig, MissingTensorError, config_from_state_dict
from ..families import family_of
from ..model import abstract_model, param_shapes
from ..param_check import ConversionError, check_params, raise_if_any
from ..roles import Declared, declarations
from .declared import declared_by_name
from .torch_files import LazyArray, apply_lazily

# Tensors of OpenAI and open_clip checkpoints that aren't parameters.
IGNORED = re.compile(r"(^|.*\.)(input_resolution|context_length|vocab_size|attn_mask|num_batches_tracked)$")


def torch_name(name: str, info: Declared | None = None) -> str:
    """clip_jax param name -> its PyTorch name (`info`: its declaration; looked up by name if None)."""
    info = info or declared_by_name(name)
    *module, leaf = name.split(".")
    if info.torch_name:  # kept on the enclosing torch module (MultiheadAttention's in_proj_weight)
        return ".".join([*module[:-1], info.torch_name])
    return ".".join([*module, info.role.torch_leaf.format(leaf=leaf)])


def to_jax(x: np.ndarray, info: Declared) -> np.ndarray:
    """A tensor in torch's layout -> clip_jax's, for a parameter declared `info`."""
    if info.role.transposed:  # Linear [out, in] -> [in, out]; conv [O, I, kh, kw] -> [kh, kw, I, O]
        return x.T if x.ndim == 2 else x.transpose(2, 3, 1, 0)
    if info.role.scalar and x.size == 1:  # logit_scale: 0-d in OpenAI's files, [1] in some others
        return x.reshape(())
    return x


def to_torch(x: np.ndarray, info: Declared) -> np.ndarray:
    """The inverse of to_jax."""
    if info.role.transposed:
        return x.T if x.ndim == 2 else x.transpose(3, 2, 0, 1)
    return x


def abstract_as_built(config: CLIPConfig, kind: str = "clip", projection: bool = True) -> nnx.State:
    """The abstract state (shapes, no memory) of the model of `kind` that load builds from a checkpoint:
    abstract_model called with build's keywords and defaults, so that its cache holds the one build uses
    (a second trace of the model costs as much as reading a ViT-B/32 checkpoint)."""
    return abstract_model(config, dtype=jnp.float32, param_dtype=jnp.float32, attention=None,
                          **family_of(config).build_args(kind, projection))[1]


def expected_params(config: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """The flat param names of a model and their shapes, without allocating it."""
    return param_shapes(abstract_as_built(config))


def from_torch(state_dict: Mapping[str, np.ndarray], config: CLIPConfig | None = None
               ) -> tuple[CLIPConfig, dict[str, np.ndarray]]:
    """A PyTorch CLIP state_dict (OpenAI names) -> (config, flat clip_jax params). Dtypes are kept; a
    LazyArray stays one (its layout changed when it is read)."""
    if config is None:
        try:
            config = config_from_state_dict(state_dict)
        except MissingTensorError as e:
            raise ConversionError(f"not a CLIP checkpoint: {e}") from None
    abstract = abstract_as_built(config)
    shapes = param_shapes(abstract)
    params, missing, mismatched, used = {}, [], [], set()
    for name, info in declarations(abstract).items():
        src, shape = torch_name(name, info), shapes[name]
        if src not in state_dict:
            missing.append(src)
            continue
        used.add(src)
        source = state_dict[src] if isinstance(state_dict[src], LazyArray) else np.asarray(state_dict[src])
        value = apply_lazily(lambda xs, info=info: to_jax(xs[0], info), [source])  # lazy: read when built
        if tuple(value.shape) != shape:
            want = to_torch(np.empty(shape, np.uint8), info).shape
            mismatched.append(f"{src}: {tuple(state_dict[src].shape)}, expected {want}")
            continue
        params[name] = value
    unexpected = sorted(k for k in state_dict if k not in used and not IGNORED.match(k))
    raise_if_any(missing, unexpected, mismatched)
    return config, params


def to_torch_state_dict(params: Mapping[str, np.ndarray], declared: Mapping[str, Declared] | None = None
                        ) -> dict[str, np.ndarray]:
    """Flat clip_jax params -> a state_dict with OpenAI/open_clip names and layouts. declared: the
    model's declarations (model.model_declarations); None: each name's is looked up."""
    out = {}
    for name, value in params.items():
        info = declared[name] if declared is not None else declared_by_name(name)
        out[torch_name(name, info)] = to_torch(np.asarray(value), info)
    return out


__all__ = ["IGNORED", "ConversionError", "check_params", "expected_params", "from_torch", "to_jax", "to_torch",
           "to_torch_state_dict", "torch_name"]
