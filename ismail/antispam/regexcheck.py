"""The regex safety check of content rules: refuse the pattern shapes whose search time
explodes, since one ``re.search`` cannot be interrupted (the regex engine holds the GIL).

See rules.py's docstring for what is refused and what is not protected.  The check walks
re._parser's tree (sre_parse on older layouts); without either, a textual test for a
quantified group that contains a quantifier is used.
"""
from __future__ import annotations

import re
from typing import Any

LINE_PIECE = 2000  # characters a regex sees at once (Postfix's line_length_limit is 2048)
try:
    import re._parser as _sre  # type: ignore[import-not-found]  # Python 3.11+
except ImportError:  # pragma: no cover - older or newer layouts
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import sre_parse as _sre  # type: ignore[no-redef]
    except ImportError:
        _sre = None  # type: ignore[assignment]

# Backtracking steps one search of one piece may take, estimated as in _walk.  Measured
# with IGNORECASE (7x slower than without) on CPython 3.11: about 10 ns a step, so the
# worst accepted pattern costs some 50 ms per piece.
MAX_STEPS = 5_000_000
_ALPHA = frozenset(map(chr, range(256))) | frozenset("\u0100\u0416\u4e2d\u2028\u3000\U0001F600")
_CATEGORIES = {name: frozenset(c for c in _ALPHA if re.fullmatch(rx, c)) for name, rx in (
    ("CATEGORY_DIGIT", r"\d"), ("CATEGORY_NOT_DIGIT", r"\D"), ("CATEGORY_SPACE", r"\s"),
    ("CATEGORY_NOT_SPACE", r"\S"), ("CATEGORY_WORD", r"\w"), ("CATEGORY_NOT_WORD", r"\W"),
    ("CATEGORY_LINEBREAK", r"\n"), ("CATEGORY_NOT_LINEBREAK", r"."))}
_REPEATS = ("MAX_REPEAT", "MIN_REPEAT")
_ZERO_WIDTH = ("AT", "ASSERT", "ASSERT_NOT")


class _Danger(Exception):
    pass


def regex_danger(pattern: str) -> str | None:
    """Why ``pattern`` may backtrack without end, or None (see the module docstring)."""
    if _sre is None:  # pragma: no cover
        if re.search(r"\([^()]*[*+}][^()]*\)\s*[*+{]", pattern):
            return "a repeated group that contains a repeat (nested quantifiers)"
        return None
    try:
        _walk(_sre.parse(pattern, re.IGNORECASE), top=True)
    except _Danger as exc:
        return str(exc)
    return None


def _name(op: Any) -> str:
    return getattr(op, "name", str(op))


def _variable(lo: int, hi: int) -> bool:
    return hi > 1 and lo != hi


def _cased(chars: set[str]) -> frozenset[str]:
    return frozenset(chars | {c.swapcase() for c in chars})  # IGNORECASE is always on


def _chars(seq: Any) -> frozenset[str]:
    """Every character a match of ``seq`` may consume (an over-estimate)."""
    out: set[str] = set()
    for op, av in seq:
        kind = _name(op)
        if kind == "LITERAL":
            out |= _cased({chr(av)})
        elif kind == "NOT_LITERAL":
            out |= _ALPHA - _cased({chr(av)})
        elif kind == "ANY":
            out |= _ALPHA
        elif kind == "IN":
            out |= _class(av)
        elif kind in _REPEATS or kind == "POSSESSIVE_REPEAT":
            out |= _chars(av[2])
        elif kind == "SUBPATTERN":
            out |= _chars(av[3])
        elif kind == "ATOMIC_GROUP":
            out |= _chars(av)
        elif kind == "BRANCH":
            for alt in av[1]:
                out |= _chars(alt)
        elif kind not in _ZERO_WIDTH:
            out |= _ALPHA  # backreferences and the like: anything
    return frozenset(out)


def _class(items: Any) -> frozenset[str]:
    chars: set[str] = set()
    negate = False
    for op, av in items:
        kind = _name(op)
        if kind == "NEGATE":
            negate = True
        elif kind == "LITERAL":
            chars.add(chr(av))
        elif kind == "RANGE":
            lo, hi = av
            chars |= {c for c in _ALPHA if lo <= ord(c) <= hi} | {chr(lo), chr(hi)}
        elif kind == "CATEGORY":
            chars |= _CATEGORIES.get(_name(av), _ALPHA)
        else:
            chars |= _ALPHA
    cased = _cased(chars)
    return _ALPHA - cased if negate else cased


