"""CLIP in flax.nnx, laid out like OpenAI's `clip/model.py`.

Every attribute path mirrors the PyTorch name (`visual.transformer.resblocks.3.attn.in_proj`, `ln_final`,
`visual.layer2.0.downsample.0`, ...), and every parameter is declared with its role and sharding where
it is made (roles.py), so converting a checkpoint is a rename of leaves by role (checkpoint/torch_names.py)
and a new layer is an edit of this file only. Images are NHWC.

Numerics follow the reference, and not Flax's defaults, where the two differ: LayerNorm eps 1e-5, in
float32 with the two-pass variance; QuickGELU or exact erf GELU; BatchNorm on running statistics. With a
bfloat16/float16 compute dtype, LayerNorm, softmax, the feature normalization and the logits stay float32.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import weakref
from collections.abc import Callable, Mapping
from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .checks import check_images, check_tokens
from .config import CLIPConfig, TextConfig, VisionConfig
from .errors import ClipJaxError
from .image import normalize_pixels
from .roles import (
    BATCH_STAT,
    BIAS,
    EMBEDDING,
    GAIN,
    KERNEL,
    MODEL,
    NORM_BIAS,
    NORM_SCALE,
    PROJECTION,
    TEMPERATURE,
    TOKEN_EMBEDDING,
    Declared,
    Role,
    declarations,
    declare,
    flat_name,
)
from .tokenizer import trim_tokens

Dtype = jnp.dtype | type


# While set, every initializer returns a jax.ShapeDtypeStruct: abstract_model() builds the module tree
# (names, shapes, dtypes) without tracing or allocating anything.
_SHAPES_ONLY = contextvars.ContextVar("clip_jax_shapes_only", default=False)


def _init(init: Callable) -> Callable:
    def init_or_shape(key, shape, dtype=jnp.float32):
        if _SHAPES_ONLY.get():
            return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))
        return init(key, shape, dtype)

    return init_or_shape


# Every parameter is declared with its role and the mesh axis of each dimension (roles.py): the
# conversion to PyTorch, the sharding, weight decay and the fp16 release mix are read from there.


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, role: Role) -> nnx.Param:
    """A parameter used as it is (an embedding, a projection matrix), replicated on a mesh."""
    return nnx.Param(_init(nnx.initializers.normal(std))(rngs.params(), shape), **declare(role, *(None,) * len(shape)))


def _dense(din: int, dout: int, dtype, precision, rngs: nnx.Rngs, std: float | None = None,
           axes: tuple[str | None, str | None] = (None, None), torch_name: str | None = None) -> nnx.Linear:
    """nn.Linear(din, dout); `axes` split its kernel [in, out] on a mesh, the bias along with the output.
    torch_name: torch's name for the weight where its module keeps it itself ("in_proj" for
    nn.MultiheadAttention's in_proj_weight / in_proj_bias)."""
    init = nnx.initializers.normal(std) if std else nnx.initializers.lecun_normal()
    names = (f"{torch_name}_weight", f"{torch_name}_bias") if torch_name else (None, None)
    return nnx.Linear(din, dout, dtype=dtype, precision=precision, kernel_init=_init(init),
                      bias_init=_init(nnx.initializers.zeros), rngs=rngs,
                      kernel_metadata=declare(KERNEL, *axes, torch_name=names[0]),
                      bias_metadata=declare(BIAS, axes[1], torch_name=names[1]))


