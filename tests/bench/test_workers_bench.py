"""``bench/workers.py`` end to end at a tiny size: every mode runs, the killed worker loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import workers

pytestmark = pytest.mark.slow      # five worker start-ups and a visibility timeout: about two minutes


def test_the_workers_bench_runs_and_loses_no_group(tmp_path: Path) -> None:
    out = tmp_path / "workers.json"
    code = workers.main(["--groups", "4", "--group-size", "2", "--concurrency", "1", "--round-trips", "2",
                         "--think-tokens", "2", "--visibility-timeout", "8", "--output", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and report["pass"] is True
    modes = {r["mode"]: r for r in report["results"]}
    assert set(modes) == {"in_process", "workers_1", "workers_2"}
    assert all(r["trajectories"] == 8 for r in modes.values())
    assert set(modes["workers_2"]["groups_by_worker"]) <= {"celery@w1", "celery@w2"}
    kill = report["kill"]
    assert (kill["groups_submitted"], kill["groups_ok"], kill["groups_lost"]) == (4, 4, 0)
    assert kill["killed_at_s"] is not None and kill["redone"] >= 1
