"""Failures of the system, each carrying the gRPC status code it maps to.

What the *model* should see (bad arguments, an SQL error, an empty result) is
never an exception: tools return a normal result with ``is_error=True``. A
``ServiceError`` is for failures of the system or of a request that our own
code built wrongly; the runtime's interceptor turns it into
``context.abort(code, message)``, so servicer methods hold no try/except.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base class: a failure of the system with its gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """The request is malformed (built wrongly by the caller's code)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    """A named thing (session, database, run) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    """A thing with that name exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(ServiceError):
    """A limit was hit: concurrency, sessions, message size."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(ServiceError):
    """The system is not in a state to do this (e.g. shutting down)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ServiceError):
    """A dependency is down; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    """The work did not finish in time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ServiceError):
    """The caller did not present valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class RequestTooLarge(ResourceExhausted):
    """A request over the message limit, refused by the client before it is sent (gRPC would fail
    it, and every call of its stream, with INTERNAL 'Internal error from Core')."""


class ConfigError(ValueError):
    """A bad setting or config value; the message says how to fix it."""


MAX_MESSAGE_CHARS = 1000


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out. Messages that echo what
    a client sent (a tool name, a db_id) stay small: status details travel in trailers, which
    gRPC caps at a few kilobytes."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"
