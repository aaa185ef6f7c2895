"""Content rules: match a message's headers or text and reject it, junk it or file it.

A rule, as the settings store it::

    {"name": "pills", "where": "subject", "match": "contains", "pattern": "viagra",
     "action": "junk", "enabled": true}

``where`` is "subject", "from", "to" (To and Cc), "headers" (every header, as
"Name: value"), "header:<Name>" (every header of that name) or "body" (the text parts).
Headers are unfolded and their RFC 2047 encoded words decoded; the body is the text/*
parts that are not attachments, transfer-decoded (quoted-printable, base64) and
charset-decoded, HTML as it is (tags included), at most ``max_body_bytes`` characters.
Only the first 256 KB of the header and 4 x max_body_bytes of the rest are parsed, so
a 10 MB message costs what a 1 MB one does; a text part behind a big attachment is
not seen.  "contains" is a case-insensitive substring test on the whole value;
"regex" is ``re.search`` with IGNORECASE (``(?-i:...)`` turns it off locally).

The first enabled rule that matches decides, in the order given.

What protects the server from a slow rule, and what does not:

* A regex is matched line by line, and a line longer than LINE_PIECE characters is cut
  into pieces, as Postfix's body_checks do (a match cannot span two lines or pieces).
  Between two pieces the time spent on the message is compared with ``budget``; once it
  is used up, the remaining pieces and rules are skipped and that is logged.
* One ``re.search`` cannot be interrupted (the regex engine holds the GIL), so the
  pattern shapes whose search time explodes are refused by ``check_rule``: a repeat
  inside a repeat ("(a+)+", "(a*)*", "(.*a){20}"), a repeated alternation whose
  branches can start alike ("(a|aa)+", "(foo|f\\w)+"), and repeats in a row that can
  match the same characters when the product of their length choices, times the start
  positions re.search tries (one if the pattern begins with ^ or \\A, else a piece's
  length), passes MAX_STEPS: ".*a.*b", "\\d+\\d+" and ".{0,100}a.{0,100}b" are refused,
  "a.*b", "^.*a.*b" and ".{0,30}a.{0,30}b" are not.  The check is structural (re._parser's tree) and
  conservative: it refuses some harmless patterns, e.g. "(a|ab)+", which can be
  rewritten "(ab?)+".  Patterns longer than 1,000 characters are refused.
* Not protected: backreferences, lookarounds' cost at every position, and the limits of
  the estimate.  The worst an accepted pattern measured on one 2,000-character piece
  is tens of milliseconds ("a.*b" on a line of "a"s: about 22 ms), and the budget bounds
  the message.  If re._parser cannot be imported (a future Python), a
  textual test for a quantified group that contains a quantifier is used instead.
"""
from __future__ import annotations

import email.errors
import email.header
import email.parser
import logging
import re
import time
from dataclasses import dataclass
from typing import Callable

from ..textutil import bytes_to_text
from .regexcheck import LINE_PIECE, regex_danger

log = logging.getLogger("ismail.antispam")

WHERE = ("subject", "from", "to", "headers", "body")
MATCH = ("contains", "regex")
ACTIONS = ("reject", "junk", "folder")
KEYS = {"name", "where", "match", "pattern", "action", "folder", "enabled"}
MAX_PATTERN = 1000
HEADER_LIMIT = 256 * 1024  # bytes of header block parsed
_FIELD_NAME = re.compile(r"[!-9;-~]+")   # RFC 5322 ftext


@dataclass(frozen=True)
class RuleHit:
    name: str
    action: str        # "reject" | "junk" | "folder"
    folder: str = ""   # for "folder"


def check_rule(rule: dict) -> str | None:
    """None if ``rule`` is usable, else the problem, starting with the field it is in."""
    if not isinstance(rule, dict):
        return "is not an object {...}"
    unknown = sorted(set(rule) - KEYS, key=str)
    if unknown:
        return f"{unknown[0]}: unknown field (expected {', '.join(sorted(KEYS))})"
    name = rule.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        return "name: expected a non-empty text of at most 200 characters"
    label = f'(rule "{name}")'
    where = rule.get("where")
    if not isinstance(where, str) or not (where in WHERE or (
            where.startswith("header:") and _FIELD_NAME.fullmatch(where[7:]))):
        return (f"where: {where!r} is not valid {label} (expected "
                + ", ".join(f'"{w}"' for w in WHERE) + ' or "header:<Name>")')
    match = rule.get("match")
    if match not in MATCH:
        return f'match: {match!r} is not valid {label} (expected "contains" or "regex")'
    pattern = rule.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        return f"pattern: expected a non-empty text {label}"
    if len(pattern) > MAX_PATTERN:
        return f"pattern: longer than {MAX_PATTERN} characters {label}"
    if match == "regex":
        try:
            re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            return f"pattern: not a valid regular expression {label}: {exc}"
        danger = regex_danger(pattern)
        if danger:
            return f"pattern: refused {label}: {danger}"
    action = rule.get("action")
    if action not in ACTIONS:
        return f'action: {action!r} is not valid {label} (expected "reject", "junk" or "folder")'
    folder = rule.get("folder", "")
    if action == "folder":
        if not isinstance(folder, str) or not folder.strip() or any(ord(c) < 32 for c in folder):
            return f'folder: a folder name is needed for action "folder" {label}'
    elif not isinstance(folder, str):
        return f"folder: expected a text {label}"
    if not isinstance(rule.get("enabled", True), bool):
        return f"enabled: expected true or false {label}"
    return None


