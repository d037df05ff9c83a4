"""The local-life POI corpus: 150,000 merchants with their products across 9 cities.

The large form of the local-services world (``envs/local_services/database.py``): the same cities,
districts, categories, brands, products and opening-hours profiles, and the same ids for cities,
districts and categories, plus what LocalSearchBench's records carry and the SQL world leaves out —
``poi_id``, business areas, coordinates, business hours as text, price range, specialties, tags,
description and facilities. It feeds the ``search``, ``retrieve``, ``poi_detail`` and ``nearby``
tools and the multi-hop tasks of the local-life environment.

Distributions, on purpose (as on a real platform; the measured shares are in docs/local_life.md):
popular sub-categories, food and drink above all, are far more frequent; chains take about a third
of the merchants and recur across cities, independents have their own names; prices follow the
sub-category's band scaled by the district's and the business area's price level; ratings skew
high, with a tail down to 2.5; business areas differ in how many merchants they hold.

Deterministic from a seed: the same seed and size give the same JSONL bytes, whose SHA-256 is the
corpus version (:attr:`CorpusInfo.version`), stored in the database's ``corpus_meta`` table; an
index built from one corpus is refused on another.

    python -m envs.local_services.poi_corpus --out data/generated/poi --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
)

from envs.local_services.database import CITIES, HOURS, KINDS, STREETS, TOP_LEVEL, Kind
from rlyard.geo import WEEKDAYS

GENERATOR_VERSION = 1
DB_NAME = "poi.sqlite"
JSONL_NAME = "pois.jsonl"
DEFAULT_MERCHANTS = 150_000

# City centres (lat, lng), in the order of CITIES.
CENTRES = {
    "Chengdu": (30.657, 104.066), "Hangzhou": (30.274, 120.155), "Wuhan": (30.593, 114.305),
    "Xi'an": (34.341, 108.940), "Nanjing": (32.060, 118.797), "Changsha": (28.228, 112.939),
    "Qingdao": (36.067, 120.383), "Kunming": (25.038, 102.718), "Shanghai": (31.230, 121.474),
}
CITY_CODES = {"Chengdu": "CD", "Hangzhou": "HZ", "Wuhan": "WH", "Xi'an": "XA", "Nanjing": "NJ",
              "Changsha": "CS", "Qingdao": "QD", "Kunming": "KM", "Shanghai": "SH"}
AREA_WORDS = ("Plaza", "Station", "Old Town", "Riverside", "University Town", "Wanda", "Central Park",
              "Software Park", "Ancient Street", "Sports Center", "Financial District", "Night Market",
              "Lakeside", "Metro City", "Expo Center", "Hi-Tech Zone")
AREAS_PER_DISTRICT = (3, 6)

# Sub-categories the SQL world leaves out (a real platform has them; the POI search needs variety).
EXTRA_KINDS = (
    Kind("Japanese Cuisine", "Food & Drink", 3, ("Sakura Sushi", "Tokyo Table", "Izakaya Kaze"), (90, 260),
         "restaurant", (("Salmon Sashimi", 68), ("Tonkotsu Ramen", 42), ("Eel Rice Bowl", 78),
                        ("Assorted Sushi Platter", 128), ("Chicken Karaage", 32), ("Matcha Ice Cream", 22))),
    Kind("Western Restaurant", "Food & Drink", 3, ("Brick Oven", "The Steak House", "Olive Bistro"), (100, 280),
         "restaurant", (("Ribeye Steak", 198), ("Margherita Pizza", 68), ("Caesar Salad", 48),
                        ("Truffle Pasta", 88), ("Tiramisu", 42), ("Mushroom Soup", 32))),
    Kind("Cantonese Cuisine", "Food & Drink", 3, ("Canton House", "Golden Goose Kitchen"), (80, 200),
         "restaurant", (("Roast Goose", 98), ("Steamed Grouper", 168), ("Char Siu", 58),
                        ("Claypot Rice", 48), ("White Cut Chicken", 68), ("Double-skin Milk", 18))),
    Kind("Hotel", "Hotels & Travel", 4, ("Hanting Hotel", "Atour Hotel", "Home Inn", "Vienna Hotel"), (200, 700),
         "store", (("Standard Room (1 night)", 298), ("King Room (1 night)", 358), ("Breakfast Buffet", 48),
                   ("Suite (1 night)", 688), ("Hourly Room (4 hours)", 128))),
    Kind("Scenic Spot", "Hotels & Travel", 1, (), (0, 120), "fun",
         (("Adult Ticket", 60), ("Student Ticket", 30), ("Guided Tour", 120), ("Cable Car", 80))),
    Kind("Museum", "Hotels & Travel", 1, (), (0, 60), "clinic",
         (("Adult Ticket", 40), ("Audio Guide", 20), ("Special Exhibition", 60))),
    Kind("Bar", "Entertainment", 3, ("Moonlight Bar", "Hops & Barley", "Blue Note Lounge"), (80, 220), "fun",
         (("Craft Beer Pint", 48), ("Cocktail", 78), ("Whisky Highball", 68), ("Snack Platter", 58))),
    Kind("Kids Playground", "Entertainment", 1, ("Happy Kids Land", "Little Explorers"), (60, 160), "fun",
         (("Day Pass (1 child)", 98), ("Parent-child Pass", 128), ("Birthday Party Package", 888))),
)
ALL_KINDS = (*KINDS, *EXTRA_KINDS)
EXTRA_TOP_LEVEL = ("Hotels & Travel",)
ALL_TOP_LEVEL = (*TOP_LEVEL, *EXTRA_TOP_LEVEL)

# The noun an independent's name ends with, per sub-category.
NOUNS = {"Hotpot": "Hotpot", "Noodles": "Noodle House", "Coffee": "Coffee", "Bakery": "Bakery",
         "Sichuan Cuisine": "Sichuan Kitchen", "Barbecue": "BBQ", "Milk Tea": "Tea House",
         "Dim Sum": "Dim Sum", "Hair Salon": "Hair Salon", "Nail Salon": "Nails", "Spa & Massage": "Spa",
         "Gym": "Fitness", "Yoga Studio": "Yoga", "Cinema": "Cinema", "KTV": "KTV", "Escape Room": "Escape Room",
         "Pharmacy": "Pharmacy", "Dental Clinic": "Dental Clinic", "Convenience Store": "Mart",
         "Japanese Cuisine": "Japanese Kitchen", "Western Restaurant": "Bistro",
         "Cantonese Cuisine": "Cantonese Kitchen",
         "Hotel": "Hotel", "Scenic Spot": "Park", "Museum": "Museum", "Bar": "Bar", "Kids Playground": "Playland"}
PREFIXES = ("Golden", "Happy", "Old", "Little", "Blue", "Jade", "Red", "Lucky", "Green", "Silver", "Moon",
            "Sunny", "Cozy", "Grand", "Urban", "Lotus", "Maple", "Pine", "Cloud", "River", "Peach", "Bamboo",
            "Crystal", "Amber", "Spring", "Harmony", "Star", "Willow", "Orchid", "Phoenix")
OWNERS = ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Zhao", "Huang", "Zhou", "Wu", "Xu", "Sun", "Ma", "Zhu",
          "Hu", "Guo", "He", "Lin", "Luo", "Gao")

TAGS = {
    "Food & Drink": ("spicy", "local favourite", "good for groups", "date night", "vegetarian options",
                     "late night", "takeaway", "family friendly", "queue at peak hours", "signature dish"),
    "Beauty": ("appointment only", "walk-ins welcome", "female stylists", "student discount", "premium products"),
    "Sports & Fitness": ("24 hours", "beginner friendly", "group classes", "showers", "personal trainers"),
    "Entertainment": ("good for groups", "late night", "couples", "family friendly", "weekend crowds"),
    "Health": ("night service", "insurance accepted", "qualified pharmacist", "quick service"),
    "Shopping": ("24 hours", "self checkout", "delivery", "fresh food"),
    "Hotels & Travel": ("family friendly", "near metro", "city view", "quiet", "pet friendly", "historic"),
}
FACILITIES = ("free wifi", "parking", "wheelchair access", "private rooms", "baby chairs", "card payment",
              "outdoor seating", "air conditioning", "charging sockets", "lockers", "restrooms", "no smoking")

POI_FIELDS = ("poi_id", "name", "city", "district", "business_area", "category", "subcategory", "address",
              "business_hours", "rating", "review_count", "avg_price", "price_range", "specialties", "tags",
              "description", "facilities", "lat", "lng", "open_time", "close_time", "closed_weekday", "brand")

metadata = MetaData()
city_t = Table("city", metadata, Column("city_id", Integer, primary_key=True), Column("name", String, unique=True),
               Column("province", String), Column("population", Integer), Column("code", String),
               Column("lat", Float), Column("lng", Float))
district_t = Table("district", metadata, Column("district_id", Integer, primary_key=True),
                   Column("city_id", Integer, ForeignKey("city.city_id")), Column("name", String, unique=True),
                   Column("lat", Float), Column("lng", Float), Column("price_level", Float))
area_t = Table("business_area", metadata, Column("area_id", Integer, primary_key=True),
               Column("district_id", Integer, ForeignKey("district.district_id")),
               Column("name", String, unique=True), Column("lat", Float), Column("lng", Float))
category_t = Table("category", metadata, Column("category_id", Integer, primary_key=True),
                   Column("name", String, unique=True),
                   Column("parent_id", Integer, ForeignKey("category.category_id")))
poi_t = Table(
    "poi", metadata,
    Column("poi_id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("brand", String, nullable=False),
    Column("city", String, nullable=False), Column("district", String, nullable=False),
    Column("business_area", String, nullable=False),
    Column("area_id", Integer, ForeignKey("business_area.area_id"), nullable=False),
    Column("category", String, nullable=False), Column("subcategory", String, nullable=False),
    Column("category_id", Integer, ForeignKey("category.category_id"), nullable=False),
    Column("address", String, nullable=False),
    Column("business_hours", String, nullable=False),
    Column("open_time", String, nullable=False),       # 'HH:MM'
    Column("close_time", String, nullable=False),      # 'HH:MM', same day ('23:59' for late)
    Column("closed_weekday", Integer),                 # 0 = Monday; NULL: open every day
    Column("rating", Float, nullable=False), Column("review_count", Integer, nullable=False),
    Column("avg_price", Float, nullable=False), Column("price_range", String, nullable=False),
    Column("specialties", JSON, nullable=False), Column("tags", JSON, nullable=False),
    Column("facilities", JSON, nullable=False), Column("description", Text, nullable=False),
    Column("lat", Float, nullable=False), Column("lng", Float, nullable=False),
    Index("idx_poi_city_sub", "city", "subcategory"), Index("idx_poi_district", "district"),
    Index("idx_poi_area", "area_id"), Index("idx_poi_lat", "lat"),
)
product_t = Table("poi_product", metadata, Column("product_id", Integer, primary_key=True),
                  Column("poi_id", String, ForeignKey("poi.poi_id"), nullable=False, index=True),
                  Column("name", String, nullable=False), Column("price", Float, nullable=False))
meta_t = Table("corpus_meta", metadata, Column("key", String, primary_key=True), Column("value", String))


@dataclass(frozen=True)
class CorpusInfo:
    """What :func:`build_corpus` wrote."""

    db_path: Path
    jsonl_path: Path
    seed: int
    merchants: int
    products: int
    version: str                         # SHA-256 of the JSONL bytes
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)


def price_range(avg_price: float) -> str:
    """The price band of an average spend per person, as the platform shows it."""
    for hi, label in ((50, "<¥50"), (100, "¥50-100"), (200, "¥100-200"), (300, "¥200-300")):
        if avg_price < hi:
            return label
    return "¥300+"


def business_hours_text(open_time: str, close_time: str, closed: int | None) -> str:
    """``Daily 10:00-22:00`` or ``10:00-22:00, closed Monday``."""
    if open_time == "00:00" and close_time == "23:59":
        hours = "Open 24 hours"
        return hours if closed is None else f"{hours}, closed {WEEKDAYS[closed]}"
    if closed is None:
        return f"Daily {open_time}-{close_time}"
    return f"{open_time}-{close_time}, closed {WEEKDAYS[closed]}"


def _offset(lat: float, lng: float, north_m: float, east_m: float) -> tuple[float, float]:
    return lat + north_m / 111_320, lng + east_m / (111_320 * math.cos(math.radians(lat)))


@dataclass
class _World:
    cities: list[dict[str, Any]]
    districts: list[dict[str, Any]]
    areas: list[dict[str, Any]]
    categories: list[dict[str, Any]]


def _world(rng: random.Random) -> _World:
    cities: list[dict[str, Any]] = []
    districts: list[dict[str, Any]] = []
    areas: list[dict[str, Any]] = []
    for city_id, (name, province, population, _area_code, dnames) in enumerate(CITIES, start=1):
        lat, lng = CENTRES[name]
        cities.append({"city_id": city_id, "name": name, "province": province, "population": population,
                       "code": CITY_CODES[name], "lat": lat, "lng": lng})
        for dname in dnames:
            angle, radius = rng.uniform(0, 2 * math.pi), rng.uniform(1_500, 11_000)
            dlat, dlng = _offset(lat, lng, radius * math.sin(angle), radius * math.cos(angle))
            district_id = len(districts) + 1
            districts.append({"district_id": district_id, "city_id": city_id, "name": dname,
                              "lat": round(dlat, 6), "lng": round(dlng, 6),
                              "price_level": round(rng.uniform(0.8, 1.35), 3)})
            for word in rng.sample(AREA_WORDS, rng.randint(*AREAS_PER_DISTRICT)):
                angle, radius = rng.uniform(0, 2 * math.pi), rng.uniform(300, 2_500)
                alat, alng = _offset(dlat, dlng, radius * math.sin(angle), radius * math.cos(angle))
                areas.append({"area_id": len(areas) + 1, "district_id": district_id, "name": f"{dname} {word}",
                              "lat": round(alat, 6), "lng": round(alng, 6)})
    categories: list[dict[str, Any]] = []
    ids: dict[str, int] = {}
    # The SQL world's categories first, in its order (same ids), then what only the corpus has.
    for tops, kinds in ((TOP_LEVEL, KINDS), (EXTRA_TOP_LEVEL, EXTRA_KINDS)):
        for top in tops:
            ids[top] = len(categories) + 1
            categories.append({"category_id": ids[top], "name": top, "parent_id": None})
        for kind in kinds:
            ids[kind.name] = len(categories) + 1
            categories.append({"category_id": ids[kind.name], "name": kind.name, "parent_id": ids[kind.parent]})
    return _World(cities, districts, areas, categories)


def _hours(rng: random.Random, kind: Kind) -> tuple[str, str, int | None]:
    opens, closes, closed_p, closed_days, _late = HOURS[kind.hours]
    open_time = rng.choice(opens)
    close_time = "23:59" if open_time == "00:00" else rng.choice(closes)
    closed = rng.choice(closed_days) if closed_days and rng.random() < closed_p else None
    return open_time, close_time, closed


def _rating(rng: random.Random) -> float:
    return round(min(5.0, max(2.5, 5.05 - rng.gammavariate(2.0, 0.33))), 1)


def _description(rng: random.Random, poi: dict[str, Any]) -> str:
    sub = poi["subcategory"].lower()
    specs = poi["specialties"]
    known = " and ".join(specs[:2]) if specs else sub
    first = rng.choice((
        f"{poi['name']}: {sub} in {poi['business_area']}, {poi['district']} District, {poi['city']}.",
        f"A {sub} spot near {poi['business_area']} in {poi['city']}'s {poi['district']} District.",
        f"Popular {sub} in {poi['district']}, {poi['city']}, a short walk from {poi['business_area']}.",
    ))
    second = rng.choice((f"Known for its {known}.", f"Regulars recommend the {known}.",
                         f"Try the {known}."))
    extra = f" Guests mention: {', '.join(poi['tags'][:2])}." if poi["tags"] else ""
    return f"{first} {second}{extra}"


PoiRows = Iterator[tuple[dict[str, Any], list[tuple[str, float]]]]


def generate(seed: int = 0, merchants: int = DEFAULT_MERCHANTS) -> tuple[_World, PoiRows]:
    """The world tables and an iterator of ``(poi record, products)``, deterministic from ``seed``."""
    if merchants < 1:
        raise ValueError(f"merchants must be at least 1, got {merchants}")
    rng = random.Random(seed)
    world = _world(rng)
    return world, _pois(rng, world, merchants)


def _pois(rng: random.Random, world: _World, merchants: int) -> PoiRows:
    city_by_id = {c["city_id"]: c for c in world.cities}
    district_by_id = {d["district_id"]: d for d in world.districts}
    category_ids = {c["name"]: c["category_id"] for c in world.categories}
    # City weight ~ population; business areas vary in how many merchants they hold.
    area_weights = [city_by_id[district_by_id[a["district_id"]]["city_id"]]["population"]
                    * rng.lognormvariate(0.0, 0.6) for a in world.areas]
    area_level = [rng.uniform(0.85, 1.2) for _ in world.areas]
    kind_weights = [k.weight for k in ALL_KINDS]
    taken: set[str] = set()
    counters = dict.fromkeys(CITY_CODES.values(), 0)
    areas = rng.choices(range(len(world.areas)), weights=area_weights, k=merchants)
    kinds = rng.choices(ALL_KINDS, weights=kind_weights, k=merchants)
    for index, kind in zip(areas, kinds, strict=True):
        area = world.areas[index]
        district = district_by_id[area["district_id"]]
        city = city_by_id[district["city_id"]]
        chain = bool(kind.brands) and rng.random() < 0.35
        if chain:
            brand = rng.choice(kind.brands)
            name = f"{brand} ({area['name']} Store)"
        else:
            style = rng.random()
            noun = NOUNS[kind.name]
            if style < 0.35:
                first, second = rng.sample(PREFIXES, 2)
                brand = f"{first} {second} {noun}"
            elif style < 0.6:
                brand = f"{rng.choice(PREFIXES)} {noun}"
            elif style < 0.85:
                brand = f"{rng.choice(OWNERS)}'s {noun}"
            else:
                brand = f"{district['name']} {rng.choice(PREFIXES)} {noun}"
            name = brand
        if name in taken:      # a chain's second store in an area, an independent's namesake
            base = name[:-1] if chain else f"{name} ({area['name']}"
            name = f"{base})" if not chain else name
            number = 2
            while name in taken:
                name = f"{base} No. {number})"
                number += 1
        taken.add(name)
        counters[city["code"]] += 1
        poi_id = f"{city['code']}{counters[city['code']]:06d}"
        level = district["price_level"] * area_level[index] * rng.uniform(0.85, 1.25)
        avg_price = float(round(rng.uniform(*kind.price) * level))
        open_time, close_time, closed = _hours(rng, kind)
        lat, lng = _offset(area["lat"], area["lng"], rng.gauss(0, 350), rng.gauss(0, 350))
        products = [(pname, max(1.0, round(base * level * rng.uniform(0.9, 1.1) * 2) / 2))
                    for pname, base in rng.sample(kind.products, min(len(kind.products), rng.randint(2, 4)))]
        specialties = [p for p, _ in products[: rng.randint(1, min(3, len(products)))]]
        tags = rng.sample(TAGS[kind.parent], rng.randint(0, 3))
        facilities = sorted(rng.sample(FACILITIES, rng.randint(1, 5)))
        poi: dict[str, Any] = {
            "poi_id": poi_id, "name": name, "brand": brand, "city": city["name"], "district": district["name"],
            "business_area": area["name"], "area_id": area["area_id"], "category": kind.parent,
            "subcategory": kind.name, "category_id": category_ids[kind.name],
            "address": f"No. {rng.randint(1, 899)} {rng.choice(STREETS)} Road, {district['name']} District, "
                       f"{city['name']}",
            "business_hours": business_hours_text(open_time, close_time, closed),
            "open_time": open_time, "close_time": close_time, "closed_weekday": closed,
            "rating": _rating(rng), "review_count": min(50_000, int(rng.lognormvariate(5.0, 1.3))),
            "avg_price": avg_price, "price_range": price_range(avg_price),
            "specialties": specialties, "tags": tags, "facilities": facilities,
            "lat": round(lat, 6), "lng": round(lng, 6),
        }
        poi["description"] = _description(rng, poi)
        yield poi, products


def build_corpus(out_dir: Path, seed: int = 0, merchants: int = DEFAULT_MERCHANTS, *,
                 on_progress: Callable[[int, int], None] | None = None, batch: int = 5_000) -> CorpusInfo:
    """Write ``out_dir/poi.sqlite`` (through SQLAlchemy) and ``out_dir/pois.jsonl`` (one POI per line,
    with its products), replacing both; ``on_progress(done, total)`` after every batch."""
    tic = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    db_path, jsonl_path = out_dir / DB_NAME, out_dir / JSONL_NAME
    tmp_db, tmp_jsonl = db_path.with_name(db_path.name + ".tmp"), jsonl_path.with_name(jsonl_path.name + ".tmp")
    tmp_db.unlink(missing_ok=True)
    world, pois = generate(seed, merchants)
    engine = create_engine(f"sqlite:///{tmp_db}")
    digest = hashlib.sha256()
    n_products = 0
    try:
        metadata.create_all(engine)
        with engine.begin() as conn, tmp_jsonl.open("w", encoding="utf-8") as out:
            conn.exec_driver_sql("PRAGMA journal_mode=OFF")
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
            conn.execute(insert(city_t), world.cities)
            conn.execute(insert(district_t), world.districts)
            conn.execute(insert(area_t), world.areas)
            conn.execute(insert(category_t), world.categories)
            poi_rows: list[dict[str, Any]] = []
            product_rows: list[dict[str, Any]] = []
            done = 0
            for poi, products in pois:
                record = {key: poi[key] for key in POI_FIELDS}
                record["products"] = [{"name": n, "price": p} for n, p in products]
                line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
                out.write(line)
                digest.update(line.encode("utf-8"))
                poi_rows.append(poi)
                for name, price in products:
                    n_products += 1
                    product_rows.append({"product_id": n_products, "poi_id": poi["poi_id"], "name": name,
                                         "price": price})
                if len(poi_rows) >= batch:
                    conn.execute(insert(poi_t), poi_rows)
                    conn.execute(insert(product_t), product_rows)
                    done += len(poi_rows)
                    poi_rows, product_rows = [], []
                    if on_progress is not None:
                        on_progress(done, merchants)
            if poi_rows:
                conn.execute(insert(poi_t), poi_rows)
                conn.execute(insert(product_t), product_rows)
                done += len(poi_rows)
                if on_progress is not None:
                    on_progress(done, merchants)
            version = digest.hexdigest()
            conn.execute(insert(meta_t), [{"key": "version", "value": version},
                                          {"key": "generator_version", "value": str(GENERATOR_VERSION)},
                                          {"key": "seed", "value": str(seed)},
                                          {"key": "merchants", "value": str(merchants)}])
    finally:
        engine.dispose()
    tmp_db.replace(db_path)
    tmp_jsonl.replace(jsonl_path)
    counts = {"city": len(world.cities), "district": len(world.districts), "business_area": len(world.areas),
              "category": len(world.categories), "poi": merchants, "poi_product": n_products}
    return CorpusInfo(db_path, jsonl_path, seed, merchants, n_products, version, time.perf_counter() - tic, counts)


def corpus_version(db_path: Path) -> str:
    """The version recorded in a corpus database (the SHA-256 of its JSONL)."""
    import sqlite3

    if not db_path.is_file():
        raise FileNotFoundError(f"no POI corpus at {db_path}; build it with python -m envs.local_services.poi_corpus")
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM corpus_meta WHERE key = 'version'").fetchone()
    finally:
        conn.close()
    if row is None:
        raise ValueError(f"{db_path} has no corpus version; rebuild it")
    return str(row[0])


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The POI records of a ``pois.jsonl``."""
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def main(argv: list[str] | None = None) -> None:
    """Build the corpus with a progress bar; print what was written."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    parser = argparse.ArgumentParser(prog="python -m envs.local_services.poi_corpus",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for poi.sqlite and pois.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merchants", type=int, default=DEFAULT_MERCHANTS)
    args = parser.parse_args(argv)
    with Progress(TextColumn("POI corpus"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("", total=args.merchants)
        info = build_corpus(args.out, args.seed, args.merchants,
                            on_progress=lambda done, _total: bar.update(task, completed=done))
    print(f"{info.db_path} and {info.jsonl_path}: {info.merchants} merchants, {info.products} products "
          f"in {info.seconds:.1f} s; version {info.version[:16]}")


if __name__ == "__main__":
    main()
