"""JSON from untrusted text (requests, the model's tool calls): every way it can fail is an
``InvalidArgument`` that names the field, never a ``RecursionError`` or ``ValueError``."""

from __future__ import annotations

import json
from typing import Any

from rlyard.errors import InvalidArgument

# Deeper JSON is refused: nothing we score nests this far, and rewards compare values recursively.
MAX_JSON_DEPTH = 64


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# One decoder for every call: ``json.loads`` with a hook builds a new one each time.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def loads_json(text: str | bytes, field: str, *, check_depth: bool = True) -> Any:
    """``json.loads`` that refuses, naming ``field``: text that does not parse, nesting deeper than
    ``MAX_JSON_DEPTH`` (without ``check_depth``: the caller checks, e.g. with ``depth_exceeds``),
    NaN/Infinity, and integers past Python's digit limit."""
    try:
        value = _DECODER.decode(text) if isinstance(text, str) else json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{field} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # the C decoder recurses once per level of nesting
        raise InvalidArgument(f"{field} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # NaN/Infinity (above), an integer of more than 4300 digits, bad UTF-8 bytes
        what = str(exc) if "JSON number" in str(exc) else "an integer has too many digits"
        if isinstance(exc, UnicodeDecodeError):
            what = "it is not UTF-8"
        raise InvalidArgument(f"{field} is not valid JSON: {what}") from None
    if not check_depth:
        return value
    # fewer opening brackets than the limit cannot nest past it (the walk costs more than the parse)
    brackets = text.count("[") + text.count("{") if isinstance(text, str) else MAX_JSON_DEPTH + 1
    if brackets > MAX_JSON_DEPTH and depth_exceeds(value, MAX_JSON_DEPTH):
        raise InvalidArgument(f"{field} nests deeper than {MAX_JSON_DEPTH} levels")
    return value


_CONTAINERS = (dict, list, tuple)


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether lists and objects nest deeper than ``limit`` levels (level by level: no recursion,
    and one comprehension a level instead of one step per container)."""
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [child for node in level for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, _CONTAINERS)]
    return False
