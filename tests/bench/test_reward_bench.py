"""A smoke run of bench/reward.py: both rewards, the three modes, sane numbers in the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_reward_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "reward.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.reward", "--batch", "16", "--repeats", "1", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["reward"] for r in report["results"]] == ["qa_f1", "sql_execution"]
    for r in report["results"]:
        assert r["batch"] == 16 and r["request_form"] == "packed_items"
        for mode in ("in_process", "service", "client"):
            assert r[mode]["items_per_second"] > 0 and r[mode]["cpu_us_per_item"] > 0
            assert r[mode]["batch_seconds_min"] <= r[mode]["batch_seconds_median"] <= r[mode]["batch_seconds_max"]
        expected = r["service"]["batch_seconds_median"] / r["in_process"]["batch_seconds_median"] - 1
        assert abs(r["overhead"] - expected) < 1e-3
        assert r["pass"] == (r["overhead"] < 0.20)
        cpu_ratio = r["service"]["cpu_us_per_item"] / r["in_process"]["cpu_us_per_item"]
        assert abs(r["cpu_overhead"] - (cpu_ratio - 1)) < 1e-2
        via_client = r["client"]["batch_seconds_median"] / r["in_process"]["batch_seconds_median"] - 1
        assert abs(r["overhead_client"] - via_client) < 1e-3
        for key in ("overhead_paired_quartiles", "overhead_client_paired_quartiles"):
            low, median, high = r[key]
            assert low <= median <= high and median > -1
