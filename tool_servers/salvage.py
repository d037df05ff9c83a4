"""The calls of a ``CallToolsRequest`` that does not decode as a whole (a string field with
invalid UTF-8 in one call): read from the wire format one call at a time, so that the calls that
decode still run and the others are answered by ``call_id`` instead of ending the stream."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from rlyard.tools.v1 import tools_pb2

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DecodeError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def fields(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """``(field number, wire type, bytes)`` of each field of a message (the bytes of a
    length-delimited field are its payload); ``DecodeError`` where the bytes stop making sense."""
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        start = pos
        if wire == _VARINT:
            _, pos = _varint(data, pos)
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        elif wire == _LEN:
            size, start = _varint(data, pos)
            pos = start + size
        else:
            raise DecodeError(f"wire type {wire}")
        if pos > len(data):
            raise DecodeError("truncated field")
        yield number, wire, data[start:pos]


def _call_id(call: bytes) -> str | None:
    """The ``call.call_id`` of a ``CallToolRequest``'s bytes, if it is readable (the last one wins,
    as when protobuf parses)."""
    found = None
    for number, wire, value in fields(call):
        if number == 2 and wire == _LEN:                  # CallToolRequest.call
            for inner, inner_wire, text in fields(value):
                if inner == 1 and inner_wire == _LEN:     # ToolCall.call_id
                    found = text
    if found is None:
        return ""
    try:
        return found.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass
class Salvaged:
    """What could be read of a message: the calls that decode, ``(call_id, why)`` of those that do
    not, and how many could not even be answered (no readable call_id, or bytes past the point of
    sense)."""

    calls: list[tools_pb2.CallToolRequest] = field(default_factory=list)
    undecodable: list[tuple[str, str]] = field(default_factory=list)
    lost: int = 0


def salvage(data: bytes) -> Salvaged:
    """The calls of the ``CallToolsRequest`` bytes ``data``, one at a time."""
    out = Salvaged()
    try:
        for number, wire, value in fields(data):
            if number != 1 or wire != _LEN:               # CallToolsRequest.calls; anything else is ignored
                continue
            try:
                out.calls.append(tools_pb2.CallToolRequest.FromString(value))
                continue
            except DecodeError as exc:
                why = str(exc)
            try:
                call_id = _call_id(value)
            except DecodeError:
                call_id = None
            if call_id:
                out.undecodable.append((call_id, why))
            else:
                out.lost += 1
    except DecodeError:
        out.lost += 1
    return out
