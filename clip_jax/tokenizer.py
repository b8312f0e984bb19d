"""Byte-level BPE tokenizer, bit-exact with OpenAI CLIP's `simple_tokenizer.py`.

The vocabulary (`assets/bpe_simple_vocab_16e6.txt.gz`, MIT License, Copyright (c)
2021 OpenAI) and every text-processing step are those of OpenAI's tokenizer:

1. `ftfy.fix_text`, then `html.unescape` twice, then `strip`;
2. whitespace runs collapsed to one space, then `lower()`;
3. the pre-split regex `<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|
   [\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+` (`regex` package, IGNORECASE);
4. each piece is UTF-8 encoded, mapped through the reversible byte->unicode table,
   the last symbol gets `</w>`, and BPE merges are applied lowest rank first.

`<|startoftext|>` is id 49406 and `<|endoftext|>` is id 49407 (the largest id).

The results are identical to OpenAI's tokenizer (and to `open_clip`'s copy, which
differs only in the spelling of the two special tokens; pass
`special_tokens=("<start_of_text>", "<end_of_text>")` to reproduce it exactly when
texts contain those literal strings). The implementation is faster without changing
any output:

* `ftfy.fix_text` (most of the cost) is computed by a step-by-step mirror of
  ftfy's own driver that skips every ftfy fixer whose trigger characters are absent
  from the text (clip_jax/ftfy_fast.py); pure-ASCII text with no `&` and no
  control character other than tab, line feed and form feed skips ftfy and
  `html.unescape` altogether.
* Cleaned text is split on spaces and each space-free chunk is cached
  (chunk -> ids). No pre-split match can contain whitespace and the pattern has no
  look-around, so pre-splitting chunk by chunk gives the same pieces as pre-splitting
  the whole text.
* BPE runs on integer ids with a `pair -> (rank, merged id)` table instead of strings.
* `tokenize` de-duplicates identical texts within a batch and fills the output array
  with one vectorised scatter.
"""

from __future__ import annotations

import gzip
import html
import operator
import os
import threading
from collections.abc import Iterable, Sequence
from itertools import chain

import numpy as np
import regex

from .errors import InputError
from .ftfy_fast import fix_text, is_clean_ascii

__all__ = [
    "SimpleTokenizer",
    "tokenize",
    "trim_tokens",
    "default_tokenizer",
    "bytes_to_unicode",
    "DEFAULT_BPE_PATH",
    "SOT_TOKEN",
    "EOT_TOKEN",
    "SOT_ID",
    "EOT_ID",
    "VOCAB_SIZE",
    "DEFAULT_CONTEXT_LENGTH",
    "DEFAULT_BUCKETS",
]

DEFAULT_BPE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "bpe_simple_vocab_16e6.txt.gz")
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
SOT_ID = 49406
EOT_ID = 49407
VOCAB_SIZE = 49408
DEFAULT_CONTEXT_LENGTH = 77
DEFAULT_BUCKETS = (16, 32, 48, 64, 77)

# Number of merges used by CLIP: 49152 - 256 - 2 (lines 1 .. 48894 of the file).
_NUM_MERGES = 49152 - 256 - 2

# --- cleaning (OpenAI's basic_clean and whitespace_clean) -----------------------------------------


def basic_clean(text: str) -> str:
    """OpenAI's `basic_clean`: `ftfy.fix_text`, `html.unescape` twice, strip."""
    text = fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    """OpenAI's `whitespace_clean`: whitespace runs collapsed to one space, no space at either end."""
    return " ".join(text.split())


def clean_text(text: str) -> str:
    """CLIP's text normalisation: `whitespace_clean(basic_clean(text)).lower()`."""
    if is_clean_ascii(text):  # ftfy and html.unescape would leave it as it is
        return " ".join(text.split()).lower()
    return whitespace_clean(basic_clean(text)).lower()


