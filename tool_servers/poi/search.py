"""``search``: BM25 over the local-life POI corpus with structured filters."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from rlyard.domain import ToolResult
from tool_servers.poi import _common as poi
from tool_servers.poi.store import FilterError
from tool_servers.registry import ToolContext, register
from tool_servers.session import Session


class SearchArgs(poi.PoiFilterArgs):
    """Arguments of ``search``: words to match plus optional filters."""

    query: str = Field("", max_length=500, description="words to match: name, dish, service, tag, place")
    top_k: int = Field(10, ge=1, le=100, description="how many results (capped by the server)")


@register
class Search:
    """Keyword search (BM25) over merchants, filtered by city, area, category, price, rating, hours."""

    name = "search"
    description = (
        "Search local merchants by keywords (BM25 over name, category, dishes/services, tags, description), "
        "optionally filtered by city, district, business_area, category, min_price/max_price (yuan per "
        "person), min_rating, and open_at ('HH:MM') with weekday. Each result starts with its [poi_id]."
    )
    Args = SearchArgs

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx

    def validate_context(self, context: Mapping[str, str]) -> None:
        """The POI tools need nothing from the session."""

    async def warm_up(self) -> None:
        """Open the corpus and load (or build) the BM25 index before serving."""
        await self.ctx.run_blocking(self._load)

    def _load(self) -> None:
        poi.poi_bm25(self.ctx)
        poi.poi_store(self.ctx).columns()

    async def call(self, args: SearchArgs, session: Session) -> ToolResult:
        """Filter, score, take the top k, render."""
        return await self.ctx.run_blocking(self._search, args)

    def _search(self, args: SearchArgs) -> ToolResult:
        wanted = args.to_filter()
        if not args.query.strip() and wanted.is_empty():
            return ToolResult.error("give a query (words to match) or at least one filter such as city")
        store, index = poi.poi_store(self.ctx), poi.poi_bm25(self.ctx)
        columns = store.columns()
        try:
            mask = None if wanted.is_empty() else columns.mask(wanted)
        except FilterError as exc:
            return ToolResult.error(str(exc))
        k = min(args.top_k, poi.settings(self.ctx).max_results)
        hits = index.search(args.query, k, mask, fallback=columns.rating)
        if not hits and args.query.strip() and mask is not None and mask.any():
            empty = "no merchant matching those filters mentions those words; try other words or fewer filters"
        else:
            empty = "no merchant matches; loosen a filter (price, rating, hours) or check the names"
        return poi.render_hits(store, columns, hits, empty)
