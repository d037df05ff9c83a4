"""Rate-limited logging for what a hostile or buggy client can trigger at will (undecodable
requests, failing calls): a token bucket per kind keeps the log bounded, and the next line that
gets through says how many were suppressed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_KINDS = 1024   # buckets kept; past it the oldest are forgotten


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    suppressed: int = 0


class RateLimitedLog:
    """Logs through ``logger``, at most ``burst`` lines of one kind at once and ``per_s`` a second
    after that; lines over the rate are counted, and the next one of that kind that is logged ends
    with ``[N more suppressed]``."""

    def __init__(self, logger: logging.Logger, *, burst: int = 5, per_s: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.burst = burst
        self.per_s = per_s
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def log(self, level: int, kind: str, msg: str, *args: Any, exc_info: BaseException | None = None) -> bool:
        """Log ``msg % args`` at ``level`` unless ``kind`` is over its rate; returns whether it was logged."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self.clock()
        bucket = self._buckets.get(kind)
        if bucket is None:
            if len(self._buckets) >= MAX_KINDS:
                del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[kind] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.per_s)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            bucket.suppressed += 1
            return False
        bucket.tokens -= 1.0
        if bucket.suppressed:
            msg, args = msg + " [%d more suppressed]", (*args, bucket.suppressed)
            bucket.suppressed = 0
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, kind: str, msg: str, *args: Any) -> bool:
        """``log`` at WARNING."""
        return self.log(logging.WARNING, kind, msg, *args)

    def error(self, kind: str, msg: str, *args: Any, exc_info: BaseException | None = None) -> bool:
        """``log`` at ERROR (with the traceback of ``exc_info``, when given)."""
        return self.log(logging.ERROR, kind, msg, *args, exc_info=exc_info)
