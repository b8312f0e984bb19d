"""The transformer's layers, laid out like OpenAI's `clip/model.py` and open_clip's `transformer.py`:
attention, MLP, LayerScale, the residual block and the stack, with the helpers every tower builds
its parameters with (each declared with its role and sharding, roles.py) and the patch convolution.
Blocks take the scalars they use (width, heads, eps, activation, ...), never a config: the towers read
their config once and pass them down. A stack rematerializes its blocks when its `remat` option is set.

Numerics follow the reference, and not Flax's defaults, where the two differ: LayerNorm eps 1e-5, in
float32 with the two-pass variance; QuickGELU or exact erf GELU. With a bfloat16/float16 compute
dtype, LayerNorm and softmax stay float32.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from .errors import InputError
from .roles import BIAS, GAIN, KERNEL, MODEL, NORM_BIAS, NORM_SCALE, Role, declare

Dtype = jnp.dtype | type


# While set, every initializer returns a jax.ShapeDtypeStruct: abstract_model() builds the module tree
# (names, shapes, dtypes) without tracing or allocating anything.
SHAPES_ONLY = contextvars.ContextVar("clip_jax_shapes_only", default=False)


def lazy_init(init: Callable) -> Callable:
    def init_or_shape(key, shape, dtype=jnp.float32):
        if SHAPES_ONLY.get():
            return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))
        return init(key, shape, dtype)

    return init_or_shape


# Every parameter is declared with its role and the mesh axis of each dimension (roles.py): the
# conversion to PyTorch, the sharding, weight decay and the fp16 release mix are read from there.


def normal_param(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, role: Role) -> nnx.Param:
    """A parameter used as it is (an embedding, a projection matrix), replicated on a mesh."""
    value = lazy_init(nnx.initializers.normal(std))(rngs.params(), shape)
    return nnx.Param(value, **declare(role, *(None,) * len(shape)))


def dense(din: int, dout: int, dtype, precision, rngs: nnx.Rngs, std: float | None = None,
           axes: tuple[str | None, str | None] = (None, None), torch_name: str | None = None) -> nnx.Linear:
    """nn.Linear(din, dout); `axes` split its kernel [in, out] on a mesh, the bias along with the output.
    torch_name: torch's name for the weight where its module keeps it itself ("in_proj" for
    nn.MultiheadAttention's in_proj_weight / in_proj_bias)."""
    init = nnx.initializers.normal(std) if std else nnx.initializers.lecun_normal()
    names = (f"{torch_name}_weight", f"{torch_name}_bias") if torch_name else (None, None)
    return nnx.Linear(din, dout, dtype=dtype, precision=precision, kernel_init=lazy_init(init),
                      bias_init=lazy_init(nnx.initializers.zeros), rngs=rngs,
                      kernel_metadata=declare(KERNEL, *axes, torch_name=names[0]),
                      bias_metadata=declare(BIAS, axes[1], torch_name=names[1]))


