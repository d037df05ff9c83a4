"""A bench-only tool, ``wait``: sleeps for a lognormal latency, like a slow search or sandbox.

The latency of a call is a function of its ``key`` argument and the session's ``latency_seed``
(a hash, not a shared RNG), so the async engine and the lock-step baseline see exactly the same
latency for the same trajectory and turn, whatever order the calls arrive in. The distribution is
lognormal with median ``MEDIAN_S`` (50 ms) and p99 ``P99_S`` (1 s): ``mu = ln(0.05)``,
``sigma = ln(20) / z_0.99``. The session's ``latency_scale`` multiplies it (tests shrink it).

Importing this module registers the tool (``tool_servers.registry.register``); the server entry is
``python -m bench.latency_tool_server``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from rlyard.domain import ToolResult
from rlyard.errors import InvalidArgument
from tool_servers.registry import REGISTRY, ToolContext, register
from tool_servers.session import Session

MEDIAN_S = 0.050
P99_S = 1.0
Z_99 = 2.3263478740408408          # the standard normal's 0.99 quantile
MU = math.log(MEDIAN_S)
SIGMA = math.log(P99_S / MEDIAN_S) / Z_99


def latency_s(key: str, seed: int, scale: float = 1.0) -> float:
    """The latency of the call with ``key`` under ``seed``: lognormal(MU, SIGMA) × ``scale``."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest, "big"))
    return rng.lognormvariate(MU, SIGMA) * scale


class WaitArgs(BaseModel):
    """``wait`` takes the key that names the call (e.g. ``"<trajectory>-<turn>"``)."""

    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1, max_length=200)


def _context_numbers(context: Mapping[str, str]) -> tuple[int, float]:
    try:
        seed = int(context.get("latency_seed", "0"))
        scale = float(context.get("latency_scale", "1"))
    except ValueError as exc:
        raise InvalidArgument(f"wait: latency_seed must be an int and latency_scale a float ({exc})") from exc
    if not scale >= 0:
        raise InvalidArgument(f"wait: latency_scale must be >= 0 (got {scale})")
    return seed, scale


class Wait:
    """Sleeps for a seeded lognormal latency, then answers with a short text."""

    name = "wait"
    description = "Wait for a slow external service (bench only): sleeps for a lognormal latency."
    Args = WaitArgs

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx

    def validate_context(self, context: Mapping[str, str]) -> None:
        """``latency_seed`` (int) and ``latency_scale`` (float >= 0) are optional."""
        _context_numbers(context)

    async def call(self, args: WaitArgs, session: Session) -> ToolResult:
        """Sleep, then say how long."""
        seed, scale = _context_numbers(session.context)
        delay = latency_s(args.key, seed, scale)
        await asyncio.sleep(delay)
        return ToolResult.of_text(f"ok {args.key} after {delay * 1000:.0f} ms", structured={"latency_s": delay})


if Wait.name not in REGISTRY:      # importing twice (e.g. as __main__ and as a module) is harmless
    register(Wait)
