"""``rlyard eval -c CONFIG --checkpoint DIR``: run a policy on a task set and report.

Tasks: ``--tasks FILE`` (a task JSONL, ``trainer/tasks.py`` form), else ``--spider-dev N`` (the first
N Spider dev questions shipped in ``data/spider``, built with the text-to-SQL environment), else the
task file of the config's RL stage. Rollout settings (tokens per turn, total tokens, observation cap)
come from the config's RL stage (``--stage NAME``, default the first); decoding is greedy unless
``--temperature``. ``--checkpoint`` overrides ``model.path``. Scored with ``envs.text_to_sql.REWARD_SPEC``
(sql_execution + format), whatever the stage trains with, so that reports compare. Services: embedded unless the config
names addresses. Prints a table; ``--output`` writes the whole report (per-task results) as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rlyard.errors import ConfigError


def add_arguments(p: Any) -> None:
    """The options of ``rlyard eval`` (``p``: an argparse parser)."""
    p.add_argument("-c", "--config", required=True, help="experiment YAML: rollout settings, model, services")
    p.add_argument("--checkpoint", help="policy checkpoint directory (default: the config's model.path)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tasks", help="task JSONL (default: the config's RL stage tasks.path)")
    src.add_argument("--spider-dev", type=int, metavar="N", help="the first N Spider dev questions")
    p.add_argument("--stage", help="the RL stage whose rollout settings to use (default: the first RL stage)")
    p.add_argument("--max-tool-calls", type=int, default=6, help="tool-call budget per task (MTIR-SQL: 6)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--no-schema", dest="schema", action="store_false",
                   help="--spider-dev: leave the schema out of the prompt")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N tasks only (0 = all)")
    p.add_argument("--device", default="cpu", help="torch device of the policy")
    p.add_argument("--output", help="write the report (aggregates and per-task results) as JSON")


def render(report: Any, title: str) -> Table:
    """The summary table of an ``EvalReport``."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("tasks", str(report.n))
    table.add_row("execution accuracy", f"{report.execution_accuracy:.3f}")
    table.add_row("accuracy (scored only)", f"{report.scored_accuracy:.3f}")
    table.add_row("tool calls / task", f"{report.mean_tool_calls:.2f}")
    table.add_row("turns / task", f"{report.mean_turns:.2f}")
    table.add_row("format errors", str(report.format_errors))
    table.add_row("truncated", str(report.truncated))
    table.add_row("infra failures", str(report.infra_failures))
    table.add_row("seconds", f"{report.seconds:.1f}")
    return table


def run(ns: Any, console: Console) -> int:
    """Entry of ``rlyard eval``."""
    from envs.text_to_sql import load_spider, make_tasks
    from trainer.config import load_config
    from trainer.evaluate import EVAL_ROLLOUT, EvalServices, evaluate
    from trainer.tasks import load_tasks
    from trainer.wiring import DEFAULT_DB_DIR

    config = load_config(ns.config)
    checkpoint = ns.checkpoint or config.model.path
    if not Path(checkpoint).exists():
        raise ConfigError(f"checkpoint {checkpoint} does not exist; pass --checkpoint DIR "
                          f"(e.g. runs/<run_id>/checkpoints/<step>/policy or `rlyard model init --out DIR`)")
    rl = [s for s in config.stages if s.kind == "rl"]
    if ns.stage:
        rl = [s for s in rl if s.name == ns.stage]
        if not rl:
            raise ConfigError(f"no RL stage named {ns.stage!r} in {ns.config}")
    stage = rl[0] if rl else None
    rollout = stage.rollout if stage is not None else EVAL_ROLLOUT
    if ns.max_tool_calls < 0 or (ns.spider_dev is not None and ns.spider_dev < 1):
        raise ConfigError("--max-tool-calls must be >= 0 and --spider-dev >= 1")

    svc = config.services
    with EvalServices(db_dir=DEFAULT_DB_DIR, tools=svc.tools, reward=svc.reward, timeout_s=svc.timeout_s) as services:
        if ns.spider_dev is not None:
            items = load_spider()[: ns.spider_dev]
            tasks = make_tasks(items, services.tools, include_schema=ns.schema, max_tool_calls=ns.max_tool_calls)
            source = f"spider dev[:{ns.spider_dev}]"
        else:
            path = ns.tasks or (stage.tasks.path if stage is not None else "")
            if not path:
                raise ConfigError("no tasks: pass --tasks FILE or --spider-dev N, or give the RL stage tasks.path")
            tasks = load_tasks(Path(path), services.tools)
            source = str(path)
        if ns.limit:
            tasks = tasks[: ns.limit]
        with console.status(f"evaluating {len(tasks)} task(s) from {source}…"):
            report = evaluate(checkpoint, tasks, services=services, rollout_config=rollout,
                              temperature=ns.temperature, max_tool_calls=ns.max_tool_calls,
                              seed=config.seed, device=ns.device)
    report.settings["tasks"] = source
    console.print(render(report, f"rlyard eval · {Path(checkpoint).name} · {source}"))
    if ns.output:
        out = Path(ns.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        console.print(f"report: {out}")
    return 0
