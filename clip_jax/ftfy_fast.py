"""`ftfy.fix_text(text)`, the same output, faster: a mirror of ftfy 6.3's driver that skips the fixers
which cannot change the text.

OpenAI's tokenizer cleans every text with `ftfy.fix_text`, and ftfy is most of the cost of tokenizing.
`fix_text` here follows ftfy's own driver (`fix_text` -> `fix_and_explain`, default config) step by
step and calls ftfy's own fixer for every step whose trigger characters are present in the text. Each
trigger set is read from ftfy's tables at import:

    ftfy step              can only change text that contains
    unescape_html          `&` (its regex is `&#?[0-9A-Za-z]{1,24};`)
    fix_encoding           a character of `_mojibake_triggers()` (see below)
    fix_c1_controls        U+0080-U+009F
    fix_latin_ligatures    a key of `chardata.LIGATURES`
    fix_character_width    a key of `chardata.WIDTH_MAP`
    uncurl_quotes          a character of its two quote regexes
    fix_line_breaks        CR, U+0085, U+2028, U+2029
    fix_surrogates         U+D800-U+DFFF
    remove_terminal_...    ESC
    remove_control_chars   a key of `chardata.CONTROL_CHARS`
    NFC                    (always applied; cheap when nothing changes)

`fix_encoding` returns its input unchanged unless `badness.is_bad(text)`, i.e. unless `BADNESS_RE`
matches. Every alternative of that regex has a mandatory position that only matches listed non-ASCII
characters; `_mojibake_triggers` parses the regex (with Python's private `re._parser`), checks this for
every alternative and collects one such position per alternative (the one with the fewest everyday
characters). Text containing none of the collected characters cannot match, so `fix_encoding` is the
identity on it.

The mirror follows the driver of ftfy `MIRRORED_FTFY` (6.3). With another ftfy installed, or when the
regex analysis fails, the fast path is off: `FAST_PATH` is False, `FAST_PATH_OFF` says why, and
`fix_text` is `ftfy.fix_text` itself (the same output, slower). tests/test_ftfy_fast.py fails on such
an install, naming the version; tests/test_tokenizer.py compares `fix_text` with `ftfy.fix_text` on a
large corpus and by fuzzing.
"""

from __future__ import annotations

import re
import unicodedata

import ftfy
from ftfy import badness, chardata, fixes

__all__ = ["MIRRORED_FTFY", "FAST_PATH", "FAST_PATH_OFF", "fix_text", "is_clean_ascii"]

MIRRORED_FTFY = "6.3"  # major.minor of the ftfy whose fix_and_explain the mirror follows

# Characters common in ordinary (non-mojibake) text; used only to choose which mandatory position of
# each BADNESS_RE alternative to use as its trigger.
_EVERYDAY_CHARS = frozenset(
    "\u2019\u2018\u201c\u201d\u201e\u2013\u2014\u2026\u2022\u00b7\u00ab\u00bb\u00a0\u00b0\u00a9"
    "\u00ae\u2122\u20ac\u00a3"
    "\u00e0\u00e1\u00e2\u00e3\u00e4\u00e5\u00e6\u00e7\u00e8\u00e9\u00ea\u00eb\u00ec\u00ed\u00ee"
    "\u00ef\u00f1\u00f2\u00f3\u00f4\u00f6\u00f8\u00f9\u00fa\u00fb\u00fc\u00df\u0153\u0142\u015b"
    "\u017c\u017a\u0107\u0144\u0105\u0119\u010d\u0161\u017e\u0159\u011f\u015f\u0131"
    + "".join(map(chr, range(0x0430, 0x0450)))  # Cyrillic lower case
    + "".join(map(chr, range(0x03AC, 0x03CF)))  # Greek lower case
)


try:
    from re import _constants as _sre_constants, _parser as _sre_parse  # Python >= 3.11
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _sre_constants
    import sre_parse as _sre_parse


# --- what a regex can match -----------------------------------------------------------------------


