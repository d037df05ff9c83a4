"""An image's format and pixel size read from the first bytes of its file, without decoding it:
how a decompression bomb (a few KB that claim 50,000 × 50,000 pixels) is refused before a
decoder allocates anything. PNG, JPEG and WebP; anything else is unsupported."""

from __future__ import annotations

import struct
from dataclasses import dataclass

MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers: every SOFn but DHT (C4), JPG (C8) and DAC (CC)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})   # markers without a length


class HeaderError(ValueError):
    """The bytes are not an image the tools read; the message says what they are instead."""


@dataclass(frozen=True)
class Header:
    """What the file says about itself."""

    format: str          # "png", "jpeg" or "webp"
    width: int
    height: int

    @property
    def mime_type(self) -> str:
        """The MIME type of the format."""
        return MIME_TYPES[self.format]

    @property
    def pixels(self) -> int:
        """Width × height."""
        return self.width * self.height


def read_header(data: bytes) -> Header:
    """The format and size of an encoded image.

    Raises:
        HeaderError: empty, truncated before the size, an unsupported format, or a size of 0.
    """
    if not data:
        raise HeaderError("it has no bytes")
    if data.startswith(_PNG_SIGNATURE):
        header = _png(data)
    elif data.startswith(b"\xff\xd8"):
        header = _jpeg(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        header = _webp(data)
    else:
        raise HeaderError(f"it is not PNG, JPEG or WebP ({_describe(data)}); send PNG, JPEG or WebP")
    if header.width < 1 or header.height < 1:
        raise HeaderError(f"its {header.format.upper()} header gives a size of {header.width}x{header.height}")
    return header


def _describe(data: bytes) -> str:
    for magic, name in ((b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
                        (b"%PDF", "PDF"), (b"<svg", "SVG"), (b"<?xml", "XML")):
        if data.startswith(magic):
            return f"it is {name}"
    return f"its first bytes are {data[:8].hex(' ')}"


def _png(data: bytes) -> Header:
    # signature, then the IHDR chunk: length 13, b"IHDR", width, height (big-endian)
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise HeaderError("its PNG header is truncated or has no IHDR chunk first")
    width, height = struct.unpack(">II", data[16:24])
    return Header("png", width, height)


def _jpeg(data: bytes) -> Header:
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            raise HeaderError(f"its JPEG markers are corrupt (byte {pos} is {data[pos]:#04x}, not a marker)")
        while pos < end and data[pos] == 0xFF:      # fill bytes
            pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):                  # end of image, or scan data before any frame header
            raise HeaderError("its JPEG data has no frame header (SOF) before the scan")
        if pos + 2 > end:
            break
        (length,) = struct.unpack(">H", data[pos:pos + 2])
        if length < 2:
            raise HeaderError(f"its JPEG segment at byte {pos} has a length of {length}")
        if marker in _SOF:
            if pos + 7 > end:
                break
            height, width = struct.unpack(">HH", data[pos + 3:pos + 7])
            return Header("jpeg", width, height)
        pos += length
    raise HeaderError("its JPEG data ends before the frame header (SOF): truncated")


def _webp(data: bytes) -> Header:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:        # extended: canvas width-1, height-1 (24-bit little-endian)
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return Header("webp", width, height)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:   # lossless: 14-bit width-1, height-1
        bits = int.from_bytes(data[21:25], "little")
        return Header("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":   # lossy: 14-bit sizes
        width, height = struct.unpack("<HH", data[26:30])
        return Header("webp", width & 0x3FFF, height & 0x3FFF)
    raise HeaderError("its WebP header is truncated or of an unknown kind")
