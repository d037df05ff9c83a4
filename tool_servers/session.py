"""Per-trajectory sessions: context (e.g. the database) and tool state, freed on
``CloseSession`` or after an idle timeout. The timeout a client asks for is capped and the
context bounded, so that no client can pin memory for good."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlyard.domain import ImagePart
from rlyard.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted

logger = logging.getLogger(__name__)

# Context keys for one-off calls only: a session serves a model's trajectory, and "purpose"
# (the SQL tools' "verification": larger caps for a reward's comparison) is not for the model.
ONE_OFF_CONTEXT_KEYS = frozenset({"purpose"})


@dataclass(frozen=True)
class ContextLimits:
    """How big a context may be: a few short strings (a db_id), never a payload."""

    max_keys: int = 16
    max_key_chars: int = 64
    max_value_chars: int = 1024

    def check(self, context: Mapping[str, str]) -> None:
        """INVALID_ARGUMENT, naming the limit and its setting, for a context over one."""
        if len(context) > self.max_keys:
            raise InvalidArgument(f"the context has {len(context)} keys; at most {self.max_keys} are allowed "
                                  "(RLYARD_TOOLS_SESSION_MAX_CONTEXT_KEYS)")
        for key, value in context.items():
            if len(key) > self.max_key_chars:
                raise InvalidArgument(f"a context key of {len(key)} characters ({key[:32]!r}…); at most "
                                      f"{self.max_key_chars} are allowed (RLYARD_TOOLS_SESSION_MAX_CONTEXT_KEY_CHARS)")
            if len(value) > self.max_value_chars:
                raise InvalidArgument(f"the context value of {key!r} is {len(value)} characters; at most "
                                      f"{self.max_value_chars} are allowed "
                                      "(RLYARD_TOOLS_SESSION_MAX_CONTEXT_VALUE_CHARS)")


@dataclass
class Session:
    """State of one trajectory on this server."""

    session_id: str
    context: dict[str, str]
    idle_timeout_s: float
    last_used: float = field(default_factory=time.monotonic)
    state: dict[str, Any] = field(default_factory=dict)   # tools keep per-session state here
    ephemeral: bool = False                                # a one-off call's context
    images: dict[str, ImagePart] = field(default_factory=dict)   # attachments and tool-made images, by id
    max_images: int = 64
    max_image_bytes: int = 64 * 1024 * 1024
    image_bytes: int = 0                                   # of the images held (kept by add_image)

    def touch(self) -> None:
        """Mark as used now (postpones idle expiry)."""
        self.last_used = time.monotonic()

    def add_image(self, image: ImagePart) -> None:
        """Hold ``image`` under its ``image_id``; INVALID_ARGUMENT for a missing or taken id,
        RESOURCE_EXHAUSTED past the session's image count or bytes."""
        if not image.image_id or len(image.image_id) > 128:
            raise InvalidArgument("an image in a session needs an image_id of 1 to 128 characters")
        if image.image_id in self.images:
            raise InvalidArgument(f"image_id {image.image_id!r} is already used in session {self.session_id!r}")
        if len(self.images) >= self.max_images:
            raise ResourceExhausted(f"session {self.session_id!r} holds {self.max_images} images, its limit")
        if self.image_bytes + len(image.data) > self.max_image_bytes:
            raise ResourceExhausted(
                f"session {self.session_id!r}: image {image.image_id!r} ({len(image.data)} bytes) would take the "
                f"session past {self.max_image_bytes} bytes of images"
            )
        self.images[image.image_id] = image
        self.image_bytes += len(image.data)


