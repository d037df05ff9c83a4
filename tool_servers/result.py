"""Domain types of tool results: what a tool returns before it becomes protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TextContent:
    """Plain text the model reads."""

    text: str


@dataclass(frozen=True)
class JsonContent:
    """A JSON value the model reads (serialised on the wire)."""

    value: Any


@dataclass(frozen=True)
class ImageContent:
    """Image bytes with their type and size."""

    data: bytes
    mime_type: str
    width: int
    height: int
    image_id: str = ""


Content = TextContent | JsonContent | ImageContent


@dataclass
class ToolResult:
    """What a tool call produced.

    ``is_error`` marks the model's mistakes (bad arguments, an SQL error): the
    message in ``content`` should tell the model what to change. ``structured``
    is machine-readable output for rewards (e.g. the SQL rows).
    """

    content: list[Content] = field(default_factory=list)
    is_error: bool = False
    structured: Any = None
    truncated: bool = False

    @classmethod
    def error(cls, message: str) -> ToolResult:
        """A model-facing error with a message the model can act on."""
        return cls(content=[TextContent(message)], is_error=True)

    @classmethod
    def text(cls, text: str, structured: Any = None, truncated: bool = False) -> ToolResult:
        """A text result, optionally with structured data for rewards."""
        return cls(content=[TextContent(text)], structured=structured, truncated=truncated)

    @property
    def first_text(self) -> str:
        """The first text content, or '' (handy in logs and tests)."""
        for item in self.content:
            if isinstance(item, TextContent):
                return item.text
        return ""
