"""Text from mail bytes, shared by the parts that read messages (IMAP SEARCH, content rules)."""
from __future__ import annotations


def bytes_to_text(data: bytes, charset: str | None = None) -> str:
    """Bytes as text: the declared charset, else UTF-8, else Latin-1 (which never fails)."""
    for name in (charset, "utf-8"):
        if name:
            try:
                return data.decode(name)
            except (LookupError, UnicodeDecodeError):
                pass
    return data.decode("latin-1")