class SessionStore:
    """Open sessions by id, with idle expiry by a background reaper."""

    def __init__(
        self,
        default_idle_s: float,
        max_sessions: int,
        validate: Callable[[Mapping[str, str]], None] = lambda ctx: None,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_images: int = 64,
        max_image_bytes: int = 64 * 1024 * 1024,
        max_idle_s: float = 3600.0,
        context_limits: ContextLimits = ContextLimits(),
        validate_images: Callable[[Sequence[ImagePart]], None] = lambda images: None,
    ) -> None:
        self.default_idle_s = default_idle_s
        self.max_idle_s = max(max_idle_s, default_idle_s)
        self.context_limits = context_limits
        self.max_sessions = max_sessions
        self.max_images = max_images
        self.max_image_bytes = max_image_bytes
        self.validate = validate
        self.validate_images = validate_images
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._reaper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def idle_timeout(self, asked: float) -> float:
        """The idle timeout of a session that asks for ``asked`` seconds: 0 is the server's default,
        more than ``max_idle_s`` is capped to it; INVALID_ARGUMENT if negative, NaN or infinite."""
        if not math.isfinite(asked) or asked < 0:
            raise InvalidArgument(
                f"idle_timeout_s must be a finite number of seconds >= 0 (0: this server's default of "
                f"{self.default_idle_s:g} s; at most {self.max_idle_s:g} s are kept); got {asked}"
            )
        return self.default_idle_s if asked == 0 else min(asked, self.max_idle_s)

    def open(self, session_id: str, context: Mapping[str, str], idle_timeout_s: float, *,
             attachments: Sequence[ImagePart] = ()) -> Session:
        """Open a session holding ``attachments`` by image id; the timeout and the context's size are
        checked, then the context and the attachments against the tools, and nothing is kept when an
        attachment is refused."""
        if len(session_id) > 256:
            raise InvalidArgument("session_id is longer than 256 characters")
        if session_id and session_id in self._sessions:
            raise AlreadyExists(f"session {session_id!r} is already open")
        idle = self.idle_timeout(idle_timeout_s)
        self.context_limits.check(context)
        if len(self._sessions) >= self.max_sessions:
            self.expire()
            if len(self._sessions) >= self.max_sessions:
                raise ResourceExhausted(
                    f"{self.max_sessions} sessions are open; close sessions when trajectories end"
                )
        one_off = sorted(ONE_OFF_CONTEXT_KEYS & context.keys())
        if one_off:
            raise InvalidArgument(
                f"the context key {one_off[0]!r} is for one-off calls (CallTool without a session_id), "
                "not for sessions"
            )
        self.validate(context)
        self.validate_images(attachments)
        sid = session_id or uuid.uuid4().hex
        session = Session(sid, dict(context), idle, last_used=self.clock(), max_images=self.max_images,
                          max_image_bytes=self.max_image_bytes)
        for image in attachments:
            session.add_image(image)
        self._sessions[sid] = session
        logger.debug("session %s opened (%s)", sid, context)
        return session

    def ephemeral(self, context: Mapping[str, str]) -> Session:
        """A throwaway session for a one-off call with inline context."""
        self.context_limits.check(context)
        self.validate(context)
        return Session("", dict(context), 0.0, ephemeral=True, max_images=self.max_images,
                       max_image_bytes=self.max_image_bytes)

    def get(self, session_id: str) -> Session:
        """The open session, touched; NOT_FOUND if unknown or expired."""
        session = self._sessions.get(session_id)
        if session is not None and self.clock() - session.last_used > session.idle_timeout_s:
            # expired but not reaped yet (the reaper runs at a quarter of the default timeout)
            del self._sessions[session_id]
            session = None
        if session is None:
            raise NotFound(
                f"session {session_id!r} is not open (never opened, closed, or expired when idle)"
            )
        session.last_used = self.clock()
        return session

    def close(self, session_id: str) -> bool:
        """Free a session; returns whether it existed."""
        return self._sessions.pop(session_id, None) is not None

    def expire(self) -> int:
        """Free sessions idle past their timeout; returns how many."""
        now = self.clock()
        dead = [s.session_id for s in self._sessions.values() if now - s.last_used > s.idle_timeout_s]
        for sid in dead:
            del self._sessions[sid]
            logger.info("session %s expired after being idle", sid)
        return len(dead)

    async def start(self) -> None:
        """Start the background reaper."""
        interval = max(0.05, min(30.0, self.default_idle_s / 4))

        async def reap() -> None:
            while True:
                await asyncio.sleep(interval)
                self.expire()

        self._reaper = asyncio.get_running_loop().create_task(reap())

    async def stop(self) -> None:
        """Stop the reaper and drop every session."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        self._sessions.clear()
