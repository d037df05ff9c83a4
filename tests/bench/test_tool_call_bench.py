"""Smoke test of ``bench/tool_call.py``: a very short run of every mode writes a
complete, sane JSON report (the real numbers come from a full run, not from here)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
MODES = ("in_process", "grpc_unary", "grpc_stream", "grpc_stream_batched", "http", "http_batched")


# about 20 s: 6 modes x 2 levels x 1.3 s, plus starting two servers; at 0.3 s a stream sometimes
# completed no call on a loaded machine (its set-up took the whole window)
@pytest.mark.timeout(120)
def test_smoke_run_reports_every_mode_with_sane_numbers(tmp_path: Path) -> None:
    out = tmp_path / "tool_call.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.tool_call", "--duration", "1.0", "--warmup", "0.3",
         "--concurrency", "1,2", "--output", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["config"]["concurrency"] == [1, 2]
    assert report["machine"]["cpu_count"] >= 1
    assert report["machine"]["grpcio"]
    for mode in MODES:
        for level in ("1", "2"):
            r = report["results"][mode][level]
            assert r["calls"] > 0, (mode, level, r)
            assert r["errors"] == 0, (mode, level, r)  # every call answered the expected rows
            assert r["throughput"] == pytest.approx(r["calls"] / r["seconds"], rel=1e-3)  # both rounded to 4 places
            assert 0 < r["p50_ms"] <= r["p99_ms"] < 5_000, (mode, level, r)
            assert math.isfinite(r["mean_ms"])
            if mode.endswith("_batched"):
                assert 1.0 <= r["batch_mean"] <= int(level), (mode, level, r)
            if mode != "in_process":
                ratio = report["ratios"][mode][level]
                assert ratio["throughput_vs_in_process"] > 0
                assert r["server_cpu_us_per_call"] > 0  # the server ran in its own process
    assert "in_process" not in report["ratios"]

    goals = report["goals"]
    assert len(goals) == 3
    for goal in goals:
        assert goal["status"] in ("pass", "FAIL"), goal
        assert goal["pass"] is (goal["status"] == "pass")
        assert goal["measured"]["concurrency"] in (1, 2)
    assert "stream" in proc.stdout  # the table was printed
