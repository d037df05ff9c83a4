"""The POI corpus as the tools read it: full records from SQLite by ``poi_id``, and the columns that
structured filters and distances need as numpy arrays (one vectorised pass over 150,000 POIs).

The corpus is what ``python -m envs.local_services.poi_corpus`` writes (``poi.sqlite``); its version
(the SHA-256 of its JSONL) names the indexes built from it.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlyard import geo

DB_NAME = "poi.sqlite"
_EARTH_M = 6_371_000.0


class FilterError(ValueError):
    """A filter the corpus cannot apply (unknown city, bad time); the message says what is valid."""


def minutes(hhmm: str) -> int:
    """Minutes after midnight of ``'HH:MM'``; FilterError says the form it wants."""
    try:
        return geo.minutes(hhmm)
    except ValueError as exc:
        raise FilterError(str(exc)) from None


def weekday_index(day: str | int) -> int:
    """0 = Monday ... 6 = Sunday from a number or a day name; FilterError says what is valid."""
    try:
        return geo.weekday_index(day)
    except ValueError as exc:
        raise FilterError(str(exc)) from None


@dataclass(frozen=True)
class PoiFilter:
    """Structured conditions a POI must meet; None means no condition. ``category`` matches a
    top-level category or a sub-category; names match case-insensitively."""

    city: str | None = None
    district: str | None = None
    business_area: str | None = None
    category: str | None = None
    min_price: float | None = None       # average spend per person, yuan
    max_price: float | None = None
    min_rating: float | None = None
    open_at: str | None = None           # 'HH:MM'
    weekday: str | int | None = None     # with open_at: open that day too

    def is_empty(self) -> bool:
        """No condition at all."""
        return all(getattr(self, f) is None for f in self.__dataclass_fields__)


@dataclass
class PoiColumns:
    """Per-POI arrays in corpus order (row ``i`` is ``poi_ids[i]``)."""

    poi_ids: np.ndarray          # str
    city: np.ndarray             # int16 codes into ``vocab['city']``
    district: np.ndarray
    business_area: np.ndarray
    category: np.ndarray
    subcategory: np.ndarray
    avg_price: np.ndarray        # float32
    rating: np.ndarray           # float32
    open_min: np.ndarray         # int16, minutes after midnight
    close_min: np.ndarray
    closed_weekday: np.ndarray   # int8, -1: open every day
    lat: np.ndarray              # float64
    lng: np.ndarray
    vocab: dict[str, dict[str, int]]   # column -> lower-case name -> code
    names: dict[str, list[str]]        # column -> code -> name as written

    def __len__(self) -> int:
        return len(self.poi_ids)

    @functools.cached_property
    def rows_by_id(self) -> dict[str, int]:
        """poi_id -> row (built once, on first use)."""
        return {str(p): i for i, p in enumerate(self.poi_ids.tolist())}

    def row_of(self, poi_id: str) -> int | None:
        """The row of ``poi_id``, or None when the corpus has no such POI."""
        return self.rows_by_id.get(poi_id)

    def _code(self, column: str, value: str) -> int:
        code = self.vocab[column].get(value.strip().lower())
        if code is None:
            known = self.names[column]
            shown = ", ".join(known[:30]) + (", …" if len(known) > 30 else "")
            raise FilterError(f"unknown {column.replace('_', ' ')} {value!r}; known: {shown}")
        return code

    def mask(self, f: PoiFilter) -> np.ndarray:
        """Boolean array: which POIs meet every condition of ``f``."""
        keep = np.ones(len(self), dtype=bool)
        for column in ("city", "district", "business_area"):
            value = getattr(f, column)
            if value is not None:
                keep &= getattr(self, column) == self._code(column, value)
        if f.category is not None:
            text = f.category.strip().lower()
            if text in self.vocab["subcategory"]:
                keep &= self.subcategory == self.vocab["subcategory"][text]
            elif text in self.vocab["category"]:
                keep &= self.category == self.vocab["category"][text]
            else:
                known = sorted(self.names["category"] + self.names["subcategory"])
                raise FilterError(f"unknown category {f.category!r}; known: {', '.join(known)}")
        if f.min_price is not None:
            keep &= self.avg_price >= f.min_price
        if f.max_price is not None:
            keep &= self.avg_price <= f.max_price
        if f.min_rating is not None:
            keep &= self.rating >= f.min_rating
        if f.open_at is not None:
            at = minutes(f.open_at)
            keep &= (self.open_min <= at) & (at < self.close_min)
            if f.weekday is not None:
                keep &= self.closed_weekday != weekday_index(f.weekday)
        elif f.weekday is not None:
            keep &= self.closed_weekday != weekday_index(f.weekday)
        return keep

    def distances_m(self, lat: float, lng: float) -> np.ndarray:
        """Great-circle distance of every POI from ``(lat, lng)``, metres."""
        p1, p2 = np.radians(lat), np.radians(self.lat)
        a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(self.lng - lng) / 2) ** 2
        return 2 * _EARTH_M * np.arcsin(np.sqrt(np.minimum(1.0, a)))


_RECORD_COLUMNS = ("poi_id", "name", "brand", "city", "district", "business_area", "category", "subcategory",
                   "address", "business_hours", "open_time", "close_time", "closed_weekday", "rating",
                   "review_count", "avg_price", "price_range", "specialties", "tags", "facilities", "description",
                   "lat", "lng")


class PoiStore:
    """Read-only access to a corpus database; safe to use from the tool server's worker threads."""

    def __init__(self, db_path: Path) -> None:
        if not db_path.is_file():
            raise FileNotFoundError(
                f"no POI corpus at {db_path}; build it with `python -m envs.local_services.poi_corpus --out "
                f"{db_path.parent}` (or point RLYARD_TOOLS_POI_DIR at one)")
        self.db_path = db_path
        self._local = threading.local()
        row = self._conn().execute("SELECT value FROM corpus_meta WHERE key = 'version'").fetchone()
        if row is None:
            raise ValueError(f"{db_path} records no corpus version; rebuild it")
        self.version: str = row[0]
        self._columns: PoiColumns | None = None
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, check_same_thread=False)
            self._local.conn = conn
        return conn

    def columns(self) -> PoiColumns:
        """The filter and distance columns (loaded once, ~1 s for 150,000 POIs)."""
        with self._lock:
            if self._columns is None:
                self._columns = self._load_columns()
            return self._columns

    def _load_columns(self) -> PoiColumns:
        rows = self._conn().execute(
            "SELECT poi_id, city, district, business_area, category, subcategory, avg_price, rating, open_time, "
            "close_time, closed_weekday, lat, lng FROM poi ORDER BY rowid").fetchall()
        vocab: dict[str, dict[str, int]] = {}
        names: dict[str, list[str]] = {}
        coded: dict[str, np.ndarray] = {}
        for index, column in enumerate(("city", "district", "business_area", "category", "subcategory"), start=1):
            values = sorted({r[index] for r in rows})
            names[column] = values
            vocab[column] = {v.lower(): i for i, v in enumerate(values)}
            coded[column] = np.array([vocab[column][r[index].lower()] for r in rows], dtype=np.int16)
        return PoiColumns(
            poi_ids=np.array([r[0] for r in rows]),
            avg_price=np.array([r[6] for r in rows], dtype=np.float32),
            rating=np.array([r[7] for r in rows], dtype=np.float32),
            open_min=np.array([minutes(r[8]) for r in rows], dtype=np.int16),
            close_min=np.array([minutes(r[9]) for r in rows], dtype=np.int16),
            closed_weekday=np.array([-1 if r[10] is None else r[10] for r in rows], dtype=np.int8),
            lat=np.array([r[11] for r in rows], dtype=np.float64),
            lng=np.array([r[12] for r in rows], dtype=np.float64),
            vocab=vocab, names=names, **coded)

    def documents(self) -> list[dict[str, Any]]:
        """Every POI's searchable fields, in corpus order (for building indexes)."""
        cur = self._conn().execute(
            "SELECT name, subcategory, category, city, district, business_area, specialties, tags, description "
            "FROM poi ORDER BY rowid")
        keys = [d[0] for d in cur.description]
        return [dict(zip(keys, row, strict=True)) for row in cur]

    def get(self, poi_ids: list[str]) -> list[dict[str, Any]]:
        """Full records (with products) of ``poi_ids``, in that order; unknown ids are left out."""
        if not poi_ids:
            return []
        conn = self._conn()
        marks = ",".join("?" * len(poi_ids))
        cur = conn.execute(f"SELECT {', '.join(_RECORD_COLUMNS)} FROM poi WHERE poi_id IN ({marks})", poi_ids)
        found: dict[str, dict[str, Any]] = {}
        for row in cur:
            record = dict(zip(_RECORD_COLUMNS, row, strict=True))
            for key in ("specialties", "tags", "facilities"):
                record[key] = json.loads(record[key])
            record["products"] = []
            found[record["poi_id"]] = record
        for poi_id, name, price in conn.execute(
                f"SELECT poi_id, name, price FROM poi_product WHERE poi_id IN ({marks}) ORDER BY product_id", poi_ids):
            found[poi_id]["products"].append({"name": name, "price": price})
        return [found[p] for p in poi_ids if p in found]

    def close(self) -> None:
        """Close this thread's connection (others close with their threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    dispose = close


def compact(poi: dict[str, Any], distance_m: float | None = None) -> str:
    """One line a model reads: id, name, kind, place, rating, price, hours (and distance)."""
    where = f"{poi['district']}, {poi['business_area']}, {poi['city']}"
    line = (f"[{poi['poi_id']}] {poi['name']} · {poi['subcategory']} · {where} · rating {poi['rating']:.1f} · "
            f"¥{poi['avg_price']:.0f}/person · {poi['business_hours']}")
    if distance_m is not None:
        line += f" · {distance_m:.0f} m away"
    return line


def structured(poi: dict[str, Any], score: float | None = None, distance_m: float | None = None) -> dict[str, Any]:
    """The compact record as structured data (what a reward or judge reads)."""
    out = {k: poi[k] for k in ("poi_id", "name", "city", "district", "business_area", "category", "subcategory",
                               "rating", "avg_price", "business_hours")}
    if score is not None:
        out["score"] = round(float(score), 4)
    if distance_m is not None:
        out["distance_m"] = round(float(distance_m), 1)
    return out
