"""SigLIP and SigLIP 2 (fixed resolution) in flax.nnx, built from the shared layers: transformers'
`SiglipModel`, open_clip's timm-tower SigLIP and big_vision's `two_towers` with the same numbers.

    model = Siglip(SiglipConfig.from_name("So400m/14-384"), rngs=nnx.Rngs(0))
    per_image, per_text = model(images, tokens)          # exp(t) * cos + b, [N, M] and [M, N]

`visual`: a ViT without class token (a biased patch convolution, learned positions, pre-LN blocks,
`ln_post` on every token) ending in a MAP head; no projection. `text`: open_clip's text tower with its
SigLIP options (bidirectional, the last position pooled, a Linear head with bias), under open_clip's
names. Names follow roles (checkpoint/torch_names); the formats SigLIP comes in (transformers, open_clip's
timm trunk, big_vision) are tables over them (checkpoint/siglip_names).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .calls import call_jitted
from .checks import check_tokens
from .image import normalize_pixels
from .layers import Dtype, Transformer, conv2d, layer_norm, lazy_init, normal_param
from .model import CLIP, cast_params, image_hidden_states, logits, runtime_options
from .pooling import MAPHead
from .roles import BIAS, EMBEDDING, KERNEL, LOGIT_BIAS, TEMPERATURE, declare
from .siglip_config import SiglipConfig
from .states import TowerStates
from .text import TextTowerMixin
from .towers import MissingTowerError

__all__ = ["Siglip", "SiglipText", "SiglipTextModel", "SiglipVision", "SiglipVisionModel", "sigmoid_logits"]


class SiglipVision(nnx.Module):
    """The image tower: images [N, H, W, 3] normalized -> the MAP head's output [N, width] float32."""

    def __init__(self, cfg: SiglipConfig, *, dtype, precision, attention, rngs: nnx.Rngs):
        v, eps = cfg.vision, cfg.layer_norm_eps
        self.dtype = dtype
        self.conv1 = nnx.Conv(
            3, v.width, (v.patch_size, v.patch_size), strides=v.patch_size, padding="VALID", use_bias=True,
            dtype=dtype, precision=precision, kernel_init=lazy_init(nnx.initializers.lecun_normal()),
            bias_init=lazy_init(nnx.initializers.zeros), rngs=rngs,
            kernel_metadata=declare(KERNEL, None, None, None, None), bias_metadata=declare(BIAS, None))
        self.positional_embedding = normal_param(rngs, (v.grid_size**2, v.width), v.width**-0.5, EMBEDDING)
        block = dict(eps=eps, activation=v.activation, dtype=dtype, precision=precision, attention=attention, rngs=rngs)
        self.transformer = Transformer(v.width, v.layers, v.heads, v.mlp_width, **block)
        self.ln_post = layer_norm(v.width, eps, rngs)
        self.attn_pool = MAPHead(v.width, v.heads, v.mlp_width, **block)

    def _tokens(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, 3] normalized -> the transformer's input [N, grid**2, width]."""
        x = conv2d(self.conv1, x.astype(self.dtype)) + self.conv1.bias[...].astype(self.dtype)
        n, gh, gw, width = x.shape
        return x.reshape(n, gh * gw, width) + self.positional_embedding[...].astype(self.dtype)

    def hidden_states(self, images: jax.Array, keep: frozenset[int]) -> tuple:
        """images [N, H, W, 3] normalized -> (last_hidden_state, {i: hidden state i}, pooled, features),
        as transformers' SiglipVisionModel: last_hidden_state is ln_post of every token (float32), pooled
        the MAP head's output, which is also the image's features."""
        x, kept = self.transformer.hidden_states(self._tokens(images), keep)
        last = self.ln_post(x)
        pooled = self.attn_pool(last)
        return last, kept, pooled, pooled

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, 3] normalized -> [N, width] float32."""
        return self.attn_pool(self.ln_post(self.transformer(self._tokens(x))).astype(self.dtype))


class SiglipText(TextTowerMixin, nnx.Module):
    """The text tower, with open_clip's names (token_embedding, positional_embedding, transformer,
    ln_final, text_projection) and SigLIP's options from its SiglipTextConfig: tokens int [N, L] with L
    == context_length -> [N, embed_dim] float32."""

    def __init__(self, cfg: SiglipConfig, *, dtype, precision, attention, rngs: nnx.Rngs):
        t = cfg.text
        self._init_text_tower(t, embed_dim=cfg.embed_dim, eps=cfg.layer_norm_eps, activation=t.activation,
                              dtype=dtype, precision=precision, attention=attention, rngs=rngs)

    def text_hidden_states(self, tokens: jax.Array, layers: tuple[int, ...] | None = None) -> TowerStates:
        """As transformers' SiglipTextModel: pooled (its pooler_output) is the head's output, the features."""
        states = TextTowerMixin.text_hidden_states(self, tokens, layers)
        return states._replace(pooled=states.features)


def sigmoid_logits(image_features: jax.Array, text_features: jax.Array, logit_scale: jax.Array,
                   logit_bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    """exp(logit_scale) * cos(image, text) + logit_bias, in float32: (per image [N, M], per text [M, N]),
    transformers' logits_per_image / logits_per_text. sigmoid() of them are SigLIP's probabilities."""
    per_image, _ = logits(image_features, text_features, logit_scale)
    per_image = per_image + logit_bias.astype(jnp.float32)
    return per_image, per_image.T


def _runtime(module: nnx.Module, config: SiglipConfig, dtype: Dtype, attention: str | None,
             precision: str | None, rngs: nnx.Rngs) -> dict:
    dtype, precision = runtime_options(dtype, attention, precision)
    module.config = config
    module.attention = attention  # both read where a program is run (calls.check_platform)
    module.compute_dtype = dtype
    return dict(dtype=dtype, precision=precision, attention=attention, rngs=rngs)


class Siglip(nnx.Module):
    """SigLIP: `visual` (SiglipVision), `text` (SiglipText), `logit_scale` (t) and `logit_bias` (b).

    Args as clip_jax.CLIP's: config; dtype (compute), param_dtype (stored params), attention
    (dot_product_attention's implementation), precision ("highest" for float32 unless given).
    """

    def __init__(self, config: SiglipConfig, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                 attention: str | None = None, precision: str | None = None, rngs: nnx.Rngs):
        kw = _runtime(self, config, dtype, attention, precision, rngs)
        self.visual = SiglipVision(config, **kw)
        self.text = SiglipText(config, **kw)
        # big_vision's init: t = log(10), b = -10 (the "init_logit_bias" of open_clip's SigLIP configs)
        self.logit_scale = nnx.Param(jnp.asarray(jnp.log(10.0), jnp.float32), **declare(TEMPERATURE))
        self.logit_bias = nnx.Param(jnp.asarray(-10.0, jnp.float32), **declare(LOGIT_BIAS))
        cast_params(self, param_dtype)

    encode_image = CLIP.encode_image

    def encode_text(self, tokens, trim: bool | None = None) -> jax.Array:
        """tokens: int [N, context_length] -> [N, embed_dim] float32, not normalized. Jit-compiled. The
        tokens are never trimmed: the text tower attends to its padding and pools the last position."""
        t = self.config.text
        return call_jitted(self, "text_features", check_tokens(tokens, t.context_length, t.vocab_size))

    def image_features(self, images: jax.Array) -> jax.Array:
        """images: [N, H, W, 3], float normalized or uint8 pixels -> [N, width] float32."""
        if images.dtype == jnp.uint8:
            c = self.config
            images = normalize_pixels(images, c.image_mean, c.image_std, processor=c.image_processor)
        return self.visual(images)

    def text_features(self, tokens: jax.Array) -> jax.Array:
        """tokens: int [N, context_length] -> [N, embed_dim] float32."""
        return self.text.text_features(tokens)

    def image_hidden_states(self, images: jax.Array, layers: tuple[int, ...] | None = None) -> TowerStates:
        """TowerStates as transformers' SiglipVisionModel with output_hidden_states=True."""
        return image_hidden_states(self.visual, self.config, images, layers)

    def text_hidden_states(self, tokens: jax.Array, layers: tuple[int, ...] | None = None) -> TowerStates:
        """TowerStates as transformers' SiglipTextModel with output_hidden_states=True (no attention_mask)."""
        return self.text.text_hidden_states(tokens, layers)

    def __call__(self, images: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """-> (logits_per_image [N_img, N_txt], logits_per_text [N_txt, N_img]), float32, bias included."""
        return sigmoid_logits(self.image_features(images), self.text_features(tokens), self.logit_scale[...],
                              self.logit_bias[...])


def _missing(model: nnx.Module, method: str) -> MissingTowerError:
    has, lacks = ("text", "image") if isinstance(model, SiglipTextModel) else ("image", "text")
    return MissingTowerError(f"{type(model).__name__}.{method}: this model is a single {has} tower (as "
                             f"transformers' Siglip{has.capitalize() if has == 'text' else 'Vision'}Model) "
                             f"and has no {lacks} tower")


def _lacks(method: str):
    """A single tower's method for what it lacks: raises MissingTowerError naming it."""
    def refuse(self, *args, **kwargs):
        raise _missing(self, method)
    return refuse


class SiglipTextModel(nnx.Module):
    """The text tower alone (transformers' SiglipTextModel), as `text`. Arguments as Siglip's;
    `projection` is accepted for the family's single-tower interface (SigLIP's head is always there)."""

    def __init__(self, config: SiglipConfig, *, projection: bool = True, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32, attention: str | None = None, precision: str | None = None,
                 rngs: nnx.Rngs):
        self.text = SiglipText(config, **_runtime(self, config, dtype, attention, precision, rngs))
        cast_params(self, param_dtype)

    encode_text = Siglip.encode_text
    text_features = Siglip.text_features
    text_hidden_states = Siglip.text_hidden_states

    encode_image = _lacks("encode_image")
    image_features = _lacks("image_features")
    image_hidden_states = _lacks("image_hidden_states")
    __call__ = _lacks("__call__ (logits need both towers)")


class SiglipVisionModel(nnx.Module):
    """The image tower alone (transformers' SiglipVisionModel), as `visual`. Arguments as SiglipTextModel's."""

    def __init__(self, config: SiglipConfig, *, projection: bool = True, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32, attention: str | None = None, precision: str | None = None,
                 rngs: nnx.Rngs):
        self.visual = SiglipVision(config, **_runtime(self, config, dtype, attention, precision, rngs))
        cast_params(self, param_dtype)

    encode_image = Siglip.encode_image
    image_features = Siglip.image_features
    image_hidden_states = Siglip.image_hidden_states

    encode_text = _lacks("encode_text")
    text_features = _lacks("text_features")
    text_hidden_states = _lacks("text_hidden_states")
    __call__ = _lacks("__call__ (logits need both towers)")


KINDS = {"clip": Siglip, "text": SiglipTextModel, "vision": SiglipVisionModel}