def _element_chars(op, av) -> set[str] | None:
    """Characters one parsed regex element can match, if it is a plain literal or a positive class of
    literals and ranges (`None` otherwise)."""
    if op is _sre_constants.LITERAL:
        return {chr(av)}
    if op is not _sre_constants.IN:
        return None
    chars = set()
    for sub_op, sub_av in av:
        if sub_op is _sre_constants.LITERAL:
            chars.add(chr(sub_av))
        elif sub_op is _sre_constants.RANGE:
            chars.update(map(chr, range(sub_av[0], sub_av[1] + 1)))
        else:  # NEGATE, CATEGORY, ...: not a closed set
            return None
    return chars


def _parse(pattern: re.Pattern) -> list | None:
    if pattern.flags & re.IGNORECASE:
        return None
    try:
        return list(_sre_parse.parse(pattern.pattern, pattern.flags))
    except Exception:  # pragma: no cover - private parser changed
        return None


def _class_chars(pattern: re.Pattern) -> frozenset[str] | None:
    """Characters a regex made of one literal or character class can match."""
    items = _parse(pattern)
    if items is None or len(items) != 1:
        return None
    chars = _element_chars(*items[0])
    return frozenset(chars) if chars else None


def _mojibake_triggers(badness_re: re.Pattern) -> frozenset[str] | None:
    """Characters one of which every match of ftfy's `BADNESS_RE` must contain.

    Returns `None` when that cannot be established from the regex structure.
    """
    items = _parse(badness_re)
    if items is None:
        return None
    if len(items) == 1 and items[0][0] is _sre_constants.BRANCH:
        alternatives = items[0][1][1]
    else:
        alternatives = [items]
    triggers: set[str] = set()
    for alt in alternatives:
        best = None
        for op, av in alt:  # top-level items of the sequence: each matches exactly once
            chars = _element_chars(op, av)
            if not chars or any(c < "\x80" for c in chars):
                continue
            key = (len(chars & _EVERYDAY_CHARS), len(chars))
            if best is None or key < best[0]:
                best = (key, chars)
        if best is None:
            return None
        triggers |= best[1]
    return frozenset(triggers)


def _char_class(chars) -> str:
    return "[" + "".join(re.escape(c) for c in sorted(chars)) + "]"


# --- the trigger tables ---------------------------------------------------------------------------


def _build_mirror(version: str) -> tuple[dict | None, str | None]:
    """(the trigger regexes of each ftfy step, None), or (None, why the fast path is off) for ftfy
    `version` (the installed ftfy's tables are read)."""
    if version.split(".")[:2] != MIRRORED_FTFY.split("."):
        return None, (f"ftfy {version} is installed; clip_jax.ftfy_fast mirrors ftfy {MIRRORED_FTFY}'s "
                      "fix_text, so texts go through ftfy.fix_text itself (the same ids, slower)")
    mojibake = _mojibake_triggers(badness.BADNESS_RE)
    c1 = _class_chars(chardata.C1_CONTROL_RE)
    single_quotes = _class_chars(chardata.SINGLE_QUOTE_RE)
    double_quotes = _class_chars(chardata.DOUBLE_QUOTE_RE)
    surrogate_chars = _class_chars(fixes.SURROGATE_RE)
    unproven = "ftfy's {} is not the pattern the mirror was written for; texts go through ftfy.fix_text itself"
    if None in (mojibake, c1, single_quotes, double_quotes, surrogate_chars):
        return None, unproven.format("BADNESS_RE or a quote, C1 or surrogate regex")
    if not (chardata.HTML_ENTITY_RE.pattern.startswith("&") and fixes.ANSI_RE.pattern.startswith("\033")):
        return None, unproven.format("HTML_ENTITY_RE or ANSI_RE")
    if surrogate_chars != frozenset(map(chr, range(0xD800, 0xE000))):
        return None, unproven.format("SURROGATE_RE")
    quotes = single_quotes | double_quotes
    ligatures = set(map(chr, chardata.LIGATURES))
    widths = set(map(chr, chardata.WIDTH_MAP))
    line_breaks = {"\r", "\u0085", "\u2028", "\u2029"}  # fixes.fix_line_breaks
    controls = set(map(chr, chardata.CONTROL_CHARS))
    surrogates = "\ud800-\udfff"
    everything = mojibake | c1 | ligatures | widths | quotes | line_breaks | controls | {"\x1b", "&"}
    return {
        "any": re.compile(_char_class(everything)[:-1] + surrogates + "]"),
        "mojibake": re.compile(_char_class(mojibake)),
        "c1": re.compile(_char_class(c1)),
        "ligatures": re.compile(_char_class(ligatures)),
        "widths": re.compile(_char_class(widths)),
        "quotes": re.compile(_char_class(quotes)),
        "line_breaks": re.compile(_char_class(line_breaks)),
        "surrogates": re.compile("[" + surrogates + "]"),
        "controls": re.compile(_char_class(controls)),
        "mojibake_chars": mojibake,
        # The ASCII characters among all triggers: control characters, CR, ESC, "&".
        "ascii": re.compile(_char_class({c for c in everything if c < "\x80"})),
        "max_segment": ftfy.TextFixerConfig().max_decode_length,
    }, None


