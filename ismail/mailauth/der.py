"""ASN.1 DER: the small part of it that keys, certificates and DKIM need.

Encoding is a set of functions that each return one complete element (tag, length,
contents) as bytes, so a structure is written the way the ASN.1 reads:

    sequence(integer(0), sequence(oid(RSA_ENCRYPTION), null()), octet_string(inner))

Decoding turns bytes into an ``Element`` (tag and contents).  ``decode`` wants
exactly one element and nothing after it; ``Element.children()`` decodes the
contents of a SEQUENCE, SET or explicit [n] the same way, and ``as_integer()``,
``as_oid()``, ... read a primitive value after checking its tag.  Only DER is
accepted, not the looser BER: definite, minimal lengths; minimal INTEGERs and OID
arcs; BOOLEAN as 00/FF; BIT STRING padding bits zero.  Anything else - truncated,
malformed, trailing bytes - raises ValueError (never IndexError or the like), so a
caller can turn any bad input into one clear message.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

# Universal tags (X.680); constructed ones carry the 0x20 bit.
BOOLEAN, INTEGER, BIT_STRING, OCTET_STRING, NULL, OID = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
UTF8_STRING, PRINTABLE_STRING, IA5_STRING = 0x0C, 0x13, 0x16
UTC_TIME, GENERALIZED_TIME = 0x17, 0x18
SEQUENCE, SET = 0x30, 0x31
CONSTRUCTED, CONTEXT = 0x20, 0x80

_PRINTABLE = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]*")
_MAX_LENGTH_OCTETS = 4  # 4 GiB is far beyond anything we read


# -- encoding ------------------------------------------------------------------------------------

def tlv(tag: int, content: bytes) -> bytes:
    """One element: a single-byte tag, its DER length, ``content``."""
    if not 0 <= tag <= 0xFF or tag & 0x1F == 0x1F:
        raise ValueError(f"tag {tag:#x} is not a single-byte ASN.1 tag")
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + content


def boolean(value: bool) -> bytes:
    return tlv(BOOLEAN, b"\xff" if value else b"\x00")


def integer(value: int) -> bytes:
    """Two's complement, in the fewest octets that keep the sign (0x80 -> 00 80)."""
    size = (value + (value < 0)).bit_length() // 8 + 1
    return tlv(INTEGER, value.to_bytes(size, "big", signed=True))


def null() -> bytes:
    return tlv(NULL, b"")


def oid(dotted: str) -> bytes:
    try:
        arcs = [int(a) for a in dotted.split(".")]
    except ValueError:
        raise ValueError(f"{dotted!r} is not an object identifier") from None
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39) or min(arcs) < 0:
        raise ValueError(f"{dotted!r} is not an object identifier")
    out = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(OID, bytes(out))


def octet_string(data: bytes) -> bytes:
    return tlv(OCTET_STRING, bytes(data))


def bit_string(data: bytes, unused_bits: int = 0) -> bytes:
    """``data`` whose last ``unused_bits`` bits are padding (they must be zero)."""
    if not 0 <= unused_bits <= 7 or (unused_bits and not data):
        raise ValueError(f"a BIT STRING cannot have {unused_bits} unused bits here")
    if data and data[-1] & ((1 << unused_bits) - 1):
        raise ValueError("the unused bits of a BIT STRING must be zero")
    return tlv(BIT_STRING, bytes((unused_bits,)) + bytes(data))


