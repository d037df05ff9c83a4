"""``rlyard serve memory``: the service built from the environment in its own process, and its
settings' refusals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memory_service.settings import MemorySettings
from rlyard.client import RetryPolicy
from rlyard.domain import MemoryStats
from rlyard.errors import ConfigError
from rlyard.memory_client import MemoryClient
from rlyard_app.cli.serve import FACTORIES

ROOT = Path(__file__).resolve().parents[2]


def test_rlyard_serve_memory_migrates_a_new_sqlite_file_and_serves(tmp_path: Path) -> None:
    assert "memory" in FACTORIES
    ready = tmp_path / "ready.json"
    db = tmp_path / "deep" / "memory.db"
    env = {**os.environ, "RLYARD_HOST": "127.0.0.1", "RLYARD_PORT": "0", "RLYARD_READY_FILE": str(ready),
           "RLYARD_MEMORY_DB_URL": f"sqlite:///{db}", "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-c", "from rlyard_app.cli.serve import run_service; "
                               "run_service('memory')"], cwd=ROOT, env=env, stderr=subprocess.PIPE)

    async def ask(port: int) -> tuple[MemoryStats, str]:
        # UNAVAILABLE while it warms up (store, MiniLM): the retry window waits for it
        async with MemoryClient(f"127.0.0.1:{port}", timeout=10, retry=RetryPolicy.within(120)) as client:
            stats = await client.stats()
            return stats, await client.health()

    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "the service did not start listening"
            time.sleep(0.05)
        stats, health = asyncio.run(ask(json.loads(ready.read_text())["port"]))
        assert (stats.num_trajectories, stats.num_meta_cognitions, health) == (0, 0, "SERVING")
        assert db.is_file()
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("RLYARD_MEMORY_PRIOR_UTILITY", "2.0", "prior"),
    ("RLYARD_MEMORY_DECAY", "-0.1", "decay"),
    ("RLYARD_MEMORY_MAX_TOP_K", "0", "RLYARD_MEMORY_MAX_TOP_K must be >= 1"),
    ("RLYARD_MEMORY_MIN_GAP", "1.5", "RLYARD_MEMORY_MIN_GAP"),
    ("RLYARD_MEMORY_DB_URL", "", "RLYARD_MEMORY_DB_URL"),
    ("RLYARD_MEMORY_ENCODER", "tf", "RLYARD_MEMORY_ENCODER must be one of onnx, torch"),
    ("RLYARD_MEMORY_ENCODER_DIR", "", "RLYARD_MEMORY_ENCODER_DIR must name a writable folder"),
    ("RLYARD_MEMORY_ENCODER_THREADS", "-1", r"RLYARD_MEMORY_ENCODER_THREADS must be >= 0 \(0: automatic\), got -1"),
])
def test_bad_settings_are_refused_at_start_with_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MemorySettings.from_env("RLYARD_MEMORY", {variable: value})
