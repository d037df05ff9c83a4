"""``bench/sampler.py`` at a tiny size: both ways run against a real service process, sample the
same tokens, and the report is complete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sampler_bench_small(tmp_path: Path) -> None:
    out = tmp_path / "sampler.json"
    result = subprocess.run([sys.executable, "-m", "bench.sampler", "--batch", "4", "--max-new-tokens", "12",
                             "--repeats", "1", "--threads", "1", "--output", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["same_tokens"] is True and report["max_logprob_diff"] < 1e-6 and report["ratio"] > 0
    # the warm-up and the repeat: one GenerateBatch of 4 rows each
    assert (report["config"]["service_messages"], report["config"]["service_rows"]) == (2, 8)
    tokens = {report[way]["generated_tokens"] for way in ("in_process", "service")}
    assert len(tokens) == 1 and 0 < tokens.pop() <= 4 * 12
    assert report["service"]["weight_versions"] == report["in_process"]["weight_versions"] == [0]
