"""Helpers for the security and robustness tests (test_security.py, test_hostile.py).

* ``SelfSignedCertificate``: a throw-away self-signed certificate for mx.example.test made with the
  ``openssl`` command in a temporary folder (removed again); never the key of anything real.
* ``starttls`` / ``tls_client_context``: a raw SMTPTalk upgraded to TLS with verification off
  (the certificate is self-signed; what is tested is the server's side).
* Small bounded readers: everything until the server closes, or "nothing more is said".
"""
from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import unittest
from dataclasses import asdict
from pathlib import Path

from tests.support import SMTPTalk, queued_entries, require_program

SERVER_NAME = "mx.example.test"
USER = "user@example.test"
PASSWORD = "secret-pw"     # what ServerProcess gives every account it creates
REMOTE = "x@remote.test"   # a domain that is not local: relaying


class SelfSignedCertificate:
    """A self-signed certificate and key for mx.example.test, made by the openssl command."""

    def __init__(self, test: unittest.TestCase) -> None:
        openssl = require_program(test, "openssl")
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-cert-"))
        self.cert = self.dir / "cert.pem"
        self.key = self.dir / "key.pem"
        # An EC key: quick to make and to use (many handshakes in the crash test).
        proc = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
             "-subj", f"/CN={SERVER_NAME}", "-addext", f"subjectAltName=DNS:{SERVER_NAME}"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or not self.cert.is_file() or not self.key.is_file():
            self.remove()
            raise AssertionError(f"openssl could not make a test certificate: {proc.stderr[-2000:]}")

    def settings(self) -> dict:
        return {"tls": {"certificate": str(self.cert), "key": str(self.key)}}

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def tls_client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def wrap(talk: SMTPTalk) -> None:
    """Start TLS on the talk's socket (after a 220 to STARTTLS, or at once on port 465)."""
    assert talk.buf == b"", f"bytes left over before the handshake: {talk.buf!r}"
    talk.sock = tls_client_context().wrap_socket(talk.sock, server_hostname=SERVER_NAME)


def starttls(test: unittest.TestCase, talk: SMTPTalk) -> None:
    """EHLO (STARTTLS must be offered), STARTTLS, handshake."""
    ehlo = talk.cmd("EHLO client.example.org")
    test.assertIn(b"STARTTLS", ehlo)
    test.assertRegex(talk.cmd("STARTTLS"), rb"^220 ")
    wrap(talk)


def auth_plain(user: str = USER, password: str = PASSWORD) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def ehlo_keywords(reply: bytes) -> list[str]:
    """The EHLO keywords (first word of each line after the first)."""
    lines = reply.decode("utf-8", "replace").split("\r\n")
    return [line[4:].split(" ")[0].upper() for line in lines[1:] if len(line) > 4]


def read_to_eof(talk: SMTPTalk, within: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (a reset counts as closed): (data, closed?)."""
    deadline = time.monotonic() + within
    data, talk.buf = talk.buf, b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        talk.sock.settimeout(left)
        try:
            chunk = talk.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return data, False
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            return data, True
        except ssl.SSLError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def said_nothing(talk: SMTPTalk, seconds: float) -> bytes:
    """What the server sends unasked within ``seconds`` (b"" when it stays quiet)."""
    if talk.buf:
        return talk.buf
    talk.sock.settimeout(seconds)
    try:
        return talk.sock.recv(65536) or b"<closed>"
    except (socket.timeout, ssl.SSLWantReadError):
        return b""
    except OSError as e:
        return f"<{type(e).__name__}>".encode()
    finally:
        talk.sock.settimeout(10)


def queue_entries(data_dir: Path) -> dict[str, dict]:
    """queue id -> its envelope, for every complete entry in DATA/queue/messages (read
    through the spool, as the server reads them)."""
    return {qid: asdict(entry) for qid, entry in queued_entries(data_dir).items()}


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def vm_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def run(argv: list[str], timeout: float, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def can_bind(address: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
