"""BM25 over the POI corpus with ``bm25s`` (sparse, precomputed per-token scores: a query costs a few
sparse column sums over 150,000 documents), cached on disk per corpus version.

Scores follow ``bm25s``' default (Lucene's BM25, k1 1.5, b 0.75). Structured filters are a boolean
mask over the same rows (``PoiColumns.mask``): the top-k is taken among the rows that pass, so a
filter never hides a match behind non-matching higher-scored rows. A query with no known word and
a filter ranks the filtered POIs by rating, then review count.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np

from tool_servers.poi.store import PoiStore
from tool_servers.poi.text import document_text, tokenize

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"


class IndexMismatchError(RuntimeError):
    """An index on disk was built from another corpus (or is damaged); rebuild it."""


@dataclass(frozen=True)
class Hit:
    """One result: the row in corpus order and its score."""

    row: int
    score: float


def top_k(scores: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[Hit]:
    """The ``k`` best rows by ``scores`` among those ``mask`` keeps (all when None), best first;
    ties by row order."""
    if mask is not None:
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            return []
        sub = scores[rows]
    else:
        rows, sub = np.arange(scores.size), scores
    k = min(k, sub.size)
    if k <= 0:
        return []
    if k < sub.size:      # the k-th best value; ties at that value go to the lowest rows
        kth = np.partition(-sub, k - 1)[k - 1]
        above = np.flatnonzero(-sub < kth)
        part = np.concatenate([above, np.flatnonzero(-sub == kth)[: k - above.size]])
    else:
        part = np.arange(sub.size)
    order = part[np.lexsort((rows[part], -sub[part]))]
    return [Hit(int(rows[i]), float(sub[i])) for i in order]


class PoiBm25:
    """A BM25 index over every POI's :func:`document_text`, rows in corpus order."""

    def __init__(self, retriever: bm25s.BM25, version: str, count: int) -> None:
        self.retriever = retriever
        self.version = version
        self.count = count

    @classmethod
    def build(cls, store: PoiStore, on_progress: Callable[[int, int], None] | None = None) -> PoiBm25:
        """Tokenise every POI and index it (about 10 s for 150,000 POIs on one core)."""
        docs = store.documents()
        tokens: list[list[str]] = []
        for i, doc in enumerate(docs, start=1):
            tokens.append(tokenize(document_text(doc)))
            if on_progress is not None and (i % 10_000 == 0 or i == len(docs)):
                on_progress(i, len(docs))
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        return cls(retriever, store.version, len(docs))

    def save(self, folder: Path) -> None:
        """Write the index and a manifest naming its corpus version (atomically: tmp, then rename)."""
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.retriever.save(str(tmp), show_progress=False)
        (tmp / MANIFEST).write_text(json.dumps({"kind": "bm25", "corpus_version": self.version,
                                                "count": self.count, "library": f"bm25s {bm25s.__version__}"}))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)

    @classmethod
    def load(cls, folder: Path, version: str) -> PoiBm25:
        """Load a saved index; refuse one built from another corpus version."""
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise IndexMismatchError(f"no usable BM25 index at {folder} ({exc}); delete it to rebuild") from exc
        if manifest.get("corpus_version") != version:
            raise IndexMismatchError(
                f"the BM25 index at {folder} was built from corpus {str(manifest.get('corpus_version'))[:16]}, "
                f"not {version[:16]}; delete it (or point RLYARD_TOOLS_POI_INDEX_DIR elsewhere) to rebuild")
        retriever = bm25s.BM25.load(str(folder), show_progress=False)
        return cls(retriever, version, int(manifest["count"]))

    @classmethod
    def load_or_build(cls, store: PoiStore, index_dir: Path,
                      on_progress: Callable[[int, int], None] | None = None) -> PoiBm25:
        """The cached index for ``store``'s corpus version, built and saved on first use."""
        folder = index_dir / f"bm25-{store.version[:16]}"
        if (folder / MANIFEST).is_file():
            tic = time.perf_counter()
            index = cls.load(folder, store.version)
            logger.info("BM25 index loaded from %s in %.1f s", folder, time.perf_counter() - tic)
            return index
        tic = time.perf_counter()
        index = cls.build(store, on_progress)
        index_dir.mkdir(parents=True, exist_ok=True)
        index.save(folder)
        logger.info("BM25 index of %d POIs built in %.1f s (%s)", index.count, time.perf_counter() - tic, folder)
        return index

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every POI for ``query`` (zeros when no query word is in the corpus)."""
        ids = self.retriever.get_tokens_ids(tokenize(query))
        if not ids:
            return np.zeros(self.count, dtype=np.float32)
        return np.asarray(self.retriever.get_scores_from_ids(ids), dtype=np.float32)

    def search(self, query: str, k: int, mask: np.ndarray | None = None,
               fallback: np.ndarray | None = None) -> list[Hit]:
        """Top ``k`` rows for ``query`` among ``mask``; rows that do not match any query word are left
        out, except when the query has no known word at all and ``fallback`` (a score per row, e.g.
        rating) orders the filtered rows instead."""
        scores = self.scores(query)
        if not scores.any():
            if fallback is None or mask is None:
                return []
            return [Hit(h.row, 0.0) for h in top_k(fallback, k, mask)]
        keep = scores > 0 if mask is None else mask & (scores > 0)
        return top_k(scores, k, keep)
