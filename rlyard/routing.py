"""Client-side routing over the replicas of a tool service, by session id.

A tool session lives on the one replica that opened it, and a gRPC channel to a ClusterIP Service
keeps one connection, so every call of a client would land on one pod. ``RoutedToolClient`` keeps
one ``ToolClient`` (one channel) per replica and routes:

- a session to the replica that owns its id on a consistent-hash ring (``rlyard.hashring``) of the
  replicas, skipping replicas marked down. Session ids are made here (uuid4) when the caller gives
  none, so the route is known before the first call. The replica is remembered for the sessions
  opened here: a rescale moves none of them (a session's state cannot move), and the ring moves
  only ~1/n of the ids that other clients route without having opened them;
- a session's calls and its close to that replica, never elsewhere: when it is gone the calls
  fail with UNAVAILABLE (``Unavailable`` on a stream, ``AioRpcError`` on a unary call), which the
  rollout engine counts as an infra failure of that trajectory;
- calls without a session, ``ListTools`` and ``OpenSession`` round robin / by the ring over the
  live replicas, trying the next replica on UNAVAILABLE (nothing is lost: no state lives there yet).

A replica that answers UNAVAILABLE is marked down for ``down_s`` seconds (new sessions avoid it;
its open sessions keep routing to it). The replica set is a static list, or every address a DNS
name resolves to (a Kubernetes headless Service), resolved again every ``refresh_s`` seconds in the
background; a replica that leaves the answer is closed and its sessions fail.

Targets (``tool_client_for``): ``"host1:50051,host2:50051"`` — a static list of replicas;
``"routed:///sql-tools-headless:50051"`` — all addresses of the name; anything else is one plain
``ToolClient``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from rlyard.client import DEFAULT_MAX_MESSAGE_BYTES, RetryPolicy, ToolClient, ToolStream
from rlyard.domain import ImagePart, ToolResult
from rlyard.errors import RequestTooLarge, Unavailable
from rlyard.hashring import DEFAULT_VNODES, HashRing
from rlyard.tls import ClientTLS
from rlyard.tools.v1 import tools_pb2

logger = logging.getLogger(__name__)
T = TypeVar("T")

ROUTED_SCHEME = "routed:///"
# One quick retry on the same replica (a dropped connection); beyond that the router decides.
REPLICA_RETRY = RetryPolicy(max_attempts=2, initial_backoff_s=0.05, max_backoff_s=0.2)

Resolver = Callable[[str, int], Awaitable[list[str]]]


def parse_routed_target(target: str) -> tuple[tuple[str, ...], tuple[str, int] | None] | None:
    """``(static replicas, None)`` for a comma list, ``((), (host, port))`` for ``routed:///host:port``,
    None for a plain target.

    Raises:
        ValueError: a routed target that names no replica, or a ``host:port`` without a port.
    """
    if target.startswith(ROUTED_SCHEME):
        return (), _host_port(target[len(ROUTED_SCHEME):], target)
    if "," not in target:
        return None
    replicas = tuple(part.strip() for part in target.split(","))
    for replica in replicas:
        _host_port(replica, target)
    if len(set(replicas)) != len(replicas):
        raise ValueError(f"tool target {target!r} lists a replica twice")
    return replicas, None


def _host_port(text: str, target: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"tool target {target!r}: {text!r} is not host:port (e.g. sql-tools-headless:50051; "
                         "a list of replicas is 'host1:50051,host2:50051')")
    return host.strip("[]"), int(port)


def is_routed(target: str) -> bool:
    """Whether ``target`` names several replicas (a comma list or ``routed:///host:port``)."""
    return parse_routed_target(target) is not None


def tool_client_for(target: str, **kwargs: Any) -> AnyToolClient:
    """A ``RoutedToolClient`` for a routed target, else a ``ToolClient``; ``kwargs`` are
    ``ToolClient``'s (timeout, retry, auth_token, max_message_bytes, ...)."""
    return RoutedToolClient(target, **kwargs) if is_routed(target) else ToolClient(target, **kwargs)


async def resolve_all(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, as ``ip:port`` (``[ip]:port`` for IPv6), sorted."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out = set()
    for family, _, _, _, sockaddr in infos:
        ip = str(sockaddr[0])
        out.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return sorted(out)


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() == grpc.StatusCode.UNAVAILABLE
    return isinstance(exc, Unavailable)


class RoutedToolClient:
    """The interface of ``ToolClient`` over the replicas of one tool service; see the module
    docstring. ``retry`` bounds how long an open, a stateless call or ``ListTools`` waits when no
    replica answers (the whole service restarting); a session's calls are not retried elsewhere.
    ``resolve`` replaces DNS (tests). Over TLS the replicas of ``routed:///name:port`` are dialled
    by IP, so their certificates are checked against ``name`` unless ``tls`` names another server name."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        refresh_s: float = 10.0,
        down_s: float = 5.0,
        vnodes: int = DEFAULT_VNODES,
        resolve: Resolver = resolve_all,
        **client_kwargs: Any,
    ) -> None:
        parsed = parse_routed_target(target)
        if parsed is None:
            raise ValueError(f"tool target {target!r} names one server: use ToolClient, or list replicas "
                             f"('a:1,b:2') or a name to resolve ('{ROUTED_SCHEME}host:port')")
        if refresh_s <= 0 or down_s < 0:
            raise ValueError(f"refresh_s={refresh_s} must be > 0 and down_s={down_s} >= 0")
        self.target = target
        self.timeout = timeout
        self.retry = retry
        self.refresh_s = refresh_s
        self.down_s = down_s
        self.max_message_bytes: int = client_kwargs.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)
        self._dns = parsed[1]
        tls: ClientTLS | None = client_kwargs.get("tls")
        if tls is not None and not tls.server_name and self._dns is not None:
            client_kwargs["tls"] = dataclasses.replace(tls, server_name=self._dns[0])
        self._client_kwargs = client_kwargs | {"timeout": timeout, "retry": REPLICA_RETRY}
        self._resolve = resolve
        self.ring = HashRing(vnodes=vnodes)
        self.replicas: dict[str, ToolClient] = {}
        self._down: dict[str, float] = {}        # replica -> when it was marked down (monotonic)
        self._sessions: dict[str, str] = {}      # session id -> replica, for the sessions opened here
        self._rr = itertools.count()
        self._resolved_at = -math.inf
        self._refresh_task: asyncio.Task[None] | None = None
        self._leaving: dict[asyncio.Task[None], ToolClient] = {}   # replicas that left, closing
        self._set_replicas(parsed[0])

    # ------------------------------------------------------------------ membership
    def _set_replicas(self, addresses: Iterable[str]) -> None:
        wanted = set(addresses)
        for gone in sorted(set(self.replicas) - wanted):
            logger.info("tool replica %s left %s; its sessions fail", gone, self.target)
            self.ring.remove(gone)
            self._down.pop(gone, None)
            # closed after a grace of one call deadline: the calls already on it finish or time out
            # (closing at once would cancel them), new ones cannot reach it
            client = self.replicas.pop(gone)
            task = asyncio.get_running_loop().create_task(client.channel.close(grace=self.timeout))
            self._leaving[task] = client
            task.add_done_callback(lambda t: self._leaving.pop(t, None))
        for new in sorted(wanted - set(self.replicas)):
            if self.replicas:
                logger.info("tool replica %s joined %s", new, self.target)
            self.replicas[new] = ToolClient(new, **self._client_kwargs)
            self.ring.add(new)

    async def refresh(self) -> None:
        """Resolve the DNS name again now (a static list does not change). A failed lookup keeps
        the replicas known so far."""
        if self._dns is None:
            return
        self._resolved_at = time.monotonic()
        try:
            addresses = await self._resolve(*self._dns)
        except OSError as exc:
            logger.warning("could not resolve %s (%s); keeping %d known replica(s)", self.target, exc,
                           len(self.replicas))
            return
        if not addresses:
            logger.warning("%s resolved to no address; keeping %d known replica(s)", self.target, len(self.replicas))
            return
        self._set_replicas(addresses)

    async def _fresh(self) -> None:
        """Resolve at first use; later, start a background refresh when the last one is older than
        ``refresh_s`` (calls go on with the replicas known meanwhile)."""
        if self._dns is None:
            return
        if not self.replicas:
            await self.refresh()
            if not self.replicas:
                raise Unavailable(f"{self.target}: no replica resolved")
        elif time.monotonic() - self._resolved_at >= self.refresh_s and (
            self._refresh_task is None or self._refresh_task.done()
        ):
            self._resolved_at = time.monotonic()
            self._refresh_task = asyncio.get_running_loop().create_task(self.refresh())

    def mark_down(self, replica: str) -> None:
        """New sessions avoid ``replica`` for ``down_s`` seconds."""
        if replica in self.replicas and replica not in self.down():
            logger.warning("tool replica %s of %s is unavailable; new sessions go to the others", replica, self.target)
        self._down[replica] = time.monotonic()

    def down(self) -> set[str]:
        """The replicas marked down within the last ``down_s`` seconds."""
        now = time.monotonic()
        return {r for r, at in self._down.items() if now - at < self.down_s}

    def _order(self, key: str | None) -> list[str]:
        """Replicas to try: by the ring for ``key`` (round robin when None), live ones first."""
        if key is None:
            names = sorted(self.replicas)
            start = next(self._rr) % len(names) if names else 0
            names = names[start:] + names[:start]
        else:
            names = list(self.ring.candidates(key))
        down = self.down()
        return [n for n in names if n not in down] + [n for n in names if n in down]

    def replica_of(self, session_id: str) -> str:
        """The replica that holds ``session_id``: where it was opened from here, else its ring owner.

        Raises:
            Unavailable: the replica that held it has left the service (its state is gone).
        """
        replica = self._sessions.get(session_id)
        if replica is None:
            replica = self.ring.node_for(session_id)
            if replica is None:
                raise Unavailable(f"{self.target}: no replica to route session {session_id!r} to")
        elif replica not in self.replicas:
            raise Unavailable(f"tool replica {replica} that held session {session_id!r} left {self.target}; "
                              "the session's state is gone")
        return replica

    async def _failover(self, key: str | None, op: Callable[[ToolClient], Awaitable[T]]) -> T:
        """``op`` on the replicas in ``_order(key)`` until one does not answer UNAVAILABLE; when none
        answers, again after a backoff (and a fresh DNS answer) as ``retry`` allows."""
        await self._fresh()
        started = time.monotonic()
        for attempt in itertools.count(1):
            error: BaseException | None = None
            for replica in self._order(key):
                client = self.replicas.get(replica)
                if client is None:   # left while we tried the others
                    continue
                try:
                    return await op(client)
                except (grpc.aio.AioRpcError, Unavailable) as exc:
                    if not _unavailable(exc):
                        raise
                    self.mark_down(replica)
                    error = exc
            if error is None:
                raise Unavailable(f"{self.target}: no replica")
            delay = self.retry.backoff(attempt)
            over = (time.monotonic() - started + delay > self.retry.window_s if self.retry.window_s
                    else attempt >= self.retry.max_attempts)
            if over:
                raise error
            await asyncio.sleep(delay)
            await self.refresh()
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ ToolClient's interface
    def check_size(self, size: int, what: str) -> None:
        """``RequestTooLarge`` for a request of ``size`` bytes over the message limit."""
        if size > self.max_message_bytes:
            raise RequestTooLarge(f"{what} is {size} bytes, over the message limit of {self.max_message_bytes} "
                                  "bytes: not sent; send smaller arguments or attachments")

    async def list_tools(self, timeout: float | None = None) -> list[tools_pb2.ToolSpec]:
        """The tools of the service (every replica serves the same)."""
        return await self._failover(None, lambda c: c.list_tools(timeout))

    async def health(self, service: str = "", timeout: float = 2.0) -> str:
        """SERVING when some replica serves ``service``; else the first replica's answer."""
        await self._fresh()
        first = ""
        for replica in self._order(None):
            client = self.replicas.get(replica)
            if client is None:
                continue
            try:
                status = await client.health(service, timeout)
            except grpc.aio.AioRpcError as exc:
                status = exc.code().name
            if status == "SERVING":
                return status
            first = first or status
        return first or "UNKNOWN"

    async def open_session(
        self,
        context: Mapping[str, str] | None = None,
        *,
        session_id: str = "",
        idle_timeout_s: float = 0.0,
        attachments: Sequence[ImagePart] = (),
        timeout: float | None = None,
    ) -> str:
        """Open the session on the live replica that owns its id (made here when empty)."""
        sid = session_id or uuid.uuid4().hex
        placed: list[str] = []

        async def op(client: ToolClient) -> str:
            opened = await client.open_session(context, session_id=sid, idle_timeout_s=idle_timeout_s,
                                               attachments=attachments, timeout=timeout)
            placed.append(client.target)
            return opened

        opened = await self._failover(sid, op)
        self._sessions[opened] = placed[-1]
        return opened

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
        """A session's call on its replica only; a one-off call on any live replica."""

        async def op(client: ToolClient) -> ToolResult:
            return await client.call_tool(name, arguments, session_id=session_id, context=context,
                                          call_id=call_id, timeout=timeout)

        if not session_id:
            return await self._failover(None, op)
        await self._fresh()
        replica = self.replica_of(session_id)
        try:
            return await op(self.replicas[replica])
        except grpc.aio.AioRpcError as exc:
            if _unavailable(exc):
                self.mark_down(replica)
            raise

    async def close_session(self, session_id: str, timeout: float | None = None) -> bool:
        """Free a session on its replica; False when that replica has left (the state went with it)."""
        await self._fresh()
        try:
            replica = self.replica_of(session_id)
        except Unavailable:
            self._sessions.pop(session_id, None)
            return False
        try:
            existed = await self.replicas[replica].close_session(session_id, timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # a deadline: the caller may try again
                self._sessions.pop(session_id, None)
                if _unavailable(exc):
                    self.mark_down(replica)
            raise
        self._sessions.pop(session_id, None)
        return existed

    def stream(self, *, batch: bool = True) -> RoutedToolStream:
        """``CallTools`` streams, one per replica, behind one ``call``."""
        return RoutedToolStream(self, batch=batch)

    async def close(self) -> None:
        """Stop refreshing and close every replica's channel."""
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            await asyncio.gather(self._refresh_task, return_exceptions=True)
        clients, self.replicas = list(self.replicas.values()), {}
        for client in clients:
            await client.close()
        for task, client in list(self._leaving.items()):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()

    async def __aenter__(self) -> RoutedToolClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class RoutedToolStream:
    """``ToolStream.call`` over one stream per replica: a session's calls go to its replica (and
    fail with ``Unavailable`` when it is gone or down), a one-off call to any live replica."""

    def __init__(self, client: RoutedToolClient, *, batch: bool = True) -> None:
        self.client = client
        self.batch = batch
        self._streams: dict[str, tuple[ToolClient, ToolStream]] = {}

    def _stream(self, replica: str) -> ToolStream:
        owner = self.client.replicas.get(replica)
        if owner is None:
            raise Unavailable(f"tool replica {replica} left {self.client.target}")
        known = self._streams.get(replica)
        if known is None or known[0] is not owner:  # new, or the replica left and came back
            known = self._streams[replica] = (owner, owner.stream(batch=self.batch))
        return known[1]

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
        """One call over the replica's stream; see ``ToolStream.call``."""
        client = self.client
        await client._fresh()
        replicas = [client.replica_of(session_id)] if session_id else client._order(None)
        error: Unavailable | None = None
        for replica in replicas:
            try:
                return await self._stream(replica).call(name, arguments, session_id=session_id, context=context,
                                                        call_id=call_id, timeout=timeout)
            except Unavailable as exc:
                client.mark_down(replica)
                error = exc
        raise error or Unavailable(f"{client.target}: no replica")

    async def close(self) -> None:
        """Half-close every replica's stream and wait for its answers."""
        streams, self._streams = list(self._streams.values()), {}
        for _, stream in streams:
            await stream.close()


# What the trainer and the reward service hold: one server, or the replicas of one.
AnyToolClient = ToolClient | RoutedToolClient
AnyToolStream = ToolStream | RoutedToolStream
