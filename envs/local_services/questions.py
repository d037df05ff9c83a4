"""Natural-language questions with gold SQL over the local-services database.

Each template draws its slot values from the rows of the database, and a draw is kept
only if its gold query runs and returns a non-empty, non-trivial result. The split is
decided up front, from the seed, and held-out questions carry their slice:

- **train**: the shared templates over the train cities (two thirds of them); no train
  question names a held-out place, in its text, its SQL or its gold rows;
- **a, in-distribution**: drawn with the train questions as one set, then held out of it at
  random: the train templates and cities, each question a template-value tuple that no train
  question has, every string literal of its gold SQL one that some train question's SQL has;
- **b, unseen values**: shared templates over the held-out cities: every question names a
  city or district that no train question shows;
- **c, unseen templates**: the held-out-only templates (:data:`HELDOUT_ONLY`) over the train
  cities, so that the template is the only new thing;
- no question text appears twice.
"""

from __future__ import annotations

import random
import re
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.local_services.database import DB_ID, Merchant, Pool, load_pool, place_pattern
from rlyard.geo import WEEKDAYS

DIFFICULTIES = ("single_table", "join", "aggregate", "nested")
MAX_RESULT_ROWS = 100


# A draw: question, gold SQL, slot values (by slot name)
Draft = tuple[str, str, dict[str, str]]
Sampler = Callable[[random.Random, Pool], Draft | None]
# Whether to keep a draw of a template (by name), given its gold rows
Accept = Callable[[str, Draft, list[tuple[Any, ...]]], bool]

# The held-out slices, in report order, and what each holds out.
SLICES = ("a", "b", "c")
SLICE_NAMES = {"a": "in-distribution", "b": "unseen values", "c": "unseen templates"}
_LITERAL = re.compile(r"'((?:[^']|'')*)'")


@dataclass(frozen=True)
class Template:
    """A question pattern with its difficulty and whether only held-out uses it."""

    name: str
    difficulty: str
    sample: Sampler
    heldout_only: bool = False


