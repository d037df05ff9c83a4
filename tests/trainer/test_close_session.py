"""The rollout engine closes its sessions through a tool-server stall (issue 19, 8): a
``CloseSession`` that hits its deadline while the server is stopped (SIGSTOP) is tried again,
instead of leaving the session to the server's idle expiry. The tool server runs in its own
process so that it can be stopped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlyard.client import NO_RETRY, ToolClient
from trainer.config import RolloutConfig
from trainer.rollout import RolloutEngine
from trainer.sampler import LocalSampler

REPO = Path(__file__).resolve().parent.parent.parent


class NoGenerator:
    """The engine needs a sampler; closing sessions never samples."""

    def generate(self, prompts: list[list[int]], params: Any) -> list[Any]:
        raise AssertionError("not sampled in these tests")


@pytest.fixture
def tool_process(tmp_path: Path, repo: Any) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m tool_servers`` over the Spider databases, on 127.0.0.1:0."""
    ready = tmp_path / "tools.ready"
    env = {**os.environ, "RLYARD_HOST": "127.0.0.1", "RLYARD_PORT": "0", "RLYARD_READY_FILE": str(ready),
           "RLYARD_LOG_LEVEL": "WARNING", "RLYARD_TOOLS_TOOLS": "list_tables",
           "RLYARD_TOOLS_SQL_DB_DIR": str(repo.spider_db_dir), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([str(repo.python), "-m", "tool_servers"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the tool server did not start"
            time.sleep(0.02)
        yield proc, f"127.0.0.1:{json.loads(ready.read_text())['port']}"
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(10)


async def test_closes_that_hit_their_deadline_in_a_stall_are_tried_again(
    tool_process: tuple[subprocess.Popen[bytes], str], tiny_tokenizer: Any
) -> None:
    proc, address = tool_process
    client = ToolClient(address, timeout=5.0, retry=NO_RETRY)
    engine = RolloutEngine(LocalSampler(NoGenerator()), tiny_tokenizer, client,
                           RolloutConfig(group_size=2, prompts_per_step=1), tool_timeout_s=0.3)
    try:
        sessions = [await client.open_session({"db_id": "concert_singer"}) for _ in range(8)]
        proc.send_signal(signal.SIGSTOP)   # a stall longer than one close's deadline
        asyncio.get_running_loop().call_later(0.45, proc.send_signal, signal.SIGCONT)
        await asyncio.wait_for(asyncio.gather(*(engine._close_session(s) for s in sessions)), timeout=10)
        still_open = [s for s in sessions if await client.close_session(s)]
        assert still_open == []
    finally:
        proc.send_signal(signal.SIGCONT)
        await engine.aclose()
        await engine.sampler.aclose()
        await client.close()
