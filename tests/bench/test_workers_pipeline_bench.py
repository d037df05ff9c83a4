"""``bench/workers_pipeline.py`` end to end at a tiny size: both modes train, the pipelined one within
its staleness bound, and the entry joins the existing results file without replacing the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import workers_pipeline

pytestmark = pytest.mark.slow      # a worker, the sampler service and two short GRPO runs: about a minute


def test_the_pipeline_bench_runs_both_modes_and_keeps_the_other_results(tmp_path: Path) -> None:
    out = tmp_path / "workers.json"
    out.write_text(json.dumps({"benchmark": "workers", "results": [{"mode": "workers_1"}]}))
    code = workers_pipeline.main(["--steps", "2", "--repeats", "1", "--prompts", "2", "--group-size", "2",
                                  "--new-tokens", "4", "--updates", "1", "--concurrency", "4", "--output", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and report["results"] == [{"mode": "workers_1"}]
    off, on = report["pipeline"]["runs"]
    assert (off["prefetch_steps"], on["prefetch_steps"]) == (0, 1)
    assert off["trajectories"] == on["trajectories"] == 8 and off["infra_failed"] == on["infra_failed"] == 0
    assert off["staleness_max"] == 0 and off["in_flight_mean"] == 0
    assert on["staleness_max"] <= 1 and on["stale_dropped"] == 0 and on["in_flight_mean"] == 1.0   # step 2's 2 groups
    assert report["pipeline"]["ratio_on_over_off"] > 0
