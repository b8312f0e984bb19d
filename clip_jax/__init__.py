"""clip_jax: OpenAI CLIP in JAX/Flax NNX.

    model, preprocess = clip_jax.load("ViT-B-32.safetensors")
    logits_per_image, logits_per_text = clip_jax.clip_logits(model, images, clip_jax.tokenize(texts))
"""

from .checkpoint import convert
from .checkpoint.export import export
from .compilation import enable_compilation_cache, warmup
from .config import CLIPConfig, TextConfig, VisionConfig, config_from_open_clip, config_from_state_dict
from .hub import available_models, load, load_params
from .image import ImageError, image_transform, load_images
from .model import (
    CLIP, TowerStates, build, clip_logits, flat_params, functional, image_states, l2_normalize, resize_pos_embed,
    text_states,
)
from .parallel import ShardedCLIP, make_mesh, pmap_logits
from .tokenizer import tokenize, trim_tokens
from .towers import MissingTowerError, TextTower, VisionTower
from .zeroshot import IMAGENET_TEMPLATES, zeroshot_classifier

__all__ = [
    "CLIP", "CLIPConfig", "IMAGENET_TEMPLATES", "ImageError", "MissingTowerError", "ShardedCLIP", "TextConfig",
    "TextTower", "TowerStates", "VisionConfig", "VisionTower",
    "available_models", "build", "clip_logits", "config_from_open_clip", "config_from_state_dict", "convert",
    "enable_compilation_cache", "export", "flat_params", "functional", "image_transform", "load", "load_images", "load_params", "make_mesh",
    "image_states", "l2_normalize", "normalize", "pmap_logits", "resize_pos_embed", "text_states", "tokenize", "trim_tokens",
    "warmup", "zeroshot_classifier",
]
