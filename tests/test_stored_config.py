"""A converted file's config is input like its tensors: its types and ranges, and its agreement with the
file's safetensors header, are checked before anything is built from it; errors name the file and field."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from safetensors.numpy import save_file

import clip_jax
import clip_jax.model
from clip_jax.checkpoint import store
from clip_jax.families import family_of
from tests.tiny import TINY, TINY_RN, tiny_params


def write(path, config_json: str):
    """A converted file: the tiny model's tensors, with `config_json` as its config."""
    tensors = {k: np.asarray(v, order="C") for k, v in tiny_params().items()}
    save_file(tensors, str(path), metadata={"format": store.FORMAT, "format_version": store.FORMAT_VERSION,
                                            "config": config_json})
    return path


def tiny_with(**fields) -> str:
    """TINY's config as JSON, with fields changed ("vision__layers" sets vision.layers)."""
    d = json.loads(TINY.to_json())
    for dotted, value in fields.items():
        *parents, leaf = dotted.split("__")
        target = d
        for name in parents:
            target = target[name]
        target[leaf] = value
    return json.dumps(d)


CASES = {
    "list": ("[]", "a config must be an object"),
    "vision_list": (tiny_with(vision=[]), "'vision'"),
    "layers_str": (tiny_with(vision__layers="abc"), "'vision.layers'"),
    "layers_20000": (tiny_with(vision__layers=20_000), "'vision.layers'"),
    "layers_1e6": (tiny_with(text__layers=10**6), "'text.layers'"),
    "layers_bool": (tiny_with(text__layers=True), "'text.layers'"),
    "eps_nan": (tiny_with(layer_norm_eps=math.nan), "'layer_norm_eps'"),
    "unknown_field": (tiny_with(vision__bogus=1), "vision.bogus"),
    "not_json": ("{", "not JSON"),
    # in range, but not what the file holds: found from the header alone
    "more_blocks": (tiny_with(text__layers=200), "'text.layers' says 200 blocks"),
    "wider": (tiny_with(vision__width=64), "vision.width"),
    "vocab": (tiny_with(text__vocab_size=1000), "text.vocab_size"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_is_refused_before_building(tmp_path, monkeypatch, case):
    config_json, needle = CASES[case]
    path = write(tmp_path / "model.safetensors", config_json)

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built from a config that the file contradicts")

    monkeypatch.setattr(clip_jax.model, "abstract_model", no_model)
    for read in (store.load, clip_jax.load):
        with pytest.raises(ValueError) as info:
            read(path)
        assert str(path) in str(info.value) and needle in str(info.value), str(info.value)


def test_the_family_is_recorded_and_an_unknown_one_is_refused(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "saved.safetensors"
    store.save(path, tiny_params(), TINY)
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata()["family"] == "clip"
    tensors = {k: np.asarray(v, order="C") for k, v in tiny_params().items()}
    other = tmp_path / "other.safetensors"
    save_file(tensors, str(other), metadata={"format": store.FORMAT, "format_version": store.FORMAT_VERSION,
                                             "family": "bogus", "config": TINY.to_json()})
    with pytest.raises(ValueError, match=f"{other}: unknown model family 'bogus'; known: clip"):
        store.load(other)


def test_valid_config_still_loads(tmp_path):
    """A file written before families were recorded (no "family" in its metadata) is a CLIP."""
    config, params = store.load(write(tmp_path / "model.safetensors", TINY.to_json()))
    assert config == TINY and set(params) == set(tiny_params())


@pytest.mark.parametrize("variant", ["vit", "resnet", "open_clip_options"])
def test_header_check_agrees_with_the_model(variant):
    """The shapes store.load expects from a config's header are the model's own (here for small configs;
    the nine OpenAI presets and ViT-H/g/bigG-14 agree too)."""
    import dataclasses

    from clip_jax.checkpoint.torch_names import expected_params

    config = {
        "vit": TINY,
        "resnet": dataclasses.replace(TINY_RN, vision=dataclasses.replace(TINY_RN.vision, layers=(1, 2, 1, 1))),
        "open_clip_options": dataclasses.replace(
            TINY, text=dataclasses.replace(TINY.text, proj_bias=True, mlp_ratio=3.0),
            vision=dataclasses.replace(TINY.vision, pool_type="avg", no_ln_pre=True, ls_init_value=1e-5,
                                       mlp_ratio=2.5)),
    }[variant]
    assert family_of(config).check_header(config, expected_params(config)) is None
