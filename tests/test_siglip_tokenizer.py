"""SigLIP / SigLIP 2 tokenizers (clip_jax/siglip_tokenizer.py) against their references, id for id.

The released vocabularies can't be downloaded here, so tests/siglip_vocab.py trains a SentencePiece
unigram model with SigLIP's special ids and a Gemma-style BPE tokenizer.json on a multilingual corpus
(captions, the tokenizer edge cases of tests/corpus.py, other scripts, punctuation, casing, digits,
emoji, special-token spellings, texts far past 64 tokens, empty and whitespace-only texts), and writes
them as the transformers and timm repositories ship them. Every parity test compares every line of that
corpus (about 7,400) with tolerance zero: a tokenizer's ids are exact or wrong; the one exception says why.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given

from clip_jax import siglip_tokenizer as st
from clip_jax.errors import ClipJaxError, InputError, LimitError

from . import siglip_vocab as sv
from .fuzz import FUZZ, bounded, mutated

L = 64


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> dict[str, Path]:
    """The trained vocabularies and the four reference folders built from them."""
    d = tmp_path_factory.mktemp("siglip_vocab")
    spiece = sv.train_spiece(d / "spiece.model")
    gemma = sv.train_gemma_json(d / "tokenizer.json")
    return {"spiece": spiece, "gemma": gemma,
            "hf_siglip": sv.hf_siglip_folder(d / "hf_siglip", spiece),
            "hf_siglip2": sv.siglip2_folder(d / "hf_siglip2", gemma),
            "timm_siglip": sv.timm_siglip_folder(d / "timm_siglip", spiece),
            "timm_siglip2": sv.timm_siglip2_folder(d / "timm_siglip2", gemma)}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return sv.texts()


def hf_ids(tok, texts: list[str], length: int = L) -> np.ndarray:
    """transformers' tokenizer called as SiglipProcessor / Siglip2Processor call it."""
    return np.asarray(tok(texts, padding="max_length", max_length=length, truncation=True).input_ids)


def assert_same(ref: np.ndarray, ours: np.ndarray, texts: list[str]) -> None:
    assert ours.dtype == np.int32 and ours.shape == ref.shape == (len(texts), ref.shape[1])
    bad = np.flatnonzero((ref != ours).any(axis=1))
    assert bad.size == 0, f"{bad.size} of {len(texts)} texts differ, e.g. {texts[bad[0]]!r}: " \
                          f"{ref[bad[0]].tolist()} vs {ours[bad[0]].tolist()}"


def assert_exercised(ref: np.ndarray, pad: int, eos: int) -> None:
    """The corpus reaches what the parity is about: cut texts (a full row ending in the end token),
    empty ones (the end token alone), and ordinary padded rows."""
    # SigLIP pads with its end token: there the id before last tells a full row.
    full = ref[:, -2] != pad if pad == eos else ref[:, -1] != pad
    assert full.sum() >= 3 and (ref[full, -1] == eos).all()
    assert ((ref[:, 0] == eos) & (ref[:, 1] == pad)).any()
    assert (~full).sum() > len(ref) // 2


# --- SigLIP: SentencePiece -------------------------------------------------------------------------


def test_siglip_hf_matches_siglip_tokenizer(vocab, texts):
    from transformers import AutoTokenizer, SiglipTokenizer  # the reference

    ref = hf_ids(SiglipTokenizer(vocab_file=str(vocab["spiece"])), texts)
    assert_exercised(ref, pad=1, eos=1)
    assert_same(ref, st.tokenizer_from_file(vocab["spiece"])(texts), texts)
    folder_ref = AutoTokenizer.from_pretrained(str(vocab["hf_siglip"]))
    assert type(folder_ref).__name__ == "SiglipTokenizer"
    ours = st.tokenizer_from_folder(vocab["hf_siglip"])
    assert (ours.kind, ours.pad_id, ours.eos_id, ours.vocab_size) == ("sentencepiece", 1, 1, 4000)
    assert_same(hf_ids(folder_ref, texts), ours(texts), texts)


@pytest.mark.parametrize("length", [16, 3, 1])
def test_siglip_hf_other_context_lengths(vocab, texts, length):
    from transformers import SiglipTokenizer  # the reference

    ref = hf_ids(SiglipTokenizer(vocab_file=str(vocab["spiece"])), texts[:800], length)
    assert_same(ref, st.tokenizer_from_file(vocab["spiece"], context_length=length)(texts[:800]), texts[:800])


