"""clip_jax: OpenAI CLIP in JAX/Flax NNX.

    model, preprocess = clip_jax.load("ViT-B-32.safetensors")
    logits_per_image, logits_per_text = clip_jax.clip_logits(model, images, clip_jax.tokenize(texts))
"""

from .checkpoint import convert
from .config import CLIPConfig, TextConfig, VisionConfig, config_from_state_dict
from .hub import available_models, load
from .image import ImageError, image_transform, load_images
from .model import CLIP, build, clip_logits, flat_params, functional, normalize
from .tokenizer import tokenize, trim_tokens

__all__ = [
    "CLIP", "CLIPConfig", "TextConfig", "VisionConfig", "available_models", "build", "clip_logits",
    "config_from_state_dict", "convert", "flat_params", "functional", "ImageError", "image_transform", "load",
    "load_images", "normalize", "tokenize", "trim_tokens",
]