_MIRROR, FAST_PATH_OFF = _build_mirror(ftfy.__version__)
FAST_PATH = _MIRROR is not None  # False: every text goes through ftfy.fix_text; FAST_PATH_OFF says why


# --- the driver -----------------------------------------------------------------------------------


def _fix_segment(text: str, unescape: bool) -> str:
    """`ftfy.fix_and_explain(text, TextFixerConfig(explain=False)).text`, skipping no-ops."""
    m = _MIRROR
    normalize = unicodedata.normalize
    while True:
        orig = text
        if m["any"].search(text) is not None:
            if unescape and "&" in text:
                text = fixes.unescape_html(text)
            if m["mojibake"].search(text) is not None:
                text = ftfy.fix_encoding(text)
            if m["c1"].search(text) is not None:
                text = fixes.fix_c1_controls(text)
            if m["ligatures"].search(text) is not None:
                text = fixes.fix_latin_ligatures(text)
            if m["widths"].search(text) is not None:
                text = fixes.fix_character_width(text)
            if m["quotes"].search(text) is not None:
                text = fixes.uncurl_quotes(text)
            if m["line_breaks"].search(text) is not None:
                text = fixes.fix_line_breaks(text)
            if m["surrogates"].search(text) is not None:
                text = fixes.fix_surrogates(text)
            if "\x1b" in text:
                text = fixes.remove_terminal_escapes(text)
            if m["controls"].search(text) is not None:
                text = fixes.remove_control_chars(text)
        text = normalize("NFC", text)
        if text == orig:
            return text


def fix_text(text: str) -> str:
    """Exactly `ftfy.fix_text(text)` (default configuration)."""
    if _MIRROR is None:
        return ftfy.fix_text(text)
    # ftfy.fix_text: fix line by line (segments end after "\n", at most max_segment long); HTML
    # unescaping is switched off from the first segment containing "<" on.
    max_segment = _MIRROR["max_segment"]
    out = []
    pos = 0
    n = len(text)
    unescape = True
    while pos < n:
        end = text.find("\n", pos) + 1
        if end == 0:
            end = n
        if end - pos > max_segment:
            end = pos + max_segment
        segment = text[pos:end]
        if unescape and "<" in segment:
            unescape = False
        out.append(_fix_segment(segment, unescape))
        pos = end
    return "".join(out)


def is_clean_ascii(text: str) -> bool:
    """True for pure-ASCII text without any ASCII trigger character (a control character other than
    TAB, LF and FF; `&`): `ftfy.fix_text` and `html.unescape` leave such text unchanged. Always False
    with the fast path off."""
    return _MIRROR is not None and text.isascii() and _MIRROR["ascii"].search(text) is None