def named_bits(*positions: int) -> bytes:
    """A BIT STRING of named bits (KeyUsage ...): bit 0 is the first, trailing zeros dropped."""
    if not positions:
        return bit_string(b"")
    value = bytearray(max(positions) // 8 + 1)
    for bit in positions:
        value[bit // 8] |= 0x80 >> (bit % 8)
    return bit_string(bytes(value), 7 - max(positions) % 8)


def utf8_string(text: str) -> bytes:
    return tlv(UTF8_STRING, text.encode("utf-8"))


def printable_string(text: str) -> bytes:
    if not _PRINTABLE.fullmatch(text):
        raise ValueError(f"{text!r} has characters a PrintableString cannot hold")
    return tlv(PRINTABLE_STRING, text.encode("ascii"))


def ia5_string(text: str) -> bytes:
    return tlv(IA5_STRING, text.encode("ascii"))


def utc_time(when: datetime) -> bytes:
    """YYMMDDHHMMSSZ, for the years 1950-2049."""
    when = _utc(when)
    if not 1950 <= when.year <= 2049:
        raise ValueError(f"UTCTime holds the years 1950-2049, not {when.year}")
    return tlv(UTC_TIME, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))


def generalized_time(when: datetime) -> bytes:
    """YYYYMMDDHHMMSSZ (no fractions of a second, as RFC 5280 wants)."""
    when = _utc(when)
    return tlv(GENERALIZED_TIME, f"{when.year:04d}{when.strftime('%m%d%H%M%S')}Z".encode("ascii"))


def x509_time(when: datetime) -> bytes:
    """RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050."""
    return utc_time(when) if _utc(when).year < 2050 else generalized_time(when)


def sequence(*items: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(items))


def set_of(*items: bytes) -> bytes:
    """A SET OF: DER puts the encoded members in ascending byte order."""
    return tlv(SET, b"".join(sorted(items)))


def explicit(number: int, inner: bytes) -> bytes:
    """[number] EXPLICIT: a constructed context-specific element around ``inner``."""
    return tlv(CONTEXT | CONSTRUCTED | _tag_number(number), inner)


def implicit(number: int, content: bytes, constructed: bool = False) -> bytes:
    """[number] IMPLICIT: ``content`` (the contents only) under a context-specific tag."""
    return tlv(CONTEXT | (CONSTRUCTED if constructed else 0) | _tag_number(number), content)


def _tag_number(number: int) -> int:
    if not 0 <= number <= 30:
        raise ValueError(f"context tag [{number}] is out of range (0-30)")
    return number


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("a time for DER needs a time zone (use datetime.now(timezone.utc))")
    return when.astimezone(timezone.utc)


# -- decoding ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Element:
    """One decoded element: its tag byte and its contents."""
    tag: int
    content: bytes

    @property
    def constructed(self) -> bool:
        return bool(self.tag & CONSTRUCTED)

    def is_context(self, number: int) -> bool:
        return self.tag & 0xC0 == CONTEXT and self.tag & 0x1F == number

    def expect(self, tag: int, what: str) -> "Element":
        if self.tag != tag:
            raise ValueError(f"expected {what} (tag {tag:#04x}), found tag {self.tag:#04x}")
        return self

    def children(self) -> list["Element"]:
        """The elements inside a constructed element (SEQUENCE, SET, [n] EXPLICIT)."""
        if not self.constructed:
            raise ValueError(f"tag {self.tag:#04x} is not a constructed element")
        return decode_all(self.content)

    def sequence(self, what: str = "a SEQUENCE", at_least: int = 0, at_most: int | None = None) -> list["Element"]:
        """The members of a SEQUENCE, checking how many there are."""
        items = self.expect(SEQUENCE, what).children()
        if len(items) < at_least or (at_most is not None and len(items) > at_most):
            wanted = f"{at_least}" if at_most == at_least else f"{at_least}-{at_most if at_most is not None else 'more'}"
            raise ValueError(f"{what} with {len(items)} members ({wanted} expected)")
        return items

    def as_boolean(self) -> bool:
        self.expect(BOOLEAN, "a BOOLEAN")
        if self.content not in (b"\x00", b"\xff"):
            raise ValueError("a DER BOOLEAN is one byte, 00 or FF")
        return self.content == b"\xff"

    def as_integer(self) -> int:
        self.expect(INTEGER, "an INTEGER")
        c = self.content
        if not c:
            raise ValueError("an INTEGER with no contents")
        if len(c) > 1 and ((c[0] == 0 and c[1] < 0x80) or (c[0] == 0xFF and c[1] >= 0x80)):
            raise ValueError("an INTEGER that is not in its shortest form")
        return int.from_bytes(c, "big", signed=True)

    def as_null(self) -> None:
        self.expect(NULL, "NULL")
        if self.content:
            raise ValueError("a NULL with contents")

    def as_oid(self) -> str:
        self.expect(OID, "an OBJECT IDENTIFIER")
        c = self.content
        if not c or c[-1] & 0x80:
            raise ValueError("an OBJECT IDENTIFIER that is empty or cut short")
        arcs, value, start = [], 0, True
        for byte in c:
            if start and byte == 0x80:
                raise ValueError("an OBJECT IDENTIFIER arc that is not in its shortest form")
            value = (value << 7) | (byte & 0x7F)
            start = not byte & 0x80
            if start:
                arcs.append(value)
                value = 0
        first = min(arcs[0] // 40, 2)
        return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])

    def as_octets(self) -> bytes:
        return self.expect(OCTET_STRING, "an OCTET STRING").content

    def as_bits(self) -> bytes:
        """The bytes of a BIT STRING that holds whole bytes (keys, signatures)."""
        data, unused = self.as_bit_string()
        if unused:
            raise ValueError("a BIT STRING that does not hold whole bytes")
        return data

    def as_bit_string(self) -> tuple[bytes, int]:
        self.expect(BIT_STRING, "a BIT STRING")
        c = self.content
        if not c or c[0] > 7 or (c[0] and len(c) == 1):
            raise ValueError("a BIT STRING with a bad unused-bits count")
        if c[0] and c[-1] & ((1 << c[0]) - 1):
            raise ValueError("a BIT STRING whose unused bits are not zero")
        return c[1:], c[0]

    def as_string(self) -> str:
        """UTF8String, PrintableString or IA5String as text."""
        try:
            if self.tag == UTF8_STRING:
                return self.content.decode("utf-8")
            if self.tag in (PRINTABLE_STRING, IA5_STRING):
                text = self.content.decode("ascii")
                if self.tag == PRINTABLE_STRING and not _PRINTABLE.fullmatch(text):
                    raise ValueError("a PrintableString with characters it cannot hold")
                return text
        except UnicodeDecodeError:
            raise ValueError(f"a string (tag {self.tag:#04x}) that is not valid text") from None
        raise ValueError(f"expected a string, found tag {self.tag:#04x}")

    def as_time(self) -> datetime:
        """UTCTime or GeneralizedTime, in the Z form DER requires."""
        try:
            text = self.content.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("a time that is not ASCII") from None
        if self.tag == UTC_TIME and re.fullmatch(r"\d{12}Z", text):
            year = int(text[:2])
            text = str(1900 + year if year >= 50 else 2000 + year) + text[2:]
        elif not (self.tag == GENERALIZED_TIME and re.fullmatch(r"\d{14}Z", text)):
            raise ValueError(f"expected a UTCTime or GeneralizedTime (YYMMDDHHMMSSZ), found {text!r}")
        try:
            return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            raise ValueError(f"{text!r} is not a valid time") from None


