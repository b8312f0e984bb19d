"""The Vision Transformer image tower (`visual` in OpenAI's CLIP), with open_clip's options (no_ln_pre,
pool_type, final_ln_after_pool, LayerScale)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .config import CLIPConfig, VisionConfig
from .layers import Identity, Transformer, conv2d, layer_norm, lazy_init, normal_param, project
from .roles import EMBEDDING, KERNEL, PROJECTION, declare


class VisionTransformer(nnx.Module):
    def __init__(self, cfg: CLIPConfig, *, dtype, precision, attention, rngs: nnx.Rngs, projection: bool = True):
        v: VisionConfig = cfg.vision
        self.dtype = dtype
        scale = v.width**-0.5
        self.conv1 = nnx.Conv(
            3, v.width, (v.patch_size, v.patch_size), strides=v.patch_size, padding="VALID", use_bias=False,
            dtype=dtype, precision=precision, kernel_init=lazy_init(nnx.initializers.lecun_normal()), rngs=rngs,
            # Replicated: split output channels would split the residual stream's width, and every
            # LayerNorm would all-reduce its statistics over "model".
            kernel_metadata=declare(KERNEL, None, None, None, None),
        )
        self.class_embedding = normal_param(rngs, (v.width,), scale, EMBEDDING)
        self.positional_embedding = normal_param(rngs, (v.grid_size**2 + 1, v.width), scale, EMBEDDING)
        # open_clip's no_ln_pre: nn.Identity, no params
        self.ln_pre = Identity() if v.no_ln_pre else layer_norm(v.width, cfg.layer_norm_eps, rngs)
        self.transformer = Transformer(
            v.width, v.layers, v.heads, v.mlp_width, eps=cfg.layer_norm_eps, activation=cfg.activation,
            ls_init_value=v.ls_init_value, dtype=dtype, precision=precision, attention=attention, rngs=rngs,
        )
        self.ln_post = layer_norm(v.width, cfg.layer_norm_eps, rngs)
        if projection:  # transformers' CLIPVisionModel has none
            self.proj = normal_param(rngs, (v.width, cfg.embed_dim), scale, PROJECTION)
        self.has_projection = projection
        self.precision = precision
        self.pool_type = v.pool_type
        self.final_ln_after_pool = v.final_ln_after_pool

    def _tokens(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, 3] normalized -> the transformer's input [N, 1 + grid**2, width]."""
        x = conv2d(self.conv1, x.astype(self.dtype))  # [N, grid, grid, width]
        n, gh, gw, width = x.shape
        x = x.reshape(n, gh * gw, width)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (n, 1, width))
        x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...].astype(x.dtype)
        return self.ln_pre(x).astype(self.dtype)  # LayerNorm returns float32

    def _pool(self, x: jax.Array) -> jax.Array:
        """The transformer's output [N, L, width] -> the pooled vector [N, width] float32, before `proj`."""
        if self.pool_type == "tok":
            return self.ln_post(x[:, 0])
        if self.final_ln_after_pool:  # as open_clip's CLIPA models: the mean of the patch tokens, then LN
            return self.ln_post(x[:, 1:].astype(jnp.float32).mean(axis=1))
        return self.ln_post(x[:, 1:]).mean(axis=1)  # LN on every token, then the mean of the patch tokens

    def hidden_states(self, images: jax.Array, keep: tuple[int, ...]) -> tuple:
        """images [N, H, W, 3] normalized -> (last_hidden_state, {i: hidden state i}, pooled, features or
        None), as transformers' CLIPVisionModel: last_hidden_state is the last block's output (no
        ln_post), pooled is ln_post of the class token."""
        x, kept = self.transformer.hidden_states(self._tokens(images), keep)
        pooled = self._pool(x)
        features = project(pooled, self.proj[...], self.dtype, self.precision) if self.has_projection else None
        return x, kept, pooled, features

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, 3] normalized -> [N, embed_dim] float32."""
        x = self._tokens(x)
        if self.pool_type == "tok":  # LayerNorm is per token: normalizing only the class token is the same
            x = self.ln_post(self.transformer(x, pool=jnp.zeros((x.shape[0],), jnp.int32)))
        else:
            x = self._pool(self.transformer(x))
        return project(x, self.proj[...], self.dtype, self.precision)