def test_siglip_without_lowercase(vocab, texts):
    """do_lower_case=False in tokenizer_config.json is SiglipTokenizer(do_lower_case=False)."""
    from transformers import SiglipTokenizer  # the reference

    ref = hf_ids(SiglipTokenizer(vocab_file=str(vocab["spiece"]), do_lower_case=False), texts)
    assert (ref != hf_ids(SiglipTokenizer(vocab_file=str(vocab["spiece"])), texts)).any(axis=1).sum() > 100
    assert_same(ref, st.tokenizer_from_file(vocab["spiece"], lowercase=False)(texts), texts)


def test_siglip_open_clip_matches_hf_tokenizer(vocab, texts):
    from open_clip.tokenizer import HFTokenizer  # the reference

    texts = texts + sv.surrogate_texts()  # ftfy (basic_clean) repairs lone surrogates before either side
    ref = HFTokenizer(str(vocab["timm_siglip"]), context_length=L, clean="canonicalize")(texts).numpy()
    assert_exercised(ref, pad=1, eos=1)
    ours = st.tokenizer_from_folder(vocab["timm_siglip"], style="open_clip")
    assert (ours.kind, ours.pad_id) == ("tokenizers", 1)
    assert_same(ref, ours(texts), texts)


def test_siglip_open_clip_from_bare_spiece(vocab, texts):
    """A bare spiece.model in open_clip's style segments with sentencepiece itself (as big_vision does);
    open_clip reads the timm repository's tokenizer.json, transformers' conversion of it, whose Unigram
    breaks ties between equal-score segmentations differently on a few texts ("1999": 19|99 vs 199|9).
    Tolerance: at most 0.2% of texts (5 of 7,400 measured), each still ending in </s> and padded alike."""
    from open_clip.tokenizer import HFTokenizer  # the reference

    ref = HFTokenizer(str(vocab["timm_siglip"]), context_length=L, clean="canonicalize")(texts).numpy()
    ours = st.tokenizer_from_file(vocab["spiece"], style="open_clip")(texts)
    bad = np.flatnonzero((ref != ours).any(axis=1))
    assert bad.size <= len(texts) * 0.002, [texts[i] for i in bad[:5]]
    assert (ours == 1).any(axis=1).all()  # every row has its </s>


# --- SigLIP 2: Gemma's tokenizer.json --------------------------------------------------------------


def test_siglip2_hf_matches_siglip2_tokenizer(vocab, texts, tmp_path):
    """transformers 5 loads Siglip2Tokenizer (Gemma's, lower-cased) for a siglip2 folder."""
    from transformers import AutoTokenizer  # the reference

    ref_tok = AutoTokenizer.from_pretrained(str(vocab["hf_siglip2"]))
    assert type(ref_tok).__name__ == "Siglip2Tokenizer"
    ref = hf_ids(ref_tok, texts)
    assert_exercised(ref, pad=0, eos=1)
    ours = st.tokenizer_from_folder(vocab["hf_siglip2"])
    assert (ours.kind, ours.pad_id, ours.eos_id) == ("tokenizers", 0, 1)
    assert_same(ref, ours(texts), texts)
    assert_same(ref, st.tokenizer_from_file(vocab["gemma"])(texts), texts)  # a bare file: SigLIP 2's settings
    carried = tmp_path / "carried"  # the vocabulary files beside a converted SigLIP 2, without config.json
    carried.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (carried / name).write_bytes((vocab["hf_siglip2"] / name).read_bytes())
    assert_same(ref, st.tokenizer_from_folder(carried)(texts), texts)


