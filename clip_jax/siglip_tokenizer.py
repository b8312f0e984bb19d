"""SigLIP and SigLIP 2 tokenizers, id for id as each checkpoint's own reference.

Three vocabularies, two libraries doing the segmentation (nothing here re-implements it):

- SentencePiece `spiece.model`: SigLIP's English 32k (`google/siglip-*`, big_vision's c4_en) and
  multilingual 250k (`google/siglip-base-patch16-256-multilingual`, mc4); `sentencepiece` segments.
- Gemma's 256k BPE `tokenizer.json` (SigLIP 2, `google/siglip2-*`, `timm/ViT-*-SigLIP2`);
  `tokenizers` segments.

Two references, picked by `style`:

- `"hf"`: transformers' tokenizer class for the checkpoint, called as its processor calls it
  (`padding="max_length", max_length=64, truncation=True`). SigLIP: `SiglipTokenizer`, whose own
  `canonicalize_text` lower-cases (its `do_lower_case`, default on), strips `string.punctuation` and
  collapses whitespace, then appends `</s>` and pads with `</s>` (id 1, big_vision's `pad_value=1`).
  SigLIP 2: transformers 5's `Siglip2Tokenizer` (what `AutoTokenizer` / `AutoProcessor` load for a
  `siglip2` checkpoint): the Gemma tokenizer with a `Lowercase` normalizer in front, then what the
  folder's tokenizer.json post-processor adds (the released ones: `<eos>`), `<pad>` (id 0) after.
  (`GemmaTokenizerFast` called alone, as the SigLIP 2 model card did, doesn't lower-case: pass
  `lowercase=False` for that.)
- `"open_clip"`: open_clip's `HFTokenizer(repo, clean="canonicalize", context_length=64)` of the
  timm checkpoints: ftfy and HTML unescaping, `_` to space, punctuation removed, lower-cased,
  whitespace collapsed (`canonicalize_text(basic_clean(text))`), then the repository's own
  tokenizer (its `tokenizer.json`) with the same padding and truncation. From a bare spiece.model
  (no tokenizer.json) the pieces are sentencepiece's own, as big_vision's; the T5 tokenizer.json that
  transformers converts from it breaks ties between equal-score segmentations differently on a few
  texts (5 of 7,400 in the tests).

A folder's style is its own unless given (`folder_style`: open_clip for a repository with
open_clip_config.json); a bare file's is "hf", with SigLIP's defaults for what configs would say.

Either way a row is `[N, context_length]` int32: the text's ids, the end token, then the pad id.
Text longer than the context is always cut (as both references do), keeping the end token last.

Files come from outside: each is read with a size bound and without following a FIFO, JSON is
depth-checked before it is parsed, values are type-checked, and whatever the two libraries refuse
is an `InputError` naming the file, not their own exception.
"""

from __future__ import annotations

import os
import re
import stat
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece
import tokenizers
from tokenizers import normalizers, processors

from .config import MAX_CONFIG_BYTES, json_depth, parse_config_json
from .errors import InputError, LimitError, decode_utf8
from .tokenizer import _as_text_list, basic_clean  # the CLIP tokenizer's: one argument check, open_clip's clean

__all__ = ["CONTEXT_LENGTH", "STYLES", "SiglipTokenizer", "find_vocabulary", "folder_style", "tokenizer_from_file",
           "tokenizer_from_folder", "tokenizer_from_path"]

CONTEXT_LENGTH = 64  # every SigLIP and SigLIP 2 text tower (big_vision's max_len, transformers' processors)
STYLES = ("hf", "open_clip")
SPIECE, TOKENIZER_JSON = "spiece.model", "tokenizer.json"
TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, MODEL_CONFIG = "tokenizer_config.json", "special_tokens_map.json", "config.json"
OPEN_CLIP_CONFIG = "open_clip_config.json"  # what marks an open_clip/timm repository
# The released files: c4_en 0.8 MB, mc4 4.3 MB, Gemma's tokenizer.json 17 MB (34 MB for Gemma 3's).
MAX_SPIECE_BYTES = 64 << 20
MAX_TOKENIZER_JSON_BYTES = 128 << 20
MAX_JSON_DEPTH = 32  # a tokenizer.json nests about 6 deep
SPIECE_UNDERLINE = "\u2581"
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")  # SiglipTokenizer.canonicalize_text's, with `re`