# --- vocabulary -----------------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable unicode character table (256 entries)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class SimpleTokenizer:
    """CLIP's byte-level BPE tokenizer (49,408 ids), bit-exact with OpenAI's.

    Instances cache the ids of every space-separated chunk and every pre-split piece
    they have seen; a fresh instance starts cold. Caches are cleared when they exceed
    `max_cache_entries` so memory stays bounded on endless streams.
    """

    def __init__(
        self,
        bpe_path: str | os.PathLike | None = None,
        special_tokens: tuple[str, str] = (SOT_TOKEN, EOT_TOKEN),
        max_cache_entries: int = 1 << 20,
    ):
        if len(special_tokens) != 2 or not all(
            isinstance(t, str) and t and not any(c.isspace() for c in t) for t in special_tokens
        ):
            # Whitespace-free, so that no pre-split piece ever spans a space.
            raise InputError("special_tokens must be two non-empty strings without whitespace (start, end)")
        byte_encoder = bytes_to_unicode()
        self.byte_encoder = byte_encoder
        self.byte_decoder = {v: k for k, v in byte_encoder.items()}
        with gzip.open(bpe_path or DEFAULT_BPE_PATH) as f:
            lines = f.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
        vocab = list(byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        if any(t in vocab for t in special_tokens) or special_tokens[0] == special_tokens[1]:
            raise InputError(f"special_tokens {special_tokens!r} clash with the vocabulary")
        vocab += list(special_tokens)
        self.encoder: dict[str, int] = dict(zip(vocab, range(len(vocab))))
        self.decoder: dict[int, str] = {v: k for k, v in self.encoder.items()}
        self.vocab_size = len(vocab)
        self.special_tokens = tuple(special_tokens)
        self.sot_token_id = self.encoder[special_tokens[0]]
        self.eot_token_id = self.encoder[special_tokens[1]]
        self.all_special_ids = [self.sot_token_id, self.eot_token_id]

        encoder = self.encoder
        # BPE on ids: key (left_id << 16 | right_id) -> (rank << 16 | merged_id).
        # Ids are < 2**16, so keys are unique and min() over values picks the lowest
        # rank. The merged id is encoder[left + right], exactly what OpenAI's
        # string-based BPE would look up at the end.
        pair_table: dict[int, int] = {}
        for rank, (a, b) in enumerate(merges):
            key = (encoder[a] << 16) | encoder[b]
            # dict(zip(merges, range(...))) keeps the last rank of a repeated merge.
            pair_table[key] = (rank << 16) | encoder[a + b]
        self._pairs = pair_table
        self._byte_ids = [encoder[byte_encoder[b]] for b in range(256)]
        self._byte_end_ids = [encoder[byte_encoder[b] + "</w>"] for b in range(256)]
        # id -> the bytes of its symbols (`</w>` kept literally, as OpenAI's decode does).
        to_latin1 = {ord(c): chr(b) for b, c in byte_encoder.items()}  # then .encode("latin-1")
        self._id_bytes = [
            self.decoder[i].translate(to_latin1).encode("latin-1")
            for i in range(self.vocab_size - len(special_tokens))
        ] + [t.encode("utf-8") for t in special_tokens]
        self._pat = regex.compile(
            "|".join(regex.escape(t) for t in special_tokens) + "|" + _SPLIT_PATTERN,
            regex.IGNORECASE,
        )
        self._max_cache = int(max_cache_entries)
        self._piece_cache: dict[str, tuple[int, ...]] = {}
        self._chunk_cache: dict[str, tuple[int, ...]] = {}
        self.clear_cache()

    # -- caches --

    def clear_cache(self) -> None:
        """Empty the BPE caches (the next call runs from a cold cache)."""
        self._piece_cache = {t: (self.encoder[t],) for t in self.special_tokens}
        self._chunk_cache = {}

    # -- BPE --

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """Ids of one pre-split piece (byte-level BPE, lowest merge rank first)."""
        data = piece.encode("utf-8")
        byte_ids = self._byte_ids
        word = [byte_ids[b] for b in data[:-1]]
        word.append(self._byte_end_ids[data[-1]])
        pairs_get = self._pairs.get
        while len(word) > 1:
            best = -1
            first = second = 0
            prev = word[0]
            for cur in word[1:]:
                v = pairs_get((prev << 16) | cur)
                if v is not None and (best < 0 or v < best):
                    best, first, second = v, prev, cur
                prev = cur
            if best < 0:
                break
            merged = best & 0xFFFF
            # Merge every non-overlapping occurrence, left to right (OpenAI's loop).
            new = []
            i = 0
            last = len(word) - 1
            while i <= last:
                cur = word[i]
                if cur == first and i < last and word[i + 1] == second:
                    new.append(merged)
                    i += 2
                else:
                    new.append(cur)
                    i += 1
            word = new
        return tuple(word)

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        cache = self._piece_cache
        out: list[int] = []
        for piece in self._pat.findall(chunk):
            ids = cache.get(piece)
            if ids is None:
                ids = self._bpe(piece)
                if len(cache) >= self._max_cache:
                    self.clear_cache()
                    cache = self._piece_cache
                cache[piece] = ids
            out.extend(ids)
        return tuple(out)

    def _encode_clean(self, text: str) -> list[int]:
        """Ids of already-cleaned text (single spaces, lower case)."""
        cache = self._chunk_cache
        out: list[int] = []
        for chunk in text.split(" "):
            ids = cache.get(chunk)
            if ids is None:
                ids = self._encode_chunk(chunk)
                cache = self._chunk_cache  # _encode_chunk may have cleared the caches
                if len(cache) >= self._max_cache:
                    cache.clear()
                cache[chunk] = ids
            out += ids
        return out

    # -- public API --

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without start/end tokens."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return self._encode_clean(clean_text(text))

    def decode(self, tokens: Iterable[int]) -> str:
        """Text of `tokens` (`</w>` becomes a space; invalid UTF-8 is replaced)."""
        id_bytes = self._id_bytes
        n = len(id_bytes)
        parts = []
        for t in tokens:
            i = operator.index(t)
            if not 0 <= i < n:
                raise InputError(f"token id {t!r} is outside the vocabulary [0, {n})")
            parts.append(id_bytes[i])
        return b"".join(parts).decode("utf-8", errors="replace").replace("</w>", " ")

    def tokenize(
        self,
        texts: str | Sequence[str],
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        truncate: bool = False,
    ) -> np.ndarray:
        """`[N, context_length]` int32 ids: start, text ids, end, then zeros.

        Raises `ValueError` for a text that does not fit unless `truncate` is
        set, in which case the first `context_length` ids are kept and the last one
        is replaced by the end token (as OpenAI's `clip.tokenize(truncate=True)`).
        """
        items = _as_text_list(texts)
        if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)):
            raise TypeError(f"context_length must be an int, got {type(context_length).__name__}")
        context_length = int(context_length)
        if context_length < 1:
            raise InputError(f"context_length must be >= 1, got {context_length}")

        sot, eot = self.sot_token_id, self.eot_token_id
        done: dict[str, list[int]] = {}
        rows = []
        for idx, text in enumerate(items):
            ids = done.get(text)
            if ids is None:
                ids = [sot, *self._encode_clean(clean_text(text)), eot]
                if len(ids) > context_length:
                    if not truncate:
                        raise InputError(
                            f"text {idx} ({_abbreviate(text)}) is too long for context length "
                            f"{context_length}: {len(ids)} tokens including start and end; "
                            "shorten it or pass truncate=True"
                        )
                    ids = ids[:context_length]
                    ids[-1] = eot
                done[text] = ids
            rows.append(ids)
        return _pack(rows, context_length)

    __call__ = tokenize


