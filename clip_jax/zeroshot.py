"""Zero-shot classification with prompt ensembles, as in OpenAI's "Prompt Engineering for ImageNet"
notebook (and open_clip's build_zero_shot_classifier).

A class's weight is the mean of its normalized prompt embeddings ("a photo of a {}.", "a sketch of
the {}.", ...), renormalized; an image's class probabilities are softmax(logit_scale * cos(image, class)).

    weights = zeroshot_classifier(model, ["dog", "cat"])     # [embed_dim, 2]
    probs, idx = classify(model, images, weights, k=2)       # [N, 2] each
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from flax import nnx

from .errors import InputError, LimitError, decode_utf8
from .families import family_of
from .model import l2_normalize

__all__ = ["IMAGENET_TEMPLATES", "zeroshot_classifier", "classify", "top_k", "logit_scale", "logit_bias",
           "read_templates", "check_templates"]

# The 80 templates of OpenAI's notebook, in its order.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)


MAX_TEMPLATE_BYTES = 16 * 2**20  # a templates file is read no further than this


def read_templates(spec: str) -> tuple[str, ...]:
    """--templates: "imagenet" (the 80 above), a file of templates (one a line, UTF-8, at most
    MAX_TEMPLATE_BYTES), or one template. Each must have one {} where the label goes and no other
    placeholder (a literal brace is {{ or }}); anything else is an InputError naming the file."""
    if spec == "imagenet":
        return IMAGENET_TEMPLATES
    if os.path.isfile(spec):
        with open(spec, "rb") as f:
            data = f.read(MAX_TEMPLATE_BYTES + 1)
        if len(data) > MAX_TEMPLATE_BYTES:
            raise LimitError(f"{spec}: larger than {MAX_TEMPLATE_BYTES} bytes, too large for a templates file")
        templates = tuple(line for line in decode_utf8(data, spec).splitlines() if line.strip())
    else:
        templates = (spec,)
    return check_templates(templates, spec)


def check_templates(templates: Sequence[str], source: str | None = None, marker: str = "{}") -> tuple[str, ...]:
    """Each template has {} where the class name goes and no other placeholder (a literal brace is {{ or
    }}), checked before any model loads: another placeholder would fail at str.format afterwards.
    source: where they came from, for the message; marker: how the caller's users write the place."""
    where = f" (from {source[:200]!r})" if source else ""
    bad = [t[:200] for t in templates if "{}" not in t][:5]
    if not templates or bad:
        raise InputError(f"templates must each contain {marker} where the class name goes; got {bad or 'none'}{where}")
    for t in templates:
        try:
            t.format("x")
        except (ValueError, KeyError, IndexError, AttributeError) as e:
            raise InputError(f"template {t[:200]!r}{where}: only {marker} may be in braces (a literal brace is "
                             f"{{{{ or }}}}): {type(e).__name__} {e}") from None
    return tuple(templates)


def _text_features(model, tokens: np.ndarray) -> np.ndarray:
    # A CLIP (jitted encode_text) or a parallel.ShardedCLIP (sharded, already on the host): same result.
    return np.asarray(l2_normalize(np.asarray(model.encode_text(tokens))))


def zeroshot_classifier(model, classnames: Sequence[str], templates: Sequence[str] = IMAGENET_TEMPLATES,
                        classes_per_batch: int = 10, truncate: bool = False) -> np.ndarray:
    """Class weights for zero-shot classification -> float32 [embed_dim, num_classes].

    For each class: the prompts template.format(name), each text embedding L2-normalized, their mean,
    L2-normalized again. model: a CLIP or a parallel.ShardedCLIP. Prompts too long for the context are
    an error (tokenize raises), not silently cut, unless truncate=True.
    """
    classnames, templates = list(classnames), list(templates)
    if not classnames:
        raise InputError("no class names")
    if not templates:
        raise InputError("no templates")
    tokenizer = family_of(model).tokenizer(model.config)
    columns = []
    for i in range(0, len(classnames), classes_per_batch):
        names = classnames[i: i + classes_per_batch]
        tokens = tokenizer([t.format(c) for c in names for t in templates], truncate=truncate)
        feats = _text_features(model, tokens).reshape(len(names), len(templates), -1).mean(axis=1)
        columns.append(feats / np.linalg.norm(feats, axis=-1, keepdims=True))
    return np.concatenate(columns).T.astype(np.float32)


def classify(model, images, weights: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """images [N, H, W, 3] (uint8 or normalized float) -> (probabilities [N, k], class indices [N, k]),
    best first: softmax over all classes of exp(logit_scale) * normalized image features @ weights; for
    a sigmoid model (SigLIP) each class's own sigmoid(exp(logit_scale) * cos + logit_bias)."""
    feats = np.asarray(l2_normalize(np.asarray(model.encode_image(images))))
    return top_k(feats, weights, logit_scale(model), k, bias=logit_bias(model))


def logit_scale(model) -> float:
    """exp(logit_scale) of a CLIP (an nnx.Param) or a parallel.ShardedCLIP (a float): 100 for OpenAI's."""
    value = model.logit_scale
    return float(np.exp(np.asarray(value[...] if isinstance(value, nnx.Variable) else value)))


def logit_bias(model) -> float | None:
    """SigLIP's logit_bias (b in exp(t) * cos + b) of a model or a parallel.ShardedCLIP; None for a model
    scored by softmax (CLIP)."""
    value = getattr(model, "logit_bias", None)
    if value is None and hasattr(model, "head"):
        value = model.head.get("logit_bias")
    if value is None:
        return None
    return float(np.asarray(value[...] if isinstance(value, nnx.Variable) else value))


def top_k(image_features: np.ndarray, weights: np.ndarray, scale: float, k: int,
          bias: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Normalized image features [N, D], class weights [D, C] -> (probabilities [N, k], indices [N, k]).
    bias None: softmax over the classes (CLIP); a float: each class's sigmoid(scale * cos + bias), as
    SigLIP was trained (they needn't sum to 1). Either way the ranking is the logits' (CLIP_benchmark's)."""
    logits = scale * (image_features.astype(np.float64) @ weights.astype(np.float64))
    if bias is not None:
        probs = 1 / (1 + np.exp(-(logits + bias)))
    else:
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
    k = min(k, probs.shape[1])
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(probs, idx, axis=1).astype(np.float32), idx
