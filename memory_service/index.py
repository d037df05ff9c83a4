"""The retrieval index: every meta-cognition's embedding, stored utility and last update round in
memory, one shard per task type, refreshed from the store only when its generation number moved,
and then only with the rows written since (``MemoryStore.changed_since``). A Retrieve costs one tiny
query plus a matrix-vector product over its task type's shard (every shard for task type "").

Ranking: relevance = max(cos(task, meta-cognition), 0) ∈ [0, 1]; the effective utility is the stored
one decayed by the rounds since its last update (``memory_service.utility.decayed``); score =
relevance × utility; ties go to the older meta-cognition."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from memory_service.store import IndexRow, MemoryStore
from memory_service.utility import UtilityParams
from rlyard.embedding import DIMENSION

_GROW = 1024   # rows of headroom added when a shard fills up


@dataclass(frozen=True)
class Hit:
    """One ranked meta-cognition."""

    id: str
    relevance: float
    utility: float
    score: float


@dataclass
class _Shard:
    """The rows of one task type: unit embeddings (n × 384 float32), utilities, rounds, insertion order."""

    ids: list[str] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, DIMENSION), dtype=np.float32))
    utility: np.ndarray = field(default_factory=lambda: np.zeros(0))
    last_round: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def size(self) -> int:
        return len(self.ids)

    def append(self, row: IndexRow, order: int) -> int:
        i = self.size
        if i == self.vectors.shape[0]:
            grow = max(_GROW, i // 2)
            self.vectors = np.vstack([self.vectors, np.zeros((grow, DIMENSION), dtype=np.float32)])
            self.utility = np.concatenate([self.utility, np.zeros(grow)])
            self.last_round = np.concatenate([self.last_round, np.zeros(grow, dtype=np.int64)])
            self.order = np.concatenate([self.order, np.zeros(grow, dtype=np.int64)])
        self.vectors[i] = np.frombuffer(row.embedding, dtype=np.float32)
        self.order[i] = order
        self.ids.append(row.id)
        return i

    def effective_utility(self, round_: int, params: UtilityParams) -> np.ndarray:
        """Utility at ``round_``: prior + (u − prior)·(1 − λ)^(round − last)."""
        n = self.size
        unused = np.maximum(round_ - self.last_round[:n], 0)
        return params.prior + (self.utility[:n] - params.prior) * (1.0 - params.decay) ** unused

    def top(self, query: np.ndarray, k: int, round_: int, params: UtilityParams) -> list[tuple[float, int, Hit]]:
        """The shard's ``k`` best as (−score, insertion order, hit)."""
        n = self.size
        relevance = np.maximum(self.vectors[:n] @ query, 0.0).astype(np.float64)
        utility = self.effective_utility(round_, params)
        score = relevance * utility
        k = min(k, n)
        best = np.argpartition(-score, k - 1)[:k] if k < n else np.arange(n)
        return [(-float(score[i]), int(self.order[i]), Hit(self.ids[i], float(relevance[i]), float(utility[i]),
                                                           float(score[i]))) for i in best]


class MetaIndex:
    """Every meta-cognition of the store, by task type, as of generation ``generation``."""

    def __init__(self, params: UtilityParams) -> None:
        self.params = params
        self.generation = -1
        self.round = 0
        self.shards: dict[str, _Shard] = {}
        self.where: dict[str, tuple[_Shard, int]] = {}
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Meta-cognitions in the index."""
        return len(self.where)

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
            for row in rows:
                found = self.where.get(row.id)
                if found is None:
                    shard = self.shards.setdefault(row.task_type, _Shard())
                    found = self.where[row.id] = (shard, shard.append(row, len(self.where)))
                shard, i = found
                shard.utility[i] = row.utility
                shard.last_round[i] = row.last_round
            self.generation, self.round = new_generation, new_round

    def mean_utility(self) -> float:
        """The mean effective utility (0 when empty)."""
        with self._lock:
            if not self.where:
                return 0.0
            total = sum(float(s.effective_utility(self.round, self.params).sum()) for s in self.shards.values())
            return total / len(self.where)

    def search(self, query: np.ndarray, task_type: str, k: int) -> list[Hit]:
        """The ``k`` best by relevance × effective utility ("" task type: every type), best first."""
        if k <= 0:
            return []
        query = query.astype(np.float32, copy=False)
        with self._lock:
            if task_type:
                shards = [self.shards[task_type]] if task_type in self.shards else []
            else:
                shards = list(self.shards.values())
            found = [t for s in shards if s.size for t in s.top(query, k, self.round, self.params)]
        found.sort(key=lambda t: (t[0], t[1]))
        return [hit for _, _, hit in found[:k]]
