"""``bench.sql_learning --resume``: which finished seeds of an earlier output are kept."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bench.sql_learning import earlier_seeds
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
