"""``bench/decode.py`` at a tiny size: both modes run, produce the same tokens, and the report is complete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_decode_bench_small(tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    result = subprocess.run([sys.executable, "-m", "bench.decode", "--batch", "4", "--max-new-tokens", "12",
                             "--repeats", "1", "--threads", "1", "--output", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["same_tokens"] is True and report["speedup"] > 0
    for mode in ("transformers", "fast_decode"):
        assert report[mode]["generated_tokens"] > 0 and len(report[mode]["seconds"]) == 1
