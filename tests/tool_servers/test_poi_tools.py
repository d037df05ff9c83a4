"""The local-life POI tools (search, poi_detail, nearby) through a real tool server over a real
generated corpus: filters checked against SQL, distances against an independent haversine, model
mistakes answered with errors it can act on, and the BM25 index cached per corpus version."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from envs.local_services.poi_corpus import build_corpus
from rlyard.client import ToolClient
from rlyard.errors import ConfigError
from rlyard.geo import distance_m
from tool_servers.poi.bm25 import Hit, IndexMismatchError, PoiBm25, top_k
from tool_servers.poi.settings import PoiSettings
from tool_servers.poi.store import FilterError, PoiFilter, PoiStore, minutes, weekday_index

POI_TOOLS = ("search", "poi_detail", "nearby")
N = 3_000


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("poi")
    build_corpus(folder, seed=0, merchants=N)
    return folder


@pytest.fixture
async def poi_client(start_tools, make_client, corpus_dir: Path, tmp_path: Path) -> ToolClient:
    server = await start_tools(tools=POI_TOOLS, poi={"dir": corpus_dir, "index_dir": tmp_path / "index"})
    return make_client(server)


def results(result: Any) -> list[dict[str, Any]]:
    assert not result.is_error, result.content[0].text
    return result.structured["results"]


def sql(corpus_dir: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(corpus_dir / "poi.sqlite")
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def test_top_k_by_hand() -> None:
    scores = np.array([0.5, 2.0, 1.0, 2.0, 0.1])
    assert top_k(scores, 3) == [Hit(1, 2.0), Hit(3, 2.0), Hit(2, 1.0)]          # ties by row
    assert top_k(scores, 2, np.array([True, False, True, False, True])) == [Hit(2, 1.0), Hit(0, 0.5)]
    assert top_k(scores, 9, np.zeros(5, bool)) == []
    assert top_k(np.ones(6), 2) == [Hit(0, 1.0), Hit(1, 1.0)]                   # ties at the cut too
    assert top_k(scores, 9) == [Hit(1, 2.0), Hit(3, 2.0), Hit(2, 1.0), Hit(0, 0.5), Hit(4, 0.1)]


def test_filter_parsing_by_hand() -> None:
    assert (minutes("08:00"), minutes("7:30"), minutes("23:59")) == (480, 450, 1439)
    assert (weekday_index("Monday"), weekday_index("sun"), weekday_index(3)) == (0, 6, 3)
    for bad in ("8am", "24:00", "12:60"):
        with pytest.raises(FilterError, match="HH:MM"):
            minutes(bad)
    with pytest.raises(FilterError, match="Monday"):
        weekday_index("Funday")


async def test_search_matches_words_within_filters_checked_by_sql(poi_client: ToolClient, corpus_dir: Path) -> None:
    args = {"query": "hotpot beef tripe", "city": "Shanghai", "min_rating": 4.0, "max_price": 150,
            "open_at": "22:00", "weekday": "Saturday", "top_k": 8}
    got = results(await poi_client.call_tool("search", args))
    assert 1 <= len(got) <= 8
    scores = [r["score"] for r in got]
    assert scores == sorted(scores, reverse=True)
    allowed = {row[0] for row in sql(
        corpus_dir, "SELECT poi_id FROM poi WHERE city = 'Shanghai' AND rating >= 4.0 AND avg_price <= 150 "
        "AND open_time <= '22:00' AND close_time > '22:00' AND (closed_weekday IS NULL OR closed_weekday != 5)")}
    assert {r["poi_id"] for r in got} <= allowed
    assert got[0]["subcategory"] == "Hotpot"


async def test_filter_only_search_returns_the_best_rated_that_sql_finds(poi_client: ToolClient,
                                                                        corpus_dir: Path) -> None:
    got = results(await poi_client.call_tool("search", {"city": "Chengdu", "category": "Coffee", "top_k": 5}))
    expected = sql(corpus_dir, "SELECT poi_id, rating FROM poi WHERE city = 'Chengdu' AND subcategory = 'Coffee' "
                               "ORDER BY rating DESC, rowid LIMIT 5")
    assert [(r["poi_id"], r["rating"]) for r in got] == expected
    # A top-level category keeps all of its sub-categories.
    food = results(await poi_client.call_tool("search", {"category": "food & drink", "query": "noodles"}))
    assert food and all(r["category"] == "Food & Drink" for r in food)


async def test_search_text_starts_every_line_with_its_poi_id(poi_client: ToolClient) -> None:
    result = await poi_client.call_tool("search", {"query": "latte", "top_k": 3})
    lines = result.content[0].text.splitlines()
    assert len(lines) == 3
    for line, record in zip(lines, results(result), strict=True):
        assert line.startswith(f"[{record['poi_id']}] {record['name']} · ")


async def test_search_mistakes_come_back_as_errors_the_model_can_fix(poi_client: ToolClient) -> None:
    cases = [({"query": "tea", "city": "Paris"}, "unknown city 'Paris'; known: Changsha"),
             ({"query": "tea", "open_at": "8pm"}, "not HH:MM"),
             ({"query": "tea", "category": "Spaceships"}, "unknown category"),
             ({}, "give a query"),
             ({"query": "tea", "colour": "red"}, "colour"),
             ({"query": "tea", "min_rating": 7}, "min_rating")]
    for args, message in cases:
        result = await poi_client.call_tool("search", args)
        assert result.is_error, args
        assert message in result.content[0].text, (args, result.content[0].text)
    nothing = await poi_client.call_tool("search", {"query": "zzzzqqq"})
    assert not nothing.is_error and results(nothing) == []


async def test_poi_detail_returns_the_whole_record(poi_client: ToolClient, corpus_dir: Path) -> None:
    (poi_id, name, address, hours), = sql(corpus_dir, "SELECT poi_id, name, address, business_hours FROM poi "
                                                      "ORDER BY rowid LIMIT 1 OFFSET 17")
    result = await poi_client.call_tool("poi_detail", {"poi_id": f"[{poi_id}]"})
    assert not result.is_error
    record = result.structured
    assert (record["poi_id"], record["name"], record["address"], record["business_hours"]) == (
        poi_id, name, address, hours)
    products = sql(corpus_dir, "SELECT name, price FROM poi_product WHERE poi_id = ? ORDER BY product_id", poi_id)
    assert [(p["name"], p["price"]) for p in record["products"]] == products
    text = result.content[0].text
    assert text.startswith(f"[{poi_id}] {name}") and f"address: {address}" in text
    missing = await poi_client.call_tool("poi_detail", {"poi_id": "XX999999"})
    assert missing.is_error and "copy a poi_id exactly" in missing.content[0].text


async def test_nearby_is_within_radius_nearest_first_by_an_independent_haversine(
        poi_client: ToolClient, corpus_dir: Path) -> None:
    rows = sql(corpus_dir, "SELECT poi_id, lat, lng, city, subcategory FROM poi")
    centre = next(r for r in rows if r[3] == "Shanghai")
    got = results(await poi_client.call_tool("nearby", {"poi_id": centre[0], "radius_m": 800, "top_k": 20}))
    expected = sorted((distance_m(centre[1], centre[2], r[1], r[2]), r[0]) for r in rows
                      if r[0] != centre[0] and distance_m(centre[1], centre[2], r[1], r[2]) <= 800)[:20]
    assert [r["poi_id"] for r in got] == [poi_id for _, poi_id in expected]
    assert [r["distance_m"] for r in got] == pytest.approx([d for d, _ in expected], abs=0.5)
    coffee = results(await poi_client.call_tool("nearby", {"poi_id": centre[0], "radius_m": 3000,
                                                           "category": "Coffee"}))
    assert coffee and all(r["subcategory"] == "Coffee" and r["distance_m"] <= 3000 for r in coffee)
    bad = await poi_client.call_tool("nearby", {"poi_id": "nope"})
    assert bad.is_error and "no POI has id 'nope'" in bad.content[0].text


def test_bm25_index_is_cached_per_corpus_version_and_refused_on_another(corpus_dir: Path, tmp_path: Path) -> None:
    store = PoiStore(corpus_dir / "poi.sqlite")
    built = PoiBm25.load_or_build(store, tmp_path)
    folder = tmp_path / f"bm25-{store.version[:16]}"
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    loaded = PoiBm25.load_or_build(store, tmp_path)
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp, "the second use loads, it does not rebuild"
    query = "sichuan mapo tofu"
    assert np.array_equal(built.scores(query), loaded.scores(query))
    with pytest.raises(IndexMismatchError, match="built from corpus"):
        PoiBm25.load(folder, "0" * 64)
    (folder / "manifest.json").write_text("{broken")
    with pytest.raises(IndexMismatchError, match="delete it to rebuild"):
        PoiBm25.load(folder, store.version)
    store.close()


def test_store_filter_mask_equals_sql(corpus_dir: Path) -> None:
    store = PoiStore(corpus_dir / "poi.sqlite")
    columns = store.columns()
    wanted = PoiFilter(city="Wuhan", category="Food & Drink", min_price=40, max_price=120, min_rating=4.2,
                       open_at="07:45", weekday="Monday")
    ours = set(columns.poi_ids[columns.mask(wanted)].tolist())
    query = ("SELECT poi_id FROM poi WHERE city = 'Wuhan' AND category = 'Food & Drink' AND avg_price BETWEEN 40 "
             "AND 120 AND rating >= 4.2 AND open_time <= '07:45' AND close_time > '07:45' "
             "AND (closed_weekday IS NULL OR closed_weekday != 0)")
    theirs = {r[0] for r in sql(corpus_dir, query)}
    assert ours == theirs and ours
    store.close()


def test_poi_settings_pick_the_query_encoder_and_refuse_an_unknown_one() -> None:
    assert PoiSettings.from_env("RLYARD_TOOLS_POI", {}).encoder == "onnx"
    assert PoiSettings.from_env("RLYARD_TOOLS_POI", {"RLYARD_TOOLS_POI_ENCODER": "torch"}).encoder == "torch"
    with pytest.raises(ConfigError, match=r"RLYARD_TOOLS_POI_ENCODER must be 'onnx' or 'torch' \(got 'tensorrt'\)"):
        PoiSettings.from_env("RLYARD_TOOLS_POI", {"RLYARD_TOOLS_POI_ENCODER": "tensorrt"})
    assert PoiSettings.from_env("RLYARD_TOOLS_POI", {}).encoder_threads == 0          # automatic
    assert PoiSettings.from_env("RLYARD_TOOLS_POI", {"RLYARD_TOOLS_POI_ENCODER_THREADS": "1"}).encoder_threads == 1
    with pytest.raises(ConfigError, match=r"RLYARD_TOOLS_POI_ENCODER_THREADS must be >= 0 \(0: automatic\), got -2"):
        PoiSettings.from_env("RLYARD_TOOLS_POI", {"RLYARD_TOOLS_POI_ENCODER_THREADS": "-2"})
