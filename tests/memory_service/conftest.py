"""Fixtures of the memory service tests: a throwaway PostgreSQL cluster from the machine's packages
(``scripts/bootstrap.sh`` installs them), a fresh database per test on SQLite or PostgreSQL, and
real memory servers on 127.0.0.1 port 0 with the real client."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from memory_service.app import memory_service
from memory_service.settings import MemorySettings
from rlyard.client import RetryPolicy
from rlyard.domain import TextPart, ToolCall, ToolResult, Trajectory, TrajectoryStatus, Turn
from rlyard.memory_client import MemoryClient
from rlyard.server import RunningServer, start_server
from rlyard.settings import ServerSettings

PG_USER = "rlyard"


def _pg_bin() -> Path:
    """The directory of initdb and pg_ctl: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not versions:
        pytest.fail("PostgreSQL is not installed (no initdb): run scripts/bootstrap.sh, which installs it")
    return Path(versions[-1]).parent


def _as_owner(owner: str | None, cmd: list[str]) -> list[str]:
    """``cmd`` run as ``owner`` (initdb and postgres refuse root)."""
    return cmd if owner is None else ["runuser", "-u", owner, "--", *cmd]


def _free_port() -> int:
    # PostgreSQL cannot bind port 0 and report it; start() retries on another port if this one is taken.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A PostgreSQL cluster for this test session on 127.0.0.1; its admin URL (database postgres).
    Its folder is outside pytest's temporary root, which only root may enter."""
    bin_dir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="rlyard-pg-"))
    owner = None
    if os.geteuid() == 0:
        owner = "postgres" if _user_exists("postgres") else "nobody"
        os.chmod(root, 0o755)
        shutil.chown(root, owner)
    data = root / "data"
    subprocess.run(_as_owner(owner, [str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, "-A", "trust",
                                     "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
    port = 0
    for _ in range(3):
        port = _free_port()
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        started = subprocess.run(_as_owner(owner, [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options,
                                                   "-l", str(root / "log"), "-w", "-t", "60", "start"]),
                                 capture_output=True, text=True)
        if started.returncode == 0:
            break
    else:
        pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{(root / 'log').read_text()[-2000:]}")
    try:
        yield f"postgresql+psycopg://{PG_USER}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_owner(owner, [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new database in the session's PostgreSQL cluster."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'memory.db'}"
        return
    admin = request.getfixturevalue("postgres")
    name = f"memory_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


StartMemory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_memory(db_url: str) -> AsyncIterator[StartMemory]:
    """Factory: a real memory server on 127.0.0.1:0 over ``db_url`` (settings overridable), ready
    (store migrated, MiniLM loaded); every one is stopped at teardown."""
    started: list[RunningServer] = []

    async def start(**overrides: Any) -> RunningServer:
        settings = MemorySettings(**{"db_url": db_url, **overrides})
        running = await start_server(memory_service(settings), ServerSettings(host="127.0.0.1", port=0))
        started.append(running)
        await running.wait_ready(timeout=120)
        return running

    yield start
    for running in reversed(started):
        await running.stop(0)


MakeMemoryClient = Callable[..., MemoryClient]


@pytest.fixture
async def memory_client() -> AsyncIterator[MakeMemoryClient]:
    """Factory of ``MemoryClient``s (closed at teardown): 30 s deadline, no retries (a test sees
    the first answer)."""
    clients: list[MemoryClient] = []

    def make(target: RunningServer, **kwargs: Any) -> MemoryClient:
        kwargs.setdefault("timeout", 30.0)
        kwargs.setdefault("retry", RetryPolicy(max_attempts=1))
        client = MemoryClient(target.address, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()


# ---------------------------------------------------------------- trajectories of the tests

QUESTIONS = ["How many singers are there?", "What is the average age of all singers?",
             "List the names of concerts held in 2014.", "Which stadium has the largest capacity?"]
DESCRIBE_FIRST = ("START", "THINK", "TOOL_CALL:describe_table", "TOOL_OK", "TOOL_CALL:sql_query", "TOOL_OK", "THINK",
                  "ANSWER")


def sql_trajectory(tid: str, describe_first: bool, answer: str = "6") -> Trajectory:
    """An agent's episode on a SQL question: with or without inspecting the schema first; without,
    its query fails and it answers anyway."""
    turns = [Turn(0, "user", "question"), Turn(1, "assistant", "I should look at the data.")]
    if describe_first:
        turns += [Turn(2, "assistant", "", (ToolCall(f"{tid}-d", "describe_table", '{"table": "singer"}'),)),
                  Turn(3, "tool", "", (), (ToolResult((TextPart("singer(id, name, age)"),), call_id=f"{tid}-d"),))]
    query = ToolCall(f"{tid}-q", "sql_query", '{"query": "SELECT count(*) FROM singer"}')
    turns += [Turn(4, "assistant", "", (query,)),
              Turn(5, "tool", "", (), (ToolResult((TextPart("6" if describe_first else "no such column"),),
                                                  is_error=not describe_first, call_id=f"{tid}-q"),)),
              Turn(6, "assistant", f"<answer>{answer}</answer>")]
    return Trajectory(tid, f"task-{tid}", tuple(turns), answer, TrajectoryStatus.COMPLETED)


async def record_sql_paths(client: MemoryClient, n: int = 8) -> None:
    """``n`` paths of task type sql: the describe-first half succeeds, the other half fails."""
    for i in range(n):
        good = i % 2 == 0
        await client.record_trajectory(sql_trajectory(f"t{i}", good), 1.0 if good else 0.0, "sql",
                                       QUESTIONS[i % len(QUESTIONS)])
