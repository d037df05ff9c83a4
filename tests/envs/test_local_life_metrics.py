"""The local-life metrics on hand-built records, each figure computed by hand in the comments."""

from __future__ import annotations

from typing import Any

import pytest

from envs.local_life.judge import JUDGE_RUBRICS, judge_spec
from reward_service.local_life.metrics import parse_answer, request_count, score_answer
from rlyard.domain import parse_spec


def record(poi_id: str, **kw: Any) -> dict[str, Any]:
    base = {"poi_id": poi_id, "name": f"Shop {poi_id}", "category": "Food & Drink", "subcategory": "Hotpot",
            "city": "Shanghai", "district": "Jing'an", "business_area": "Nanjing West Road",
            "lat": 31.23, "lng": 121.45, "rating": 4.6, "avg_price": 120.0, "open_time": "10:00",
            "close_time": "22:00", "closed_weekday": -1, "tags": ["spicy"], "facilities": ["wifi"],
            "products": [{"name": "Beef", "price": 48.0}]}
    return base | kw


CHECKLIST = [{"kind": "count", "max": 2}, {"kind": "type", "subcategory": "Hotpot"},
             {"kind": "location", "city": "Shanghai", "district": "Jing'an"},
             {"kind": "rating", "min": 4.5}, {"kind": "price", "max": 150}]
GOOD1, GOOD2 = record("SH000001"), record("SH000002", rating=4.8, avg_price=99.0)
CHEAP_BAD = record("SH000003", rating=4.0)                      # breaks rating only: meets 3 of 4 items
RECORDS = {r["poi_id"]: r for r in (GOOD1, GOOD2, CHEAP_BAD)}


def test_parse_answer_segments_and_claims() -> None:
    recs = parse_answer("1. Shop A [SH000001] rated 4.6, ¥120 per person.\n2. Shop B (SH000002): 4.8 stars, "
                        "beef ¥48 and RMB 99 a head. Again SH000001.")
    assert [r.poi_id for r in recs] == ["SH000001", "SH000002"]
    assert recs[0].ratings == (4.6,) and recs[0].prices == (120.0,)
    assert recs[1].ratings == (4.8,) and recs[1].prices == (48.0, 99.0)
    assert parse_answer("ids like XSH0000012 or SH0000012 are not poi_ids") == []
    assert request_count(CHECKLIST) == 2 and request_count([]) == 1


def test_full_correct_answer() -> None:
    s = score_answer("Shop [SH000001] rated 4.6, ¥120; Shop [SH000002] rated 4.8", {"SH000001", "SH000002"},
                     RECORDS, CHECKLIST, n_gold=5)
    # both fit, both retrieved, 2 <= count: correct; completeness 10 * (1 + 1) / min(2, 5) = 10;
    # claims: 2 ids + 2 ratings + 1 price, all grounded: 10
    assert (s.correctness, s.completeness, s.faithfulness) == (1, 10.0, 10.0), s.explain()


def test_unretrieved_merchant_zeroes_correctness() -> None:
    s = score_answer("[SH000001] and [SH000002]", {"SH000001"}, RECORDS, CHECKLIST, n_gold=5)
    # SH000002 fits but was never retrieved: correctness 0; completeness still 10 (both fit);
    # faithfulness: 2 id claims, 1 grounded: 5
    assert (s.correctness, s.completeness, s.faithfulness) == (0, 10.0, 5.0)
    assert "not in the retrieved context: SH000002" in s.explain()


def test_partial_answers() -> None:
    retrieved = set(RECORDS)
    s = score_answer("[SH000003] rated 4.6", retrieved, RECORDS, CHECKLIST, n_gold=3)
    # breaks rating (4.0 < 4.5): correctness 0; completeness 10 * 0.75 / min(2, 3) = 3.75;
    # claims: id (grounded) + rating 4.6 (record says 4.0, not grounded): 10 * 1 / 2 = 5
    assert (s.correctness, s.completeness, s.faithfulness) == (0, 3.75, 5.0)
    s = score_answer("[SH000001]", retrieved, RECORDS, CHECKLIST, n_gold=1)
    # one asked-for slot can be filled (one gold): 10 * 1 / min(2, 1) = 10, and it is correct
    assert (s.correctness, s.completeness, s.faithfulness) == (1, 10.0, 10.0)
    s = score_answer("[SH000001] [SH000002] [SH000003]", retrieved, RECORDS, CHECKLIST, n_gold=5)
    # three cited, two asked for: correctness 0; completeness counts the first two only: 10
    assert (s.correctness, s.completeness, s.faithfulness) == (0, 10.0, 10.0)


def test_invented_ids_and_prices() -> None:
    records = RECORDS | {"SH999999": None}
    s = score_answer("[SH999999] ¥50, [SH000002] ¥77", {"SH000002"}, records, CHECKLIST, n_gold=2)
    # SH999999 does not exist: correctness 0; completeness 10 * (0 + 1) / 2 = 5;
    # claims: 2 ids (1 grounded) + ¥50 (no record) + ¥77 (neither 99 nor 48): 10 * 1 / 4 = 2.5
    assert (s.correctness, s.completeness, s.faithfulness) == (0, 5.0, 2.5)
    s = score_answer("I could not find one.", set(), {}, CHECKLIST, n_gold=2)
    assert (s.correctness, s.completeness, s.faithfulness) == (0, 0.0, 0.0)


def test_anchor_items_and_bad_input() -> None:
    anchor = record("SH000009", rating=4.7, avg_price=100.0)
    checklist = [{"kind": "count", "max": 1}, {"kind": "rating", "above_anchor": "SH000009"},
                 {"kind": "location", "city": "Shanghai", "anchor": "SH000009", "radius_m": 500}]
    near = record("SH000002", rating=4.8, lat=31.2330)         # 333.6 m north of the anchor
    far = record("SH000001", rating=4.9, lat=31.2400)          # 1,112 m north
    s = score_answer("[SH000002]", {"SH000002"}, {"SH000002": near}, checklist, n_gold=1, anchor_record=anchor)
    assert s.correctness == 1
    s = score_answer("[SH000001]", {"SH000001"}, {"SH000001": far}, checklist, n_gold=1, anchor_record=anchor)
    assert s.correctness == 0 and s.completeness == 5.0 and "more than 500 m" in s.explain()
    with pytest.raises(ValueError, match="anchor"):
        score_answer("[SH000001]", {"SH000001"}, {"SH000001": far}, checklist, n_gold=1)
    with pytest.raises(ValueError, match="no record"):
        score_answer("[SH000001]", set(), {}, checklist, n_gold=1)


def test_judge_specs_parse() -> None:
    for metric in JUDGE_RUBRICS:
        spec = parse_spec(judge_spec(metric, backend="hf"))
        (term,) = spec.terms
        assert term.name == "judge" and "{context}" in term.params["template"]
        assert term.params["score_max"] == (1.0 if metric == "correctness" else 10.0)
    with pytest.raises(ValueError, match="unknown metric"):
        judge_spec("style")
