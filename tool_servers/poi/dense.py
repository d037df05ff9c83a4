"""Dense retrieval over the POI corpus: all-MiniLM-L6-v2 embeddings of every POI's :func:`document_text`
in a FAISS HNSW index, cached on disk per corpus version.

Index: ``IndexHNSWFlat`` over the normalised 384-d float32 vectors with the inner-product metric, so a
score is the cosine similarity. HNSWFlat keeps the full vectors: the scores it returns are exact cosines
of the rows it finds, and the same vectors serve the exact brute-force path (``exact=True``, the
reference of the recall benchmark) and filtered searches over few rows.

Filters (a boolean mask from ``PoiColumns.mask``): when at most ``exact_below`` rows pass, their cosines
are computed exactly; otherwise the graph is asked for more candidates than wanted (in proportion to
how few rows pass, at least 64; the graph's beam twice that), growing four-fold while too few pass, and
past 1,024 candidates every row is scored exactly. A filter never lets a failing row through.

Hybrid (``bm25=``): the union of the dense and the BM25 top ``depth`` candidates, each score min-max
normalised over that union, fused as ``w * dense + (1 - w) * bm25`` (``w`` = 0.5). Rerank (``texts=``):
the top ``depth`` candidates are re-scored as ``score + 0.1 * coverage``, where coverage is the share of
the query's distinct word stems (``text.tokenize``) found in the POI's text: a small lexical tie-break
among candidates whose meaning scores are close, with no index of its own.

Cache: ``<index_dir>/dense-<version[:16]>/`` holds ``index.faiss`` and ``manifest.json`` (corpus version,
model, dimension, count, index parameters, build seconds, the index file's size and SHA-256). A build
writes a temporary sibling folder and renames it into place, so a killed build never leaves a folder that
loads; loading refuses a manifest of another corpus version and a missing or damaged index file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from rlyard.embedding import DIMENSION, MODEL_NAME, Encoder, shared_torch_encoder
from rlyard.files import fsync_path
from tool_servers.poi.store import PoiStore
from tool_servers.poi.text import document_text, tokenize

logger = logging.getLogger(__name__)

FORMAT = 1
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
EMBED_CHUNK = 256        # texts per encode call: the unit of progress and of cancelling a build
EXACT_BELOW = 8_192      # filtered searches over at most this many rows are exact scans
OVERFETCH_MIN = 64
OVERFETCH_MAX = 1_024
DEPTH = 50               # candidates that hybrid fusion and the rerank look at
HYBRID_WEIGHT = 0.5      # weight of the dense score in the hybrid fusion
RERANK_WEIGHT = 0.1      # weight of the query-word coverage in the rerank

Hits = list[tuple[int, float]]   # (row in corpus order, score), best first
Progress = Callable[[int, int], None]


class DenseIndexError(RuntimeError):
    """A dense index on disk cannot be used (another corpus version, a missing or damaged file)."""


class BuildCancelled(RuntimeError):
    """A build stopped because its ``cancel`` event was set (the server is stopping)."""


class Bm25Scores(Protocol):
    """What hybrid search needs of a BM25 index (``tool_servers.poi.bm25.PoiBm25``)."""

    def scores(self, query: str) -> np.ndarray: ...


@dataclass(frozen=True)
class HnswParams:
    """HNSW graph parameters: ``m`` links per node, the beam widths of construction and search."""

    m: int = 32
    ef_construction: int = 100
    ef_search: int = 128


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` records about a cached index."""

    corpus_version: str
    model: str
    dimension: int
    count: int
    hnsw_m: int
    ef_construction: int
    ef_search: int
    embed_seconds: float
    build_seconds: float
    index_bytes: int
    index_sha256: str
    format: int = FORMAT


# ---------------------------------------------------------------- searching


def _top(scores: np.ndarray, rows: np.ndarray | None, k: int) -> Hits:
    """The ``k`` best of ``scores`` (ties to the lower row), mapped through ``rows`` when given."""
    k = min(k, scores.size)
    if k <= 0:
        return []
    part = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
    ids = part if rows is None else rows[part]
    order = np.lexsort((ids, -scores[part]))
    return [(int(ids[i]), float(scores[part[i]])) for i in order]


