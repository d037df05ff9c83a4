"""What the local-life POI tools share: the corpus store and BM25 index of this server, the filter
arguments, and rendering results for the model."""

from __future__ import annotations

import threading
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rlyard.domain import ToolResult
from tool_servers.poi.bm25 import Hit, PoiBm25
from tool_servers.poi.settings import PoiSettings
from tool_servers.poi.store import DB_NAME, PoiColumns, PoiFilter, PoiStore, compact, structured
from tool_servers.registry import ToolContext

_LOCK = threading.Lock()
Weekday = Literal["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


class PoiFilterArgs(BaseModel):
    """Structured conditions shared by ``search`` and ``retrieve``."""

    model_config = ConfigDict(extra="forbid")

    city: str | None = Field(None, description="city name, e.g. 'Shanghai'")
    district: str | None = Field(None, description="district name, e.g. \"Jing'an\"")
    business_area: str | None = Field(None, description="business area, e.g. \"Jing'an Station\"")
    category: str | None = Field(None, description="category or sub-category, e.g. 'Food & Drink' or 'Hotpot'")
    min_price: float | None = Field(None, ge=0, description="lowest average spend per person, yuan")
    max_price: float | None = Field(None, ge=0, description="highest average spend per person, yuan")
    min_rating: float | None = Field(None, ge=0, le=5, description="lowest rating, 0-5")
    open_at: str | None = Field(None, description="open at this time, 'HH:MM' 24-hour clock")
    weekday: Weekday | None = Field(None, description="open on this day")

    def to_filter(self) -> PoiFilter:
        """The store's filter of these arguments."""
        return PoiFilter(city=self.city, district=self.district, business_area=self.business_area,
                         category=self.category, min_price=self.min_price, max_price=self.max_price,
                         min_rating=self.min_rating, open_at=self.open_at, weekday=self.weekday)


def settings(ctx: ToolContext) -> PoiSettings:
    """The POI family's settings on this server."""
    return ctx.family(PoiSettings)


def poi_store(ctx: ToolContext) -> PoiStore:
    """This server's corpus store (opened once)."""
    with _LOCK:
        store = ctx.shared.get("poi_store")
        if store is None:
            store = ctx.shared["poi_store"] = PoiStore(settings(ctx).dir / DB_NAME)
        return store  # type: ignore[no-any-return]


def poi_bm25(ctx: ToolContext) -> PoiBm25:
    """This server's BM25 index (loaded from the cache, or built and cached, once)."""
    store = poi_store(ctx)
    with _LOCK:
        index = ctx.shared.get("poi_bm25")
        if index is None:
            index = ctx.shared["poi_bm25"] = PoiBm25.load_or_build(store, settings(ctx).indexes)
        return index  # type: ignore[no-any-return]


def render_hits(store: PoiStore, columns: PoiColumns, hits: list[Hit], empty: str,
                distances: Any = None) -> ToolResult:
    """Compact lines (each with its ``poi_id``) and structured records of ``hits``."""
    if not hits:
        return ToolResult.of_text(empty, structured={"results": []})
    records = store.get([str(columns.poi_ids[h.row]) for h in hits])
    lines, items = [], []
    for hit, record in zip(hits, records, strict=True):
        distance = None if distances is None else float(distances[hit.row])
        lines.append(compact(record, distance))
        items.append(structured(record, None if distances is not None else hit.score, distance))
    return ToolResult.of_text("\n".join(lines), structured={"results": items})
