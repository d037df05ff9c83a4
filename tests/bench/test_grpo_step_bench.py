"""``bench/grpo_step.py --quick``: a tiny world, a few SFT steps, both arms (KV cache off and on) take
the same GRPO steps over the embedded services, and the report is complete and consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_measures_both_arms(tmp_path: Path) -> None:
    out = tmp_path / "grpo_step.json"
    result = subprocess.run([sys.executable, "-m", "bench.grpo_step", "--quick", "--steps", "2", "--threads", "1",
                             "--work", str(tmp_path / "work"), "--output", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["config"]["quick"] is True and report["step1_trajectories"] == 4
    for arm in ("off", "on"):
        r = report[arm]
        assert [s["step"] for s in r["steps"]] == [1, 2]
        assert r["steps_per_second"] > 0 and r["generated_tokens"] > 0
        for s in r["steps"]:
            assert s["rows"] >= 4 and s["prompt_tokens"] > 0
            assert s["prompt_tokens"] == s["prefilled_tokens"] + s["reused_tokens"] + s["shared_tokens"]
    off, on = report["off"], report["on"]
    assert off["reused_tokens"] == off["shared_tokens"] == 0 and off["prefilled_tokens"] == off["prompt_tokens"]
    assert on["shared_tokens"] > 0                         # a group's first prompts ran once
    assert on["prefilled_tokens"] < off["prefilled_tokens"]
    assert report["ratios_on_over_off"]["prefilled_tokens"] < 1
    assert (tmp_path / "work" / "sft-run" / "models" / "sft").is_dir()       # kept for the next run