# -- the message as the rules see it ------------------------------------------------------------------
class _View:
    """The parts of one message the rules ask for, each decoded once, on first use."""

    def __init__(self, message: bytes, max_body: int) -> None:
        self.message = message
        self.max_body = max_body
        self._headers: list[tuple[str, str]] | None = None
        self._values: dict[str, list[str]] = {}
        self._folded: dict[str, list[str]] = {}

    def headers(self) -> list[tuple[str, str]]:
        if self._headers is None:
            head = self.message[:HEADER_LIMIT]
            end = _header_end(head)
            text = bytes_to_text(head[:end] if end >= 0 else head)
            # RFC 5322 unfolding: a line break followed by white space is removed.
            text = re.sub(r"\r?\n(?=[ \t])", "", text)
            self._headers = []
            for line in text.splitlines():
                name, colon, value = line.partition(":")
                if colon and _FIELD_NAME.fullmatch(name.strip()):
                    self._headers.append((name.strip().lower(), _decode_words(value.strip())))
        return self._headers

    def values(self, where: str) -> list[str]:
        found = self._values.get(where)
        if found is None:
            if where == "body":
                found = [self._body()]
            elif where == "headers":
                found = [f"{n}: {v}" for n, v in self.headers()]
            else:
                names = {"subject": ("subject",), "from": ("from",), "to": ("to", "cc")}.get(
                    where, (where[7:].lower(),))
                found = [v for n, v in self.headers() if n in names]
            self._values[where] = found
        return found

    def folded(self, where: str) -> list[str]:
        found = self._folded.get(where)
        if found is None:
            found = self._folded[where] = [v.casefold() for v in self.values(where)]
        return found

    def _body(self) -> str:
        end = _header_end(self.message[:HEADER_LIMIT])
        raw = self.message[:max(end, 0) + 4 * self.max_body]  # never parse the whole of 10 MB
        parsed = email.parser.BytesParser().parsebytes(raw)  # the compat32 policy: the default
        texts: list[str] = []
        size = 0
        for part in parsed.walk():
            if part.is_multipart() or part.get_content_maintype() != "text" \
                    or part.get_content_disposition() == "attachment":
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            text = bytes_to_text(payload[:4 * self.max_body], part.get_content_charset())
            texts.append(text[:self.max_body - size])
            size += len(texts[-1])
            if size >= self.max_body:
                break
        return "\n".join(texts)


def _header_end(data: bytes) -> int:
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    return min(ends) if ends else -1


def _decode_words(value: str) -> str:
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
        return value  # a broken encoded word is matched as it was written


def _pieces(value: str):
    for line in value.splitlines() or [""]:
        for i in range(0, max(len(line), 1), LINE_PIECE):
            yield line[i:i + LINE_PIECE]


# -- the rule set ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Rule:
    name: str
    where: str
    needle: str                     # casefolded, for "contains"
    regex: re.Pattern[str] | None   # for "regex"
    hit: RuleHit


class RuleSet:
    def __init__(self, rules: list[dict], *, budget: float = 0.25, max_body_bytes: int = 256 * 1024,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.budget = budget
        self.max_body_bytes = max_body_bytes
        self._clock = clock
        self._rules: list[_Rule] = []
        for i, rule in enumerate(rules):
            problem = check_rule(rule)
            if problem:
                raise ValueError(f"rules[{i}].{problem}")
            if not rule.get("enabled", True):
                continue
            regex = re.compile(rule["pattern"], re.IGNORECASE) if rule["match"] == "regex" else None
            hit = RuleHit(rule["name"], rule["action"], rule.get("folder", "") if rule["action"] == "folder" else "")
            self._rules.append(_Rule(rule["name"], rule["where"].lower(), rule["pattern"].casefold(), regex, hit))

    def __len__(self) -> int:
        return len(self._rules)

    def evaluate(self, message: bytes) -> RuleHit | None:
        """The first enabled rule that matches ``message``, or None (also when the budget ran out)."""
        if not self._rules:
            return None
        deadline = self._clock() + self.budget
        view = _View(message, self.max_body_bytes)
        for index, rule in enumerate(self._rules):
            if self._clock() >= deadline:
                self._ran_out(index)
                return None
            if rule.regex is None:
                if any(rule.needle in value for value in view.folded(rule.where)):
                    return rule.hit
                continue
            for value in view.values(rule.where):
                for piece in _pieces(value):
                    if rule.regex.search(piece):
                        return rule.hit
                    if self._clock() >= deadline:
                        self._ran_out(index)
                        return None
        return None

    def _ran_out(self, index: int) -> None:
        log.warning("content rules: the budget of %.2f s per message ran out at rule %r; "
                    "%d rule(s) not evaluated", self.budget, self._rules[index].name,
                    len(self._rules) - index)
