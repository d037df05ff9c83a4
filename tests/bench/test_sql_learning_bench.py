"""``bench.sql_learning``: which finished seeds of an earlier output ``--resume`` keeps; the bar on
slice a and the standard-error guard on slices b and c, on hand-computed seeds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from bench.sql_learning import earlier_seeds, held, slice_gain_points, summarize
from experiments.learning import LearningConfig


def _write(path: Path, cfg: LearningConfig, seeds: list[int], *, quick: bool = False) -> None:
    path.write_text(json.dumps({"config": dataclasses.asdict(cfg), "quick": quick, "complete": False,
                                "seeds": [{"seed": s, "rl_gain_points": float(s)} for s in seeds]}))


def test_earlier_seeds_kept_only_for_the_same_configuration(tmp_path: Path) -> None:
    out = tmp_path / "sql_learning.json"
    cfg = LearningConfig()
    assert earlier_seeds(out, cfg, False, [0, 1, 2]) == []                       # no file yet
    _write(out, cfg, [1, 0])
    assert [s["seed"] for s in earlier_seeds(out, cfg, False, [0, 1, 2])] == [0, 1]
    assert [s["seed"] for s in earlier_seeds(out, cfg, False, [1])] == [1]
    assert [s["seed"] for s in earlier_seeds(out, dataclasses.replace(cfg, seed=5), False, [0])] == [0]
    assert earlier_seeds(out, dataclasses.replace(cfg, rl_seconds=600.0), False, [0, 1]) == []
    assert earlier_seeds(out, cfg, True, [0, 1]) == []                           # a --quick run keeps none


def _slice(correct: int, n: int) -> dict[str, Any]:
    from experiments.learning import slice_accuracy

    return slice_accuracy(correct, n)


Counts = tuple[int, int, int]


def _seed(seed: int, sft: Counts, rl: Counts, control: Counts) -> dict[str, Any]:
    """One seed's entry as ``run_seed`` writes it, from correct answers on slices a (of 100), b (40), c (20)."""
    sizes = (100, 40, 20)
    slices = {key: {name: _slice(c, n) for name, c, n in zip("abc", counts, sizes, strict=True)}
              for key, counts in (("sft", sft), ("rl", rl), ("control", control))}
    overall = {key: round(sum(counts) / 160, 4) for key, counts in (("sft", sft), ("rl", rl), ("control", control))}
    return {"seed": seed, "sft_accuracy": overall["sft"], "rl_accuracy": overall["rl"],
            "control_accuracy": overall["control"],
            "rl_gain_points": round(100 * (overall["rl"] - overall["sft"]), 2),
            "control_gain_points": round(100 * (overall["control"] - overall["sft"]), 2),
            "slices": slices,
            "rl_gain_points_by_slice": slice_gain_points(slices["sft"], slices["rl"]),
            "control_gain_points_by_slice": slice_gain_points(slices["sft"], slices["control"]),
            "slices_held": {name: held(slices["sft"][name], slices["rl"][name]) for name in ("b", "c")}}


def test_slice_gains_and_the_one_standard_error_guard() -> None:
    seed = _seed(0, sft=(30, 10, 2), rl=(50, 8, 1), control=(40, 12, 2))
    assert seed["rl_gain_points_by_slice"] == {"a": 20.0, "b": -5.0, "c": -5.0}
    assert seed["control_gain_points_by_slice"] == {"a": 10.0, "b": 5.0, "c": 0.0}
    # b: SFT 25% of 40, stderr sqrt(.25 * .75 / 40) = 6.85 points: 20% is within it.
    # c: SFT 10% of 20, stderr sqrt(.1 * .9 / 20) = 6.71 points: 5% is within it; 0% would not be.
    assert seed["slices_held"] == {"b": True, "c": True}
    assert held(_slice(2, 20), _slice(0, 20)) is False and held(_slice(10, 40), _slice(7, 40)) is False
    assert held(_slice(0, 20), _slice(0, 20)) is True                      # nothing to lose from 0


def test_the_bar_reads_slice_a_mean_every_seed_and_the_control() -> None:
    passing = [_seed(0, (30, 10, 2), (50, 10, 2), (40, 10, 2)),
               _seed(1, (20, 8, 0), (36, 8, 0), (30, 8, 0)),
               _seed(2, (25, 9, 1), (40, 9, 1), (26, 9, 1))]
    summary = summarize(passing)
    assert summary["mean_rl_gain_points_by_slice"] == {"a": 17.0, "b": 0.0, "c": 0.0}   # (20 + 16 + 15) / 3
    assert summary["mean_control_gain_points_by_slice"]["a"] == 7.0                      # (10 + 10 + 1) / 3
    assert summary["mean_accuracy_by_slice"]["rl"]["a"] == pytest.approx((0.5 + 0.36 + 0.4) / 3, abs=1e-4)
    assert summary["bar"] == {"mean_gain_a": True, "every_seed_gains_a": True, "beats_control_a_every_seed": True}
    assert summary["pass"] is True and summary["slices_held"] == {"b": True, "c": True}
    # a mean of +17 with one seed losing on a: not passed
    one_loses = [passing[0], _seed(1, (20, 8, 0), (56, 8, 0), (30, 8, 0)), _seed(2, (25, 9, 1), (24, 9, 1), (20, 9, 1))]
    summary = summarize(one_loses)
    assert summary["mean_rl_gain_points_by_slice"]["a"] >= 15.0
    assert summary["bar"]["every_seed_gains_a"] is False and summary["pass"] is False
    # every seed gains, but one seed's control does better on a: not passed
    control_wins = [*passing[:2], _seed(2, (25, 9, 1), (40, 9, 1), (45, 9, 1))]
    summary = summarize(control_wins)
    assert summary["bar"] == {"mean_gain_a": True, "every_seed_gains_a": True, "beats_control_a_every_seed": False}
    assert summary["pass"] is False
    # b falls by more than a standard error in one seed: the bar still passes, b is reported as fallen
    b_falls = [*passing[:2], _seed(2, (25, 20, 1), (40, 9, 1), (26, 9, 1))]
    summary = summarize(b_falls)
    assert summary["pass"] is True and summary["slices_held"] == {"b": False, "c": True}