def _first(seq: Any) -> tuple[frozenset[str], bool]:
    """The characters a match of ``seq`` may start with, and whether it may be empty."""
    out: set[str] = set()
    for op, av in seq:
        kind = _name(op)
        if kind in _ZERO_WIDTH:
            continue
        if kind in _REPEATS or kind == "POSSESSIVE_REPEAT":
            first, empty = _first(av[2])
            empty = empty or av[0] == 0
        elif kind == "SUBPATTERN":
            first, empty = _first(av[3])
        elif kind == "ATOMIC_GROUP":
            first, empty = _first(av)
        elif kind == "BRANCH":
            parts = [_first(alt) for alt in av[1]]
            first = frozenset().union(*(p[0] for p in parts))
            empty = any(p[1] for p in parts)
        else:
            first, empty = _chars([(op, av)]), False
        out |= first
        if not empty:
            return frozenset(out), False
    return frozenset(out), True


def _walk(seq: Any, in_repeat: bool = False, top: bool = False) -> None:
    """Raise _Danger for a dangerous shape anywhere in ``seq``."""
    items = _flatten(seq)
    # Repeats in a row that can eat the same characters can split a piece between them
    # in (length choices of one) x (of the next) x ... ways, and re.search tries that at
    # every start position, unless the pattern is anchored at the start (^ or \A).
    anchored = top and bool(items) and _name(items[0][0]) == "AT" \
        and _name(items[0][1]) in ("AT_BEGINNING", "AT_BEGINNING_STRING")
    starts = 1 if anchored else LINE_PIECE
    chain: frozenset[str] | None = None   # chars the repeats of this ambiguous stretch can eat
    steps = 1
    for op, av in items:
        kind = _name(op)
        if kind in _REPEATS:
            lo, hi, body = av
            if in_repeat and _variable(lo, hi):
                raise _Danger("a repeat inside a repeated group (nested quantifiers such as "
                              "(a+)+ or (.*a){3} backtrack exponentially)")
            if hi > 1:
                _branches(body)
            _walk(body, in_repeat or hi > 1)
            if _variable(lo, hi):
                chars = _chars(body)
                choices = min(hi, LINE_PIECE) - lo + 1
                if chain is not None and chain & chars:
                    chain, steps = chain | chars, steps * choices
                else:
                    chain, steps = chars, choices
                if steps * starts > MAX_STEPS:
                    raise _Danger("repeats in a row that can match the same characters (as in "
                                  ".*a.*b or \\d+\\d+) can backtrack for seconds on one line; "
                                  "bound them, e.g. .{0,30}, or drop a leading .*")
                continue
        elif kind == "BRANCH":
            for alt in av[1]:
                _walk(alt, in_repeat)
        elif kind in ("ATOMIC_GROUP", "POSSESSIVE_REPEAT"):
            # No backtracking into these, so nothing inside can explode; not walked.
            pass
        elif kind in ("ASSERT", "ASSERT_NOT"):
            _walk(av[1], in_repeat)
            continue
        elif kind == "AT":
            continue
        if chain is not None and not _chars([(op, av)]) <= chain:
            chain = None  # something the long repeat cannot eat ends the ambiguous stretch


def _flatten(seq: Any) -> list:
    out: list = []
    for op, av in seq:
        if _name(op) == "SUBPATTERN":
            out.extend(_flatten(av[3]))
        else:
            out.append((op, av))
    return out


def _branches(seq: Any) -> None:
    """In a repeated body, alternatives that can start alike make the repeat ambiguous."""
    for op, av in _flatten(seq):
        if _name(op) != "BRANCH":
            continue
        seen: set[str] = set()
        for alt in av[1]:
            first, empty = _first(alt)
            if empty or seen & first:
                raise _Danger("a repeated alternation whose branches can match the same text "
                              "(as in (a|aa)+); make the branches start differently")
            seen |= first
