"""How much does the reward service add over scoring in-process?

``ScoreBatch`` of ``--batch`` items (default 256) through a reward service in
its own process, against ``Scorer.score_batch`` with the same rewards called in
this process, for:

- ``qa_f1`` on Natural Questions answers (``data/nq``), predictions drawn from
  the gold answers with edits so that F1 varies;
- ``sql_execution`` on Spider dev pairs (``data/spider/dev.json``): half the
  predictions are the gold query, half another query of the same database. In
  both modes the SQL runs on the same SQL tool server (its own process): the
  reward service is a client of it, as in a deployment.

The service is timed two ways: on the wire (the request ``RewardClient`` sends,
built once, ``--form`` packed or items; the answer not converted: what the
service and gRPC add, the goal's measure) and through ``RewardClient.score_batch``
(items in, ``ScoreResult`` out, as the trainer calls it). Each mode is warmed up
(gold results cached), then timed over ``--repeats`` batches, the three modes in
turns (so that all see the same load on a shared machine), with the CPU time per
item of this process and the reward service together. Writes
``bench/results/reward.json`` with throughput, batch latency, CPU time and the
overhead ratios; the goal is < 20% over in-process at batch 256.

``python -m bench.reward [--batch 256] [--repeats 5] [--form packed|items] [--output F]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from reward_service.app import build_scorer
from reward_service.scorer import Scorer
from reward_service.settings import RewardSettings
from rlyard.domain import RewardSpec, ScoreStatus, ScoringItem, parse_spec
from rlyard.domain.convert import batch_request_to_pb
from rlyard.reward.v1 import reward_pb2
from rlyard.reward_client import RewardClient
from rlyard_app.launcher import Launcher
from rlyard_app.services import ServiceSpec

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "bench" / "results" / "reward.json"
GOAL_OVERHEAD = 0.20


def qa_items(n: int, rng: random.Random) -> list[ScoringItem]:
    """NQ questions with predictions made from their answers (exact, partial, wrong)."""
    rows = [json.loads(line) for line in (REPO / "data" / "nq" / "test.jsonl").read_text().splitlines() if line]
    items = []
    for i in range(n):
        row = rows[i % len(rows)]
        gold = row["golden_answers"]
        pick = rng.choice(gold)
        kind = i % 3
        prediction = pick if kind == 0 else f"it is {pick.split()[0]} probably" if kind == 1 else "no idea"
        items.append(ScoringItem(f"qa{i}", prediction, ground_truth={"answers": gold}))
    return items


def sql_items(n: int, rng: random.Random) -> list[ScoringItem]:
    """Spider dev pairs: even items predict the gold, odd ones another query of the same db."""
    dev = json.loads((REPO / "data" / "spider" / "dev.json").read_text())
    by_db: dict[str, list[str]] = {}
    for d in dev:
        by_db.setdefault(d["db_id"], []).append(d["query"])
    items = []
    for i in range(n):
        d = dev[i % len(dev)]
        prediction = d["query"] if i % 2 == 0 else rng.choice(by_db[d["db_id"]])
        items.append(ScoringItem(f"sql{i}", prediction, ground_truth={"db_id": d["db_id"], "query": d["query"]}))
    return items


def _cpu_seconds(pid: int | None) -> float:
    """CPU time of process ``pid``, all its threads (Linux ``schedstat``, nanoseconds); 0 elsewhere."""
    if pid is None:
        return 0.0
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(task.read_text().split()[0])
    return total / 1e9


async def _time_in_turns(modes: list[Callable[[], Awaitable[Any]]], repeats: int,
                         server_pid: int | None) -> tuple[list[list[float]], list[float]]:
    """Times of each mode, taken in turns (the order rotated every repeat), so that all see the same
    load when another job shares the machine; and each mode's CPU seconds per batch, this process's
    and the reward service's together (read outside the timed part)."""
    for fn in modes:
        await fn()  # warm-up: caches, connections
    times: list[list[float]] = [[] for _ in modes]
    cpu = [0.0 for _ in modes]
    for i in range(repeats):
        for k in range(len(modes)):
            slot = (i + k) % len(modes)
            cpu_start = time.process_time() + _cpu_seconds(server_pid)
            start = time.perf_counter()
            await modes[slot]()
            times[slot].append(time.perf_counter() - start)
            cpu[slot] += time.process_time() + _cpu_seconds(server_pid) - cpu_start
    return times, [c / repeats for c in cpu]


def _stats(times: list[float], batch: int) -> dict[str, float]:
    median = statistics.median(times)
    return {
        "batch_seconds_median": round(median, 5),
        "batch_seconds_min": round(min(times), 5),
        "batch_seconds_max": round(max(times), 5),
        "items_per_second": round(batch / median, 1),
    }


