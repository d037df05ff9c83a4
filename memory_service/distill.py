"""Distillation: decision paths of one task type → human-readable meta-cognitions, by rules and
templates (arXiv 2511.07800's meta-cognition layer, induced from contrasting successful and
failing paths). Pure functions over ``StoredPath`` records.

Each rule compares the success rate of two groups of paths (paths of system failures left out) and
fires when both groups hold at least ``min_support`` paths and the rates differ by ``min_gap``:

- ``first:T``     paths that began with tool T vs the others;
- ``before:A:B``  paths that called B after A vs those that called B without A before it;
- ``avoid:T``     paths that never called T vs those that did (fires when calling T hurts);
- ``retry:T``     after an error of T, paths that called a tool again vs those that stopped;
- ``answer``      paths that ended with an answer vs those that did not;
- ``sequence:…``  paths with the most frequent successful tool sequence vs all others;
- ``shape:…``     paths whose final answer has the most frequent successful shape (the answer with
  its literal values blanked: for SQL, the query skeleton) vs all others; its text carries the
  shape, so a policy can fill in its own task's values.

A candidate's ``rule_key`` identifies what it says, so Distill never adds the same advice twice."""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from memory_service.fsm import ANSWER, INFRA_FAILED, TOOL_ERROR, tool_of, tools_called
from memory_service.store import StoredPath

MAX_SOURCES = 64   # source path ids kept per meta-cognition
MAX_SHAPE_CHARS = 800   # a longer answer gives no shape (advice goes into a prompt)
BLANK = "?"
# a quoted string ('it''s' included), or a number that is not part of a name (m2) or a LIMIT
_STRING = re.compile(r"'(?:[^']|'')*'")
_NUMBER = re.compile(r"(?<![\w.])(?<!LIMIT )-?\d+(?:\.\d+)?(?![\w.])", re.IGNORECASE)


@dataclass(frozen=True)
class Rules:
    """When a rule fires."""

    success_threshold: float = 0.5
    min_support: int = 2
    min_gap: float = 0.25


@dataclass(frozen=True)
class Group:
    """Paths of one side of a comparison."""

    paths: tuple[StoredPath, ...]
    wins: int

    @property
    def n(self) -> int:
        return len(self.paths)

    @property
    def rate(self) -> float:
        return self.wins / self.n if self.n else 0.0

    @property
    def fails(self) -> int:
        return self.n - self.wins


@dataclass(frozen=True)
class Candidate:
    """A meta-cognition Distill proposes: its key, its text, the evidence and its strength (the
    rate difference weighted by the smaller group's size, for ranking)."""

    rule_key: str
    text: str
    source_path_ids: tuple[str, ...]
    strength: float
    evidence: str
    task_texts: tuple[str, ...] = ()   # the distinct task texts of the paths it favours (for its embedding)


def _compare(key: str, paths: Sequence[StoredPath], good: Callable[[StoredPath], bool | None], rules: Rules,
             text: Callable[[Group, Group], str]) -> Candidate | None:
    """Split ``paths`` by ``good`` (None: in neither group); a candidate when the good group's
    success rate beats the other's by ``min_gap`` with ``min_support`` paths on each side."""
    split: dict[bool, list[StoredPath]] = {True: [], False: []}
    for p in paths:
        side = good(p)
        if side is not None:
            split[side].append(p)
    groups = {side: Group(tuple(ps), sum(p.reward >= rules.success_threshold for p in ps))
              for side, ps in split.items()}
    yes, no = groups[True], groups[False]
    if yes.n < rules.min_support or no.n < rules.min_support or yes.rate - no.rate < rules.min_gap:
        return None
    sources = tuple(p.id for p in (*yes.paths, *no.paths))[:MAX_SOURCES]
    evidence = f"{yes.wins}/{yes.n} succeeded with the behaviour, {no.wins}/{no.n} without it"
    tasks = tuple(dict.fromkeys(p.task_text for p in (*yes.paths, *no.paths) if p.task_text))[:MAX_SOURCES]
    return Candidate(key, text(yes, no), sources, (yes.rate - no.rate) * math.sqrt(min(yes.n, no.n)), evidence,
                     tasks)


def answer_shape(answer: str) -> str:
    """The answer with its literal values blanked and its whitespace collapsed: quoted strings become
    ``'?'``, numbers ``?`` (a ``LIMIT`` count stays: it is part of the shape); "" for an empty answer
    or one over ``MAX_SHAPE_CHARS``."""
    text = " ".join(answer.split())
    if not text or len(text) > MAX_SHAPE_CHARS:
        return ""
    return _NUMBER.sub(BLANK, _STRING.sub(f"'{BLANK}'", text))