class SiglipTokenizer:
    """A SigLIP tokenizer: `tok(texts) -> np.int32 [N, context_length]`.

    Built by `tokenizer_from_folder` / `tokenizer_from_file`. `context_length`, `vocab_size`,
    `pad_id`, `eos_id`, `style` ("hf" or "open_clip") and `kind` ("sentencepiece" or "tokenizers")
    say what it is; `source` names the vocabulary file.
    """

    def __init__(self, engine: _SentencePieceEngine | _TokenizersEngine, context_length: int, style: str,
                 source: str):
        self._engine = engine
        self.context_length = context_length
        self.style = style
        self.source = source
        self.kind = engine.kind
        self.vocab_size = engine.vocab_size
        self.pad_id = engine.pad_id
        self.eos_id = engine.eos_id

    def __call__(self, texts: str | Sequence[str], truncate: bool = True) -> np.ndarray:
        """One text or a sequence of texts -> `np.int32 [N, context_length]`.

        `truncate` is accepted for clip_jax's CLIP tokenizer signature `(texts, truncate=False)`; SigLIP
        always truncates, as its references do (the end token stays last), so it changes nothing.
        """
        del truncate  # always on: see the docstring
        items = _as_text_list(texts)
        if self.style == "open_clip":
            items = [canonicalize(basic_clean(t)) for t in items]
        _check_encodable(items)
        first = dict.fromkeys(items)  # captions repeat (prompt templates): each distinct text once
        unique = list(first)
        out = np.array(self._engine.encode(unique, self.context_length), np.int32).reshape(-1, self.context_length)
        if len(unique) == len(items):
            return out
        for i, text in enumerate(unique):
            first[text] = i
        return out[np.fromiter((first[t] for t in items), np.intp, len(items))]

    tokenize = __call__

    def __repr__(self) -> str:
        return (f"SiglipTokenizer({self.source!r}, kind={self.kind!r}, style={self.style!r}, "
                f"context_length={self.context_length}, vocab_size={self.vocab_size}, pad_id={self.pad_id})")


def canonicalize(text: str) -> str:
    """open_clip's `canonicalize_text` (big_vision's prompt_engineering): `_` to space, punctuation
    removed, lower-cased, whitespace runs to one space, stripped."""
    text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split())


def siglip_canonicalize(text: str, lower: bool) -> str:
    """transformers' `SiglipTokenizer.canonicalize_text`: lower-cased (if `lower`), punctuation removed,
    `\\s+` to one space, stripped. Unlike open_clip's, `_` is punctuation (removed, not a space)."""
    if lower:
        text = text.lower()
    return _WHITESPACE.sub(" ", text.translate(_PUNCTUATION)).strip()


def _check_encodable(texts: Sequence[str]) -> None:
    """A lone surrogate can't be UTF-8: both libraries refuse it with their own errors; name the text."""
    for i, t in enumerate(texts):
        if not t.isascii():
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InputError(f"text {i}: not encodable as UTF-8 (a lone surrogate at {e.start})") from None


def _pad_row(ids: list[int], length: int, pad_id: int, side: str) -> list[int]:
    fill = [pad_id] * (length - len(ids))
    return ids + fill if side == "right" else fill + ids


# --- the two engines: ids for a batch of (already cleaned) texts ------------------------------------


