"""Line ends of message files on disk, as POP3 and IMAP read them.

ISMail (and Courier, and Dovecot by default) stores messages with LF line ends; other
programs leave CRLF in a Maildir (Dovecot with mail_save_crlf, some synchronisers, a
.eml saved on Windows and dropped into new/).  A reader takes both: CRLF and LF are
each one line end and go out as CRLF, and a CR not followed by LF is a byte of the
text.  That is how Dovecot reads a Maildir too.  A message's size with CRLF line ends
(what POP3 lists and IMAP calls RFC822.SIZE) counts each line end as two octets.

ISMail writes LF, and never a CR right before an LF (``to_disk``): a CR CR LF from a
client would otherwise be read back as CR LF, one octet short of the size its name
records.  Such a CR is dropped, as Dovecot drops it when it stores with LF.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Iterator

_CRS_BEFORE_LF = re.compile(rb"\r+\n")


def to_lf(block: bytes) -> bytes:
    """``block`` with each CRLF as LF; a block that holds no CR is returned as it is
    (a search for one byte, so ISMail's own files pay next to nothing)."""
    return block.replace(b"\r\n", b"\n") if b"\r" in block else block


def to_crlf(block: bytes) -> bytes:
    """``block`` with every line end as CRLF, whether it was LF or CRLF on disk.  For a
    whole message, or a piece that does not end between the CR and the LF of a CRLF."""
    return to_lf(block).replace(b"\n", b"\r\n")


def lf_blocks(read: Callable[[int], bytes], size: int) -> Iterator[bytes]:
    """The blocks ``read(size)`` returns, each with its CRLFs as LF, a CR at the end of a
    block held back until the next one shows whether an LF follows.  No block is empty."""
    carry = b""
    while block := read(size):
        if carry:
            block, carry = carry + block, b""
        if b"\r" in block:
            if block[-1:] == b"\r":
                block, carry = block[:-1], b"\r"
            block = block.replace(b"\r\n", b"\n")
        if block:
            yield block
    if carry:
        yield carry


def crlf_size(read: Callable[[int], bytes], size: int = 1 << 20) -> int:
    """The size with CRLF line ends of what ``read`` gives until it is exhausted."""
    total = 0
    for block in lf_blocks(read, size):
        total += len(block) + block.count(b"\n")
    return total


def file_crlf_size(path) -> int:
    """The size with CRLF line ends of the file at ``path``."""
    with open(path, "rb") as f:
        return crlf_size(f.read)


def to_disk(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The pieces of a message as ISMail stores them: each CRLF as LF, and any CRs right
    before an LF dropped, also where a piece ends between them.  Empty pieces are left out."""
    carry = b""
    for chunk in chunks:
        if carry:
            chunk, carry = carry + chunk, b""
        if chunk[-1:] == b"\r":   # what follows may be an LF
            cut = len(chunk.rstrip(b"\r"))
            chunk, carry = chunk[:cut], chunk[cut:]
        out = chunk.replace(b"\r\n", b"\n")
        if b"\r" in out and b"\r\n" in out:   # a CR CR LF (a CR alone stays)
            out = _CRS_BEFORE_LF.sub(b"\n", chunk)
        if out:
            yield out
    if carry:
        yield carry
