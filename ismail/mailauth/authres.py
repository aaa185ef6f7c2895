"""The Authentication-Results header field (RFC 8601): writing ours, removing forged ones.

``header`` writes one field with one result per line::

    Authentication-Results: mx.example.net;
    \tspf=pass smtp.mailfrom=alice@example.com;
    \tdkim=pass header.d=example.com header.s=sel header.b="abCD/123";
    \tdmarc=pass (dis=none) header.from=example.com

Lines are folded under 78 columns between words (also inside a comment, where folding
white space is allowed); a single word longer than that stays whole.  A property value is
written bare when it is an RFC 2045 token or ``local-part@domain`` (RFC 8601's pvalue),
else as a quoted-string.  CR, LF and other controls never reach the output.

Methods: spf, dkim, dmarc, iprev, auth (smtp.auth) and anything else spelled as a method
keyword.  DNSBL: there is no registered method, and RFC 8601 §2.7.6 wants new methods
registered (the "x-" experimental prefix of RFC 5451 was retired, RFC 6648), so ISMail
puts a DNSBL verdict in the comment of the iprev result, e.g.
``iprev=pass (listed in zen.example.org) policy.iprev=192.0.2.1``.

``remove_ours`` implements RFC 8601 §5: a field that claims our authserv-id but arrived
with the message is forged and must go before we add our own.
"""
from __future__ import annotations

import logging
import re

log = logging.getLogger("ismail.mailauth.authres")

__all__ = ["header", "remove_ours", "quote_value", "authserv_id"]

FIELD = "Authentication-Results"
MAX_LINE = 78

_KEYWORD = re.compile(r"[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?")
_PROPERTY = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9][a-z0-9_.-]*")
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")                       # RFC 2045 token
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
_MAILBOX = re.compile(rf"(?:{_ATEXT}(?:\.{_ATEXT})*)?@{_DOMAIN}")            # [local-part] "@" domain
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")

Result = tuple[str, str, dict[str, str], str]


def quote_value(value: str, *, mailbox_ok: bool = True) -> str:
    """``value`` as a token, a bare ``local@domain`` (when ``mailbox_ok``), or a quoted-string."""
    value = _CONTROLS.sub(" ", value)
    if _TOKEN.fullmatch(value) or (mailbox_ok and _MAILBOX.fullmatch(value)):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment_words(comment: str) -> list[str]:
    """A comment as words to fold between: "(a", "b", "c)"; parens and backslashes escaped."""
    text = re.sub(r"([()\\])", r"\\\1", _CONTROLS.sub(" ", comment))
    words = text.split()
    if not words:
        return []
    words[0] = "(" + words[0]
    words[-1] += ")"
    return words


def _words(method: str, result: str, props: dict[str, str], comment: str) -> list[str]:
    method, result = method.strip().lower(), result.strip().lower()
    if not _KEYWORD.fullmatch(method) or not _KEYWORD.fullmatch(result):
        raise ValueError(f"not an Authentication-Results method=result: {method!r}={result!r}")
    words = [f"{method}={result}"]
    props = dict(props)
    if "reason" in props:  # reasonspec comes before the properties (RFC 8601 §2.2)
        words.append("reason=" + quote_value(props.pop("reason"), mailbox_ok=False))
    words += _comment_words(comment)
    for name, value in props.items():
        if not _PROPERTY.fullmatch(name):
            raise ValueError(f"not an Authentication-Results property: {name!r}")
        words.append(f"{name}={quote_value(str(value))}")
    return words


def _fold(words: list[str], last: bool) -> list[str]:
    """Lines ("\\t"-indented) holding ``words``, each under MAX_LINE columns where possible."""
    lines: list[str] = []
    line = ""
    for word in words:
        # a tab counts as 8 columns, the way a terminal shows it; the first line of a
        # result starts with one tab, its continuations with a tab and two spaces
        indent = 8 if not lines else 10
        if line and indent + len(line) + 1 + len(word) + (0 if last else 1) > MAX_LINE:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line + ("" if last else ";"))
    return ["\t" + text if n == 0 else "\t  " + text for n, text in enumerate(lines)]


def header(server_id: str, results: list[Result]) -> bytes:
    """The whole field, CRLF-terminated, for ``results`` of (method, result, properties,
    comment); ``b"Authentication-Results: <server_id>; none\\r\\n"`` when there are none."""
    ident = quote_value(server_id.strip(), mailbox_ok=False)
    if not results:
        return f"{FIELD}: {ident}; none\r\n".encode("utf-8")
    lines = [f"{FIELD}: {ident};"]
    for i, (method, result, props, comment) in enumerate(results):
        lines += _fold(_words(method, result, props or {}, comment or ""), i == len(results) - 1)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


# -- removing forged fields ----------------------------------------------------------------------

_CFWS_STEP = re.compile(rb"[ \t\r\n]+|\((?:[^()\\]|\\.)*\)", re.DOTALL)
_QUOTED_ID = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_TOKEN_ID = re.compile(rb"[^\s()<>@,;:\\\"/\[\]?=]+")


def authserv_id(value: bytes) -> str | None:
    """The authserv-id at the start of a field value (comments and folding before it
    tolerated, one level of comment nesting), lowercased; None when there is none."""
    pos = 0
    for _ in range(64):  # bounded: a hostile run of comments cannot keep us here
        step = _CFWS_STEP.match(value, pos)
        if step is not None:
            pos = step.end()
        elif value[pos:pos + 1] == b"(":
            pos = _skip_nested(value, pos)  # a nested comment, which the pattern leaves out
        else:
            break
    quoted = _QUOTED_ID.match(value, pos)
    if quoted:
        return re.sub(rb"\\(.)", rb"\1", quoted.group(1)).decode("utf-8", "replace").lower()
    token = _TOKEN_ID.match(value, pos)
    return token.group().decode("utf-8", "replace").lower() if token else None


def _skip_nested(value: bytes, pos: int) -> int:
    depth, end = 0, len(value)
    while pos < end:
        char = value[pos:pos + 1]
        if char == b"\\":
            pos += 1
        elif char == b"(":
            depth += 1
        elif char == b")":
            depth -= 1
            if depth == 0:
                return pos + 1
        pos += 1
    return end


def remove_ours(header_block: bytes, server_id: str) -> bytes:
    """``header_block`` without the Authentication-Results fields (and their continuation
    lines) whose authserv-id is ``server_id`` (case-insensitive); all else byte-exact,
    including whatever follows the header block."""
    want = server_id.strip().lower()
    out: list[bytes] = []
    lines = header_block.splitlines(keepends=True)
    i, removed = 0, 0
    while i < len(lines):
        line = lines[i]
        if line in (b"\r\n", b"\n", b"\r"):
            out.extend(lines[i:])  # the body: untouched
            break
        end = i + 1
        while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
            end += 1
        name, colon, value = line.partition(b":")
        if (colon and line[:1] not in (b" ", b"\t")
                and name.rstrip(b" \t").lower() == FIELD.lower().encode()
                and authserv_id(b"".join([value, *lines[i + 1:end]])) == want):
            removed += 1
        else:
            out.extend(lines[i:end])
        i = end
    if removed:
        log.info("removed %d Authentication-Results field(s) claiming to be %s", removed, server_id)
    return b"".join(out)
