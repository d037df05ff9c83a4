"""``bench.grad_agreement`` end to end on a quick world: real tool server and reward service, the
prepared (untrained) policy. It never answers right, so GRPO has no gradient; the bench says so
instead of failing, and the SFT baseline is measured. (With signal: tests/e2e/test_learning_demo.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_reports_sft_agreement_and_no_grpo_signal(tmp_path: Path) -> None:
    out = tmp_path / "grad_agreement.json"
    out.write_text(json.dumps({"benchmark": "grad_agreement", "measurements": {"earlier": {"kept": True}}}))
    result = subprocess.run([sys.executable, "-m", "bench.grad_agreement", "--quick", "--batches", "2",
                             "--runs-dir", str(tmp_path / "runs"), "--output", str(out), "--label", "q"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["measurements"]) == {"earlier", "q"}          # a run adds its label, keeps the others
    q = report["measurements"]["q"]
    assert q["quick"] is True and q["sft"]["batches"] == 2 and -1 <= q["sft"]["mean_cosine"] <= 1
    assert q["grpo"]["no_signal"] is True and q["grpo"]["batches_sampled"] == 4 and q["ratio"] is None
    assert q["weights_unchanged"] is True
    assert "no gradient to compare" in " ".join(result.stdout.split())


def test_fewer_than_two_batches_is_refused(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "bench.grad_agreement", "--batches", "1",
                             "--output", str(tmp_path / "x.json")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "--batches must be >= 2" in result.stderr


def test_template_tasks_keeps_one_template_and_names_the_others(tmp_path: Path) -> None:
    from bench.grad_agreement import template_tasks

    tasks = tmp_path / "train_tasks.jsonl"
    tasks.write_text("".join(json.dumps({"task_id": str(i), "template": t}) + "\n"
                             for i, t in enumerate(["a", "b", "a", "c"])))
    out = template_tasks(tasks, "a")
    assert out == tmp_path / "train_tasks.a.jsonl"
    assert [json.loads(line)["task_id"] for line in out.read_text().splitlines()] == ["0", "2"]
    with pytest.raises(ValueError, match="templates: a, b, c"):
        template_tasks(tasks, "zzz")
