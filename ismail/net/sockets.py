"""Socket time-outs that cost no extra system call per read or write.

Python's own socket time-out (settimeout) runs poll() before every recv and send.
Each of those is one more hand-over of the GIL between busy threads, and at a
thousand messages a second that is a measurable part of the cost.  On POSIX a
blocking socket with kernel time-outs (SO_RCVTIMEO / SO_SNDTIMEO) gives the same
bound on waiting with one system call per operation; an expired wait raises
BlockingIOError (or, for TLS, an SSLError), which callers treat like a time-out.

Windows keeps Python's own time-out: there a socket whose SO_RCVTIMEO expired is
documented as unusable afterwards.
"""
from __future__ import annotations

import os
import socket
import ssl
import struct

# What an expired wait raises, with either kind of time-out.
WAITED = (socket.timeout, BlockingIOError)


def set_io_timeout(sock: socket.socket, seconds: float) -> None:
    if os.name == "nt":
        sock.settimeout(seconds)
        return
    sock.settimeout(None)
    whole = int(seconds)
    timeval = struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def no_delay(sock: socket.socket) -> None:
    """Small replies go out at once instead of waiting for Nagle's algorithm."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def client_tls_context(verify: bool) -> ssl.SSLContext:
    """For talking to other servers; ``verify`` False for opportunistic TLS to MX hosts
    and for a SmartHost whose certificate the user chose not to check."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
