"""The local-life environment's wiring: task lines, demonstrations through the real tools, and the
metrics scoring every demonstration's answer as fully right."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from envs.local_life.checklist import describe
from envs.local_life.env import MAX_ROUNDS, TOOLS, Prepared, prepare, system_prompt, task_line
from reward_service.local_life.metrics import ids_in, score_answer
from tool_servers.poi.store import PoiStore
from trainer.tasks import load_tasks


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return prepare(tmp_path_factory.mktemp("ll"), merchants=3_000, n_train=40, n_heldout=12, n_demos=12)


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_task_lines_load_and_carry_the_ground_truth(prepared: Prepared) -> None:
    tools = [{"type": "function", "function": {"name": n, "description": n, "parameters": {}}}
             for n in (*TOOLS, "sql_query")]
    tasks = load_tasks(prepared.train_tasks, tools)
    assert len(tasks) == prepared.n_train == 40 - prepared.n_demos
    for task in tasks:
        assert task.tools == [], "compact prompt: the system message describes the tools"
        assert task.messages[0]["content"] == system_prompt(MAX_ROUNDS)
        gt = task.ground_truth
        assert gt["gold_answers"] and gt["checklist"][0]["kind"] == "count"
        assert all(p in gt["answer"] for p in gt["gold_answers"])       # the judge's reference names them
    demo_ids = {d["task_id"] for d in read(prepared.demos)}
    assert not demo_ids & {t.task_id for t in tasks}, "demonstrated tasks are not RL tasks"
    assert {t["task_id"].split("-")[1] for t in read(prepared.heldout_tasks)} == {"heldout"}


def test_demonstrations_show_the_prompt_the_rollouts_see(prepared: Prepared) -> None:
    line = read(prepared.train_tasks)[0]
    demo = read(prepared.demos)[0]
    assert "tools" not in demo and line["tools"] == []          # neither renders the JSON schemas
    assert demo["messages"][0] == line["messages"][0] == {"role": "system", "content": system_prompt(MAX_ROUNDS)}
    assert demo["messages"][1] == {"role": "user", "content": demo["ground_truth"]["question"]}
    raw = {"task_id": "t", "question": "q?", "checklist": [{"kind": "count", "max": 1}], "gold_answers": ["SH000001"],
           "anchor": None, "request_count": 1, "template": "x", "difficulty": "easy", "hops": 3}
    assert task_line(raw, schemas=True)["tools"] == list(TOOLS) and task_line(raw)["tools"] == []


def test_demonstrations_are_right_by_the_metrics(prepared: Prepared) -> None:
    demos = read(prepared.demos)
    assert len(demos) == prepared.n_demos >= 8
    store = PoiStore(prepared.poi_dir / "poi.sqlite")
    try:
        for demo in demos:
            msgs = demo["messages"]
            calls = [m for m in msgs if m["role"] == "assistant" and m.get("tool_calls")]
            assert all(len(m["tool_calls"]) == 1 for m in calls), "one call per round"
            assert len(calls) + 1 <= MAX_ROUNDS
            answer = msgs[-1]["content"]
            assert answer.startswith("<answer>") and answer.endswith("</answer>")
            answer = answer[len("<answer>"):-len("</answer>")]
            retrieved = ids_in(m["content"] for m in msgs if m["role"] == "tool")
            records = {r["poi_id"]: r for r in store.get(sorted(ids_in([answer])))}
            gt = demo["ground_truth"]
            anchor = store.get([gt["anchor"]["poi_id"]])[0] if gt["anchor"] else None
            s = score_answer(answer, retrieved, records, gt["checklist"], n_gold=len(gt["gold_answers"]),
                             anchor_record=anchor)
            assert (s.correctness, s.completeness, s.faithfulness) == (1, 10.0, 10.0), s.explain()
    finally:
        store.close()


def test_describe_every_kind() -> None:
    items = [{"kind": "count", "max": 3}, {"kind": "type", "subcategory": "Hotpot"},
             {"kind": "location", "city": "Wuhan", "anchor": "WH000001", "radius_m": 500},
             {"kind": "price", "min": 50, "max": 100}, {"kind": "price", "below_anchor": "WH000001"},
             {"kind": "rating", "min": 4.5}, {"kind": "rating", "above_anchor": "WH000001"},
             {"kind": "open_at", "time": "08:00", "weekday": "Monday"}, {"kind": "tag", "tag": "late night"},
             {"kind": "facility", "facility": "wifi"}, {"kind": "product", "name": "Latte", "max_price": 30}]
    texts = [describe(i) for i in items]
    assert texts[3] == "price: at least ¥50 and at most ¥100 per person"
    assert texts[2] == "location: city Wuhan, within 500 m of WH000001 (not it)"
    with pytest.raises(ValueError, match="unknown checklist kind"):
        describe({"kind": "mood"})
