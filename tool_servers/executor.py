"""Dispatch of one tool call: parse and validate the arguments, run the tool,
time it. Every mistake of the model becomes an ``is_error`` result whose message
says what to fix (JSON nested too deep or numbers too long included: the parser
would raise RecursionError or ValueError); failures of the system raise ``ServiceError``."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from itertools import accumulate
from typing import Any

from pydantic import ValidationError

from rlyard import metrics
from rlyard.domain import ImagePart, ToolResult
from tool_servers.registry import Tool
from tool_servers.session import SessionStore

logger = logging.getLogger(__name__)

MAX_ARGUMENT_CHARS = 1_000_000
MAX_JSON_DEPTH = 32          # arrays and objects inside each other; tool arguments are shallow
MAX_NUMBER_CHARS = 100       # a JSON number literal; Python refuses ints past 4,300 digits
MAX_ECHOED_NAME_CHARS = 64   # of an unknown tool's name, in its result

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class _NumberTooLong(ValueError):
    def __init__(self, chars: int) -> None:
        super().__init__(chars)
        self.chars = chars


def _number(parse: type[int] | type[float]) -> Any:
    def bounded(text: str) -> int | float:
        if len(text) > MAX_NUMBER_CHARS:
            raise _NumberTooLong(len(text))
        return parse(text)

    return bounded


_parse_int, _parse_float = _number(int), _number(float)


def depth_over_limit(text: str) -> int:
    """How deep arrays and objects nest in the JSON ``text`` when that is over ``MAX_JSON_DEPTH``,
    else 0: linear time, no recursion, so that a deep document is refused before it is parsed
    (brackets inside strings do not count)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return 0
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    depth = max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)
    return depth if depth > MAX_JSON_DEPTH else 0


def clip_name(name: str, limit: int = MAX_ECHOED_NAME_CHARS) -> str:
    """A name as results and messages echo it: long ones cut (a 100 KB name echoed in every
    result would fill the reply)."""
    return name if len(name) <= limit else f"{name[:limit]}…"


def describe_validation_error(tool: str, exc: ValidationError) -> str:
    """'invalid arguments for sql_query: field 'query': Field required' and so on."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(arguments)"
        parts.append(f"field '{loc}': {err.get('msg', 'invalid')}")
    return f"invalid arguments for {tool}: " + "; ".join(parts)


class ToolExecutor:
    """Runs calls of the tools of one server against its sessions."""

    def __init__(self, tools: Mapping[str, Tool], sessions: SessionStore) -> None:
        self.tools = dict(tools)
        self.sessions = sessions

    def validate_context(self, context: Mapping[str, str]) -> None:
        """Every tool that declares context needs checks it (e.g. the db_id exists)."""
        for tool in self.tools.values():
            tool.validate_context(context)

    def validate_images(self, images: Sequence[ImagePart]) -> None:
        """Every tool that reads images checks a session's attachments (those with ``validate_images``)."""
        if not images:
            return
        checks = {getattr(type(tool), "validate_images", None): tool for tool in self.tools.values()}
        for check, tool in checks.items():
            if check is not None:
                check(tool, images)

    async def call(
        self, session_id: str, context: Mapping[str, str], call_id: str, name: str, arguments_json: str
    ) -> ToolResult:
        """Run one call: the result answers ``call_id`` with the time spent; raises ``ServiceError``
        only for failures of the system."""
        session = self.sessions.get(session_id) if session_id else self.sessions.ephemeral(context)
        start = time.perf_counter()
        result = await self._dispatch(name, arguments_json, session)
        elapsed = time.perf_counter() - start
        outcome = "error" if result.is_error else "ok"
        known = name in self.tools
        label = name if known else "(unknown)"
        metrics.TOOL_CALLS.labels(label, outcome).inc()
        metrics.TOOL_LATENCY.labels(label).observe(elapsed)
        return result.answering(call_id, name if known else clip_name(name), elapsed * 1000)

    async def _dispatch(self, name: str, arguments_json: str, session: object) -> ToolResult:
        tool = self.tools.get(name)
        if tool is None:
            return ToolResult.error(
                f"unknown tool {clip_name(name)!r}; the available tools are: {', '.join(sorted(self.tools))}"
            )
        if len(arguments_json) > MAX_ARGUMENT_CHARS:
            return ToolResult.error(
                f"the arguments of {name} are {len(arguments_json)} characters; "
                f"the limit is {MAX_ARGUMENT_CHARS}"
            )
        raw, problem = parse_arguments(name, arguments_json)
        if problem is not None:
            return ToolResult.error(problem)
        if not isinstance(raw, dict):
            return ToolResult.error(
                f"the arguments of {name} must be a JSON object, not {type(raw).__name__}"
            )
        try:
            args = tool.Args.model_validate(raw)
        except ValidationError as exc:
            return ToolResult.error(describe_validation_error(name, exc))
        return await tool.call(args, session)  # type: ignore[arg-type]


def parse_arguments(name: str, arguments_json: str) -> tuple[Any, str | None]:
    """The parsed arguments of a call to tool ``name``, or a message for the model saying what to fix."""
    if not arguments_json.strip():
        return {}, None
    depth = depth_over_limit(arguments_json)
    if depth:
        return None, (f"the arguments of {name} nest arrays and objects {depth} levels deep; at most "
                      f"{MAX_JSON_DEPTH} levels are allowed: send a flat JSON object such as {{\"key\": \"value\"}}")
    try:
        return json.loads(arguments_json, parse_int=_parse_int, parse_float=_parse_float), None
    except _NumberTooLong as exc:
        return None, (f"the arguments of {name} hold a number of {exc.chars} characters; a number may have at "
                      f"most {MAX_NUMBER_CHARS} characters: send a shorter number, or long digits as a JSON string")
    except json.JSONDecodeError as exc:
        return None, (f"the arguments of {name} are not valid JSON ({exc.msg} at line {exc.lineno} "
                      f"column {exc.colno}); send a JSON object such as {{\"key\": \"value\"}}")
    except RecursionError:   # not reached below MAX_JSON_DEPTH; kept so that no input escapes as a crash
        return None, (f"the arguments of {name} nest too deeply; send a flat JSON object such as "
                      '{"key": "value"}')
