"""The retrieval index: every meta-cognition's embedding, stored utility and last update round in
memory, refreshed from the store only when its generation number moved, and then only with the
rows written since (``MemoryStore.changed_since``), so a Retrieve costs one tiny query plus a
matrix-vector product rather than a table scan.

Ranking: relevance = max(cos(task, meta-cognition), 0) ∈ [0, 1]; the effective utility is the stored
one decayed by the rounds since its last update (``memory_service.utility.decayed``); score =
relevance × utility."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from memory_service.store import IndexRow, MemoryStore
from memory_service.utility import UtilityParams
from rlyard.embedding import DIMENSION

_GROW = 1024   # rows of headroom added when the arrays fill up


@dataclass(frozen=True)
class Hit:
    """One ranked meta-cognition."""

    id: str
    relevance: float
    utility: float
    score: float


class MetaIndex:
    """Embeddings (n × 384 float32, unit rows), utilities and rounds of every meta-cognition."""

    def __init__(self, params: UtilityParams) -> None:
        self.params = params
        self.generation = -1
        self.round = 0
        self.size = 0
        self.ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.type_codes: dict[str, int] = {}
        self.vectors = np.zeros((0, DIMENSION), dtype=np.float32)
        self.utility = np.zeros(0, dtype=np.float64)
        self.last_round = np.zeros(0, dtype=np.int64)
        self.task_type = np.zeros(0, dtype=np.int32)
        self._lock = threading.Lock()

    def refresh(self, store: MemoryStore) -> None:
        """Catch up with the store when its generation moved (one small query when it did not)."""
        generation, round_, _ = store.state()
        with self._lock:
            if generation == self.generation:
                self.round = round_
                return
            since = self.generation
        new_generation, new_round, rows = store.changed_since(since)
        with self._lock:
            if new_generation <= self.generation:   # another thread caught up meanwhile
                return
            self._apply(rows)
            self.generation, self.round = new_generation, new_round

    def _apply(self, rows: list[IndexRow]) -> None:
        for row in rows:
            i = self.row_of.get(row.id)
            if i is None:
                i = self._append(row)
            self.utility[i] = row.utility
            self.last_round[i] = row.last_round

    def _append(self, row: IndexRow) -> int:
        if self.size == self.vectors.shape[0]:
            grow = max(_GROW, self.size // 2)
            self.vectors = np.vstack([self.vectors, np.zeros((grow, DIMENSION), dtype=np.float32)])
            self.utility = np.concatenate([self.utility, np.zeros(grow)])
            self.last_round = np.concatenate([self.last_round, np.zeros(grow, dtype=np.int64)])
            self.task_type = np.concatenate([self.task_type, np.zeros(grow, dtype=np.int32)])
        i = self.size
        self.vectors[i] = np.frombuffer(row.embedding, dtype=np.float32)
        self.task_type[i] = self.type_codes.setdefault(row.task_type, len(self.type_codes))
        self.ids.append(row.id)
        self.row_of[row.id] = i
        self.size += 1
        return i

    def effective_utility(self) -> np.ndarray:
        """Every row's utility at the current round: prior + (u − prior)·(1 − λ)^(round − last)."""
        p = self.params
        n = self.size
        unused = np.maximum(self.round - self.last_round[:n], 0)
        return p.prior + (self.utility[:n] - p.prior) * (1.0 - p.decay) ** unused

    def mean_utility(self) -> float:
        """The mean effective utility (0 when empty)."""
        with self._lock:
            return float(self.effective_utility().mean()) if self.size else 0.0

    def search(self, query: np.ndarray, task_type: str, k: int) -> list[Hit]:
        """The ``k`` best by relevance × effective utility ("" task type: every type), best first;
        ties go to the older meta-cognition."""
        with self._lock:
            n = self.size
            if n == 0 or k <= 0:
                return []
            relevance = np.maximum(self.vectors[:n] @ query.astype(np.float32), 0.0).astype(np.float64)
            utility = self.effective_utility()
            score = relevance * utility
            if task_type:
                code = self.type_codes.get(task_type)
                if code is None:
                    return []
                score = np.where(self.task_type[:n] == code, score, -np.inf)
            k = min(k, n)
            top = np.argpartition(-score, k - 1)[:k] if k < n else np.arange(n)
            order = top[np.lexsort((top, -score[top]))]
            return [Hit(self.ids[i], float(relevance[i]), float(utility[i]), float(score[i]))
                    for i in order if np.isfinite(score[i])]