class _SentencePieceEngine:
    """`sentencepiece` on a spiece.model: transformers' `SiglipTokenizer` ("hf") or, for open_clip, the
    T5 tokenizer its timm repositories were saved with (SentencePiece's pieces, then `</s>`)."""

    kind = "sentencepiece"

    def __init__(self, data: bytes, where: str, tokens: dict[str, str], *, hf: bool, lower: bool,
                 sides: tuple[str, str]):
        if not data:  # sentencepiece takes b"" for "no model given" and logs on every later call
            raise InputError(f"{where}: empty, not a SentencePiece model")
        try:
            sp = sentencepiece.SentencePieceProcessor(model_proto=data)
        except Exception as e:  # RuntimeError "could not parse ModelProto", or another refusal of its own
            raise InputError(f"{where}: not a SentencePiece model ({str(e)[:200]})") from None
        if sp.get_piece_size() < 1:
            raise InputError(f"{where}: a SentencePiece model without pieces")
        self._sp, self._hf, self._lower = sp, hf, lower
        self._side, self._cut = sides  # padding side, truncation side
        self.vocab_size = sp.get_piece_size()
        ids = {role: _piece_id(sp, tokens[role], role, where) for role in ("eos", "pad", "unk")}
        self.eos_id, self.pad_id = ids["eos"], ids["pad"]
        # SiglipTokenizer splits text on its special tokens (each stripping the spaces beside it) before
        # canonicalizing, so a literal "</s>" in a text is the end id, as there.
        specials = {tokens[r]: ids[r] for r in ("eos", "pad", "unk")}
        self._special_ids = specials
        self._split = re.compile("(" + "|".join(map(re.escape, sorted(specials, key=len, reverse=True))) + ")")
        self._unk, self._unk_len = tokens["unk"], len(sp.encode(tokens["unk"]))
        underline = sp.piece_to_id(SPIECE_UNDERLINE)  # -1: a model without the piece never drops one
        self._underline = underline if sp.id_to_piece(underline) == SPIECE_UNDERLINE else -1

    def encode(self, texts: list[str], length: int) -> list[list[int]]:
        if not self._hf:  # open_clip: the texts are canonicalized already; T5's template is "$A </s>"
            return [_pad_row(self._truncate(ids, length - 1) + [self.eos_id], length, self.pad_id, self._side)
                    for ids in self._sp.encode(texts)]
        parts = [self._parts(t) for t in texts]
        chunks = [p for ps in parts for p in ps if isinstance(p, str)]
        pieces = iter(self._sp.encode([self._unk + siglip_canonicalize(c, self._lower) for c in chunks]))
        return [self._hf_row(ps, pieces, length) for ps in parts]

    def _parts(self, text: str) -> list[str | int]:
        """SiglipTokenizer.tokenize's split: text chunks (str) and special ids (int), in order."""
        split = self._split.split(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "))
        for i in range(1, len(split), 2):  # the specials: AddedToken(lstrip=True, rstrip=True)
            split[i - 1] = split[i - 1].rstrip()
            split[i + 1] = split[i + 1].lstrip()
        return [self._special_ids[s] if i % 2 else s for i, s in enumerate(split) if s]

    def _hf_row(self, parts: list[str | int], pieces: Iterable[list[int]], length: int) -> list[int]:
        ids: list[int] = []
        special_at: set[int] = set()
        for p in parts:
            if isinstance(p, int):
                special_at.add(len(ids))
                ids.append(p)
            else:
                got = next(pieces)
                ids.extend(got[self._unk_len:] if len(got) >= self._unk_len else got)
        if len(ids) > 1 and ids[0] == self._underline and 1 in special_at:
            ids = ids[1:]  # SiglipTokenizer.tokenize drops a lone leading "▁" before a special token
        ids = self._truncate(ids, length - 1)  # room for the end token (prepare_for_model)
        if not ids or ids[-1] != self.eos_id:  # _add_eos_if_not_present
            ids.append(self.eos_id)
        return _pad_row(ids, length, self.pad_id, self._side)


    def _truncate(self, ids: list[int], keep: int) -> list[int]:
        return ids[:keep] if self._cut == "right" else ids[max(len(ids) - keep, 0):]


def _piece_id(sp: Any, piece: str, role: str, where: str) -> int:
    i = sp.piece_to_id(piece)
    if not 0 <= i < sp.get_piece_size() or sp.id_to_piece(i) != piece:
        raise InputError(f"{where}: the {role} token {piece!r} is not a piece of this SentencePiece model")
    return i


class _TokenizersEngine:
    """`tokenizers` on a tokenizer.json (Gemma's BPE for SigLIP 2), truncated and padded by the library
    exactly as transformers' fast tokenizers ask it to (`set_truncation_and_padding`)."""

    kind = "tokenizers"

    def __init__(self, text: str, where: str, tokens: dict[str, str], *, lowercase: bool,
                 template: tuple[bool, bool] | None, sides: tuple[str, str], length: int):
        try:
            tok = tokenizers.Tokenizer.from_str(text)
        except Exception as e:  # the library's own Exception: a wrong type, a missing field, bad merges
            raise InputError(f"{where}: not a tokenizers tokenizer.json ({str(e)[:200]})") from None
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.pad_id = _token_id(tok, tokens["pad"], "pad", where)
        self.eos_id = _token_id(tok, tokens["eos"], "eos", where)
        if lowercase:  # Siglip2Tokenizer: normalizers.Sequence([Lowercase(), the Gemma normalizer])
            tok.normalizer = (normalizers.Sequence([normalizers.Lowercase(), tok.normalizer])
                              if tok.normalizer is not None else normalizers.Lowercase())
        if template is not None:
            tok.post_processor = _template(tok, tokens, *template, where)
        try:
            tok.enable_truncation(max_length=length, stride=0, strategy="longest_first", direction=sides[1])
            tok.enable_padding(direction=sides[0], pad_id=self.pad_id, pad_type_id=0, pad_token=tokens["pad"],
                               length=length)
            tok.encode("", add_special_tokens=True)  # a post-processor longer than the context fails here
        except Exception as e:
            raise InputError(f"{where}: can't tokenize with it at length {length} ({str(e)[:200]})") from None
        self._tok = tok

    def encode(self, texts: list[str], length: int) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=True)]


