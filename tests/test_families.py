"""The family registry: a config, a model or a name finds its family, and what it declares is what
CLIP's reference uses (tokenizer, preprocessing, logits)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clip_jax.clip_family import CLIP_FAMILY
from clip_jax.config import CLIPConfig
from clip_jax.errors import InputError
from clip_jax.families import FAMILIES, Family, family_of, register
from clip_jax.image import transform_for
from clip_jax.model import CLIP, build, logits as clip_logits_of_features
from clip_jax.roles import TEMPERATURE, declare
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
    with pytest.raises(InputError, match="unknown model family 'blip'; known: clip, siglip"):
        family_of("blip")
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


# --- a second family, end to end: nothing outside its declaration knows about it ----------------------
@dataclasses.dataclass(frozen=True)
class BiasedConfig(CLIPConfig):
    """A CLIP with a learned logit bias (the shape of a sigmoid-loss family), as a family of its own."""


class BiasedCLIP(CLIP):
    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.logit_bias = nnx.Param(jnp.asarray(-10.0, jnp.float32), **declare(TEMPERATURE))


def _biased_logits(image_features, text_features, logit_scale, logit_bias):
    per_image, _ = clip_logits_of_features(image_features, text_features, logit_scale)
    return per_image + logit_bias, (per_image + logit_bias).T


@pytest.fixture
def biased_family():
    calls = []

    def tokenizer(config):
        calls.append(config)
        return CLIP_FAMILY.tokenizer(config)

    register(dataclasses.replace(
        CLIP_FAMILY, name="biased", config_type=BiasedConfig,
        models={"clip": BiasedCLIP, "text": TextTower, "vision": VisionTower}, tokenizer=tokenizer,
        head=lambda m: {"logit_scale": m.logit_scale.get_raw_value(), "logit_bias": m.logit_bias.get_raw_value()},
        logits=_biased_logits, check_header=lambda config, shapes: None))
    try:
        yield calls
    finally:
        del FAMILIES["biased"]


def test_a_second_family_builds_saves_loads_scores_and_embeds_without_edits(tmp_path, biased_family):
    import clip_jax
    from clip_jax.checkpoint import store
    from clip_jax.jobs.embed import embed
    from clip_jax.model import flat_params
    from clip_jax.parallel import ShardedCLIP

    config = BiasedConfig(**{f.name: getattr(TINY, f.name) for f in dataclasses.fields(TINY)})
    model = clip_jax.build(config, seed=3)
    assert type(model) is BiasedCLIP and float(model.logit_bias[...]) == -10.0
    path = tmp_path / "biased.safetensors"
    store.save(path, {k: np.asarray(v) for k, v in flat_params(model).items()}, config)
    loaded, preprocess = clip_jax.load(path)
    assert type(loaded) is BiasedCLIP and loaded.config == config and preprocess == transform_for(config)
    for name, value in flat_params(model).items():
        np.testing.assert_array_equal(flat_params(loaded)[name], value)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, *(TINY.vision.image_size,) * 2, 3)).astype(np.float32)
    tokens = tokenize(["a dog", "a cat", "a car"], context_length=TINY.text.context_length)
    per_image, per_text = ShardedCLIP(loaded, batch_size=4).clip_logits(images, tokens)
    plain = ShardedCLIP(loaded, batch_size=4)
    unbiased, _ = clip_logits_of_features(plain.encode_image(images), plain.encode_text(tokens),
                                          jnp.asarray(plain.logit_scale))
    np.testing.assert_allclose(per_image, np.asarray(unbiased) - 10.0, atol=1e-5)  # the family's head and logits
    np.testing.assert_array_equal(per_text, per_image.T)
    captions = tmp_path / "captions.txt"
    captions.write_text("a dog\na cat\n")
    embed((), tmp_path / "out", model=str(path), captions=str(captions), progress=False)
    assert biased_family and all(c == config for c in biased_family)  # its own tokenizer