def _condensed(tools: Sequence[str]) -> tuple[str, ...]:
    """Consecutive repeats collapsed: a, a, b → a, b."""
    return tuple(t for i, t in enumerate(tools) if i == 0 or tools[i - 1] != t)


def _retried_after_error(states: Sequence[str]) -> dict[str, bool]:
    """For each tool that returned an error: whether any tool was called after its last error."""
    out: dict[str, bool] = {}
    for i in range(1, len(states)):
        if states[i] == TOOL_ERROR:
            tool = tool_of(states[i - 1])
            if tool is not None:
                out[tool] = any(tool_of(s) is not None for s in states[i + 1:])
    return out


def candidates(task_type: str, paths: Sequence[StoredPath], rules: Rules) -> list[Candidate]:
    """Every rule that fires on ``task_type``'s paths, strongest first."""
    paths = [p for p in paths if p.states and p.states[-1] != INFRA_FAILED]
    what = f"{task_type} tasks" if task_type else "these tasks"
    tools = {p.id: tools_called(p.states) for p in paths}
    # tools of at least min_support paths: a rule about a rarer one cannot fire, and tool names come
    # from the policy's output, so a path set may hold many one-off names
    called = Counter(t for ts in tools.values() for t in set(ts))
    names = sorted(t for t, n in called.items() if n >= rules.min_support)
    found: list[Candidate | None] = []

    def first(t: str) -> Candidate | None:
        return _compare(f"first:{t}", paths, lambda p: bool(tools[p.id]) and tools[p.id][0] == t, rules,
                        lambda y, n: f"For {what}, begin by calling {t}: {y.wins}/{y.n} paths that began with it "
                                     f"succeeded, against {n.wins}/{n.n} of the others.")

    def avoid(t: str) -> Candidate | None:
        return _compare(f"avoid:{t}", paths, lambda p: t not in tools[p.id], rules,
                        lambda y, n: f"For {what}, avoid calling {t}: {n.fails}/{n.n} paths that called it failed, "
                                     f"against {y.fails}/{y.n} that did not.")

    def before(a: str, b: str) -> Candidate | None:
        def called_a_first(p: StoredPath) -> bool | None:
            ts = tools[p.id]
            return None if b not in ts else a in ts[:ts.index(b)]

        return _compare(f"before:{a}:{b}", paths, called_a_first, rules,
                        lambda y, n: f"For {what}, call {a} before {b}: paths that called {b} without it failed "
                                     f"{n.fails}/{n.n} times, against {y.fails}/{y.n} with it.")

    def retry(t: str) -> Candidate | None:
        return _compare(f"retry:{t}", paths, lambda p: _retried_after_error(p.states).get(t), rules,
                        lambda y, n: f"When {t} returns an error, read the message and call a tool again with "
                                     f"corrected arguments instead of answering: {y.wins}/{y.n} paths that did "
                                     f"succeeded, against {n.wins}/{n.n} that stopped.")

    for t in names:
        found += [first(t), avoid(t), retry(t), *(before(t, b) for b in names if b != t)]
    found.append(_compare("answer", paths, lambda p: p.states[-1] == ANSWER, rules,
                          lambda y, n: f"For {what}, always finish with a final answer in the required format "
                                       f"within the turn budget: {n.fails}/{n.n} paths that did not failed."))
    wins = Counter(_condensed(tools[p.id]) for p in paths if p.reward >= rules.success_threshold and tools[p.id])
    if wins:
        best = min(wins, key=lambda seq: (-wins[seq], seq))
        found.append(_compare(
            "sequence:" + ">".join(best), paths, lambda p: _condensed(tools[p.id]) == best, rules,
            lambda y, n: f"A sequence that works for {what}: {' → '.join(best)} → answer ({y.wins}/{y.n} such "
                         f"paths succeeded, against {n.wins}/{n.n} of the others)."))
    shapes = {p.id: answer_shape(p.final_answer) for p in paths}
    won = Counter(shapes[p.id] for p in paths if p.reward >= rules.success_threshold and shapes[p.id])
    if won:
        shape = min(won, key=lambda s: (-won[s], s))
        found.append(_compare(
            "shape:" + hashlib.sha1(shape.encode()).hexdigest()[:16], paths, lambda p: shapes[p.id] == shape, rules,
            lambda y, n: f"For {what}, an answer of this shape succeeded ({y.wins}/{y.n} paths, against "
                         f"{n.wins}/{n.n} of the others); put in the task's own values for {BLANK}: {shape}"))
    return sorted((c for c in found if c is not None), key=lambda c: (-c.strength, c.rule_key))
