"""A deterministic local-services database: cities, districts, categories, merchants,
opening hours, products and reviews, generated from a seed with ``random.Random``.

The same seed and scale give the same rows (checked with :func:`content_hash`); the
file lives in Spider layout, ``<dir>/local_services/local_services.sqlite``, so the SQL
tool server resolves it by ``db_id``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import re
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

DB_ID = "local_services"
TABLES = ("city", "district", "category", "merchant", "opening_hours", "product", "review")

SCHEMA = """
CREATE TABLE city (
    city_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    province TEXT NOT NULL,
    population INTEGER NOT NULL  -- residents
);
CREATE TABLE district (
    district_id INTEGER PRIMARY KEY,
    city_id INTEGER NOT NULL REFERENCES city(city_id),
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE category (
    category_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    parent_id INTEGER REFERENCES category(category_id)  -- NULL for a top-level category
);
CREATE TABLE merchant (
    merchant_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    district_id INTEGER NOT NULL REFERENCES district(district_id),
    category_id INTEGER NOT NULL REFERENCES category(category_id),
    address TEXT NOT NULL,
    phone TEXT NOT NULL,
    avg_price REAL NOT NULL,       -- average spend per person, yuan
    rating REAL NOT NULL,          -- 1.0 to 5.0, one decimal
    review_count INTEGER NOT NULL, -- reviews on the platform (the review table holds a sample)
    opened_year INTEGER NOT NULL
);
CREATE TABLE opening_hours (
    merchant_id INTEGER NOT NULL REFERENCES merchant(merchant_id),
    weekday INTEGER NOT NULL,      -- 0 = Monday ... 6 = Sunday; no row: closed that day
    open_time TEXT NOT NULL,       -- 'HH:MM', 24-hour clock
    close_time TEXT NOT NULL,      -- 'HH:MM', same day
    PRIMARY KEY (merchant_id, weekday)
);
CREATE TABLE product (
    product_id INTEGER PRIMARY KEY,
    merchant_id INTEGER NOT NULL REFERENCES merchant(merchant_id),
    name TEXT NOT NULL,
    price REAL NOT NULL,           -- yuan
    is_available INTEGER NOT NULL  -- 1 on sale, 0 sold out
);
CREATE TABLE review (
    review_id INTEGER PRIMARY KEY,
    merchant_id INTEGER NOT NULL REFERENCES merchant(merchant_id),
    user_name TEXT NOT NULL,
    rating INTEGER NOT NULL,       -- 1 to 5 stars
    text TEXT NOT NULL,
    created_at TEXT NOT NULL       -- 'YYYY-MM-DD'
);
CREATE INDEX idx_district_city ON district(city_id);
CREATE INDEX idx_merchant_district ON merchant(district_id);
CREATE INDEX idx_merchant_category ON merchant(category_id);
CREATE INDEX idx_product_merchant ON product(merchant_id);
CREATE INDEX idx_review_merchant ON review(merchant_id);
"""

# name, province, population, phone area code, districts
CITIES = (
    ("Chengdu", "Sichuan", 21_403_000, "028", ("Jinjiang", "Qingyang", "Wuhou", "Chenghua", "Jinniu", "Gaoxin")),
    ("Hangzhou", "Zhejiang", 12_376_000, "0571", ("Xihu", "Shangcheng", "Gongshu", "Binjiang", "Xiaoshan",
                                                   "Yuhang")),
    ("Wuhan", "Hubei", 13_739_000, "027", ("Jiang'an", "Wuchang", "Hongshan", "Jianghan", "Hanyang", "Qiaokou")),
    ("Xi'an", "Shaanxi", 12_996_000, "029", ("Yanta", "Beilin", "Lianhu", "Xincheng", "Weiyang", "Baqiao")),
    ("Nanjing", "Jiangsu", 9_491_000, "025", ("Xuanwu", "Qinhuai", "Jianye", "Gulou", "Qixia", "Yuhuatai")),
    ("Changsha", "Hunan", 10_420_000, "0731", ("Furong", "Tianxin", "Yuelu", "Kaifu", "Yuhua", "Wangcheng")),
    ("Qingdao", "Shandong", 10_375_000, "0532", ("Shinan", "Shibei", "Licang", "Laoshan", "Huangdao",
                                                  "Chengyang")),
    ("Kunming", "Yunnan", 8_600_000, "0871", ("Wuhua", "Panlong", "Guandu", "Xishan", "Chenggong", "Dongchuan")),
    # Only the POI corpus (poi_corpus.py) reaches the ninth city; every SQL scale stops at 8.
    ("Shanghai", "Shanghai", 24_870_000, "021", ("Jing'an", "Huangpu", "Xuhui", "Changning", "Pudong",
                                                 "Hongkou")),
)
STREETS = ("Renmin", "Jiefang", "Zhongshan", "Chunxi", "Wenhua", "Heping", "Xinhua", "Jianshe", "Yingbin",
           "Binhe", "Hubin", "Changjiang", "Huangshan", "Taoyuan", "Qingnian", "Shuguang", "Minzhu", "Guangming")

# Opening-hours profiles: open times, close times, chance of one closed weekday, the
# weekdays it may be, and whether Friday/Saturday close later.
HOURS = {
    "restaurant": (("10:00", "10:30", "11:00"), ("21:00", "21:30", "22:00", "22:30"), 0.15, (0, 1), True),
    "hotpot": (("11:00", "11:30"), ("22:00", "23:00", "23:30"), 0.05, (1,), True),
    "cafe": (("07:30", "08:00", "09:00"), ("18:00", "20:00", "22:00"), 0.1, (0,), False),
    "bakery": (("07:00", "07:30", "08:00"), ("19:30", "20:00", "21:00"), 0.1, (0, 6), False),
    "salon": (("09:30", "10:00"), ("20:00", "21:00", "21:30"), 0.35, (0, 1), False),
    "gym": (("06:00", "06:30", "07:00"), ("21:30", "22:00", "23:00"), 0.05, (6,), False),
    "fun": (("10:00", "12:00", "14:00"), ("22:30", "23:30", "23:59"), 0.0, (), True),
    "pharmacy": (("08:00", "08:30", "00:00"), ("21:00", "22:00", "23:59"), 0.0, (), False),
    "clinic": (("08:30", "09:00"), ("17:30", "18:00"), 0.7, (6, 0), False),
    "store": (("07:00", "00:00"), ("23:00", "23:59"), 0.0, (), False),
}


@dataclass(frozen=True)
class Kind:
    """A sub-category: its parent, brands, price band, hours profile and products."""

    name: str
    parent: str
    weight: int
    brands: tuple[str, ...]
    price: tuple[int, int]
    hours: str
    products: tuple[tuple[str, float], ...]


KINDS = (
    Kind("Hotpot", "Food & Drink", 6, ("Red Lantern Hotpot", "Old Town Hotpot", "Chongqing Flame", "Spicy Cauldron",
                                       "Nine Grids Hotpot"), (80, 160), "hotpot",
         (("Spicy Beef Tallow Broth", 58), ("Mandarin Duck Pot", 68), ("Sliced Fatty Beef", 42),
          ("Hand-cut Lamb", 48), ("Beef Tripe", 36), ("Duck Blood", 18), ("Shrimp Paste", 38),
          ("Lotus Root Slices", 12), ("Brown Sugar Rice Cake", 22))),
    Kind("Noodles", "Food & Drink", 6, ("Lanzhou Beef Noodles", "Golden Bowl Noodles", "Grandma's Noodle House",
                                        "Dan Dan Corner"), (18, 40), "restaurant",
         (("Beef Noodle Soup", 22), ("Dan Dan Noodles", 16), ("Hot Dry Noodles", 12), ("Zhajiang Noodles", 18),
          ("Wonton Soup", 15), ("Braised Pork Noodles", 25), ("Cold Sesame Noodles", 14))),
    Kind("Coffee", "Food & Drink", 6, ("Morning Roast", "Bean Theory", "Slow Drip Coffee", "Cloud Cafe",
                                       "Harbour Coffee"), (28, 55), "cafe",
         (("Americano", 22), ("Latte", 28), ("Flat White", 30), ("Cappuccino", 28), ("Cold Brew", 32),
          ("Coconut Latte", 32), ("Butter Croissant", 18), ("Cheesecake Slice", 34))),
    Kind("Bakery", "Food & Drink", 4, ("Golden Crust Bakery", "Wheat & Honey", "Little Oven", "Maple Bakehouse"),
         (20, 45), "bakery",
         (("Sourdough Loaf", 32), ("Egg Tart", 8), ("Pork Floss Bun", 12), ("Matcha Roll Cake", 26),
          ("Baguette", 15), ("Birthday Cake (6 inch)", 168), ("Cream Puff", 10))),
    Kind("Sichuan Cuisine", "Food & Drink", 4, ("Bashu Kitchen", "Peppercorn House", "Jade Rabbit Sichuan"),
         (60, 120), "restaurant",
         (("Kung Pao Chicken", 42), ("Mapo Tofu", 28), ("Twice-cooked Pork", 46), ("Boiled Fish", 88),
          ("Fish-fragrant Eggplant", 32), ("Spicy Diced Rabbit", 58))),
    Kind("Barbecue", "Food & Drink", 3, ("Smoke & Skewer", "Night Market BBQ", "Charcoal King"), (60, 110),
         "hotpot",
         (("Lamb Skewers (10)", 35), ("Grilled Chicken Wings", 28), ("Grilled Oysters", 48),
          ("Grilled Eggplant", 18), ("Beef Skewers (10)", 45), ("Grilled Squid", 32))),
    Kind("Milk Tea", "Food & Drink", 4, ("Tea Leaf Lab", "Boba Garden", "Fresh Fruit Tea Co."), (15, 30), "cafe",
         (("Brown Sugar Boba Milk", 18), ("Jasmine Green Tea", 12), ("Mango Pomelo Sago", 22),
          ("Cheese Foam Oolong", 19), ("Grape Fruit Tea", 21), ("Taro Milk Tea", 17))),
    Kind("Dim Sum", "Food & Drink", 3, ("Pearl River Dim Sum", "Jade Dragon Teahouse"), (70, 130), "restaurant",
         (("Har Gow (4)", 32), ("Siu Mai (4)", 28), ("Char Siu Bao (3)", 24), ("Rice Noodle Rolls", 26),
          ("Chicken Feet", 22), ("Egg Custard Buns (3)", 24))),
    Kind("Hair Salon", "Beauty", 4, ("Style Studio", "Scissors & Comb", "Urban Hair Lab", "Mirror Salon"),
         (80, 300), "salon",
         (("Women's Haircut", 128), ("Men's Haircut", 68), ("Hair Coloring", 398), ("Perm", 468),
          ("Scalp Care", 198), ("Blow Dry", 48))),
    Kind("Nail Salon", "Beauty", 2, ("Polish Bar", "Petal Nails"), (100, 250), "salon",
         (("Gel Manicure", 158), ("Classic Pedicure", 128), ("Nail Art (per nail)", 20), ("Nail Removal", 40))),
    Kind("Spa & Massage", "Beauty", 2, ("Lotus Spa", "Calm Hands Massage"), (150, 400), "fun",
         (("Foot Massage (60 min)", 138), ("Full Body Massage (90 min)", 298), ("Aromatherapy", 358),
          ("Facial Treatment", 268))),
    Kind("Gym", "Sports & Fitness", 3, ("Iron Pulse Gym", "FitZone", "Peak Performance"), (100, 300), "gym",
         (("Day Pass", 59), ("Monthly Membership", 299), ("Annual Membership", 2399),
          ("Personal Training Session", 300), ("Spinning Class", 79))),
    Kind("Yoga Studio", "Sports & Fitness", 2, ("Zen Flow Yoga", "Sunrise Yoga"), (90, 200), "gym",
         (("Drop-in Class", 99), ("10-Class Card", 880), ("Private Session", 380), ("Hot Yoga Class", 129))),
    Kind("Cinema", "Entertainment", 2, ("Starlight Cinema", "Grand Screen IMAX"), (40, 80), "fun",
         (("2D Ticket", 45), ("3D Ticket", 55), ("IMAX Ticket", 85), ("Popcorn Combo", 39), ("Couple Seat", 110))),
    Kind("KTV", "Entertainment", 2, ("Melody KTV", "Party Box KTV"), (60, 150), "fun",
         (("Small Room (3 hours)", 168), ("Large Room (3 hours)", 388), ("Fruit Platter", 68),
          ("Beer Bucket", 98))),
    Kind("Escape Room", "Entertainment", 1, ("Locked In", "Mystery Manor"), (90, 160), "fun",
         (("Horror Theme (per person)", 138), ("Detective Theme (per person)", 118),
          ("Kids Theme (per person)", 88))),
    Kind("Pharmacy", "Health", 3, ("Kangmei Pharmacy", "Green Cross Drugstore", "Yixin Pharmacy"), (30, 80),
         "pharmacy",
         (("Ibuprofen 200mg", 18), ("Cold Relief Granules", 25), ("Vitamin C Tablets", 32),
          ("Band-Aids (20)", 9), ("Face Masks (10)", 15), ("Thermometer", 39), ("Cough Syrup", 28))),
    Kind("Dental Clinic", "Health", 1, ("Bright Smile Dental", "Pearl Dental"), (200, 600), "clinic",
         (("Teeth Cleaning", 298), ("Dental Checkup", 80), ("Tooth Filling", 450), ("Teeth Whitening", 1280))),
    Kind("Convenience Store", "Shopping", 3, ("Quick Mart", "24/7 Corner", "Daily Fresh"), (15, 35), "store",
         (("Bottled Water", 2.5), ("Instant Noodles", 5.5), ("Onigiri", 7), ("Fresh Milk (1L)", 14),
          ("Umbrella", 35), ("Phone Charger", 49))),
)
TOP_LEVEL = ("Food & Drink", "Beauty", "Sports & Fitness", "Entertainment", "Health", "Shopping")

SURNAMES = ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Zhao", "Huang", "Zhou", "Wu", "Xu", "Sun", "Ma", "Zhu")
GIVEN = ("Wei", "Fang", "Na", "Min", "Jing", "Lei", "Yan", "Jie", "Tao", "Xin", "Hui", "Lin", "Bo", "Ying")
HANDLES = ("foodie", "coffee_cat", "night_owl", "hotpot_fan", "city_walker", "lazy_panda", "sunny", "traveler")
PRAISE = ("Excellent, will come back.", "Really enjoyed it.", "Great value for money.", "Friendly staff.",
          "Clean and comfortable.")
MIXED = ("It was okay.", "Average, nothing special.", "Decent but a bit pricey.", "Had to wait a while.")
COMPLAIN = ("Very disappointing.", "Would not recommend.", "Rude staff.", "Overpriced for what you get.")
ASPECTS = {"Food & Drink": ("The {p} was fresh.", "Loved the {p}.", "The {p} was too salty."),
           "Beauty": ("The {p} took about an hour.", "Happy with the {p}."),
           "Sports & Fitness": ("Bought the {p}.", "The {p} is worth it."),
           "Entertainment": ("We got the {p}.", "The {p} was fun."),
           "Health": ("They had {p} in stock.", "Got {p} quickly."),
           "Shopping": ("Picked up {p}.", "The {p} was cheap.")}


@dataclass(frozen=True)
class Scale:
    """How many rows: cities, districts per city, merchants; products/reviews per merchant."""

    cities: int
    districts_per_city: int
    merchants: int
    products: tuple[int, int]
    reviews: tuple[int, int]


SCALES = {
    "tiny": Scale(3, 3, 60, (3, 6), (0, 8)),
    "small": Scale(6, 5, 400, (3, 8), (0, 15)),
    "medium": Scale(8, 6, 2000, (3, 8), (0, 20)),
}


@dataclass(frozen=True)
class DatabaseInfo:
    """What :func:`build_database` wrote."""

    path: Path
    db_id: str
    seed: int
    scale: str
    counts: dict[str, int] = field(default_factory=dict)
    content_hash: str = ""


def database_path(db_dir: Path) -> Path:
    """The Spider-layout path of the database under ``db_dir``."""
    return db_dir / DB_ID / f"{DB_ID}.sqlite"


def build_database(path: Path, seed: int = 0, scale: str = "small") -> DatabaseInfo:
    """Write the database to the file ``path`` (replacing it), deterministically from ``seed``.

    Raises:
        ValueError: ``scale`` is not one of :data:`SCALES`.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; pick one of {sorted(SCALES)}")
    rows = _generate(random.Random(seed), SCALES[scale])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    try:
        conn.executescript(SCHEMA)
        for table in TABLES:
            if rows[table]:
                marks = ",".join("?" * len(rows[table][0]))
                conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows[table])
        conn.commit()
        problems = conn.execute("PRAGMA foreign_key_check").fetchall()
        if problems:
            raise AssertionError(f"generated rows break foreign keys: {problems[:3]}")
    finally:
        conn.close()
    tmp.replace(path)
    counts = {table: len(rows[table]) for table in TABLES}
    return DatabaseInfo(path, DB_ID, seed, scale, counts, content_hash(path))


