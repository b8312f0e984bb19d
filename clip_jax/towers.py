"""Single towers: a text-only or a vision-only model (transformers' CLIPTextModel[WithProjection] and
CLIPVisionModel[WithProjection], Stable Diffusion's `text_encoder/` folders).

A tower has what its checkpoint has, under the names a full CLIP gives them (`token_embedding`,
`transformer.resblocks...`, `visual.conv1`, ...), and a full CLIP's calls for that tower: the jitted
`encode_text` / `encode_image`, the unjitted `text_features` / `image_features`, `clip_jax.text_states` /
`clip_jax.image_states`, `clip_jax.functional(tower, "text_features")`, ShardedCLIP's `encode_text` /
`encode_image`. Without a projection there are no features: `encode_*` raise, the states' `features` is
None. Asking a tower for the other one raises MissingTowerError.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .config import CLIPConfig
from .errors import ClipJaxError, InputError
from .layers import Dtype
from .model import CLIP, cast_params, runtime_options
from .resnet import ModifiedResNet
from .text import TextTowerMixin
from .vit import VisionTransformer


class MissingTowerError(ClipJaxError, ValueError):
    """A single-tower model was asked for the tower it doesn't have."""


def _missing(model, method: str) -> MissingTowerError:
    has, lacks, cls = ("text", "image", "Text") if isinstance(model, TextTower) else ("image", "text", "Vision")
    return MissingTowerError(f"{type(model).__name__}.{method}: this model is a single {has} tower (as "
                             f"transformers' CLIP{cls}Model) and has no {lacks} tower")


class TextTower(TextTowerMixin, nnx.Module):
    """The text tower alone: token_embedding, positional_embedding, transformer, ln_final, and
    text_projection when `projection`. Arguments as CLIP's."""

    def __init__(self, config: CLIPConfig, *, projection: bool = True, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32, attention: str | None = None, precision: str | None = None,
                 rngs: nnx.Rngs):
        dtype, precision = runtime_options(dtype, attention, precision)
        self._init_text_tower(config.text, embed_dim=config.embed_dim, eps=config.layer_norm_eps,
                              activation=config.activation, dtype=dtype, precision=precision, attention=attention,
                              rngs=rngs, projection=projection)
        self.config = config
        self.attention = attention  # both read where a program is run (check_platform)
        self.compute_dtype = dtype
        cast_params(self, param_dtype)

    encode_text = CLIP.encode_text

    def encode_image(self, *args, **kwargs):
        raise _missing(self, "encode_image")

    def image_features(self, *args, **kwargs):
        raise _missing(self, "image_features")

    def image_hidden_states(self, *args, **kwargs):
        raise _missing(self, "image_hidden_states")

    def __call__(self, *args, **kwargs):
        raise _missing(self, "__call__ (logits need both towers)")


class VisionTower(nnx.Module):
    """The image tower alone, as `visual` (names as in a CLIP: visual.conv1, visual.transformer...), with
    visual.proj when `projection`. Arguments as CLIP's."""

    def __init__(self, config: CLIPConfig, *, projection: bool = True, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32, attention: str | None = None, precision: str | None = None,
                 rngs: nnx.Rngs):
        dtype, precision = runtime_options(dtype, attention, precision)
        kw = dict(dtype=dtype, precision=precision, attention=attention, rngs=rngs)
        if config.vision.is_resnet:
            if not projection:
                raise InputError("a ResNet image tower always ends in its attention pool's projection")
            self.visual = ModifiedResNet(config, **kw)
        else:
            self.visual = VisionTransformer(config, projection=projection, **kw)
        self.config = config
        self.attention = attention  # both read where a program is run (check_platform)
        self.compute_dtype = dtype
        self.projected = projection
        cast_params(self, param_dtype)

    encode_image = CLIP.encode_image
    image_hidden_states = CLIP.image_hidden_states

    def image_features(self, images: jax.Array) -> jax.Array:
        """images: [N, H, W, 3], float normalized or uint8 pixels -> [N, embed_dim] float32."""
        if not self.projected:
            raise InputError("this image tower has no projection (transformers' CLIPVisionModel): read "
                             "clip_jax.image_states(model, images).pooled instead of its features")
        return CLIP.image_features(self, images)

    def encode_text(self, *args, **kwargs):
        raise _missing(self, "encode_text")

    def text_features(self, *args, **kwargs):
        raise _missing(self, "text_features")

    def text_hidden_states(self, *args, **kwargs):
        raise _missing(self, "text_hidden_states")

    def __call__(self, *args, **kwargs):
        raise _missing(self, "__call__ (logits need both towers)")

KINDS = {"clip": CLIP, "text": TextTower, "vision": VisionTower}


def kind_of(model) -> tuple[str, bool]:
    """(kind, projection) of a model: ("clip", True), ("text", ...) or ("vision", ...)."""
    if isinstance(model, TextTower):
        return "text", model.text_projected
    if isinstance(model, VisionTower):
        return "vision", model.projected
    if isinstance(model, CLIP):
        return "clip", True
    raise TypeError(f"expected a clip_jax CLIP, TextTower or VisionTower, got {type(model).__name__}")
