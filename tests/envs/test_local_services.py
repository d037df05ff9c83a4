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
from envs.local_services.database import TABLES
from envs.local_services.questions import DIFFICULTIES, HELDOUT_ONLY, TEMPLATES
from tool_servers.sql.db import SqliteDatabases, SqlLimits

REPO_ROOT = Path(__file__).resolve().parents[2]


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
    return generate_split(db_path, seed=0, n_train=300, n_heldout=80)


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
    for task in split.train + split.heldout:
        assert set(task) == keys and task["db_id"] == "local_services"
    ids = [t["task_id"] for t in split.train + split.heldout]
    assert len(set(ids)) == len(ids)
    train, heldout = generate_tasks(db_path, seed=3, n_train=7, n_heldout=4)
    assert (len(train), len(heldout)) == (7, 4)


def test_generation_is_deterministic(db_path: Path, split: Any) -> None:
    again = generate_split(db_path, seed=0, n_train=300, n_heldout=80)
    assert again.train == split.train and again.heldout == split.heldout
    other = generate_split(db_path, seed=1, n_train=300, n_heldout=80)
    assert [t["question"] for t in other.train] != [t["question"] for t in split.train]


def test_split_templates_and_values_overlap_only_in_part(split: Any) -> None:
    train_templates = {t["template"] for t in split.train}
    heldout_templates = {t["template"] for t in split.heldout}
    assert set(HELDOUT_ONLY) and set(HELDOUT_ONLY) <= heldout_templates
    assert not set(HELDOUT_ONLY) & train_templates
    assert train_templates & heldout_templates  # shared templates exist
    assert len(TEMPLATES) >= 25 and 0.1 <= len(HELDOUT_ONLY) / len(TEMPLATES) <= 0.3
    # held-out cities never appear in train questions
    held_cities = set(split.info["heldout_cities"])
    assert held_cities and not held_cities & set(split.info["train_cities"])
    assert all(t["slots"].get("city") not in held_cities for t in split.train)
    # shared templates in held-out: some values unseen in train, some seen (partial overlap)
    train_values = {(k, v) for t in split.train for k, v in t["slots"].items()}
    shared = [t for t in split.heldout if t["template"] not in HELDOUT_ONLY]
    unseen = [t for t in shared if any(kv not in train_values for kv in t["slots"].items())]
    assert 0 < len(unseen) < len(shared)
    assert {t["slots"].get("city") for t in shared} & set(split.info["train_cities"])
    assert not {t["question"] for t in split.train} & {t["question"] for t in split.heldout}


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
        generate_tasks(info.path, seed=0, n_train=100_000, n_heldout=1)


def test_unknown_scale_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale"):
        build_database(tmp_path / "x.sqlite", scale="huge")


def test_cli_writes_db_and_spider_files(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "envs.local_services", "--out", str(tmp_path), "--seed", "0",
         "--n-train", "40", "--n-heldout", "12"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    assert "40 train, 12 held-out" in out
    folder = tmp_path / "local_services"
    assert (folder / "local_services.sqlite").is_file()
    train = json.loads((folder / "train.json").read_text())
    heldout = json.loads((folder / "heldout.json").read_text())
    assert (len(train), len(heldout)) == (40, 12)
    assert set(train[0]) == {"db_id", "question", "query"}
    info = json.loads((folder / "split_info.json").read_text())
    assert info["heldout_only_templates"] == list(HELDOUT_ONLY)
