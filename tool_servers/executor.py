"""Dispatch of one tool call: parse and validate the arguments, run the tool,
time it. Every mistake of the model becomes an ``is_error`` result whose message
says what to fix; failures of the system raise ``ServiceError``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

from pydantic import ValidationError

from rlyard import metrics
from rlyard.domain import ToolResult
from tool_servers.registry import Tool
from tool_servers.session import SessionStore

logger = logging.getLogger(__name__)

MAX_ARGUMENT_CHARS = 1_000_000


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
        label = name if name in self.tools else "(unknown)"
        metrics.TOOL_CALLS.labels(label, outcome).inc()
        metrics.TOOL_LATENCY.labels(label).observe(elapsed)
        return result.answering(call_id, name, elapsed * 1000)

    async def _dispatch(self, name: str, arguments_json: str, session: object) -> ToolResult:
        tool = self.tools.get(name)
        if tool is None:
            return ToolResult.error(
                f"unknown tool {name!r}; the available tools are: {', '.join(sorted(self.tools))}"
            )
        if len(arguments_json) > MAX_ARGUMENT_CHARS:
            return ToolResult.error(
                f"the arguments of {name} are {len(arguments_json)} characters; "
                f"the limit is {MAX_ARGUMENT_CHARS}"
            )
        try:
            raw = json.loads(arguments_json) if arguments_json.strip() else {}
        except json.JSONDecodeError as exc:
            return ToolResult.error(
                f"the arguments of {name} are not valid JSON ({exc.msg} at line {exc.lineno} "
                f"column {exc.colno}); send a JSON object such as {{\"key\": \"value\"}}"
            )
        if not isinstance(raw, dict):
            return ToolResult.error(
                f"the arguments of {name} must be a JSON object, not {type(raw).__name__}"
            )
        try:
            args = tool.Args.model_validate(raw)
        except ValidationError as exc:
            return ToolResult.error(describe_validation_error(name, exc))
        return await tool.call(args, session)  # type: ignore[arg-type]
