"""clip_jax.tokenizer against the reference: open_clip's copy of OpenAI's tokenizer.

open_clip spells the special tokens ``<start_of_text>``/``<end_of_text>`` where OpenAI
(and clip_jax by default) spells them ``<|startoftext|>``/``<|endoftext|>``; the ids are
the same. The two spellings only matter for texts that contain them literally, so those
comparisons use a clip_jax tokenizer built with open_clip's spelling (``OC``).
"""

from __future__ import annotations

import hashlib
import html

import ftfy
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")

from clip_jax import ftfy_fast as F, tokenizer as T  # noqa: E402

from .corpus import (  # noqa: E402
    ACCENTED,
    EMOJI,
    ENTITIES,
    MOJIBAKE_LITERALS,
    ODD_CHARS,
    WHITESPACE,
    captions,
    corpus,
)

REF = open_clip_tokenizer.SimpleTokenizer()
OURS = T.SimpleTokenizer()
OC = T.SimpleTokenizer(special_tokens=("<start_of_text>", "<end_of_text>"))
SPECIAL_SPELLINGS = ("<|startoftext|>", "<|endoftext|>", "<start_of_text>", "<end_of_text>")

CORPUS = corpus()

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SLOW = settings(max_examples=20000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _has_special_spelling(text: str) -> bool:
    # Compare after cleaning: the pre-split regex runs on lower-cased, cleaned text.
    cleaned = open_clip_tokenizer._clean_lower(text)
    return any(s in cleaned for s in SPECIAL_SPELLINGS)


def _mismatches(pairs, limit=5):
    return [p for p in pairs if p[1] != p[2]][:limit]


# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------


def test_vocab_file_is_openai_vocab():
    ref_path = open_clip_tokenizer.default_bpe()
    with open(ref_path, "rb") as f:
        ref = hashlib.sha256(f.read()).hexdigest()
    with open(T.DEFAULT_BPE_PATH, "rb") as f:
        ours = hashlib.sha256(f.read()).hexdigest()
    assert ours == ref


def test_vocab_and_special_ids():
    assert OURS.vocab_size == T.VOCAB_SIZE == 49408
    assert OURS.sot_token_id == T.SOT_ID == 49406
    assert OURS.eot_token_id == T.EOT_ID == 49407
    assert OURS.encoder["<|startoftext|>"] == 49406
    assert OURS.encoder["<|endoftext|>"] == 49407
    assert max(OURS.encoder.values()) == T.EOT_ID  # trim_tokens relies on this
    # Everything but the special tokens is identical to open_clip's vocabulary.
    ref = {k: v for k, v in REF.encoder.items() if v < 49406}
    ours = {k: v for k, v in OURS.encoder.items() if v < 49406}
    assert ours == ref
    assert OC.encoder == REF.encoder


def test_special_tokens_openai_spelling():
    # OpenAI's tokenizer treats its special-token strings in text as the tokens.
    assert OURS.encode("<|startoftext|>") == [49406]
    assert OURS.encode("a <|endoftext|> b") == OURS.encode("a") + [49407] + OURS.encode("b")
    assert OURS.encode("x<|ENDOFTEXT|>") == OURS.encode("x") + [49407]  # lower-cased first
    # ... while open_clip's spelling is ordinary text for it, and vice versa.
    assert 49407 not in OURS.encode("<end_of_text>")
    assert OC.encode("<end_of_text>") == REF.encode("<end_of_text>") == [49407]
    assert OC.encode("<|endoftext|>") == REF.encode("<|endoftext|>")
    assert OURS.decode([49406, 320, 49407]) == "<|startoftext|>a <|endoftext|>"


def test_bad_special_tokens():
    with pytest.raises(ValueError):
        T.SimpleTokenizer(special_tokens=("a", "<|endoftext|>"))
    with pytest.raises(ValueError):
        T.SimpleTokenizer(special_tokens=("<x>",))
    with pytest.raises(ValueError):
        T.SimpleTokenizer(special_tokens=("<start text>", "<end>"))


def test_fast_path_enabled():
    # The installed ftfy is one the mirror is verified for; otherwise these tests
    # would only exercise the plain ftfy.fix_text fallback.
    assert F.FAST_PATH, F.FAST_PATH_OFF


# ---------------------------------------------------------------------------
# Corpus: identical ids
# ---------------------------------------------------------------------------


def test_corpus_size():
    assert len(CORPUS) >= 5000
    assert sum(not t.isascii() for t in CORPUS) >= 2000


def test_corpus_encode_matches_open_clip():
    pairs = [(t, OC.encode(t), REF.encode(t)) for t in CORPUS]
    assert _mismatches(pairs) == []


def test_corpus_encode_default_spelling_matches_open_clip():
    texts = [t for t in CORPUS if not _has_special_spelling(t)]
    assert len(texts) > 0.99 * len(CORPUS)
    pairs = [(t, OURS.encode(t), REF.encode(t)) for t in texts]
    assert _mismatches(pairs) == []


@pytest.mark.parametrize("context_length", [77, 16, 5])
def test_corpus_tokenize_matches_open_clip(context_length):
    ours = OC.tokenize(CORPUS, context_length=context_length, truncate=True)
    ref = REF(CORPUS, context_length=context_length).numpy()
    assert ours.dtype == np.int32 and ours.shape == (len(CORPUS), context_length)
    bad = np.flatnonzero((ours != ref).any(axis=1))
    assert [CORPUS[i] for i in bad[:5]] == []


def test_corpus_module_tokenize_matches_open_clip_tokenize():
    import open_clip

    texts = [t for t in CORPUS if not _has_special_spelling(t)]
    ours = T.tokenize(texts, truncate=True)
    ref = open_clip.tokenize(texts).numpy()
    assert np.array_equal(ours, ref)


def test_corpus_cleaning_matches_reference():
    for t in CORPUS:
        assert F.fix_text(t) == ftfy.fix_text(t), repr(t)
        assert T.clean_text(t) == open_clip_tokenizer._clean_lower(t), repr(t)


def test_cold_and_warm_cache_agree_and_small_cache():
    texts = captions(500, seed=3) + CORPUS[:1500]
    cold = T.SimpleTokenizer().tokenize(texts, truncate=True)
    tok = T.SimpleTokenizer(max_cache_entries=8)  # forces frequent cache clearing
    assert np.array_equal(tok.tokenize(texts, truncate=True), cold)
    assert np.array_equal(tok.tokenize(texts, truncate=True), cold)
    assert np.array_equal(OURS.tokenize(texts, truncate=True), cold)
    tok.clear_cache()
    assert np.array_equal(tok.tokenize(texts[::-1], truncate=True), cold[::-1])


def test_fallback_without_ftfy_mirror(monkeypatch):
    # The plain ftfy.fix_text path (used for unverified ftfy versions) gives the same ids.
    texts = CORPUS[::7]
    fast = T.SimpleTokenizer().tokenize(texts, truncate=True)
    monkeypatch.setattr(F, "_MIRROR", None)
    slow = T.SimpleTokenizer().tokenize(texts, truncate=True)
    assert np.array_equal(fast, slow)


# ---------------------------------------------------------------------------
# Property-based fuzzing against ftfy and open_clip
# ---------------------------------------------------------------------------

_ANY_CHAR = st.characters(exclude_categories=())  # every code point, surrogates included

_TRIGGER_CHARS = sorted(F._MIRROR["mojibake_chars"]) if F._MIRROR else []
_TRICKY_CHARS = sorted(
    set("".join(ODD_CHARS + WHITESPACE + ACCENTED + EMOJI))
    | set(_TRIGGER_CHARS)
    | set(map(chr, range(0x80, 0xA0)))
    | set("\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f\u02bc\u2028\u2029\u0301\u0308\u0327\u00a0")
    | set("&#;<>'\"\r\n\t \x1b[m0123456789aAsStTlLdDmMvVrReE")
)
_FRAGMENTS = ENTITIES + MOJIBAKE_LITERALS + ["'s", "'LL", "'D", "&", "<", "\n", "\r\n", "\x1b[31m", "Ã", "Â", " "]


def _joined(parts):
    return st.lists(parts, max_size=12).map("".join)


ARBITRARY_TEXT = st.text(_ANY_CHAR, max_size=60)
ASCII_ENTITY_TEXT = _joined(
    st.one_of(
        st.sampled_from(ENTITIES),
        st.text(st.characters(max_codepoint=0x7F), max_size=6),
        st.sampled_from(["&", "#", ";", "<", "amp", "lt", "x27", "\r", "\n", "\x1b[", "m", "'s", "'LL"]),
    )
)
TRICKY_TEXT = _joined(
    st.one_of(
        st.text(st.sampled_from(_TRICKY_CHARS), max_size=6),
        st.sampled_from(_FRAGMENTS),
        st.text(_ANY_CHAR, max_size=3),
    )
)
ALL_TEXT = st.one_of(ARBITRARY_TEXT, ASCII_ENTITY_TEXT, TRICKY_TEXT)


def _check_against_reference(text):
    assert F.fix_text(text) == ftfy.fix_text(text)
    assert OC.encode(text) == REF.encode(text)
    if not _has_special_spelling(text):
        assert OURS.encode(text) == REF.encode(text)


@FUZZ
@given(ARBITRARY_TEXT)
def test_fuzz_arbitrary_unicode(text):
    _check_against_reference(text)


@FUZZ
@given(ASCII_ENTITY_TEXT)
def test_fuzz_ascii_and_entities(text):
    _check_against_reference(text)


@FUZZ
@given(TRICKY_TEXT)
def test_fuzz_tricky_characters(text):
    _check_against_reference(text)


@FUZZ
@given(st.lists(ALL_TEXT, max_size=6), st.integers(1, 20))
def test_fuzz_batch_tokenize(texts, context_length):
    ours = OC.tokenize(texts, context_length=context_length, truncate=True)
    ref = REF(texts, context_length=context_length).numpy()
    assert np.array_equal(ours, ref.reshape(len(texts), context_length))


@FUZZ
@given(st.lists(st.one_of(ASCII_ENTITY_TEXT, TRICKY_TEXT, st.just("\n"), st.just("<")), max_size=6).map("".join),
       st.integers(1, 12))
def test_fuzz_ftfy_segmenting(text, max_segment):
    # ftfy fixes text in segments (lines, at most max_decode_length long) and stops
    # unescaping HTML from the first segment with "<"; shrink the segment length to
    # exercise that logic on short texts.
    saved = F._MIRROR["max_segment"]
    F._MIRROR["max_segment"] = max_segment
    try:
        assert F.fix_text(text) == ftfy.fix_text(text, max_decode_length=max_segment)
    finally:
        F._MIRROR["max_segment"] = saved


@pytest.mark.slow
@FUZZ_SLOW
@given(ALL_TEXT)
def test_fuzz_many_examples(text):
    _check_against_reference(text)


# ---------------------------------------------------------------------------
# The ftfy shortcut's premises
# ---------------------------------------------------------------------------


def _badness_pattern_chars():
    """Every non-ASCII character written in ftfy's BADNESS_RE (ranges expanded)."""
    from ftfy.badness import BADNESS_RE, MOJIBAKE_CATEGORIES

    chars = {c for c in BADNESS_RE.pattern if c >= "\x80"}
    for value in MOJIBAKE_CATEGORIES.values():
        for i, c in enumerate(value):
            chars.add(c)
            if c == "-" and 0 < i < len(value) - 1:
                chars.update(map(chr, range(ord(value[i - 1]), ord(value[i + 1]) + 1)))
    return sorted(chars)


_NON_TRIGGER = [c for c in _badness_pattern_chars() if c not in set(_TRIGGER_CHARS)]


def test_mojibake_triggers_cover_every_badness_alternative():
    from ftfy.badness import BADNESS_RE

    triggers = F._mojibake_triggers(BADNESS_RE)
    assert triggers is not None and all(c >= "\x80" for c in triggers)
    # The everyday characters that motivated the shortcut are not triggers.
    for c in "\u2019\u2013\u2014\u2026\u00e9\u00e8\u00e0\u00e7\u00f1\u00fc\u00f6\u00df\u0430\u03b1":
        assert c not in triggers
    # Without any trigger character, BADNESS_RE finds nothing even in long texts of
    # every other character it mentions.
    rng = np.random.default_rng(0)
    pool = _NON_TRIGGER + list(" \tabcxyzABCXYZ.,?!-0123456789")
    for _ in range(300):
        text = "".join(rng.choice(pool, size=int(rng.integers(1, 40))))
        assert not ftfy.badness.is_bad(text), repr(text)


def test_mojibake_trigger_analysis_refuses_unprovable_patterns():
    import re

    # One mandatory non-ASCII element per alternative: é or è, and the class [À-Â].
    assert F._mojibake_triggers(re.compile("\u00e9\u00e8|[\u00c0-\u00c2]x")) in (
        frozenset("\u00e9\u00c0\u00c1\u00c2"),
        frozenset("\u00e8\u00c0\u00c1\u00c2"),
    )
    assert F._mojibake_triggers(re.compile("\u00e9|ab")) is None  # an all-ASCII alternative
    assert F._mojibake_triggers(re.compile("[^a]\u00e9?")) is None  # only optional / negated parts
    assert F._mojibake_triggers(re.compile("\u00e9", re.IGNORECASE)) is None
    assert F._class_chars(re.compile("[a-c\u00e9]")) == frozenset("abc\u00e9")
    assert F._class_chars(re.compile("ab")) is None


@FUZZ
@given(st.text(st.sampled_from(_NON_TRIGGER + list(" \tazAZ.,!?-09")), min_size=1, max_size=40))
def test_fuzz_no_trigger_means_not_bad(text):
    assert not ftfy.badness.is_bad(text)


def test_ascii_shortcut_matches_ftfy_on_every_ascii_pair():
    # Every ASCII character, alone and next to every other one.
    for a in range(128):
        for b in range(0, 128, 1 if a < 33 else 17):
            text = f"x{chr(a)}{chr(b)}y&amp;" if a % 5 == 0 else f"x{chr(a)}{chr(b)}y"
            assert T.clean_text(text) == open_clip_tokenizer._clean_lower(text), repr(text)
            assert F.fix_text(text) == ftfy.fix_text(text), repr(text)


# ---------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------


def test_decode_round_trip_matches_open_clip():
    for text in captions(300, seed=11) + ["Hello, World!", "don't STOP", "naïve café 日本 👍🏽"]:
        ids = OURS.encode(text)
        assert OURS.decode(ids) == REF.decode(REF.encode(text))
        # Normal text decodes back to its cleaned form (words followed by a space).
        assert OURS.decode(ids).replace(" ", "") == T.clean_text(text).replace(" ", "")


def test_decode_partial_utf8_and_numpy_ids():
    ids = OURS.encode("日本")
    assert OURS.decode(np.asarray(ids, dtype=np.int32)) == REF.decode(ids)
    # A lone byte-level token of a multi-byte character decodes with replacement.
    for i in range(256):
        assert OURS.decode([i]) == REF.decode([i])
        assert OURS.decode([i + 256]) == REF.decode([i + 256])


def test_decode_rejects_unknown_ids():
    for bad in (-1, 49408, 10**9):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            OURS.decode([bad])
    with pytest.raises(TypeError):
        OURS.decode([1.5])


# ---------------------------------------------------------------------------
# tokenize: shapes, truncation, errors
# ---------------------------------------------------------------------------


def test_tokenize_layout():
    out = T.tokenize("a photo of a cat")
    assert out.dtype == np.int32 and out.shape == (1, 77)
    assert out[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert not out[0, 7:].any()
    out = T.tokenize(["a", "b", "a"], context_length=8)
    assert out.shape == (3, 8)
    assert np.array_equal(out[0], out[2])
    assert T.tokenize(["", "   "]).tolist() == [[49406, 49407] + [0] * 75] * 2
    assert T.tokenize(("x",)).shape == (1, 77)
    assert T.tokenize(np.array(["x", "y"])).shape == (2, 77)
    assert T.tokenize(t for t in ["x", "y"]).shape == (2, 77)


def test_tokenize_empty_list():
    out = T.tokenize([])
    assert out.shape == (0, 77) and out.dtype == np.int32
    assert T.tokenize([], context_length=16).shape == (0, 16)


def test_too_long_raises_with_limit_and_text():
    long_text = "a photo of " + "very " * 100 + "long caption"
    with pytest.raises(ValueError, match=r"context length 77") as info:
        T.tokenize(["ok", long_text])
    msg = str(info.value)
    assert "a photo of very" in msg and "..." in msg and len(msg) < 300
    assert "text 1" in msg
    with pytest.raises(ValueError, match=r"context length 5"):
        T.tokenize("one two three four", context_length=5)
    # Exactly full fits: SOT + 75 ids + EOT.
    assert T.tokenize(" ".join(["cat"] * 75))[0, -1] == T.EOT_ID
    with pytest.raises(ValueError):
        T.tokenize(" ".join(["cat"] * 76))


def test_truncate_keeps_first_ids_and_ends_with_eot():
    long_text = " ".join(f"word{i}" for i in range(200))
    out = T.tokenize([long_text, "short"], truncate=True)
    assert out.shape == (2, 77)
    assert out[0, 0] == T.SOT_ID and out[0, -1] == T.EOT_ID
    full = OURS.encode(long_text)
    assert out[0, 1:76].tolist() == full[:75]
    assert np.array_equal(out, T.tokenize([long_text, "short"], truncate=True))
    ref = REF([long_text, "short"]).numpy()
    assert np.array_equal(out, ref)
    assert T.tokenize(long_text, context_length=1, truncate=True).tolist() == [[T.EOT_ID]]
    assert T.tokenize("", context_length=2).tolist() == [[T.SOT_ID, T.EOT_ID]]


@pytest.mark.parametrize(
    "bad, type_name",
    [(None, "NoneType"), (5, "int"), (b"bytes", "bytes"), (bytearray(b"x"), "bytearray"), (3.5, "float")],
)
def test_type_errors_for_non_text(bad, type_name):
    with pytest.raises(TypeError, match=type_name):
        T.tokenize(bad)


@pytest.mark.parametrize(
    "bad, type_name",
    [(["ok", None], "NoneType"), (["ok", 3], "int"), ([b"x"], "bytes"), (["a", ["b"]], "list")],
)
def test_type_errors_for_non_text_items(bad, type_name):
    with pytest.raises(TypeError, match=type_name) as info:
        T.tokenize(bad)
    assert f"texts[{len(bad) - 1}]" in str(info.value)
    with pytest.raises(TypeError):
        OURS.encode(bad[-1])


def test_bad_context_length():
    with pytest.raises(ValueError):
        T.tokenize("x", context_length=0)
    with pytest.raises(TypeError):
        T.tokenize("x", context_length=7.0)


def test_default_tokenizer_is_shared():
    assert T.default_tokenizer() is T.default_tokenizer()
    assert isinstance(T.default_tokenizer(), T.SimpleTokenizer)


# ---------------------------------------------------------------------------
# trim_tokens
# ---------------------------------------------------------------------------


def test_trim_tokens_picks_smallest_bucket_and_keeps_rows():
    texts = ["a cat", "a photo of a dog on the beach at sunset with a red ball"]
    tokens = T.tokenize(texts)
    eot_pos = tokens.argmax(axis=1)
    trimmed = T.trim_tokens(tokens)
    assert trimmed.shape == (2, 16)
    assert eot_pos.max() + 1 <= 16
    for row, pos in zip(range(2), eot_pos):
        assert np.array_equal(trimmed[row, : pos + 1], tokens[row, : pos + 1])
        assert trimmed[row, pos] == T.EOT_ID


@pytest.mark.parametrize("n_words, expected",
                         [(0, 16), (13, 16), (14, 16), (15, 32), (30, 32), (31, 48), (62, 64), (63, 77), (75, 77)])
def test_trim_tokens_bucket_boundaries(n_words, expected):
    # "cat" is one token, so EOT sits at position n_words + 1.
    tokens = T.tokenize(["x", " ".join(["cat"] * n_words)])
    trimmed = T.trim_tokens(tokens)
    assert trimmed.shape == (2, expected)
    assert n_words + 2 <= expected
    assert np.array_equal(trimmed, tokens[:, :expected])
    assert not tokens[:, expected:].any()


def test_trim_tokens_never_longer_than_input_and_custom_buckets():
    tokens = T.tokenize(["cat " * 20], context_length=24)
    assert T.trim_tokens(tokens).shape == (1, 24)  # bucket 32 capped at L
    assert T.trim_tokens(tokens, buckets=(8, 40)).shape == (1, 24)
    assert T.trim_tokens(tokens, buckets=(23,)).shape == (1, 23)
    assert T.trim_tokens(tokens, buckets=(30, 22, 25)).shape == (1, 22)  # unsorted; EOT at 21
    assert T.trim_tokens(tokens, buckets=(30, 21, 25)).shape == (1, 24)  # 25 capped at L
    assert T.trim_tokens(T.tokenize("cat"), buckets=(64, 4)).shape == (1, 4)
    assert T.trim_tokens(T.tokenize([])).shape == (0, 16)


def test_trim_tokens_rows_without_eot():
    tokens = T.tokenize(["a cat", "x"])
    tokens[1] = 0  # an all-padding row is fine
    assert T.trim_tokens(tokens).shape == (2, 16)
    tokens[1, :3] = [49406, 320, 0]
    with pytest.raises(ValueError, match="row 1"):
        T.trim_tokens(tokens)
    with pytest.raises(ValueError):
        T.trim_tokens(tokens[0])
    assert T.trim_tokens(tokens, strict=False) is tokens  # the end is unknown: every column is kept


def test_trim_tokens_is_exact_for_a_causal_eot_pooled_model():
    # A toy causal "text tower": position i mixes ids and positions <= i; the feature is
    # read at the EOT position. Trimming must not change it.
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(T.VOCAB_SIZE, 8))
    pos_emb = rng.normal(size=(77, 8))

    def features(tokens):
        n, length = tokens.shape
        x = emb[tokens] + pos_emb[:length]
        mask = np.tril(np.ones((length, length)))
        scores = np.where(mask > 0, x @ x.transpose(0, 2, 1), -np.inf)
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = att @ x
        return y[np.arange(n), tokens.argmax(axis=1)]

    texts = [t for t in captions(300, seed=5) if len(OURS.encode(t)) < 40][:32]
    tokens = T.tokenize(texts)
    trimmed = T.trim_tokens(tokens)
    assert trimmed.shape[1] <= 48
    np.testing.assert_allclose(features(trimmed), features(tokens), rtol=1e-12, atol=1e-12)


def test_clean_text_matches_reference_pipeline():
    texts = ["  Hello\tWORLD\n", "&amp;amp;", "caf\u00c3\u00a9 &lt;b&gt;", "\u201cQuoted\u201d \u2014 it\u2019s",
             "ＬＯＵＤ"]
    for t in texts:
        expected = " ".join(html.unescape(html.unescape(ftfy.fix_text(t))).strip().split()).strip().lower()
        assert T.clean_text(t) == expected

