"""``retrieve``: semantic (dense) search over the local-life POI corpus, optionally hybrid with BM25.

The index (``tool_servers.poi.dense``) is loaded, or built and cached (the corpus embedded by PyTorch),
with the query encoder that ``RLYARD_TOOLS_POI_ENCODER`` names, by the tool's ``warm_up`` while
the server reports NOT_SERVING; calls that come earlier get ``Unavailable`` with what is happening
(loading, or how many POIs are embedded so far). A cached index of another corpus version fails the
server at start-up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from rlyard.domain import ToolResult
from rlyard.embedding import shared_encoder, shared_torch_encoder
from rlyard.errors import Unavailable
from tool_servers.poi import _common as poi
from tool_servers.poi import dense
from tool_servers.poi.bm25 import Hit, PoiBm25
from tool_servers.poi.store import FilterError
from tool_servers.poi.text import document_text
from tool_servers.registry import ToolContext, register
from tool_servers.session import Session

MAX_QUERY_CHARS = 500


class RetrieveArgs(poi.PoiFilterArgs):
    """Arguments of ``retrieve``: what the user wants in plain words, plus optional filters."""

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS,
                       description="what you are looking for, in your own words, e.g. 'quiet cafe to work with wifi'")
    top_k: int = Field(10, ge=1, le=100, description="how many results (capped by the server)")
    mode: Literal["dense", "hybrid"] = Field(
        "dense", description="'dense': by meaning; 'hybrid': meaning and keyword (BM25) matches together")


class DenseState:
    """This server's dense index as the warm-up leaves it: loading, ready, or failed."""

    def __init__(self) -> None:
        self.index: dense.DenseIndex | None = None
        self.bm25: PoiBm25 | None = None
        self.error: str | None = None
        self.embedded = (0, 0)          # (done, total) while a build embeds the corpus
        self.cancel = threading.Event()

    def on_progress(self, done: int, total: int) -> None:
        """Progress of a build (shown to callers that come too early)."""
        self.embedded = (done, total)

    def not_ready(self) -> Unavailable:
        """The error of a call that came before the index was ready."""
        if self.error is not None:
            return Unavailable(f"the retrieve index failed to load: {self.error}")
        done, total = self.embedded
        if total:
            return Unavailable(f"the retrieve index is being built ({done} of {total} POIs embedded); retry later")
        return Unavailable("the retrieve index is still loading; retry in a few seconds")

    def dispose(self) -> None:
        """Stop a build in progress (the server is stopping)."""
        self.cancel.set()


@register
class Retrieve:
    """Dense retrieval (all-MiniLM-L6-v2 + FAISS HNSW) over merchants, with the same filters as ``search``."""

    name = "retrieve"
    description = (
        "Find local merchants by meaning: describe what you want in your own words (semantic search over "
        "name, category, dishes/services, tags, description), optionally filtered by city, district, "
        "business_area, category, min_price/max_price (yuan per person), min_rating, and open_at ('HH:MM') "
        "with weekday. mode 'hybrid' also weighs keyword matches. Each result starts with its [poi_id]."
    )
    Args = RetrieveArgs

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx
        self.store = poi.poi_store(ctx)
        # Refuse, at start-up, a cached index of another corpus version (cheap: reads the manifest).
        self.folder = dense.index_folder(poi.settings(ctx).indexes, self.store.version)
        if self.folder.exists():
            dense.read_manifest(self.folder, self.store.version)
        state = ctx.shared.setdefault("poi_dense", DenseState())
        assert isinstance(state, DenseState)
        self.state = state

    def validate_context(self, context: Mapping[str, str]) -> None:
        """The POI tools need nothing from the session."""

    async def warm_up(self) -> None:
        """Load (or build and cache) the dense index, the corpus columns and the BM25 index of hybrid mode."""
        try:
            await asyncio.to_thread(self._load)   # not the tool pool: a build takes long
        except Exception as exc:
            self.state.error = str(exc)
            raise

    def _load(self) -> None:
        self.store.columns()
        bm25 = poi.poi_bm25(self.ctx)
        s = poi.settings(self.ctx)
        queries = shared_encoder(s.encoder, s.indexes, s.encoder_threads)
        index = dense.load_or_build(self.store, s.indexes, queries, build_with=shared_torch_encoder,
                                    on_progress=self.state.on_progress, cancel=self.state.cancel)
        self.state.bm25, self.state.index = bm25, index

    async def call(self, args: RetrieveArgs, session: Session) -> ToolResult:
        """Check the arguments, search off the event loop, render."""
        index = self.state.index
        if index is None:
            raise self.state.not_ready()
        return await self.ctx.run_blocking(self._retrieve, args, index)

    def _texts(self, rows: list[int]) -> list[str]:
        ids = self.store.columns().poi_ids
        return [document_text(record) for record in self.store.get([str(ids[row]) for row in rows])]

    def _retrieve(self, args: RetrieveArgs, index: dense.DenseIndex) -> ToolResult:
        query = args.query.strip()
        if not query:
            return ToolResult.error("the query is empty; describe what you are looking for, e.g. 'spicy hotpot "
                                    "for a group of friends'")
        k = min(args.top_k, poi.settings(self.ctx).max_results)      # capped, as search and nearby cap it
        if args.min_price is not None and args.max_price is not None and args.min_price > args.max_price:
            return ToolResult.error(f"min_price ({args.min_price:g}) is above max_price ({args.max_price:g}); "
                                    "swap them or drop one")
        wanted = args.to_filter()
        columns = self.store.columns()
        try:
            mask = None if wanted.is_empty() else columns.mask(wanted)
        except FilterError as exc:
            return ToolResult.error(str(exc))
        bm25 = self.state.bm25 if args.mode == "hybrid" else None
        hits = index.search(query, k, mask, bm25=bm25, texts=self._texts)
        return poi.render_hits(self.store, columns, [Hit(row, score) for row, score in hits],
                               "no merchant matches those filters; loosen a filter (price, rating, hours) "
                               "or check the names")
