"""The family registry: a config, a model or a name finds its family, and what it declares is what
CLIP's reference uses (tokenizer, preprocessing, logits)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clip_jax.clip_family import CLIP_FAMILY
from clip_jax.errors import InputError
from clip_jax.families import FAMILIES, Family, family_of, register
from clip_jax.image import transform_for
from clip_jax.model import CLIP, build
from clip_jax.tokenizer import tokenize
from clip_jax.towers import TextTower, VisionTower

from .tiny import TINY


def test_a_config_a_model_and_a_name_find_the_clip_family():
    assert family_of(TINY) is CLIP_FAMILY
    assert family_of("clip") is CLIP_FAMILY
    assert family_of(CLIP_FAMILY) is CLIP_FAMILY
    model = build(TINY)
    assert family_of(model) is CLIP_FAMILY
    assert CLIP_FAMILY.kind_of(model) == "clip"
    assert CLIP_FAMILY.models == {"clip": CLIP, "text": TextTower, "vision": VisionTower}


def test_unknown_things_are_refused_by_name():
    with pytest.raises(InputError, match="unknown model family 'siglip'; known: clip"):
        family_of("siglip")
    with pytest.raises(InputError, match="no model family has the config type dict"):
        family_of({"embed_dim": 512})


def test_a_family_is_registered_once():
    with pytest.raises(ValueError, match="registered already"):
        register(CLIP_FAMILY)
    with pytest.raises(ValueError, match="registered already"):
        register(dataclasses.replace(CLIP_FAMILY, name="other"))  # the same config type


def test_a_second_family_is_found_by_its_own_config_type():
    @dataclasses.dataclass(frozen=True)
    class ToyConfig:
        width: int = 4

    toy = Family(name="toy", config_type=ToyConfig, models={}, config_from_state_dict=None,
                 config_from_open_clip=None, check_header=None, tokenizer=None, transform=None, head=None,
                 logits=None)
    register(toy)
    try:
        assert family_of(ToyConfig()) is toy
        assert family_of("toy") is toy
        assert family_of(TINY) is CLIP_FAMILY
    finally:
        del FAMILIES["toy"]


def test_clip_declares_its_reference_tokenizer_preprocessing_and_logits():
    tok = CLIP_FAMILY.tokenizer(TINY)
    texts = ["a dog", "a photo of a cat"]
    np.testing.assert_array_equal(tok(texts), tokenize(texts, context_length=TINY.text.context_length))
    assert tok(texts).dtype == np.int32 and tok(texts).shape == (2, TINY.text.context_length)
    assert CLIP_FAMILY.transform(TINY) == transform_for(TINY)
    model = build(TINY, seed=1)
    rng = np.random.default_rng(0)
    img = rng.standard_normal((3, TINY.embed_dim)).astype(np.float32)
    txt = rng.standard_normal((2, TINY.embed_dim)).astype(np.float32)
    per_image, per_text = CLIP_FAMILY.logits(img, txt, **CLIP_FAMILY.head(model))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    want = np.exp(float(model.logit_scale[...])) * unit(img) @ unit(txt).T
    np.testing.assert_allclose(per_image, want, rtol=1e-5)  # float32 matmul of unit vectors
    np.testing.assert_array_equal(per_text, np.asarray(per_image).T)
