"""Typed async clients of rlyard services.

Every call carries a deadline. Unary calls retry UNAVAILABLE with jittered
exponential backoff, a bounded number of times or over a window of time (so a
service that restarts is waited for); any other error is raised at once as
``grpc.aio.AioRpcError``. A tool request over the message limit is refused
before it is sent (``RequestTooLarge``), and a stream splits a batch into
messages under the limit. Make one client per target per process and reuse it:
it owns one channel. ``tls=`` (``rlyard.tls.ClientTLS``) dials TLS, ``auth_token=`` sends a
bearer token on every call but health checks; ``rlyard.tls.ClientSettings`` gives both per target.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rlyard.common.v1 import common_pb2
from rlyard.domain import ImagePart, ToolResult
from rlyard.domain.convert import image_to_pb, tool_result_from_pb
from rlyard.errors import DeadlineExceeded, RequestTooLarge, Unavailable
from rlyard.tls import ClientTLS
from rlyard.tools.v1 import tools_pb2, tools_pb2_grpc

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of UNAVAILABLE: attempts in all, and the backoff between them. With ``window_s`` > 0
    the bound is time instead: retries go on while the next one would start within ``window_s``
    of the first attempt (``max_attempts`` is then not used)."""

    max_attempts: int = 4
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    window_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.window_s < 0 or self.initial_backoff_s < 0:
            raise ValueError(f"{self}: max_attempts must be >= 1, window_s and initial_backoff_s >= 0")

    @classmethod
    def within(cls, window_s: float) -> RetryPolicy:
        """Retries of UNAVAILABLE over ``window_s`` seconds (a restart of the service), backing off
        from 0.1 s to 2 s; 0: one attempt."""
        if window_s <= 0:
            return NO_RETRY
        return cls(initial_backoff_s=0.1, max_backoff_s=2.0, window_s=window_s)

    def backoff(self, attempt: int) -> float:
        """Full-jitter backoff before retry number ``attempt`` (1-based)."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return random.uniform(0, cap)


NO_RETRY = RetryPolicy(max_attempts=1)


def make_channel(target: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, *,
                 tls: ClientTLS | None = None) -> grpc.aio.Channel:
    """An aio channel with rlyard's message-size limits: TLS with ``tls`` (rlyard.tls), else
    plaintext. After a failed connection it tries again within 2 s at most (gRPC's default backoff
    grows to 120 s, so a service back after a minute's outage would stay unreachable for another
    minute or two)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls.credentials(), options=options + tls.channel_options())


