"""The text tower's parts and calls, as OpenAI's CLIP keeps them at its top level (`token_embedding`,
`transformer`, `ln_final`, `text_projection`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .config import TextConfig
from .errors import InputError
from .layers import Transformer, dense, layer_norm, lazy_init, normal_param, project, take_rows
from .roles import EMBEDDING, PROJECTION, TOKEN_EMBEDDING, declare
from .states import TowerStates, kept_layers, select_states


class TextTowerMixin:
    """The text tower's parts and calls, for a module that holds them at its top level: in OpenAI's CLIP
    `token_embedding`, `transformer.resblocks.0...` and `ln_final` sit beside `visual`, so CLIP (and the
    single TextTower) mix this in and keep those PyTorch names."""

    def _init_text_tower(self, t: TextConfig, *, embed_dim: int, eps: float, activation: str, dtype, precision,
                         attention, rngs: nnx.Rngs, projection: bool = True) -> None:
        """t: the tower's config (CLIP's TextConfig, or another family's with the same fields); embed_dim:
        the projection's output; eps, activation: every LayerNorm's and MLP's."""
        self.dtype = dtype
        self.precision = precision
        self.token_embedding = nnx.Embed(
            t.vocab_size, t.width, dtype=dtype, embedding_init=lazy_init(nnx.initializers.normal(0.02)), rngs=rngs,
            embedding_metadata=declare(TOKEN_EMBEDDING, None, None),
        )
        self.positional_embedding = normal_param(rngs, (t.context_length, t.width), 0.01, EMBEDDING)
        self.transformer = Transformer(
            t.width, t.layers, t.heads, t.mlp_width, eps=eps, activation=activation,
            ls_init_value=t.ls_init_value, dtype=dtype, precision=precision, attention=attention, rngs=rngs,
        )
        self.ln_final = layer_norm(t.width, eps, rngs)
        # None without a projection, as transformers' CLIPTextModel. open_clip's proj_bias: an nn.Linear
        # (weight [out, in] + bias) instead of a matrix.
        if projection and t.proj_bias:
            self.text_projection = dense(t.width, embed_dim, dtype, precision, rngs, std=t.width**-0.5)
        elif projection:
            self.text_projection = normal_param(rngs, (t.width, embed_dim), t.width**-0.5, PROJECTION)
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
        keep = kept_layers(layers, t.layers)
        x, kept = self.transformer.hidden_states(self._embed(tokens), keep, causal=t.causal)
        last = self.ln_final(x)
        pooled = take_rows(last, _pool_index(tokens, t))
        features = self._text_project(pooled) if self.text_projected else None
        return TowerStates(last, select_states(kept, layers, t.layers), pooled, features)

    def _embed(self, tokens: jax.Array) -> jax.Array:
        """tokens: int [N, L] -> the transformer's input [N, L, width]."""
        t = self.text_config
        length = tokens.shape[1]
        if length != t.context_length and not t.trimmable:
            raise InputError(
                f"this text tower (no_causal_mask={t.no_causal_mask}, pool_type={t.pool_type!r}) needs all "
                f"{t.context_length} token columns; got {length}: don't trim its tokens"
            )
        return self.token_embedding(tokens) + self.positional_embedding[:length].astype(self.dtype)

    def _text_project(self, x: jax.Array) -> jax.Array:
        """Pooled [N, width] float32 -> [N, embed_dim] float32."""
        if not self.text_projected:
            raise InputError("this text tower has no projection (transformers' CLIPTextModel): read "
                             "clip_jax.text_states(model, tokens).pooled instead of its features")
        if self.text_config.proj_bias:
            proj, bias = self.text_projection.kernel[...], self.text_projection.bias[...]
            return project(x, proj, self.dtype, self.precision) + bias.astype(jnp.float32)
        return project(x, self.text_projection[...], self.dtype, self.precision)


def _pool_index(tokens: jax.Array, t: TextConfig) -> jax.Array:
    """The position each row's text feature is read from (open_clip's text_global_pool)."""
    n, length = tokens.shape
    if t.pool_type == "argmax":
        return jnp.argmax(tokens, axis=-1)
    if t.pool_type == "eos":  # the first eos_id; 0 when a row has none, as torch's argmax of all-False
        return jnp.argmax(tokens == t.eos_id, axis=-1)
    return jnp.full((n,), 0 if t.pool_type == "first" else length - 1)
