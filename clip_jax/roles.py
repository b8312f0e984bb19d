"""What each parameter is: a role and a sharding, declared where model.py creates it.

Every Variable of a clip_jax model carries two pieces of Flax metadata, set when it is made:

- `role`: the name of one of the `Role`s below (a Linear/Conv kernel, a bias, a norm's gain, an
  embedding, ...). What other modules need to know about a parameter follows from its role: the
  PyTorch name and layout (checkpoint/torch_names.py), whether AdamW decays it (train.py), its dtype in
  OpenAI's fp16 release mix (checkpoint/export.py).
- `out_sharding`: Flax's partitioning annotation, one mesh axis name or None per dimension (what
  `nnx.get_partition_spec` reads): the Megatron split along the "model" axis (parallel.py).

So adding a layer means declaring its parameters in model.py; the tables follow. The metadata survives
`nnx.split`/`merge`, `jax.tree.map` (the shape-only abstract model has it too) and optax's states.
A plain pytree of arrays has no metadata: for those, `clip_jax.checkpoint.declared.declared_by_name` looks a name up
in what the model declares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import jax
from flax import nnx

# The mesh axes (parallel.make_mesh): the batch is split along DATA, big kernels along MODEL.
DATA, MODEL = "data", "model"


@dataclasses.dataclass(frozen=True)
class Role:
    """What a parameter is for, and what follows from that.

    torch_leaf: PyTorch's leaf name where Flax's differs ("{leaf}" is Flax's), e.g. a kernel is torch's
      `weight`. transposed: torch stores it the other way round (Linear [out, in] for Flax's [in, out];
      conv [O, I, kh, kw] for (kh, kw, I, O)). scalar: 0-d here, 0-d or [1] in checkpoints.
    decays: AdamW's weight decay applies (open_clip's rule: the matrices of Linear/Conv layers and the
      projections; not gains, biases, embeddings, nor the temperature).
    fp16_in_release: float16 in OpenAI's release mix (open_clip's convert_weights_to_lp: Linear, Conv
      and attention weights and biases, the projections); float32 otherwise.
    """

    name: str
    torch_leaf: str = "{leaf}"
    transposed: bool = False
    scalar: bool = False
    decays: bool = False
    fp16_in_release: bool = False


KERNEL = Role("kernel", torch_leaf="weight", transposed=True, decays=True, fp16_in_release=True)
PROJECTION = Role("projection", decays=True, fp16_in_release=True)  # x @ W, the same layout in torch
BIAS = Role("bias", fp16_in_release=True)  # of a Linear (a norm's is NORM_BIAS)
NORM_SCALE = Role("norm_scale", torch_leaf="weight")
NORM_BIAS = Role("norm_bias")
TOKEN_EMBEDDING = Role("token_embedding", torch_leaf="weight")  # an nn.Embedding's table
EMBEDDING = Role("embedding")  # class and positional embeddings
GAIN = Role("gain")  # LayerScale's per-channel gamma
BATCH_STAT = Role("batch_stat", torch_leaf="running_{leaf}")  # BatchNorm's running mean and var
TEMPERATURE = Role("temperature", scalar=True)  # logit_scale
LOGIT_BIAS = Role("logit_bias", scalar=True)  # SigLIP's b in exp(t) * cos + b

ROLES: dict[str, Role] = {r.name: r for r in (KERNEL, PROJECTION, BIAS, NORM_SCALE, NORM_BIAS, TOKEN_EMBEDDING,
                                              EMBEDDING, GAIN, BATCH_STAT, TEMPERATURE, LOGIT_BIAS)}


@dataclasses.dataclass(frozen=True)
class Declared:
    """What model.py declares for one parameter: its role, the mesh axis of each dimension (None: not
    split), and `torch_name`, set where torch keeps the tensor on the enclosing module under a name of
    its own (nn.MultiheadAttention's `in_proj_weight`) instead of `<module>.<leaf>`."""

    role: Role
    axes: tuple[str | None, ...]
    torch_name: str | None = None


def declare(role: Role, *axes: str | None, torch_name: str | None = None) -> dict[str, Any]:
    """Flax Variable metadata for a parameter of `role`, split along `axes` (one per dimension, None:
    not split): pass it as `kernel_metadata=`, `scale_metadata=`, ... or `nnx.Param(value, **...)`.

    eager_sharding is off: a parameter is placed when a mesh is known (parallel.shard_params), not when
    it is made (Flax would otherwise ask for a mesh at creation)."""
    meta = {"role": role.name, "out_sharding": tuple(axes), "eager_sharding": False}
    if torch_name is not None:
        meta["torch_name"] = torch_name
    return meta


def declared(var: nnx.Variable) -> Declared:
    """The declaration a Variable carries. KeyError for a Variable model.py didn't declare."""
    meta = var.get_metadata()
    if "role" not in meta or "out_sharding" not in meta:
        raise KeyError(f"a {type(var).__name__} of shape {getattr(var, 'shape', '?')} has no declared role "
                       "and sharding (model.py declares every parameter with roles.declare)")
    return Declared(ROLES[meta["role"]], tuple(meta["out_sharding"]), meta.get("torch_name"))


def flat_name(path: Iterable) -> str:
    """A path into a model's state -> its clip_jax name, e.g. "visual.transformer.resblocks.0.ln_1.scale".

    Takes nnx paths (strings and ints) and jax key paths (DictKey, SequenceKey, and GetAttrKey, whose
    `value` step into an nnx.Variable is not part of the name)."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            if key.name != "value":
                parts.append(key.name)
        else:
            parts.append(str(key))
    return ".".join(parts)


def declarations(state: nnx.State) -> dict[str, Declared]:
    """Flat clip_jax name -> Declared, for every Variable of a model's state (or abstract state)."""
    return {flat_name(path): declared(var) for path, var in nnx.to_flat_state(state)}


def is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)