def content_hash(path: Path) -> str:
    """SHA-256 of every row of every table, in primary-key order."""
    digest = hashlib.sha256()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for table in TABLES:
            digest.update(table.encode())
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2"):
                digest.update(repr(row).encode())
    finally:
        conn.close()
    return digest.hexdigest()


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _minutes(hhmm: str) -> int:
    hours, mins = hhmm.split(":")
    return int(hours) * 60 + int(mins)


def _generate(rng: random.Random, scale: Scale) -> dict[str, list[tuple[object, ...]]]:
    rows: dict[str, list[tuple[object, ...]]] = {table: [] for table in TABLES}
    districts: list[tuple[int, int, str, str]] = []  # district_id, city index, name, area code
    for city_id, (name, province, population, area, names) in enumerate(CITIES[: scale.cities], start=1):
        rows["city"].append((city_id, name, province, population))
        for dname in names[: scale.districts_per_city]:
            district_id = len(districts) + 1
            districts.append((district_id, city_id, dname, area))
            rows["district"].append((district_id, city_id, dname))
    category_ids: dict[str, int] = {}
    for top in TOP_LEVEL:
        category_ids[top] = len(category_ids) + 1
        rows["category"].append((category_ids[top], top, None))
    for kind in KINDS:
        category_ids[kind.name] = len(category_ids) + 1
        rows["category"].append((category_ids[kind.name], kind.name, category_ids[kind.parent]))

    city_names = {row[0]: row[1] for row in rows["city"]}
    users = [f"{s} {g}" for s in SURNAMES for g in GIVEN[:6]]
    users += [f"{h}_{rng.randint(1, 99)}" for h in HANDLES for _ in range(4)]
    district_weights = [rng.uniform(0.5, 2.0) for _ in districts]
    taken: set[str] = set()
    for merchant_id in range(1, scale.merchants + 1):
        kind = rng.choices(KINDS, weights=[k.weight for k in KINDS])[0]
        district_id, city_id, dname, area = rng.choices(districts, weights=district_weights)[0]
        brand = rng.choice(kind.brands)
        street = rng.choice(STREETS)
        name = f"{brand} ({dname})"
        if name in taken:
            name = f"{brand} ({dname}, {street} Rd.)"
        number = 2
        while name in taken:
            name = f"{brand} ({dname} No. {number})"
            number += 1
        taken.add(name)
        level = rng.uniform(0.85, 1.25)  # how upmarket this merchant is
        avg_price = float(round(rng.uniform(*kind.price) * level))
        rating = min(5.0, max(1.0, round(rng.gauss(4.0, 0.55), 1)))
        opened_year = rng.randint(2008, 2024)
        rows["merchant"].append((
            merchant_id, name, district_id, category_ids[kind.name],
            f"No. {rng.randint(1, 399)} {street} Road, {dname} District, {city_names[city_id]}",
            f"{area}-{rng.randint(10_000_000, 99_999_999)}", avg_price, rating,
            min(20_000, int(rng.lognormvariate(5.0, 1.2))), opened_year,
        ))
        rows["opening_hours"].extend(_hours(rng, merchant_id, kind))
        products = rng.sample(kind.products, min(len(kind.products), rng.randint(*scale.products)))
        for pname, base in products:
            price = max(1.0, round(base * level * rng.uniform(0.9, 1.1) * 2) / 2)
            available = 1 if rng.random() < 0.9 else 0
            rows["product"].append((len(rows["product"]) + 1, merchant_id, pname, price, available))
        first_day = max(dt.date(2021, 1, 1), dt.date(opened_year, 1, 1))
        span = (dt.date(2024, 12, 31) - first_day).days
        for _ in range(rng.randint(*scale.reviews)):
            stars = min(5, max(1, round(rng.gauss(rating, 0.9))))
            opening = rng.choice(PRAISE if stars >= 4 else MIXED if stars == 3 else COMPLAIN)
            aspect = rng.choice(ASPECTS[kind.parent]).format(p=rng.choice(products)[0])
            day = first_day + dt.timedelta(days=rng.randint(0, span))
            rows["review"].append((len(rows["review"]) + 1, merchant_id, rng.choice(users), stars,
                                   f"{opening} {aspect}", day.isoformat()))
    return rows