def q(text: str) -> str:
    """An SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


# Joins reused by many gold queries.
M_D_C = ("FROM merchant AS m JOIN district AS d ON m.district_id = d.district_id "
         "JOIN city AS ci ON d.city_id = ci.city_id")
M_CAT = "JOIN category AS c ON m.category_id = c.category_id"


def _merchant(rng: random.Random, pool: Pool) -> Merchant:
    return rng.choice(pool.merchants)


def _city_category(rng: random.Random, pool: Pool) -> tuple[str, str]:
    city = rng.choice(pool.cities)
    return city, rng.choice(pool.categories(city))


def _district(rng: random.Random, pool: Pool) -> tuple[str, str]:
    district = rng.choice(sorted(pool.districts))
    return district, pool.districts[district]


# ---- single table -------------------------------------------------------------------

def merchant_phone(rng: random.Random, pool: Pool) -> Draft:
    m = _merchant(rng, pool)
    return (f"What is the phone number of {m.name}?",
            f"SELECT phone FROM merchant WHERE name = {q(m.name)}", {"merchant": m.name, "city": m.city})


def merchant_avg_price(rng: random.Random, pool: Pool) -> Draft:
    m = _merchant(rng, pool)
    return (f"How much does a visit to {m.name} cost per person on average?",
            f"SELECT avg_price FROM merchant WHERE name = {q(m.name)}", {"merchant": m.name, "city": m.city})


def merchant_opened_year(rng: random.Random, pool: Pool) -> Draft:
    m = _merchant(rng, pool)
    return (f"In which year did {m.name} open, and where is it?",
            f"SELECT opened_year, address FROM merchant WHERE name = {q(m.name)}",
            {"merchant": m.name, "city": m.city})


def city_population(rng: random.Random, pool: Pool) -> Draft:
    city = rng.choice(pool.cities)
    return (f"What is the population of {city}, and which province is it in?",
            f"SELECT population, province FROM city WHERE name = {q(city)}", {"city": city})


def popular_top_rated(rng: random.Random, pool: Pool) -> Draft:
    rating = rng.choice((4.5, 4.6, 4.7, 4.8, 4.9))
    reviews = rng.choice((200, 300, 500, 800, 1000, 1500))
    return (f"Which merchants have a rating of at least {rating} and more than {reviews} reviews? "
            "List them from the highest rated.",
            f"SELECT name, rating FROM merchant WHERE rating >= {rating} AND review_count > {reviews} "
            "ORDER BY rating DESC", {"rating": str(rating), "reviews": str(reviews)})


# ---- joins --------------------------------------------------------------------------

def category_in_district(rng: random.Random, pool: Pool) -> Draft:
    m = _merchant(rng, pool)
    return (f"List the {m.category} merchants in the {m.district} district.",
            f"SELECT m.name FROM merchant AS m JOIN district AS d ON m.district_id = d.district_id {M_CAT} "
            f"WHERE d.name = {q(m.district)} AND c.name = {q(m.category)}",
            {"district": m.district, "category": m.category, "city": m.city})


def products_cheaper_than(rng: random.Random, pool: Pool) -> Draft | None:
    m = _merchant(rng, pool)
    prices = sorted(p[1] for p in pool.products.get(m.merchant_id, []))
    if len(prices) < 2:
        return None
    limit = int(rng.choice(prices[1:])) + 1
    return (f"List the products of {m.name} cheaper than {limit} yuan, from cheapest.",
            "SELECT p.name, p.price FROM product AS p JOIN merchant AS m ON p.merchant_id = m.merchant_id "
            f"WHERE m.name = {q(m.name)} AND p.price < {limit} ORDER BY p.price",
            {"merchant": m.name, "price": str(limit), "city": m.city})


def hours_on_day(rng: random.Random, pool: Pool) -> Draft:
    m = _merchant(rng, pool)
    day = rng.randrange(7)
    return (f"What are the opening hours of {m.name} on {WEEKDAYS[day]}?",
            "SELECT o.open_time, o.close_time FROM opening_hours AS o JOIN merchant AS m "
            f"ON o.merchant_id = m.merchant_id WHERE m.name = {q(m.name)} AND o.weekday = {day}",
            {"merchant": m.name, "weekday": WEEKDAYS[day], "city": m.city})


def open_at_time(rng: random.Random, pool: Pool) -> Draft:
    city, category = _city_category(rng, pool)
    day = rng.randrange(7)
    time = rng.choice(("07:30", "09:00", "12:00", "18:00", "21:00", "22:00", "23:00"))
    return (f"Which {category} merchants in {city} are open at {time} on {WEEKDAYS[day]}?",
            f"SELECT m.name {M_D_C} {M_CAT} JOIN opening_hours AS o ON o.merchant_id = m.merchant_id "
            f"WHERE ci.name = {q(city)} AND c.name = {q(category)} AND o.weekday = {day} "
            f"AND o.open_time <= '{time}' AND o.close_time > '{time}'",
            {"city": city, "category": category, "weekday": WEEKDAYS[day], "time": time})


def product_sellers(rng: random.Random, pool: Pool) -> Draft | None:
    m = _merchant(rng, pool)
    products = pool.products.get(m.merchant_id)
    if not products:
        return None
    product = rng.choice(products)[0]
    return (f"Which merchants in {m.city} sell {product}, and at what price?",
            f"SELECT m.name, p.price FROM product AS p JOIN merchant AS m ON p.merchant_id = m.merchant_id "
            "JOIN district AS d ON m.district_id = d.district_id JOIN city AS ci ON d.city_id = ci.city_id "
            f"WHERE ci.name = {q(m.city)} AND p.name = {q(product)}",
            {"product": product, "city": m.city})


def reviews_with_stars(rng: random.Random, pool: Pool) -> Draft | None:
    m = _merchant(rng, pool)
    stars = pool.review_stars.get(m.merchant_id)
    if not stars:
        return None
    star = rng.choice(stars)
    return (f"Show who wrote the {star}-star reviews of {m.name} and when, newest first.",
            "SELECT r.user_name, r.created_at FROM review AS r JOIN merchant AS m ON r.merchant_id = m.merchant_id "
            f"WHERE m.name = {q(m.name)} AND r.rating = {star} ORDER BY r.created_at DESC",
            {"merchant": m.name, "stars": str(star), "city": m.city})


def top_rated_in_city(rng: random.Random, pool: Pool) -> Draft | None:
    city, category = _city_category(rng, pool)
    ratings = sorted((m.rating for m in pool.in_city(city, category)), reverse=True)
    if len(ratings) > 1 and ratings[0] == ratings[1]:
        return None  # a tie would make "the" merchant ambiguous
    return (f"Which {category} merchant in {city} has the highest rating?",
            f"SELECT m.name, m.rating {M_D_C} {M_CAT} WHERE ci.name = {q(city)} AND c.name = {q(category)} "
            "ORDER BY m.rating DESC LIMIT 1", {"city": city, "category": category})


# ---- aggregates ---------------------------------------------------------------------

def count_in_district(rng: random.Random, pool: Pool) -> Draft:
    district, city = _district(rng, pool)
    return (f"How many merchants are there in the {district} district of {city}?",
            "SELECT COUNT(*) FROM merchant AS m JOIN district AS d ON m.district_id = d.district_id "
            f"WHERE d.name = {q(district)}", {"district": district, "city": city})


def avg_price_in_city(rng: random.Random, pool: Pool) -> Draft:
    city, category = _city_category(rng, pool)
    return (f"What is the average price per person of {category} merchants in {city}?",
            f"SELECT AVG(m.avg_price) {M_D_C} {M_CAT} WHERE ci.name = {q(city)} AND c.name = {q(category)}",
            {"city": city, "category": category})


def districts_with_many(rng: random.Random, pool: Pool) -> Draft | None:
    city, category = _city_category(rng, pool)
    counts = sorted({sum(1 for m in pool.in_city(city, category) if m.district == d)
                     for d, c in pool.districts.items() if c == city})
    if counts[-1] < 2:
        return None
    k = rng.choice([c for c in counts if 1 <= c < counts[-1]] or [1])
    return (f"Which districts of {city} have more than {k} {category} merchants?",
            f"SELECT d.name, COUNT(*) {M_D_C} {M_CAT} WHERE ci.name = {q(city)} AND c.name = {q(category)} "
            f"GROUP BY d.district_id HAVING COUNT(*) > {k}", {"city": city, "category": category, "k": str(k)})


def category_counts(rng: random.Random, pool: Pool) -> Draft:
    city = rng.choice(pool.cities)
    return (f"How many merchants of each category does {city} have? Most common first.",
            f"SELECT c.name, COUNT(*) {M_D_C} {M_CAT} WHERE ci.name = {q(city)} "
            "GROUP BY c.category_id ORDER BY COUNT(*) DESC", {"city": city})


def avg_review_stars(rng: random.Random, pool: Pool) -> Draft:
    m = _merchant(rng, pool)
    return (f"What is the average star rating of the reviews of {m.name}, and how many are there?",
            "SELECT AVG(r.rating), COUNT(*) FROM review AS r JOIN merchant AS m ON r.merchant_id = m.merchant_id "
            f"WHERE m.name = {q(m.name)}", {"merchant": m.name, "city": m.city})


def most_products(rng: random.Random, pool: Pool) -> Draft | None:
    district, city = _district(rng, pool)
    counts = sorted((sum(p[2] for p in pool.products.get(m.merchant_id, [])) for m in pool.in_district(district)),
                    reverse=True)
    if not counts or (len(counts) > 1 and counts[0] == counts[1]):
        return None
    return (f"Which merchant in the {district} district has the most products available?",
            "SELECT m.name, COUNT(*) FROM product AS p JOIN merchant AS m ON p.merchant_id = m.merchant_id "
            "JOIN district AS d ON m.district_id = d.district_id "
            f"WHERE d.name = {q(district)} AND p.is_available = 1 "
            "GROUP BY m.merchant_id ORDER BY COUNT(*) DESC LIMIT 1", {"district": district, "city": city})


def cheapest_category(rng: random.Random, pool: Pool) -> Draft:
    city = rng.choice(pool.cities)
    return (f"Which category of merchant has the lowest average price per person in {city}?",
            f"SELECT c.name, AVG(m.avg_price) {M_D_C} {M_CAT} WHERE ci.name = {q(city)} "
            "GROUP BY c.category_id ORDER BY AVG(m.avg_price) LIMIT 1", {"city": city})


def reviews_in_year(rng: random.Random, pool: Pool) -> Draft:
    city, category = _city_category(rng, pool)
    year = rng.choice(pool.years)
    return (f"How many reviews did {category} merchants in {city} receive in {year}?",
            f"SELECT COUNT(*) FROM review AS r JOIN merchant AS m ON r.merchant_id = m.merchant_id "
            "JOIN district AS d ON m.district_id = d.district_id JOIN city AS ci ON d.city_id = ci.city_id "
            f"{M_CAT} WHERE ci.name = {q(city)} AND c.name = {q(category)} AND r.created_at LIKE '{year}-%'",
            {"city": city, "category": category, "year": str(year)})


# ---- nested -------------------------------------------------------------------------

def closed_on_day(rng: random.Random, pool: Pool) -> Draft:
    city, category = _city_category(rng, pool)
    day = rng.randrange(7)
    return (f"Which {category} merchants in {city} are closed on {WEEKDAYS[day]}?",
            f"SELECT m.name {M_D_C} {M_CAT} WHERE ci.name = {q(city)} AND c.name = {q(category)} "
            f"AND m.merchant_id NOT IN (SELECT merchant_id FROM opening_hours WHERE weekday = {day})",
            {"city": city, "category": category, "weekday": WEEKDAYS[day]})


def pricier_than_average(rng: random.Random, pool: Pool) -> Draft:
    city, category = _city_category(rng, pool)
    return (f"Which {category} merchants in {city} cost more per person than the average {category} merchant "
            "across all cities?",
            f"SELECT m.name, m.avg_price {M_D_C} {M_CAT} WHERE ci.name = {q(city)} AND c.name = {q(category)} "
            "AND m.avg_price > (SELECT AVG(m2.avg_price) FROM merchant AS m2 JOIN category AS c2 "
            f"ON m2.category_id = c2.category_id WHERE c2.name = {q(category)})",
            {"city": city, "category": category})


def above_district_rating(rng: random.Random, pool: Pool) -> Draft:
    district, city = _district(rng, pool)
    return (f"Which merchants in the {district} district are rated above the district's average rating?",
            "SELECT m.name, m.rating FROM merchant AS m JOIN district AS d ON m.district_id = d.district_id "
            f"WHERE d.name = {q(district)} AND m.rating > (SELECT AVG(m2.rating) FROM merchant AS m2 "
            "WHERE m2.district_id = d.district_id)", {"district": district, "city": city})


def cheapest_seller(rng: random.Random, pool: Pool) -> Draft | None:
    m = _merchant(rng, pool)
    products = pool.products.get(m.merchant_id)
    if not products:
        return None
    product = rng.choice(products)[0]
    in_city = ("JOIN merchant AS m ON p.merchant_id = m.merchant_id JOIN district AS d "
               "ON m.district_id = d.district_id JOIN city AS ci ON d.city_id = ci.city_id "
               f"WHERE ci.name = {q(m.city)} AND p.name = {q(product)}")
    return (f"Which merchant in {m.city} sells {product} at the lowest price?",
            f"SELECT m.name, p.price FROM product AS p {in_city} AND p.price = "
            f"(SELECT MIN(p.price) FROM product AS p {in_city})", {"product": product, "city": m.city})


def no_low_reviews(rng: random.Random, pool: Pool) -> Draft:
    city, category = _city_category(rng, pool)
    stars = rng.choice((2, 3))
    return (f"Which {category} merchants in {city} have never received a review below {stars} stars?",
            f"SELECT m.name {M_D_C} {M_CAT} WHERE ci.name = {q(city)} AND c.name = {q(category)} "
            f"AND m.merchant_id NOT IN (SELECT merchant_id FROM review WHERE rating < {stars})",
            {"city": city, "category": category, "stars": str(stars)})


def late_and_no_one_star(rng: random.Random, pool: Pool) -> Draft:
    district, city = _district(rng, pool)
    day = rng.randrange(7)
    time = rng.choice(("21:00", "22:00", "23:00"))
    return (f"Which merchants in the {district} district are open until at least {time} on {WEEKDAYS[day]} "
            "and have never received a 1-star review?",
            "SELECT m.name FROM merchant AS m JOIN district AS d ON m.district_id = d.district_id "
            "JOIN opening_hours AS o ON o.merchant_id = m.merchant_id "
            f"WHERE d.name = {q(district)} AND o.weekday = {day} AND o.close_time >= '{time}' "
            "AND m.merchant_id NOT IN (SELECT merchant_id FROM review WHERE rating = 1)",
            {"district": district, "city": city, "weekday": WEEKDAYS[day], "time": time})


def pricier_products(rng: random.Random, pool: Pool) -> Draft:
    m = _merchant(rng, pool)
    of_m = f"JOIN merchant AS m ON p.merchant_id = m.merchant_id WHERE m.name = {q(m.name)}"
    return (f"Which products of {m.name} cost more than its average product price?",
            f"SELECT p.name, p.price FROM product AS p {of_m} AND p.price > "
            f"(SELECT AVG(p.price) FROM product AS p {of_m})", {"merchant": m.name, "city": m.city})


TEMPLATES = (
    Template("merchant_phone", "single_table", merchant_phone),
    Template("merchant_avg_price", "single_table", merchant_avg_price),
    Template("merchant_opened_year", "single_table", merchant_opened_year, heldout_only=True),
    Template("city_population", "single_table", city_population),
    Template("popular_top_rated", "single_table", popular_top_rated),
    Template("category_in_district", "join", category_in_district),
    Template("products_cheaper_than", "join", products_cheaper_than),
    Template("hours_on_day", "join", hours_on_day),
    Template("open_at_time", "join", open_at_time),
    Template("product_sellers", "join", product_sellers),
    Template("reviews_with_stars", "join", reviews_with_stars, heldout_only=True),
    Template("top_rated_in_city", "join", top_rated_in_city),
    Template("count_in_district", "aggregate", count_in_district),
    Template("avg_price_in_city", "aggregate", avg_price_in_city),
    Template("districts_with_many", "aggregate", districts_with_many),
    Template("category_counts", "aggregate", category_counts),
    Template("avg_review_stars", "aggregate", avg_review_stars),
    Template("most_products", "aggregate", most_products),
    Template("cheapest_category", "aggregate", cheapest_category, heldout_only=True),
    Template("reviews_in_year", "aggregate", reviews_in_year),
    Template("closed_on_day", "nested", closed_on_day),
    Template("pricier_than_average", "nested", pricier_than_average),
    Template("above_district_rating", "nested", above_district_rating, heldout_only=True),
    Template("cheapest_seller", "nested", cheapest_seller),
    Template("no_low_reviews", "nested", no_low_reviews),
    Template("late_and_no_one_star", "nested", late_and_no_one_star, heldout_only=True),
    Template("pricier_products", "nested", pricier_products),
)
HELDOUT_ONLY = tuple(t.name for t in TEMPLATES if t.heldout_only)


@dataclass(frozen=True)
class HeldoutSizes:
    """How many held-out questions each slice gets (``SLICES``)."""

    a: int = 100
    b: int = 40
    c: int = 20

    def __post_init__(self) -> None:
        for name in SLICES:
            if getattr(self, name) < 0:
                raise ValueError(f"held-out slice {name} needs a count >= 0 (got {getattr(self, name)})")

    @property
    def total(self) -> int:
        """All held-out questions."""
        return self.a + self.b + self.c

    def counts(self) -> dict[str, int]:
        """``{slice: count}`` in ``SLICES`` order."""
        return {name: getattr(self, name) for name in SLICES}


DEFAULT_HELDOUT = HeldoutSizes()


@dataclass
class TaskSplit:
    """Train and held-out tasks, and how they were split (local-services held-out tasks carry their ``slice``)."""

    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    info: dict[str, Any]


def sql_literals(query: str) -> list[str]:
    """The string literals of an SQL query, as written between the quotes (``Xi''an`` stays doubled)."""
    return _LITERAL.findall(query)


def generate_tasks(db_path: Path, seed: int = 0, n_train: int = 200,
                   heldout: HeldoutSizes = DEFAULT_HELDOUT) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and held-out tasks ``{task_id, db_id, question, query, template, difficulty, slots}``
    (held-out ones with ``slice`` too)."""
    split = generate_split(db_path, seed, n_train, heldout)
    return split.train, split.heldout


