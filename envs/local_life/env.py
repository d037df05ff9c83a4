"""The local-life environment wired for training and evaluation: prompt, tools, reward spec, task
lines, SFT demonstrations, and ``prepare`` (corpus, tasks, demonstrations).

An episode (LocalSearchBench style): the agent reads a multi-hop request, calls ``search``,
``nearby`` and ``poi_detail`` — at most one call per tool per round (``RolloutConfig.
max_calls_per_tool_per_turn: 1``), at most ``max_rounds`` rounds — and answers in
``<answer>…</answer>`` with one line per recommended merchant, each citing its ``[poi_id]``.
Scored by the rule-based metrics (``reward_service.local_life.metrics``) through the reward service:
``poi_correctness``, ``poi_completeness`` and ``poi_faithfulness``.

``python -m envs.local_life.env --out DIR`` (see ``main``) writes under ``DIR``:

- ``poi/``: the corpus (``poi.sqlite``, ``pois.jsonl``; reused when present) and ``poi/index``;
- ``train_tasks.jsonl`` / ``heldout_tasks.jsonl``: task lines (``trainer.tasks.load_tasks`` form) for
  the train tasks that were not demonstrated, and for the held-out tasks;
- ``demos.jsonl``: SFT demonstrations: the gold path of train tasks run through the real tools, one
  call per round, then the answer (the gold POIs, as many as asked, with rating and price as the
  tools showed them).

A tiny policy for it (tokenizer, copying warm-up) is an experiment's: ``python -m
experiments.local_life --out DIR`` prepares the folder and builds ``DIR/policy``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.local_life.checklist import describe
from envs.local_life.tasks import generate_split

TOOLS = ("search", "nearby", "poi_detail")
MAX_ROUNDS = 8
REWARD_SPEC: dict[str, Any] = {"poi_correctness": 1.0, "poi_completeness": 0.3, "poi_faithfulness": 0.1}
EVAL_SPEC: dict[str, Any] = {"poi_correctness": 1.0, "poi_completeness": 1.0, "poi_faithfulness": 1.0}
MAX_DEMO_CHARS = 9_000         # a demonstration longer than this (≈ the tiny policy's 4,096 positions) is skipped

SYSTEM = (
    "You find local merchants for people. Tools: search (keywords plus filters: city, district, business_area, "
    "category, min_price, max_price, min_rating, open_at, weekday), nearby (POIs within radius_m of a poi_id, "
    "nearest first), poi_detail (one POI's full record: tags, facilities, products). Call a tool with "
    '<tool_call>{"name": "search", "arguments": {...}}</tool_call>; each round you may call each tool at most '
    "once, and you have at most {max_rounds} rounds. Check every requirement against what the tools show, then "
    "answer in <answer>...</answer>: one line per merchant, [poi_id] first, never more than asked, and only "
    "merchants the tools showed you."
)


def system_prompt(max_rounds: int = MAX_ROUNDS) -> str:
    """The system message with the round budget."""
    return SYSTEM.replace("{max_rounds}", str(max_rounds))


def reference(task: dict[str, Any]) -> str:
    """The reference a judge reads: the gold POIs and the requirements in words."""
    items = [describe(i) for i in task["checklist"]]
    return (f"POIs that satisfy every requirement: {', '.join(task['gold_answers'])}\n"
            "Requirements:\n" + "\n".join(f"- {i}" for i in items))


def task_line(task: dict[str, Any], max_rounds: int = MAX_ROUNDS, *, schemas: bool = False) -> dict[str, Any]:
    """One task JSONL line (``trainer.tasks.load_tasks`` form) for a generated task.

    ``schemas``: the chat template renders the three tools' JSON schemas into the prompt (as
    ``ListTools`` publishes them, ~1,500 tokens with the tiny policy's tokenizer); without, the
    system message alone describes the tools (the compact prompt a tiny policy on a CPU trains
    on). Demonstrations are written with the same choice, so SFT and rollouts see one prompt."""
    return {"task_id": task["task_id"],
            "messages": [{"role": "system", "content": system_prompt(max_rounds)},
                         {"role": "user", "content": task["question"]}],
            "tools": list(TOOLS) if schemas else [],
            "context": {},
            "ground_truth": {"question": task["question"], "answer": reference(task),
                             "checklist": task["checklist"], "gold_answers": task["gold_answers"],
                             "anchor": task["anchor"], "request_count": task["request_count"]},
            "template": task["template"], "difficulty": task["difficulty"], "hops": task["hops"]}


# ---- the tools, in-process -------------------------------------------------------------------------

class PoiToolbox:
    """The real POI tools run in-process through the tool server's executor (no gRPC), as a
    rollout sees them; a context manager."""

    def __init__(self, poi_dir: Path, index_dir: Path | None = None) -> None:
        from tool_servers.local import LocalTools
        from tool_servers.poi.settings import PoiSettings

        self.tools = LocalTools(TOOLS, [PoiSettings(dir=poi_dir, index_dir=index_dir)])

    def __enter__(self) -> PoiToolbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tools.close()

    async def call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool, Any]:
        """``(text, is_error, structured)`` of one call."""
        result = await self.tools.call(name, arguments)
        return result.text, result.is_error, result.structured


def _call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


def answer_text(ids: Sequence[str], shown: dict[str, dict[str, Any]]) -> str:
    """The answer lines for ``ids``: ``[poi_id] name · rating r · ¥p/person`` (what the tools showed)."""
    return "\n".join(f"[{p}] {shown[p]['name']} · rating {shown[p]['rating']:.1f} · "
                     f"¥{shown[p]['avg_price']:.0f}/person" for p in ids)


async def demonstration(toolbox: PoiToolbox, task: dict[str, Any], max_rounds: int = MAX_ROUNDS, *,
                        schemas: bool = False) -> dict[str, Any]:
    """The gold path through the real tools, one call per round, then the answer; with ``schemas``
    the tools' JSON schemas go to the chat template, as the task line's ``tools`` make rollouts do."""
    if len(task["gold_path"]) + 1 > max_rounds:
        raise ValueError(f"task {task['task_id']}: its gold path takes {len(task['gold_path'])} calls, more than "
                         f"{max_rounds - 1} rounds allow")
    line = task_line(task, max_rounds, schemas=schemas)
    messages: list[dict[str, Any]] = list(line["messages"])
    shown: dict[str, dict[str, Any]] = {}
    for call in task["gold_path"]:
        text, is_error, structured = await toolbox.call(call["tool"], call["arguments"])
        if is_error:
            raise RuntimeError(f"task {task['task_id']}: gold call {call} fails: {text}")
        for rec in structured.get("results", [structured]):
            shown[rec["poi_id"]] = rec
        messages += [_call(call["tool"], call["arguments"]), {"role": "tool", "name": call["tool"], "content": text}]
    ids = task["gold_answers"][: task["request_count"]]
    messages.append({"role": "assistant", "content": f"<answer>{answer_text(ids, shown)}</answer>"})
    demo: dict[str, Any] = {"messages": messages, "task_id": task["task_id"], "ground_truth": line["ground_truth"]}
    if schemas:
        from tool_servers.local import tool_schemas

        demo["tools"] = tool_schemas(TOOLS)
    return demo


def pick_demos(train: list[dict[str, Any]], n: int, seed: int, max_rounds: int = MAX_ROUNDS) -> list[dict[str, Any]]:
    """``n`` train tasks whose gold path fits the round budget, round-robin over templates."""
    by_template: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task in train:
        if len(task["gold_path"]) + 1 <= max_rounds:
            by_template[task["template"]].append(task)
    rng = random.Random(f"local_life/{seed}/demos")
    queues = []
    for name in sorted(by_template):
        items = by_template[name]
        rng.shuffle(items)
        queues.append(items)
    picked: list[dict[str, Any]] = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    return picked


def demonstrations(poi_dir: Path, tasks: list[dict[str, Any]], max_rounds: int = MAX_ROUNDS,
                   max_chars: int = MAX_DEMO_CHARS, *, schemas: bool = False) -> list[dict[str, Any]]:
    """SFT lines (message form) for ``tasks``; one whose messages exceed ``max_chars`` is left out."""
    async def go() -> list[dict[str, Any]]:
        with PoiToolbox(poi_dir) as toolbox:
            demos = [await demonstration(toolbox, t, max_rounds, schemas=schemas) for t in tasks]
        return [d for d in demos if sum(len(str(m.get("content", ""))) for m in d["messages"]) <= max_chars]

    return asyncio.run(go())


# ---- prepare ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prepared:
    """Paths and counts of a prepared folder."""

    root: Path
    poi_dir: Path
    train_tasks: Path
    heldout_tasks: Path
    demos: Path
    n_train: int
    n_heldout: int
    n_demos: int


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")


def prepare(root: Path, *, seed: int = 0, merchants: int = 150_000, n_train: int = 800, n_heldout: int = 200,
            n_demos: int = 200, max_rounds: int = MAX_ROUNDS, schemas: bool = False,
            on_progress: Callable[[str], None] | None = None) -> Prepared:
    """Write the corpus (reused when ``root/poi/poi.sqlite`` exists), tasks and demonstrations
    under ``root``; ``schemas``: see :func:`task_line`."""
    from envs.local_services.poi_corpus import build_corpus

    say = on_progress or (lambda _msg: None)
    root.mkdir(parents=True, exist_ok=True)
    poi_dir = root / "poi"
    if not (poi_dir / "poi.sqlite").is_file():
        say(f"building the corpus ({merchants:,} merchants)")
        build_corpus(poi_dir, seed=seed, merchants=merchants)
    say("generating tasks")
    split = generate_split(poi_dir / "poi.sqlite", seed, n_train, n_heldout, index_dir=poi_dir / "index")
    say("running the demonstrations' gold paths")
    demos = demonstrations(poi_dir, pick_demos(split.train, n_demos, seed, max_rounds), max_rounds,
                           schemas=schemas)
    shown = {d["task_id"] for d in demos}
    rl_tasks = [t for t in split.train if t["task_id"] not in shown]
    paths = {name: root / f"{name}.jsonl" for name in ("train_tasks", "heldout_tasks", "demos")}
    _write_jsonl(paths["train_tasks"], [task_line(t, max_rounds, schemas=schemas) for t in rl_tasks])
    _write_jsonl(paths["heldout_tasks"], [task_line(t, max_rounds, schemas=schemas) for t in split.heldout])
    _write_jsonl(paths["demos"], demos)
    (root / "split_info.json").write_text(json.dumps(split.info, indent=2, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
    return Prepared(root, poi_dir, paths["train_tasks"], paths["heldout_tasks"], paths["demos"],
                    len(rl_tasks), len(split.heldout), len(demos))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``prepare`` on a command line."""
    parser.add_argument("--out", type=Path, default=Path("data/generated/local_life"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merchants", type=int, default=150_000)
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--n-heldout", type=int, default=200)
    parser.add_argument("--n-demos", type=int, default=200)
    parser.add_argument("--max-rounds", type=int, default=MAX_ROUNDS)
    parser.add_argument("--schemas", action="store_true",
                        help="render the tools' JSON schemas into prompts (default: the system message describes them)")


def prepare_from_args(ns: argparse.Namespace, on_progress: Callable[[str], None] | None = None) -> Prepared:
    """``prepare`` with the options ``add_arguments`` parsed."""
    return prepare(ns.out, seed=ns.seed, merchants=ns.merchants, n_train=ns.n_train, n_heldout=ns.n_heldout,
                   n_demos=ns.n_demos, max_rounds=ns.max_rounds, schemas=ns.schemas, on_progress=on_progress)


def main(argv: list[str] | None = None) -> int:
    """``python -m envs.local_life.env --out DIR [--merchants N] ...``."""
    from rich.console import Console

    parser = argparse.ArgumentParser(prog="python -m envs.local_life.env", description=__doc__.splitlines()[0])
    add_arguments(parser)
    ns = parser.parse_args(argv)
    console = Console()
    with console.status("preparing the local-life environment…") as status:
        got = prepare_from_args(ns, on_progress=lambda msg: status.update(f"{msg}…"))
    console.print(f"{got.n_train} RL tasks: {got.train_tasks}\n{got.n_heldout} held-out tasks: {got.heldout_tasks}\n"
                  f"{got.n_demos} demonstrations: {got.demos}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
