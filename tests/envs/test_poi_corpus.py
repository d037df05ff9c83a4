"""The POI corpus generator: determinism, field validity, the database and the JSONL agree, one world
with the SQL environment's database."""

from __future__ import annotations

import sqlite3
import statistics
from pathlib import Path

import pytest

from envs.local_services.database import build_database
from envs.local_services.poi_corpus import (
    CENTRES,
    POI_FIELDS,
    build_corpus,
    business_hours_text,
    corpus_version,
    price_range,
    read_jsonl,
)
from rlyard.geo import WEEKDAYS, distance_m

N = 3_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return build_corpus(tmp_path_factory.mktemp("poi"), seed=0, merchants=N)


def test_same_seed_same_bytes_other_seed_other_corpus(corpus, tmp_path: Path) -> None:
    again = build_corpus(tmp_path / "again", seed=0, merchants=N)
    assert again.version == corpus.version
    assert again.jsonl_path.read_bytes() == corpus.jsonl_path.read_bytes()
    other = build_corpus(tmp_path / "other", seed=1, merchants=N)
    assert other.version != corpus.version
    assert corpus_version(corpus.db_path) == corpus.version


def test_every_record_has_valid_fields(corpus) -> None:
    records = list(read_jsonl(corpus.jsonl_path))
    assert len(records) == N
    assert len({r["poi_id"] for r in records}) == N
    assert len({r["name"] for r in records}) == N, "names are unique (a chain's stores carry their area)"
    conn = sqlite3.connect(corpus.db_path)
    parent = dict(conn.execute("SELECT c.name, p.name FROM category c JOIN category p ON c.parent_id = p.category_id"))
    district_city = dict(conn.execute("SELECT d.name, c.name FROM district d JOIN city c USING (city_id)"))
    area_district = dict(conn.execute("SELECT a.name, d.name FROM business_area a JOIN district d USING (district_id)"))
    codes = dict(conn.execute("SELECT name, code FROM city"))
    for r in records:
        assert set(POI_FIELDS) | {"products"} == set(r)
        assert r["poi_id"].startswith(codes[r["city"]]) and r["poi_id"][2:].isdigit()
        assert parent[r["subcategory"]] == r["category"]
        assert district_city[r["district"]] == r["city"]
        assert area_district[r["business_area"]] == r["district"]
        assert r["district"] in r["address"] and r["city"] in r["address"]
        assert 2.5 <= r["rating"] <= 5.0 and round(r["rating"], 1) == r["rating"]
        assert r["avg_price"] >= 0 and r["price_range"] == price_range(r["avg_price"])
        assert r["business_hours"] == business_hours_text(r["open_time"], r["close_time"], r["closed_weekday"])
        assert r["open_time"] < r["close_time"]
        assert r["closed_weekday"] is None or 0 <= r["closed_weekday"] < 7
        assert 2 <= len(r["products"]) <= 4
        assert set(r["specialties"]) <= {p["name"] for p in r["products"]} and r["specialties"]
        assert r["facilities"] and len(set(r["tags"])) == len(r["tags"])
        assert r["name"] in r["description"] or r["business_area"] in r["description"]
        assert distance_m(r["lat"], r["lng"], *CENTRES[r["city"]]) < 20_000
    conn.close()


def test_hours_text_and_price_bands_by_hand() -> None:
    assert business_hours_text("10:00", "22:00", None) == "Daily 10:00-22:00"
    assert business_hours_text("10:00", "22:00", 0) == "10:00-22:00, closed Monday"
    assert business_hours_text("00:00", "23:59", None) == "Open 24 hours"
    assert WEEKDAYS[6] == "Sunday"
    assert [price_range(p) for p in (0, 49.9, 50, 150, 299, 300)] == [
        "<¥50", "<¥50", "¥50-100", "¥100-200", "¥200-300", "¥300+"]
    # One degree of latitude is ~111.2 km.
    assert distance_m(30.0, 104.0, 31.0, 104.0) == pytest.approx(111_195, rel=1e-3)


def test_database_holds_what_the_jsonl_holds(corpus) -> None:
    conn = sqlite3.connect(corpus.db_path)
    assert conn.execute("SELECT count(*) FROM poi").fetchone()[0] == N
    assert conn.execute("SELECT count(*) FROM poi_product").fetchone()[0] == corpus.products
    by_id = {r["poi_id"]: r for r in read_jsonl(corpus.jsonl_path)}
    for poi_id, name, rating, tags, lat in conn.execute(
            "SELECT poi_id, name, rating, tags, lat FROM poi ORDER BY random() LIMIT 200"):
        record = by_id[poi_id]
        assert (name, rating, lat) == (record["name"], record["rating"], record["lat"])
        assert tags == __import__("json").dumps(record["tags"])
    problems = conn.execute("PRAGMA foreign_key_check").fetchall()
    assert problems == []
    conn.close()


def test_one_world_with_the_sql_database(corpus, tmp_path: Path) -> None:
    sql = sqlite3.connect(build_database(tmp_path / "ls.sqlite", seed=0, scale="medium").path)
    poi = sqlite3.connect(corpus.db_path)
    for table, key in (("city", "city_id, name"), ("district", "district_id, city_id, name"),
                       ("category", "category_id, name, parent_id")):
        shared = sql.execute(f"SELECT {key} FROM {table} ORDER BY 1").fetchall()
        assert poi.execute(f"SELECT {key} FROM {table} ORDER BY 1 LIMIT {len(shared)}").fetchall() == shared
    assert poi.execute("SELECT count(*) FROM city").fetchone()[0] == 9


def test_distributions_look_like_a_platform(corpus) -> None:
    records = list(read_jsonl(corpus.jsonl_path))
    food = sum(r["category"] == "Food & Drink" for r in records) / N
    assert 0.45 < food < 0.7
    ratings = [r["rating"] for r in records]
    assert 4.0 <= statistics.median(ratings) <= 4.6 and min(ratings) < 3.5
    chains = sum(r["name"].startswith(r["brand"] + " (") and "Store" in r["name"] for r in records) / N
    assert 0.15 < chains < 0.45
    by_sub: dict[str, list[float]] = {}
    for r in records:
        by_sub.setdefault(r["subcategory"], []).append(r["avg_price"])
    assert statistics.median(by_sub["Milk Tea"]) < statistics.median(by_sub["Hotpot"])


def test_bad_arguments_and_missing_corpus_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        build_corpus(tmp_path, merchants=0)
    with pytest.raises(FileNotFoundError, match="poi_corpus"):
        corpus_version(tmp_path / "nothing.sqlite")
