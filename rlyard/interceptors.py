"""The server interceptor every rlyard service runs behind.

For every RPC it: checks the bearer token (when one is configured), admits the
call under the service's concurrency limit (RESOURCE_EXHAUSTED past it), turns
a ``ServiceError`` into its status code, logs anything else with its traceback
(the client sees UNKNOWN), and records method, status code and latency in the
log and in Prometheus.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from rlyard import metrics
from rlyard.errors import ServiceError

logger = logging.getLogger(__name__)

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


class RuntimeInterceptor(grpc.aio.ServerInterceptor):
    """Auth, admission, error mapping, logging and metrics for every RPC."""

    def __init__(self, service: str, limiter: ConcurrencyLimiter, auth_token: str | None) -> None:
        self.service = service
        self.limiter = limiter
        self.auth_token = auth_token

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
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary, authorized),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(method, handler.stream_unary, authorized),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream, authorized),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # A bidirectional stream lives as long as its rollout worker: it is not admitted as a
        # whole (that would use up slots for good); its servicer admits each call it carries.
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(method, handler.stream_stream, authorized, admit=False),
            request_deserializer=handler.request_deserializer,
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
            await context.abort(exc.code, exc.message)
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
            raise
        except BaseException as exc:
            code = _unexpected(method, exc)
            raise
        finally:
            if admitted:
                self.limiter.release()
            self._record(method, code, time.perf_counter() - start)

    def _wrap_unary(self, method: str, behavior: Any, authorized: bool) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._admit(method, authorized, context)
            async with self._observed(method, context, admitted=True):
                return await behavior(request, context)

        return wrapper

    def _wrap_stream(self, method: str, behavior: Any, authorized: bool, admit: bool = True) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._admit(method, authorized, context, admit)
            async with self._observed(method, context, admitted=admit):
                result = behavior(request, context)
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


def _unexpected(method: str, exc: BaseException) -> grpc.StatusCode:
    import asyncio

    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    logger.error("unexpected error in %s", method, exc_info=exc)
    return grpc.StatusCode.UNKNOWN
