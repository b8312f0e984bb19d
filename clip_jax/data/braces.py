"""bash's brace expansion for shard lists ("data/{00000..00127}.tar"), bounded and lazy.

The pattern is parsed once and its names are counted before any is made (a range counts in O(1)), so
"{0..100000000}" or "{a,b}" repeated 24 times is refused at once instead of filling memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..errors import InputError, LimitError

__all__ = ["MAX_NAMES", "braceexpand", "iter_braceexpand"]

# A brace pattern names shards; more names than this is a mistake (or a hostile pattern), not a job.
MAX_NAMES = 1_000_000
_MAX_BRACE_DEPTH = 64
_RANGE = re.compile(r"(-?\d{1,18})\.\.(-?\d{1,18})(?:\.\.(\d{1,18}))?")


def _brace_pairs(pattern: str) -> dict[int, int]:
    """Position of each "{" -> its matching "}" (one pass with a stack; unmatched braces are literal)."""
    pairs, stack = {}, []
    for i, c in enumerate(pattern):
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            pairs[stack.pop()] = i
    return pairs


def _brace_parse(pattern: str, lo: int, hi: int, pairs: dict[int, int], depth: int = 0) -> list:
    """pattern[lo:hi] as a sequence of parts: a str (literal), ("alt", [sequence, ...]) or ("range", range,
    width). A brace group with no top-level comma that is not a range stays literal, as in bash."""
    if depth > _MAX_BRACE_DEPTH:
        raise InputError(f"{pattern}: braces nested deeper than {_MAX_BRACE_DEPTH} levels")
    parts: list = []
    literal, i = [], lo
    while i < hi:
        j = pairs.get(i)
        if j is None or j >= hi:
            literal.append(pattern[i])
            i += 1
            continue
        commas, k = [], i + 1
        while k < j:  # top-level commas of the group
            if pattern[k] == ",":
                commas.append(k)
            k = pairs[k] + 1 if k in pairs and pairs[k] < j else k + 1
        body = pattern[i + 1: j]
        r = None if commas else _RANGE.fullmatch(body)
        if literal:
            parts.append("".join(literal))
            literal = []
        if commas:
            bounds = [i, *commas, j]
            alts = [_brace_parse(pattern, a + 1, b, pairs, depth + 1) for a, b in zip(bounds, bounds[1:])]
            parts.append(("alt", alts))
        elif r:
            a, b, step = r.group(1), r.group(2), max(int(r.group(3) or 1), 1)
            # bash pads when an end has a leading zero: {00..10}, not {0..10}
            padded = any(len(e.lstrip("-")) > 1 and e.lstrip("-").startswith("0") for e in (a, b))
            lo_, hi_ = int(a), int(b)
            rng = range(lo_, hi_ + 1, step) if lo_ <= hi_ else range(lo_, hi_ - 1, -step)
            parts.append(("range", rng, max(len(a), len(b)) if padded else 0))
        else:  # "{}" or "{x}": literal braces, expansions inside still expand ("{x{a,b}}" -> "{xa}" "{xb}")
            parts += ["{", *_brace_parse(pattern, i + 1, j, pairs, depth + 1), "}"]
        i = j + 1
    if literal:
        parts.append("".join(literal))
    return _merged(parts)


def _merged(parts: list) -> list:
    """Adjacent literals joined, and one-name ranges made literal, so that the number of parts (the
    depth of _brace_iter's recursion) is bounded by the count: ~2 * log2(MAX_NAMES) at most."""
    out: list = []
    for p in parts:
        if not isinstance(p, str) and p[0] == "range" and len(p[1]) == 1:
            p = str(p[1][0]).zfill(p[2])
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] += p
        elif p != "":
            out.append(p)
    return out


def _brace_count(parts: list, cap: int) -> int:
    """How many names a parsed sequence expands to, saturating at cap + 1 (ranges count in O(1))."""
    n = 1
    for p in parts:
        if isinstance(p, str):
            continue
        if p[0] == "range":
            k = len(p[1])
        else:
            k = 0
            for alt in p[1]:
                k = min(k + _brace_count(alt, cap), cap + 1)
        n = min(n * k, cap + 1)
    return n


def _brace_iter(parts: list, prefix: str = "") -> Iterator[str]:
    """The names of a parsed sequence, left to right (the leftmost brace varies slowest), lazily."""
    if not parts:
        yield prefix
        return
    head, rest = parts[0], parts[1:]
    if isinstance(head, str):
        yield from _brace_iter(rest, prefix + head)
    elif head[0] == "range":
        for i in head[1]:
            yield from _brace_iter(rest, prefix + str(i).zfill(head[2]))
    else:
        for alt in head[1]:
            yield from _brace_iter(alt + rest, prefix)


def iter_braceexpand(pattern: str, limit: int = MAX_NAMES) -> Iterator[str]:
    """braceexpand, lazily. The count is computed before any name is made (ranges in O(1)), so a
    pattern of more than `limit` names raises LimitError at once, whatever its size."""
    pairs = _brace_pairs(pattern)
    parts = _brace_parse(pattern, 0, len(pattern), pairs)
    if _brace_count(parts, limit) > limit:
        raise LimitError(f"{pattern}: expands to more than {limit:,} names; a shard list is shorter than that "
                         "(split the job, or name a folder or a glob)")
    return _brace_iter(parts)


def braceexpand(pattern: str, limit: int = MAX_NAMES) -> list[str]:
    """bash's brace expansion: "a{0..2}b" -> a0b a1b a2b (zero-padded as written: {00..10}, a step:
    {0..10..5}), "x{a,b}" -> xa xb, nested "{a,b{1..2}}" -> a b1 b2; the leftmost brace varies slowest.
    No filesystem access. More than `limit` names (default 1,000,000) is a LimitError, raised before
    any name is made; braces nested deeper than 64 levels an InputError."""
    return list(iter_braceexpand(pattern, limit))
