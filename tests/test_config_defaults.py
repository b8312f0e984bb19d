"""config_from_open_clip fills a field a config leaves out with open_clip's default; those defaults are
derived from clip_jax's dataclasses, so check each against open_clip's own."""

from __future__ import annotations

import dataclasses

import pytest

from clip_jax import config as C

open_clip_model = pytest.importorskip("open_clip.model")
open_clip_transform = pytest.importorskip("open_clip.transform")


def _open_clip_defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


@pytest.mark.parametrize("ours, theirs, fields", [
    (C._OPEN_CLIP_VISION, open_clip_model.CLIPVisionCfg, C._VISION_FIELDS - {"norm_kwargs"}),
    (C._OPEN_CLIP_TEXT, open_clip_model.CLIPTextCfg, C._TEXT_FIELDS - {"norm_kwargs"}),
])
def test_tower_defaults_are_open_clips(ours, theirs, fields):
    want = _open_clip_defaults(theirs)
    assert {f: ours[f] for f in fields} == {f: want[f] for f in fields}


def test_preprocess_defaults_are_open_clips():
    want = _open_clip_defaults(open_clip_transform.PreprocessCfg)
    ours = C._open_clip_preprocess({})
    assert {name: ours[field] for name, field in C._PREPROCESS_FIELDS.items() if field} == {
        name: want[name] for name, field in C._PREPROCESS_FIELDS.items() if field}


def test_an_empty_open_clip_config_is_open_clips_default_model():
    config = C.config_from_open_clip({})
    assert config.vision.patch_size == 16 and config.vision.heads == 768 // 64 and config.activation == "gelu"
    assert config.text == C.TextConfig() and config.embed_dim == 512 and config.layer_norm_eps == 1e-5
