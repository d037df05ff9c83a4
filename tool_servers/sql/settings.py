"""Settings of the SQL tool family (environment prefix ``RLYARD_TOOLS_SQL``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlyard.client import DEFAULT_MAX_MESSAGE_BYTES
from rlyard.errors import ConfigError
from rlyard.settings import EnvSettings

# What a result message holds beyond its rows (text, columns, framing): rows may fill the rest.
_MESSAGE_HEADROOM_BYTES = 1024 * 1024


@dataclass(frozen=True)
class SqlSettings(EnvSettings):
    """The databases the SQL tools serve and the caps of one statement.

    ``max_rows``/``max_bytes`` cap the structured rows a model's call returns (bytes of the rows as
    JSON); ``display_*`` cap the table the model reads. A reward's one-off call with context
    ``purpose=verification`` (never a session) compares full results under ``verify_max_*``:
    larger caps, still bounded and under the gRPC message limit.
    """

    ENV_PREFIX = "RLYARD_TOOLS_SQL"

    db_dir: Path = Path("data/spider/database")
    timeout_s: float = 2.0              # per statement, enforced by a progress handler
    max_rows: int = 10_000              # structured rows a model's call returns
    max_bytes: int = 8 * 1024 * 1024    # of those rows as JSON
    verify_max_rows: int = 1_000_000    # a reward's verification call
    verify_max_bytes: int = 12 * 1024 * 1024
    count_limit: int = 100_000          # rows past the cap counted for the "N more rows" marker
    max_query_chars: int = 20_000
    display_rows: int = 20              # rows the model reads
    display_cell_chars: int = 60
    display_max_chars: int = 4_000
    describe_sample_rows: int = 3

    def __post_init__(self) -> None:
        for name in ("max_rows", "display_rows", "max_query_chars", "display_max_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.ENV_PREFIX}_{name.upper()} must be >= 1 (got {getattr(self, name)})")
        if self.timeout_s <= 0:
            raise ConfigError(f"{self.ENV_PREFIX}_TIMEOUT_S must be > 0 seconds")
        most = DEFAULT_MAX_MESSAGE_BYTES - _MESSAGE_HEADROOM_BYTES
        for name, value in (("MAX_BYTES", self.max_bytes), ("VERIFY_MAX_BYTES", self.verify_max_bytes)):
            if not 1 <= value <= most:
                raise ConfigError(
                    f"{self.ENV_PREFIX}_{name} must be between 1 and {most} (got {value}): the rows travel in one "
                    f"gRPC message, and clients accept {DEFAULT_MAX_MESSAGE_BYTES} bytes at most"
                )
        if self.verify_max_rows < self.max_rows or self.verify_max_bytes < self.max_bytes:
            raise ConfigError(
                f"{self.ENV_PREFIX}_VERIFY_MAX_ROWS/_BYTES must be at least {self.ENV_PREFIX}_MAX_ROWS/_BYTES: "
                "a reward must see every row the model saw"
            )