def _token_id(tok: Any, token: str, role: str, where: str) -> int:
    i = tok.token_to_id(token)
    if i is None:
        raise InputError(f"{where}: the {role} token {token!r} is not in its vocabulary")
    return i


def _template(tok: Any, tokens: dict[str, str], add_bos: bool, add_eos: bool, where: str) -> Any:
    """transformers' `TokenizersBackend.update_post_processor`: `[<bos>] $A [<eos>]`."""
    bos, eos = tokens["bos"], tokens["eos"]
    single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
    pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
    special = ([(bos, _token_id(tok, bos, "bos", where))] if add_bos else []) + (
        [(eos, _token_id(tok, eos, "eos", where))] if add_eos else [])
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


# --- files: bounded reads, typed settings ---------------------------------------------------------


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes (a FIFO would block a read)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: not a regular file, not a {what}")
        if st.st_size > limit:
            raise LimitError(f"{path}: {st.st_size} bytes, over the {limit >> 20} MiB a {what} may have")
        with open(path, "rb") as f:
            data = f.read(st.st_size + 1)  # read(n) allocates n bytes up front: ask for what stat said
    except OSError as e:
        raise InputError(f"{path}: unreadable: {e.strerror or e}") from None
    if len(data) > min(limit, st.st_size):  # grew while being read
        raise LimitError(f"{path}: over the {limit >> 20} MiB a {what} may have")
    return data


def _read_json_object(path: Path) -> dict[str, Any]:
    value = parse_config_json(_read_bounded(path, MAX_CONFIG_BYTES, "JSON config"), str(path))
    if not isinstance(value, dict):
        raise InputError(f"{path}: a JSON object expected, got {type(value).__name__}")
    return value


def _folder_settings(folder: Path) -> tuple[dict[str, Any], str]:
    """special_tokens_map.json under tokenizer_config.json (whose values win, as in transformers), and
    config.json's model_type; and the names of the files read, for messages."""
    settings: dict[str, Any] = {}
    names = []
    for name in (SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG):
        if (folder / name).exists():
            settings.update(_read_json_object(folder / name))
            names.append(name)
    if (folder / MODEL_CONFIG).exists():
        model_type = _read_json_object(folder / MODEL_CONFIG).get("model_type")
        settings["model_type"] = model_type if isinstance(model_type, str) else None
    return settings, " + ".join(names) or "no tokenizer config"


def _token(settings: dict[str, Any], key: str, default: str, where: str) -> str:
    """A special token as transformers stores it: a string, or an AddedToken's {"content": ...}."""
    value = settings.get(key)
    if value is None:
        return default
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: {key!r} must be a token string or {{'content': str}}, got {value!r:.80}")
    return value


def _flag(settings: dict[str, Any], key: str, where: str) -> bool | None:
    value = settings.get(key)
    if value is not None and not isinstance(value, bool):
        raise InputError(f"{where}: {key!r} must be true or false, got {value!r:.80}")
    return value


