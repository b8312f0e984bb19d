"""CLIP in flax.nnx, laid out like OpenAI's `clip/model.py`: the CLIP family on top of its towers.

Every attribute path mirrors the PyTorch name (`visual.transformer.resblocks.3.attn.in_proj`, `ln_final`,
`visual.layer2.0.downsample.0`, ...), and every parameter is declared with its role and sharding where
it is made (roles.py), so converting a checkpoint is a rename of leaves by role (checkpoint/torch_names.py).
The parts: layers.py (attention, MLP, residual block, transformer stack), vit.py and resnet.py (the image
towers), pooling.py (attention pool), text.py (the text tower), states.py (hidden states), calls.py
(the jitted calls), param_check.py, pos_embed.py; the name registry for flat params is
checkpoint/declared.py. Here: the CLIP module, its jitted public calls (clip_logits, text_states,
image_states), functional, build and abstract_model, and the declarations of a model. Images are NHWC;
the feature normalization and the logits are float32 whatever the compute dtype.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .calls import call_jitted
from .checks import check_images, check_tokens
from .config import CLIPConfig, TextConfig
from .errors import InputError
from .families import family_of
from .image import normalize_pixels
from .layers import SHAPES_ONLY, Dtype
from .param_check import check_params
from .resnet import ModifiedResNet
from .roles import TEMPERATURE, Declared, declarations, declare, flat_name
from .states import TowerStates, kept_layers, layer_indices, select_states
from .text import TextTowerMixin
from .tokenizer import trim_tokens
from .vit import VisionTransformer


def runtime_options(dtype: Dtype, attention: str | None, precision: str | None) -> tuple[jnp.dtype, str | None]:
    """Check a model's runtime choices -> (compute dtype, matmul precision): "highest" for float32 unless
    given, so GPUs don't silently use TF32 (PyTorch's fp32 matmuls don't)."""
    dtype = jnp.dtype(dtype)
    if attention not in (None, "xla", "cudnn"):
        raise InputError(f"attention must be None, 'xla' or 'cudnn'; got {attention!r}")
    # Otherwise the first call fails deep inside XLA's lowering.
    if attention == "cudnn" and dtype not in (jnp.bfloat16, jnp.float16):
        raise InputError(f"attention='cudnn' needs dtype bfloat16 or float16 (cuDNN's fused attention "
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
        self._init_text_tower(config.text, embed_dim=config.embed_dim, eps=config.layer_norm_eps,
                              activation=config.activation, **kw)
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
        raise InputError("image_states needs a ViT image tower; this model's is a ModifiedResNet (ResNet "
                         "stages have no token sequence, and transformers has no CLIP ResNet)")


def image_hidden_states(visual, config: CLIPConfig, images: jax.Array, layers) -> TowerStates:
    """The body of image_hidden_states for any model holding `visual` (a CLIP or a vision tower)."""
    _check_vit(config)
    if images.dtype == jnp.uint8:
        # the processor whose float32 steps the weights were released with (SigLIP's transformers ones)
        images = normalize_pixels(images, config.image_mean, config.image_std,
                                  processor=getattr(config, "image_processor", "open_clip"))
    last, kept, pooled, features = visual.hidden_states(images, kept_layers(layers, config.vision.layers))
    return TowerStates(last, select_states(kept, layers, config.vision.layers), pooled, features)


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
            raise InputError(
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
    """The two-tower model of `config`'s family (a CLIP for a CLIPConfig) holding `params` (flat
    clip_jax names, e.g. from checkpoint.store.load), cast to `param_dtype`; random init from `seed` when
    params is None. A value may be anything np.asarray reads (a LazyArray read from its file as it is
    placed: shapes are checked from its .shape before any is read). Names and shapes are checked first.
    model_type: another model class taking the config (a single tower: Family.build_args), with
    `options`, (name, value) pairs of its own keyword arguments."""
    if params is None:
        cls = model_type or family_of(config).models["clip"]
        return cls(config, dtype=dtype, param_dtype=param_dtype, attention=attention, rngs=nnx.Rngs(seed),
                   **dict(options))
    graphdef, abstract = abstract_model(config, dtype=dtype, param_dtype=param_dtype, attention=attention,
                                        model_type=model_type, options=options)
    check_params(params, param_shapes(abstract))
    with _collection_paused():
        return nnx.merge(graphdef, nnx.from_flat_state(_placed(params, nnx.to_flat_state(abstract))))


_PLACE_BATCH = 64 << 20  # bytes of host arrays placed by one device_put (one call per leaf costs ~0.1 ms)


def _placed(params: Mapping[str, Any], flat: Any) -> list:
    """[(path, variable holding its array)] for the abstract model's flat state, one weight at a time:
    a value that is no array yet (a LazyArray, read from its file by np.asarray) is read here in the
    variable's dtype, written once into a 64-byte-aligned buffer that the CPU backend takes as the
    model's array without copying it; host arrays are placed a batch at a time (on an accelerator each
    batch's host copies are let go once placed)."""
    leaves, batch, size = [], [], 0

    def place() -> None:
        for ((path, var), _), array in zip(batch, jax.device_put([host for _, host in batch])):
            leaves.append((path, var.replace(array)))
        batch.clear()

    for path, var in flat:
        value = params[flat_name(path)]
        if isinstance(value, jax.Array):
            leaves.append((path, var.replace(jnp.asarray(value, dtype=var.dtype))))
            continue
        host = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=var.dtype)
        batch.append(((path, var), host if host.dtype == var.dtype else host.astype(var.dtype)))
        size += host.nbytes
        del value, host
        if size >= _PLACE_BATCH:
            place()
            size = 0
    place()
    return leaves


@contextmanager
def _collection_paused():
    """Python's cyclic garbage collector off while a model is made: the ~300 modules and variables it
    allocates set off a full collection over every object of the process (0.15 s of a ViT-B/32 load
    after jax and flax are imported) and are all kept, so the collection finds nothing of theirs."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def param_shapes(state: nnx.State) -> dict[str, tuple[int, ...]]:
    """Flat param names ("visual.conv1.kernel", ...) -> shapes, for a model's state or abstract state."""
    return {flat_name(path): tuple(v.shape) for path, v in nnx.to_flat_state(state)}


class _ShapeOnlyRngs:
    """Stands in for nnx.Rngs when only shapes are wanted: no key is ever drawn."""

    def params(self) -> None:
        return None


@lru_cache(maxsize=16)
def abstract_model(
    config: CLIPConfig, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, attention: str | None = None,
    model_type: type | None = None, options: tuple = (),
) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state of jax.ShapeDtypeStruct) of the two-tower model of `config`'s family (or
    model_type(config, ..., **dict(options))), without allocating it. Cached.

    Built with shape-only initializers rather than nnx.eval_shape: tracing ~300 initializers costs
    about a second for ViT-B/32 (with flax 0.12, time quadratic in the model's size), which would make
    reading a checkpoint slower than torch.load."""
    token = SHAPES_ONLY.set(True)
    try:
        with _collection_paused():
            cls = model_type or family_of(config).models["clip"]
            model = cls(config, dtype=dtype, param_dtype=param_dtype, attention=attention, rngs=_ShapeOnlyRngs(),
                        **dict(options))
            to_shape = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # BatchNorm makes its statistics eagerly
            return nnx.split(jax.tree.map(to_shape, model))
    finally:
        SHAPES_ONLY.reset(token)


def flat_params(model: CLIP) -> dict[str, jax.Array]:
    """The model's params and BatchNorm statistics by clip_jax name (the converted file's keys)."""
    return {flat_name(path): var[...] for path, var in nnx.to_flat_state(nnx.state(model))}


def model_declarations(model: nnx.Module) -> dict[str, Declared]:
    """Flat clip_jax name -> what model.py declares for it (role, sharding), for a model or abstract model."""
    return declarations(nnx.state(model))