async def call_with_retry(
    fn: Callable[..., Awaitable[T]],
    request: Any,
    *,
    timeout: float,
    retry: RetryPolicy,
    metadata: tuple[tuple[str, str], ...] = (),
) -> T:
    """Call a unary stub method, retrying UNAVAILABLE as ``retry`` allows."""
    started = time.monotonic()
    for attempt in itertools.count(1):
        try:
            return await fn(request, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or (not retry.window_s and attempt >= retry.max_attempts):
                raise
            delay = retry.backoff(attempt)
            if retry.window_s and time.monotonic() - started + delay > retry.window_s:
                raise
            logger.log(logging.INFO if retry.window_s else logging.DEBUG,
                       "UNAVAILABLE (attempt %d, %.1fs in): %s; retrying in %.2fs", attempt,
                       time.monotonic() - started, exc.details(), delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


class _BaseClient:
    def __init__(
        self,
        target: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        auth_token: str | None = None,
        tls: ClientTLS | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry
        self.channel = make_channel(target, max_message_bytes, tls=tls)
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        )

    async def _unary(self, fn: Callable[..., Awaitable[T]], request: Any, timeout: float | None) -> T:
        return await call_with_retry(
            fn,
            request,
            timeout=self.timeout if timeout is None else timeout,
            retry=self.retry,
            metadata=self.metadata,
        )

    async def health(self, service: str = "", timeout: float = 2.0) -> str:
        """The health status name (SERVING, NOT_SERVING, ...) of ``service``."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = await stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def __aenter__(self) -> _BaseClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _arguments_json(arguments: Mapping[str, Any] | str) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _as_field(size: int) -> int:
    """Bytes a message of ``size`` bytes takes as a field of another: tag, length prefix, itself."""
    return 1 + (max(size.bit_length(), 1) + 6) // 7 + size


def split_calls(calls: Sequence[tools_pb2.CallToolRequest], limit: int) -> list[list[tools_pb2.CallToolRequest]]:
    """``calls`` in order, as consecutive groups whose ``CallToolsRequest`` stays within ``limit``
    bytes (each call is assumed to fit on its own)."""
    groups: list[list[tools_pb2.CallToolRequest]] = []
    size = limit + 1
    for call in calls:
        n = _as_field(call.ByteSize())
        if size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(call)
        size += n
    return groups


class ToolClient(_BaseClient):
    """Client of ``rlyard.tools.v1.ToolService``."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.stub = tools_pb2_grpc.ToolServiceStub(self.channel)
        self._ids = itertools.count()
        self.max_message_bytes: int = kwargs.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)

    def check_size(self, size: int, what: str) -> None:
        """``RequestTooLarge`` for a request of ``size`` bytes over this client's message limit."""
        if size > self.max_message_bytes:
            raise RequestTooLarge(
                f"{what} is {size} bytes, over the message limit of {self.max_message_bytes} bytes "
                "(the client's max_message_bytes; the server's RLYARD_MAX_MESSAGE_BYTES must allow it too): "
                "not sent; send smaller arguments or attachments"
            )

    async def __aenter__(self) -> ToolClient:
        return self

    async def list_tools(self, timeout: float | None = None) -> list[tools_pb2.ToolSpec]:
        """The tools the server offers, with their JSON Schemas."""
        resp = await self._unary(self.stub.ListTools, tools_pb2.ListToolsRequest(), timeout)
        return list(resp.tools)

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | str,
        *,
        session_id: str = "",
        context: Mapping[str, str] | None = None,
        call_id: str | None = None,
        timeout: float | None = None,
    ) -> ToolResult:
        """One unary call; ``context`` (e.g. ``{"db_id": ...}``) serves a one-off call."""
        request = tools_pb2.CallToolRequest(
            session_id=session_id,
            call=common_pb2.ToolCall(
                call_id=call_id or f"c{next(self._ids)}",
                name=name,
                arguments_json=_arguments_json(arguments),
            ),
            context=dict(context or {}),
        )
        self.check_size(request.ByteSize(), f"the request of tool call {name[:64]!r}")
        resp = await self._unary(self.stub.CallTool, request, timeout)
        return tool_result_from_pb(resp.result)

    async def open_session(
        self,
        context: Mapping[str, str] | None = None,
        *,
        session_id: str = "",
        idle_timeout_s: float = 0.0,
        attachments: Sequence[ImagePart] = (),
        timeout: float | None = None,
    ) -> str:
        """Open per-trajectory state on the server (``attachments``: images the session's tools
        read by ``image_id``); returns the session id."""
        request = tools_pb2.OpenSessionRequest(
            session_id=session_id, context=dict(context or {}), idle_timeout_s=idle_timeout_s,
            attachments=[image_to_pb(a) for a in attachments],
        )
        self.check_size(request.ByteSize(), "the OpenSession request")
        resp = await self._unary(self.stub.OpenSession, request, timeout)
        return resp.session_id

    async def close_session(self, session_id: str, timeout: float | None = None) -> bool:
        """Free a session; returns whether it existed."""
        resp = await self._unary(
            self.stub.CloseSession, tools_pb2.CloseSessionRequest(session_id=session_id), timeout
        )
        return resp.existed

    def stream(self, *, batch: bool = True) -> ToolStream:
        """A ``CallTools`` stream; with ``batch`` the calls made in one event-loop tick
        travel in one message."""
        return ToolStream(self, batch=batch)