def _sides(settings: dict[str, Any], where: str) -> tuple[str, str]:
    """(padding side, truncation side): the config's, else "right" (big_vision's, and the released configs').
    transformers' Siglip2Tokenizer class alone would pad on the left, where the last-token pooling of the
    text tower would read a pad."""
    sides = []
    for key in ("padding_side", "truncation_side"):
        value = settings.get(key, "right")
        if value not in ("left", "right"):
            raise InputError(f"{where}: {key!r} must be 'left' or 'right', got {value!r:.80}")
        sides.append(value)
    return sides[0], sides[1]


def _name(settings: dict[str, Any], key: str, where: str) -> str:
    value = settings.get(key) or ""
    if not isinstance(value, str):
        raise InputError(f"{where}: {key!r} must be a string, got {value!r:.80}")
    return value


# --- construction ---------------------------------------------------------------------------------


def _check_args(context_length: Any, style: Any) -> int:
    if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)) or context_length < 1:
        raise InputError(f"context_length must be a positive int, got {context_length!r}")
    if style not in STYLES:
        raise InputError(f"style must be one of {STYLES}, got {style!r}")
    return int(context_length)


def _is_json(data: bytes) -> bool:
    return data.lstrip()[:1] == b"{"


def _sentencepiece(data: bytes, where: str, settings: dict[str, Any], style: str, lowercase: bool | None,
                   length: int) -> SiglipTokenizer:
    # SiglipTokenizer's defaults (and the T5 tokenizer's of open_clip's timm repos, whose pad open_clip
    # set to </s>): </s> ends and pads, as big_vision's pad_value=1.
    tokens = {"eos": _token(settings, "eos_token", "</s>", where),
              "pad": _token(settings, "pad_token", "</s>", where),
              "unk": _token(settings, "unk_token", "<unk>", where)}
    lower = lowercase if lowercase is not None else _flag(settings, "do_lower_case", where) is not False
    engine = _SentencePieceEngine(data, where, tokens, hf=style == "hf", lower=lower,
                                  sides=_sides(settings, where))
    return SiglipTokenizer(engine, length, style, where)


def _tokenizer_json(data: bytes, where: str, settings: dict[str, Any] | None, style: str,
                    lowercase: bool | None, length: int) -> SiglipTokenizer:
    """settings None: a bare tokenizer.json (beside a big_vision .npz): SigLIP 2's conventions, those
    its transformers and timm repositories were saved with: no <bos>, <eos> appended (whatever the file's
    own post-processor says: Gemma's adds <bos>), lower-cased ("hf")."""
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise LimitError(f"{where}: JSON nested {depth} deep (at most {MAX_JSON_DEPTH})")
    text = decode_utf8(data, where)
    bare = settings is None
    settings = settings or {}
    tokens = {role: _token(settings, f"{role}_token", f"<{role}>", where) for role in ("eos", "pad", "bos")}
    # In a folder the file's post-processor decides: transformers 5 drops tokenizer_config.json's
    # add_bos_token / add_eos_token whenever there is a tokenizer.json (PreTrainedTokenizerBase._from_pretrained).
    template = (False, True) if bare else None
    if lowercase is None and style == "hf":
        # AutoTokenizer picks Siglip2Tokenizer for a siglip2 checkpoint's folder (config.json's model_type).
        # Without a config.json (a bare file, or the vocabulary carried beside a converted SigLIP 2, whose
        # tokenizer_config.json still says GemmaTokenizer) that checkpoint's reference is Siglip2Tokenizer too.
        model_type = settings.get("model_type")
        tokenizer_class = _name(settings, "tokenizer_class", where)
        lowercase = model_type in (None, "siglip2") or tokenizer_class.startswith("Siglip2Tokenizer")
    engine = _TokenizersEngine(text, where, tokens, lowercase=bool(lowercase), template=template,
                               sides=_sides(settings, where), length=length)
    return SiglipTokenizer(engine, length, style, where)


