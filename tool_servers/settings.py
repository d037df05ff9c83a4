"""Settings of the tool server itself (environment prefix ``RLYARD_TOOLS``); each tool family
has its own (``tool_servers.sql.settings``, ``tool_servers.poi.settings``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from rlyard.errors import ConfigError
from rlyard.settings import EnvSettings

# Variables of the flat settings of earlier versions, and where they went.
RENAMED = {
    "RLYARD_TOOLS_DB_DIR": "RLYARD_TOOLS_SQL_DB_DIR",
    "RLYARD_TOOLS_DISPLAY_ROWS": "RLYARD_TOOLS_SQL_DISPLAY_ROWS",
    "RLYARD_TOOLS_DISPLAY_CELL_CHARS": "RLYARD_TOOLS_SQL_DISPLAY_CELL_CHARS",
    "RLYARD_TOOLS_DISPLAY_MAX_CHARS": "RLYARD_TOOLS_SQL_DISPLAY_MAX_CHARS",
    "RLYARD_TOOLS_DESCRIBE_SAMPLE_ROWS": "RLYARD_TOOLS_SQL_DESCRIBE_SAMPLE_ROWS",
}


@dataclass(frozen=True)
class ToolServerSettings(EnvSettings):
    """Which tools to serve and the server's own limits.

    ``RLYARD_TOOLS_TOOLS=sql_query,list_tables`` picks tools by name; the server imports only
    the families of those tools, and an unknown name fails at start-up.
    """

    tools: tuple[str, ...] = ("sql_query", "list_tables", "describe_table")
    worker_threads: int = 4             # threads running blocking tool work (sqlite, images)
    session_idle_s: float = 600.0       # sessions unused this long are freed
    session_max_idle_s: float = 3600.0  # the longest idle timeout a session may ask for (longer: capped)
    max_sessions: int = 10_000
    session_max_images: int = 64        # images one session holds (attachments and tool-made)
    session_max_image_bytes: int = 64 * 1024 * 1024
    session_max_context_keys: int = 16  # a context (a session's, or a one-off call's) is a few short strings
    session_max_context_key_chars: int = 64
    session_max_context_value_chars: int = 1024

    def __post_init__(self) -> None:
        if not self.tools:
            raise ConfigError("RLYARD_TOOLS_TOOLS is empty: name at least one tool, e.g. sql_query")
        checks = {
            "RLYARD_TOOLS_WORKER_THREADS": self.worker_threads,
            "RLYARD_TOOLS_MAX_SESSIONS": self.max_sessions,
            "RLYARD_TOOLS_SESSION_MAX_IMAGES": self.session_max_images,
            "RLYARD_TOOLS_SESSION_MAX_IMAGE_BYTES": self.session_max_image_bytes,
            "RLYARD_TOOLS_SESSION_MAX_CONTEXT_KEYS": self.session_max_context_keys,
            "RLYARD_TOOLS_SESSION_MAX_CONTEXT_KEY_CHARS": self.session_max_context_key_chars,
            "RLYARD_TOOLS_SESSION_MAX_CONTEXT_VALUE_CHARS": self.session_max_context_value_chars,
        }
        for name, value in checks.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1 (got {value})")
        if not 0 < self.session_idle_s < math.inf:
            raise ConfigError("RLYARD_TOOLS_SESSION_IDLE_S must be a finite number of seconds > 0")
        if not self.session_idle_s <= self.session_max_idle_s < math.inf:
            raise ConfigError(
                f"RLYARD_TOOLS_SESSION_MAX_IDLE_S must be finite and at least RLYARD_TOOLS_SESSION_IDLE_S "
                f"({self.session_idle_s:g} s); got {self.session_max_idle_s:g}"
            )

    @classmethod
    def check_environ(cls, environ: Mapping[str, str]) -> None:
        """A ConfigError for variables of the flat settings of earlier versions, naming where each
        went (silently ignoring one would serve the wrong databases)."""
        stale = [f"{old} (now {new})" for old, new in RENAMED.items() if old in environ]
        if stale:
            raise ConfigError("renamed tool-server settings: " + ", ".join(stale))
