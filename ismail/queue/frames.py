"""The framing of the channels between the server and its delivery process (courier.py),
shared by both ends: the pickle protocol and the reader of whole messages.

Apart from courier_child.py (the delivery process's own, which imports ``pickle``): the
server imports pickle with its first delivery (~0.4 MB resident), not at start.
"""
from __future__ import annotations

import os
import struct

PICKLE = 5  # pickle.HIGHEST_PROTOCOL of every Python 3.8+; both ends are the same program


class Frames:
    """The messages arriving on a channel, as ``Connection.recv_bytes`` gives them, but
    read with as few system calls as the data allows.

    ``recv_bytes`` reads a message's 4-byte length, then the message: two reads, and in
    a busy process each read is one more wait for the interpreter's lock.  A socket
    channel (Unix) is read here in large pieces instead, which usually hold a whole
    message (a delivery's answer in one read); the framing is Connection's own, so the
    other end still uses plain ``send_bytes``.  A Windows pipe channel keeps recv_bytes.
    """

    CHUNK = 256 * 1024

    def __init__(self, conn) -> None:
        from multiprocessing.connection import Connection
        self.conn = conn
        self.fd = conn.fileno() if type(conn) is Connection else None
        self.buf = bytearray()
        # Small reads land in one buffer kept for the channel's life: os.read(fd, 256 KiB)
        # would map and unmap a fresh 256 KiB object for every few-hundred-byte answer.
        self.scratch = memoryview(bytearray(self.CHUNK)) if hasattr(os, "readv") else None

    def read(self) -> bytes:
        """The next message; EOFError when the other end has closed the channel."""
        if self.fd is None:
            return self.conn.recv_bytes()
        buf = self.buf
        while True:
            need = 4
            if len(buf) >= 4:
                size, = struct.unpack_from("!i", buf)
                head = 4
                if size == -1:  # Connection's header for a message of 2 GiB or more
                    need = 12
                    if len(buf) >= 12:
                        size, = struct.unpack_from("!Q", buf, 4)
                        head = 12
                if len(buf) >= need:
                    need = head + size
                    if len(buf) >= need:
                        message = bytes(buf[head:need])
                        del buf[:need]
                        return message
            if self.scratch is None or need - len(buf) > self.CHUNK:
                chunk = os.read(self.fd, max(self.CHUNK, need - len(buf)))  # a large message
            else:
                chunk = self.scratch[:os.readv(self.fd, [self.scratch])]
            if not chunk:
                raise EOFError("the channel was closed")
            if not buf and len(chunk) >= 4 and len(chunk) == 4 + struct.unpack_from("!i", chunk)[0]:
                return bytes(chunk[4:])  # the usual case: exactly one whole message
            buf += chunk
