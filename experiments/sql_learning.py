"""The learning set-up: the local-services text-to-SQL environment in the compact form a tiny
policy can learn on two CPU cores.

What it writes under a work directory (``prepare``), all from one seed:

- ``db/local_services/local_services.sqlite``: the local-services database (Spider layout);
- ``train_tasks.jsonl`` / ``heldout_tasks.jsonl``: RL and evaluation tasks; each held-out line
  carries its slice (``a`` in-distribution, ``b`` unseen values, ``c`` unseen templates; decided by
  the seed before any training, ``envs.local_services.questions``); the RL
  tasks are the train questions that were *not* demonstrated (``n_train - n_demos`` of them):
  demonstrations are the scarce resource, questions with a gold answer the plentiful one; with
  ``renamed_worlds`` they are moved into renamed copies of the database under ``db/`` (invented
  place names, ``experiments.renamed``);
- ``demos.jsonl``: SFT demonstrations of ``n_demos`` *train* questions with real tool calls and
  real observations (the SQL tools run in-process on the database): the gold query through
  ``sql_query``, its rows, then the final ``<answer>``; every ``error_every``-th one first runs a
  query with a misnamed table, reads the error and fixes it (MTIR-SQL's execution feedback);
- ``policy/``: the tiny policy, its tokenizer trained on the project corpus plus the schema and the
  demonstrations with every place name cut out (``place_neutral``; never on held-out text);
- ``prepared.json``: the arguments and what was written, the slices' counts among it.

Compact prompt: the database is fixed, so the prompt leaves out the schema and the JSON tool
schemas (CPU generation is prefill-bound; docs/envs.md); the system message names the one tool
and the turn format in two sentences. The tools themselves are the real ``sql_query`` of the SQL
tool server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envs.local_services.database import (
    DB_ID,
    SCHEMA,
    Pool,
    build_database,
    database_path,
    load_pool,
    place_neutral,
)
from envs.local_services.questions import SLICES, HeldoutSizes, generate_split, q
from envs.text_to_sql import SqlToolbox, _broken
from experiments.renamed import build_worlds, rewrite_task

SYSTEM = ("Answer with one SQLite query over the local_services database. Run a query with "
          '<tool_call>{"name": "sql_query", "arguments": {"query": "..."}}</tool_call> and read its rows '
          "or error (at most {max_tool_calls} calls), then give the final query in <answer>...</answer>.")
REWARD_SPEC: dict[str, Any] = {"sql_execution": 1.0}
PREPARED_FILE = "prepared.json"
# Bumped when ``prepare`` writes something different for the same arguments, so that
# ``load_prepared`` does not hand back a work directory of the older kind.
# 2: the tokenizer learns no place names (``place_neutral``).
# 3: held-out questions in three slices decided up front; no train question or tokenizer text
#    names a held-out place.
PREPARE_VERSION = 3


class StaleWorldError(RuntimeError):
    """A work directory prepared by another version of ``prepare``: not reused, not overwritten."""


@dataclass(frozen=True)
class Prepared:
    """Paths and counts of a prepared work directory."""

    root: Path
    db_dir: Path
    train_tasks: Path
    heldout_tasks: Path
    demos: Path
    policy: Path
    n_train: int
    n_heldout: int                # all slices
    n_demos: int
    split_info: dict[str, Any]
    copy_losses: list[float] = field(default_factory=list)

    @property
    def slices(self) -> dict[str, int]:
        """Held-out questions per slice (``SLICES`` order)."""
        counts = self.split_info.get("slices", {})
        return {name: int(counts.get(name, 0)) for name in SLICES}


def system_prompt(max_tool_calls: int) -> str:
    """The system message with the tool-call budget."""
    return SYSTEM.replace("{max_tool_calls}", str(max_tool_calls))


def quote_values(question: str, query: str, slots: dict[str, str]) -> str:
    """The question with every slot value that the gold SQL uses as a string literal written as
    that literal (``in Xi'an`` → ``in 'Xi''an'``).

    Why: a byte-level BPE splits a word after a space differently from the same word after a
    quote (`` Y|u|hua`` in the question, ``'|Yuhua`` in ``d.name = 'Yuhua'``), so writing a value
    into SQL would need a learned mapping per word, which a policy trained from scratch cannot have
    for a city it never saw. Quoted, the value is the same tokens in the question and in the SQL,
    and putting it into the query is copying.
    """
    values = sorted({v for v in slots.values() if v and q(v) in query and v in question}, key=len, reverse=True)
    if not values:
        return question
    pattern = re.compile(r"(?<![\w'])(" + "|".join(re.escape(v) for v in values) + r")(?![\w'])")
    return pattern.sub(lambda m: q(m.group(1)), question)


def task_line(task: dict[str, Any], max_tool_calls: int) -> dict[str, Any]:
    """One task JSONL line (``trainer.tasks.load_tasks`` form) for a generated question."""
    return {"task_id": task["task_id"],
            "messages": [{"role": "system", "content": system_prompt(max_tool_calls)},
                         {"role": "user", "content": quote_values(task["question"], task["query"], task["slots"])}],
            "tools": [],
            "context": {"db_id": task["db_id"]},
            "ground_truth": {"db_id": task["db_id"], "query": task["query"]},
            "template": task["template"],
            **({"slice": task["slice"]} if "slice" in task else {})}


def _call(query: str) -> dict[str, Any]:
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "sql_query", "arguments": {"query": query}}}]}


async def _demo(toolbox: SqlToolbox, task: dict[str, Any], max_tool_calls: int, with_error: bool) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt(max_tool_calls)},
                                      {"role": "user",
                                       "content": quote_values(task["question"], task["query"], task["slots"])}]
    broken = _broken(task["query"]) if with_error and max_tool_calls >= 2 else None
    if broken is not None:
        text, is_error, _ = await toolbox.call(task["db_id"], "sql_query", {"query": broken})
        if is_error:
            messages += [_call(broken), {"role": "tool", "name": "sql_query", "content": text}]
    messages.append(_call(task["query"]))
    text, is_error, _ = await toolbox.call(task["db_id"], "sql_query", {"query": task["query"]})
    if is_error:
        raise RuntimeError(f"gold query of {task['task_id']} fails: {text}")
    messages += [{"role": "tool", "name": "sql_query", "content": text},
                 {"role": "assistant", "content": f"<answer>{task['query']}</answer>"}]
    return {"messages": messages, "task_id": task["task_id"]}


def pick_demos(train: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` train questions, round-robin over templates (each template as evenly as possible)."""
    by_template: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task in train:
        by_template[task["template"]].append(task)
    rng = random.Random(seed)
    queues = []
    for name in sorted(by_template):
        items = list(by_template[name])
        rng.shuffle(items)
        queues.append(items)
    picked: list[dict[str, Any]] = []
    while len(picked) < min(n, len(train)):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    return picked


def task_cities(task: dict[str, Any], pool: Pool) -> set[str]:
    """The cities a question names, directly or through a district or merchant of theirs."""
    cities: set[str] = set()
    by_merchant: dict[str, set[str]] = defaultdict(set)
    for m in pool.merchants:
        by_merchant[m.name].add(m.city)
    for value in task["slots"].values():
        if value in pool.cities:
            cities.add(value)
        if value in pool.districts:
            cities.add(pool.districts[value])
        cities |= by_merchant.get(value, set())
    return cities


def demo_candidates(train: list[dict[str, Any]], pool: Pool, train_cities: list[str], share: float,
                    seed: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The train questions that may be demonstrated: those naming only the ``share`` of the train
    cities drawn as demonstration cities (and those naming no city), and those cities."""
    k = max(1, round(share * len(train_cities)))
    demo_cities = sorted(random.Random(f"sql_learning/{seed}/demo_cities").sample(sorted(train_cities), k))
    return [t for t in train if task_cities(t, pool) <= set(demo_cities)], demo_cities


def demonstrations(db_dir: Path, tasks: list[dict[str, Any]], *, max_tool_calls: int,
                   error_every: int) -> list[dict[str, Any]]:
    """SFT lines (message form) for ``tasks``, observations from the real SQL tools."""
    async def go() -> list[dict[str, Any]]:
        with SqlToolbox(db_dir) as toolbox:
            return [await _demo(toolbox, t, max_tool_calls, bool(error_every) and i % error_every == error_every - 1)
                    for i, t in enumerate(tasks)]

    return asyncio.run(go())


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")


def prepare(root: Path, *, seed: int = 0, n_train: int = 1000, n_heldout_a: int = 100, n_heldout_b: int = 40,
            n_heldout_c: int = 20, n_demos: int = 300,
            max_tool_calls: int = 3, error_every: int = 4, size: str = "tiny", copy_steps: int = 600,
            demo_city_share: float = 1.0, renamed_worlds: int = 0,
            on_copy_step: Callable[[int, float], None] | None = None) -> Prepared:
    """Write the database, tasks, demonstrations and a fresh tiny policy under ``root``; held-out
    questions are ``n_heldout_a`` in-distribution, ``n_heldout_b`` with unseen values and
    ``n_heldout_c`` with unseen templates (``envs.local_services.questions``). The policy
    gets at most ``copy_steps`` of copying warm-up (``experiments.copy_warmup``; 0 = none).
    Demonstrations are drawn from the questions of ``demo_city_share`` of the train cities (1.0:
    all): RL questions about the other train cities then name places no demonstration showed, as
    held-out questions about held-out cities do. With ``renamed_worlds`` > 0 the RL questions are
    moved, round-robin, into that many renamed copies of the database (``experiments.renamed``:
    invented city and district names), so that every RL question names places no demonstration and no
    held-out question shows. The arguments and the result are recorded in ``root/prepared.json``
    (see ``load_prepared``)."""
    if not 0 < demo_city_share <= 1:
        raise ValueError(f"demo_city_share={demo_city_share}: must be in (0, 1]")
    if renamed_worlds < 0:
        raise ValueError(f"renamed_worlds={renamed_worlds}: must be >= 0 (0 = the RL questions stay in the database)")
    sizes = HeldoutSizes(n_heldout_a, n_heldout_b, n_heldout_c)
    args = {"version": PREPARE_VERSION, "seed": seed, "n_train": n_train, "n_heldout_a": n_heldout_a,
            "n_heldout_b": n_heldout_b, "n_heldout_c": n_heldout_c, "n_demos": n_demos,
            "max_tool_calls": max_tool_calls, "error_every": error_every, "size": size, "copy_steps": copy_steps,
            "demo_city_share": demo_city_share, "renamed_worlds": renamed_worlds}
    from trainer.model.build import init_policy
    from trainer.model.corpus import DEFAULT_CORPUS_FILE, render_chat

    root.mkdir(parents=True, exist_ok=True)
    db_dir = root / "db"
    info = build_database(database_path(db_dir), seed)
    split = generate_split(info.path, seed, n_train, sizes)
    candidates, demo_cities = split.train, list(split.info["train_cities"])
    if demo_city_share < 1:
        conn = sqlite3.connect(f"file:{info.path}?mode=ro", uri=True)
        try:
            pool = load_pool(conn, None)
        finally:
            conn.close()
        candidates, demo_cities = demo_candidates(split.train, pool, demo_cities, demo_city_share, seed)
    picked = pick_demos(candidates, n_demos, seed)
    shown = {t["task_id"] for t in picked}
    rl_tasks = [t for t in split.train if t["task_id"] not in shown]
    train_path, heldout_path = root / "train_tasks.jsonl", root / "heldout_tasks.jsonl"
    rl_lines = [task_line(t, max_tool_calls) for t in rl_tasks]
    worlds = build_worlds(info.path, db_dir, renamed_worlds, seed) if renamed_worlds else []
    if worlds:
        rl_lines = [rewrite_task(line, worlds[i % len(worlds)]) for i, line in enumerate(rl_lines)]
    _write_jsonl(train_path, rl_lines)
    _write_jsonl(heldout_path, [task_line(t, max_tool_calls) for t in split.heldout])
    demos = demonstrations(db_dir, picked, max_tool_calls=max_tool_calls, error_every=error_every)
    demos_path = root / "demos.jsonl"
    _write_jsonl(demos_path, demos)
    # The tokenizer learns the project corpus plus this world's schema and demonstrations (train
    # only), with the place names cut out so that train and held-out places tokenize alike (the
    # project corpus names two cities of the world itself).
    corpus = root / "corpus.txt"
    parts = [DEFAULT_CORPUS_FILE.read_text(encoding="utf-8"), SCHEMA]
    parts += [render_chat(demo["messages"]) for demo in demos]
    corpus.write_text(place_neutral("\n".join(parts)), encoding="utf-8")
    init_policy(root / "policy", size=size, seed=seed, corpus=corpus)
    copy_losses: list[float] = []
    if copy_steps:
        from experiments.copy_warmup import copy_warmup_checkpoint

        copy_losses = copy_warmup_checkpoint(root / "policy", corpus, steps=copy_steps, seed=seed,
                                             on_step=on_copy_step)
    prepared = Prepared(root=root, db_dir=db_dir, train_tasks=train_path, heldout_tasks=heldout_path,
                        demos=demos_path, policy=root / "policy", n_train=len(rl_tasks), n_heldout=len(split.heldout),
                        n_demos=len(demos), split_info={**split.info, "db_id": DB_ID, "demo_cities": demo_cities,
                                                        "rl_worlds": [w.db_id for w in worlds]},
                        copy_losses=copy_losses)
    record = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(prepared).items()}
    (root / PREPARED_FILE).write_text(json.dumps({"args": args, "prepared": record}, indent=1) + "\n",
                                      encoding="utf-8")
    return prepared


def load_prepared(root: Path, **args: Any) -> Prepared | None:
    """What ``prepare(root, **args)`` wrote earlier with exactly these arguments, or None.

    Raises:
        StaleWorldError: ``root`` was prepared by another ``PREPARE_VERSION``: its held-out questions
            are not the ones this version's reports read (a resumed run would mix two worlds).
    """
    path = root / PREPARED_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    version = saved.get("args", {}).get("version")
    if version != PREPARE_VERSION:
        raise StaleWorldError(
            f"{root} was prepared by version {version} of the learning world, this code writes version "
            f"{PREPARE_VERSION} (held-out questions in slices a/b/c since version 3); it is neither reused nor "
            "overwritten: start a new run (another --run-id or --runs-dir) or delete that directory")
    if saved["args"] != {"version": PREPARE_VERSION, **args}:
        return None
    record: dict[str, Any] = dict(saved["prepared"])
    paths = {f.name for f in dataclasses.fields(Prepared) if f.type in ("Path", Path)}
    values: dict[str, Any] = {k: Path(v) if k in paths else v for k, v in record.items()}
    return Prepared(**values)
