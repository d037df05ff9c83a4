"""A smoke run of bench/fuzz_reward.py: a few hundred hostile requests, the JSON's findings and
RSS samples, and the goals met."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from bench.fuzz_reward import hostile_request

ROOT = Path(__file__).resolve().parents[2]


def test_the_generator_is_seeded() -> None:
    first = [str(hostile_request(random.Random(3), 0.01)) for _ in range(5)]
    assert first == [str(hostile_request(random.Random(3), 0.01)) for _ in range(5)]


def test_fuzz_reward_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "fuzz_reward.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.fuzz_reward", "--requests", "300", "--rss-every", "100", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    report = json.loads(out.read_text())
    assert result.returncode == 0, (report["examples"], result.stderr[-2000:])
    assert report["requests"] == 300 and sum(report["status_codes"].values()) == 300
    assert (report["crashes"], report["hangs"], report["unclear_errors"]) == (0, 0, 0)
    assert report["status_codes"]["INVALID_ARGUMENT"] > 0 and report["status_codes"]["OK"] > 0
    assert [r[0] for r in report["rss_mb"]] == [0, 100, 200, 300, 300] and report["rss"]["peak_mb"] > 0
    assert all(report["goals"].values())
