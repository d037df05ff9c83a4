"""Multi-hop local-life tasks in the style of LocalSearchBench, generated from a seed over the POI corpus.

A task chains *hops*, each one step an agent takes with the ``search``, ``nearby`` and ``poi_detail``
tools:

- an **anchor** hop finds one POI fixed by conditions: the best-rated <sub-category> in a business
  area, optionally one already open at a time or one with a facility. A draw whose best rating is
  shared is skipped, so the anchor is unique;
- a **scope** hop lists the candidates: ``nearby`` the anchor (within a radius, of one category) or
  ``search`` in a district or business area;
- **constraint** hops keep the candidates that meet a condition: rating, price, open at a time on a
  weekday (visible in result lines), a tag, a facility or a product's price (only ``poi_detail``
  shows them), or a comparison with the anchor (rated higher, cheaper).

Every constraint removes at least one candidate and keeps at least one, so each hop matters. The
gold answers are every POI that meets the whole checklist (1 to :data:`MAX_GOLD`), and the gold path
is the tool calls that reach them; :func:`reward_service.local_life.checklist.check_poi` tells which checklist items a
POI breaks.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from envs.local_life.checklist import Item
from envs.local_services.questions import TaskSplit
from rlyard.geo import WEEKDAYS
from tool_servers.poi.bm25 import PoiBm25
from tool_servers.poi.nearby import NearbyArgs
from tool_servers.poi.poi_detail import PoiDetailArgs
from tool_servers.poi.search import SearchArgs
from tool_servers.poi.store import PoiColumns, PoiStore, minutes

Call = dict[str, Any]          # one gold-path call: {"tool": ..., "arguments": {...}}

DIFFICULTIES = ("easy", "hard")
DETAIL_KINDS = frozenset({"tag", "facility", "product"})     # only poi_detail shows these
MAX_RESULTS = 20               # one search/nearby call shows at most this many (poi_max_results)
MAX_GOLD = 10                  # a model can list every answer
MAX_DETAIL_CALLS = 12          # candidates a gold path opens with poi_detail
RADII = (300, 500, 800, 1000, 1500, 2000, 3000)
RADIUS_MARGIN_M = 1.0          # no candidate this close to the radius: float noise cannot flip it
ANCHOR_TIMES = ("08:00", "09:00", "10:00", "11:00", "21:00", "22:00")
TIMES = ("07:30", "08:00", "09:00", "10:00", "12:00", "14:00", "21:00", "22:00", "23:00")
MAX_DRAWS = 400                # draws per task before the corpus is declared too small

NOUNS = {"Hotpot": "hotpot restaurant", "Noodles": "noodle shop", "Coffee": "café", "Bakery": "bakery",
         "Sichuan Cuisine": "Sichuan restaurant", "Barbecue": "barbecue restaurant", "Milk Tea": "milk tea shop",
         "Dim Sum": "dim sum restaurant", "Hair Salon": "hair salon", "Nail Salon": "nail salon",
         "Spa & Massage": "spa", "Gym": "gym", "Yoga Studio": "yoga studio", "Cinema": "cinema", "KTV": "KTV",
         "Escape Room": "escape room", "Pharmacy": "pharmacy", "Dental Clinic": "dental clinic",
         "Convenience Store": "convenience store", "Japanese Cuisine": "Japanese restaurant",
         "Western Restaurant": "Western restaurant", "Cantonese Cuisine": "Cantonese restaurant", "Hotel": "hotel",
         "Scenic Spot": "scenic spot", "Museum": "museum", "Bar": "bar", "Kids Playground": "kids' playground",
         "Food & Drink": "place to eat or drink", "Beauty": "beauty or hair place",
         "Sports & Fitness": "sports or fitness venue", "Entertainment": "entertainment venue",
         "Health": "pharmacy or clinic", "Shopping": "shop", "Hotels & Travel": "hotel or sight"}
FACILITY_CLAUSES = {"card payment": "takes card payment", "no smoking": "is non-smoking"}


# ---- the corpus as the generator reads it ----------------------------------------------------------

@dataclass
class _World:
    store: PoiStore
    cols: PoiColumns
    by: dict[str, dict[int, np.ndarray]]          # column -> code -> rows, ascending
    places: dict[str, dict[int, list[int]]]       # district/business_area -> city code -> codes

    @classmethod
    def load(cls, db_path: Path) -> _World:
        store = PoiStore(db_path)
        cols = store.columns()
        by: dict[str, dict[int, np.ndarray]] = {}
        for column in ("city", "district", "business_area"):
            codes = getattr(cols, column)
            order = np.argsort(codes, kind="stable")
            values, starts = np.unique(codes[order], return_index=True)
            by[column] = {int(v): rows for v, rows in zip(values, np.split(order, starts[1:]), strict=True)}
        places = {column: {city: sorted(c for c, rows in by[column].items() if cols.city[rows[0]] == city)
                           for city in by["city"]} for column in ("district", "business_area")}
        return cls(store, cols, by, places)

    def name(self, column: str, code: int) -> str:
        return self.cols.names[column][code]

    def records(self, rows: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        return self.store.get([str(self.cols.poi_ids[r]) for r in rows])

    def poi_id(self, row: int) -> str:
        return str(self.cols.poi_ids[row])


@dataclass(frozen=True)
class _Type:
    column: str                   # "subcategory" or "category"
    code: int
    name: str

    @property
    def item(self) -> Item:
        return {"kind": "type", self.column: self.name}

    def mask(self, w: _World, rows: np.ndarray) -> np.ndarray:
        return np.asarray(getattr(w.cols, self.column)[rows] == self.code)


def _noun(name: str) -> str:
    return NOUNS.get(name, name.lower())


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _type_of(rng: random.Random, w: _World, row: int, not_sub: int | None) -> _Type | None:
    """The sub-category of ``row`` (or, one time in five, its top-level category)."""
    if rng.random() < 0.2:
        code = int(w.cols.category[row])
        return _Type("category", code, w.name("category", code))
    code = int(w.cols.subcategory[row])
    return None if code == not_sub else _Type("subcategory", code, w.name("subcategory", code))


# ---- constraint options --------------------------------------------------------------------------

@dataclass
class _Option:
    key: str                      # one constraint per key in a task
    item: Item
    clause: str                   # "is rated 4.5 or higher"
    keep: np.ndarray              # over the current candidates
    args: dict[str, Any] = field(default_factory=dict)    # search filters that apply it


Maker = Callable[[_World, np.ndarray, Mapping[str, Any] | None], list[_Option]]


def _rating_options(w: _World, rows: np.ndarray, _anchor: Mapping[str, Any] | None) -> list[_Option]:
    r = w.cols.rating[rows]
    values = sorted({round(float(v), 1) for v in r})
    return [_Option("rating", {"kind": "rating", "min": v}, f"is rated {v:.1f} or higher", r >= v,
                    {"min_rating": v}) for v in values[1:] if v >= 3.5]


def _price_steps(p: np.ndarray) -> range:
    step = 5 if p.max() <= 60 else 10
    return range(math.ceil(float(p.min()) / step) * step, int(p.max()) + 1, step)


def _max_price_options(w: _World, rows: np.ndarray, _anchor: Mapping[str, Any] | None) -> list[_Option]:
    p = w.cols.avg_price[rows]
    return [_Option("price", {"kind": "price", "max": v}, f"costs at most ¥{v} per person", p <= v,
                    {"max_price": v}) for v in _price_steps(p)]


def _min_price_options(w: _World, rows: np.ndarray, _anchor: Mapping[str, Any] | None) -> list[_Option]:
    p = w.cols.avg_price[rows]
    return [_Option("price", {"kind": "price", "min": v}, f"costs at least ¥{v} per person", p >= v,
                    {"min_price": v}) for v in _price_steps(p)]


def _open_options(w: _World, rows: np.ndarray, _anchor: Mapping[str, Any] | None) -> list[_Option]:
    o, c, closed = w.cols.open_min[rows], w.cols.close_min[rows], w.cols.closed_weekday[rows]
    out = []
    for t in TIMES:
        at = (o <= minutes(t)) & (minutes(t) < c)
        for day, name in enumerate(WEEKDAYS):
            out.append(_Option("open_at", {"kind": "open_at", "time": t, "weekday": name},
                               f"is open at {t} on {name}", at & (closed != day), {"open_at": t, "weekday": name}))
    return out


def _above_anchor_options(w: _World, rows: np.ndarray, anchor: Mapping[str, Any] | None) -> list[_Option]:
    assert anchor is not None
    return [_Option("rating", {"kind": "rating", "above_anchor": anchor["poi_id"]},
                    f"is rated higher than that {_noun(anchor['subcategory'])}", w.cols.rating[rows] > anchor["rating"],
                    {"min_rating": round(anchor["rating"] + 0.1, 1)})] if anchor["rating"] < 5 else []


def _below_anchor_options(w: _World, rows: np.ndarray, anchor: Mapping[str, Any] | None) -> list[_Option]:
    assert anchor is not None and float(anchor["avg_price"]).is_integer(), "average prices are whole yuan"
    return [_Option("price", {"kind": "price", "below_anchor": anchor["poi_id"]},
                    f"costs less per person than that {_noun(anchor['subcategory'])}",
                    w.cols.avg_price[rows] < anchor["avg_price"], {"max_price": int(anchor["avg_price"]) - 1})]


def _tag_options(w: _World, rows: np.ndarray, _anchor: Mapping[str, Any] | None) -> list[_Option]:
    recs = w.records(rows)
    return [_Option("tag", {"kind": "tag", "tag": t}, f"is tagged '{t}'", np.array([t in r["tags"] for r in recs]))
            for t in sorted({t for r in recs for t in r["tags"]})]


def _facility_options(w: _World, rows: np.ndarray, _anchor: Mapping[str, Any] | None) -> list[_Option]:
    recs = w.records(rows)
    return [_Option("facility", {"kind": "facility", "facility": f}, FACILITY_CLAUSES.get(f, f"has {f}"),
                    np.array([f in r["facilities"] for r in recs]))
            for f in sorted({f for r in recs for f in r["facilities"]})]


def _product_options(w: _World, rows: np.ndarray, _anchor: Mapping[str, Any] | None) -> list[_Option]:
    recs = w.records(rows)
    cheapest = [{p["name"]: p["price"] for p in sorted(r["products"], key=lambda p: -p["price"])} for r in recs]
    out = []
    for name in sorted({n for c in cheapest for n in c}):
        for limit in sorted({math.ceil(c[name]) for c in cheapest if name in c}):
            out.append(_Option("product", {"kind": "product", "name": name, "max_price": limit},
                               f"sells {name} for ¥{limit} or less",
                               np.array([name in c and c[name] <= limit for c in cheapest])))
    return out


GROUPS: dict[str, tuple[tuple[str, Maker, int], ...]] = {
    "visible": (("rating", _rating_options, 3), ("price", _max_price_options, 3), ("price", _min_price_options, 1),
                ("open_at", _open_options, 3)),
    "detail": (("tag", _tag_options, 1), ("facility", _facility_options, 1), ("product", _product_options, 1)),
    "compare": (("rating", _above_anchor_options, 1), ("price", _below_anchor_options, 1)),
}


def _constrain(rng: random.Random, w: _World, rows: np.ndarray, plan: Sequence[str],
               anchor: Mapping[str, Any] | None) -> tuple[list[_Option], np.ndarray, np.ndarray] | None:
    """Apply one constraint per slot of ``plan`` (detail slots last), each removing some candidates and
    keeping some; the options, the candidates before the detail slots, and the gold rows."""
    chosen: list[_Option] = []
    before_detail = rows
    for i, group in enumerate(plan):
        left, n = len(plan) - i, len(rows)
        if n < 2:
            return None
        cap = MAX_GOLD if left == 1 else MAX_DETAIL_CALLS if plan[i + 1] == "detail" and group != "detail" else n
        target = MAX_GOLD * (n / MAX_GOLD) ** ((left - 1) / left) if n > MAX_GOLD else n
        makers = [m for m in GROUPS[group] if m[0] not in {o.key for o in chosen}]
        pick: _Option | None = None
        while makers and pick is None:
            maker = rng.choices(makers, weights=[m[2] for m in makers])[0]
            makers.remove(maker)
            sized = [(int(o.keep.sum()), o) for o in maker[1](w, rows, anchor)]
            fits = [(k, o) for k, o in sized if 0 < k < n and k <= cap]
            fits = [(k, o) for k, o in fits if k <= target] or fits
            if fits:       # a size first, then an option of that size: gold sizes spread out
                size = rng.choice(sorted({k for k, _ in fits}))
                pick = rng.choice([o for k, o in fits if k == size])
        if pick is None:
            return None
        chosen.append(pick)
        rows = rows[pick.keep]
        if group != "detail":
            before_detail = rows
    return chosen, before_detail, rows


# ---- hops ----------------------------------------------------------------------------------------

@dataclass
class _Anchor:
    row: int
    record: dict[str, Any]
    items: list[Item]
    phrase: str
    calls: list[tuple[Call, list[int]]]      # each call with the rows it must show


_ARGS: dict[str, type[BaseModel]] = {"search": SearchArgs, "nearby": NearbyArgs, "poi_detail": PoiDetailArgs}


def _call(tool: str, rows: Sequence[int] | np.ndarray, **arguments: Any) -> tuple[Call, list[int]]:
    _ARGS[tool].model_validate(arguments)          # the tool would accept these arguments
    return {"tool": tool, "arguments": arguments}, [int(r) for r in rows]


def _find_anchor(rng: random.Random, w: _World, city: int, mode: str) -> _Anchor | None:
    """The best-rated POI of one sub-category in one business area (``mode``: plain, time, facility)."""
    area = rng.choice(w.places["business_area"][city])
    rows = w.by["business_area"][area]
    subs = w.cols.subcategory[rows]
    codes, counts = np.unique(subs, return_counts=True)
    if not (counts >= 2).any():
        return None
    sub = int(rng.choice(codes[counts >= 2]))
    pool = rows[subs == sub]
    city_name, area_name, sub_name = w.name("city", city), w.name("business_area", area), w.name("subcategory", sub)
    items: list[Item] = [{"kind": "type", "subcategory": sub_name},
                         {"kind": "location", "city": city_name, "business_area": area_name}]
    args: dict[str, Any] = {"city": city_name, "business_area": area_name, "category": sub_name,
                            "top_k": MAX_RESULTS}
    phrase = f"the best-rated {_noun(sub_name)} in the {area_name} area"
    if mode == "time":        # a time that leaves out some, and keeps two or more to compare
        opens = [(t, (w.cols.open_min[pool] <= minutes(t)) & (minutes(t) < w.cols.close_min[pool]))
                 for t in ANCHOR_TIMES]
        fits = [(t, keep) for t, keep in opens if 2 <= keep.sum() < len(pool)]
        if not fits:
            return None
        t, keep = rng.choice(fits)
        pool = pool[keep]
        items.append({"kind": "open_at", "time": t})
        args["open_at"] = t
        phrase += f" that is already open at {t}"
    rating = w.cols.rating[pool]
    order = pool[np.lexsort((pool, -rating))]          # as search shows them: best first, ties by row
    if mode == "facility":
        head = order[:MAX_RESULTS]
        recs = w.records(head)
        facilities = sorted({f for r in recs for f in r["facilities"]} - set(recs[0]["facilities"]))
        if not facilities:
            return None
        facility = rng.choice(facilities)
        has = [i for i, r in enumerate(recs) if facility in r["facilities"]]
        best = w.cols.rating[head[has[0]]]
        shown = int((rating >= best).sum())             # all rated as high must be shown and opened
        if (len(has) > 1 and w.cols.rating[head[has[1]]] == best) or shown > len(head):
            return None
        row, opened = int(head[has[0]]), order[:shown]
        items.append({"kind": "facility", "facility": facility})
        phrase += f" that {FACILITY_CLAUSES.get(facility, f'has {facility}')}"
    else:
        if (rating == rating.max()).sum() > 1:
            return None
        row, opened = int(order[0]), order[:0]
    calls = [_call("search", [row], **args)]
    calls += [_call("poi_detail", [r], poi_id=w.poi_id(int(r))) for r in opened]
    return _Anchor(row, w.records([row])[0], items, phrase, calls)


def _near(w: _World, row: int, rows: np.ndarray) -> np.ndarray:
    lat, lng = math.radians(float(w.cols.lat[row])), float(w.cols.lng[row])
    p2 = np.radians(w.cols.lat[rows])
    a = np.sin((p2 - lat) / 2) ** 2 + math.cos(lat) * np.cos(p2) * np.sin(np.radians(w.cols.lng[rows] - lng) / 2) ** 2
    return np.asarray(2 * 6_371_000.0 * np.arcsin(np.sqrt(np.minimum(1.0, a))))


def _nearby_scope(rng: random.Random, w: _World, anchor: _Anchor) -> tuple[np.ndarray, _Type, int] | None:
    """Candidates of one category within a radius of the anchor (2 to MAX_RESULTS, nearest first)."""
    rows = w.by["city"][int(w.cols.city[anchor.row])]
    d = _near(w, anchor.row, rows)
    others = rows != anchor.row
    near = rows[others & (d <= RADII[-1])]
    if near.size == 0:
        return None
    kind = _type_of(rng, w, int(rng.choice(near)), int(w.cols.subcategory[anchor.row]))
    if kind is None:
        return None
    of_kind = kind.mask(w, rows) & others
    for radius in rng.sample(RADII, len(RADII)):
        inside = of_kind & (d <= radius)
        if 2 <= inside.sum() <= MAX_RESULTS and not (of_kind & (np.abs(d - radius) < RADIUS_MARGIN_M)).any():
            return rows[inside][np.argsort(d[inside], kind="stable")], kind, radius
    return None


def _search_rows(w: _World, args: Mapping[str, Any], expected: np.ndarray) -> np.ndarray:
    """What ``search`` with ``args`` filters to, in the order it shows them; it must be ``expected``."""
    mask = w.cols.mask(SearchArgs.model_validate(args).to_filter())
    rows = np.flatnonzero(mask)
    if set(rows.tolist()) != set(expected.tolist()):
        raise AssertionError(f"search {dict(args)} keeps {rows.size} rows, the constraints {expected.size}")
    return rows[np.lexsort((rows, -w.cols.rating[rows]))]


# ---- templates -----------------------------------------------------------------------------------

@dataclass
class _Draft:
    question: str
    city: str
    hops: int
    request_count: int
    gold: list[str]
    checklist: list[Item]
    calls: list[tuple[Call, list[int]]]
    anchor: dict[str, Any] | None


def _radius_text(radius: int) -> str:
    return f"{radius} m" if radius < 1000 else f"{radius / 1000:g} km"


def _that(options: Sequence[_Option]) -> str:
    clauses = [o.clause for o in options]
    return "that " + (clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1])


def _ask(rng: random.Random) -> tuple[int, str]:
    n = rng.choice((1, 2, 3, 3, 5))
    if n == 1:
        return n, rng.choice(("Recommend one and cite its poi_id.", "Name one, with its poi_id."))
    return n, rng.choice((f"Recommend up to {n} and cite each one's poi_id.", f"List up to {n}, each with its poi_id."))


def _detail_calls(w: _World, options: Sequence[_Option], rows: np.ndarray) -> list[tuple[Call, list[int]]]:
    if not any(o.item["kind"] in DETAIL_KINDS for o in options):
        return []
    return [_call("poi_detail", [r], poi_id=w.poi_id(int(r))) for r in rows]


def _anchor_json(a: _Anchor) -> dict[str, Any]:
    keys = ("poi_id", "name", "city", "district", "business_area", "subcategory", "rating", "avg_price")
    return {**{k: a.record[k] for k in keys}, "rule": "best_rated", "conditions": a.items}


def _draft(question: str, city: str, hops: int, n: int, type_item: Item, where: Item,
           options: list[_Option], gold: np.ndarray, w: _World, calls: list[tuple[Call, list[int]]],
           anchor: _Anchor | None) -> _Draft:
    checklist = [{"kind": "count", "max": n}, type_item, where, *(o.item for o in options)]
    return _Draft(question, city, hops, n, sorted(w.poi_id(int(r)) for r in gold), checklist, calls,
                  None if anchor is None else _anchor_json(anchor))


def _nearby_task(mode: str, plans: Sequence[Sequence[str]]) -> Callable[..., _Draft | None]:
    def build(rng: random.Random, w: _World, city: int) -> _Draft | None:
        anchor = _find_anchor(rng, w, city, mode)
        scope = None if anchor is None else _nearby_scope(rng, w, anchor)
        if anchor is None or scope is None:
            return None
        rows, kind, radius = scope
        plan = rng.choice(plans)
        got = _constrain(rng, w, rows, plan, anchor.record)
        if got is None:
            return None
        options, checked, gold = got
        calls = [*anchor.calls, _call("nearby", rows, poi_id=anchor.record["poi_id"], radius_m=radius,
                                      category=kind.name, top_k=MAX_RESULTS), *_detail_calls(w, options, checked)]
        n, ask = _ask(rng)
        city_name, b, r = w.name("city", city), _a(_noun(kind.name)), _radius_text(radius)
        question = rng.choice((
            f"I'm at {anchor.phrase} in {city_name}. Find {b} within {r} of it {_that(options)}. {ask}",
            f"In {city_name}, I want {b} no more than {r} from {anchor.phrase}, one {_that(options)}. {ask}",
            f"Around {anchor.phrase} ({city_name}), is there {b} within {r} {_that(options)}? {ask}"))
        where = {"kind": "location", "city": city_name, "anchor": anchor.record["poi_id"], "radius_m": radius}
        return _draft(question, city_name, 2 + len(plan), n, kind.item, where, options, gold, w, calls, anchor)
    return build


def _search_task(column: str, plans: Sequence[Sequence[str]],
                 compare: bool = False) -> Callable[..., _Draft | None]:
    def build(rng: random.Random, w: _World, city: int) -> _Draft | None:
        anchor = _find_anchor(rng, w, city, rng.choice(("plain", "time"))) if compare else None
        if compare and anchor is None:
            return None
        place = (int(w.cols.district[anchor.row]) if anchor is not None
                 else rng.choice(w.places[column][city]))
        rows = w.by[column][place]
        kind = _type_of(rng, w, int(rng.choice(rows)), None)
        if kind is None:
            return None
        rows = rows[kind.mask(w, rows)]
        plan = rng.choice(plans)
        got = _constrain(rng, w, rows, plan, None if anchor is None else anchor.record)
        if got is None:
            return None
        options, checked, gold = got
        city_name, place_name = w.name("city", city), w.name(column, place)
        args = {"city": city_name, column: place_name, "category": kind.name, "top_k": MAX_RESULTS}
        for o in options:
            args.update(o.args)
        shown = _search_rows(w, args, checked)
        calls = [*(anchor.calls if anchor is not None else []), _call("search", shown, **args),
                 *_detail_calls(w, options, shown)]
        n, ask = _ask(rng)
        b = _a(_noun(kind.name))
        where_text = f"the {place_name} District" if column == "district" else f"the {place_name} area"
        if anchor is not None:
            question = rng.choice((
                f"Take {anchor.phrase} in {city_name} as the benchmark. Find {b} in {where_text} "
                f"{_that(options)}. {ask}",
                f"My usual spot is {anchor.phrase} ({city_name}). Suggest {b} in {where_text} {_that(options)}. {ask}"))
        else:
            question = rng.choice((
                f"I'm looking for {b} in {where_text} ({city_name}) {_that(options)}. {ask}",
                f"In {city_name}, find {b} in {where_text} {_that(options)}. {ask}",
                f"Any suggestions for {b} in {where_text}, {city_name}, {_that(options)}? {ask}"))
        where = {"kind": "location", "city": city_name, column: place_name}
        hops = (2 if anchor is not None else 1) + len(plan)
        return _draft(question, city_name, hops, n, kind.item, where, options, gold, w, calls, anchor)
    return build


@dataclass(frozen=True)
class Template:
    """A task pattern: its difficulty, whether it hops through ``nearby``, whether only held-out has it."""

    name: str
    difficulty: str
    geographic: bool
    heldout_only: bool
    build: Callable[[random.Random, _World, int], _Draft | None]


_HARD_NEAR = (("visible", "detail"), ("visible", "visible", "detail"), ("visible", "detail", "detail"))
TEMPLATES = (
    Template("anchor_nearby", "easy", True, False, _nearby_task("plain", [("visible",)])),
    Template("timed_anchor_nearby", "easy", True, False, _nearby_task("time", [("visible",)])),
    Template("anchor_nearby_detail", "hard", True, False, _nearby_task("plain", _HARD_NEAR)),
    Template("facility_anchor_nearby", "hard", True, True, _nearby_task("facility", _HARD_NEAR)),
    Template("district_filters", "easy", False, False, _search_task("district", [("visible", "visible")])),
    Template("area_filters", "easy", False, True, _search_task("business_area", [("visible", "visible")])),
    Template("district_detail", "hard", False, False,
             _search_task("district", [("visible", "visible", "detail"), ("visible", "visible", "detail", "detail")])),
    Template("anchor_compare", "hard", False, False,
             _search_task("district", [("compare", "detail"), ("compare", "compare", "detail"),
                                       ("compare", "visible", "detail")], compare=True)),
)
HELDOUT_ONLY = tuple(t.name for t in TEMPLATES if t.heldout_only)


# ---- the split -----------------------------------------------------------------------------------

Progress = Callable[[str, int, int], None]


class CorpusTooSmallError(RuntimeError):
    """A template found no new task in :data:`MAX_DRAWS` draws: ask for fewer tasks or a larger corpus."""


def _replay(w: _World, index: PoiBm25, call: Call, rows: list[int]) -> None:
    """Run a gold search the way the ``search`` tool does; it must show ``rows``."""
    args = SearchArgs.model_validate(call["arguments"])
    mask = w.cols.mask(args.to_filter())
    shown = {h.row for h in index.search(args.query, min(args.top_k, MAX_RESULTS), mask, fallback=w.cols.rating)}
    if not set(rows) <= shown:
        raise AssertionError(f"gold search {call['arguments']} does not show {sorted(set(rows) - shown)}")


def _generate(w: _World, rng: random.Random, split: str, seed: int, n: int, templates: Sequence[Template],
              cities: Callable[[int], list[int]], seen: set[str], index: PoiBm25 | None,
              on_progress: Progress | None, stats: dict[str, int]) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    for i in range(n):
        template = templates[i % len(templates)]
        for _ in range(MAX_DRAWS):
            stats["draws"] += 1
            draft = template.build(rng, w, rng.choice(cities(i)))
            if draft is not None and draft.question not in seen:
                break
        else:
            raise CorpusTooSmallError(
                f"template {template.name} found no new {split} task in {MAX_DRAWS} draws after {i}; the corpus "
                "is too small for that many tasks (ask for fewer, or build a larger corpus: python -m "
                "envs.local_services.poi_corpus --merchants N)")
        seen.add(draft.question)
        if index is not None:
            for call, rows in draft.calls:
                if call["tool"] == "search":
                    _replay(w, index, call, rows)
        tasks.append({"task_id": f"ll{seed}-{split}-{i:05d}", "split": split, "template": template.name,
                      "difficulty": template.difficulty, "hops": draft.hops, "city": draft.city,
                      "question": draft.question, "request_count": draft.request_count,
                      "gold_answers": draft.gold, "checklist": draft.checklist, "anchor": draft.anchor,
                      "gold_path": [call for call, _ in draft.calls]})
        if on_progress is not None:
            on_progress(split, i + 1, n)
    return tasks


def _counts(tasks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    def by(key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in tasks:
            out[str(t[key])] = out.get(str(t[key]), 0) + 1
        return dict(sorted(out.items()))
    size = max(1, len(tasks))
    return {"tasks": len(tasks), "by_template": by("template"), "by_difficulty": by("difficulty"),
            "by_hops": by("hops"), "by_city": by("city"),
            "mean_gold": round(sum(len(t["gold_answers"]) for t in tasks) / size, 2),
            "mean_calls": round(sum(len(t["gold_path"]) for t in tasks) / size, 2)}


def generate_split(db_path: Path, seed: int = 0, n_train: int = 800, n_heldout: int = 200,
                   index_dir: Path | None = None, on_progress: Progress | None = None) -> TaskSplit:
    """Train and held-out tasks over the corpus at ``db_path``, deterministic from ``seed``.

    A third of the cities and the :data:`HELDOUT_ONLY` templates appear only in held-out; held-out
    tasks of the other templates alternate between the held-out cities and the train cities; no
    question is in both splits. With ``index_dir`` (where the tool server caches its BM25 index), every
    gold ``search`` call is also replayed through that index as the tool runs it.
    """
    tic = time.perf_counter()
    w = _World.load(db_path)
    try:
        index = None if index_dir is None else PoiBm25.load_or_build(
            w.store, index_dir, None if on_progress is None else lambda done, total: on_progress("index", done, total))
        loaded = time.perf_counter()
        cities = sorted(w.by["city"], key=lambda c: w.name("city", c))
        rng = random.Random(f"local_life/{seed}/split")
        held = sorted(rng.sample(cities, max(1, len(cities) // 3)))
        train_cities = [c for c in cities if c not in held]
        shared = [t for t in TEMPLATES if not t.heldout_only]
        seen: set[str] = set()
        stats = {"draws": 0}
        train = _generate(w, random.Random(f"local_life/{seed}/train"), "train", seed, n_train, shared,
                          lambda _i: train_cities, seen, index, on_progress, stats)
        heldout = _generate(w, random.Random(f"local_life/{seed}/heldout"), "heldout", seed, n_heldout,
                            [t for t in TEMPLATES if t.heldout_only] + shared,
                            lambda i: held if i % 2 == 0 else train_cities, seen, index, on_progress, stats)
    finally:
        w.store.close()
    names = [w.name("city", c) for c in held]
    info = {
        "seed": seed, "corpus_version": w.store.version, "generator": "envs.local_life.tasks",
        "heldout_cities": names, "train_cities": [w.name("city", c) for c in train_cities],
        "heldout_only_templates": list(HELDOUT_ONLY),
        "templates": {t.name: {"difficulty": t.difficulty, "geographic": t.geographic, "heldout_only": t.heldout_only}
                      for t in TEMPLATES},
        "train": _counts(train), "heldout": _counts(heldout),
        "heldout_in_heldout_cities": sum(t["city"] in names for t in heldout),
        "shared_questions": len({t["question"] for t in train} & {t["question"] for t in heldout}),
        "draws": stats["draws"], "replayed_searches": index is not None,
        "seconds_load": round(loaded - tic, 2), "seconds_generate": round(time.perf_counter() - loaded, 2),
    }
    return TaskSplit(train, heldout, info)
