"""Renamed worlds (experiments.renamed) on a real generated database and real questions."""

from __future__ import annotations

import json
import random
import re
import sqlite3
from pathlib import Path

import pytest

from envs.local_services.database import STREETS, build_database, database_path, place_names
from envs.local_services.questions import HeldoutSizes, generate_split
from experiments.renamed import build_worlds, invent_names, rename, rewrite_task
from experiments.sql_learning import prepare, task_line

REAL = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(n) for n in place_names()) + r")(?!\w)")


@pytest.fixture(scope="module")
def world_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = database_path(tmp_path_factory.mktemp("renamed") / "db")
    build_database(path, seed=5)
    return path


def _rows(path: Path, query: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def test_invented_names_are_distinct_new_and_deterministic() -> None:
    taken = {n.lower() for n in (*place_names(), *STREETS)}
    before = set(taken)
    names = invent_names(200, random.Random(1), taken)
    assert len(set(names)) == 200
    assert not {n.lower() for n in names} & before
    assert {n.lower() for n in names} <= taken                          # added to what later draws avoid
    assert all(n.isalpha() and n[0].isupper() and 4 <= len(n) <= 10 for n in names)
    assert invent_names(200, random.Random(1), set(before)) == names
    assert len(invent_names(12, random.Random(1), set(), syllables=("an", "ba"))) == 12   # 4 + 8 possible
    with pytest.raises(RuntimeError, match="could not invent 13"):
        invent_names(13, random.Random(1), set(), syllables=("an", "ba"))


def test_rename_is_whole_word_longest_first_and_reads_sql_escaped_quotes() -> None:
    names = {"Xi'an": "Taolin", "Yuhua": "Meifan", "Yuhuatai": "Qiaosu", "Jiang'an": "Lanxi"}
    assert rename("Which 'Gym' merchants in 'Xi''an' ... ci.name = 'Xi''an'", names) == \
        "Which 'Gym' merchants in 'Taolin' ... ci.name = 'Taolin'"
    assert rename("Xi'an, Yuhuatai and Yuhua; Yuhuas and AYuhua stay", names) == \
        "Taolin, Qiaosu and Meifan; Yuhuas and AYuhua stay"
    assert rename("m.name = 'Boba Garden (Jiang''an, Renmin Rd.)'", names) == \
        "m.name = 'Boba Garden (Lanxi, Renmin Rd.)'"
    assert rename("nothing to do", {}) == "nothing to do"


def test_worlds_rename_every_place_and_keep_every_other_row(world_db: Path, tmp_path: Path) -> None:
    worlds = build_worlds(world_db, tmp_path, 3, seed=7)
    assert [w.db_id for w in worlds] == ["local_services_r00", "local_services_r01", "local_services_r02"]
    new = [n for w in worlds for n in w.names.values()]
    assert len(new) == len(set(new)) == 3 * len(worlds[0].names)          # no invented name repeats
    original = {t: _rows(world_db, f"SELECT * FROM {t} ORDER BY 1") for t in ("city", "district", "merchant")}
    for world in worlds:
        path = tmp_path / world.db_id / f"{world.db_id}.sqlite"
        for table, rows in original.items():
            renamed = _rows(path, f"SELECT * FROM {table} ORDER BY 1")
            assert renamed == [tuple(world.rewrite(v) if isinstance(v, str) else v for v in row) for row in rows]
            assert not any(REAL.search(v) for row in renamed for v in row if isinstance(v, str)), table
        for table in ("category", "product", "review", "opening_hours"):
            assert _rows(path, f"SELECT * FROM {table} ORDER BY 1, 2") == \
                _rows(world_db, f"SELECT * FROM {table} ORDER BY 1, 2")
    again = build_worlds(world_db, tmp_path / "again", 3, seed=7)
    assert [w.names for w in again] == [w.names for w in worlds]         # deterministic from the seed
    with pytest.raises(ValueError, match="count"):
        build_worlds(world_db, tmp_path, 0, seed=7)


def test_rewritten_questions_name_only_invented_places_and_their_gold_rows_match(world_db: Path,
                                                                               tmp_path: Path) -> None:
    worlds = build_worlds(world_db, tmp_path, 2, seed=7)
    tasks = generate_split(world_db, seed=5, n_train=80, heldout=HeldoutSizes(4, 3, 3)).train
    for i, task in enumerate(tasks):
        line = task_line(task, 3)
        world = worlds[i % 2]
        moved = rewrite_task(line, world)
        question, gold = moved["messages"][-1]["content"], moved["ground_truth"]["query"]
        assert moved["context"]["db_id"] == moved["ground_truth"]["db_id"] == world.db_id
        assert moved["task_id"] == f"{line['task_id']}_r{i % 2:02d}"
        assert moved["messages"][0] == line["messages"][0] and line["messages"][-1]["content"] == \
            task_line(task, 3)["messages"][-1]["content"]                  # the original line is left as it was
        assert not REAL.search(question) and not REAL.search(gold), (question, gold)
        for literal in re.findall(r"'(?:[^']|'')*'", gold):                # every quoted value is still copyable
            if literal.strip("'") in world.names.values():
                assert literal in question, (literal, question)
        path = tmp_path / world.db_id / f"{world.db_id}.sqlite"
        expected = [tuple(world.rewrite(v) if isinstance(v, str) else v for v in row)
                    for row in _rows(world_db, line["ground_truth"]["query"])]
        assert _rows(path, gold) == expected and expected


def test_prepare_moves_rl_questions_into_renamed_worlds(tmp_path: Path) -> None:
    prep = prepare(tmp_path / "w", seed=3, n_train=40, n_heldout_a=4, n_heldout_b=3, n_heldout_c=3, n_demos=8,
                   copy_steps=0, renamed_worlds=3)
    lines = [json.loads(x) for x in prep.train_tasks.read_text().splitlines()]
    assert len(lines) == 32 and prep.split_info["rl_worlds"] == [f"local_services_r{k:02d}" for k in range(3)]
    assert [x["context"]["db_id"] for x in lines[:4]] == [*prep.split_info["rl_worlds"], "local_services_r00"]
    for x in lines:
        db = x["ground_truth"]["db_id"]
        assert _rows(prep.db_dir / db / f"{db}.sqlite", x["ground_truth"]["query"])
        assert not REAL.search(x["messages"][-1]["content"])
    heldout = [json.loads(x) for x in prep.heldout_tasks.read_text().splitlines()]
    assert {x["ground_truth"]["db_id"] for x in heldout} == {"local_services"}   # evaluation stays in the real world
    demos = prep.demos.read_text()
    assert "local_services_r" not in demos
    with pytest.raises(ValueError, match="renamed_worlds"):
        prepare(tmp_path / "bad", renamed_worlds=-1)
