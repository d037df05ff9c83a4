"""Settings of the tool server (environment prefix ``RLYARD_TOOLS``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlyard.client import DEFAULT_MAX_MESSAGE_BYTES
from rlyard.errors import ConfigError
from rlyard.settings import EnvSettings

# What a result message holds beyond its rows (text, columns, framing): rows may fill the rest.
_MESSAGE_HEADROOM_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ToolServerSettings(EnvSettings):
    """Which tools to serve and their limits.

    ``RLYARD_TOOLS_TOOLS=sql_query,list_tables`` picks tools by name; an
    unknown name fails at start-up.
    """

    tools: tuple[str, ...] = ("sql_query", "list_tables", "describe_table")
    db_dir: Path = Path("data/spider/database")
    worker_threads: int = 4             # threads running blocking tool work (sqlite)
    session_idle_s: float = 600.0       # sessions unused this long are freed
    max_sessions: int = 10_000
    sql_timeout_s: float = 2.0          # per statement, enforced by a progress handler
    sql_max_rows: int = 10_000          # structured rows a model's call returns
    sql_max_bytes: int = 8 * 1024 * 1024   # of those rows as JSON
    # A reward's one-off call with context purpose=verification (never a session) compares
    # full results: larger caps, still bounded and under the 16 MiB gRPC message limit.
    sql_verify_max_rows: int = 1_000_000
    sql_verify_max_bytes: int = 12 * 1024 * 1024
    sql_count_limit: int = 100_000      # rows past the cap counted for the "N more rows" marker
    sql_max_query_chars: int = 20_000
    display_rows: int = 20              # rows the model reads
    display_cell_chars: int = 60
    display_max_chars: int = 4_000
    describe_sample_rows: int = 3
    # Local-life POI tools (search, retrieve, poi_detail, nearby): the corpus that
    # `python -m envs.local_services.poi_corpus` writes, and where indexes are cached.
    poi_dir: Path = Path("data/generated/poi")
    poi_index_dir: Path = Path("data/generated/poi/index")
    poi_max_results: int = 20           # records one search/retrieve/nearby call returns at most

    def __post_init__(self) -> None:
        if not self.tools:
            raise ConfigError("RLYARD_TOOLS_TOOLS is empty: name at least one tool, e.g. sql_query")
        checks = {
            "RLYARD_TOOLS_WORKER_THREADS": self.worker_threads,
            "RLYARD_TOOLS_SQL_MAX_ROWS": self.sql_max_rows,
            "RLYARD_TOOLS_DISPLAY_ROWS": self.display_rows,
            "RLYARD_TOOLS_MAX_SESSIONS": self.max_sessions,
            "RLYARD_TOOLS_POI_MAX_RESULTS": self.poi_max_results,
        }
        for name, value in checks.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1 (got {value})")
        if self.sql_timeout_s <= 0:
            raise ConfigError("RLYARD_TOOLS_SQL_TIMEOUT_S must be > 0 seconds")
        most = DEFAULT_MAX_MESSAGE_BYTES - _MESSAGE_HEADROOM_BYTES
        for name, value in (("SQL_MAX_BYTES", self.sql_max_bytes), ("SQL_VERIFY_MAX_BYTES", self.sql_verify_max_bytes)):
            if not 1 <= value <= most:
                raise ConfigError(
                    f"RLYARD_TOOLS_{name} must be between 1 and {most} (got {value}): the rows travel in one "
                    f"gRPC message, and clients accept {DEFAULT_MAX_MESSAGE_BYTES} bytes at most"
                )
        if self.sql_verify_max_rows < self.sql_max_rows or self.sql_verify_max_bytes < self.sql_max_bytes:
            raise ConfigError(
                "RLYARD_TOOLS_SQL_VERIFY_MAX_ROWS/_BYTES must be at least RLYARD_TOOLS_SQL_MAX_ROWS/_BYTES: "
                "a reward must see every row the model saw"
            )
