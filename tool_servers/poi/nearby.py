"""``nearby``: POIs within a radius of another POI, nearest first."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rlyard.domain import ToolResult
from tool_servers.poi import _common as poi
from tool_servers.poi.bm25 import top_k
from tool_servers.poi.store import FilterError, PoiFilter
from tool_servers.registry import ToolContext, register
from tool_servers.session import Session


class NearbyArgs(BaseModel):
    """Arguments of ``nearby``."""

    model_config = ConfigDict(extra="forbid")

    poi_id: str = Field(min_length=1, max_length=32, description="the POI to search around")
    radius_m: float = Field(1000.0, gt=0, le=20_000, description="search radius in metres")
    category: str | None = Field(None, description="category or sub-category to keep, e.g. 'Coffee'")
    top_k: int = Field(10, ge=1, le=100, description="how many results, nearest first (capped by the server)")


@register
class Nearby:
    """Geographic hop: what lies within ``radius_m`` of a POI."""

    name = "nearby"
    description = ("List merchants within radius_m metres of a POI (by its poi_id), nearest first, optionally "
                   "of one category; each result shows its distance.")
    Args = NearbyArgs

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx

    def validate_context(self, context: Mapping[str, str]) -> None:
        """The POI tools need nothing from the session."""

    async def call(self, args: NearbyArgs, session: Session) -> ToolResult:
        """Vectorised distances from the centre POI, filtered, nearest first."""
        return await self.ctx.run_blocking(self._nearby, args)

    def _nearby(self, args: NearbyArgs) -> ToolResult:
        store = poi.poi_store(self.ctx)
        columns = store.columns()
        poi_id = args.poi_id.strip().strip("[]")
        found = columns.row_of(poi_id)
        if found is None:
            return ToolResult.error(f"no POI has id {poi_id!r}; copy a poi_id exactly from a search result")
        centre = found
        distances = columns.distances_m(float(columns.lat[centre]), float(columns.lng[centre]))
        try:
            mask = columns.mask(PoiFilter(category=args.category)) if args.category else np.ones(len(columns), bool)
        except FilterError as exc:
            return ToolResult.error(str(exc))
        mask &= distances <= args.radius_m
        mask[centre] = False
        k = min(args.top_k, poi.settings(self.ctx).max_results)
        hits = top_k(-distances, k, mask)
        return poi.render_hits(store, columns, hits, f"nothing within {args.radius_m:.0f} m; try a larger radius_m",
                               distances=distances)