def test_siglip2_file_post_processor_over_config_flags(vocab, texts, tmp_path):
    """A tokenizer.json with Gemma's own "<bos> $A": transformers 5 drops tokenizer_config.json's
    add_bos_token / add_eos_token when a tokenizer.json is there, so the file's template decides, whatever
    the flags say; so does clip_jax (the released folders' files and flags agree: "$A <eos>")."""
    from transformers import AutoTokenizer  # the reference

    (tmp_path / "tokenizer.json").write_bytes(vocab["gemma"].read_bytes())  # "<bos> $A", as Gemma's
    (tmp_path / "config.json").write_text('{"model_type": "siglip2"}')
    some = texts[:1500]
    for add_bos, add_eos in ((False, True), (True, False)):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "GemmaTokenizer", "add_bos_token": add_bos, "add_eos_token": add_eos,
             "padding_side": "right", "pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>"}))
        ref = hf_ids(AutoTokenizer.from_pretrained(str(tmp_path)), some)
        assert (ref[:, 0] == 2).all()  # <bos> from the file, both times
        assert_same(ref, st.tokenizer_from_folder(tmp_path)(some), some)


@pytest.mark.parametrize("name", ["hf_siglip", "hf_siglip2"])
def test_sides_from_the_config(vocab, texts, tmp_path, name):
    """padding_side / truncation_side in tokenizer_config.json are transformers' (released configs say right)."""
    from transformers import AutoTokenizer  # the reference

    for f in vocab[name].iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(padding_side="left", truncation_side="left")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    some = texts[:1500]
    ref = hf_ids(AutoTokenizer.from_pretrained(str(tmp_path)), some)
    assert_same(ref, st.tokenizer_from_folder(tmp_path)(some), some)
    assert not np.array_equal(ref, st.tokenizer_from_folder(vocab[name])(some))


def test_siglip2_gemma_fast_without_lowercase(vocab, texts):
    """GemmaTokenizerFast called alone (the SigLIP 2 model card's way) doesn't lower-case: lowercase=False."""
    from transformers import GemmaTokenizerFast  # the reference

    ref = hf_ids(GemmaTokenizerFast(tokenizer_file=str(vocab["gemma"]), add_bos_token=False, add_eos_token=True,
                                    padding_side="right"), texts)
    lowered = st.tokenizer_from_folder(vocab["hf_siglip2"])(texts)
    assert (ref != lowered).any(axis=1).sum() > 100  # the corpus's casing reaches the difference
    assert_same(ref, st.tokenizer_from_folder(vocab["hf_siglip2"], lowercase=False)(texts), texts)


def test_siglip2_open_clip_matches_hf_tokenizer(vocab, texts):
    from open_clip.tokenizer import HFTokenizer  # the reference

    texts = texts + sv.surrogate_texts()
    ref = HFTokenizer(str(vocab["timm_siglip2"]), context_length=L, clean="canonicalize")(texts).numpy()
    assert_exercised(ref, pad=0, eos=1)
    assert_same(ref, st.tokenizer_from_folder(vocab["timm_siglip2"], style="open_clip")(texts), texts)
    assert_same(ref, st.tokenizer_from_file(vocab["gemma"], style="open_clip")(texts), texts)


# --- the API ---------------------------------------------------------------------------------------


def test_call_shapes_and_types(vocab):
    tok = st.tokenizer_from_file(vocab["spiece"])
    one = tok("a photo of a cat")
    assert one.shape == (1, L) and one.dtype == np.int32
    assert np.array_equal(tok(["a photo of a cat"] * 3, truncate=False), np.repeat(one, 3, axis=0))
    assert tok([]).shape == (0, L)
    assert tok.context_length == L and tok.tokenize is not None
    for bad in (b"bytes", None, 5, ["ok", 3]):
        with pytest.raises(TypeError):
            tok(bad)
    for t in (tok, st.tokenizer_from_file(vocab["gemma"])):
        with pytest.raises(InputError, match="text 1: not encodable"):
            t(["fine", "lone \ud83d surrogate"])


def test_style_follows_the_folder(vocab, texts, tmp_path):
    """A timm repository (open_clip_config.json beside the tokenizer) gets open_clip's style by default."""
    timm = tmp_path / "timm"
    timm.mkdir()
    for f in vocab["timm_siglip2"].iterdir():
        (timm / f.name).write_bytes(f.read_bytes())
    (timm / "open_clip_config.json").write_text("{}")
    assert (st.folder_style(timm), st.folder_style(vocab["hf_siglip2"])) == ("open_clip", "hf")
    some = texts[:300]
    auto = st.tokenizer_from_path(timm)
    assert auto.style == "open_clip"
    assert np.array_equal(auto(some), st.tokenizer_from_folder(timm, style="open_clip")(some))
    assert not np.array_equal(auto(some), st.tokenizer_from_folder(timm, style="hf")(some))
    assert st.tokenizer_from_path(vocab["hf_siglip2"]).style == "hf"
    assert st.tokenizer_from_path(vocab["spiece"]).kind == "sentencepiece"


