"""clip_jax.ftfy_fast mirrors one ftfy version: on another, the fast path must be off, and visibly so.

tests/test_tokenizer.py checks that the mirror's output equals `ftfy.fix_text`; these tests check which
path runs. An ftfy upgrade makes `test_installed_ftfy_is_the_mirrored_one` fail with the version, rather
than the suite passing on the slow fallback alone.
"""

from __future__ import annotations

import ftfy
import pytest

from clip_jax import ftfy_fast as F, tokenizer as T


def test_installed_ftfy_is_the_mirrored_one():
    installed = ".".join(ftfy.__version__.split(".")[:2])
    assert installed == F.MIRRORED_FTFY, (
        f"ftfy {ftfy.__version__} is installed, clip_jax/ftfy_fast.py mirrors ftfy {F.MIRRORED_FTFY}: compare "
        "ftfy's fix_text / fix_and_explain with _fix_segment, then update MIRRORED_FTFY")
    assert F.FAST_PATH, F.FAST_PATH_OFF
    assert F.FAST_PATH_OFF is None


@pytest.mark.parametrize("version", ["6.4.0", "7.0", "6.2.3", "5.5.1"])
def test_another_ftfy_version_turns_the_fast_path_off(version):
    mirror, why = F._build_mirror(version)
    assert mirror is None
    assert version in why and F.MIRRORED_FTFY in why and "ftfy.fix_text" in why


def test_the_mirrored_version_builds_the_tables():
    mirror, why = F._build_mirror(F.MIRRORED_FTFY + ".9")  # any patch release of it
    assert why is None and mirror["mojibake_chars"] == F._MIRROR["mojibake_chars"]


def test_with_the_fast_path_off_fix_text_is_ftfy_itself(monkeypatch):
    calls = []
    monkeypatch.setattr(F, "_MIRROR", None)
    monkeypatch.setattr(ftfy, "fix_text", lambda text: calls.append(text) or "fixed")
    assert F.fix_text("caf\u00c3\u00a9") == "fixed" and calls == ["caf\u00c3\u00a9"]
    assert not F.is_clean_ascii("plain text")  # the ASCII shortcut goes too
    assert T.clean_text("Plain TEXT") == "fixed"
