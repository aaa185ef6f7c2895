"""The two SASL mechanisms of SMTP AUTH that mail clients use: PLAIN and LOGIN.

PLAIN (RFC 4616): one base64 message "authzid NUL user NUL password", sent with
the command or after an empty 334 challenge.  LOGIN (a draft that every client
speaks): the server asks "Username:" then "Password:", each base64.  An exchange is
a small state object: ``start`` and each ``step`` return either a challenge to send
(bytes, "334 ..."), the credentials, or an error reply; "*" cancels (RFC 4954).
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

from ..smtp.replies import reply

MECHANISMS = ("PLAIN", "LOGIN")


@dataclass
class Credentials:
    user: str
    password: str


class Exchange:
    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism.upper()
        self._user: str | None = None

    def start(self, initial: str) -> bytes | Credentials:
        if self.mechanism not in MECHANISMS:
            return reply(504, "5.5.4", "Unrecognized authentication type (PLAIN and LOGIN are offered)")
        if initial:
            return self.step(initial)
        return b"334 \r\n" if self.mechanism == "PLAIN" else b"334 VXNlcm5hbWU6\r\n"  # "Username:"

    def step(self, line: str) -> bytes | Credentials:
        if line == "*":
            return reply(501, "5.7.0", "Authentication cancelled")
        text = _decode(line)
        if text is None:
            return reply(501, "5.5.2", "Cannot decode the AUTH response (base64 expected)")
        if self.mechanism == "PLAIN":
            parts = text.split("\0")
            if len(parts) != 3:
                return reply(501, "5.5.2", "Malformed AUTH PLAIN response")
            return Credentials(parts[1], parts[2])
        if self._user is None:
            self._user = text
            return b"334 UGFzc3dvcmQ6\r\n"  # "Password:"
        return Credentials(self._user, text)


def _decode(text: str) -> str | None:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True).decode("utf-8")
    except (ValueError, UnicodeError):
        return None
