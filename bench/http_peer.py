"""The peers' style of tool server, for comparison: a FastAPI + uvicorn JSON
endpoint around the *same* ``ToolExecutor`` that the gRPC server runs
(``tool_servers.app.build_executor``), so that only the transport differs.

- ``POST /call``: one call, ``{"name", "arguments_json", "context", "call_id"}``
  in, one result out;
- ``POST /call_batch``: ``{"calls": [...]}`` in, ``{"results": [...]}`` out, in
  order (like verl-tool's ``/get_observation`` or Search-R1's ``/retrieve``).

``python -m bench.http_peer --ready-file F`` binds a free port, writes
``{"port": ...}`` to ``F`` once it listens, and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from rlyard.domain import TextPart, ToolResult
from rlyard.domain.content import to_jsonable
from tool_servers.app import build_executor
from tool_servers.executor import ToolExecutor
from tool_servers.settings import ToolServerSettings


class CallIn(BaseModel):
    """One tool call."""

    name: str
    arguments_json: str = ""
    context: dict[str, str] = Field(default_factory=dict)
    call_id: str = ""


class BatchIn(BaseModel):
    """Calls answered together."""

    calls: list[CallIn]


def outcome_json(r: ToolResult) -> dict[str, Any]:
    """A result as JSON-ready data (what ``tool_result_to_pb`` carries, in JSON)."""
    return {
        "call_id": r.call_id,
        "name": r.name,
        "content": [c.text if isinstance(c, TextPart) else repr(c) for c in r.content],
        "is_error": r.is_error,
        "latency_ms": r.latency_ms,
        "structured": r.structured,
        "truncated": r.truncated,
    }


def _dumps(data: Any) -> bytes:
    return json.dumps(data, default=to_jsonable, separators=(",", ":")).encode()


class _Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _dumps(content)


def make_app(executor: ToolExecutor) -> FastAPI:
    """The endpoints around ``executor``."""
    app = FastAPI(title="rlyard bench: HTTP peer")

    async def run(c: CallIn) -> dict[str, Any]:
        return outcome_json(
            await executor.call("", c.context, c.call_id, c.name, c.arguments_json)
        )

    @app.post("/call")
    async def call(body: CallIn) -> _Json:
        return _Json(await run(body))

    @app.post("/call_batch")
    async def call_batch(body: BatchIn) -> _Json:
        results = await asyncio.gather(*(run(c) for c in body.calls))
        return _Json({"results": list(results)})

    return app


async def serve(ready_file: Path | None, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve on a freshly bound socket until cancelled or signalled."""
    import uvicorn

    settings = ToolServerSettings.from_env("RLYARD_TOOLS")
    executor, tool_ctx = build_executor(settings)
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)  # connections wait in the backlog until uvicorn accepts them
    config = uvicorn.Config(
        make_app(executor), log_level="warning", access_log=False, lifespan="off",
        loop="asyncio", http="h11", backlog=1024,
    )
    server = uvicorn.Server(config)
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": sock.getsockname()[1], "pid": os.getpid()}))
        tmp.replace(ready_file)
    try:
        await server.serve(sockets=[sock])
    finally:
        tool_ctx.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level="WARNING")
    asyncio.run(serve(args.ready_file, args.host, args.port))


if __name__ == "__main__":
    main()