def _hours(rng: random.Random, merchant_id: int, kind: Kind) -> list[tuple[object, ...]]:
    opens, closes, closed_p, closed_days, late_weekend = HOURS[kind.hours]
    open_time = rng.choice(opens)
    close_time = "23:59" if open_time == "00:00" else rng.choice(closes)
    closed = rng.choice(closed_days) if closed_days and rng.random() < closed_p else None
    out: list[tuple[object, ...]] = []
    for weekday in range(7):
        if weekday == closed:
            continue
        close = close_time
        if late_weekend and weekday in (4, 5):  # Friday and Saturday nights run later
            close = _hhmm(min(_minutes(close_time) + 60, 23 * 60 + 59))
        out.append((merchant_id, weekday, open_time, close))
    return out


# ---- reading it back, for the question templates ----------------------------------

@dataclass(frozen=True)
class Merchant:
    """The columns of a merchant that templates need."""

    merchant_id: int
    name: str
    district: str
    city: str
    category: str
    rating: float
    review_count: int


@dataclass
class Pool:
    """The rows templates may draw slot values from (the merchants of some cities)."""

    cities: list[str]
    districts: dict[str, str]                 # district -> city
    merchants: list[Merchant]
    products: dict[int, list[tuple[str, float, int]]]
    hours: dict[int, dict[int, tuple[str, str]]]
    review_stars: dict[int, list[int]]
    years: list[int] = field(default_factory=lambda: [2021, 2022, 2023, 2024])

    def in_city(self, city: str, category: str | None = None) -> list[Merchant]:
        """Merchants of ``city`` (and ``category``)."""
        return [m for m in self.merchants if m.city == city and category in (None, m.category)]

    def in_district(self, district: str) -> list[Merchant]:
        """Merchants of ``district``."""
        return [m for m in self.merchants if m.district == district]

    def categories(self, city: str) -> list[str]:
        """Sub-categories with merchants in ``city``, sorted."""
        return sorted({m.category for m in self.in_city(city)})


