"""Shared fixtures: real tool servers on 127.0.0.1 (port 0, bound by gRPC) over real
SQLite files. Nothing of ours is mocked; every server and client is closed at teardown.

Helpers are handed out as fixtures (factories) rather than imported from this file,
because the test folders are not packages.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rlyard.client import RetryPolicy, ToolClient
from rlyard.server import RunningServer, ServiceDefinition, start_server
from rlyard.settings import ServerSettings
from tool_servers.app import tool_service
from tool_servers.settings import ToolServerSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
SPIDER_DB_DIR = REPO_ROOT / "data" / "spider" / "database"

# The time limit the shared settings give a statement: long enough to catch a call
# "in flight", short enough to keep the suite fast.
SQL_TIMEOUT_S = 1.5


@dataclass(frozen=True)
class Repo:
    """Where things live in the checkout."""

    root: Path
    python: Path
    spider_db_dir: Path
    spider_dev_json: Path


@pytest.fixture(scope="session")
def repo() -> Repo:
    """Paths of the checkout (the venv's python runs the subprocess tests)."""
    python = REPO_ROOT / ".venv" / "bin" / "python"
    assert python.exists(), f"expected the project venv at {python}"
    assert SPIDER_DB_DIR.is_dir(), f"expected the Spider databases under {SPIDER_DB_DIR}"
    return Repo(REPO_ROOT, python, SPIDER_DB_DIR, REPO_ROOT / "data" / "spider" / "dev.json")


@pytest.fixture(scope="session")
def endless_count_sql() -> str:
    """A statement that never ends on its own: only the tool's time limit stops it."""
    return "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


@pytest.fixture
def tool_settings(repo: Repo) -> Callable[..., ToolServerSettings]:
    """Factory of ``ToolServerSettings`` over the Spider databases (overrides by keyword)."""

    def make(**overrides: Any) -> ToolServerSettings:
        values: dict[str, Any] = {"db_dir": repo.spider_db_dir, "sql_timeout_s": SQL_TIMEOUT_S}
        values.update(overrides)
        return ToolServerSettings(**values)

    return make


StartTools = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_tools(tool_settings: Callable[..., ToolServerSettings]) -> AsyncIterator[StartTools]:
    """Factory: start a real tool server on 127.0.0.1:0; every one is stopped at teardown.

    ``await start_tools(server=ServerSettings(...), definition=..., **tool_overrides)``.
    """
    started: list[RunningServer] = []

    async def start(
        *,
        server: ServerSettings | None = None,
        definition: ServiceDefinition | None = None,
        **tool_overrides: Any,
    ) -> RunningServer:
        if definition is None:
            definition = tool_service(tool_settings(**tool_overrides))
        running = await start_server(definition, server or ServerSettings(host="127.0.0.1", port=0))
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        await running.stop(0)


MakeClient = Callable[..., ToolClient]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """Factory of ``ToolClient``s (closed at teardown); defaults: 10 s deadline, 4 attempts."""
    clients: list[ToolClient] = []

    def make(target: str | RunningServer, **kwargs: Any) -> ToolClient:
        address = target.address if isinstance(target, RunningServer) else target
        kwargs.setdefault("timeout", 10.0)
        kwargs.setdefault("retry", RetryPolicy(max_attempts=4, initial_backoff_s=0.02, max_backoff_s=0.1))
        client = ToolClient(address, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def tool_server(start_tools: StartTools) -> RunningServer:
    """One tool server with the default tools over the Spider databases."""
    return await start_tools()


@pytest.fixture
async def client(tool_server: RunningServer, make_client: MakeClient) -> ToolClient:
    """A client of ``tool_server``."""
    return make_client(tool_server)


@pytest.fixture
async def session_id(client: ToolClient) -> str:
    """An open session on the ``concert_singer`` database."""
    return await client.open_session({"db_id": "concert_singer"})


@pytest.fixture
def spider_copy(tmp_path: Path, repo: Repo) -> Callable[[str], Path]:
    """Factory: copy a Spider database into ``tmp_path/dbs/<db_id>/<db_id>.sqlite``."""

    def copy(db_id: str) -> Path:
        target = tmp_path / "dbs" / db_id / f"{db_id}.sqlite"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo.spider_db_dir / db_id / f"{db_id}.sqlite", target)
        return target

    return copy


@pytest.fixture
def blob_db_dir(tmp_path: Path) -> Path:
    """A flat db directory with ``blobs.sqlite``: a table of 25 rows that holds a blob,
    a float, a NULL and a text with a newline and a pipe."""
    db_dir = tmp_path / "flat"
    db_dir.mkdir()
    conn = sqlite3.connect(db_dir / "blobs.sqlite")
    with conn:
        conn.execute(
            "CREATE TABLE item (id INTEGER PRIMARY KEY, data BLOB, score REAL, note TEXT NOT NULL)"
        )
        conn.executemany(
            "INSERT INTO item VALUES (?, ?, ?, ?)",
            [(i, bytes([i, 255 - i]), i / 4, f"n{i}") for i in range(1, 26)],
        )
        conn.execute("UPDATE item SET score = NULL, note = 'a|b' || char(10) || 'c' WHERE id = 2")
    conn.close()
    return db_dir