def layer_norm(width: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # float32 whatever the compute dtype, as OpenAI's LayerNorm subclass does; the two-pass variance
    # (Flax's fast E[x^2] - E[x]^2 loses digits) to match torch.
    return nnx.LayerNorm(width, epsilon=eps, dtype=jnp.float32, use_fast_variance=False, rngs=rngs,
                         scale_init=lazy_init(nnx.initializers.ones), bias_init=lazy_init(nnx.initializers.zeros),
                         scale_metadata=declare(NORM_SCALE, None), bias_metadata=declare(NORM_BIAS, None))


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


# The function of each activation a config may name (config.ACTIVATIONS, siglip_config.SIGLIP_ACTIVATIONS).
# Exact erf GELU, as torch.nn.GELU() (Flax's gelu defaults to the tanh approximation); "gelu_tanh" is that
# approximation, torch's gelu(approximate="tanh"), which SigLIP trained with.
ACTIVATION_FUNCTIONS = {"quick_gelu": quick_gelu, "gelu": partial(jax.nn.gelu, approximate=False),
                        "gelu_tanh": partial(jax.nn.gelu, approximate=True)}

# Which intermediates a rematerialized block keeps for the backward pass (jax.checkpoint_policies), by
# name: nothing but its input; also its matmuls' outputs; those of them without batch dimensions.
REMAT_POLICIES = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat_policy(name: str) -> str:
    if name not in REMAT_POLICIES:
        raise InputError(f"remat_policy must be one of {tuple(REMAT_POLICIES)}; got {name!r}")
    return name


def rematerialized(fn: Callable, remat: bool, policy: str) -> Callable:
    """fn(module, *arrays) -> arrays, with the activations recomputed in the backward pass when `remat`
    (nnx.remat, keeping what REMAT_POLICIES[policy] saves); fn itself otherwise.

    graph_updates=False: nothing is written back into the module graph. The blocks don't change their
    state (BatchNorm runs on frozen statistics), and the graph write-back refuses the BatchStat variables
    of a model merged inside a traced train step (flax.errors.TraceContextError)."""
    if not remat:
        return fn
    return nnx.remat(fn, policy=REMAT_POLICIES[policy], graph_updates=False)


def matmul_precision(precision: str | None):
    return jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()


def take_rows(x: jax.Array, index: jax.Array) -> jax.Array:
    """`x[arange(B), index]` for x [B, L, ...], index int [B] -> [B, ...], as a gather whose batch dim
    is a batching dim. With `x[jnp.arange(B), index]` and an index built inside the program (the image
    tower's zeros), the SPMD partitioner can't tell the rows are local: every chip gathered a global
    batch's worth of rows and all-reduced it over "data" (bf16[65536, 768] on a v5e 16x16)."""
    return jnp.take_along_axis(x, index[:, None, None].astype(jnp.int32), axis=1, mode="clip")[:, 0]


class MultiheadAttention(nnx.Module):
    """torch.nn.MultiheadAttention (batch first): q, k, v stacked in `in_proj`, then `out_proj`."""

    def __init__(self, width: int, heads: int, *, dtype, precision, attention: str | None, rngs: nnx.Rngs):
        self.heads = heads
        self.attention = attention
        self.precision = precision
        # Megatron split on a "model" mesh axis: heads across devices. out_proj's rows are split; in_proj
        # is replicated, as no contiguous split of its fused q|k|v columns gives a device whole heads
        # (it would reshard every call): each device computes its heads from it (see _project_in).
        self.in_proj = dense(width, 3 * width, dtype, precision, rngs, std=width**-0.5, axes=(None, None),
                              torch_name="in_proj")
        self.out_proj = dense(width, width, dtype, precision, rngs, std=width**-0.5, axes=(MODEL, None))

    def _project_in(self, x: jax.Array, parts: slice) -> jax.Array:
        """x [B, L, D] through in_proj, for q (parts 0:1), k and v (1:3) or all three (0:3) -> [B, L,
        parts, heads, head_dim]. The kernel is viewed as [D, 3, heads, head_dim], so the heads are an
        axis of the matmul: on a mesh whose "model" axis splits the heads, each device computes its own
        heads' columns from the replicated kernel, and nothing moves between devices."""
        d, h = x.shape[-1], self.heads
        kernel = self.in_proj.kernel[...].astype(x.dtype).reshape(d, 3, h, d // h)[:, parts]
        bias = self.in_proj.bias[...].astype(x.dtype).reshape(3, h, d // h)[parts]
        return jnp.einsum("bld,dthk->blthk", x, kernel, precision=self.precision) + bias

    def _attend(self, q: jax.Array, k: jax.Array, v: jax.Array, **mask) -> jax.Array:
        """q [B, Lq, heads, head_dim], k and v [B, L, heads, head_dim] -> out_proj of the attention
        [B, Lq, D]; `mask`: dot_product_attention's is_causal or key_value_seq_lengths."""
        b, length, h, k_dim = q.shape
        # Softmax runs in float32 inside jax.nn.dot_product_attention for every input dtype.
        with matmul_precision(self.precision):
            out = jax.nn.dot_product_attention(q, k, v, implementation=self.attention, **mask)
        return self.out_proj(out.reshape(b, length, h * k_dim))

    def __call__(self, x: jax.Array, causal: bool = False) -> jax.Array:
        """x: [B, L, D] -> [B, L, D]."""
        q, k, v = jnp.unstack(self._project_in(x, slice(0, 3)), axis=2)
        return self._attend(q, k, v, is_causal=causal)

    def cross(self, queries: jax.Array, x: jax.Array) -> jax.Array:
        """queries [B, Lq, D] attending to x [B, L, D] (nn.MultiheadAttention(q, x, x)) -> [B, Lq, D]:
        a MAP head's probe reading a tower's tokens."""
        q = self._project_in(queries, slice(0, 1))[:, :, 0]
        k, v = jnp.unstack(self._project_in(x, slice(1, 3)), axis=2)
        return self._attend(q, k, v)

    def query_one(self, x: jax.Array, index: jax.Array, causal: bool = False) -> jax.Array:
        """Attention output at one position per row: x [B, L, D], index int [B] -> [B, 1, D].

        Equal to __call__(x)[arange(B), index] but projects queries, output and (in the block) the MLP
        for one token instead of L: the last block of a tower only needs its pooled token.
        """
        q = self._project_in(take_rows(x, index)[:, None], slice(0, 1))[:, :, 0]
        k, v = jnp.unstack(self._project_in(x, slice(1, 3)), axis=2)
        # Causal: the query at position i sees keys 0..i, which is a key length of i + 1 (a padding mask,
        # which cuDNN takes natively, rather than a dense mask it would have to add as a bias).
        lengths = (index + 1).astype(jnp.int32) if causal else None
        return self._attend(q, k, v, key_value_seq_lengths=lengths)


class MLP(nnx.Module):
    """c_fc, the activation (a name in ACTIVATION_FUNCTIONS), c_proj: [..., width] -> [..., width]."""

    def __init__(self, width: int, hidden: int, activation: str, *, dtype, precision, rngs: nnx.Rngs):
        if activation not in ACTIVATION_FUNCTIONS:
            raise InputError(f"activation must be one of {tuple(ACTIVATION_FUNCTIONS)}; got {activation!r}")
        # Megatron split: the hidden units across devices (c_fc columns, c_proj rows).
        self.c_fc = dense(width, hidden, dtype, precision, rngs, std=(2 * width) ** -0.5, axes=(None, MODEL))
        self.c_proj = dense(hidden, width, dtype, precision, rngs, std=width**-0.5, axes=(MODEL, None))
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(ACTIVATION_FUNCTIONS[self.activation](self.c_fc(x)))


class LayerScale(nnx.Module):
    """open_clip's LayerScale: x * gamma, one learned gain per channel."""

    def __init__(self, width: int, init_value: float):
        self.gamma = nnx.Param(lazy_init(nnx.initializers.constant(init_value))(None, (width,)), **declare(GAIN, None))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.gamma[...].astype(x.dtype)


class Identity(nnx.Module):
    """nn.Identity: an option that is off (no params, no names in a checkpoint)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class ResidualAttentionBlock(nnx.Module):
    """open_clip's ResidualAttentionBlock: x + ls_1(attn(ln_1(x))), then x + ls_2(mlp(ln_2(x))).

    Args:
      width, heads: the residual stream's width and the attention heads.
      mlp_width: the MLP's hidden units.
      eps: both LayerNorms' epsilon.
      activation: the MLP's, a name in ACTIVATION_FUNCTIONS.
      ls_init_value: LayerScale's initial gain; None: no LayerScale (ls_1, ls_2 are identities).
      dtype, precision: compute dtype and matmul precision; attention: dot_product_attention's
        implementation (None, "xla", "cudnn").
    """

    def __init__(self, width: int, heads: int, mlp_width: int, *, eps: float, activation: str,
                 ls_init_value: float | None = None, dtype, precision, attention: str | None, rngs: nnx.Rngs):
        self.dtype = dtype
        self.ln_1 = layer_norm(width, eps, rngs)
        self.attn = MultiheadAttention(width, heads, dtype=dtype, precision=precision, attention=attention, rngs=rngs)
        self.ln_2 = layer_norm(width, eps, rngs)
        self.mlp = MLP(width, mlp_width, activation, dtype=dtype, precision=precision, rngs=rngs)
        scale = (lambda: LayerScale(width, ls_init_value)) if ls_init_value is not None else Identity
        self.ls_1, self.ls_2 = scale(), scale()

    def _forward(self, x: jax.Array, causal: bool, index: jax.Array | None = None) -> jax.Array:
        """The block's one wiring: x [B, L, D] -> [B, L, D], or with index (int [B]) the rows at those
        positions only, [B, 1, D]: the attention queries, the residual and the MLP see one token per row."""
        # LayerNorm returns float32; cast back so the residual stream stays in the compute dtype.
        h = self.ln_1(x).astype(self.dtype)
        if index is None:
            attn = self.attn(h, causal=causal)
        else:
            attn = self.attn.query_one(h, index, causal=causal)
            x = take_rows(x, index)[:, None]
        x = x + self.ls_1(attn)
        return x + self.ls_2(self.mlp(self.ln_2(x).astype(self.dtype)))

    def __call__(self, x: jax.Array, causal: bool = False) -> jax.Array:
        return self._forward(x, causal)

    def pooled(self, x: jax.Array, index: jax.Array, causal: bool = False) -> jax.Array:
        """__call__(x)[arange(B), index] for x [B, L, D], index int [B] -> [B, D], computing only that token."""
        return self._forward(x, causal, index)[:, 0]


class Transformer(nnx.Module):
    """`layers` ResidualAttentionBlocks (`resblocks`); the other arguments are each block's.

    remat: recompute each block's activations in the backward pass (one more forward pass of compute,
    and only each block's input kept), keeping what REMAT_POLICIES[remat_policy] names. Settable on a
    built model (clip_jax.train.with_remat); names and params don't change.
    """

    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, *, remat: bool = False,
                 remat_policy: str = "nothing_saveable", **block):
        self.resblocks = nnx.List([ResidualAttentionBlock(width, heads, mlp_width, **block) for _ in range(layers)])
        self.remat = remat
        self.remat_policy = check_remat_policy(remat_policy)

    def _blocks(self, causal: bool) -> tuple[Callable, Callable]:
        """(block, x) -> block(x) and (block, x, index) -> block.pooled(x, index), rematerialized when asked."""
        call = rematerialized(lambda block, x: block(x, causal=causal), self.remat, self.remat_policy)
        pooled = lambda block, x, index: block.pooled(x, index, causal=causal)
        return call, rematerialized(pooled, self.remat, self.remat_policy)

    def __call__(self, x: jax.Array, causal: bool = False, pool: jax.Array | None = None) -> jax.Array:
        """x: [B, L, D] -> [B, L, D]; with pool (int [B], one position per row) -> [B, D], the output at
        those positions only: the last block then works on one token per row (~7% of a 12-layer tower)."""
        call, pooled = self._blocks(causal)
        *body, last = self.resblocks
        for block in body:
            x = call(block, x)
        return call(last, x) if pool is None else pooled(last, x, pool)

    def hidden_states(self, x: jax.Array, keep: tuple[int, ...], causal: bool = False) -> tuple[jax.Array, dict]:
        """x: [B, L, D] -> (the last block's output, {i: hidden state i for i in keep}): state 0 is the
        input of block 0, state i the output of block i - 1 (transformers' `hidden_states` numbering).
        Only the kept states outlive the loop."""
        call, _ = self._blocks(causal)
        kept = {0: x} if 0 in keep else {}
        for i, block in enumerate(self.resblocks, start=1):
            x = call(block, x)
            if i in keep:
                kept[i] = x
        return x, kept


def project(x: jax.Array, proj: jax.Array, dtype, precision) -> jax.Array:
    """x @ proj in the compute dtype, accumulated and returned in float32."""
    return jnp.dot(x.astype(dtype), proj.astype(dtype), precision=precision, preferred_element_type=jnp.float32)


def conv2d(conv: nnx.Conv, x: jax.Array, kernel: jax.Array | None = None) -> jax.Array:
    """conv(x) for a bias-free nnx.Conv, NHWC: x [N, H, W, C] -> [N, H', W', C']; `kernel` replaces the
    module's own (same shape) when given.

    Where the windows don't overlap (kernel size == stride, no padding: ViT's patch embedding, ResNet's
    1x1 convs) the convolution is a matmul over patches, which XLA's CPU backend runs up to twice as fast
    as its convolution. Other backends keep the convolution, which cuDNN fuses with bias, residual, relu.
    """
    dtype = conv.dtype or x.dtype
    x, kernel = x.astype(dtype), (conv.kernel[...] if kernel is None else kernel).astype(dtype)
    kh, kw, c, out = kernel.shape
    s = conv.strides
    convolve = partial(jax.lax.conv_general_dilated, window_strides=(s, s), padding=conv.padding,
                       dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=conv.precision)
    if (kh, kw) != (s, s) or conv.padding not in ("VALID", ((0, 0), (0, 0))):
        return convolve(x, kernel)

    def matmul(x, kernel):
        n, h, w, _ = x.shape
        gh, gw = h // kh, w // kw  # VALID drops a remainder
        patches = x[:, : gh * kh, : gw * kw].reshape(n, gh, kh, gw, kw, c).transpose(0, 1, 3, 2, 4, 5)
        return jnp.dot(patches.reshape(n, gh, gw, kh * kw * c), kernel.reshape(kh * kw * c, out),
                       precision=conv.precision)

    return jax.lax.platform_dependent(x, kernel, cpu=matmul, default=convolve)
