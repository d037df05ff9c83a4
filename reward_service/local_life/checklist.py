"""The checklist of a local-life task, and the check of one POI against it.

A checklist is a list of items ``{"kind": ..., parameters}``: ``count`` (how many answers the user
asked for at most), ``type``, ``location`` (city/district/business area, or within ``radius_m`` of
an ``anchor`` POI), ``price``, ``rating`` (absolute, or against the anchor), ``open_at`` (a time,
optionally a weekday), ``tag``, ``facility`` and ``product`` (sells a product at or under a price).
:func:`check_poi` says which items a full POI record (as ``poi_detail`` returns it) breaks; the task
generator of ``envs.local_life`` and the local-life metrics of the reward service both use it, so
they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rlyard.geo import distance_m, minutes, weekday_index

Item = dict[str, Any]          # one checklist item: {"kind": ..., parameters}

def _anchor_for(item: Item, anchor: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if anchor is None or anchor["poi_id"] != item["anchor"]:
        raise ValueError(f"checklist item {item} needs the record of anchor {item['anchor']} as anchor_record")
    return anchor


def _check_type(r: Mapping[str, Any], item: Item, _a: Mapping[str, Any] | None) -> str | None:
    for key in ("subcategory", "category"):
        if key in item and r[key] != item[key]:
            return f"{key} is {r[key]}, not {item[key]}"
    return None


def _check_location(r: Mapping[str, Any], item: Item, a: Mapping[str, Any] | None) -> str | None:
    for key in ("city", "district", "business_area"):
        if key in item and r[key] != item[key]:
            return f"{key} is {r[key]}, not {item[key]}"
    if "radius_m" in item:
        anchor = _anchor_for(item, a)
        if r["poi_id"] == anchor["poi_id"]:
            return "is the anchor itself"
        d = distance_m(anchor["lat"], anchor["lng"], r["lat"], r["lng"])
        if d > item["radius_m"]:
            return f"{d:.0f} m from {anchor['poi_id']}, more than {item['radius_m']} m"
    return None


def _check_price(r: Mapping[str, Any], item: Item, a: Mapping[str, Any] | None) -> str | None:
    price = r["avg_price"]
    if "max" in item and price > item["max"]:
        return f"¥{price:g} per person, over ¥{item['max']:g}"
    if "min" in item and price < item["min"]:
        return f"¥{price:g} per person, under ¥{item['min']:g}"
    if "below_anchor" in item and price >= (ref := _anchor_for({"anchor": item["below_anchor"]}, a))["avg_price"]:
        return f"¥{price:g} per person, not cheaper than the anchor's ¥{ref['avg_price']:g}"
    return None


def _check_rating(r: Mapping[str, Any], item: Item, a: Mapping[str, Any] | None) -> str | None:
    rating = r["rating"]
    if "min" in item and rating < item["min"]:
        return f"rated {rating:.1f}, under {item['min']:.1f}"
    if "above_anchor" in item and rating <= (ref := _anchor_for({"anchor": item["above_anchor"]}, a))["rating"]:
        return f"rated {rating:.1f}, not above the anchor's {ref['rating']:.1f}"
    return None


def _check_open_at(r: Mapping[str, Any], item: Item, _a: Mapping[str, Any] | None) -> str | None:
    at = minutes(item["time"])
    if not minutes(r["open_time"]) <= at < minutes(r["close_time"]):
        return f"open {r['open_time']}-{r['close_time']}, not at {item['time']}"
    if item.get("weekday") is not None and r["closed_weekday"] == weekday_index(item["weekday"]):
        return f"closed on {item['weekday']}"
    return None


def _check_tag(r: Mapping[str, Any], item: Item, _a: Mapping[str, Any] | None) -> str | None:
    return None if item["tag"] in r["tags"] else f"not tagged {item['tag']!r}"


def _check_facility(r: Mapping[str, Any], item: Item, _a: Mapping[str, Any] | None) -> str | None:
    return None if item["facility"] in r["facilities"] else f"no {item['facility']}"


def _check_product(r: Mapping[str, Any], item: Item, _a: Mapping[str, Any] | None) -> str | None:
    prices = [p["price"] for p in r["products"] if p["name"] == item["name"]]
    if not prices:
        return f"does not sell {item['name']}"
    if min(prices) > item["max_price"]:
        return f"{item['name']} costs ¥{min(prices):g}, over ¥{item['max_price']:g}"
    return None


_CHECKS: dict[str, Callable[[Mapping[str, Any], Item, Mapping[str, Any] | None], str | None]] = {
    "count": lambda _r, _i, _a: None,           # a property of the whole answer, not of one POI
    "type": _check_type, "location": _check_location, "price": _check_price, "rating": _check_rating,
    "open_at": _check_open_at, "tag": _check_tag, "facility": _check_facility, "product": _check_product,
}


def check_poi(record: Mapping[str, Any], checklist: Sequence[Item],
              anchor_record: Mapping[str, Any] | None = None) -> list[str]:
    """The checklist items a full POI record (as ``poi_detail`` returns it) violates, one message
    each, ``"<kind>: <why>"``; empty when it satisfies them all. ``count`` is never reported here.

    Raises:
        ValueError: an unknown kind, or an anchor item (radius, above/below the anchor) without
            the anchor's record.
    """
    problems = []
    for item in checklist:
        check = _CHECKS.get(item["kind"])
        if check is None:
            raise ValueError(f"unknown checklist kind {item['kind']!r}; known: {', '.join(sorted(_CHECKS))}")
        problem = check(record, item, anchor_record)
        if problem is not None:
            problems.append(f"{item['kind']}: {problem}")
    return problems


CHECK_KINDS = frozenset(_CHECKS)
