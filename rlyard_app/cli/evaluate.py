"""``rlyard eval -c CONFIG --checkpoint DIR``: run a policy on a task set and report.

Tasks: ``--tasks FILE`` (a task JSONL, ``trainer/tasks.py`` form), else ``--spider-dev N`` (the first
N Spider dev questions shipped in ``data/spider``, built with the text-to-SQL environment), else the
task file of the config's RL stage. Rollout settings (tokens per turn, total tokens, observation cap)
come from the config's RL stage (``--stage NAME``, default the first); decoding is greedy unless
``--temperature``. ``--checkpoint`` overrides ``model.path``; ``model.backend`` samples. Text-to-SQL
tasks are scored with ``envs.text_to_sql.REWARD_SPEC`` (sql_execution + format), whatever the stage
trains with, so that reports compare. Services: the config's, through the composition root
(embedded unless it names addresses). Prints a table; ``--output`` writes the whole report
(per-task results) as JSON.

Local-life tasks (``envs.local_life``; their ground truth holds a checklist) are scored with the three
LocalSearchBench metrics instead (``envs.local_life.env.EVAL_SPEC``), and the table is the paper's:
correctness, completeness, faithfulness, tool calls and rounds per task. The embedded tool server
then serves the config's ``services.embedded`` tools; the round budget is the RL stage's
``rollout.max_turns`` unless ``--max-tool-calls`` is given. ``--judge`` adds a row scored by a judge
model with the benchmark's rubrics (``RLYARD_REWARD_JUDGE_*`` of the reward service, or
``--judge-endpoint`` / ``--judge-model`` / ``--judge-backend``).

IMAgent multi-image tasks (``envs.vision.imagent``) are scored with that environment's
``REWARD_SPEC`` (``qa_em``); the budget of tool calls is the stage's ``rollout.max_turns`` - 1
unless ``--max-tool-calls``. Every table shows tool calls per task and the share of tasks answered
after a zoom (a ``zoom``/``crop``/``revisit``/``confirm`` call before the answer).

``--memory`` prompts every task with the graph memory's top-k as training does (the config's
``memory`` section, which must be enabled); the report then has ``memory_hit_rate`` and each task's
``memory_ids``. Without it no memory service is started.
"""

from __future__ import annotations

import dataclasses
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
    p.add_argument("--max-tool-calls", type=int, default=None,
                   help="tool-call budget per task (default: MTIR-SQL's 6; local-life: the stage's max_turns - 1)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--no-schema", dest="schema", action="store_false",
                   help="--spider-dev: leave the schema out of the prompt")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N tasks only (0 = all)")
    p.add_argument("--device", default="cpu", help="torch device of the policy")
    p.add_argument("--output", help="write the report (aggregates and per-task results) as JSON")
    p.add_argument("--memory", action="store_true",
                   help="prompt every task with the graph memory's top-k (the config's memory section)")
    p.add_argument("--judge", action="store_true",
                   help="local-life: also score each metric with a judge model (the benchmark's rubrics)")
    p.add_argument("--judge-backend", choices=("openai", "hf"), help="judge backend (default: the reward service's)")
    p.add_argument("--judge-endpoint", help="OpenAI-compatible endpoint of the judge, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-model", help="judge model name (openai) or checkpoint folder (hf)")


