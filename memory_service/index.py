"""The retrieval index: every meta-cognition's record, embedding, stored utility and last update round
in memory, one shard per task type, refreshed from the store only when its generation number moved,
and then only with the rows written since (``MemoryStore.changed_since``). A Retrieve costs one tiny
query plus a matrix-vector product over its task type's shard (every shard for task type ""); a
shard of more than ``EXACT_BELOW`` rows is scanned in bfloat16 first and its best rows rescored
exactly (over several shards, each rescores its share of ``CANDIDATES``, at least 4·k).

Ranking: relevance = max(cos(task, meta-cognition), 0) ∈ [0, 1]; the effective utility is the stored
one decayed by the rounds since its last update (``memory_service.utility.decayed``); score =
relevance × utility; ties go to the older meta-cognition."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from memory_service.store import IndexRow, MemoryStore
from memory_service.utility import UtilityParams
from rlyard.domain import MetaCognition
from rlyard.embedding import DIMENSION

_GROW = 1024          # rows of headroom added when a shard fills up
EXACT_BELOW = 2_048   # shards up to this size are scanned in float32; larger ones in two stages
CANDIDATES = 256      # rows the bfloat16 scan keeps for exact rescoring (at least 4·k)


@dataclass(frozen=True)
class Hit:
    """One ranked meta-cognition: its record as stored, relevance, effective utility and score."""

    record: MetaCognition
    relevance: float
    utility: float
    score: float

    @property
    def id(self) -> str:
        return self.record.id


@dataclass
class _Shard:
    """The rows of one task type: unit embeddings (n × 384 float32, and a bfloat16 copy for the first
    stage of large shards), utilities, rounds, insertion order."""

    records: list[MetaCognition] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, DIMENSION), dtype=np.float32))
    coarse: torch.Tensor = field(default_factory=lambda: torch.zeros((0, DIMENSION), dtype=torch.bfloat16))
    utility: np.ndarray = field(default_factory=lambda: np.zeros(0))
    last_round: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def size(self) -> int:
        return len(self.records)

    def append(self, row: IndexRow, order: int) -> int:
        i = self.size
        if i == self.vectors.shape[0]:
            grow = max(_GROW, i // 2)
            self.vectors = np.vstack([self.vectors, np.zeros((grow, DIMENSION), dtype=np.float32)])
            self.coarse = torch.cat([self.coarse, torch.zeros((grow, DIMENSION), dtype=torch.bfloat16)])
            self.utility = np.concatenate([self.utility, np.zeros(grow)])
            self.last_round = np.concatenate([self.last_round, np.zeros(grow, dtype=np.int64)])
            self.order = np.concatenate([self.order, np.zeros(grow, dtype=np.int64)])
        self.vectors[i] = np.frombuffer(row.embedding, dtype=np.float32)
        self.coarse[i] = torch.from_numpy(self.vectors[i]).to(torch.bfloat16)
        self.order[i] = order
        self.records.append(row.record)
        return i

    def effective_utility(self, round_: int, params: UtilityParams) -> np.ndarray:
        """Utility at ``round_``: prior + (u − prior)·(1 − λ)^(round − last)."""
        n = self.size
        unused = np.maximum(round_ - self.last_round[:n], 0)
        return params.prior + (self.utility[:n] - params.prior) * (1.0 - params.decay) ** unused

    def top(self, query: np.ndarray, k: int, round_: int, params: UtilityParams,
            coarse_query: torch.Tensor | None = None, candidates: int = CANDIDATES) -> list[tuple[float, int, Hit]]:
        """The shard's ``k`` best as (−score, insertion order, hit). A large shard is scanned in
        bfloat16 (half the bytes of float32: the scan is memory-bound) and its best ``candidates``
        (at least 4·k) rescored exactly, so the scores returned are always the float32 ones.
        ``coarse_query``: the query in bfloat16, when the caller scans several shards with it."""
        n = self.size
        utility = self.effective_utility(round_, params)
        if n > EXACT_BELOW:
            if coarse_query is None:
                coarse_query = torch.from_numpy(query).to(torch.bfloat16)
            rough = torch.mv(self.coarse[:n], coarse_query).float().numpy()
            keep = min(n, max(candidates, 4 * k))
            rows = np.argpartition(-(np.maximum(rough, 0.0) * utility), keep - 1)[:keep]
            vectors, utility = self.vectors[rows], utility[rows]
        else:
            rows, vectors = np.arange(n), self.vectors[:n]
        relevance = np.maximum(vectors @ query, 0.0).astype(np.float64)
        score = relevance * utility
        k = min(k, len(rows))
        best = np.argpartition(-score, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
        return [(-float(score[j]), int(self.order[rows[j]]),
                 Hit(self.records[rows[j]], float(relevance[j]), float(utility[j]), float(score[j]))) for j in best]


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
                found = self.where.get(row.record.id)
                if found is None:
                    shard = self.shards.setdefault(row.record.task_type, _Shard())
                    found = self.where[row.record.id] = (shard, shard.append(row, len(self.where)))
                shard, i = found
                shard.records[i] = row.record
                shard.utility[i] = row.record.utility
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
            shards = [s for s in shards if s.size]
            coarse_query = torch.from_numpy(query).to(torch.bfloat16)
            # every shard's own top k is among its rescored rows, so with several shards each
            # rescores its share of CANDIDATES (at least 4·k), not CANDIDATES each
            share = CANDIDATES // max(len(shards), 1)
            found = [t for s in shards for t in s.top(query, k, self.round, self.params, coarse_query, share)]
        found.sort(key=lambda t: (t[0], t[1]))
        return [hit for _, _, hit in found[:k]]
