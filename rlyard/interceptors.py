"""The server interceptor every rlyard service runs behind.

For every RPC it: checks the bearer token (when one is configured), admits the
call under the service's concurrency limit (RESOURCE_EXHAUSTED past it), refuses
a request that does not decode with INVALID_ARGUMENT, turns a ``ServiceError``
into its status code, logs anything else with its traceback (the client sees
UNKNOWN with a message that names no exception), and records method, status
code and latency in the log and in Prometheus. What a client can trigger at
will is logged rate-limited (``rlyard.logs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from rlyard import metrics
from rlyard.errors import InvalidArgument, ServiceError, clip
from rlyard.logs import RateLimitedLog

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

# Health checks and reflection are infrastructure: never limited, never authenticated
# (Kubernetes probes carry no token).
_EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


class ConcurrencyLimiter:
    """Counts work in flight and refuses past a limit (shared by a service's RPCs)."""

    def __init__(self, service: str, limit: int) -> None:
        self.service = service
        self.limit = limit
        self.in_flight = 0
        # read when Prometheus scrapes, so the hot path does no metric update
        metrics.RPC_IN_FLIGHT.labels(service).set_function(lambda: self.in_flight)

    def try_acquire(self, n: int = 1) -> bool:
        """Take ``n`` slots if they are free; the event loop is single-threaded."""
        if self.in_flight + n > self.limit:
            return False
        self.in_flight += n
        return True

    def release(self, n: int = 1) -> None:
        """Give back ``n`` slots."""
        self.in_flight -= n


def _code_name(code: grpc.StatusCode | None) -> str:
    return (code or grpc.StatusCode.OK).name


class Undecodable:
    """Stands in for a request whose bytes did not decode, so that the handler refuses it with
    INVALID_ARGUMENT (a deserializer that raises makes gRPC answer UNKNOWN with the exception's
    class name, and log a traceback). A stream handler marked ``accepts_undecodable`` gets it
    as a message, with the bytes, to answer what it can."""

    __slots__ = ("data", "reason")

    def __init__(self, data: bytes, reason: str) -> None:
        self.data = data
        self.reason = reason

    def error(self, method: str) -> InvalidArgument:
        """What the client is told."""
        return InvalidArgument(
            f"a request message to {method.rsplit('/', 1)[-1]} ({len(self.data)} bytes) did not decode: "
            f"{clip(self.reason, 200)} (string fields must be valid UTF-8)"
        )


def accepts_undecodable(handler: F) -> F:
    """Mark a request-streaming handler that takes ``Undecodable`` messages itself (instead of
    the stream ending with INVALID_ARGUMENT at the first one)."""
    handler.accepts_undecodable = True  # type: ignore[attr-defined]
    return handler


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, returning ``Undecodable`` instead of raising."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:   # DecodeError, or what another deserializer raises on bad bytes
            return Undecodable(bytes(data or b""), str(exc))

    return deserialize


def _decoded(request: Any, method: str) -> Any:
    if isinstance(request, Undecodable):
        raise request.error(method)
    return request


async def _decoded_stream(requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request, method)


def _checked(request: Any, method: str, behavior: Any, streaming: bool) -> Any:
    if not streaming:
        return _decoded(request, method)
    return request if getattr(behavior, "accepts_undecodable", False) else _decoded_stream(request, method)


class RuntimeInterceptor(grpc.aio.ServerInterceptor):
    """Auth, admission, error mapping, logging and metrics for every RPC."""

    def __init__(self, service: str, limiter: ConcurrencyLimiter, auth_token: str | None) -> None:
        self.service = service
        self.limiter = limiter
        self.auth_token = auth_token
        self.log = RateLimitedLog(logger)   # per server: one server's abuse does not mute another's log

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith(_EXEMPT_PREFIXES):
            return handler
        authorized = self._authorized(handler_call_details)
        deserializer = tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary, authorized, streaming=False),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(method, handler.stream_unary, authorized, streaming=True),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream, authorized, streaming=False),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        # A bidirectional stream lives as long as its rollout worker: it is not admitted as a
        # whole (that would use up slots for good); its servicer admits each call it carries.
        # A message of it that does not decode ends it with INVALID_ARGUMENT once the calls
        # already read are answered, unless the handler ``accepts_undecodable``.
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(method, handler.stream_stream, authorized, streaming=True, admit=False),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        if not self.auth_token:
            return True
        md = dict(details.invocation_metadata or ())  # type: ignore[attr-defined]
        sent = md.get("authorization", "")
        expected = f"Bearer {self.auth_token}"
        return isinstance(sent, str) and hmac.compare_digest(sent, expected)

    async def _admit(
        self, method: str, authorized: bool, context: grpc.aio.ServicerContext, admit: bool = True
    ) -> None:
        if not authorized:
            self._record(method, grpc.StatusCode.UNAUTHENTICATED, 0.0)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        if admit and not self.limiter.try_acquire():
            self._record(method, grpc.StatusCode.RESOURCE_EXHAUSTED, 0.0)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.service} is at its limit of {self.limiter.limit} concurrent calls; retry later",
            )

    @contextlib.asynccontextmanager
    async def _observed(
        self, method: str, context: grpc.aio.ServicerContext, admitted: bool
    ) -> AsyncIterator[None]:
        """Map ServiceError to its status, log the unexpected, release and record."""
        start = time.perf_counter()
        code: grpc.StatusCode | None = grpc.StatusCode.OK
        try:
            yield
        except ServiceError as exc:
            code = exc.code
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                self.log.warning(f"invalid:{method}", "refused a request to %s: %s", method, clip(exc.message, 300))
            await context.abort(exc.code, clip(exc.message))
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code = grpc.StatusCode.UNKNOWN
            self.log.error(f"unexpected:{method}:{type(exc).__name__}", "unexpected error in %s", method,
                          exc_info=exc)
            await context.abort(code, f"the server failed on this request to {method.rsplit('/', 1)[-1]} "
                                      "(an unexpected error; the server logged it)")
        finally:
            if admitted:
                self.limiter.release()
            self._record(method, code, time.perf_counter() - start)

    def _wrap_unary(self, method: str, behavior: Any, authorized: bool, *, streaming: bool) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._admit(method, authorized, context)
            async with self._observed(method, context, admitted=True):
                return await behavior(_checked(request, method, behavior, streaming), context)

        return wrapper

    def _wrap_stream(self, method: str, behavior: Any, authorized: bool, *, streaming: bool,
                     admit: bool = True) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._admit(method, authorized, context, admit)
            async with self._observed(method, context, admitted=admit):
                result = behavior(_checked(request, method, behavior, streaming), context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:
                    await result

        return wrapper

    def _record(self, method: str, code: grpc.StatusCode | None, seconds: float) -> None:
        name = _code_name(code)
        metrics.RPC_TOTAL.labels(self.service, method, name).inc()
        metrics.RPC_LATENCY.labels(self.service, method).observe(seconds)
        logger.debug("rpc %s %s %.2fms", method, name, seconds * 1000)

