"""The local-life environment wired for training and evaluation: prompt, tools, reward spec, task
lines, SFT demonstrations, and ``prepare`` (corpus, tasks, demonstrations, a tiny policy).

An episode (LocalSearchBench style): the agent reads a multi-hop request, calls ``search``,
``nearby`` and ``poi_detail`` — at most one call per tool per round (``RolloutConfig.
max_calls_per_tool_per_turn: 1``), at most ``max_rounds`` rounds — and answers in
``<answer>…</answer>`` with one line per recommended merchant, each citing its ``[poi_id]``.
Scored by the rule-based metrics (``envs.local_life.metrics``) through the reward service:
``poi_correctness``, ``poi_completeness`` and ``poi_faithfulness``.

``python -m envs.local_life.env --out DIR`` (see ``main``) writes under ``DIR``:

- ``poi/``: the corpus (``poi.sqlite``, ``pois.jsonl``; reused when present) and ``poi/index``;
- ``train_tasks.jsonl`` / ``heldout_tasks.jsonl``: task lines (``trainer.tasks.load_tasks`` form) for
  the train tasks that were not demonstrated, and for the held-out tasks;
- ``demos.jsonl``: SFT demonstrations: the gold path of train tasks run through the real tools, one
  call per round, then the answer (the gold POIs, as many as asked, with rating and price as the
  tools showed them);
- ``policy/`` (with ``--policy``): a tiny policy whose tokenizer learned the project corpus plus the
  demonstrations.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.local_life.checklist import describe
from envs.local_life.tasks import generate_split
from envs.local_services.database import place_neutral

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
    """The real POI tools run in-process (no server), as a rollout sees them; a context manager."""

    def __init__(self, poi_dir: Path, index_dir: Path | None = None) -> None:
        from tool_servers.registry import ToolContext, build_tools
        from tool_servers.settings import ToolServerSettings

        self.pool = ThreadPoolExecutor(max_workers=1)
        settings = ToolServerSettings(tools=TOOLS, poi_dir=poi_dir, poi_index_dir=index_dir or poi_dir / "index")
        self.tools = build_tools(list(TOOLS), ToolContext(settings=settings, pool=self.pool))

    def __enter__(self) -> PoiToolbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown()

    async def call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool, Any]:
        """``(text, is_error, structured)`` of one call."""
        from tool_servers.result import TextContent
        from tool_servers.session import Session

        tool = self.tools[name]
        result = await tool.call(tool.Args.model_validate(arguments), Session(session_id="env", context={},
                                                                              idle_timeout_s=60.0))
        text = "\n".join(c.text for c in result.content if isinstance(c, TextContent))
        return text, result.is_error, result.structured


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
        from trainer.model.corpus import tool_schemas

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
    policy: Path | None
    n_train: int
    n_heldout: int
    n_demos: int


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")


def prepare(root: Path, *, seed: int = 0, merchants: int = 150_000, n_train: int = 800, n_heldout: int = 200,
            n_demos: int = 200, max_rounds: int = MAX_ROUNDS, policy: bool = False, size: str = "tiny",
            schemas: bool = False, copy_steps: int = 0,
            on_progress: Callable[[str], None] | None = None) -> Prepared:
    """Write the corpus (reused when ``root/poi/poi.sqlite`` exists), tasks, demonstrations and,
    with ``policy``, a fresh tiny policy under ``root``, given at most ``copy_steps`` of the copying
    warm-up (``trainer.model.copy_warmup``, as the text-to-SQL demo: it ends once the policy copies;
    0 = none); ``schemas``: see :func:`task_line`."""
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
    policy_dir = None
    if policy:
        from trainer.model.build import init_policy
        from trainer.model.corpus import DEFAULT_CORPUS_FILE, render_chat

        say("training the tokenizer and building the tiny policy")
        corpus = root / "corpus.txt"
        # The demonstrations with their place names cut out (as the text-to-SQL demo's tokenizer):
        # train and held-out places are spelled in the same kind of pieces.
        corpus.write_text("\n".join([DEFAULT_CORPUS_FILE.read_text(encoding="utf-8"),
                                     *(place_neutral(render_chat(d["messages"])) for d in demos)]), encoding="utf-8")
        policy_dir = root / "policy"
        init_policy(policy_dir, size=size, seed=seed, corpus=corpus)
        if copy_steps:
            from trainer.model.copy_warmup import copy_warmup_checkpoint

            say(f"copying warm-up (at most {copy_steps} steps)")
            copy_warmup_checkpoint(policy_dir, corpus, steps=copy_steps, seed=seed)
    return Prepared(root, poi_dir, paths["train_tasks"], paths["heldout_tasks"], paths["demos"], policy_dir,
                    len(rl_tasks), len(split.heldout), len(demos))


def main(argv: list[str] | None = None) -> int:
    """``python -m envs.local_life.env --out DIR [--merchants N] [--policy]``."""
    from rich.console import Console

    parser = argparse.ArgumentParser(prog="python -m envs.local_life.env", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/generated/local_life"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merchants", type=int, default=150_000)
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--n-heldout", type=int, default=200)
    parser.add_argument("--n-demos", type=int, default=200)
    parser.add_argument("--max-rounds", type=int, default=MAX_ROUNDS)
    parser.add_argument("--policy", action="store_true", help="also build a tiny policy under OUT/policy")
    parser.add_argument("--copy-steps", type=int, default=600,
                        help="--policy: at most this many copying warm-up steps (ends once it copies; 0 = none)")
    parser.add_argument("--schemas", action="store_true",
                        help="render the tools' JSON schemas into prompts (default: the system message describes them)")
    ns = parser.parse_args(argv)
    console = Console()
    with console.status("preparing the local-life environment…") as status:
        got = prepare(ns.out, seed=ns.seed, merchants=ns.merchants, n_train=ns.n_train, n_heldout=ns.n_heldout,
                      n_demos=ns.n_demos, max_rounds=ns.max_rounds, policy=ns.policy, schemas=ns.schemas,
                      copy_steps=ns.copy_steps,
                      on_progress=lambda msg: status.update(f"{msg}…"))
    console.print(f"{got.n_train} RL tasks: {got.train_tasks}\n{got.n_heldout} held-out tasks: {got.heldout_tasks}\n"
                  f"{got.n_demos} demonstrations: {got.demos}" + (f"\npolicy: {got.policy}" if got.policy else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