def _quartiles(local: list[float], remote: list[float]) -> list[float]:
    """Each repeat's remote batch over the in-process batch timed next to it: quartiles."""
    paired = sorted(r / loc - 1.0 for loc, r in zip(local, remote, strict=True))
    return [round(paired[len(paired) // 4], 4), round(statistics.median(paired), 4),
            round(paired[(3 * len(paired)) // 4], 4)]


def _statuses(resp: reward_pb2.ScoreBatchResponse) -> list[int]:
    return list(resp.packed.statuses) if resp.HasField("packed") else [r.status for r in resp.results]


async def measure(
    name: str, items: list[ScoringItem], spec: RewardSpec, scorer: Scorer, client: RewardClient, repeats: int,
    form: str = "packed", server_pid: int | None = None,
) -> dict[str, Any]:
    """In-process vs service for one reward: the service on the wire (the request built once, the
    answer not converted) and through ``RewardClient.score_batch`` (items in, results out)."""
    plan = [(item, spec) for item in items]
    # the request the client sends, built once: the service side is measured from the message on
    request = batch_request_to_pb(items, spec, packed=form == "packed")

    async def in_process() -> None:
        results = await scorer.score_batch(plan)
        assert all(r.status == ScoreStatus.OK for r in results), [r.error for r in results if r.status != "OK"][:3]

    async def service() -> None:
        resp = await client.stub.ScoreBatch(request, timeout=client.timeout)
        assert set(_statuses(resp)) == {reward_pb2.SCORE_STATUS_OK}, str(resp)[:300]

    async def through_client() -> None:
        results = await client.score_batch(items, spec)
        assert all(r.status == ScoreStatus.OK for r in results), [r.error for r in results if r.status != "OK"][:3]

    (local_times, remote_times, client_times), cpu = await _time_in_turns(
        [in_process, service, through_client], repeats, server_pid)
    local, remote = _stats(local_times, len(items)), _stats(remote_times, len(items))
    via_client = _stats(client_times, len(items))
    for stats, seconds in zip((local, remote, via_client), cpu, strict=True):
        stats["cpu_us_per_item"] = round(seconds / len(items) * 1e6, 2)
    overhead = remote["batch_seconds_median"] / local["batch_seconds_median"] - 1.0
    return {
        "reward": name,
        "batch": len(items),
        "request_form": "packed_items" if request.HasField("packed_items") else "items",
        "in_process": local,
        "service": remote,
        "overhead": round(overhead, 4),
        "overhead_paired_quartiles": _quartiles(local_times, remote_times),
        "client": via_client,
        "overhead_client": round(via_client["batch_seconds_median"] / local["batch_seconds_median"] - 1.0, 4),
        "overhead_client_paired_quartiles": _quartiles(local_times, client_times),
        # CPU time (this process and the reward service's) per batch over in-process: steady under load
        "cpu_overhead": round(remote["cpu_us_per_item"] / local["cpu_us_per_item"] - 1.0, 4) if server_pid else None,
        "cpu_overhead_client": (round(via_client["cpu_us_per_item"] / local["cpu_us_per_item"] - 1.0, 4)
                                if server_pid else None),
        "goal": f"< {GOAL_OVERHEAD:.0%} over in-process",
        "pass": overhead < GOAL_OVERHEAD,
    }


def _services(tmp: Path) -> Launcher:
    tools = ServiceSpec("bench-sql-tools", "tools", 0, 0, env={
        "RLYARD_TOOLS_SQL_DB_DIR": str(REPO / "data" / "spider" / "database")})
    reward = ServiceSpec("bench-reward", "reward", 0, 0, depends_on=("bench-sql-tools",), peer_ports={
        "bench-sql-tools": 0}, env={"RLYARD_REWARD_SQL_TOOLS_TARGET": "{bench-sql-tools}",
                                    "RLYARD_REWARD_BATCH_CONCURRENCY": "32"})
    return Launcher([tools, reward], tmp, ephemeral_ports=True, extra_env={"RLYARD_LOG_LEVEL": "WARNING"})


async def run(batch: int, repeats: int, endpoints: dict[str, str], console: Console,
              form: str = "packed", server_pid: int | None = None) -> list[dict[str, Any]]:
    """Both rewards, both modes."""
    rng = random.Random(0)
    scorer, ctx = build_scorer(RewardSettings(sql_tools_target=endpoints["bench-sql-tools"], batch_concurrency=32))
    results = []
    try:
        async with RewardClient(endpoints["bench-reward"], timeout=600.0) as client:
            for name, items in (("qa_f1", qa_items(batch, rng)), ("sql_execution", sql_items(batch, rng))):
                console.print(f"measuring {name} (batch {batch}, {repeats} repeats)…")
                results.append(await measure(name, items, parse_spec({name: 1.0}), scorer, client, repeats, form,
                                             server_pid))
    finally:
        await ctx.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--form", choices=("packed", "items"), default="packed",
                        help="the request form on the wire: packed_items (what RewardClient sends for plain "
                             "predictions) or items (one ScoreRequest each, the form before it)")
    ns = parser.parse_args(argv)
    console = Console()
    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="rlyard-bench-") as tmp, _services(Path(tmp)) as launcher:
        started = launcher.start()
        endpoints = {name: e.target for name, e in started.items()}
        pid = started["bench-reward"].pid if Path(f"/proc/{started['bench-reward'].pid}/task").is_dir() else None
        results = asyncio.run(run(ns.batch, ns.repeats, endpoints, console, ns.form, pid))
    table = Table("reward", "batch", "in-process items/s", "service items/s", "overhead", "CPU", "via client items/s",
                  "overhead", "CPU", "goal")
    for r in results:
        cpu, cpu_client = (f"{r[k]:+.1%}" if r[k] is not None else "-" for k in ("cpu_overhead", "cpu_overhead_client"))
        table.add_row(r["reward"], str(r["batch"]), f"{r['in_process']['items_per_second']:.0f}",
                      f"{r['service']['items_per_second']:.0f}", f"{r['overhead']:+.1%}", cpu,
                      f"{r['client']['items_per_second']:.0f}", f"{r['overhead_client']:+.1%}", cpu_client,
                      "[green]pass[/]" if r["pass"] else "[red]FAIL[/]")
    console.print(table)
    report = {
        "benchmark": "reward",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_1m_at_start": load_start, "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
                    "grpcio": metadata.version("grpcio"), "platform": platform.platform()},
        "params": {"batch": ns.batch, "repeats": ns.repeats, "form": ns.form},
        "results": results,
    }
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {ns.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
