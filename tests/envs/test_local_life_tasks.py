"""The local-life multi-hop tasks over a real generated corpus: each gold set is exactly what an
independent SQL query (plus a haversine) finds, anchors are unique, the gold paths reach the answers
through a real tool server, the split does not fully overlap, and ``check_poi`` agrees with SQL."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from envs.local_life import HELDOUT_ONLY, TEMPLATES, TaskSplit, check_poi, generate_split
from envs.local_life.__main__ import main
from envs.local_services.poi_corpus import build_corpus, read_jsonl
from rlyard.client import ToolClient
from rlyard.geo import distance_m

N = 5_000
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DETAIL = {"tag", "facility", "product"}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("poi")
    build_corpus(folder, seed=0, merchants=N)
    return folder


@pytest.fixture(scope="module")
def split(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TaskSplit:
    # Replaying the gold searches through the BM25 index is part of what is under test.
    return generate_split(corpus_dir / "poi.sqlite", seed=0, n_train=48, n_heldout=32,
                          index_dir=tmp_path_factory.mktemp("index"))


@pytest.fixture(scope="module")
def tasks(split: TaskSplit) -> list[dict[str, Any]]:
    return split.train + split.heldout


@pytest.fixture(scope="module")
def records(corpus_dir: Path) -> dict[str, dict[str, Any]]:
    """Every POI as the corpus's JSONL has it (not through the store the generator reads)."""
    return {r["poi_id"]: r for r in read_jsonl(corpus_dir / "pois.jsonl")}


def sql_matches(conn: sqlite3.Connection, checklist: list[dict[str, Any]], city: str) -> set[str]:
    """The POIs of ``city`` meeting every checklist item, by SQL and an independent haversine."""
    where, params, radius = ["city = ?"], list[Any]([city]), None
    for item in checklist:
        kind = item["kind"]
        if kind in ("type", "location"):
            for key in ("subcategory", "category", "city", "district", "business_area"):
                if key in item:
                    where.append(f"{key} = ?")
                    params.append(item[key])
            if "radius_m" in item:
                radius = (item["anchor"], item["radius_m"])
                where.append("poi_id != ?")
                params.append(item["anchor"])
        elif kind == "price":
            for key, clause in (("max", "avg_price <= ?"), ("min", "avg_price >= ?"),
                                ("below_anchor", "avg_price < (SELECT avg_price FROM poi WHERE poi_id = ?)")):
                if key in item:
                    where.append(clause)
                    params.append(item[key])
        elif kind == "rating":
            for key, clause in (("min", "rating >= ?"),
                                ("above_anchor", "rating > (SELECT rating FROM poi WHERE poi_id = ?)")):
                if key in item:
                    where.append(clause)
                    params.append(item[key])
        elif kind == "open_at":
            where.append("open_time <= ? AND close_time > ?")
            params += [item["time"], item["time"]]
            if item.get("weekday"):
                where.append("(closed_weekday IS NULL OR closed_weekday != ?)")
                params.append(DAYS.index(item["weekday"]))
        elif kind in ("tag", "facility"):
            column = "tags" if kind == "tag" else "facilities"
            where.append(f"EXISTS (SELECT 1 FROM json_each(poi.{column}) WHERE value = ?)")
            params.append(item[kind])
        elif kind == "product":
            where.append("EXISTS (SELECT 1 FROM poi_product AS pp WHERE pp.poi_id = poi.poi_id AND pp.name = ? "
                         "AND pp.price <= ?)")
            params += [item["name"], item["max_price"]]
        else:
            assert kind == "count", kind
    rows = conn.execute(f"SELECT poi_id, lat, lng FROM poi WHERE {' AND '.join(where)}", params).fetchall()
    if radius is None:
        return {r[0] for r in rows}
    (lat, lng), = conn.execute("SELECT lat, lng FROM poi WHERE poi_id = ?", (radius[0],)).fetchall()
    return {r[0] for r in rows if distance_m(lat, lng, r[1], r[2]) <= radius[1]}


