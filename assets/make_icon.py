"""Draw ISMail's icon: a white envelope on a blue rounded square.

    python3 assets/make_icon.py      (writes assets/ismail.png and assets/ismail.ico)

Standard library only.  Every size is drawn from the shapes themselves, not scaled from a
large picture, so the 16-pixel icon stays crisp.  Edges are anti-aliased from signed
distances: a pixel's coverage is how far its centre lies inside the shape, in pixels.
The .ico holds PNG images (Windows Vista and later read those at every size).  The output
is the same bytes on every run, so the committed files can be checked against this script.
"""
from __future__ import annotations

import math
import struct
import sys
import zlib
from pathlib import Path

SIZES = (16, 32, 48, 256)
PNG_SIZE = 256
HERE = Path(__file__).resolve().parent

Color = tuple[float, float, float]
TOP: Color = (0.23, 0.55, 0.96)       # background gradient, top
BOTTOM: Color = (0.09, 0.33, 0.78)    # ... and bottom
PAPER: Color = (1.0, 1.0, 1.0)
FOLD: Color = (0.13, 0.40, 0.85)      # the flap's lines, the background's middle blue


def _rounded_box(x: float, y: float, cx: float, cy: float, hw: float, hh: float, r: float) -> float:
    """Signed distance from (x, y) to a rounded rectangle (negative inside)."""
    qx, qy = abs(x - cx) - hw + r, abs(y - cy) - hh + r
    outside = math.hypot(max(qx, 0.0), max(qy, 0.0))
    return outside + min(max(qx, qy), 0.0) - r


def _segment(x: float, y: float, ax: float, ay: float, bx: float, by: float) -> float:
    """Distance from (x, y) to the segment a-b."""
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(x - ax - t * dx, y - ay - t * dy)


def _coverage(distance: float, pixel: float) -> float:
    return max(0.0, min(1.0, 0.5 - distance / pixel))


def _over(dst: tuple[float, float, float, float], color: Color, alpha: float) -> tuple[float, float, float, float]:
    r, g, b, a = dst
    out_a = alpha + a * (1 - alpha)
    if out_a == 0:
        return (0.0, 0.0, 0.0, 0.0)
    mix = [(c * alpha + d * a * (1 - alpha)) / out_a for c, d in zip(color, (r, g, b))]
    return (mix[0], mix[1], mix[2], out_a)


def pixel_color(u: float, v: float, size: int) -> tuple[float, float, float, float]:
    """The colour at (u, v), the pixel's centre in a 0..1 square, for an icon ``size`` pixels wide."""
    px = 1.0 / size
    # Small icons get thicker lines (at least ~1.3 px) or the flap would vanish.
    line = max(0.055, 1.3 * px)
    margin = 0.0 if size <= 16 else 0.03
    bg = _coverage(_rounded_box(u, v, 0.5, 0.5, 0.5 - margin, 0.5 - margin, 0.2), px)
    t = v
    shade = tuple(a + (b - a) * t for a, b in zip(TOP, BOTTOM))
    out = _over((0.0, 0.0, 0.0, 0.0), shade, bg)  # type: ignore[arg-type]
    # The envelope: a wide white card, its flap drawn as a V from the top corners.
    left, right, top, bottom = 0.17, 0.83, 0.28, 0.72
    if size <= 16:  # edges on whole pixels, or they blur: columns 3-12, rows 4-11
        left, right, top, bottom = 3 / 16, 13 / 16, 4 / 16, 12 / 16
    card = _coverage(_rounded_box(u, v, (left + right) / 2, (top + bottom) / 2,
                                  (right - left) / 2, (bottom - top) / 2, 0.035), px)
    out = _over(out, PAPER, card)
    tip = (0.5, top + (bottom - top) * 0.58)
    fold = min(_segment(u, v, left + line / 2, top + line / 2, *tip),
               _segment(u, v, right - line / 2, top + line / 2, *tip))
    out = _over(out, FOLD, _coverage(fold - line / 2, px) * card)
    return out


def render(size: int) -> bytes:
    """RGBA rows, top to bottom, 8 bits a channel."""
    data = bytearray()
    for y in range(size):
        for x in range(size):
            r, g, b, a = pixel_color((x + 0.5) / size, (y + 0.5) / size, size)
            data += bytes(round(c * 255) for c in (r, g, b, a))
    return bytes(data)


def png(size: int, rgba: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    stride = size * 4
    raw = b"".join(b"\x00" + rgba[y * stride:(y + 1) * stride] for y in range(size))  # filter 0
    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


def ico(images: dict[int, bytes]) -> bytes:
    """An .ico file holding one PNG per size (ICONDIR, then ICONDIRENTRYs, then the images)."""
    out = struct.pack("<HHH", 0, 1, len(images))
    offset = 6 + 16 * len(images)
    body = b""
    for size, data in sorted(images.items()):
        side = 0 if size >= 256 else size  # 0 means 256 in an ICONDIRENTRY
        out += struct.pack("<BBBBHHII", side, side, 0, 0, 1, 32, len(data), offset + len(body))
        body += data
    return out + body


def build() -> dict[str, bytes]:
    images = {size: png(size, render(size)) for size in SIZES}
    return {"ismail.png": images[PNG_SIZE], "ismail.ico": ico(images)}


def main(folder: Path = HERE) -> int:
    for name, data in build().items():
        (folder / name).write_bytes(data)
        print(f"wrote {folder / name} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
