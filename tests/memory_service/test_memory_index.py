"""The retrieval index over a real SQLite store: the two-stage scan of a large shard ranks as an
exact float32 scan does, and incremental refreshes keep it equal to the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memory_service.index import EXACT_BELOW, MetaIndex
from memory_service.store import MemoryStore, NewMetaCognition
from memory_service.utility import UtilityParams, decayed
from rlyard.domain import UtilityUpdate
from rlyard.embedding import DIMENSION

PARAMS = UtilityParams(learning_rate=0.5, decay=0.1)


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIMENSION)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_rankings_match_an_exact_scan_and_follow_the_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    big, small = EXACT_BELOW + 1000, 300
    vectors = _unit(rng, big + small)
    store = MemoryStore(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        created = store.add([NewMetaCognition("big" if i < big else "small", f"r{i}", f"t{i}", (),
                                              vectors[i].tobytes()) for i in range(big + small)], PARAMS.prior)
        ids = [m.id for m in created]
        deltas = rng.uniform(-1, 1, big + small)
        store.update_utilities([UtilityUpdate(i, float(d), 0.0) for i, d in zip(ids, deltas, strict=True)], 0.5,
                               PARAMS)
        index = MetaIndex(PARAMS)
        index.refresh(store)
        assert index.size == big + small and index.shards["big"].size > EXACT_BELOW

        def exact(query: np.ndarray, rows: range, utility: np.ndarray) -> list[str]:
            score = np.maximum(vectors[rows.start:rows.stop] @ query, 0) * utility[rows.start:rows.stop]
            return [ids[rows.start + i] for i in np.argsort(-score, kind="stable")[:10]]

        def check(utility: np.ndarray) -> None:
            for _ in range(20):
                query = _unit(rng, 1)[0]
                assert [h.id for h in index.search(query, "big", 10)] == exact(query, range(0, big), utility)
                assert [h.id for h in index.search(query, "small", 10)] == exact(query, range(big, big + small),
                                                                                  utility)
                every = index.search(query, "", 10)
                assert [h.id for h in every] == exact(query, range(0, big + small), utility)
                for h in every:   # the float32 scores (bfloat16 would be off by ~1e-3), not the first stage's
                    i = ids.index(h.id)
                    assert h.relevance == pytest.approx(max(float(vectors[i] @ query), 0.0), abs=1e-6)
                    assert h.score == pytest.approx(h.relevance * h.utility, abs=1e-12)

        # round 1: u = clip(0.5 + 0.5 * Δ, 0, 1)
        check(np.clip(0.5 + 0.5 * deltas, 0, 1))
        # round 2 touches one row: the others decay one round; the index reads only what changed
        store.update_utilities([UtilityUpdate(ids[5], 1.0, 0.0)], 0.5, PARAMS)
        index.refresh(store)
        after = np.array([decayed(u, 1, PARAMS) for u in np.clip(0.5 + 0.5 * deltas, 0, 1)])
        baseline = float(np.mean(deltas)) * PARAMS.baseline_momentum
        after[5] = min(max(float(np.clip(0.5 + 0.5 * deltas[5], 0, 1)) + 0.5 * (1.0 - baseline), 0.0), 1.0)
        check(after)
        assert index.mean_utility() == pytest.approx(float(np.mean(after)))
    finally:
        store.close()
