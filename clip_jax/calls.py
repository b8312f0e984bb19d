"""Thin jitted calls of a model: each model is split once and its programs are cached (`call_jitted`,
`lower`, `rebind`), and programs a platform can't run are refused with a message (`check_platform`)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .errors import InputError

# nnx.jit walks the module graph on every call (flatten, then merge): 50-90 ms for ViT-B/32 on a CPU core,
# more than the tower's own compute at small batches and several times a GPU's at any batch. Instead each
# model is split once, at its first call: its Variables are kept, and a call reads their current values
# (a list of arrays, microseconds) into a plain jax.jit program keyed on the graph's structure, so models
# of one architecture share compilations. Values set in place (nnx.update, `var[...] = x`, training) are
# seen by the next call; a model whose structure changes (a submodule or Variable object replaced) must
# be re-bound with `rebind(model)`.


class _Bound:
    """A model split once: its Variables in state order, and the structure needed to rebuild it."""

    __slots__ = ("variables", "graphdef", "treedef", "programs")

    def __init__(self, model: nnx.Module):
        self.graphdef, state = nnx.split(model)
        self.variables = tuple(jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable)))
        self.treedef = jax.tree.structure(state)
        self.programs: dict[tuple, Callable] = {}  # a GraphDef's hash walks the graph: look it up once

    def program(self, method: str, static: tuple) -> Callable:
        key = (method, static)
        if key not in self.programs:
            self.programs[key] = _program(self.graphdef, self.treedef, method, static)
        return self.programs[key]

    def values(self) -> list:
        return [v.get_raw_value() for v in self.variables]


_BOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _bound(model: nnx.Module) -> _Bound:
    bound = _BOUND.get(model)
    if bound is None:
        bound = _BOUND[model] = _Bound(model)
    return bound


def rebind(model: nnx.Module) -> None:
    """Forget the split of `model` kept for its jitted calls: needed only after replacing a submodule or
    a Variable object (values updated in place are always seen)."""
    _BOUND.pop(model, None)


@lru_cache(maxsize=64)
def _program(graphdef: nnx.GraphDef, treedef, method: str, static: tuple = ()) -> Callable:
    """jax.jit of (values, *args) -> getattr(merged model, method)(*args, **dict(static))."""

    def run(values, *args):
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, values))
        return getattr(model, method)(*args, **dict(static))

    return jax.jit(run)


def _prepared(model: nnx.Module, method: str, static: dict) -> tuple[Callable, list]:
    bound = _bound(model)
    return bound.program(method, tuple(sorted(static.items()))), bound.values()


def check_platform(model: nnx.Module, platform: str) -> None:
    """Refuse a program `platform` can't run, with a message rather than an error deep in XLA:
    attention='cudnn' off NVIDIA GPUs; float16 compute on the CPU, whose XLA backend has no float16
    matmul accumulating in float32 (the attention's softmax and the projections use one)."""
    if getattr(model, "attention", None) == "cudnn" and platform not in ("gpu", "cuda"):
        raise InputError(f"attention='cudnn' needs an NVIDIA GPU; this program is for {platform!r}")
    if getattr(model, "compute_dtype", None) == jnp.float16 and platform == "cpu":
        raise InputError("dtype='float16' doesn't run on the CPU (XLA's CPU backend has no float16 matmul "
                         "accumulating in float32): use dtype='bfloat16' or 'float32' there, float16 on a GPU")


def _checks_platform(model: nnx.Module) -> bool:
    """Whether check_platform can refuse this model (the rest skip reading the inputs' devices)."""
    return getattr(model, "attention", None) == "cudnn" or getattr(model, "compute_dtype", None) == jnp.float16


def _platform(values: list, args: tuple) -> str:
    """The platform a jitted program of (values, *args) runs on: its inputs' devices, else the default."""
    for x in (*args, *values):
        sharding = getattr(x, "sharding", None)
        if sharding is not None:
            return next(iter(sharding.device_set)).platform
    return jax.default_backend()


def call_jitted(model: nnx.Module, method: str, *args, **static) -> Any:
    """getattr(model, method)(*args, **static), jit-compiled; `static` values are hashable options."""
    program, values = _prepared(model, method, static)
    if _checks_platform(model):
        check_platform(model, _platform(values, args))
    return program(values, *args)


def lower(model: nnx.Module, method: str, *args, **static) -> jax.stages.Lowered:
    """call_jitted's program lowered for these arguments (arrays or jax.ShapeDtypeStruct): compile it
    ahead of time with `.compile()`, or read its cost and memory analyses.

    For another target (a TPU topology, a GPU from the CPU): a model whose Variables hold
    jax.ShapeDtypeStructs with shardings on that target's devices (nnx.merge of abstract_model's graphdef
    and such a state), and args of the same kind."""
    program, values = _prepared(model, method, static)
    if _checks_platform(model):
        check_platform(model, _platform(values, args))
    return program.lower(values, *args)
