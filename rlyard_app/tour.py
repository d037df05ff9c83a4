"""``rlyard tour``: the services tour.

Starts the services of the ``sql`` profile (the SQL tool server over the Spider
dev databases and the reward service) as local processes, runs a short scripted
session of real calls through the gRPC client — schema discovery, queries, an
SQL error the agent then fixes, a refused write, a batch of Spider gold queries
over the CallTools stream — scores three answers with ``sql_execution`` through
the reward service, and writes ``runs/demo-<time>/report.json`` and ``transcript.md``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from rlyard.client import ToolClient
from rlyard_app.launcher import Launcher
from rlyard_app.services import ROOT, load_table

SPIDER_DEV = ROOT / "data" / "spider" / "dev.json"


@dataclass
class Step:
    """One call of the scripted session."""

    why: str
    tool: str
    arguments: dict[str, Any]
    is_error: bool
    latency_ms: float
    output: str


SCRIPT: list[tuple[str, str, dict[str, Any]]] = [
    ("discover the schema", "list_tables", {}),
    ("look at one table", "describe_table", {"table": "singer"}),
    ("answer: how many singers are there?", "sql_query", {"query": "SELECT count(*) FROM singer"}),
    ("a typo the model makes", "sql_query", {"query": "SELECT nme, country FROM singer WHERE age > 40"}),
    ("…and fixes after reading the error", "sql_query",
     {"query": "SELECT name, country FROM singer WHERE age > 40 ORDER BY age DESC"}),
    ("a write is refused", "sql_query", {"query": "DROP TABLE singer"}),
    ("a runaway query is stopped", "sql_query",
     {"query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"}),
    ("malformed arguments get a readable error", "sql_query", {"sql": "SELECT 1"}),
]


async def _rewards(target: str) -> list[dict[str, Any]]:
    """Score three answers to one question through the reward service: the right SQL,
    the right SQL with its columns swapped (equal under Spider semantics), a wrong one."""
    from rlyard.domain import ScoringItem, parse_spec
    from rlyard.reward_client import RewardClient

    gold = {"db_id": "concert_singer", "query": "SELECT name, country FROM singer WHERE age > 40"}
    answers = {
        "right": "SELECT name, country FROM singer WHERE age > 40",
        "columns swapped": "SELECT country, name FROM singer WHERE age > 40",
        "wrong": "SELECT name, country FROM singer WHERE age > 30",
    }
    spec = parse_spec({"sql_execution": 1.0})
    async with RewardClient(target, timeout=30.0) as client:
        results = await client.score_batch([ScoringItem(k, v, ground_truth=gold) for k, v in answers.items()], spec)
    return [{"answer": r.item_id, "sql": answers[r.item_id], "total": r.total, "explanation": r.explanation}
            for r in results]


async def _session(target: str, progress: Progress) -> tuple[list[Step], dict[str, Any]]:
    steps: list[Step] = []
    async with ToolClient(target, timeout=15.0) as client:
        task = progress.add_task("scripted session", total=len(SCRIPT))
        session = await client.open_session({"db_id": "concert_singer"})
        for why, tool, args in SCRIPT:
            result = await client.call_tool(tool, args, session_id=session)
            text = result.text
            steps.append(Step(why, tool, args, result.is_error, result.latency_ms, text))
            progress.advance(task)
        await client.close_session(session)

        # Spider gold queries over one batched CallTools stream
        items = json.loads(SPIDER_DEV.read_text())[:200]
        batch_task = progress.add_task("Spider gold queries over the stream", total=len(items))
        stream = client.stream(batch=True)

        async def one(i: int, item: dict[str, str]) -> tuple[bool, float]:
            t0 = time.perf_counter()
            res = await stream.call("sql_query", {"query": item["query"]}, context={"db_id": item["db_id"]},
                                    call_id=f"gold{i}")
            progress.advance(batch_task)
            return res.is_error, (time.perf_counter() - t0) * 1000

        t0 = time.perf_counter()
        outcomes = await asyncio.gather(*(one(i, it) for i, it in enumerate(items)))
        wall = time.perf_counter() - t0
        await stream.close()
    latencies = [ms for _, ms in outcomes]
    batch = {
        "queries": len(items),
        "errors": sum(1 for err, _ in outcomes if err),
        "wall_seconds": round(wall, 3),
        "calls_per_second": round(len(items) / wall, 1),
        "latency_ms_p50": round(statistics.median(latencies), 3),
    }
    return steps, batch


def run_demo(output_dir: Path, console: Console) -> int:
    """Run the demo; returns the process exit code."""
    started = time.time()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = output_dir / f"demo-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    specs = load_table().profile("sql")
    console.rule("[bold]rlyard demo")
    with tempfile.TemporaryDirectory(prefix="rlyard-demo-") as tmp, \
            Launcher(specs, Path(tmp), ephemeral_ports=True) as launcher:
        console.print("starting the services of profile [cyan]sql[/] on loopback…")
        endpoints = launcher.start()
        for e in endpoints.values():
            console.print(f"  [green]✓[/] {e.name} SERVING on {e.target} (metrics :{e.metrics_port})")
        target = next(e.target for e in endpoints.values() if e.kind == "tools")
        with Progress(console=console, transient=True) as progress:
            steps, batch = asyncio.run(_session(target, progress))
        reward_target = next(e.target for e in endpoints.values() if e.kind == "reward")
        scored = asyncio.run(_rewards(reward_target))

    table = Table("#", "why", "call", "result", "ms", show_lines=True)
    for i, s in enumerate(steps, 1):
        colour = "red" if s.is_error else "green"
        table.add_row(str(i), s.why, f"{s.tool} {json.dumps(s.arguments)}",
                      f"[{colour}]{s.output[:300]}[/]", f"{s.latency_ms:.1f}")
    console.print(table)
    console.print(f"Spider gold queries over one batched stream: {batch['queries']} in "
                  f"{batch['wall_seconds']} s ({batch['calls_per_second']} calls/s), "
                  f"{batch['errors']} errors")

    console.print("Rewards (sql_execution through the reward service, which runs both queries on the tool server):")
    for r in scored:
        console.print(f"  {r['answer']:<16} {r['total']:.1f}  {r['explanation']}", markup=False)

    report = {
        "kind": "demo",
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "wall_seconds": round(time.time() - started, 2),
        "services": [{"name": s.name, "kind": s.kind} for s in specs],
        "session": [asdict(s) for s in steps],
        "spider_gold_batch": batch,
        "rewards": scored,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    lines = ["# rlyard demo transcript", ""]
    for i, s in enumerate(steps, 1):
        lines += [f"## {i}. {s.why}", "", f"`{s.tool}` `{json.dumps(s.arguments)}`"
                  f" — {'error' if s.is_error else 'ok'}, {s.latency_ms:.1f} ms", "", "```", s.output, "```", ""]
    (out / "transcript.md").write_text("\n".join(lines))
    console.print(f"report: [bold]{out / 'report.json'}[/], transcript: {out / 'transcript.md'}")
    expected_errors = {3, 5, 6, 7}  # 0-based steps that must be refused
    wrong = [i + 1 for i, s in enumerate(steps) if s.is_error != (i in expected_errors)]
    if [r["total"] for r in scored] != [1.0, 1.0, 0.0]:
        console.print("[red]unexpected rewards[/]")
        return 1
    if wrong or batch["errors"]:
        console.print(f"[red]unexpected outcomes in steps {wrong}, {batch['errors']} gold errors[/]")
        return 1
    return 0
