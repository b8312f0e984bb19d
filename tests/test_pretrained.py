"""The registry's OpenAI table against the presets (a check that ran as an assert at import), and
list_pretrained against open_clip's."""

from __future__ import annotations

import pytest

import clip_jax
from clip_jax.config import PRESETS
from clip_jax.pretrained import OPENAI, registry, resolve


def test_every_openai_preset_has_its_open_clip_name_and_weights():
    assert set(OPENAI) == set(PRESETS)
    table = registry()
    assert all((OPENAI[name], "openai") in table for name in PRESETS)


def test_list_pretrained_is_open_clips_list_of_what_loads():
    """open_clip.list_pretrained(), in its order, less the architectures clip_jax doesn't build; each pair
    resolves to its own entry, "-quickgelu" names to the QuickGELU tags."""
    open_clip = pytest.importorskip("open_clip")
    pairs = clip_jax.list_pretrained()
    assert pairs == [p for p in open_clip.list_pretrained() if resolve(p) is not None]
    assert pairs[:3] == [("RN50", "openai"), ("RN50", "yfcc15m"), ("RN50", "cc12m")]
    assert ("ViT-B-32-quickgelu", "laion400m_e32") in pairs and ("ViT-B-32", "laion400m_e32") in pairs
    assert ("ViT-B-32-quickgelu", "laion2b_s34b_b79k") not in pairs  # open_clip has no such pair either
    for model, tag in pairs:
        entry = resolve((model, tag))
        assert (entry.model, entry.tag) == (model.removesuffix("-quickgelu"), tag)
        assert entry.quick_gelu or not model.endswith("-quickgelu")
    names = clip_jax.list_pretrained(as_str=True)
    assert names == [f"{m}:{t}" for m, t in pairs]
    assert names == [s for s in open_clip.list_pretrained(as_str=True) if resolve(s) is not None]
