"""Reading the message text after DATA (RFC 5321 §4.1.1.4, §4.5.2).

One rule only: a line ends with CRLF, and the message ends with CRLF "." CRLF.
A bare LF or bare CR anywhere in the text is never a line end: the text is read
on to its real end and the message is refused (550 5.5.2).  So no command hidden
behind LF.LF, CR.CR or the like ("SMTP smuggling", 2023) can ever run, and ISMail
never passes a bare CR or LF on.  Dot-stuffing is undone; a line over 1000 octets
or a message over the size limit is read to its end, kept no further, and refused.
"""
from __future__ import annotations

from ..queue.spool import MessageBuffer

TEXT_LINE_LIMIT = 1000  # octets including CRLF (RFC 5321 §4.5.3.1.6)

BARE = "bare"   # a bare CR or LF
LONG = "long"   # a line over TEXT_LINE_LIMIT
SIZE = "size"   # over the message size limit
STORAGE = "storage"  # the disk refused the text while it was read (spilled to a file)


class DataReader:
    def __init__(self, buffer: MessageBuffer, size_limit: int) -> None:
        self.buffer = buffer
        self.size_limit = size_limit
        self.flaw: str | None = None  # why the message will be refused, once known
        self.error: OSError | None = None
        self.lines = 0
        self._prev_crlf = True        # the DATA command's own CRLF starts the first line
        self._skipping = False        # inside an over-long line, kept no further
        self._tail = b""              # the last byte of what was skipped (is the LF a CRLF?)

    def feed(self, buf: bytearray, pos: int) -> tuple[int, bool]:
        """Take lines from buf[pos:]; returns the new position and whether the text ended."""
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if len(buf) - pos > TEXT_LINE_LIMIT:
                    self._tail = bytes(buf[-1:])
                    self._skipping = True
                    self._refuse(LONG)
                    pos = len(buf)
                return pos, False
            line = bytes(buf[pos:nl + 1])
            pos = nl + 1
            self.lines += 1
            if self._skipping:
                self._skipping = False
                crlf = line.endswith(b"\r\n") or (line == b"\n" and self._tail == b"\r")
                self._prev_crlf = crlf
                if not crlf:
                    self._refuse(BARE)
                continue
            crlf = line.endswith(b"\r\n")
            if crlf and self._prev_crlf and line == b".\r\n":
                return pos, True
            if not crlf or b"\r" in line[:-2]:
                self._refuse(BARE)
            elif len(line) > TEXT_LINE_LIMIT:
                self._refuse(LONG)
            if line[:1] == b"." and self._prev_crlf:
                line = line[1:]  # undo dot-stuffing (RFC 5321 §4.5.2)
            self._prev_crlf = crlf
            if self.flaw is None:
                if self.buffer.size + len(line) > self.size_limit:
                    self._refuse(SIZE)
                else:
                    try:
                        self.buffer.write(line)
                    except OSError as e:  # disk full while spilling a large message
                        self.error = e
                        self._refuse(STORAGE)

    def close(self) -> None:
        self.buffer.close()

    def _refuse(self, kind: str) -> None:
        if self.flaw is None:
            self.flaw = kind
            self.buffer.close()  # nothing more is kept of a message that will be refused