def render(report: Any, title: str) -> Table:
    """The summary table of an ``EvalReport``."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("tasks", str(report.n))
    name = "execution accuracy" if report.env == "text_to_sql" else "accuracy"
    table.add_row(name, f"{report.execution_accuracy:.3f}")
    table.add_row("accuracy (scored only)", f"{report.scored_accuracy:.3f}")
    table.add_row("tool calls / task", f"{report.mean_tool_calls:.2f}")
    table.add_row("answered after a zoom", f"{report.answered_after_zoom:.3f}")
    table.add_row("turns / task", f"{report.mean_turns:.2f}")
    table.add_row("format errors", str(report.format_errors))
    table.add_row("truncated", str(report.truncated))
    table.add_row("infra failures", str(report.infra_failures))
    if report.memory_hit_rate is not None:
        table.add_row("shown a memory", f"{report.memory_hit_rate:.3f}")
    table.add_row("seconds", f"{report.seconds:.1f}")
    return table


def render_local_life(report: Any, title: str) -> Table:
    """The paper-style table of a local-life ``EvalReport``: one row per scorer."""
    table = Table(title=title)
    for name in ("scored by", "correctness", "completeness", "faithfulness", "tool calls", "rounds"):
        table.add_column(name, justify="left" if name == "scored by" else "right")
    m, calls, rounds = report.metrics, f"{report.mean_tool_calls:.2f}", f"{report.mean_turns:.2f}"
    table.add_row("rules", f"{m.get('poi_correctness', 0.0):.3f}", f"{10 * m.get('poi_completeness', 0.0):.2f}",
                  f"{10 * m.get('poi_faithfulness', 0.0):.2f}", calls, rounds)
    if report.judge:
        j = report.judge
        table.add_row("judge", f"{j.get('correctness', 0.0):.3f}", f"{10 * j.get('completeness', 0.0):.2f}",
                      f"{10 * j.get('faithfulness', 0.0):.2f}", calls, rounds)
    failed = sum(report.judge_failures.values())
    table.caption = (f"{report.n} tasks · answered after a zoom {report.answered_after_zoom:.3f} · "
                     f"format errors {report.format_errors} · truncated {report.truncated} · "
                     f"infra failures {report.infra_failures}" + (f" · judge failures {failed}" if failed else "")
                     + f" · {report.seconds:.1f} s")
    return table


def run(ns: Any, console: Console) -> int:
    """Entry of ``rlyard eval``."""
    from envs.local_life.env import EVAL_SPEC as LOCAL_LIFE_SPEC
    from envs.local_life.judge import METRICS, judge_spec
    from envs.text_to_sql import REWARD_SPEC, load_spider, make_tasks
    from trainer.compose import open_stack
    from trainer.config import MemoryConfig, load_config
    from trainer.evaluate import EVAL_ROLLOUT, evaluate, is_imagent, is_local_life

    config = load_config(ns.config)
    if ns.memory and not config.memory.enabled:
        raise ConfigError(f"--memory prompts with the graph memory: {ns.config} needs `memory: {{enabled: true}}`")
    if not ns.memory:     # no memory service to start for an evaluation that does not use it
        config = dataclasses.replace(config, memory=MemoryConfig())
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
    if (ns.max_tool_calls is not None and ns.max_tool_calls < 0) or (ns.spider_dev is not None and ns.spider_dev < 1):
        raise ConfigError("--max-tool-calls must be >= 0 and --spider-dev >= 1")

    judge_overrides = {k: v for k, v in (("backend", ns.judge_backend), ("endpoint", ns.judge_endpoint),
                                         ("model", ns.judge_model)) if v}
    # an embedded reward service may call the judge the command line names
    with open_stack(config, loop_name="eval-loop", extra_specs=[judge_overrides] if ns.judge else []) as stack:
        if ns.spider_dev is not None:
            items = load_spider()[: ns.spider_dev]
            budget = 6 if ns.max_tool_calls is None else ns.max_tool_calls
            tasks = make_tasks(items, stack.tools, include_schema=ns.schema, max_tool_calls=budget)
            source = f"spider dev[:{ns.spider_dev}]"
        else:
            path = ns.tasks or (stage.tasks.path if stage is not None else "")
            if not path:
                raise ConfigError("no tasks: pass --tasks FILE or --spider-dev N, or give the RL stage tasks.path")
            tasks = stack.tasks(path)
            source = str(path)
        if ns.limit:
            tasks = tasks[: ns.limit]
        local_life, imagent = is_local_life(tasks), is_imagent(tasks)
        max_tool_calls = ns.max_tool_calls
        if max_tool_calls is None:
            max_tool_calls = rollout.max_turns - 1 if local_life or imagent else 6
        judge = None
        if ns.judge:
            if not local_life:
                raise ConfigError("--judge scores the local-life metrics; these tasks are not local-life tasks")
            judge = {metric: judge_spec(metric, **judge_overrides) for metric in METRICS}
        with console.status(f"evaluating {len(tasks)} task(s) from {source}…"):
            spec: dict[str, Any] = LOCAL_LIFE_SPEC if local_life else REWARD_SPEC
            if imagent:     # imported only here: the environment needs the image extra (OpenCV)
                from envs.vision import imagent as imagent_env

                spec = imagent_env.REWARD_SPEC
            report = evaluate(checkpoint, tasks, stack, reward_spec=spec,
                              rollout_config=rollout, temperature=ns.temperature, max_tool_calls=max_tool_calls,
                              seed=config.seed, device=ns.device, judge=judge, memory=ns.memory)
    report.settings["tasks"] = source
    title = f"rlyard eval · {Path(checkpoint).name} · {source}"
    console.print(render_local_life(report, title) if local_life else render(report, title))
    if ns.output:
        out = Path(ns.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        console.print(f"report: {out}")
    return 0