def _layer_norm(width: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # float32 whatever the compute dtype, as OpenAI's LayerNorm subclass does; the two-pass variance
    # (Flax's fast E[x^2] - E[x]^2 loses digits) to match torch.
    return nnx.LayerNorm(width, epsilon=eps, dtype=jnp.float32, use_fast_variance=False, rngs=rngs,
                         scale_init=_init(nnx.initializers.ones), bias_init=_init(nnx.initializers.zeros),
                         scale_metadata=declare(NORM_SCALE, None), bias_metadata=declare(NORM_BIAS, None))


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


# Exact erf GELU, as torch.nn.GELU(); Flax's gelu defaults to the tanh approximation.
ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": partial(jax.nn.gelu, approximate=False)}


def _matmul_precision(precision: str | None):
    return jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()


def _take_rows(x: jax.Array, index: jax.Array) -> jax.Array:
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
        self.in_proj = _dense(width, 3 * width, dtype, precision, rngs, std=width**-0.5, axes=(None, None),
                              torch_name="in_proj")
        self.out_proj = _dense(width, width, dtype, precision, rngs, std=width**-0.5, axes=(MODEL, None))

    def _project_in(self, x: jax.Array, parts: slice) -> jax.Array:
        """x [B, L, D] through in_proj, for q (parts 0:1), k and v (1:3) or all three (0:3) -> [B, L,
        parts, heads, head_dim]. The kernel is viewed as [D, 3, heads, head_dim], so the heads are an
        axis of the matmul: on a mesh whose "model" axis splits the heads, each device computes its own
        heads' columns from the replicated kernel, and nothing moves between devices."""
        d, h = x.shape[-1], self.heads
        kernel = self.in_proj.kernel[...].astype(x.dtype).reshape(d, 3, h, d // h)[:, parts]
        bias = self.in_proj.bias[...].astype(x.dtype).reshape(3, h, d // h)[parts]
        return jnp.einsum("bld,dthk->blthk", x, kernel, precision=self.precision) + bias

    def __call__(self, x: jax.Array, causal: bool = False) -> jax.Array:
        """x: [B, L, D] -> [B, L, D]."""
        b, length, d = x.shape
        q, k, v = jnp.unstack(self._project_in(x, slice(0, 3)), axis=2)
        # Softmax runs in float32 inside jax.nn.dot_product_attention for every input dtype.
        with _matmul_precision(self.precision):
            out = jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=self.attention)
        return self.out_proj(out.reshape(b, length, d))

    def query_one(self, x: jax.Array, index: jax.Array, causal: bool = False) -> jax.Array:
        """Attention output at one position per row: x [B, L, D], index int [B] -> [B, 1, D].

        Equal to __call__(x)[arange(B), index] but projects queries, output and (in the block) the MLP
        for one token instead of L: the last block of a tower only needs its pooled token.
        """
        b, length, d = x.shape
        q = self._project_in(_take_rows(x, index)[:, None], slice(0, 1))[:, :, 0]
        k, v = jnp.unstack(self._project_in(x, slice(1, 3)), axis=2)
        # Causal: the query at position i sees keys 0..i, which is a key length of i + 1 (a padding mask,
        # which cuDNN takes natively, rather than a dense mask it would have to add as a bias).
        lengths = (index + 1).astype(jnp.int32) if causal else None
        with _matmul_precision(self.precision):
            out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation=self.attention)
        return self.out_proj(out.reshape(b, 1, d))


class MLP(nnx.Module):
    def __init__(self, width: int, hidden: int, activation: str, *, dtype, precision, rngs: nnx.Rngs):
        # Megatron split: the hidden units across devices (c_fc columns, c_proj rows).
        self.c_fc = _dense(width, hidden, dtype, precision, rngs, std=(2 * width) ** -0.5, axes=(None, MODEL))
        self.c_proj = _dense(hidden, width, dtype, precision, rngs, std=width**-0.5, axes=(MODEL, None))
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(ACTIVATIONS[self.activation](self.c_fc(x)))


class LayerScale(nnx.Module):
    """open_clip's LayerScale: x * gamma, one learned gain per channel."""

    def __init__(self, width: int, init_value: float):
        self.gamma = nnx.Param(_init(nnx.initializers.constant(init_value))(None, (width,)), **declare(GAIN, None))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.gamma[...].astype(x.dtype)


class ResidualAttentionBlock(nnx.Module):
    def __init__(self, width: int, heads: int, mlp_width: int, cfg: CLIPConfig, *, ls_init_value: float | None = None,
                 dtype, precision, attention, rngs):
        self.dtype = dtype
        self.ln_1 = _layer_norm(width, cfg.layer_norm_eps, rngs)
        self.attn = MultiheadAttention(width, heads, dtype=dtype, precision=precision, attention=attention, rngs=rngs)
        self.ln_2 = _layer_norm(width, cfg.layer_norm_eps, rngs)
        self.mlp = MLP(width, mlp_width, cfg.activation, dtype=dtype, precision=precision, rngs=rngs)
        # open_clip: ls_1 / ls_2 scale the attention and MLP branches (Identity when ls_init_value is None).
        if ls_init_value is not None:
            self.ls_1 = LayerScale(width, ls_init_value)
            self.ls_2 = LayerScale(width, ls_init_value)
        self.layer_scale = ls_init_value is not None

    def __call__(self, x: jax.Array, causal: bool = False) -> jax.Array:
        # LayerNorm returns float32; cast back so the residual stream stays in the compute dtype.
        attn = self.attn(self.ln_1(x).astype(self.dtype), causal=causal)
        x = x + (self.ls_1(attn) if self.layer_scale else attn)
        mlp = self.mlp(self.ln_2(x).astype(self.dtype))
        return x + (self.ls_2(mlp) if self.layer_scale else mlp)

    def pooled(self, x: jax.Array, index: jax.Array, causal: bool = False) -> jax.Array:
        """__call__(x)[arange(B), index] for x [B, L, D], index int [B] -> [B, D], computing only that token."""
        attn = self.attn.query_one(self.ln_1(x).astype(self.dtype), index, causal=causal)
        y = _take_rows(x, index)[:, None] + (self.ls_1(attn) if self.layer_scale else attn)
        mlp = self.mlp(self.ln_2(y).astype(self.dtype))
        return (y + (self.ls_2(mlp) if self.layer_scale else mlp))[:, 0]


class Transformer(nnx.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, cfg: CLIPConfig, **kw):
        self.resblocks = nnx.List([ResidualAttentionBlock(width, heads, mlp_width, cfg, **kw) for _ in range(layers)])

    def __call__(self, x: jax.Array, causal: bool = False, pool: jax.Array | None = None) -> jax.Array:
        """x: [B, L, D] -> [B, L, D]; with pool (int [B], one position per row) -> [B, D], the output at
        those positions only: the last block then works on one token per row (~7% of a 12-layer tower)."""
        *body, last = self.resblocks
        for block in body:
            x = block(x, causal=causal)
        return last(x, causal=causal) if pool is None else last.pooled(x, pool, causal=causal)

    def hidden_states(self, x: jax.Array, keep: tuple[int, ...], causal: bool = False) -> tuple[jax.Array, dict]:
        """x: [B, L, D] -> (the last block's output, {i: hidden state i for i in keep}): state 0 is the
        input of block 0, state i the output of block i - 1 (transformers' `hidden_states` numbering).
        Only the kept states outlive the loop."""
        kept = {0: x} if 0 in keep else {}
        for i, block in enumerate(self.resblocks, start=1):
            x = block(x, causal=causal)
            if i in keep:
                kept[i] = x
        return x, kept


class VisionTransformer(nnx.Module):
    def __init__(self, cfg: CLIPConfig, *, dtype, precision, attention, rngs: nnx.Rngs, projection: bool = True):
        v: VisionConfig = cfg.vision
        self.dtype = dtype
        scale = v.width**-0.5
        self.conv1 = nnx.Conv(
            3, v.width, (v.patch_size, v.patch_size), strides=v.patch_size, padding="VALID", use_bias=False,
            dtype=dtype, precision=precision, kernel_init=_init(nnx.initializers.lecun_normal()), rngs=rngs,
            # Replicated: split output channels would split the residual stream's width, and every
            # LayerNorm would all-reduce its statistics over "model".
            kernel_metadata=declare(KERNEL, None, None, None, None),
        )
        self.class_embedding = _normal(rngs, (v.width,), scale, EMBEDDING)
        self.positional_embedding = _normal(rngs, (v.grid_size**2 + 1, v.width), scale, EMBEDDING)
        if not v.no_ln_pre:  # open_clip's no_ln_pre: nn.Identity, no params
            self.ln_pre = _layer_norm(v.width, cfg.layer_norm_eps, rngs)
        self.transformer = Transformer(
            v.width, v.layers, v.heads, v.mlp_width, cfg, ls_init_value=v.ls_init_value, dtype=dtype,
            precision=precision, attention=attention, rngs=rngs,
        )
        self.ln_post = _layer_norm(v.width, cfg.layer_norm_eps, rngs)
        if projection:  # transformers' CLIPVisionModel has none
            self.proj = _normal(rngs, (v.width, cfg.embed_dim), scale, PROJECTION)
        self.has_projection = projection
        self.precision = precision
        self.pool_type = v.pool_type
        self.final_ln_after_pool = v.final_ln_after_pool
        self.no_ln_pre = v.no_ln_pre

    def _tokens(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, 3] normalized -> the transformer's input [N, 1 + grid**2, width]."""
        x = conv2d(self.conv1, x.astype(self.dtype))  # [N, grid, grid, width]
        n, gh, gw, width = x.shape
        x = x.reshape(n, gh * gw, width)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (n, 1, width))
        x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...].astype(x.dtype)
        if not self.no_ln_pre:
            x = self.ln_pre(x).astype(self.dtype)
        return x

    def _pool(self, x: jax.Array) -> jax.Array:
        """The transformer's output [N, L, width] -> the pooled vector [N, width] float32, before `proj`."""
        if self.pool_type == "tok":
            return self.ln_post(x[:, 0])
        if self.final_ln_after_pool:
            return self.ln_post(x[:, 1:].astype(jnp.float32).mean(axis=1))
        return self.ln_post(x[:, 1:]).mean(axis=1)

    def hidden_states(self, images: jax.Array, keep: tuple[int, ...]) -> tuple:
        """images [N, H, W, 3] normalized -> (last_hidden_state, {i: hidden state i}, pooled, features or
        None), as transformers' CLIPVisionModel: last_hidden_state is the last block's output (no
        ln_post), pooled is ln_post of the class token."""
        x, kept = self.transformer.hidden_states(self._tokens(images), keep)
        pooled = self._pool(x)
        features = _project(pooled, self.proj[...], self.dtype, self.precision) if self.has_projection else None
        return x, kept, pooled, features

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, 3] normalized -> [N, embed_dim] float32."""
        x = self._tokens(x)
        n = x.shape[0]
        if self.pool_type == "tok":  # LayerNorm is per token: normalizing only the class token is the same
            x = self.ln_post(self.transformer(x, pool=jnp.zeros((n,), jnp.int32)))
        elif self.final_ln_after_pool:  # 'avg', as open_clip's CLIPA models: mean of patch tokens, then LN
            x = self.ln_post(self.transformer(x)[:, 1:].astype(jnp.float32).mean(axis=1))
        else:  # 'avg': LN on every token, then the mean of the patch tokens
            x = self.ln_post(self.transformer(x)[:, 1:]).mean(axis=1)
        return _project(x, self.proj[...], self.dtype, self.precision)


def _project(x: jax.Array, proj: jax.Array, dtype, precision) -> jax.Array:
    """x @ proj in the compute dtype, accumulated and returned in float32."""
    return jnp.dot(x.astype(dtype), proj.astype(dtype), precision=precision, preferred_element_type=jnp.float32)


# --- ModifiedResNet -------------------------------------------------------------------------------


def _conv(din: int, dout: int, k: int, *, stride: int = 1, dtype, precision, rngs,
          out_axis: str | None = MODEL) -> nnx.Conv:
    """A bias-free conv; on a mesh its output channels are split along `out_axis`."""
    # Explicit padding as torch's padding=1 ('SAME' pads differently for stride 2).
    pad = (k - 1) // 2
    return nnx.Conv(
        din, dout, (k, k), strides=stride, padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
        precision=precision, kernel_init=_init(nnx.initializers.lecun_normal()), rngs=rngs,
        kernel_metadata=declare(KERNEL, None, None, None, out_axis),
    )


def _batch_norm(width: int, eps: float, dtype, rngs) -> nnx.BatchNorm:
    # Inference: running statistics, torch's eps; momentum 0.9 is torch's 0.1 in Flax's convention.
    bn = nnx.BatchNorm(width, use_running_average=True, epsilon=eps, momentum=0.9, dtype=dtype, rngs=rngs,
                       scale_init=_init(nnx.initializers.ones), bias_init=_init(nnx.initializers.zeros),
                       scale_metadata=declare(NORM_SCALE, None), bias_metadata=declare(NORM_BIAS, None))
    # Flax makes the statistics without a metadata argument: declared here instead.
    bn.mean = nnx.BatchStat(bn.mean.get_raw_value(), **declare(BATCH_STAT, None))
    bn.var = nnx.BatchStat(bn.var.get_raw_value(), **declare(BATCH_STAT, None))
    return bn


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


def conv_bn(conv: nnx.Conv, bn: nnx.BatchNorm, x: jax.Array) -> jax.Array:
    """bn(conv(x)) with BatchNorm on running statistics: x [N, H, W, C] -> [N, H', W', C'].

    Inference BatchNorm is a per-channel affine map y * s + t. The scale s either folds into the kernel
    (a pass over kh*kw*C*C' weights, and the conv + bias (+ residual) + relu pattern that cuDNN fuses) or
    multiplies the output (a pass over N*H'*W'*C' activations); each layer takes the smaller of the two,
    which is a static choice from the shapes. s and t are computed in float32 before the cast.
    """
    kh, kw, cin, _ = conv.kernel.shape
    n, h, w, _ = x.shape
    fold = n * (h // conv.strides) * (w // conv.strides) >= kh * kw * cin
    s = bn.scale[...] / jnp.sqrt(bn.var[...] + bn.epsilon)
    y = conv2d(conv, x, conv.kernel[...] * s if fold else None)
    if not fold:
        y = y * s.astype(y.dtype)
    return y + (bn.bias[...] - bn.mean[...] * s).astype(y.dtype)


def _avg_pool(x: jax.Array, k: int) -> jax.Array:
    # torch.nn.AvgPool2d(k): kernel = stride = k, no padding.
    return x if k == 1 else nnx.avg_pool(x, (k, k), strides=(k, k))


class Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, eps: float, *, dtype, precision, rngs):
        kw = dict(dtype=dtype, precision=precision, rngs=rngs)
        self.stride = stride
        self.conv1 = _conv(inplanes, planes, 1, **kw)
        self.bn1 = _batch_norm(planes, eps, dtype, rngs)
        self.conv2 = _conv(planes, planes, 3, **kw)
        self.bn2 = _batch_norm(planes, eps, dtype, rngs)
        self.conv3 = _conv(planes, planes * self.expansion, 1, **kw)
        self.bn3 = _batch_norm(planes * self.expansion, eps, dtype, rngs)
        self.downsample = nnx.data(None)
        if stride > 1 or inplanes != planes * self.expansion:
            # torch: Sequential("-1": AvgPool2d(stride), "0": conv 1x1, "1": BatchNorm); the pool has no params.
            # Its conv is not split on a mesh, unlike the block's own.
            self.downsample = nnx.data(nnx.List(
                [_conv(inplanes, planes * self.expansion, 1, out_axis=None, **kw),
                 _batch_norm(planes * self.expansion, eps, dtype, rngs)]
            ))

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(conv_bn(self.conv1, self.bn1, x))
        out = jax.nn.relu(conv_bn(self.conv2, self.bn2, out))
        # All convolutions have stride 1; an avgpool does the downsampling (OpenAI's anti-aliasing choice).
        out = conv_bn(self.conv3, self.bn3, _avg_pool(out, self.stride))
        identity = x
        if self.downsample is not None:
            conv, bn = self.downsample
            identity = conv_bn(conv, bn, _avg_pool(x, self.stride))
        return jax.nn.relu(out + identity)


class AttentionPool2d(nnx.Module):
    """Attention pooling where only the mean token queries the feature map."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int, *, dtype, precision,
                 attention, rngs):
        self.num_heads = num_heads
        self.attention = attention
        self.precision = precision
        self.positional_embedding = _normal(rngs, (spacial_dim**2 + 1, embed_dim), embed_dim**-0.5, EMBEDDING)
        std = embed_dim**-0.5
        # Megatron split: heads across devices, as in MultiheadAttention.
        self.k_proj = _dense(embed_dim, embed_dim, dtype, precision, rngs, std=std, axes=(None, MODEL))
        self.q_proj = _dense(embed_dim, embed_dim, dtype, precision, rngs, std=std, axes=(None, MODEL))
        self.v_proj = _dense(embed_dim, embed_dim, dtype, precision, rngs, std=std, axes=(None, MODEL))
        self.c_proj = _dense(embed_dim, output_dim, dtype, precision, rngs, std=std, axes=(MODEL, None))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, C] -> [N, output_dim]."""
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
        x = x + self.positional_embedding[...].astype(x.dtype)
        head_dim = c // self.num_heads
        q = self.q_proj(x[:, :1]).reshape(n, 1, self.num_heads, head_dim)
        k = self.k_proj(x).reshape(n, h * w + 1, self.num_heads, head_dim)
        v = self.v_proj(x).reshape(n, h * w + 1, self.num_heads, head_dim)
        with _matmul_precision(self.precision):
            out = jax.nn.dot_product_attention(q, k, v, implementation=self.attention)
        return self.c_proj(out.reshape(n, c))


class ModifiedResNet(nnx.Module):
    """OpenAI's ResNet: a 3-conv stem with avgpool, anti-aliased strided blocks, an attention pool."""

    def __init__(self, cfg: CLIPConfig, *, dtype, precision, attention, rngs: nnx.Rngs):
        v: VisionConfig = cfg.vision
        eps = cfg.layer_norm_eps  # torch BatchNorm2d's default eps is the same 1e-5
        kw = dict(dtype=dtype, precision=precision, rngs=rngs)
        width = v.width
        self.dtype = dtype
        # The first conv, on the pixels, is whole on every device, as ViT's patch embedding (same name).
        self.conv1 = _conv(3, width // 2, 3, stride=2, out_axis=None, **kw)
        self.bn1 = _batch_norm(width // 2, eps, dtype, rngs)
        self.conv2 = _conv(width // 2, width // 2, 3, **kw)
        self.bn2 = _batch_norm(width // 2, eps, dtype, rngs)
        self.conv3 = _conv(width // 2, width, 3, **kw)
        self.bn3 = _batch_norm(width, eps, dtype, rngs)

        inplanes = width
        stages = []
        for i, blocks in enumerate(v.layers):
            planes, stride = width * 2**i, (1 if i == 0 else 2)
            stage = [Bottleneck(inplanes, planes, stride, eps, **kw)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes, 1, eps, **kw) for _ in range(1, blocks)]
            stages.append(nnx.List(stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool2d(
            v.grid_size, width * 32, v.heads, cfg.embed_dim, attention=attention, **kw
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, 3] normalized -> [N, embed_dim] float32."""
        x = x.astype(self.dtype)
        x = jax.nn.relu(conv_bn(self.conv1, self.bn1, x))
        x = jax.nn.relu(conv_bn(self.conv2, self.bn2, x))
        x = jax.nn.relu(conv_bn(self.conv3, self.bn3, x))
        x = _avg_pool(x, 2)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x)
        return self.attnpool(x).astype(jnp.float32)


# --- CLIP -----------------------------------------------------------------------------------------


class TextTowerMixin:
    """The text tower's parts and calls, for a module that holds them at its top level: in OpenAI's CLIP
    `token_embedding`, `transformer.resblocks.0...` and `ln_final` sit beside `visual`, so CLIP (and the
    single TextTower) mix this in and keep those PyTorch names."""

    def _init_text_tower(self, cfg: CLIPConfig, *, dtype, precision, attention, rngs: nnx.Rngs,
                         projection: bool = True) -> None:
        t: TextConfig = cfg.text
        self.dtype = dtype
        self.precision = precision
        self.token_embedding = nnx.Embed(
            t.vocab_size, t.width, dtype=dtype, embedding_init=_init(nnx.initializers.normal(0.02)), rngs=rngs,
            embedding_metadata=declare(TOKEN_EMBEDDING, None, None),
        )
        self.positional_embedding = _normal(rngs, (t.context_length, t.width), 0.01, EMBEDDING)
        self.transformer = Transformer(
            t.width, t.layers, t.heads, t.mlp_width, cfg, ls_init_value=t.ls_init_value, dtype=dtype,
            precision=precision, attention=attention, rngs=rngs,
        )
        self.ln_final = _layer_norm(t.width, cfg.layer_norm_eps, rngs)
        # None without a projection, as transformers' CLIPTextModel. open_clip's proj_bias: an nn.Linear
        # (weight [out, in] + bias) instead of a matrix.
        if projection and t.proj_bias:
            self.text_projection = _dense(t.width, cfg.embed_dim, dtype, precision, rngs, std=t.width**-0.5)
        elif projection:
            self.text_projection = _normal(rngs, (t.width, cfg.embed_dim), t.width**-0.5, PROJECTION)
        self.text_projected = projection
        self.text_config = t

    def text_features(self, tokens: jax.Array) -> jax.Array:
        """tokens: int [N, L], L <= context_length -> [N, embed_dim] float32 (not normalized).

        No padding mask: id 0 is a real token ("!"). With OpenAI's settings the mask is causal and pooling
        takes the EOT position, argmax(tokens) (EOT, 49407, is the largest id); then L may be anything up
        to context_length. Towers that aren't `trimmable` (bidirectional, or pooled at the last position)
        need L == context_length, as open_clip always runs them.
        """
        t = self.text_config
        x = self.transformer(self._embed(tokens), causal=t.causal, pool=_pool_index(tokens, t))
        x = self.ln_final(x)  # per-token, so pooling first gives the same numbers for less work
        return self._text_project(x)

    def text_hidden_states(self, tokens: jax.Array, layers: tuple[int, ...] | None = None) -> TowerStates:
        """tokens: int [N, L] -> TowerStates as transformers' CLIPTextModel (output_hidden_states=True, no
        attention_mask): last_hidden_state is ln_final of every token, pooled its row at the pooled
        position. layers: which hidden states to keep (indices into the full tuple; None: all)."""
        t = self.text_config
        keep = _kept(layers, t.layers)
        x, kept = self.transformer.hidden_states(self._embed(tokens), keep, causal=t.causal)
        last = self.ln_final(x)
        pooled = _take_rows(last, _pool_index(tokens, t))
        features = self._text_project(pooled) if self.text_projected else None
        return TowerStates(last, _select(kept, layers, t.layers), pooled, features)

    def _embed(self, tokens: jax.Array) -> jax.Array:
        """tokens: int [N, L] -> the transformer's input [N, L, width]."""
        t = self.text_config
        length = tokens.shape[1]
        if length != t.context_length and not t.trimmable:
            raise ValueError(
                f"this text tower (no_causal_mask={t.no_causal_mask}, pool_type={t.pool_type!r}) needs all "
                f"{t.context_length} token columns; got {length}: don't trim its tokens"
            )
        return self.token_embedding(tokens) + self.positional_embedding[:length].astype(self.dtype)

    def _text_project(self, x: jax.Array) -> jax.Array:
        """Pooled [N, width] float32 -> [N, embed_dim] float32."""
        if not self.text_projected:
            raise ValueError("this text tower has no projection (transformers' CLIPTextModel): read "
                             "clip_jax.text_states(model, tokens).pooled instead of its features")
        if self.text_config.proj_bias:
            proj, bias = self.text_projection.kernel[...], self.text_projection.bias[...]
            return _project(x, proj, self.dtype, self.precision) + bias.astype(jnp.float32)
        return _project(x, self.text_projection[...], self.dtype, self.precision)


class TowerStates(NamedTuple):
    """What a tower computes, field by field as transformers' CLIPTextModel / CLIPVisionModel outputs.

    last_hidden_state [B, L, D]; hidden_states: the input of block 0, then each block's output [B, L, D]
    (only the asked ones with `layers=`); pooled [B, D] (transformers' pooler_output); features
    [B, embed_dim], the projected features (encode_text / encode_image), None without a projection.
    """

    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...]
    pooled: jax.Array
    features: jax.Array | None


def layer_indices(layers, n_blocks: int) -> tuple[int, ...] | None:
    """`layers` (indices into the n_blocks + 1 hidden states, negative from the end; None: all) as
    non-negative ints, checked."""
    if layers is None:
        return None
    if isinstance(layers, int):
        raise TypeError(f"layers must be a sequence of indices, e.g. layers=({layers},)")
    out = []
    for i in layers:
        if not isinstance(i, (int, np.integer)) or not -(n_blocks + 1) <= i <= n_blocks:
            raise IndexError(f"layers: {i!r} is not an index of the {n_blocks + 1} hidden states "
                             f"(the input of block 0, then {n_blocks} blocks)")
        out.append(int(i) % (n_blocks + 1))
    return tuple(out)


def _kept(layers: tuple[int, ...] | None, n_blocks: int) -> frozenset[int]:
    return frozenset(range(n_blocks + 1) if layers is None else layers)


def _select(kept: dict, layers: tuple[int, ...] | None, n_blocks: int) -> tuple[jax.Array, ...]:
    return tuple(kept[i] for i in (range(n_blocks + 1) if layers is None else layers))


def _pool_index(tokens: jax.Array, t: TextConfig) -> jax.Array:
    """The position each row's text feature is read from (open_clip's text_global_pool)."""
    n, length = tokens.shape
    if t.pool_type == "argmax":
        return jnp.argmax(tokens, axis=-1)
    if t.pool_type == "eos":  # the first eos_id; 0 when a row has none, as torch's argmax of all-False
        return jnp.argmax(tokens == t.eos_id, axis=-1)
    return jnp.full((n,), 0 if t.pool_type == "first" else length - 1)


def runtime_options(dtype: Dtype, attention: str | None, precision: str | None) -> tuple[jnp.dtype, str | None]:
    """Check a model's runtime choices -> (compute dtype, matmul precision): "highest" for float32 unless
    given, so GPUs don't silently use TF32 (PyTorch's fp32 matmuls don't)."""
    dtype = jnp.dtype(dtype)
    if attention not in (None, "xla", "cudnn"):
        raise ValueError(f"attention must be None, 'xla' or 'cudnn'; got {attention!r}")
    # Otherwise the first call fails deep inside XLA's lowering.
    if attention == "cudnn" and dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention='cudnn' needs dtype bfloat16 or float16 (cuDNN's fused attention "
                         f"has no float32 kernel); got dtype {dtype}")
    # Whether cuDNN is there is checked where a program is run or lowered (call_jitted, lower), not
    # here: a model can be built on the CPU and compiled for a GPU target ahead of time.
    if precision is None and dtype == jnp.float32:
        precision = "highest"
    return dtype, precision


def cast_params(model: nnx.Module, param_dtype: Dtype) -> None:
    """Store the model's params in param_dtype (also an abstract model's shapes)."""
    if jnp.dtype(param_dtype) == jnp.float32:
        return

    def cast(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, param_dtype)
        return x.astype(param_dtype)

    nnx.update(model, jax.tree.map(cast, nnx.state(model, nnx.Param)))


class CLIP(TextTowerMixin, nnx.Module):
    """CLIP: `visual` (VisionTransformer or ModifiedResNet), the text tower, `logit_scale`.

    Args:
      config: the architecture.
      dtype: compute dtype (float32, bfloat16, float16). Params keep `param_dtype`.
      param_dtype: dtype of the stored parameters.
      attention: `jax.nn.dot_product_attention` implementation: None (JAX picks), "xla" or "cudnn".
      precision: matmul precision; defaults to "highest" for float32 so GPUs don't silently use TF32
        (PyTorch's fp32 matmuls don't), and to the backend default for 16-bit compute.
    """

    def __init__(
        self,
        config: CLIPConfig,
        *,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        attention: str | None = None,
        precision: str | None = None,
        rngs: nnx.Rngs,
    ):
        dtype, precision = runtime_options(dtype, attention, precision)
        kw = dict(dtype=dtype, precision=precision, attention=attention, rngs=rngs)
        self._init_text_tower(config, **kw)
        self.config = config
        self.attention = attention  # both read where a program is run (check_platform)
        self.compute_dtype = dtype
        self.visual = (ModifiedResNet if config.vision.is_resnet else VisionTransformer)(config, **kw)
        self.logit_scale = nnx.Param(jnp.asarray(jnp.log(1 / 0.07), jnp.float32), **declare(TEMPERATURE))
        cast_params(self, param_dtype)

    def encode_image(self, images) -> jax.Array:
        """images: [N, H, W, 3] float normalized or uint8 pixels -> [N, embed_dim] float32, not normalized.
        Jit-compiled."""
        return call_jitted(self, "image_features", check_images(images, self.config.vision.image_size))

    def encode_text(self, tokens, trim: bool | None = None) -> jax.Array:
        """tokens: int [N, L], L <= context_length -> [N, embed_dim] float32, not normalized. Jit-compiled.

        trim: first cut a host (numpy) batch to the smallest bucket (16/32/48/64/77) that holds every EOT
        (clip_jax.trim_tokens): the same features for less work, one compilation per bucket. None: trim
        when the tower allows it (causal, pooled at EOT); True on a tower that doesn't: ValueError.
        """
        t = self.config.text
        tokens = _trim(check_tokens(tokens, t.context_length, t.vocab_size), t, trim)
        return call_jitted(self, "text_features", tokens)

    # The unjitted bodies, for use inside your own jitted code.

    def image_features(self, images: jax.Array) -> jax.Array:
        """images: [N, H, W, 3], float normalized or uint8 pixels -> [N, embed_dim] float32."""
        if images.dtype == jnp.uint8:
            images = normalize_pixels(images, self.config.image_mean, self.config.image_std)
        return self.visual(images)

    def image_hidden_states(self, images: jax.Array, layers: tuple[int, ...] | None = None) -> TowerStates:
        """images: [N, H, W, 3] float normalized or uint8 pixels -> TowerStates as transformers'
        CLIPVisionModel (output_hidden_states=True). layers: as in text_hidden_states."""
        return image_hidden_states(self.visual, self.config, images, layers)

    def __call__(self, images: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """-> (logits_per_image [N_img, N_txt], logits_per_text [N_txt, N_img]), float32."""
        return logits(self.image_features(images), self.text_features(tokens), self.logit_scale[...])


def _check_vit(config: CLIPConfig) -> None:
    if config.vision.is_resnet:
        raise ValueError("image_states needs a ViT image tower; this model's is a ModifiedResNet (ResNet "
                         "stages have no token sequence, and transformers has no CLIP ResNet)")


def image_hidden_states(visual, config: CLIPConfig, images: jax.Array, layers) -> TowerStates:
    """The body of image_hidden_states for any model holding `visual` (a CLIP or a vision tower)."""
    _check_vit(config)
    if images.dtype == jnp.uint8:
        images = normalize_pixels(images, config.image_mean, config.image_std)
    last, kept, pooled, features = visual.hidden_states(images, _kept(layers, config.vision.layers))
    return TowerStates(last, _select(kept, layers, config.vision.layers), pooled, features)


def l2_normalize(x: jax.Array) -> jax.Array:
    """L2-normalize features along the last axis, in float32 (x / ||x||, as OpenAI does)."""
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def logits(image_features: jax.Array, text_features: jax.Array, logit_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """exp(logit_scale) * normalized image features @ normalized text features^T, in float32."""
    per_image = jnp.exp(logit_scale.astype(jnp.float32)) * jnp.dot(
        l2_normalize(image_features), l2_normalize(text_features).T, precision="highest"
    )
    return per_image, per_image.T


# --- jitted entry points --------------------------------------------------------------------------
#
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
        raise ValueError(f"attention='cudnn' needs an NVIDIA GPU; this program is for {platform!r}")
    if getattr(model, "compute_dtype", None) == jnp.float16 and platform == "cpu":
        raise ValueError("dtype='float16' doesn't run on the CPU (XLA's CPU backend has no float16 matmul "
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


def clip_logits(model: CLIP, images, tokens, trim: bool | None = None) -> tuple[jax.Array, jax.Array]:
    """Jit-compiled CLIP scores.

    images: [N_img, H, W, 3] float normalized or uint8 pixels; tokens: int [N_txt, L], L <= context_length.
    -> (logits_per_image [N_img, N_txt], logits_per_text [N_txt, N_img]), float32:
    exp(logit_scale) * normalized image features @ normalized text features^T.
    trim: as in CLIP.encode_text (by default, numpy tokens are trimmed to their EOT bucket when exact).
    """
    c = model.config
    tokens = _trim(check_tokens(tokens, c.text.context_length, c.text.vocab_size), c.text, trim)
    return call_jitted(model, "__call__", check_images(images, c.vision.image_size), tokens)


def text_states(model, tokens, layers=None) -> TowerStates:
    """Every hidden state of the text tower, jit-compiled: tokens int [N, L] -> TowerStates
    (last_hidden_state, hidden_states, pooled, features), as transformers' CLIPTextModel with
    output_hidden_states=True and no attention_mask.

    layers: which of the layers + 1 hidden states to return, e.g. (-2,) for the penultimate block's
    output (Stable Diffusion 2/XL, LLaVA); None: all. Only those are kept in memory. The tokens are not
    trimmed: the states are per position. hidden_states are the residual stream in the compute dtype;
    last_hidden_state (ln_final's output), pooled and features are float32, as LayerNorm runs in float32.
    """
    t = model.config.text
    tokens = check_tokens(tokens, t.context_length, t.vocab_size)
    return call_jitted(model, "text_hidden_states", tokens, layers=layer_indices(layers, t.layers))


def image_states(model, images, layers=None) -> TowerStates:
    """Every hidden state of a ViT image tower, jit-compiled: images [N, H, W, 3] (float normalized or
    uint8 pixels) -> TowerStates, as transformers' CLIPVisionModel with output_hidden_states=True.
    layers: as in text_states. hidden_states and last_hidden_state (no LayerNorm after the last block)
    are in the compute dtype, pooled and features float32. A ResNet tower raises ValueError."""
    v = model.config.vision
    _check_vit(model.config)
    images = check_images(images, v.image_size)
    return call_jitted(model, "image_hidden_states", images, layers=layer_indices(layers, v.layers))


def _trim(tokens, t: TextConfig, trim: bool | None):
    """Trim a host token batch to its EOT bucket when asked (True) or when exact and possible (None)."""
    if trim is False:
        return tokens
    if not t.trimmable:
        if trim:
            raise ValueError(
                f"trim=True: this text tower (no_causal_mask={t.no_causal_mask}, pool_type={t.pool_type!r}) "
                "reads positions after the EOT, so its tokens can't be trimmed"
            )
        return tokens
    if not isinstance(tokens, np.ndarray):
        if trim:
            raise TypeError("trim=True needs tokens as a numpy array (trimming reads the EOT positions on the host)")
        return tokens  # a device array: reading EOT positions would cost a transfer
    return trim_tokens(tokens, strict=bool(trim))  # auto mode keeps a batch with a row without EOT whole


def functional(model: CLIP, method: str = "__call__") -> tuple[Callable, nnx.State]:
    """The pure form of a model: (fn, params), fn(params, *args) = getattr(model, method)(*args).

    `params` is an ordinary pytree (an nnx.State), so fn works under jax.jit, jax.pmap, shard_map and
    jax.grad. method: "__call__" (images, tokens) -> logits, "image_features" or "text_features".
    """
    graphdef, params = nnx.split(model)

    def fn(params: nnx.State, *args):
        return getattr(nnx.merge(graphdef, params), method)(*args)

    return fn, params


def build(
    config: CLIPConfig,
    params: Mapping[str, Any] | None = None,
    *,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    attention: str | None = None,
    seed: int = 0,
    model_type: type | None = None,
    options: tuple = (),
) -> CLIP:
    """A CLIP holding `params` (flat clip_jax names, e.g. from checkpoint.store.load), cast to
    `param_dtype`; random init from `seed` when params is None. Names and shapes are checked first.
    model_type: another model class taking CLIP's arguments (a single tower, see towers.py), with
    `options`, (name, value) pairs of its own keyword arguments."""
    if params is None:
        return (model_type or CLIP)(config, dtype=dtype, param_dtype=param_dtype, attention=attention,
                                    rngs=nnx.Rngs(seed), **dict(options))
    graphdef, abstract = abstract_model(config, dtype=dtype, param_dtype=param_dtype, attention=attention,
                                        model_type=model_type, options=options)
    check_params(params, param_shapes(abstract))
    leaves = [
        (path, var.replace(jnp.asarray(params[flat_name(path)], dtype=var.dtype)))
        for path, var in nnx.to_flat_state(abstract)
    ]
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def param_shapes(state: nnx.State) -> dict[str, tuple[int, ...]]:
    """Flat param names ("visual.conv1.kernel", ...) -> shapes, for a model's state or abstract state."""
    return {flat_name(path): tuple(v.shape) for path, v in nnx.to_flat_state(state)}


class ConversionError(ClipJaxError, ValueError):
    """A set of params that doesn't fit the model: names every missing, unexpected and mis-shaped tensor at once."""


def check_params(params: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Every expected param (name -> shape, as param_shapes gives) present with its shape, nothing else."""
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    mismatched = [
        f"{k}: {tuple(params[k].shape)}, expected {expected[k]}"
        for k in sorted(set(params) & set(expected))
        if tuple(params[k].shape) != expected[k]
    ]
    raise_if_any(missing, unexpected, mismatched)


def raise_if_any(missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
    """ConversionError listing every problem (20 of each kind), or nothing if there is none."""
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if items:
            shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
            parts.append(f"{len(items)} {label}: {shown}")
    raise ConversionError("; ".join(parts))


class _ShapeOnlyRngs:
    """Stands in for nnx.Rngs when only shapes are wanted: no key is ever drawn."""

    def params(self) -> None:
        return None


@lru_cache(maxsize=16)
def abstract_model(
    config: CLIPConfig, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, attention: str | None = None,
    model_type: type | None = None, options: tuple = (),
) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state of jax.ShapeDtypeStruct) of CLIP(config, ...) (or model_type(config, ...,
    **dict(options))), without allocating it. Cached.

    Built with shape-only initializers rather than nnx.eval_shape: tracing ~300 initializers costs
    about a second for ViT-B/32 (with flax 0.12, time quadratic in the model's size), which would make
    reading a checkpoint slower than torch.load."""
    token = _SHAPES_ONLY.set(True)
    try:
        model = (model_type or CLIP)(config, dtype=dtype, param_dtype=param_dtype, attention=attention,
                                     rngs=_ShapeOnlyRngs(), **dict(options))
    finally:
        _SHAPES_ONLY.reset(token)
    to_shape = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # BatchNorm makes its statistics eagerly
    return nnx.split(jax.tree.map(to_shape, model))


def flat_params(model: CLIP) -> dict[str, jax.Array]:
    """The model's params and BatchNorm statistics by clip_jax name (the converted file's keys)."""
    return {flat_name(path): var[...] for path, var in nnx.to_flat_state(nnx.state(model))}


def model_declarations(model: nnx.Module) -> dict[str, Declared]:
    """Flat clip_jax name -> what model.py declares for it (role, sharding), for a model or abstract model."""
    return declarations(nnx.state(model))


# A flat params dict has no metadata: its names are looked up in what the model declares, for models of
# every variant (digits, the block indices, stand for any index). Tiny widths: only names matter here.
_EVERY_VARIANT = (
    CLIPConfig(
        embed_dim=8,
        vision=VisionConfig(image_size=16, layers=2, width=8, patch_size=8, heads=1, ls_init_value=0.1),
        text=TextConfig(context_length=4, vocab_size=8, width=8, heads=1, layers=2, ls_init_value=0.1, proj_bias=True),
    ),
    CLIPConfig(embed_dim=8, vision=VisionConfig(image_size=32, layers=(1, 2, 1, 1), width=8, patch_size=None),
               text=TextConfig(context_length=4, vocab_size=8, width=8, heads=1, layers=1)),
)


def _pattern(name: str) -> str:
    return ".".join("#" if part.isdigit() else part for part in name.split("."))


@lru_cache(maxsize=1)
def _declared_patterns() -> dict[str, Declared]:
    table: dict[str, Declared] = {}
    for config in _EVERY_VARIANT:
        for name, info in declarations(abstract_model(config)[1]).items():
            table.setdefault(_pattern(name), info)
    return table


def declared_by_name(name: str) -> Declared:
    """What model.py declares for the param `name` (any clip_jax name, of any config), for flat params
    dicts and plain pytrees that carry no metadata. KeyError for a name no clip_jax model has."""
    try:
        return _declared_patterns()[_pattern(name)]
    except KeyError:
        raise KeyError(f"{name}: not a clip_jax parameter name") from None


# --- positional-embedding interpolation -----------------------------------------------------------


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter a (torch: -0.75 plain, -0.5 antialiased, as PIL)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_weights(in_size: int, out_size: int, antialias: bool = True) -> np.ndarray:
    """[out_size, in_size] float64 matrix of torch's F.interpolate(mode="bicubic", align_corners=False)
    along one axis.

    antialias=True is torch's separable "aa" kernel (as PIL): a = -0.5, taps over the input pixels that
    fall inside the support (stretched by the scale when downsampling), weights normalized to sum 1.
    antialias=False is the plain kernel: a = -0.75, four taps with indices clamped at the border.
    jax.image.resize's bicubic matches neither (a = -0.5 and a different border), hence this table.
    """
    scale = in_size / out_size
    out = np.zeros((out_size, in_size))
    if antialias:
        # aten/src/ATen/native/cpu/UpSampleKernel.cpp, _compute_indices_min_size_weights_aa.
        support = 2.0 * scale if scale >= 1.0 else 2.0
        invscale = 1.0 / scale if scale >= 1.0 else 1.0
        for i in range(out_size):
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)  # int() truncates toward zero, like static_cast
            hi = min(int(center + support + 0.5), in_size)
            w = _cubic((np.arange(lo, hi) - center + 0.5) * invscale, -0.5)
            out[i, lo:hi] = w / w.sum() if w.sum() != 0 else w
        return out
    for i in range(out_size):
        real = scale * (i + 0.5) - 0.5  # not clamped at 0 for cubic (area_pixel_compute_source_index)
        base = int(np.floor(real))
        t = real - base
        for k, w in zip(range(-1, 3), _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)):
            out[i, min(max(base + k, 0), in_size - 1)] += w
    return out


def resize_pos_embed(pos_embed, grid_size: int, antialias: bool = True) -> np.ndarray:
    """A ViT's positional embedding [1 + g*g, D] (class token first) -> [1 + grid_size**2, D].

    As open_clip's resize_pos_embed: the class token's row is kept, the g x g grid is resized with
    torch's bicubic F.interpolate(align_corners=False, antialias=True). Computed in float64 and returned
    in the input's dtype.
    """
    pos_embed = np.asarray(pos_embed)
    if pos_embed.ndim != 2:
        raise ValueError(f"positional embedding must be [1 + grid**2, width]; got shape {pos_embed.shape}")
    n, width = pos_embed.shape
    g = math.isqrt(n - 1) if n > 1 else 0
    if g * g + 1 != n:
        raise ValueError(f"positional embedding has {n} rows, not a square grid + 1 class token")
    if grid_size == g:
        return pos_embed
    rows = bicubic_weights(g, grid_size, antialias)
    grid = pos_embed[1:].astype(np.float64).reshape(g, g, width)
    grid = np.einsum("ij,jkd,lk->ild", rows, grid, rows).reshape(grid_size * grid_size, width)
    return np.concatenate([pos_embed[:1], grid.astype(pos_embed.dtype)], axis=0)
