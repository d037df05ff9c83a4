"""A smoke run of bench/rollout.py: both modes, every trajectory ran every turn, sane JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from bench.latency_tool import MEDIAN_S, SIGMA, latency_s

ROOT = Path(__file__).resolve().parents[2]


def test_latency_is_lognormal_and_keyed() -> None:
    assert latency_s("3-1", 7) == latency_s("3-1", 7) != latency_s("3-2", 7)
    draws = sorted(latency_s(f"{i}", 0) for i in range(4000))
    assert abs(draws[2000] / MEDIAN_S - 1) < 0.1
    assert abs(draws[3960] - 1.0) < 0.35          # p99 ≈ 1 s
    assert abs(SIGMA - math.log(20) / 2.326) < 1e-3
    assert latency_s("x", 0, scale=0.1) == latency_s("x", 0) * 0.1


def test_rollout_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "rollout.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.rollout", "--trajectories", "8", "--turns", "2", "--think-tokens", "4",
         "--latency-scale", "0.1", "--train-repeats", "1", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["params"]["trajectories"] == 8 and report["params"]["turns"] == 2
    by_mode = {r["mode"]: r for r in report["results"]}
    assert set(by_mode) == {"lockstep", "async"}
    for r in by_mode.values():
        assert r["trajectories"] == 8 and r["tool_calls"] == 16          # 2 tool turns each
        assert r["wall_s"] > 0 and abs(r["trajectories_per_s"] - 8 / r["wall_s"]) < 0.01 * r["trajectories_per_s"]
        assert r["generated_tokens"] > 0
    # Lock-step: one generate call per round (3 generations per trajectory), all 8 rows in each.
    assert by_mode["lockstep"]["barrier_rounds"] == 3
    assert by_mode["lockstep"]["generate_calls"] == 3 and by_mode["lockstep"]["rows_per_generate_call"] == 8
    expected = by_mode["async"]["trajectories_per_s"] / by_mode["lockstep"]["trajectories_per_s"]
    assert abs(report["speedup"] - expected) < 1e-2
    assert report["pass"] == (report["speedup"] >= 3.0)
    bounds = report["latency_only_bounds_s"]
    assert 0 < bounds["async_s"] <= bounds["lockstep_s"]
    training = report["training"]
    assert training["trajectories"] == 8 and 0 < training["loss_tokens"] < training["sequence_tokens"]
    for step in ("grpo_update", "sft_step"):
        assert training[step]["sequence_tokens_per_s"] > training[step]["loss_tokens_per_s"] > 0
