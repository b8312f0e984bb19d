"""Small SigLIP-shaped vocabularies built here (the released ones can't be downloaded), and the reference
folders transformers and open_clip read them from. Used by tests/test_siglip_tokenizer.py and
benchmarks/tokenize.py.

- `train_spiece(path)`: a SentencePiece unigram model with SigLIP's special ids (big_vision's c4_en and
  mc4 vocabularies, which are T5's: <pad>=0, </s>=1, <unk>=2, no <bos>), NFKC-normalized with a dummy
  prefix, as those are.
- `train_gemma_json(path)`: a Gemma-style tokenizer.json (BPE with byte fallback, no pre-tokenizer, spaces
  as "▁", <pad>=0 <eos>=1 <bos>=2 <unk>=3 <mask>=4, then the 256 byte pieces <0x00>..<0xFF>).
- `siglip2_folder` / `timm_siglip2_folder` / `timm_siglip_folder`: what `google/siglip2-*` and
  `timm/ViT-*-SigLIP*` ship, written by the same transformers classes and arguments that wrote them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

try:
    from .corpus import captions, edge_texts
except ImportError:  # run as a script's module (benchmarks/tokenize.py puts tests/ on the path)
    from corpus import captions, edge_texts

# Beyond the caption corpus: scripts and languages of the multilingual checkpoints, punctuation of every
# kind, casing, digits, emoji, the special tokens' own spellings, and "▁" itself.
EXTRA = [
    "Ein Hund läuft über die Straße; DIE KATZE schläft.", "Le café coûte 3,50 € — très cher !",
    "¿Dónde está la estación? ¡Aquí!", "Привет, мир! Кошка спит на диване.", "東京タワーの夜景、とても綺麗です。",
    "北京的天气很好，我们去公园吧。", "서울의 밤거리 풍경", "مرحبا بالعالم، القطة نائمة", "שלום עולם",
    "नमस्ते दुनिया, बिल्ली सो रही है", "Γειά σου Κόσμε ΣΟΦΙΑ σοφός", "İstanbul'da ılık bir gün — IĞDIR",
    "ﬁne ﬂowers ＡＢＣ１２３ ① ㍿", "e\u0301te\u0301 naïve façade", "I ❤️ NY 🍕🍕 👩‍👩‍👧 🇫🇷",
    "snake_case_name and kebab-case-name", "a <unk> b </s> c <pad> d", "</s>", "<unk>hi", "x</s>y",
    "\u2581leading underline and \u2581 middle", "price: $1,234.56 (20% off!!!) #deal @shop",
    "Tabs\tand\nnewlines\r\nand  double   spaces", "UPPER lower MiXeD CaSe", "1234567890 3.14159 2e10",
    "  padded on both sides  ", "...", "!!!", "___", "-",
]


def utf8_ok(text: str) -> bool:
    """Neither library takes a lone surrogate (the corpus has some); those are tested on their own."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def texts(n: int = 1000, seed: int = 7) -> list[str]:
    """The test corpus: captions, the hard cases, the lines above, and texts past 64 tokens."""
    long = [" ".join(captions(40, seed=seed + 1)), "word " * 300, "ab" * 2000, "Ünïcödé " * 100]
    return [t for t in captions(n, seed=seed) + edge_texts() + EXTRA + long + ["", " ", "\t\n"] if utf8_ok(t)]


def surrogate_texts() -> list[str]:
    """The corpus's texts with a lone surrogate: open_clip's ftfy repairs them, transformers refuses them."""
    return [t for t in edge_texts() if not utf8_ok(t)]


def _training_lines() -> list[str]:
    return [t for t in captions(2000, seed=123) + edge_texts(seed=5) + EXTRA if utf8_ok(t) and t.strip()]


def train_spiece(path: Path, vocab_size: int = 4000, lines: list[str] | None = None) -> Path:
    """A unigram spiece.model with SigLIP's special ids, trained on `lines` (default: the corpus) in about
    a second. Characters outside 99.5% coverage stay out of it: the tests reach <unk> too."""
    import sentencepiece  # beside its one use in the tests

    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines or _training_lines()), model_writer=buf, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=0.995,
        normalization_rule_name="nmt_nfkc", max_sentence_length=1 << 16, minloglevel=2, num_threads=2)
    path.write_bytes(buf.getvalue())
    return path


GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


def train_gemma_json(path: Path, vocab_size: int = 4000, lines: list[str] | None = None) -> Path:
    """A Gemma-style BPE tokenizer.json trained on the corpus, with Gemma's pipeline and special ids."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers  # beside their one use

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=GEMMA_SPECIALS, show_progress=False,
                                  limit_alphabet=400)
    tok.train_from_iterator(lines or _training_lines(), trainer)
    spec = json.loads(tok.to_str())
    # Gemma's byte pieces follow the specials; the trained pieces keep their order after them.
    trained = [p for p, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]) if p not in GEMMA_SPECIALS]
    pieces = GEMMA_SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + trained
    spec["model"]["vocab"] = {p: i for i, p in enumerate(pieces)}
    for added in spec["added_tokens"]:
        added["id"] = GEMMA_SPECIALS.index(added["content"])
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1",
                                                       special_tokens=[("<bos>", 2)])  # Gemma's own: <bos> first
    path.write_text(tok.to_str())
    return path


def siglip2_folder(folder: Path, tokenizer_json: Path) -> Path:
    """google/siglip2-*'s tokenizer files: transformers' convert_siglip2_to_hf.py saves a
    GemmaTokenizerFast(add_bos_token=False, add_eos_token=True, padding_side="right"), and config.json
    says model_type "siglip2"."""
    from transformers import GemmaTokenizerFast  # the reference: only in the tests

    GemmaTokenizerFast(tokenizer_file=str(tokenizer_json), add_bos_token=False, add_eos_token=True,
                       padding_side="right").save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
    return folder


def timm_siglip2_folder(folder: Path, tokenizer_json: Path) -> Path:
    """timm/ViT-*-SigLIP2's: open_clip's SigLipTokenizer("gemma") saved, a GemmaTokenizerFast with
    padding_side="right", add_bos_token=False, add_eos_token=True, pad id 0; no config.json."""
    from transformers import GemmaTokenizerFast  # the reference: only in the tests

    tok = GemmaTokenizerFast(tokenizer_file=str(tokenizer_json), padding_side="right", add_bos_token=False,
                             add_eos_token=True)
    tok.pad_token_id = 0
    tok.save_pretrained(folder)
    return folder


def timm_siglip_folder(folder: Path, spiece: Path) -> Path:
    """timm/ViT-*-SigLIP's: open_clip's SigLipTokenizer("c4-en") saved, a T5TokenizerFast(extra_ids=0,
    legacy=False) with pad and eos both </s> (id 1)."""
    import shutil  # beside its one use

    from transformers import T5TokenizerFast  # the reference: only in the tests

    source = folder.parent / f"{folder.name}.spiece"  # from_pretrained converts a folder's spiece.model
    source.mkdir()
    shutil.copy(spiece, source / "spiece.model")
    tok = T5TokenizerFast.from_pretrained(str(source), extra_ids=0, legacy=False)
    tok.pad_token_id = 1
    tok.eos_token_id = 1
    tok.save_pretrained(folder)
    return folder


def hf_siglip_folder(folder: Path, spiece: Path) -> Path:
    """google/siglip-*'s: SiglipTokenizer's files (spiece.model, tokenizer_config.json,
    special_tokens_map.json) and config.json's model_type "siglip"."""
    from transformers import SiglipTokenizer  # the reference: only in the tests

    SiglipTokenizer(vocab_file=str(spiece)).save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    return folder