def _abbreviate(text: str, limit: int = 60) -> str:
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


def _as_text_list(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if texts is None or isinstance(texts, (bytes, bytearray, memoryview)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
    items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    return items


def _pack(rows: list[list[int]], context_length: int) -> np.ndarray:
    """Zero-padded `[len(rows), context_length]` int32 array from ragged rows."""
    out = np.zeros((len(rows), context_length), dtype=np.int32)
    if not rows:
        return out
    lengths = np.fromiter(map(len, rows), dtype=np.intp, count=len(rows))
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
    # Position of each flat element in the row-major output.
    row_starts = np.arange(len(rows), dtype=np.intp) * context_length
    flat_starts = np.cumsum(lengths) - lengths
    offsets = np.repeat(row_starts - flat_starts, lengths) + np.arange(flat.size, dtype=np.intp)
    out.reshape(-1)[offsets] = flat
    return out


# --- module-level API -----------------------------------------------------------------------------

_default: SimpleTokenizer | None = None
_default_lock = threading.Lock()


def default_tokenizer() -> SimpleTokenizer:
    """The shared tokenizer instance, created on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = SimpleTokenizer()
    return _default


def tokenize(
    texts: str | Sequence[str],
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    truncate: bool = False,
) -> np.ndarray:
    """Tokenize one text or a sequence of texts to `np.int32 [N, context_length]`.

    Each row is `<|startoftext|>`, the BPE ids, `<|endoftext|>`, then zeros.
    A text that does not fit raises `ValueError` naming it and the limit, unless
    `truncate=True`: then the first `context_length` ids are kept and the last
    kept id is `<|endoftext|>`. Anything other than `str` raises `TypeError`.
    """
    return default_tokenizer().tokenize(texts, context_length=context_length, truncate=truncate)


def trim_tokens(tokens: np.ndarray, buckets: Sequence[int] = DEFAULT_BUCKETS, strict: bool = True) -> np.ndarray:
    """Cut `[N, L]` ids to the smallest bucket that holds every row's end token.

    The kept length is the smallest bucket `>= max over rows of (EOT position + 1)`,
    capped at `L` (never longer than the input). `<|endoftext|>` is the largest id
    (49407), so a row's EOT position is its `argmax`. Rows of all zeros (padding)
    need one column; a row with non-zero ids but no EOT has no known end: it raises
    `ValueError`, or with `strict=False` the batch is returned whole (what the
    jitted entry points and ShardedCLIP do when trimming on their own).

    Why this is exact for CLIP's text tower: the transformer uses a causal attention
    mask, so the activation at position `i` depends only on ids and positional
    embeddings at positions `<= i`; LayerNorms and MLPs act per position; and the
    text feature is read at the EOT position (argmax of the ids). Columns after the
    last EOT of the batch (padding) therefore never influence any position that is
    read, and removing them changes no output, provided the model slices its
    positional embedding and causal mask to the trimmed length. (This does not hold
    for towers that attend bidirectionally or pool over all positions.) Fewer
    columns means less attention and MLP work per batch, and a handful of buckets
    bounds the number of distinct shapes a jitted model sees.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise InputError(f"tokens must be 2-D [N, L], got shape {tokens.shape}")
    n, length = tokens.shape
    sizes = sorted(int(b) for b in buckets)
    if not sizes or sizes[0] < 1:
        raise InputError(f"buckets must be positive ints, got {tuple(buckets)!r}")
    if n == 0 or length == 0:
        return tokens[:, : min(sizes[0], length)]
    pos = np.argmax(tokens, axis=1)
    top = tokens[np.arange(n), pos]
    bad = (top != EOT_ID) & (top != 0)
    if bad.any():
        if not strict:
            return tokens
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"row {row} has no end-of-text token ({EOT_ID}); cannot trim it")
    need = int(pos.max()) + 1
    keep = next((b for b in sizes if b >= need), length)
    return tokens[:, : min(keep, length)]