def test_find_vocabulary(vocab, tmp_path):
    assert st.find_vocabulary(vocab["hf_siglip"]).name == "spiece.model"
    assert st.find_vocabulary(vocab["hf_siglip2"]).name == "tokenizer.json"
    assert st.find_vocabulary(vocab["timm_siglip"], style="open_clip").name == "tokenizer.json"
    both = tmp_path / "both"
    both.mkdir()
    for name in ("spiece.model", "tokenizer_config.json"):
        (both / name).write_bytes((vocab["hf_siglip"] / name).read_bytes())
    (both / "tokenizer.json").write_bytes(vocab["gemma"].read_bytes())
    assert st.find_vocabulary(both).name == "spiece.model"  # tokenizer_class SiglipTokenizer
    assert st.find_vocabulary(both, style="open_clip").name == "tokenizer.json"  # AutoTokenizer's fast file
    assert st.find_vocabulary(tmp_path) is None


# --- hostile files ---------------------------------------------------------------------------------


def test_folder_without_vocabulary(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "siglip"}')
    with pytest.raises(InputError, match=r"neither spiece.model nor tokenizer.json.*tokenizer=FILE"):
        st.tokenizer_from_folder(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        st.tokenizer_from_folder(tmp_path / "config.json")


@pytest.mark.parametrize("data", [b"", b"\x00" * 100, b"not a model at all", b"\x0a\xff\xff\xff\xff\x0f"])
def test_garbage_spiece_model(tmp_path, data):
    path = tmp_path / "spiece.model"
    path.write_bytes(data)
    with pytest.raises(InputError, match=str(path)):
        st.tokenizer_from_file(path)


def test_truncated_files(vocab, tmp_path):
    for src in (vocab["spiece"], vocab["gemma"]):
        data = src.read_bytes()
        for n in (1, len(data) // 3, len(data) - 1):
            path = tmp_path / f"cut_{n}_{src.name}"
            path.write_bytes(data[:n])
            bounded(lambda: st.tokenizer_from_file(path)(["a photo of a cat"]))


def test_huge_files_refused_before_reading(tmp_path):
    for name, size in (("spiece.model", st.MAX_SPIECE_BYTES + 1), ("tokenizer.json", st.MAX_TOKENIZER_JSON_BYTES + 1)):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        with open(folder / name, "wb") as f:
            f.truncate(size)  # sparse: nothing is written
        with pytest.raises(LimitError, match=name):
            st.tokenizer_from_folder(folder)
    big = tmp_path / "big.model"
    with open(big, "wb") as f:
        f.truncate(st.MAX_SPIECE_BYTES + 1)
    with pytest.raises(LimitError, match="SentencePiece"):
        st.tokenizer_from_file(big)


def test_fifo_is_not_read(vocab, tmp_path):
    fifo = tmp_path / "tokenizer.json"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        st.tokenizer_from_file(fifo)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(vocab["gemma"].read_bytes())
    os.mkfifo(folder / "tokenizer_config.json")
    with pytest.raises(InputError, match="tokenizer_config.json: not a regular file"):
        st.tokenizer_from_folder(folder)


@pytest.mark.parametrize("text, match", [
    ("[" * 100_000 + "]" * 100_000, "nested"),
    ('{"model": 5}', "not a tokenizers tokenizer.json"),
    ('{"version": "1.0", "model": {"type": "BPE", "vocab": [1, 2], "merges": []}}', "not a tokenizers"),
    ('{"model": {"type": "Unigram", "vocab": [["a", "x"]]}}', "not a tokenizers"),
    ("{not json", "not a tokenizers"),
    ('["a list"]', "not a tokenizers"),
    ('"just a string"', "not a tokenizers"),
])
def test_malformed_tokenizer_json(tmp_path, text, match):
    (tmp_path / "tokenizer.json").write_text(text)
    with pytest.raises(ClipJaxError, match=match) as e:
        st.tokenizer_from_folder(tmp_path)
    assert "tokenizer.json" in str(e.value)


@pytest.mark.parametrize("config, match", [
    ({"pad_token": 5}, "'pad_token' must be a token string"),
    ({"eos_token": {"content": ["x"]}}, "'eos_token' must be a token string"),
    ({"padding_side": "up"}, "'padding_side' must be 'left' or 'right'"),
    ({"truncation_side": 1}, "'truncation_side' must be 'left' or 'right'"),
    ({"tokenizer_class": 3}, "'tokenizer_class' must be a string"),
    ({"do_lower_case": 1}, None),  # read by the SentencePiece folder only; here ignored
    ({"pad_token": "<not in the vocabulary>"}, "pad token '<not in the vocabulary>' is not in its vocabulary"),
    ([1, 2, 3], "a JSON object expected"),
    ("{" * 40 + "}" * 40, "nested"),
    ("not json", "not JSON"),
])
def test_wrong_tokenizer_config(vocab, tmp_path, config, match):
    (tmp_path / "tokenizer.json").write_bytes(vocab["gemma"].read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if match is None:
        assert st.tokenizer_from_folder(tmp_path)("a").shape == (1, L)
        return
    with pytest.raises(InputError, match=match) as e:
        st.tokenizer_from_folder(tmp_path)
    assert "tokenizer" in str(e.value)  # names the file (tokenizer.json or tokenizer_config.json)


@pytest.mark.parametrize("config, match", [
    ({"eos_token": "<nope>"}, "eos token '<nope>' is not a piece"),
    ({"do_lower_case": "no"}, "'do_lower_case' must be true or false"),
])
def test_wrong_siglip_config(vocab, tmp_path, config, match):
    (tmp_path / "spiece.model").write_bytes(vocab["spiece"].read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=match):
        st.tokenizer_from_folder(tmp_path)


@pytest.mark.parametrize("kwargs", [{"context_length": 0}, {"context_length": True}, {"context_length": 6.4},
                                    {"style": "big_vision"}])
def test_bad_arguments(vocab, kwargs):
    with pytest.raises(InputError):
        st.tokenizer_from_file(vocab["spiece"], **kwargs)


# --- fuzz: mutated vocabularies and configs load and tokenize, or raise the project's error --------

_FUZZ_DIR = tempfile.mkdtemp(prefix="siglip_fuzz_")  # hypothesis can't take a function-scoped tmp_path
atexit.register(shutil.rmtree, _FUZZ_DIR, True)
_SMALL = Path(_FUZZ_DIR)
_SEED_LINES = [t for t in sv.captions(300, seed=9) if t.isascii()]  # small seeds: mutations reach every part
_SPIECE_SEED = sv.train_spiece(_SMALL / "seed.model", vocab_size=300, lines=_SEED_LINES).read_bytes()
_JSON_SEED = sv.train_gemma_json(_SMALL / "seed.json", vocab_size=400, lines=_SEED_LINES).read_bytes()
_CONFIG_SEED = json.dumps({"add_bos_token": False, "add_eos_token": True, "pad_token": "<pad>",
                           "eos_token": {"content": "<eos>", "special": True}, "padding_side": "right",
                           "tokenizer_class": "GemmaTokenizer"}).encode()


def _load_and_run(data: bytes, name: str, folder_files: dict[str, bytes] | None = None):
    with tempfile.TemporaryDirectory(dir=_FUZZ_DIR) as d:
        path = Path(d) / name
        path.write_bytes(data)
        for other, content in (folder_files or {}).items():
            (Path(d) / other).write_bytes(content)
        tok = st.tokenizer_from_folder(d) if folder_files is not None else st.tokenizer_from_file(path)
        return tok(["a photo of a cat", "", "Ünïcödé 123 !!", "long " * 80])


@FUZZ
@given(data=mutated(_SPIECE_SEED))
def test_fuzz_spiece_model(data):
    bounded(lambda: _load_and_run(data, "spiece.model"))


@FUZZ
@given(data=mutated(_JSON_SEED))
def test_fuzz_tokenizer_json(data):
    bounded(lambda: _load_and_run(data, "tokenizer.json"))


@FUZZ
@given(data=mutated(_CONFIG_SEED))
def test_fuzz_tokenizer_config(data):
    bounded(lambda: _load_and_run(data, "tokenizer_config.json", {"tokenizer.json": _JSON_SEED}))
