"""The two SASL mechanisms mail clients use, for every protocol: PLAIN and LOGIN.

PLAIN (RFC 4616): one base64 message "authzid NUL user NUL password", sent with
the command or after an empty challenge.  LOGIN (a draft that every client
speaks): the server asks "Username:" then "Password:", each base64.  An exchange is
a small state object: ``start`` and each ``step`` return a Challenge to send (SMTP
writes it as "334 <b64>", POP3 as "+ <b64>", IMAP as "+ <b64>"), the Credentials,
or a Failure; "*" cancels (RFC 4954, RFC 5034).  The protocol turns a Failure into
its own error reply.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

MECHANISMS = ("PLAIN", "LOGIN")

# Failure.kind values
UNKNOWN_MECHANISM = "mechanism"
CANCELLED = "cancelled"
MALFORMED = "malformed"


@dataclass
class Credentials:
    user: str
    password: str


@dataclass
class Challenge:
    b64: str  # the challenge, already base64 ("" for PLAIN's empty one)


@dataclass
class Failure:
    kind: str    # UNKNOWN_MECHANISM, CANCELLED or MALFORMED
    reason: str  # words for the client


Outcome = Challenge | Credentials | Failure


class Exchange:
    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism.upper()
        self._user: str | None = None

    def start(self, initial: str) -> Outcome:
        if self.mechanism not in MECHANISMS:
            return Failure(UNKNOWN_MECHANISM, "Unrecognized authentication type (PLAIN and LOGIN are offered)")
        if initial and not (self.mechanism == "PLAIN" and initial == "="):
            return self.step(initial)
        return Challenge("" if self.mechanism == "PLAIN" else "VXNlcm5hbWU6")  # "Username:"

    def step(self, line: str) -> Outcome:
        if line == "*":
            return Failure(CANCELLED, "Authentication cancelled")
        text = _decode(line)
        if text is None:
            return Failure(MALFORMED, "Cannot decode the AUTH response (base64 expected)")
        if self.mechanism == "PLAIN":
            parts = text.split("\0")
            if len(parts) != 3:
                return Failure(MALFORMED, "Malformed AUTH PLAIN response")
            return Credentials(parts[1], parts[2])
        if self._user is None:
            self._user = text
            return Challenge("UGFzc3dvcmQ6")  # "Password:"
        return Credentials(self._user, text)


def _decode(text: str) -> str | None:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True).decode("utf-8")
    except (ValueError, UnicodeError):
        return None
