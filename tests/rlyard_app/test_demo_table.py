"""``rlyard demo``'s result table and verdict line, rendered from a report as ``run_learning`` writes it."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from experiments.learning import slice_accuracy
from rlyard_app.cli.demo import eval_line, gain_line, results_table


def _report() -> dict[str, Any]:
    slices = {"sft": {"a": slice_accuracy(23, 100), "b": slice_accuracy(5, 40), "c": slice_accuracy(0, 20)},
              "rl": {"a": slice_accuracy(31, 100), "b": slice_accuracy(6, 40), "c": slice_accuracy(1, 20)}}
    return {"heldout_tasks": 160, "heldout_slices": {"a": 100, "b": 40, "c": 20}, "slices": slices,
            "eval": {"sft": {"execution_accuracy": 0.175, "mean_tool_calls": 1.2, "format_errors": 3, "truncated": 0},
                     "rl": {"execution_accuracy": 0.2375, "mean_tool_calls": 1.05, "format_errors": 1, "truncated": 2}},
            "slice_gain": {"a": 0.08, "b": 0.025, "c": 0.05}, "gain": 0.0625}


def test_a_row_per_checkpoint_a_column_per_slice_with_its_count_in_an_80_column_terminal() -> None:
    console = Console(width=80, record=True)
    console.print(results_table(_report()))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for header in ("a (100)", "in-distribution", "b (40)", "unseen values", "c (20)", "unseen templates",
                   "all (160)"):
        assert header in text, header
    sft = next(line for line in text.splitlines() if "after SFT" in line)
    rl = next(line for line in text.splitlines() if "after GRPO" in line)
    # 23/100 ± sqrt(.23 * .77 / 100) = 4.2; 6/40 ± sqrt(.15 * .85 / 40) = 5.65 (stored 0.0565); 0/20 ± 0; 28/160
    assert [c.strip() for c in sft.split("│")[2:6]] == ["23.0% ±4.2", "12.5% ±5.2", "0.0% ±0.0", "17.5%"]
    assert [c.strip() for c in rl.split("│")[2:6]] == ["31.0% ±4.6", "15.0% ±5.7", "5.0% ±4.9", "23.8%"]


def test_the_last_lines_give_the_gain_on_slice_a_first_and_each_checkpoints_eval_counts() -> None:
    report = _report()
    assert gain_line(report) == "gain from RL on slice a (in-distribution): +8.0 points · b +2.5 · c +5.0 · all +6.2"
    assert eval_line(report) == ("tool calls per task 1.20 / 1.05 · format errors 3 / 1 · truncated 0 / 2 "
                                 "(after SFT / after GRPO)")
    empty = {**report, "slice_gain": {"a": 0.01, "b": None, "c": 0.0}}
    assert "b - · c +0.0" in gain_line(empty)