def anchor_of(task: dict[str, Any], records: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    return None if task["anchor"] is None else records[task["anchor"]["poi_id"]]


def test_same_seed_same_tasks_other_seed_differs(corpus_dir: Path) -> None:
    db = corpus_dir / "poi.sqlite"
    first, again, other = (generate_split(db, seed, 8, 8) for seed in (0, 0, 1))
    assert (first.train, first.heldout) == (again.train, again.heldout)
    assert {k: v for k, v in first.info.items() if not k.startswith("seconds")} == {
        k: v for k, v in again.info.items() if not k.startswith("seconds")}
    assert [t["question"] for t in first.train] != [t["question"] for t in other.train]
    assert [t["gold_answers"] for t in first.heldout] != [t["gold_answers"] for t in other.heldout]


def test_gold_is_exactly_what_sql_finds_in_the_city(corpus_dir: Path, tasks: list[dict[str, Any]]) -> None:
    conn = sqlite3.connect(corpus_dir / "poi.sqlite")
    try:
        for task in tasks:
            gold = set(task["gold_answers"])
            assert 1 <= len(gold) <= 10, task["task_id"]
            assert sql_matches(conn, task["checklist"], task["city"]) == gold, task["task_id"]
    finally:
        conn.close()


def test_every_anchor_is_the_unique_best_rated_by_sql(corpus_dir: Path, tasks: list[dict[str, Any]]) -> None:
    conn = sqlite3.connect(corpus_dir / "poi.sqlite")
    anchored = [t for t in tasks if t["anchor"] is not None]
    assert len(anchored) >= len(tasks) // 3
    try:
        for task in anchored:
            anchor = task["anchor"]
            pool = sql_matches(conn, anchor["conditions"], task["city"])
            marks = ",".join("?" * len(pool))
            ranked = conn.execute(f"SELECT poi_id, rating FROM poi WHERE poi_id IN ({marks}) ORDER BY rating DESC",
                                  sorted(pool)).fetchall()
            assert ranked[0] == (anchor["poi_id"], anchor["rating"]), task["task_id"]
            assert len(ranked) == 1 or ranked[1][1] < ranked[0][1], f"{task['task_id']}: the best rating is shared"
    finally:
        conn.close()


def test_task_shape_difficulty_and_hops(tasks: list[dict[str, Any]]) -> None:
    assert len({t["task_id"] for t in tasks}) == len(tasks)
    for task in tasks:
        kinds = [item["kind"] for item in task["checklist"]]
        assert kinds[:3] == ["count", "type", "location"], task["task_id"]
        assert task["checklist"][0]["max"] == task["request_count"]
        assert "poi_id" in task["question"] and task["city"] in task["question"]
        assert (f"up to {task['request_count']}" in task["question"]) != (task["request_count"] == 1)
        constraints = len(kinds) - 3
        assert task["hops"] == constraints + (2 if task["anchor"] else 1), task["task_id"]
        if task["difficulty"] == "easy":
            assert task["hops"] == 3 and not DETAIL & set(kinds), task["task_id"]
        else:
            assert task["hops"] in (4, 5) and DETAIL & set(kinds), task["task_id"]
        geographic = "radius_m" in task["checklist"][2]
        assert geographic == any(c["tool"] == "nearby" for c in task["gold_path"])
    assert {t["difficulty"] for t in tasks} == {"easy", "hard"}
    geo = sum("radius_m" in t["checklist"][2] for t in tasks)
    assert 0 < geo < len(tasks), "some tasks hop through nearby, some do not"


async def test_gold_paths_reach_the_answers_through_a_real_tool_server(
        start_tools: Any, make_client: Any, corpus_dir: Path, tmp_path: Path, tasks: list[dict[str, Any]],
        records: dict[str, dict[str, Any]]) -> None:
    server = await start_tools(tools=("search", "nearby", "poi_detail"),
                               poi={"dir": corpus_dir, "index_dir": tmp_path / "index"})
    client: ToolClient = make_client(server)
    for task in tasks:
        listed: set[str] = set()           # ids shown by search or nearby
        detailed: dict[str, dict[str, Any]] = {}
        for step, call in enumerate(task["gold_path"]):
            result = await client.call_tool(call["tool"], call["arguments"])
            assert not result.is_error, (task["task_id"], call, result.content[0].text)
            payload = result.structured
            if call["tool"] == "poi_detail":
                detailed[payload["poi_id"]] = payload
                continue
            shown = [r["poi_id"] for r in payload["results"]]
            if step == 0 and task["anchor"] is not None:
                assert call["tool"] == "search" and task["anchor"]["poi_id"] in shown, task["task_id"]
            if call["tool"] == "nearby":
                assert call["arguments"]["poi_id"] == task["anchor"]["poi_id"]
            listed.update(shown)
        gold = set(task["gold_answers"])
        assert gold <= listed, (task["task_id"], gold - listed)
        if DETAIL & {item["kind"] for item in task["checklist"]}:
            assert gold <= set(detailed), task["task_id"]
            for poi_id in gold:
                assert check_poi(detailed[poi_id], task["checklist"], anchor_of(task, records)) == []


def test_split_does_not_fully_overlap(split: TaskSplit) -> None:
    info = split.info
    assert set(HELDOUT_ONLY) == set(info["heldout_only_templates"]) and HELDOUT_ONLY
    assert {t["template"] for t in split.train}.isdisjoint(HELDOUT_ONLY)
    assert set(HELDOUT_ONLY) <= {t["template"] for t in split.heldout}
    shared = {t.name for t in TEMPLATES if not t.heldout_only}
    assert shared <= {t["template"] for t in split.train} and shared <= {t["template"] for t in split.heldout}
    held = set(info["heldout_cities"])
    assert held and held.isdisjoint(t["city"] for t in split.train)
    assert held.isdisjoint(info["train_cities"])
    heldout_cities = {t["city"] for t in split.heldout}
    assert heldout_cities & held and heldout_cities - held, "held-out tasks use held-out and train cities"
    assert {t["question"] for t in split.train}.isdisjoint(t["question"] for t in split.heldout)
    assert info["shared_questions"] == 0
    assert info["train"]["tasks"] == 48 and info["heldout"]["tasks"] == 32


def test_check_poi_agrees_with_sql_on_every_poi_of_the_city(tasks: list[dict[str, Any]],
                                                           records: dict[str, dict[str, Any]]) -> None:
    for task in tasks:
        anchor = anchor_of(task, records)
        for poi_id, record in records.items():
            if record["city"] == task["city"]:
                ok = check_poi(record, task["checklist"], anchor) == []
                assert ok == (poi_id in task["gold_answers"]), (task["task_id"], poi_id)


def _record(**overrides: Any) -> dict[str, Any]:
    record = {"poi_id": "SH000001", "city": "Shanghai", "district": "Jing'an", "business_area": "Jing'an Station",
              "category": "Food & Drink", "subcategory": "Sichuan Cuisine", "rating": 4.5, "avg_price": 120.0,
              "open_time": "10:00", "close_time": "22:00", "closed_weekday": 0, "tags": ["spicy"],
              "facilities": ["parking"], "products": [{"name": "Mapo Tofu", "price": 28.0}],
              "lat": 31.0, "lng": 121.0}
    record.update(overrides)
    return record


def test_check_poi_by_hand() -> None:
    # 0.009 degrees of latitude is 2 pi 6,371,000 m * 0.009 / 360 = 1,000.8 m.
    anchor = _record(poi_id="SH000002", subcategory="Coffee", rating=4.4, avg_price=121.0, lat=31.009)
    checklist: list[dict[str, Any]] = [{"kind": "count", "max": 3}, {"kind": "type", "subcategory": "Sichuan Cuisine"},
                 {"kind": "location", "city": "Shanghai", "anchor": "SH000002", "radius_m": 1001},
                 {"kind": "price", "max": 150}, {"kind": "rating", "min": 4.5},
                 {"kind": "open_at", "time": "21:30", "weekday": "Saturday"}, {"kind": "tag", "tag": "spicy"},
                 {"kind": "facility", "facility": "parking"}, {"kind": "product", "name": "Mapo Tofu", "max_price": 28},
                 {"kind": "rating", "above_anchor": "SH000002"}, {"kind": "price", "below_anchor": "SH000002"}]
    assert check_poi(_record(), checklist, anchor) == []
    bad = _record(subcategory="Hotpot", rating=4.4, avg_price=160.0, close_time="21:30", tags=[], facilities=[],
                  products=[{"name": "Mapo Tofu", "price": 28.5}], lat=31.0 - 0.00001)
    assert check_poi(bad, checklist, anchor) == [
        "type: subcategory is Hotpot, not Sichuan Cuisine",
        "location: 1002 m from SH000002, more than 1001 m",
        "price: ¥160 per person, over ¥150",
        "rating: rated 4.4, under 4.5",
        "open_at: open 10:00-21:30, not at 21:30",
        "tag: not tagged 'spicy'",
        "facility: no parking",
        "product: Mapo Tofu costs ¥28.5, over ¥28",
        "rating: rated 4.4, not above the anchor's 4.4",
        "price: ¥160 per person, not cheaper than the anchor's ¥121",
    ]
    assert check_poi(_record(closed_weekday=5), checklist, anchor) == ["open_at: closed on Saturday"]
    assert check_poi(_record(products=[]), checklist[8:9]) == ["product: does not sell Mapo Tofu"]
    assert check_poi(anchor, checklist[2:3], anchor) == ["location: is the anchor itself"]
    assert check_poi(_record(district="Xuhui"), [{"kind": "location", "district": "Jing'an"}]) == [
        "location: district is Xuhui, not Jing'an"]
    with pytest.raises(ValueError, match="anchor_record"):
        check_poi(_record(), checklist[2:3])
    with pytest.raises(ValueError, match="unknown checklist kind 'colour'"):
        check_poi(_record(), [{"kind": "colour"}])


def test_cli_writes_the_split(corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tasks"
    main(["--corpus", str(corpus_dir), "--out", str(out), "--seed", "3", "--n-train", "6", "--n-heldout", "8",
          "--no-replay"])
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    info = json.loads((out / "split_info.json").read_text())
    assert (len(train), len(heldout)) == (6, 8)
    assert {t["template"] for t in heldout} == {t.name for t in TEMPLATES}
    assert info["seed"] == 3 and info["heldout_only_templates"] == list(HELDOUT_ONLY)
    assert "held-out-only cities" in capsys.readouterr().out
