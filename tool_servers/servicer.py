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
from collections.abc import AsyncIterator, Callable, Sequence

import grpc

from rlyard.common.v1 import common_pb2
from rlyard.domain import ToolResult
from rlyard.domain.convert import image_from_pb, system_failure_pb, tool_result_into_pb, tool_result_to_pb
from rlyard.errors import InvalidArgument, ResourceExhausted, ServiceError, clip
from rlyard.interceptors import Undecodable, accepts_undecodable
from rlyard.logs import RateLimitedLog
from rlyard.server import Runtime
from rlyard.tools.v1 import tools_pb2, tools_pb2_grpc
from tool_servers.blocking import batch_context
from tool_servers.executor import ToolExecutor, clip_name
from tool_servers.registry import ToolContext
from tool_servers.salvage import salvage
from tool_servers.stream_calls import StreamCalls

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


def _as_field(size: int) -> int:
    """Bytes a message of ``size`` bytes takes as a field of another: tag, length prefix, itself."""
    return 1 + (max(size.bit_length(), 1) + 6) // 7 + size


def pack_results(finished: Sequence[Finished], budget: int,
                 write: Callable[[common_pb2.ToolResult, common_pb2.ToolCall, ToolResult | common_pb2.ToolResult], int],
                 ) -> list[tools_pb2.CallToolsResponse]:
    """The results of ``finished`` in order, each written in place by ``write`` (which returns its
    encoded size) into consecutive ``CallToolsResponse`` messages whose results stay within
    ``budget`` bytes (each result is assumed to fit on its own): no result is built apart and then
    copied, and none is encoded twice to be measured."""
    if not finished:
        return []
    messages = [tools_pb2.CallToolsResponse()]
    size = 0
    for call, result in finished:
        results = messages[-1].results
        pb = results.add()
        n = _as_field(write(pb, call, result))
        if size and size + n > budget:   # it does not fit beside the results before it: it opens the next message
            messages.append(tools_pb2.CallToolsResponse())
            messages[-1].results.append(pb)
            del results[-1]
            size = 0
        size += n
    return messages


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
        self._check_size(pb.ByteSize(), result.name)
        return pb

    def _check_size(self, size: int, name: str) -> None:
        if size > self.budget:
            raise ResourceExhausted(
                f"the result of {clip_name(name)} is {size} bytes, over this server's message limit of "
                f"{self.max_message_bytes} bytes (RLYARD_MAX_MESSAGE_BYTES); ask for less (a smaller region, "
                "fewer rows) or raise the limit on both ends"
            )

    async def CallTool(self, request: tools_pb2.CallToolRequest, context: object) -> tools_pb2.CallToolResponse:
        return tools_pb2.CallToolResponse(result=self._to_pb(await self._run(request)))

    async def _run_in_stream(self, req: tools_pb2.CallToolRequest, call: common_pb2.ToolCall
                             ) -> ToolResult | common_pb2.ToolResult:
        """The result of ``call`` (``req.call``, its call_id checked), or the ``system_error`` result
        of a call that failed (never raises)."""
        if not self.limiter.try_acquire():
            return _failure(call, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"at the limit of {self.limiter.limit} concurrent calls; retry later")
        try:
            return await self.executor.call(req.session_id, req.context, call.call_id, call.name, call.arguments_json)
        except ServiceError as exc:
            return _failure(call, exc.code, exc.message)
        except Exception as exc:  # a bug in a tool must not kill the other calls of the stream
            return self._unexpected(call, exc)
        finally:
            self.limiter.release()

    def _unexpected(self, call: common_pb2.ToolCall, exc: Exception) -> common_pb2.ToolResult:
        name = call.name if call.name in self.executor.tools else "(unknown)"
        self.log.error(f"tool:{name}:{type(exc).__name__}", "tool %s failed", name, exc_info=exc)
        return _failure(call, grpc.StatusCode.INTERNAL, f"{name} failed (an unexpected error; the server logged it)")

    def _write_result(self, pb: common_pb2.ToolResult, call: common_pb2.ToolCall,
                      result: ToolResult | common_pb2.ToolResult) -> int:
        """Write the result of ``call`` into ``pb`` (empty) and return its size; one that cannot be
        sent becomes the call's ``system_error``."""
        try:
            if isinstance(result, common_pb2.ToolResult):
                pb.MergeFrom(result)
                return pb.ByteSize()
            tool_result_into_pb(result, pb)
            size = pb.ByteSize()
            self._check_size(size, result.name)
            return size
        except ServiceError as exc:
            failure = _failure(call, exc.code, exc.message)
        except Exception as exc:  # e.g. structured data that does not serialise
            failure = self._unexpected(call, exc)
        pb.Clear()
        pb.MergeFrom(failure)
        return pb.ByteSize()

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
        loop = asyncio.get_running_loop()

        async def run(req: tools_pb2.CallToolRequest, call: common_pb2.ToolCall) -> None:
            calls.finish(call.call_id, (call, await self._run_in_stream(req, call)))

        def start(pair: tuple[tools_pb2.CallToolRequest, common_pb2.ToolCall]) -> asyncio.Task[None]:
            return loop.create_task(run(*pair))

        calls: StreamCalls[tuple[tools_pb2.CallToolRequest, common_pb2.ToolCall], Finished] = StreamCalls(start)

        def refuse(call: common_pb2.ToolCall, why: str) -> None:
            calls.answer((call, _failure(call, grpc.StatusCode.INVALID_ARGUMENT, why)))

        async def read() -> None:
            try:
                async for message in request_iterator:
                    decoded, undecodable = self._calls_of(message)
                    reqs = [(req, req.call) for req in decoded]
                    ids = [call.call_id for _, call in reqs] + [cid for cid, _ in undecodable]
                    repeats = Counter(ids) if len(set(ids)) < len(ids) else None
                    for cid, why in undecodable:
                        refuse(common_pb2.ToolCall(call_id=cid), f"this call did not decode ({clip(why, 200)}); "
                               "string fields (name, arguments_json, context, session_id) must be valid UTF-8")
                    accepted = []
                    for req, call in reqs:
                        cid = call.call_id
                        problem = None
                        if not cid or calls.in_flight(cid) or len(cid) > MAX_CALL_ID_CHARS or repeats:   # the rare case
                            problem = call_id_problem(cid, in_stream=True, repeats=repeats[cid] if repeats else 1,
                                                      in_flight=calls.in_flight(cid))
                        if problem is not None:
                            refuse(call, problem)
                        else:
                            accepted.append((cid, (req, call)))
                    calls.add(accepted)
            finally:
                calls.end_of_requests()

        # the calls that read() starts hand their blocking work to the pool a burst at a time
        reader = loop.create_task(read(), context=batch_context(self.ctx.pool, self.ctx.settings.worker_threads))
        try:
            while finished := await calls.take():
                # calls that finished together travel together, in as few messages as the limit allows
                for response in pack_results(finished, self.budget, self._write_result):
                    yield response
            await reader
        finally:
            reader.cancel()
            calls.cancel()
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
