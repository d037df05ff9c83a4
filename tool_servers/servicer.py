"""``ToolServicer``: translates ``rlyard.tools.v1`` protobuf to the executor and back.
No logic lives here beyond that translation and the stream's fan-out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

import grpc

from rlyard.common.v1 import common_pb2
from rlyard.errors import ServiceError
from rlyard.interceptors import ConcurrencyLimiter
from rlyard.tools.v1 import tools_pb2, tools_pb2_grpc
from tool_servers.executor import CallOutcome, ToolExecutor
from tool_servers.result import ImageContent, JsonContent, TextContent
from tool_servers.sqlite_db import to_jsonable

logger = logging.getLogger(__name__)


def _content_pb(item: TextContent | JsonContent | ImageContent) -> common_pb2.Content:
    if isinstance(item, TextContent):
        return common_pb2.Content(text=item.text)
    if isinstance(item, JsonContent):
        return common_pb2.Content(json=json.dumps(item.value, default=to_jsonable))
    return common_pb2.Content(
        image=common_pb2.Image(
            data=item.data, mime_type=item.mime_type, width=item.width, height=item.height,
            image_id=item.image_id,
        )
    )


def result_pb(outcome: CallOutcome) -> common_pb2.ToolResult:
    """A domain outcome as ``common.v1.ToolResult``."""
    r = outcome.result
    return common_pb2.ToolResult(
        call_id=outcome.call_id,
        name=outcome.name,
        content=[_content_pb(c) for c in r.content],
        is_error=r.is_error,
        latency_ms=outcome.latency_ms,
        structured_json="" if r.structured is None else json.dumps(r.structured, default=to_jsonable),
        truncated=r.truncated,
    )


def system_error_pb(call: common_pb2.ToolCall, code: grpc.StatusCode, message: str) -> common_pb2.ToolResult:
    """A result that reports a failure of the system for one call of a stream."""
    return common_pb2.ToolResult(
        call_id=call.call_id,
        name=call.name,
        system_error=common_pb2.ErrorStatus(code=code.value[0], message=message),
    )


class ToolServicer(tools_pb2_grpc.ToolServiceServicer):
    """The gRPC face of a ``ToolExecutor``."""

    def __init__(self, executor: ToolExecutor, limiter: ConcurrencyLimiter) -> None:
        self.executor = executor
        self.limiter = limiter

    async def ListTools(self, request: tools_pb2.ListToolsRequest, context: object) -> tools_pb2.ListToolsResponse:
        return tools_pb2.ListToolsResponse(
            tools=[
                tools_pb2.ToolSpec(
                    name=tool.name,
                    description=tool.description,
                    parameters_json_schema=json.dumps(tool.Args.model_json_schema()),
                )
                for tool in self.executor.tools.values()
            ]
        )

    async def _run(self, req: tools_pb2.CallToolRequest) -> CallOutcome:
        c = req.call
        return await self.executor.call(req.session_id, req.context, c.call_id, c.name, c.arguments_json)

    async def CallTool(self, request: tools_pb2.CallToolRequest, context: object) -> tools_pb2.CallToolResponse:
        return tools_pb2.CallToolResponse(result=result_pb(await self._run(request)))

    async def _run_in_stream(self, req: tools_pb2.CallToolRequest) -> common_pb2.ToolResult:
        if not self.limiter.try_acquire():
            return system_error_pb(
                req.call, grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"at the limit of {self.limiter.limit} concurrent calls; retry later",
            )
        try:
            return result_pb(await self._run(req))
        except ServiceError as exc:
            return system_error_pb(req.call, exc.code, exc.message)
        except Exception as exc:  # a bug in a tool must not kill the other calls of the stream
            logger.exception("tool %s failed", req.call.name)
            return system_error_pb(req.call, grpc.StatusCode.INTERNAL, f"internal error: {exc}")
        finally:
            self.limiter.release()

    async def CallTools(
        self, request_iterator: AsyncIterator[tools_pb2.CallToolsRequest], context: object
    ) -> AsyncIterator[tools_pb2.CallToolsResponse]:
        done: asyncio.Queue[common_pb2.ToolResult | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        pending = 0
        reading = True

        async def run(req: tools_pb2.CallToolRequest) -> None:
            done.put_nowait(await self._run_in_stream(req))

        async def read() -> None:
            nonlocal pending, reading
            try:
                async for message in request_iterator:
                    for req in message.calls:
                        pending += 1
                        task = asyncio.get_running_loop().create_task(run(req))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
            finally:
                reading = False
                done.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while reading or pending:
                batch = [await done.get()]
                while not done.empty():
                    batch.append(done.get_nowait())
                results = [r for r in batch if r is not None]
                pending -= len(results)
                if results:
                    # calls that finished together travel in one message
                    yield tools_pb2.CallToolsResponse(results=results)
            await reader
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def OpenSession(
        self, request: tools_pb2.OpenSessionRequest, context: object
    ) -> tools_pb2.OpenSessionResponse:
        session = self.executor.sessions.open(request.session_id, request.context, request.idle_timeout_s)
        return tools_pb2.OpenSessionResponse(
            session_id=session.session_id, idle_timeout_s=session.idle_timeout_s
        )

    async def CloseSession(
        self, request: tools_pb2.CloseSessionRequest, context: object
    ) -> tools_pb2.CloseSessionResponse:
        return tools_pb2.CloseSessionResponse(existed=self.executor.sessions.close(request.session_id))
