"""The local-services database and its task generator, on real SQLite files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from envs.local_services import build_database, content_hash, database_path, generate_split, generate_tasks
from envs.local_services.database import TABLES, place_pattern
from envs.local_services.questions import (
    DIFFICULTIES,
    HELDOUT_ONLY,
    SLICES,
    TEMPLATES,
    HeldoutSizes,
    sql_literals,
    template_values,
)
from tool_servers.sql.db import SqliteDatabases, SqlLimits

REPO_ROOT = Path(__file__).resolve().parents[2]
SIZES = HeldoutSizes(a=40, b=24, c=16)


@pytest.fixture(scope="module")
def db_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local")
    build_database(database_path(out), seed=0)
    return out


@pytest.fixture(scope="module")
def db_path(db_dir: Path) -> Path:
    return database_path(db_dir)


@pytest.fixture(scope="module")
def split(db_path: Path) -> Any:
    return generate_split(db_path, seed=0, n_train=300, heldout=SIZES)


def _rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in TABLES}


def test_same_seed_same_rows_other_seed_other_rows(tmp_path: Path, db_path: Path) -> None:
    again = build_database(tmp_path / "a" / "x.sqlite", seed=0)
    other = build_database(tmp_path / "b" / "x.sqlite", seed=1)
    assert _rows(again.path) == _rows(db_path)
    assert again.content_hash == content_hash(db_path)
    assert other.content_hash != again.content_hash
    assert _rows(other.path)["merchant"] != _rows(db_path)["merchant"]


def test_small_scale_sizes_and_value_ranges(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        count = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
        assert count["city"] == 6 and count["district"] == 30 and count["merchant"] == 400
        assert 1500 <= count["product"] <= 2500 and 2500 <= count["review"] <= 3500
        assert conn.execute("SELECT COUNT(*) FROM merchant WHERE rating < 1 OR rating > 5 "
                            "OR rating * 10 != ROUND(rating * 10)").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM review WHERE rating NOT BETWEEN 1 AND 5 "
                            "OR created_at NOT GLOB '20[0-9][0-9]-[01][0-9]-[0-3][0-9]'").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM opening_hours WHERE weekday NOT BETWEEN 0 AND 6 "
                            "OR open_time NOT GLOB '[0-2][0-9]:[0-5][0-9]' OR close_time <= open_time"
                            ).fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM product WHERE is_available NOT IN (0, 1) OR price <= 0"
                            ).fetchone() == (0,)
        # every top-level category has children; the merchant categories are all children
        assert conn.execute("SELECT COUNT(*) FROM merchant AS m JOIN category AS c "
                            "ON m.category_id = c.category_id WHERE c.parent_id IS NULL").fetchone() == (0,)
        names = {r[0] for r in conn.execute("SELECT name FROM category")}
        assert {"Hotpot", "Noodles", "Coffee", "Bakery", "Hair Salon", "Gym", "Cinema", "Pharmacy"} <= names
        # some merchants close one day a week, so "closed on ..." questions have answers
        assert conn.execute("SELECT COUNT(*) FROM (SELECT merchant_id FROM opening_hours GROUP BY merchant_id "
                            "HAVING COUNT(*) < 7)").fetchone()[0] > 0


def test_schema_has_primary_and_foreign_keys(db_path: Path) -> None:
    expected_fks = {
        "district": {("city_id", "city", "city_id")},
        "category": {("parent_id", "category", "category_id")},
        "merchant": {("district_id", "district", "district_id"), ("category_id", "category", "category_id")},
        "opening_hours": {("merchant_id", "merchant", "merchant_id")},
        "product": {("merchant_id", "merchant", "merchant_id")},
        "review": {("merchant_id", "merchant", "merchant_id")},
    }
    with sqlite3.connect(db_path) as conn:
        assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == set(TABLES)
        for table in TABLES:
            pk = [r[1] for r in sorted(conn.execute(f"PRAGMA table_info({table})"), key=lambda r: r[5]) if r[5]]
            assert pk == (["merchant_id", "weekday"] if table == "opening_hours" else [f"{table}_id"]), table
            fks = {(r[3], r[2], r[4]) for r in conn.execute(f"PRAGMA foreign_key_list({table})")}
            assert fks == expected_fks.get(table, set()), table
        conn.execute("PRAGMA foreign_keys = ON")
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_tool_server_reads_it_by_db_id(db_dir: Path) -> None:
    dbs = SqliteDatabases(db_dir)
    try:
        assert "local_services" in dbs.db_ids()
        result = dbs.query("local_services", "SELECT count(*) FROM merchant", SqlLimits())
        assert result.error is None and result.rows == [(400,)]
        refused = dbs.query("local_services", "DELETE FROM merchant", SqlLimits())
        assert refused.error is not None and "read-only" in refused.error
    finally:
        dbs.dispose()


def test_every_gold_query_returns_rows(db_path: Path, split: Any) -> None:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        for task in split.train + split.heldout:
            rows = conn.execute(task["query"]).fetchall()
            assert rows and rows[0][0] is not None, task


def test_counts_and_fields(split: Any, db_path: Path) -> None:
    assert len(split.train) == 300 and len(split.heldout) == 80
    keys = {"task_id", "db_id", "question", "query", "template", "difficulty", "slots"}
    for task in split.train:
        assert set(task) == keys and task["db_id"] == "local_services"
    for task in split.heldout:
        assert set(task) == keys | {"slice"} and task["db_id"] == "local_services"
        assert task["task_id"].startswith(f"local_services_heldout_{task['slice']}_")
    ids = [t["task_id"] for t in split.train + split.heldout]
    assert len(set(ids)) == len(ids)
    train, heldout = generate_tasks(db_path, seed=1, n_train=7, heldout=HeldoutSizes(2, 1, 1))
    assert (len(train), len(heldout)) == (7, 4)


def test_generation_is_deterministic(db_path: Path, split: Any) -> None:
    again = generate_split(db_path, seed=0, n_train=300, heldout=SIZES)
    assert again.train == split.train and again.heldout == split.heldout     # slice labels included
    assert again.info == split.info
    other = generate_split(db_path, seed=1, n_train=300, heldout=SIZES)
    assert [t["question"] for t in other.train] != [t["question"] for t in split.train]


def test_slices_are_labelled_counted_and_recorded(split: Any) -> None:
    assert [t["slice"] for t in split.heldout] == ["a"] * 40 + ["b"] * 24 + ["c"] * 16
    assert split.info["slices"] == SIZES.counts() == {"a": 40, "b": 24, "c": 16}
    assert split.info["n_heldout"] == SIZES.total == 80 and split.info["n_train"] == 300
    assert list(split.info["slice_names"]) == list(SLICES)
    assert not {t["question"] for t in split.train} & {t["question"] for t in split.heldout}
    questions = [t["question"] for t in split.train + split.heldout]
    assert len(set(questions)) == len(questions)


def test_slice_a_is_new_template_value_tuples_of_train_templates_and_values(split: Any) -> None:
    a = [t for t in split.heldout if t["slice"] == "a"]
    train_templates = {t["template"] for t in split.train}
    train_tuples = {template_values(t) for t in split.train}
    train_literals = {v for t in split.train for v in sql_literals(t["query"])}
    heldout_place = place_pattern(split.info["heldout_places"]).search
    assert len({t["template"] for t in a}) >= 8                       # spread like train, not one template
    for task in a:
        assert task["template"] in train_templates and task["template"] not in HELDOUT_ONLY
        assert template_values(task) not in train_tuples, task
        assert sql_literals(task["query"]) and set(sql_literals(task["query"])) <= train_literals, task
        assert not heldout_place(task["question"]) and not heldout_place(task["query"])


def test_slice_b_names_places_that_no_train_question_shows(split: Any, db_path: Path) -> None:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        held_cities = split.info["heldout_cities"]
        districts = [r[0] for r in conn.execute(
            "SELECT d.name FROM district AS d JOIN city AS ci ON d.city_id = ci.city_id "
            f"WHERE ci.name IN ({','.join('?' * len(held_cities))})", held_cities)]
        assert held_cities and sorted([*held_cities, *districts]) == split.info["heldout_places"]
        assert not set(held_cities) & set(split.info["train_cities"])
        heldout_place = place_pattern(split.info["heldout_places"]).search
        b = [t for t in split.heldout if t["slice"] == "b"]
        train_templates = {t["template"] for t in split.train}
        for task in b:
            assert heldout_place(task["question"]), task
            assert task["template"] in train_templates
        # nowhere in training: not in a train question, its gold SQL, nor the rows a demonstration shows
        for task in split.train:
            rows = conn.execute(task["query"]).fetchall()
            assert not any(heldout_place(text) for text in (task["question"], task["query"], repr(rows))), task
    assert place_pattern(["Xi'an"]).search("WHERE ci.name = 'Xi''an'")      # the SQL form is caught as well


def test_slice_c_templates_are_never_in_train(split: Any) -> None:
    c = [t for t in split.heldout if t["slice"] == "c"]
    assert {t["template"] for t in c} == set(HELDOUT_ONLY)
    assert not {t["template"] for t in split.train} & set(HELDOUT_ONLY)
    assert {t["template"] for t in split.heldout if t["slice"] != "c"}.isdisjoint(HELDOUT_ONLY)
    heldout_place = place_pattern(split.info["heldout_places"]).search
    assert not any(heldout_place(t["question"]) for t in c)              # the template is the only new thing
    assert len(TEMPLATES) >= 25 and 0.1 <= len(HELDOUT_ONLY) / len(TEMPLATES) <= 0.3


def test_heldout_sizes_refuse_negative_counts_and_too_many_in_distribution(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slice b"):
        HeldoutSizes(b=-1)
    info = build_database(tmp_path / "tiny.sqlite", seed=0, scale="tiny")
    with pytest.raises(RuntimeError, match="in-distribution questions have values seen in training"):
        generate_split(info.path, seed=0, n_train=5, heldout=HeldoutSizes(50, 1, 1))


def test_difficulty_spread(split: Any) -> None:
    for tasks in (split.train, split.heldout):
        assert {t["difficulty"] for t in tasks} == set(DIFFICULTIES)
    queries = [t["query"] for t in split.train]
    assert any(" JOIN " in q and q.count(" JOIN ") >= 3 for q in queries)
    assert any("GROUP BY" in q and "HAVING" in q for q in queries)
    assert any("NOT IN (SELECT" in q for q in queries)
    assert any("ORDER BY" in q and "LIMIT 1" in q for q in queries)
    assert any("opening_hours" in q and "close_time >" in q for q in queries)


def test_asking_for_too_many_fails_clearly(tmp_path: Path) -> None:
    info = build_database(tmp_path / "tiny.sqlite", seed=0, scale="tiny")
    with pytest.raises(RuntimeError, match="distinct"):
        generate_tasks(info.path, seed=0, n_train=100_000, heldout=HeldoutSizes(1, 0, 0))


def test_unknown_scale_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale"):
        build_database(tmp_path / "x.sqlite", scale="huge")


def test_cli_writes_db_and_spider_files(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "envs.local_services", "--out", str(tmp_path), "--seed", "0",
         "--n-train", "40", "--n-heldout-a", "6", "--n-heldout-b", "4", "--n-heldout-c", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    assert "40 train, 12 held-out (a in-distribution 6, b unseen values 4, c unseen templates 2;" in out
    folder = tmp_path / "local_services"
    assert (folder / "local_services.sqlite").is_file()
    train = json.loads((folder / "train.json").read_text())
    heldout = json.loads((folder / "heldout.json").read_text())
    assert (len(train), len(heldout)) == (40, 12)
    assert set(train[0]) == {"db_id", "question", "query"}
    info = json.loads((folder / "split_info.json").read_text())
    assert info["heldout_only_templates"] == list(HELDOUT_ONLY) and info["slices"] == {"a": 6, "b": 4, "c": 2}
    tasks = json.loads((folder / "heldout_tasks.json").read_text())
    assert [t["slice"] for t in tasks] == ["a"] * 6 + ["b"] * 4 + ["c"] * 2
