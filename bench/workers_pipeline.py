"""Pipelined Celery workers (``rollout.workers.prefetch_steps``) against unpipelined ones, on real
GRPO runs: trajectories per second of training and the staleness of the groups trained on.

Each run is ``run_experiment`` over the same config but ``prefetch_steps``: the tiny random policy,
``--steps`` GRPO steps of ``--prompts`` groups of ``--group-size`` one-turn QA samples, sampled by
the sampler service (``rlyard serve sampler``, its own process, loading what the runner publishes
after each update) through ``--workers`` ``rlyard worker`` processes on a throwaway ``redis-server``.
The reward is exact match, which the random policy never earns, so the groups' filter is off and
every step runs its full update. Off and on alternate (``--repeats`` pairs), so that a change in the
machine's load does not pass for a difference; the ratio is on / off of the summed step times.

``python -m bench.workers_pipeline [--steps 6] [--repeats 2]`` sets the ``pipeline`` entry of
``bench/results/workers.json`` (the other entries are kept).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.sampler import sampler_service
from bench.workers import DEFAULT_OUTPUT, redis_server, workers
from trainer.compose import open_stack
from trainer.config import ExperimentConfig, parse_config
from trainer.events import MetricsEvent
from trainer.model import init_policy
from trainer.runner import run_experiment

REPO = Path(__file__).resolve().parent.parent


def write_tasks(path: Path, n: int) -> Path:
    """``n`` one-turn QA tasks without tools."""
    path.write_text("".join(json.dumps({"task_id": f"q{i}", "question": f"how many singer {i}", "tools": [],
                                        "ground_truth": {"answers": [str(i)]}}) + "\n" for i in range(n)))
    return path


def grpo_config(policy_dir: Path, tasks: Path, sampler: str, weights_root: Path, broker: str, ns: argparse.Namespace,
                prefetch: int) -> ExperimentConfig:
    """The run: ``ns.steps`` GRPO steps on the workers, ``prefetch`` steps ahead."""
    return parse_config({
        "name": f"bench-pipeline-{prefetch}", "seed": ns.seed,
        "model": {"path": str(policy_dir), "backend": "remote", "sampler": sampler, "weights_dir": str(weights_root)},
        "checkpoint": {"every_steps": 1000},
        "stages": [{"kind": "rl", "name": "grpo", "steps": ns.steps, "tasks": {"path": str(tasks)},
                    "reward": {"qa_em": 1.0},
                    "rollout": {"group_size": ns.group_size, "prompts_per_step": ns.prompts, "max_turns": 1,
                                "max_new_tokens_per_turn": ns.new_tokens, "max_total_tokens": 256,
                                "workers": {"enabled": True, "broker_url": broker, "max_staleness": max(prefetch, 0),
                                            "prefetch_steps": prefetch}},
                    "algorithm": {"micro_batch_size": ns.group_size, "updates_per_batch": ns.updates,
                                  "filters": {"drop_equal_reward_groups": False}},
                    "optim": {"lr": 1e-3}}],
    })


def one_run(config: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    """Run ``config``; its throughput (trajectories over the summed step times) and staleness."""
    events: list[MetricsEvent] = []
    with open_stack(config) as stack:
        report = run_experiment(config, run_dir, stack=stack,
                                on_event=lambda e: events.append(e) if isinstance(e, MetricsEvent) else None)
    if report["state"] != "SUCCEEDED":
        raise RuntimeError(f"{config.name}: the run ended {report['state']}: {report.get('error')}")
    steps = [e.values for e in events]
    seconds = sum(s["step_seconds"] for s in steps)
    trajectories = sum(s["trajectories"] for s in steps)
    taken, behind, worst, ok_before = 0, 0.0, 0.0, 0.0
    for s in steps:
        kept = s["workers/ok"] - ok_before
        ok_before = s["workers/ok"]
        taken += int(kept)
        behind += kept * s.get("workers/staleness_mean", 0.0)
        worst = max(worst, s.get("workers/staleness_max", 0.0))
    return {"steps": len(steps), "trajectories": int(trajectories), "step_seconds_sum": round(seconds, 3),
            "trajectories_per_s": round(trajectories / seconds, 3),
            "groups_taken": taken, "staleness_mean": round(behind / max(taken, 1), 3), "staleness_max": worst,
            "stale_dropped": int(sum(s["workers/stale_dropped"] for s in steps)),
            "in_flight_mean": round(sum(s["workers/pending"] for s in steps) / len(steps), 3),
            "infra_failed": int(sum(s["infra_failed"] for s in steps))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=4, help="groups per step")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=24, help="max new tokens of a sample")
    parser.add_argument("--updates", type=int, default=2, help="optimizer steps per batch (the update's length)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8, help="groups one worker runs at once")
    parser.add_argument("--prefetch", type=int, default=1, help="prefetch_steps of the pipelined runs")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs, off then on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ns = parser.parse_args(argv)
    if ns.steps < 2 or ns.prefetch < 1 or ns.repeats < 1 or ns.workers < 1:
        parser.error("--steps >= 2, --prefetch, --repeats and --workers >= 1")
    console = Console()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rlyard-bench-pipeline-") as tmp_name:
        tmp = Path(tmp_name)
        info = init_policy(tmp / "policy", seed=ns.seed)
        tasks = write_tasks(tmp / "tasks.jsonl", 4 * ns.prompts)
        root = tmp / "weights"
        with redis_server(tmp / "redis") as broker, \
                sampler_service(tmp / "policy", tmp / "sampler", weights_root=root) as address, \
                workers(broker, tmp, [f"p{i}" for i in range(ns.workers)], concurrency=ns.concurrency):
            for repeat in range(ns.repeats):
                for prefetch in (0, ns.prefetch):
                    console.print(f"run {repeat + 1}/{ns.repeats}: prefetch_steps = {prefetch}…")
                    config = grpo_config(tmp / "policy", tasks, address, root, broker, ns, prefetch)
                    runs.append({"prefetch_steps": prefetch, "repeat": repeat,
                                 **one_run(config, tmp / f"run-{repeat}-{prefetch}")})
    table = Table("prefetch", "repeat", "traj", "step s", "traj/s", "staleness mean", "max", "dropped", "in flight")
    for r in runs:
        table.add_row(str(r["prefetch_steps"]), str(r["repeat"]), str(r["trajectories"]),
                      f"{r['step_seconds_sum']:.1f}", f"{r['trajectories_per_s']:.2f}",
                      f"{r['staleness_mean']:.2f}", f"{r['staleness_max']:.0f}",
                      str(r["stale_dropped"]), f"{r['in_flight_mean']:.1f}")
    console.print(table)

    def total(prefetch: int, key: str) -> float:
        return sum(r[key] for r in runs if r["prefetch_steps"] == prefetch)

    off = total(0, "trajectories") / total(0, "step_seconds_sum")
    on = total(ns.prefetch, "trajectories") / total(ns.prefetch, "step_seconds_sum")
    console.print(f"pipelined / unpipelined: {on / off:.2f}× trajectories per second of training "
                  f"({on:.2f} vs {off:.2f})")
    entry = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        "params": {"steps": ns.steps, "prompts_per_step": ns.prompts, "group_size": ns.group_size,
                   "max_new_tokens": ns.new_tokens, "updates_per_batch": ns.updates, "workers": ns.workers,
                   "concurrency_per_worker": ns.concurrency, "prefetch_steps": ns.prefetch,
                   "max_staleness": ns.prefetch,
                   "repeats": ns.repeats, "seed": ns.seed, "policy_params": info.n_params},
        "runs": runs,
        "trajectories_per_s": {"off": round(off, 3), "on": round(on, 3)},
        "ratio_on_over_off": round(on / off, 3),
        "staleness_mean_on": round(sum(r["staleness_mean"] * r["groups_taken"] for r in runs
                                       if r["prefetch_steps"]) / max(total(ns.prefetch, "groups_taken"), 1), 3),
    }
    report: dict[str, Any] = json.loads(ns.output.read_text()) if ns.output.exists() else {"benchmark": "workers"}
    report["pipeline"] = entry
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote the pipeline entry of {ns.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
