"""Decoding an image under a pixel limit (its header is read first, so a bomb is refused before a
decoder allocates), encoding a result within the output limits (downscaled, then re-encoded as
JPEG, until it fits), and the cache of decoded images."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from tool_servers.image.header import Header, HeaderError, read_header
from tool_servers.image.settings import ImageSettings

_READ_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION   # pixels as stored: boxes match the header's size
_PNG_COMPRESSION = 1        # zlib level: files ~3 % larger than level 3 in ~2/3 of the time (bench/README.md)
_MIN_SIDE = 16              # an image is not shrunk below this to fit the byte limit


class DecodeError(ValueError):
    """The bytes are not an image the tools can use; the message says why."""


def check_header(data: bytes, max_pixels: int) -> Header:
    """The image's header, when its size is within ``max_pixels``; ``DecodeError`` otherwise."""
    try:
        header = read_header(data)
    except HeaderError as exc:
        raise DecodeError(str(exc)) from None
    if header.pixels > max_pixels:
        raise DecodeError(f"its header gives {header.width}x{header.height} = {header.pixels:,} pixels, over this "
                          f"server's limit of {max_pixels:,} (RLYARD_TOOLS_IMAGE_MAX_PIXELS); it was not decoded")
    return header


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """The image's pixels (height × width × 3, BGR, uint8), decoded only when its header's size is
    within ``max_pixels``; ``DecodeError`` for an unsupported, oversized, truncated or corrupt image."""
    header = check_header(data, max_pixels)
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _READ_FLAGS)
    except cv2.error:
        pixels = None
    if pixels is None:
        raise DecodeError(f"its {header.format.upper()} data does not decode: truncated or corrupt")
    if pixels.shape[:2] != (header.height, header.width):   # defensive: a decoder that disagrees with the header
        raise DecodeError(f"it decoded to {pixels.shape[1]}x{pixels.shape[0]}, not the "
                          f"{header.width}x{header.height} of its header")
    return pixels


@dataclass(frozen=True)
class Encoded:
    """An encoded result image, and what was done to fit the output limits (empty when nothing)."""

    data: bytes
    mime_type: str
    width: int
    height: int
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether it was downscaled or re-encoded to fit."""
        return bool(self.notes)


def encode(pixels: np.ndarray, fmt: str, jpeg_quality: int = 90) -> bytes:
    """``pixels`` as PNG or JPEG bytes."""
    if fmt == "png":
        ok, buf = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, _PNG_COMPRESSION])
    else:
        ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {pixels.shape} image as {fmt}")
    return buf.tobytes()


def resize_to(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """``pixels`` resized: area averaging to shrink, bicubic to enlarge."""
    shrink = width * height < pixels.shape[0] * pixels.shape[1]
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def fit_side(width: int, height: int, side: int) -> tuple[int, int]:
    """The size of ``width`` × ``height`` scaled so that its longer side is at most ``side``."""
    if max(width, height) <= side:
        return width, height
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_within(pixels: np.ndarray, settings: ImageSettings, stored: bytes | None = None) -> Encoded:
    """``pixels`` encoded within ``max_output_side`` and ``max_output_bytes``: downscaled to the side
    limit, encoded in ``output_format``, then — while over the byte limit — re-encoded as JPEG and
    shrunk by a quarter at a time. ``stored``: the same pixels already encoded in ``output_format``."""
    height, width = pixels.shape[:2]
    notes: list[str] = []
    w, h = fit_side(width, height, settings.max_output_side)
    if (w, h) != (width, height):
        pixels = resize_to(pixels, w, h)
        notes.append(f"downscaled from {width}x{height} to {w}x{h} "
                     f"(at most {settings.max_output_side} pixels a side)")
        stored = None
    fmt = settings.output_format
    data = stored if stored is not None else encode(pixels, fmt, settings.jpeg_quality)
    if len(data) > settings.max_output_bytes:
        first = len(data)
        if fmt == "png":
            fmt = "jpeg"
            data = encode(pixels, fmt, settings.jpeg_quality)
        while len(data) > settings.max_output_bytes and min(w, h) > _MIN_SIDE:
            w, h = max(1, w * 3 // 4), max(1, h * 3 // 4)
            pixels = resize_to(pixels, w, h)
            data = encode(pixels, fmt, settings.jpeg_quality)
        notes.append(f"re-encoded as {w}x{h} JPEG (quality {settings.jpeg_quality}, {len(data):,} bytes; "
                     f"{first:,} before) to fit {settings.max_output_bytes:,} bytes")
        if len(data) > settings.max_output_bytes:
            raise RuntimeError(f"a {w}x{h} JPEG is still {len(data)} bytes, over {settings.max_output_bytes}")
    return Encoded(data, "image/png" if fmt == "png" else "image/jpeg", w, h, tuple(notes))


class DecodedCache:
    """Decoded pixels of recent images, least recently used first out, within ``budget`` bytes.

    Keyed by the identity of the session's ``ImagePart``, held weakly: when a session is closed its
    images' pixels leave the cache, and a session that reuses an image id for other bytes never
    gets the old pixels."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[int, tuple[weakref.ref[object], np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.RLock()   # a finalizer may run while this thread holds it

    def get(self, key: object) -> np.ndarray | None:
        """The pixels cached for ``key``, or None."""
        with self._lock:
            entry = self._entries.get(id(key))
            if entry is None or entry[0]() is not key:
                return None
            self._entries.move_to_end(id(key))
            return entry[1]

    def put(self, key: object, pixels: np.ndarray) -> None:
        """Keep ``pixels`` for ``key`` if they fit the budget, evicting the least recently used."""
        if pixels.nbytes > self.budget:
            return
        pixels.setflags(write=False)     # shared between calls: nobody may change them in place
        with self._lock:
            self._drop(id(key))
            while self._entries and self._bytes + pixels.nbytes > self.budget:
                self._drop(next(iter(self._entries)))
            self._entries[id(key)] = (weakref.ref(key), pixels)
            self._bytes += pixels.nbytes
        weakref.finalize(key, self._forget, id(key))

    def _forget(self, key_id: int) -> None:
        """``key`` is gone (its session closed): free its pixels now, not at eviction."""
        with self._lock:
            entry = self._entries.get(key_id)
            if entry is not None and entry[0]() is None:
                self._drop(key_id)

    def _drop(self, key_id: int) -> None:
        entry = self._entries.pop(key_id, None)
        if entry is not None:
            self._bytes -= entry[1].nbytes

    @property
    def size_bytes(self) -> int:
        """Bytes of pixels held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
