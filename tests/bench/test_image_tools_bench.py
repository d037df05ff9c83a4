"""A smoke run of bench/image_tools.py (``--quick``: 0.3 s per measurement at 1 and 4 callers): the
report has every tool, level and mode, a ratio against in-process, and the server's peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)   # about 25 s: 16 measurements of 0.5 s with warm-ups, two server starts
def test_image_tools_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "image_tools.json"
    result = subprocess.run([sys.executable, "-m", "bench.image_tools", "--quick", "--output", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["config"]["quick"] is True and report["config"]["image_side"] == 1024
    assert set(report["results"]) == {f"{fmt}/{tool}/{n}" for fmt in ("png", "jpeg") for tool in ("crop", "zoom")
                                      for n in (1, 4)}
    crop = report["results"]["jpeg/crop/1"]
    assert crop["in_process"]["calls"] > 0 and crop["grpc_stream_batched"]["calls"] > 0
    assert crop["ratio_calls_per_s_vs_in_process"] == pytest.approx(
        crop["grpc_stream_batched"]["calls_per_s"] / crop["in_process"]["calls_per_s"], rel=0.01)
    assert all(0 < rss["peak_mb"] < 1024 for rss in report["server_rss"].values())
    assert report["bench_process_peak_rss_mb"] > 0 and "server peak RSS" in result.stdout
