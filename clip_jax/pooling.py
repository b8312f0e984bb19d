"""Pooling heads: OpenAI's attention pool, which ends the ModifiedResNet image tower, and the MAP head
(multihead attention pooling), which ends SigLIP's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .layers import MLP, MultiheadAttention, dense, layer_norm, matmul_precision, normal_param
from .roles import EMBEDDING, MODEL


class AttentionPool2d(nnx.Module):
    """Attention pooling where only the mean token queries the feature map."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int, *, dtype, precision,
                 attention, rngs):
        self.num_heads = num_heads
        self.attention = attention
        self.precision = precision
        self.positional_embedding = normal_param(rngs, (spacial_dim**2 + 1, embed_dim), embed_dim**-0.5, EMBEDDING)
        std = embed_dim**-0.5
        # Megatron split: heads across devices, as in MultiheadAttention.
        self.k_proj = dense(embed_dim, embed_dim, dtype, precision, rngs, std=std, axes=(None, MODEL))
        self.q_proj = dense(embed_dim, embed_dim, dtype, precision, rngs, std=std, axes=(None, MODEL))
        self.v_proj = dense(embed_dim, embed_dim, dtype, precision, rngs, std=std, axes=(None, MODEL))
        self.c_proj = dense(embed_dim, output_dim, dtype, precision, rngs, std=std, axes=(MODEL, None))

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
        with matmul_precision(self.precision):
            out = jax.nn.dot_product_attention(q, k, v, implementation=self.attention)
        return self.c_proj(out.reshape(n, c))


class MAPHead(nnx.Module):
    """Multihead attention pooling (big_vision's MAPHead, transformers' SiglipMultiheadAttentionPoolingHead,
    timm's AttentionPoolLatent): a learned probe attends to every token, then a residual MLP block
    without a LayerNorm before the attention: out = a + mlp(ln(a)), a = attn(probe, x, x).

    Args: width, heads, mlp_width, eps, activation as the tower's blocks; dtype, precision, attention as
    layers.MultiheadAttention's."""

    def __init__(self, width: int, heads: int, mlp_width: int, *, eps: float, activation: str, dtype, precision,
                 attention, rngs: nnx.Rngs):
        self.dtype = dtype
        self.probe = normal_param(rngs, (1, 1, width), width**-0.5, EMBEDDING)
        self.attn = MultiheadAttention(width, heads, dtype=dtype, precision=precision, attention=attention, rngs=rngs)
        self.ln = layer_norm(width, eps, rngs)
        self.mlp = MLP(width, mlp_width, activation, dtype=dtype, precision=precision, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, L, width] -> [N, width] float32."""
        probe = jnp.broadcast_to(self.probe[...].astype(self.dtype), (x.shape[0], 1, x.shape[-1]))
        a = self.attn.cross(probe, x.astype(self.dtype))
        out = a.astype(jnp.float32) + self.mlp(self.ln(a).astype(self.dtype)).astype(jnp.float32)
        return out[:, 0]
