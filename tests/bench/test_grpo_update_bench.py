"""``bench/grpo_update.py --quick``: both modes on both prompt shapes, the same gradient, a complete report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_grpo_update_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "grpo_update.json"
    result = subprocess.run([sys.executable, "-m", "bench.grpo_update", "--quick", "--threads", "1",
                             "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["config"]["quick"] is True and report["config"]["groups"] == 2
    demo, schema = report["demo"], report["schema"]
    assert schema["prompt_tokens_mean"] > 3 * demo["prompt_tokens_mean"] > 0
    for shape in (demo, schema):
        assert shape["trajectories"] == 4 and shape["loss_tokens"] > 0
        assert shape["gradient_rel_diff"] < 1e-5
        for mode in ("plain", "shared_prefix"):
            assert len(shape[mode]["seconds"]) == 1 and shape[mode]["best_seconds"] > 0
        assert shape["speedup"] == round(shape["plain"]["best_seconds"] / shape["shared_prefix"]["best_seconds"], 2)