def generate_split(db_path: Path, seed: int = 0, n_train: int = 200,
                   heldout: HeldoutSizes = DEFAULT_HELDOUT) -> TaskSplit:
    """Like :func:`generate_tasks`, with ``info``: templates, cities, places and slice counts.

    Train with slice a, then b, then c, all from one ``random.Random(seed)``: the same seed and
    sizes give the same questions and labels.

    Raises:
        RuntimeError: the database cannot supply that many distinct valid questions.
    """
    rng = random.Random(seed)
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        full = load_pool(conn, None)
        heldout_cities = sorted(rng.sample(full.cities, max(1, len(full.cities) // 3)))
        train_cities = [c for c in full.cities if c not in heldout_cities]
        train_pool, heldout_pool = load_pool(conn, train_cities), load_pool(conn, heldout_cities)
        heldout_places = sorted({*heldout_cities, *(d for d, c in full.districts.items() if c in heldout_cities)})
        names_heldout_place = place_pattern(heldout_places).search

        def clean(_template: str, draft: Draft, rows: list[tuple[Any, ...]]) -> bool:
            """No held-out place in the question, the SQL or the rows (a demonstration shows them)."""
            return not any(names_heldout_place(text) for text in (draft[0], draft[1], repr(rows)))

        shared = [t for t in TEMPLATES if not t.heldout_only]
        only = [t for t in TEMPLATES if t.heldout_only]
        seen: set[str] = set()
        # Train and slice a are drawn alike, as one set; a is then held out of it at random.
        drawn = _fill("train", n_train + heldout.a, shared, train_pool, rng, conn, seen, clean)
        train, in_distribution = _hold_out(drawn, heldout.a, rng)

        def unseen_place(_template: str, draft: Draft, _rows: list[tuple[Any, ...]]) -> bool:
            return bool(names_heldout_place(draft[0]))

        slices = {
            "a": in_distribution,
            "b": _fill("heldout_b", heldout.b, shared, heldout_pool, rng, conn, seen, unseen_place),
            "c": _fill("heldout_c", heldout.c, only, train_pool, rng, conn, seen, clean),
        }
    finally:
        conn.close()
    tasks = [{**task, "task_id": f"{DB_ID}_heldout_{name}_{i:05d}", "slice": name}
             for name in SLICES for i, task in enumerate(slices[name])]
    info = {
        "seed": seed,
        "heldout_only_templates": list(HELDOUT_ONLY),
        "shared_templates": [t.name for t in shared],
        "train_cities": train_cities,
        "heldout_cities": heldout_cities,
        "heldout_places": heldout_places,
        "slices": {name: len(slices[name]) for name in SLICES},
        "slice_names": dict(SLICE_NAMES),
        "n_train": len(train),
        "n_heldout": len(tasks),
    }
    return TaskSplit(train, tasks, info)


def template_values(task: dict[str, Any]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A question's template-value tuple: its template and its slot values."""
    return task["template"], tuple(sorted(task["slots"].items()))


def _hold_out(tasks: list[dict[str, Any]], n: int,
              rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``tasks`` split into the rest and ``n`` of them picked at random, each with a template-value
    tuple that no other task has and only string literals that some task of the rest has.

    Raises:
        RuntimeError: fewer than ``n`` tasks qualify.
    """
    literals = Counter(v for t in tasks for v in set(sql_literals(t["query"])))
    keys = Counter(template_values(t) for t in tasks)
    order = list(range(len(tasks)))
    rng.shuffle(order)
    picked: set[int] = set()
    for i in order:
        if len(picked) == n:
            break
        own = set(sql_literals(tasks[i]["query"]))
        if keys[template_values(tasks[i])] > 1 or any(literals[v] < 2 for v in own):
            continue                # held out, it would take a value (or its tuple) out of training
        literals.subtract(own)
        picked.add(i)
    if len(picked) < n:
        raise RuntimeError(f"only {len(picked)} of {n} in-distribution questions have values seen in training; "
                           "ask for fewer or for more train questions")
    rest = [t for i, t in enumerate(tasks) if i not in picked]
    return ([{**t, "task_id": f"{DB_ID}_train_{i:05d}"} for i, t in enumerate(rest)],
            [tasks[i] for i in sorted(picked)])


def _fill(split: str, n: int, templates: list[Template], pool: Pool, rng: random.Random, conn: sqlite3.Connection,
          seen: set[str], accept: Accept) -> list[dict[str, Any]]:
    """``n`` tasks over ``pool``, cycling through ``templates`` (a template that has no new question
    left is skipped), each draw kept only if ``accept`` takes it."""
    tasks: list[dict[str, Any]] = []
    failures = 0
    i = 0
    while len(tasks) < n:
        template = templates[i % len(templates)]
        i += 1
        draft = _draw(template, pool, rng, conn, seen, accept)
        if draft is None:
            failures += 1  # consecutive: every template came up empty several times over
            if failures > 3 * len(templates):
                raise RuntimeError(f"could only make {len(tasks)} of {n} distinct {split} questions; "
                                   "ask for fewer or build a larger scale")
            continue
        failures = 0
        question, query, slots = draft
        seen.add(question)
        tasks.append({"task_id": f"{DB_ID}_{split}_{len(tasks):05d}", "db_id": DB_ID, "question": question,
                      "query": query, "template": template.name, "difficulty": template.difficulty,
                      "slots": slots})
    return tasks


def _draw(template: Template, pool: Pool, rng: random.Random, conn: sqlite3.Connection, seen: set[str],
          accept: Accept, attempts: int = 30) -> Draft | None:
    """A new question whose gold query returns a useful result and that ``accept`` takes, or None."""
    for _ in range(attempts):
        draft = template.sample(rng, pool)
        if draft is None or draft[0] in seen:
            continue
        rows = conn.execute(draft[1]).fetchmany(MAX_RESULT_ROWS + 1)
        if rows and len(rows) <= MAX_RESULT_ROWS and rows[0][0] not in (None, 0) and accept(template.name, draft, rows):
            return draft
    return None