class ToolStream:
    """Calls over one long-lived ``CallTools`` stream, answered by ``call_id``.

    ``await stream.call(...)`` from many tasks at once: with ``batch=True`` the
    requests made before the event loop next runs are sent together, in as few
    messages as the client's message limit allows; a call that cannot fit one
    message on its own is refused with ``RequestTooLarge`` and never sent. If
    the stream breaks, the calls waiting on it fail with ``Unavailable`` and
    the next call opens a new stream.
    """

    def __init__(self, client: ToolClient, *, batch: bool = True) -> None:
        self.client = client
        self.batch = batch
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[ToolResult]] = {}
        self._outbox: list[tools_pb2.CallToolRequest] = []
        self._flush_scheduled = False
        self._ids = itertools.count()
        self._write_lock = asyncio.Lock()  # grpc.aio allows one write at a time

    def _ensure_open(self) -> None:
        if self._call is None or self._call.done():
            self._call = self.client.stub.CallTools(metadata=self.client.metadata)
            self._reader = asyncio.get_running_loop().create_task(self._read(self._call))

    async def _read(self, call: Any) -> None:
        try:
            async for resp in call:
                for result in resp.results:
                    fut = self._pending.pop(result.call_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(tool_result_from_pb(result))
            error: Exception = Unavailable("CallTools stream closed by the server")
        except grpc.aio.AioRpcError as exc:
            error = Unavailable(f"CallTools stream failed: {exc.code().name}: {exc.details()}")
        except asyncio.CancelledError:
            error = Unavailable("CallTools stream closed")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outbox:
            return
        calls, self._outbox = self._outbox, []
        self._ensure_open()
        # one task per message, created in order: the write lock hands itself over first come, first served
        for group in split_calls(calls, self.client.max_message_bytes):
            asyncio.get_running_loop().create_task(self._send(group))

    async def _send(self, calls: list[tools_pb2.CallToolRequest]) -> None:
        try:
            async with self._write_lock:
                await self._call.write(tools_pb2.CallToolsRequest(calls=calls))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            for req in calls:
                fut = self._pending.pop(req.call.call_id, None)
                if fut is not None and not fut.done():
                    fut.set_exception(Unavailable(f"could not send on CallTools stream: {exc}"))

    async def call(
        self,
        name: str,
        arguments: Mapping[str, Any] | str,
        *,
        session_id: str = "",
        context: Mapping[str, str] | None = None,
        call_id: str | None = None,
        timeout: float | None = None,
    ) -> ToolResult:
        """One call over the stream; raises ``DeadlineExceeded`` past ``timeout``, and
        ``RequestTooLarge`` (before sending) for a call that cannot fit one message."""
        cid = call_id or f"s{next(self._ids)}"
        if cid in self._pending:
            raise ValueError(f"call_id {cid!r} is already waiting on this stream")
        request = tools_pb2.CallToolRequest(
            session_id=session_id,
            call=common_pb2.ToolCall(call_id=cid, name=name, arguments_json=_arguments_json(arguments)),
            context=dict(context or {}),
        )
        self.client.check_size(_as_field(request.ByteSize()), f"tool call {name[:64]!r} ({cid[:64]})")
        fut: asyncio.Future[ToolResult] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        self._outbox.append(request)
        if not self.batch:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        limit = self.client.timeout if timeout is None else timeout
        # A timer instead of asyncio.wait_for, which wraps ``fut`` in one more
        # future and so costs an extra event-loop turn per call.
        timer = asyncio.get_running_loop().call_later(limit, self._expire, cid, fut, name, limit)
        try:
            return await fut
        finally:
            timer.cancel()

    def _expire(self, cid: str, fut: asyncio.Future[ToolResult], name: str, limit: float) -> None:
        """The call's deadline passed: stop waiting for its result."""
        if not fut.done():
            self._pending.pop(cid, None)
            fut.set_exception(DeadlineExceeded(f"tool call {name} ({cid}) took longer than {limit}s"))

    async def close(self) -> None:
        """Half-close the stream and wait for the server to finish answering."""
        if self._call is not None and not self._call.done():
            with _suppress_rpc():
                await self._call.done_writing()
            if self._reader is not None:
                await self._reader
        self._call = None


class _suppress_rpc:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> bool:
        return exc_type is not None and issubclass(
            exc_type, grpc.aio.AioRpcError | asyncio.InvalidStateError
        )
