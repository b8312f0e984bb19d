"""The registry's OpenAI table against the presets (a check that ran as an assert at import)."""

from __future__ import annotations

from clip_jax.config import PRESETS
from clip_jax.pretrained import OPENAI, registry


def test_every_openai_preset_has_its_open_clip_name_and_weights():
    assert set(OPENAI) == set(PRESETS)
    table = registry()
    assert all((OPENAI[name], "openai") in table for name in PRESETS)
