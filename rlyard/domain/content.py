"""Typed content: what tools return and turns carry — text, JSON and images."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rlyard.errors import InvalidArgument

IMAGE_MIME_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")


@dataclass(frozen=True)
class TextPart:
    """Plain text the model reads."""

    text: str


@dataclass(frozen=True)
class JsonPart:
    """A JSON value the model reads (serialised on the wire)."""

    value: Any

    def dumps(self) -> str:
        """The value as JSON text (values JSON cannot hold, such as bytes, as their ``str``)."""
        return json.dumps(self.value, default=to_jsonable)


@dataclass(frozen=True)
class ImagePart:
    """Encoded image bytes with their type and pixel size; ``image_id`` names the image within
    a tool session (an attachment or an image a tool produced)."""

    data: bytes
    mime_type: str
    width: int
    height: int
    image_id: str = ""

    def __post_init__(self) -> None:
        if self.mime_type not in IMAGE_MIME_TYPES:
            raise InvalidArgument(f"image {self.image_id or '(unnamed)'}: mime type {self.mime_type!r} is not one "
                                  f"of {', '.join(IMAGE_MIME_TYPES)}")
        if self.width < 1 or self.height < 1:
            raise InvalidArgument(f"image {self.image_id or '(unnamed)'}: size {self.width}x{self.height} must be "
                                  "at least 1x1 pixels")
        if not self.data:
            raise InvalidArgument(f"image {self.image_id or '(unnamed)'}: no bytes")

    def placeholder(self) -> str:
        """How a text-only policy sees the image: its name, size and type, never its bytes."""
        name = f" {self.image_id}" if self.image_id else ""
        return f"[image{name}: {self.width}x{self.height} {self.mime_type}, {len(self.data)} bytes]"


ContentPart = TextPart | JsonPart | ImagePart


def text_of(parts: Iterable[ContentPart], *, images: bool = False) -> str:
    """The text and JSON parts joined by newlines; images as placeholders when ``images``."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, TextPart):
            out.append(part.text)
        elif isinstance(part, JsonPart):
            out.append(part.dumps())
        elif images:
            out.append(part.placeholder())
    return "\n".join(out)


def to_jsonable(value: Any) -> Any:
    """``json.dumps``'s ``default``: bytes (an SQLite blob) as ``{"$blob_hex": ...}``, other
    values JSON cannot hold as their ``str``."""
    if isinstance(value, bytes):
        return {"$blob_hex": value.hex()}
    return str(value)
