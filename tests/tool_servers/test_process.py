"""``python -m tool_servers`` as a real process: configured from the environment,
announces its port in the ready file, serves, and exits 0 promptly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from rlyard.client import ToolClient


@pytest.fixture
async def spawn(repo: Any, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: start ``python -m tool_servers`` with extra environment; killed at teardown."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(**env: str) -> asyncio.subprocess.Process:
        full = {k: v for k, v in os.environ.items() if not k.startswith("RLYARD")}
        full.update(env)
        proc = await asyncio.create_subprocess_exec(
            str(repo.python), "-m", "tool_servers",
            cwd=tmp_path,  # not the repo: every path comes from the environment
            env=full,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def wait_for_file(path: Path, proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    async def poll() -> dict[str, Any]:
        while not await asyncio.to_thread(path.exists):
            if proc.returncode is not None:
                _, err = await proc.communicate()
                raise AssertionError(f"the server exited with {proc.returncode}:\n{err.decode()}")
            await asyncio.sleep(0.02)
        return json.loads(await asyncio.to_thread(path.read_text))

    return await asyncio.wait_for(poll(), timeout)


async def test_server_process_serves_and_stops_on_sigterm(spawn: Any, repo: Any, tmp_path: Path) -> None:
    ready_file = tmp_path / "ready.json"
    proc = await spawn(
        RLYARD_PORT="0",
        RLYARD_READY_FILE=str(ready_file),
        RLYARD_GRACE_S="2",
        RLYARD_LOG_LEVEL="WARNING",
        RLYARD_TOOLS_SQL_DB_DIR=str(repo.spider_db_dir.resolve()),
    )
    ready = await wait_for_file(ready_file, proc, timeout=30)
    assert ready["service"] == "tools" and ready["pid"] == proc.pid
    assert ready["port"] > 0 and ready["metrics_port"] is None
    assert not ready_file.with_suffix(".json.tmp").exists()  # written atomically

    client = ToolClient(f"{ready['host']}:{ready['port']}", timeout=10)
    try:
        assert await client.health() == "SERVING"
        result = await client.call_tool(
            "sql_query", {"query": "SELECT count(*) FROM singer"}, context={"db_id": "concert_singer"}
        )
        assert result.structured["rows"] == [[6]]
    finally:
        await client.close()

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proc.wait(), timeout=10)
    _, err = await proc.communicate()
    assert code == 0, err.decode()
    assert time.monotonic() - started < 3  # nothing in flight: no need to use the grace


async def test_server_process_with_an_unknown_tool_fails_at_start_up(
    spawn: Any, repo: Any, tmp_path: Path
) -> None:
    proc = await spawn(
        RLYARD_PORT="0",
        RLYARD_READY_FILE=str(tmp_path / "ready.json"),
        RLYARD_TOOLS_TOOLS="sql_query,web_search",
        RLYARD_TOOLS_SQL_DB_DIR=str(repo.spider_db_dir.resolve()),
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode != 0
    assert "ConfigError: unknown tool 'web_search'" in err.decode()
    assert not (tmp_path / "ready.json").exists()
