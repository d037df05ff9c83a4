"""A smoke run of bench/fuzz.py (``--quick``: 300 requests): the ``tools`` section is written beside
the other services' sections, with no crash, hang or unclear error, and RSS samples of the server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)   # about 5 s: a server start and 300 requests
def test_fuzz_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    out.write_text(json.dumps({"reward": {"requests": 7}}))   # another service's section stays
    result = subprocess.run([sys.executable, "-m", "bench.fuzz", "--quick", "--output", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["reward"] == {"requests": 7}
    tools = report["tools"]
    assert tools["requests"] == 300 and tools["calls"] > 0
    assert sum(tools["by_kind"].values()) == 300 and sum(tools["status_codes"].values()) >= 300
    assert (tools["crashes"], tools["hangs"], tools["unclear_errors"]) == (0, 0, 0), tools["unclear_examples"]
    assert tools["probes"] >= 1 and len(tools["rss_samples"]) >= 2
    assert all(s["rss_mb"] > 0 for s in tools["rss_samples"])
    assert tools["server_log"]["error_lines"] == 0
    assert "0 crashes, 0 hangs, 0 unclear errors" in result.stdout
