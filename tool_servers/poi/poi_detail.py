"""``poi_detail``: everything the corpus knows about one POI."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from rlyard.domain import ToolResult
from tool_servers.poi import _common as poi
from tool_servers.registry import ToolContext, register
from tool_servers.session import Session


class PoiDetailArgs(BaseModel):
    """Arguments of ``poi_detail``."""

    model_config = ConfigDict(extra="forbid")

    poi_id: str = Field(min_length=1, max_length=32, description="a poi_id from a result, e.g. 'SH000123'")


@register
class PoiDetail:
    """Full record of one POI: address, hours, prices, products, facilities, coordinates."""

    name = "poi_detail"
    description = ("Show one merchant's full record by its poi_id: address, business hours, rating, average "
                   "price, products with prices, specialties, tags, facilities, description, coordinates.")
    Args = PoiDetailArgs

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx

    def validate_context(self, context: Mapping[str, str]) -> None:
        """The POI tools need nothing from the session."""

    async def call(self, args: PoiDetailArgs, session: Session) -> ToolResult:
        """Read the record off the event loop."""
        return await self.ctx.run_blocking(self._detail, args.poi_id.strip().strip("[]"))

    def _detail(self, poi_id: str) -> ToolResult:
        found = poi.poi_store(self.ctx).get([poi_id])
        if not found:
            return ToolResult.error(f"no POI has id {poi_id!r}; copy a poi_id exactly from a search result "
                                    "(two letters and six digits, e.g. SH000123)")
        r = found[0]
        products = "; ".join(f"{p['name']} ¥{p['price']:g}" for p in r["products"])
        text = "\n".join([
            f"[{r['poi_id']}] {r['name']} ({r['category']} / {r['subcategory']})",
            f"address: {r['address']} ({r['business_area']})",
            f"hours: {r['business_hours']}",
            f"rating: {r['rating']:.1f} ({r['review_count']} reviews) · average ¥{r['avg_price']:.0f} per person "
            f"({r['price_range']})",
            f"products: {products}",
            f"specialties: {', '.join(r['specialties'])}",
            f"tags: {', '.join(r['tags']) or '-'}",
            f"facilities: {', '.join(r['facilities'])}",
            f"location: {r['lat']:.6f}, {r['lng']:.6f}",
            r["description"],
        ])
        return ToolResult.of_text(text, structured=r)