def find_vocabulary(folder: str | os.PathLike, style: str = "hf") -> Path | None:
    """The vocabulary file of a Hugging Face repository snapshot (transformers' or open_clip/timm's) that
    `style`'s reference reads, or None if it has neither spiece.model nor tokenizer.json.

    "hf" reads spiece.model for SigLIP (`SiglipTokenizer`: tokenizer_class "SiglipTokenizer", or
    model_type "siglip", or no tokenizer.json); tokenizer.json otherwise, as open_clip's AutoTokenizer does.
    """
    folder = Path(folder)
    spiece, tok_json = folder / SPIECE, folder / TOKENIZER_JSON
    has_spiece, has_json = spiece.is_file(), tok_json.is_file()
    if style == "hf" and has_spiece and has_json:
        settings, names = _folder_settings(folder)
        if _name(settings, "tokenizer_class", f"{folder} ({names})") == "SiglipTokenizer" or settings.get(
                "model_type") == "siglip":
            return spiece
    if has_json:
        return tok_json
    return spiece if has_spiece else None


def folder_style(folder: str | os.PathLike) -> str:
    """The reference a checkpoint folder belongs to: "open_clip" for an open_clip/timm repository (it has
    open_clip_config.json), "hf" for a transformers one."""
    return "open_clip" if (Path(folder) / OPEN_CLIP_CONFIG).is_file() else "hf"


def tokenizer_from_folder(folder: str | os.PathLike, context_length: int = CONTEXT_LENGTH, style: str | None = None,
                          lowercase: bool | None = None) -> SiglipTokenizer:
    """The tokenizer of a SigLIP / SigLIP 2 checkpoint folder (a transformers or timm repository snapshot):
    spiece.model or tokenizer.json, with tokenizer_config.json / special_tokens_map.json / config.json.

    style: "hf" (transformers' class and processor), "open_clip" (open_clip's HFTokenizer with
    clean="canonicalize"), or None: the folder's own (`folder_style`). lowercase: None for the reference's
    choice; True / False to force it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    style = folder_style(folder) if style is None else style
    length = _check_args(context_length, style)
    vocab = find_vocabulary(folder, style)
    if vocab is None:
        raise InputError(f"{folder}: no tokenizer vocabulary in it (neither {SPIECE} nor {TOKENIZER_JSON}); "
                         "pass tokenizer=FILE naming one")
    settings, names = _folder_settings(folder)
    where = f"{vocab} ({names})"
    if vocab.name == TOKENIZER_JSON:
        data = _read_bounded(vocab, MAX_TOKENIZER_JSON_BYTES, "tokenizer.json")
        return _tokenizer_json(data, where, settings, style, lowercase, length)
    data = _read_bounded(vocab, MAX_SPIECE_BYTES, "SentencePiece model")
    return _sentencepiece(data, where, settings, style, lowercase, length)


def tokenizer_from_path(path: str | os.PathLike, context_length: int = CONTEXT_LENGTH, style: str | None = None,
                        lowercase: bool | None = None) -> SiglipTokenizer:
    """`tokenizer_from_folder` for a folder, `tokenizer_from_file` (style None: "hf") for a file: what
    `clip_jax.get_tokenizer` and `load(..., tokenizer=FILE)` hand a path to."""
    if Path(path).is_dir():
        return tokenizer_from_folder(path, context_length, style, lowercase)
    return tokenizer_from_file(path, context_length, style or "hf", lowercase)


def tokenizer_from_file(path: str | os.PathLike, context_length: int = CONTEXT_LENGTH, style: str = "hf",
                        lowercase: bool | None = None) -> SiglipTokenizer:
    """The tokenizer of a bare vocabulary file, a spiece.model or a tokenizer.json (told apart by their
    bytes), with SigLIP's defaults for what a folder's configs would say (see `tokenizer_from_folder`)."""
    length = _check_args(context_length, style)
    path = Path(path)
    data = _read_bounded(path, MAX_TOKENIZER_JSON_BYTES, "tokenizer vocabulary")
    if _is_json(data):
        return _tokenizer_json(data, str(path), None, style, lowercase, length)
    if len(data) > MAX_SPIECE_BYTES:
        raise LimitError(f"{path}: {len(data)} bytes, over the {MAX_SPIECE_BYTES >> 20} MiB a SentencePiece model "
                         "may have")
    return _sentencepiece(data, str(path), {}, style, lowercase, length)
