"""``ToolServicer``: translates ``rlyard.tools.v1`` protobuf to the executor and back.
No logic lives here beyond that translation, the stream's fan-out (with its call_id rules, and
the calls of a message that does not decode answered one by one), and keeping each response
message under the server's size limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import grpc

from rlyard.common.v1 import common_pb2
from rlyard.domain import ToolResult
from rlyard.domain.convert import image_from_pb, system_failure_pb, tool_result_to_pb
from rlyard.errors import InvalidArgument, ResourceExhausted, ServiceError, clip
from rlyard.interceptors import Undecodable, accepts_undecodable
from rlyard.logs import RateLimitedLog
from rlyard.server import Runtime
from rlyard.tools.v1 import tools_pb2, tools_pb2_grpc
from tool_servers.blocking import batch_context
from tool_servers.executor import ToolExecutor, clip_name
from tool_servers.registry import ToolContext
from tool_servers.salvage import salvage

logger = logging.getLogger(__name__)

MAX_CALL_ID_CHARS = 1024
Finished = tuple[common_pb2.ToolCall, ToolResult | common_pb2.ToolResult]   # a call and its result, not sent yet


def call_id_problem(call_id: str, *, in_stream: bool, repeats: int = 1, in_flight: bool = False) -> str | None:
    """Why ``call_id`` cannot answer a call, or None: results are matched by it, so in a stream it
    must be non-empty and not shared with another call of the message or one still running."""
    if len(call_id) > MAX_CALL_ID_CHARS:
        return f"the call_id is {len(call_id)} characters; at most {MAX_CALL_ID_CHARS} are allowed"
    if not in_stream:
        return None
    if not call_id:
        return "a call in a CallTools stream needs a call_id: its result is matched by it"
    if repeats > 1:
        return f"call_id {call_id!r} is used by {repeats} calls of one message; each call needs its own"
    if in_flight:
        return f"call_id {call_id!r} is still running on this stream; each call needs its own"
    return None


def result_budget(max_message_bytes: int) -> int:
    """The bytes the results of one response may take: the message limit less room for its
    framing and the fields around the results."""
    return max_message_bytes - min(4096, max_message_bytes // 8)


def _failure(call: common_pb2.ToolCall, code: grpc.StatusCode, message: str) -> common_pb2.ToolResult:
    call_id = call.call_id if len(call.call_id) <= MAX_CALL_ID_CHARS else clip_name(call.call_id)
    return system_failure_pb(call_id, clip_name(call.name), code.value[0], clip(message))


def split_by_size(results: list[common_pb2.ToolResult], budget: int) -> list[list[common_pb2.ToolResult]]:
    """``results`` in order, as consecutive groups whose encoded size stays within ``budget``
    bytes (each result is assumed to fit on its own)."""
    groups: list[list[common_pb2.ToolResult]] = []
    size = budget + 1
    for result in results:
        n = result.ByteSize() + 8   # the field's tag and length prefix
        if size + n > budget:
            groups.append([])
            size = 0
        groups[-1].append(result)
        size += n
    return groups


class ToolServicer(tools_pb2_grpc.ToolServiceServicer):
    """The gRPC face of a ``ToolExecutor``."""

    def __init__(self, executor: ToolExecutor, runtime: Runtime, ctx: ToolContext) -> None:
        self.executor = executor
        self.ctx = ctx
        self.limiter = runtime.limiter
        self.max_message_bytes = runtime.settings.max_message_bytes
        self.budget = result_budget(self.max_message_bytes)
        self.log = RateLimitedLog(logger)

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

    async def _run(self, req: tools_pb2.CallToolRequest) -> ToolResult:
        c = req.call
        problem = call_id_problem(c.call_id, in_stream=False)
        if problem is not None:
            raise InvalidArgument(problem)
        return await self.executor.call(req.session_id, req.context, c.call_id, c.name, c.arguments_json)

    def _to_pb(self, result: ToolResult) -> common_pb2.ToolResult:
        """The result on the wire; one over the message limit raises ``ResourceExhausted``."""
        pb = tool_result_to_pb(result)
        size = pb.ByteSize()
        if size > self.budget:
            raise ResourceExhausted(
                f"the result of {clip_name(result.name)} is {size} bytes, over this server's message limit of "
                f"{self.max_message_bytes} bytes (RLYARD_MAX_MESSAGE_BYTES); ask for less (a smaller region, "
                "fewer rows) or raise the limit on both ends"
            )
        return pb

    async def CallTool(self, request: tools_pb2.CallToolRequest, context: object) -> tools_pb2.CallToolResponse:
        return tools_pb2.CallToolResponse(result=self._to_pb(await self._run(request)))

    async def _run_in_stream(self, req: tools_pb2.CallToolRequest) -> ToolResult | common_pb2.ToolResult:
        """The call's result, or the ``system_error`` result of a call that failed (never raises)."""
        if not self.limiter.try_acquire():
            return _failure(req.call, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"at the limit of {self.limiter.limit} concurrent calls; retry later")
        try:
            return await self._run(req)
        except ServiceError as exc:
            return _failure(req.call, exc.code, exc.message)
        except Exception as exc:  # a bug in a tool must not kill the other calls of the stream
            return self._unexpected(req.call, exc)
        finally:
            self.limiter.release()

    def _unexpected(self, call: common_pb2.ToolCall, exc: Exception) -> common_pb2.ToolResult:
        name = call.name if call.name in self.executor.tools else "(unknown)"
        self.log.error(f"tool:{name}:{type(exc).__name__}", "tool %s failed", name, exc_info=exc)
        return _failure(call, grpc.StatusCode.INTERNAL, f"{name} failed (an unexpected error; the server logged it)")

    def _stream_pbs(self, finished: list[Finished]) -> list[common_pb2.ToolResult]:
        """The results that finished together, converted in one pass; one that cannot be sent becomes
        its call's ``system_error``."""
        out = []
        for call, result in finished:
            if isinstance(result, common_pb2.ToolResult):
                out.append(result)
                continue
            try:
                out.append(self._to_pb(result))
            except ServiceError as exc:
                out.append(_failure(call, exc.code, exc.message))
            except Exception as exc:  # e.g. structured data that does not serialise
                out.append(self._unexpected(call, exc))
        return out

    def _calls_of(
        self, message: tools_pb2.CallToolsRequest | Undecodable,
    ) -> tuple[Sequence[tools_pb2.CallToolRequest], list[tuple[str, str]]]:
        """The calls of a stream message, and ``(call_id, why)`` of those that did not decode."""
        if not isinstance(message, Undecodable):
            return message.calls, []
        salvaged = salvage(message.data)
        self.log.warning("undecodable", "a CallTools message of %d bytes did not decode: %d of its calls run, "
                        "%d are refused, %d have no readable call_id and go unanswered",
                        len(message.data), len(salvaged.calls), len(salvaged.undecodable), salvaged.lost)
        return salvaged.calls, salvaged.undecodable

    @accepts_undecodable
    async def CallTools(
        self, request_iterator: AsyncIterator[tools_pb2.CallToolsRequest | Undecodable], context: object
    ) -> AsyncIterator[tools_pb2.CallToolsResponse]:
        done: asyncio.Queue[Finished | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        running: set[str] = set()   # call_ids of the calls not answered yet
        pending = 0
        reading = True

        async def run(req: tools_pb2.CallToolRequest) -> None:
            try:
                result = await self._run_in_stream(req)
            finally:
                running.discard(req.call.call_id)
            done.put_nowait((req.call, result))

        async def read() -> None:
            nonlocal pending, reading
            try:
                async for message in request_iterator:
                    calls, undecodable = self._calls_of(message)
                    repeats = Counter([*(req.call.call_id for req in calls), *(cid for cid, _ in undecodable)])
                    for cid, why in undecodable:
                        pending += 1
                        call = common_pb2.ToolCall(call_id=cid)
                        done.put_nowait((call, _failure(
                            call, grpc.StatusCode.INVALID_ARGUMENT, f"this call did not decode ({clip(why, 200)}); "
                            "string fields (name, arguments_json, context, session_id) must be valid UTF-8")))
                    for req in calls:
                        pending += 1
                        cid = req.call.call_id
                        problem = call_id_problem(cid, in_stream=True, repeats=repeats[cid], in_flight=cid in running)
                        if problem is not None:
                            done.put_nowait((req.call, _failure(req.call, grpc.StatusCode.INVALID_ARGUMENT, problem)))
                            continue
                        running.add(cid)
                        task = asyncio.get_running_loop().create_task(run(req))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
            finally:
                reading = False
                done.put_nowait(None)

        # the calls that read() starts hand their blocking work to the pool a burst at a time
        reader = asyncio.get_running_loop().create_task(
            read(), context=batch_context(self.ctx.pool, self.ctx.settings.worker_threads))
        try:
            while reading or pending:
                batch = [await done.get()]
                while not done.empty():
                    batch.append(done.get_nowait())
                results = self._stream_pbs([r for r in batch if r is not None])
                pending -= len(results)
                # calls that finished together travel together, in as few messages as the limit allows
                for group in split_by_size(results, self.budget):
                    yield tools_pb2.CallToolsResponse(results=group)
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
        attachments = [image_from_pb(a) for a in request.attachments]
        session = self.executor.sessions.open(request.session_id, request.context, request.idle_timeout_s,
                                              attachments=attachments)
        return tools_pb2.OpenSessionResponse(
            session_id=session.session_id, idle_timeout_s=session.idle_timeout_s, image_ids=list(session.images)
        )

    async def CloseSession(
        self, request: tools_pb2.CloseSessionRequest, context: object
    ) -> tools_pb2.CloseSessionResponse:
        return tools_pb2.CloseSessionResponse(existed=self.executor.sessions.close(request.session_id))
