"""Fixtures of the image tool tests: images made here (a pattern whose every pixel says where it
is, so that a crop can be checked pixel for pixel), hostile files, and real tool servers serving
the image family on 127.0.0.1 port 0."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest

from rlyard.domain import ImagePart
from rlyard.server import RunningServer
from rlyard.settings import ServerSettings
from tool_servers.app import tool_service
from tool_servers.image.settings import ImageSettings
from tool_servers.settings import ToolServerSettings

IMAGE_TOOLS = ("crop", "zoom", "rotate", "flip", "enhance", "revisit", "confirm")


def pattern(width: int, height: int) -> np.ndarray:
    """BGR pixels whose blue is x mod 251, green y mod 241 and red (x + 3y) mod 256: no two
    nearby pixels alike, so a crop's offset shows."""
    x = np.arange(width, dtype=np.int64)[None, :]
    y = np.arange(height, dtype=np.int64)[:, None]
    return np.stack([np.broadcast_to(x % 251, (height, width)), np.broadcast_to(y % 241, (height, width)),
                     (x + 3 * y) % 256], axis=-1).astype(np.uint8)


def encoded(pixels: np.ndarray, ext: str = ".png", *params: int) -> bytes:
    """``pixels`` encoded by OpenCV."""
    ok, buf = cv2.imencode(ext, pixels, list(params))
    assert ok
    return buf.tobytes()


def decoded(part: ImagePart) -> np.ndarray:
    """The pixels of a result's image."""
    pixels = cv2.imdecode(np.frombuffer(part.data, np.uint8), cv2.IMREAD_COLOR)
    assert pixels is not None and pixels.shape[:2] == (part.height, part.width)
    return pixels


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bomb_header(width: int = 50_000, height: int = 50_000) -> bytes:
    """A few bytes of PNG that claim ``width`` × ``height`` pixels (the IDAT is a stub)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096, 9))
            + png_chunk(b"IEND", b""))


def png_bomb(side: int = 30_000) -> bytes:
    """A complete, valid 1-bit grey PNG of ``side`` × ``side`` black pixels: ~110 KB that OpenCV
    would decode to 2.7 GB of BGR (900 million pixels: under OpenCV's own limit of 2^30)."""
    row = b"\x00" * (1 + (side + 7) // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def jpeg_bomb() -> bytes:
    """A small real JPEG whose frame header is rewritten to claim 65,000 × 65,000 pixels."""
    data = bytearray(encoded(pattern(16, 16), ".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 65_000, 65_000)
    return bytes(data)


def webp_bomb() -> bytes:
    """An extended WebP header that claims a 16,384 × 16,384 canvas (the format's largest)."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (16_383).to_bytes(3, "little") * 2
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


@pytest.fixture(scope="session")
def real_png_bomb() -> bytes:
    """``png_bomb()``, built once (about half a second)."""
    return png_bomb()


def photo(width: int = 640, height: int = 480, image_id: str = "photo") -> ImagePart:
    """A pattern PNG as an attachment."""
    return ImagePart(encoded(pattern(width, height)), "image/png", width, height, image_id)


StartImages = Callable[..., Any]


@pytest.fixture
def start_images(start_tools: Any) -> StartImages:
    """Factory: a real tool server serving the image tools, ``image={...}`` overriding the family's
    settings and other keywords the tool server's (``message_bytes`` the runtime's message limit)."""

    async def start(*, image: dict[str, Any] | None = None, message_bytes: int | None = None,
                    **server: Any) -> RunningServer:
        settings = ToolServerSettings(tools=server.pop("tools", IMAGE_TOOLS), **server)
        definition = tool_service(settings, [ImageSettings(**(image or {}))])
        runtime = ServerSettings(host="127.0.0.1", port=0,
                                 **({"max_message_bytes": message_bytes} if message_bytes else {}))
        running: RunningServer = await start_tools(definition=definition, server=runtime)
        return running

    return start