def read(data: bytes, pos: int = 0) -> tuple[Element, int]:
    """The element that starts at ``pos``, and the position just after it."""
    if pos + 2 > len(data):
        raise ValueError("DER data cut short (no room for a tag and a length)")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError(f"multi-byte ASN.1 tags are not supported (tag byte {tag:#04x})")
    pos += 2
    if first < 0x80:
        size = first
    elif first == 0x80:
        raise ValueError("indefinite length is BER, not DER")
    else:
        count = first & 0x7F
        if count > _MAX_LENGTH_OCTETS:
            raise ValueError(f"a length of {count} octets is out of range")
        if pos + count > len(data):
            raise ValueError("DER data cut short (inside a length)")
        octets = data[pos:pos + count]
        size = int.from_bytes(octets, "big")
        if octets[0] == 0 or size < 0x80:
            raise ValueError("a length that is not in its shortest form")
        pos += count
    end = pos + size
    if end > len(data):
        raise ValueError(f"DER data cut short (an element of {size} bytes, {len(data) - pos} there)")
    return Element(tag, bytes(data[pos:end])), end


def decode_all(data: bytes) -> list[Element]:
    """Every element in ``data``, back to back (the contents of a constructed element)."""
    out, pos = [], 0
    while pos < len(data):
        element, pos = read(data, pos)
        out.append(element)
    return out


def decode(data: bytes) -> Element:
    """Exactly one element: ``data`` must hold nothing before or after it."""
    element, end = read(data)
    if end != len(data):
        raise ValueError(f"{len(data) - end} bytes of trailing data after the DER element")
    return element