def min_max(values: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1]; a constant array becomes ones when positive, zeros otherwise."""
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return np.full(values.shape, 1.0 if high > 0 else 0.0)
    return (values - low) / (high - low)


def fuse(dense: np.ndarray, lexical: np.ndarray, weight: float = HYBRID_WEIGHT) -> np.ndarray:
    """Hybrid score of candidates: ``weight * minmax(dense) + (1 - weight) * minmax(lexical)``."""
    return weight * min_max(dense) + (1.0 - weight) * min_max(lexical)


def coverage(query: str, text: str) -> float:
    """Share of the query's distinct word stems that occur in ``text`` (0 for a query of stop words)."""
    wanted = set(tokenize(query))
    return len(wanted & set(tokenize(text))) / len(wanted) if wanted else 0.0


def rerank(query: str, hits: Hits, texts: Sequence[str], weight: float = RERANK_WEIGHT) -> Hits:
    """Re-score ``hits`` as ``score + weight * coverage(query, text)``, best first (ties keep their order)."""
    scored = [(row, score + weight * coverage(query, text), i)
              for i, ((row, score), text) in enumerate(zip(hits, texts, strict=True))]
    scored.sort(key=lambda item: (-item[1], item[2]))
    return [(row, score) for row, score, _ in scored]


class DenseIndex:
    """The HNSW index of a corpus with its encoder; rows are in corpus order. Searches are thread-safe."""

    def __init__(self, index: faiss.IndexHNSWFlat, manifest: Manifest, encoder: Encoder, *,
                 exact_below: int = EXACT_BELOW) -> None:
        self.index = index
        self.manifest = manifest
        self.encoder = encoder
        self.exact_below = exact_below
        index.hnsw.efSearch = manifest.ef_search
        storage = faiss.downcast_index(index.storage)
        assert isinstance(storage, faiss.IndexFlat)
        # A view of the vectors inside the index (no copy): the exact path and the fusion read them.
        self.vectors: np.ndarray = faiss.rev_swig_ptr(storage.get_xb(), index.ntotal * index.d).reshape(
            index.ntotal, index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def encode_query(self, query: str) -> np.ndarray:
        """The normalised embedding of ``query``."""
        return self.encoder.encode_one(query)

    def cosines(self, q: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Exact cosine of ``q`` with each of ``rows`` (all rows when None)."""
        # einsum, not `@`: numpy's matrix-vector product goes through OpenBLAS's threads, which took a
        # constant 8 ms per call on 2 busy cores; einsum's single-threaded loop takes 0.06 ms for 2,000 rows.
        return np.einsum("ij,j->i", self.vectors if rows is None else self.vectors[rows], q)

    def _graph(self, q: np.ndarray, k: int) -> Hits:
        # One query is one unit of work: without this (a per-thread OpenMP setting), every search wakes
        # FAISS's OpenMP threads, whose spinning then slows the encoder's (measured: 12 ms -> 500 ms p50).
        faiss.omp_set_num_threads(1)
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # (missing from the stubs)
        # A beam of twice the candidates wanted: over-fetching needs the deep ranks right too (at 150,000
        # POIs, recall@10 under a city filter went from 0.92 with the default beam to 0.995).
        params.efSearch = max(self.manifest.ef_search, 2 * k)
        scores, ids = self.index.search(q[None, :], k, params=params)
        return [(int(i), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]

    def search_vector(self, q: np.ndarray, k: int, mask: np.ndarray | None = None, *, exact: bool = False) -> Hits:
        """The ``k`` rows nearest to ``q`` by cosine among those ``mask`` keeps; ``exact`` scans them all."""
        n = len(self)
        k = min(k, n)
        if k <= 0:
            return []
        if mask is None:
            return _top(self.cosines(q), None, k) if exact else self._graph(q, k)
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            return []
        if rows.size <= self.exact_below:
            return _top(self.cosines(q, rows), rows, k)
        if not exact:
            fetch = max(OVERFETCH_MIN, math.ceil(2 * k * n / rows.size))
            while fetch <= OVERFETCH_MAX:
                found = [(row, score) for row, score in self._graph(q, min(fetch, n)) if mask[row]]
                if len(found) >= k or fetch >= n:
                    return found[:k]
                fetch *= 4
        # Many rows pass: score them all in place rather than copying them out.
        return _top(self.cosines(q)[rows], rows, k)

    def search(self, query: str, k: int, mask: np.ndarray | None = None, *, exact: bool = False,
               bm25: Bm25Scores | None = None, texts: Callable[[list[int]], list[str]] | None = None,
               depth: int = DEPTH) -> Hits:
        """The ``k`` best rows for ``query`` among those ``mask`` keeps, best first.

        Args:
            exact: brute-force cosine instead of the HNSW graph (the benchmark's reference).
            bm25: hybrid: fuse the dense and BM25 candidates (see the module docstring).
            texts: rerank: the document text of given rows; the top ``depth`` are re-scored.
        """
        q = self.encode_query(query)
        if bm25 is None and texts is None:
            return self.search_vector(q, k, mask, exact=exact)
        depth = max(depth, k)
        hits = self.search_vector(q, depth, mask, exact=exact)
        if bm25 is not None:
            lexical = bm25.scores(query)
            keep = lexical > 0 if mask is None else mask & (lexical > 0)
            lex_hits = _top(lexical[keep], np.flatnonzero(keep), depth)
            rows = np.array(list(dict.fromkeys([r for r, _ in hits] + [r for r, _ in lex_hits])), dtype=np.int64)
            if rows.size == 0:
                return []
            fused = fuse(self.cosines(q, rows), lexical[rows])
            hits = _top(fused, rows, depth)
        if texts is not None and hits:
            hits = rerank(query, hits, texts([r for r, _ in hits]))
        return hits[:k]


# ---------------------------------------------------------------- building, saving, loading


def index_folder(index_dir: Path, version: str) -> Path:
    """Where the dense index of corpus ``version`` is cached."""
    return index_dir / f"dense-{version[:16]}"


def read_manifest(folder: Path, version: str) -> Manifest:
    """The manifest of a cached index, checked against the corpus ``version`` and this code's model.

    Raises:
        DenseIndexError: missing or unreadable manifest, another corpus version, model or format.
    """
    try:
        manifest = Manifest(**json.loads((folder / MANIFEST_FILE).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise DenseIndexError(f"no usable dense index manifest in {folder} ({exc}); delete the folder to "
                              f"rebuild the index") from exc
    if manifest.corpus_version != version:
        raise DenseIndexError(
            f"the dense index in {folder} was built from corpus {manifest.corpus_version[:16]}, not from this "
            f"corpus ({version[:16]}); delete the folder to rebuild it, or point RLYARD_TOOLS_POI_INDEX_DIR "
            f"at the index of this corpus")
    if (manifest.format, manifest.model, manifest.dimension) != (FORMAT, MODEL_NAME, DIMENSION):
        raise DenseIndexError(
            f"the dense index in {folder} is format {manifest.format} of {manifest.model} "
            f"({manifest.dimension}-d); this server needs format {FORMAT} of {MODEL_NAME} ({DIMENSION}-d): "
            f"delete the folder to rebuild it")
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def load(folder: Path, version: str, encoder: Encoder, *, exact_below: int = EXACT_BELOW) -> DenseIndex:
    """Load a cached index of corpus ``version``.

    Raises:
        DenseIndexError: another corpus version, or a missing, truncated or altered index file.
    """
    manifest = read_manifest(folder, version)
    path = folder / INDEX_FILE
    size = path.stat().st_size if path.is_file() else -1
    if size != manifest.index_bytes or _sha256(path) != manifest.index_sha256:
        found = "is missing" if size < 0 else f"does not match its manifest ({size} bytes)"
        raise DenseIndexError(f"the dense index file {path} {found}; delete {folder} to rebuild the index")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise DenseIndexError(f"cannot read the dense index {path} ({exc}); delete {folder} to rebuild") from exc
    if not isinstance(index, faiss.IndexHNSWFlat) or index.ntotal != manifest.count or index.d != DIMENSION:
        raise DenseIndexError(f"the dense index {path} is not an HNSW index of {manifest.count} {DIMENSION}-d "
                              f"vectors; delete {folder} to rebuild it")
    return DenseIndex(index, manifest, encoder, exact_below=exact_below)


def embed_corpus(store: PoiStore, encoder: Encoder, on_progress: Progress | None = None,
                 cancel: threading.Event | None = None) -> np.ndarray:
    """Normalised embeddings of every POI's text in corpus order, ``EMBED_CHUNK`` at a time.

    Raises:
        BuildCancelled: ``cancel`` was set (checked between chunks).
    """
    texts = [document_text(doc) for doc in store.documents()]
    vectors = np.empty((len(texts), DIMENSION), dtype=np.float32)
    step = max(1, len(texts) // 10)
    for start in range(0, len(texts), EMBED_CHUNK):
        if cancel is not None and cancel.is_set():
            raise BuildCancelled(f"dense index build cancelled after {start} of {len(texts)} POIs")
        end = min(start + EMBED_CHUNK, len(texts))
        vectors[start:end] = encoder.encode(texts[start:end])
        if on_progress is not None:
            on_progress(end, len(texts))
        if end // step != start // step or end == len(texts):
            logger.info("dense index: embedded %d of %d POIs", end, len(texts))
    return vectors


def build_index(vectors: np.ndarray, params: HnswParams) -> faiss.IndexHNSWFlat:
    """An HNSW (inner product) index over ``vectors``."""
    index = faiss.IndexHNSWFlat(vectors.shape[1], params.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params.ef_construction
    index.hnsw.efSearch = params.ef_search
    index.add(vectors)
    return index


def _remove_stale_builds(folder: Path) -> None:
    """Temporary folders of builds of this index whose process is gone (killed builds)."""
    for tmp in folder.parent.glob(f".{folder.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit():
            try:
                os.kill(int(pid), 0)
                continue                       # still building
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        logger.warning("removing %s, left by an interrupted dense index build", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def save(index: faiss.IndexHNSWFlat, manifest: dict[str, Any], folder: Path) -> Manifest:
    """Write ``index`` and its manifest to ``folder`` atomically (a temporary folder, then a rename).

    Returns the manifest as written; when another process saved the same index first, its folder stays.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        path = tmp / INDEX_FILE
        faiss.write_index(index, str(path))
        fsync_path(path)
        written = Manifest(**manifest, index_bytes=path.stat().st_size, index_sha256=_sha256(path))
        (tmp / MANIFEST_FILE).write_text(json.dumps(asdict(written), indent=2) + "\n")
        fsync_path(tmp / MANIFEST_FILE)
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / MANIFEST_FILE).is_file():
                raise
            logger.info("another process saved %s first; keeping its copy", folder)
        fsync_path(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def load_or_build(store: PoiStore, index_dir: Path, encoder: Encoder, *, params: HnswParams = HnswParams(),
                  on_progress: Progress | None = None, cancel: threading.Event | None = None,
                  exact_below: int = EXACT_BELOW, build_with: Callable[[], Encoder] | None = None) -> DenseIndex:
    """The cached index of ``store``'s corpus, searched with ``encoder``; built (embedding every POI with
    ``build_with()``, default ``encoder``) and cached when there is none.

    Raises:
        DenseIndexError: the cached folder holds an index of another corpus version, or a damaged one.
        BuildCancelled: ``cancel`` was set during a build.
    """
    folder = index_folder(index_dir, store.version)
    if folder.exists():
        tic = time.perf_counter()
        index = load(folder, store.version, encoder, exact_below=exact_below)
        logger.info("dense index of %d POIs loaded from %s in %.2f s", len(index), folder, time.perf_counter() - tic)
        return index
    _remove_stale_builds(folder)
    tic = time.perf_counter()
    vectors = embed_corpus(store, encoder if build_with is None else build_with(), on_progress, cancel)
    embed_seconds = time.perf_counter() - tic
    if cancel is not None and cancel.is_set():
        raise BuildCancelled("dense index build cancelled before indexing")
    graph = build_index(vectors, params)
    build_seconds = time.perf_counter() - tic
    manifest = save(graph, {
        "corpus_version": store.version, "model": MODEL_NAME, "dimension": DIMENSION, "count": len(vectors),
        "hnsw_m": params.m, "ef_construction": params.ef_construction, "ef_search": params.ef_search,
        "embed_seconds": round(embed_seconds, 2), "build_seconds": round(build_seconds, 2)}, folder)
    logger.info("dense index of %d POIs built in %.1f s (%.1f s embedding) and cached in %s",
                len(vectors), build_seconds, embed_seconds, folder)
    return DenseIndex(graph, manifest, encoder, exact_below=exact_below)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tool_servers.poi.dense``: build (or check) the cached index ahead of serving."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--poi-dir", type=Path, default=Path("data/generated/poi"), help="holds poi.sqlite")
    parser.add_argument("--index-dir", type=Path, default=Path("data/generated/poi/index"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = PoiStore(args.poi_dir / "poi.sqlite")
    index = load_or_build(store, args.index_dir, shared_torch_encoder())
    print(json.dumps({"folder": str(index_folder(args.index_dir, store.version)), **asdict(index.manifest)}, indent=2))


if __name__ == "__main__":
    main()