def load_pool(conn: sqlite3.Connection, cities: list[str] | None) -> Pool:
    """The merchants (with products, hours, review stars) of ``cities``; all when None."""
    merchants = [
        Merchant(*row) for row in conn.execute(
            "SELECT m.merchant_id, m.name, d.name, ci.name, c.name, m.rating, m.review_count "
            "FROM merchant AS m JOIN district AS d ON m.district_id = d.district_id "
            "JOIN city AS ci ON d.city_id = ci.city_id JOIN category AS c ON m.category_id = c.category_id "
            "ORDER BY m.merchant_id")
        if cities is None or row[3] in cities
    ]
    ids = {m.merchant_id for m in merchants}
    districts = {d: c for d, c in conn.execute(
        "SELECT d.name, ci.name FROM district AS d JOIN city AS ci ON d.city_id = ci.city_id ORDER BY d.district_id")
        if cities is None or c in cities}
    products: dict[int, list[tuple[str, float, int]]] = defaultdict(list)
    for mid, name, price, available in conn.execute(
            "SELECT merchant_id, name, price, is_available FROM product ORDER BY product_id"):
        if mid in ids:
            products[mid].append((name, price, available))
    hours: dict[int, dict[int, tuple[str, str]]] = defaultdict(dict)
    for mid, day, start, end in conn.execute("SELECT * FROM opening_hours ORDER BY merchant_id, weekday"):
        if mid in ids:
            hours[mid][day] = (start, end)
    stars: dict[int, list[int]] = defaultdict(list)
    for mid, rating in conn.execute("SELECT merchant_id, rating FROM review ORDER BY review_id"):
        if mid in ids:
            stars[mid].append(rating)
    return Pool(sorted({m.city for m in merchants}), districts, merchants, dict(products), dict(hours),
                dict(stars))


def place_names() -> list[str]:
    """Every city and district name of the local-services world (both sides of the split)."""
    return sorted({name for city, _province, _pop, _area, districts in CITIES for name in (city, *districts)})


def place_pattern(names: list[str]) -> re.Pattern[str]:
    """Whole-word matches of ``names``, each also as written inside an SQL literal (``Xi''an``)."""
    forms = {form for n in names for form in (n, n.replace("'", "''"))}
    return re.compile(r"\b(?:" + "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)) + r")\b")


_PLACES = place_pattern(place_names())


def place_neutral(text: str) -> str:
    """``text`` with every city and district name cut out (a business area keeps its suffix): what a
    tokenizer of this world learns from.

    The splits hold out whole cities, and the demonstrations name only train cities. A BPE trained on
    them learns ``Chengdu`` and ``Qingyang`` as single tokens while ``Nanjing`` and ``Xuanwu`` stay
    in pieces, so copying a held-out name would be a different act (four rare pieces) from copying a
    train name (one familiar token), and neither SFT nor RL would ever practise it. Without the names
    every place, train or held-out, is spelled in the same kind of short pieces.
    """
    return _PLACES.sub("", text)
