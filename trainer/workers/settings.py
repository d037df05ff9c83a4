"""Settings of the Celery rollout workers and of the trainer's side of them (prefix ``RLYARD_WORKERS``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from rlyard.errors import ConfigError
from rlyard.settings import EnvSettings


@dataclass(frozen=True)
class WorkerSettings(EnvSettings):
    """Where the broker and the result backend are, and how long a delivered group may stay unacked.

    ``visibility_timeout_s``: a group delivered to a worker and not acknowledged within this time
    (the worker died, or the group runs longer) is delivered again; it must exceed the longest
    group. ``restore_interval_s``: how often a worker looks for such groups. ``result_ttl_s``: how
    long a finished group waits in the backend for the trainer. ``concurrency``: groups one worker
    process rolls out at once (they share its sampler and channels). How a worker dials the
    services a job names (TLS, a token per target) is the process's ``ClientSettings``
    (``RLYARD_CLIENT_*``, rlyard/tls.py), as for the trainer: jobs never carry secrets through the broker.
    """

    broker_url: str = "redis://127.0.0.1:6379/0"
    result_url: str = ""                 # "" = the broker's Redis
    queue: str = "rlyard.rollouts"
    visibility_timeout_s: float = 600.0
    restore_interval_s: float = 10.0
    result_ttl_s: float = 3600.0
    concurrency: int = 4
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.broker_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"RLYARD_WORKERS_BROKER_URL={masked(self.broker_url)!r}: the workers use Redis "
                              "(redis://host:port/db)")
        if self.visibility_timeout_s <= 0 or self.restore_interval_s <= 0:
            raise ConfigError("RLYARD_WORKERS_VISIBILITY_TIMEOUT_S and _RESTORE_INTERVAL_S must be > 0 seconds")
        if self.concurrency < 1:
            raise ConfigError(f"RLYARD_WORKERS_CONCURRENCY={self.concurrency}: must be >= 1")

    @property
    def backend_url(self) -> str:
        """The result backend's URL."""
        return self.result_url or self.broker_url


def masked(url: str) -> str:
    """``url`` with its password shown as ``**`` (as Celery logs it): for messages and logs, which
    must not carry the Redis password of a secured deployment."""
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return url
    if not has_password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:**@{host}"))
