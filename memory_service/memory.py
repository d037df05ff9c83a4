"""The graph memory's operations on domain records: validation of what a caller sends, then the
state machine, the store, the retrieval index, distillation and the encoder. Blocking work (the
database, MiniLM) runs on worker threads, at most ``worker_threads`` at once."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from memory_service.distill import Candidate, Rules, candidates
from memory_service.fsm import abstract
from memory_service.index import MetaIndex
from memory_service.judge import StrategyJudge
from memory_service.settings import MemorySettings
from memory_service.store import MAX_ID_CHARS, MemoryStore, NewMetaCognition, trajectory_bytes
from rlyard.domain import DecisionPath, MemoryStats, MetaCognition, ScoredMetaCognition, Trajectory, UtilityUpdate
from rlyard.embedding import Encoder, shared_encoder
from rlyard.errors import InvalidArgument, Unavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_TOP_K = 3
MAX_TASK_TYPE_CHARS = 128   # the column's width


class GraphMemory:
    """Record, Retrieve, UpdateUtility, Distill and Stats over one store. ``open`` connects (and
    migrates) the store and loads the encoder; until then every call is UNAVAILABLE."""

    def __init__(self, settings: MemorySettings, encoder: Callable[[], Encoder] | None = None) -> None:
        self.settings = settings
        self.params = settings.utility_params()
        self.rules = Rules(settings.success_threshold, settings.min_support, settings.min_gap)
        self.index = MetaIndex(self.params)
        self._load_encoder = encoder or (lambda: shared_encoder(
            settings.encoder, Path(settings.encoder_dir), settings.encoder_threads))
        self._store: MemoryStore | None = None
        self._encoder: Encoder | None = None
        self._slots = asyncio.Semaphore(settings.worker_threads)
        self.judge = (StrategyJudge(settings.judge_endpoint, settings.judge_model, settings.judge_api_key,
                                    settings.judge_timeout_s) if settings.judge_endpoint else None)

    async def open(self) -> None:
        """Connect to the store (migrating it to the newest schema), load MiniLM, fill the index."""
        store = await asyncio.to_thread(MemoryStore, self.settings.db_url)
        encoder = await asyncio.to_thread(self._load_encoder)
        await asyncio.to_thread(self.index.refresh, store)
        self._store, self._encoder = store, encoder    # calls are served from here on, not half-way
        logger.info("graph memory on %s: %d meta-cognitions in the index", store.url, self.index.size)

    async def close(self) -> None:
        """Close the store's connections and the judge's HTTP client."""
        if self._store is not None:
            self._store.close()
        if self.judge is not None:
            await self.judge.close()

    @property
    def store(self) -> MemoryStore:
        """The open store; UNAVAILABLE while the service warms up."""
        if self._store is None:
            raise Unavailable("the memory store is not open yet (the service is warming up)")
        return self._store

    @property
    def encoder(self) -> Encoder:
        """The loaded encoder; UNAVAILABLE while the service warms up."""
        if self._encoder is None:
            raise Unavailable("the encoder is not loaded yet (the service is warming up)")
        return self._encoder

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        async with self._slots:
            return await asyncio.to_thread(fn, *args)

    # ------------------------------------------------------------------------------ operations

    async def record(self, trajectory: Trajectory, reward: float, task_type: str = "",
                     task_text: str = "") -> DecisionPath:
        """Abstract ``trajectory`` into its decision path and store both; idempotent by trajectory id.

        Raises:
            InvalidArgument: no trajectory id, no turns, too many turns or bytes, a non-finite reward.
        """
        limits = self.settings
        if not trajectory.trajectory_id:
            raise InvalidArgument("trajectory.trajectory_id is empty: the memory records a trajectory by its id")
        if len(trajectory.trajectory_id) > MAX_ID_CHARS:
            raise InvalidArgument(f"trajectory.trajectory_id is {len(trajectory.trajectory_id)} characters, over "
                                  f"{MAX_ID_CHARS}")
        if len(trajectory.task_id) > MAX_ID_CHARS:
            raise InvalidArgument(f"trajectory.task_id is {len(trajectory.task_id)} characters, over {MAX_ID_CHARS}")
        if not trajectory.turns:
            raise InvalidArgument(f"trajectory {trajectory.trajectory_id[:80]!r} has no turns: nothing to record")
        if len(trajectory.turns) > limits.max_turns:
            raise InvalidArgument(f"trajectory {trajectory.trajectory_id[:80]!r} has {len(trajectory.turns)} turns, "
                                  f"over the limit of {limits.max_turns} (RLYARD_MEMORY_MAX_TURNS)")
        size = trajectory_bytes(trajectory)
        if size > limits.max_trajectory_bytes:
            raise InvalidArgument(f"trajectory {trajectory.trajectory_id[:80]!r} is {size} bytes as JSON, over the "
                                  f"limit of {limits.max_trajectory_bytes} (RLYARD_MEMORY_MAX_TRAJECTORY_BYTES)")
        if not math.isfinite(reward):
            raise InvalidArgument(f"reward is {reward}, not a finite number")
        _check_task(task_type, task_text, limits)
        states = abstract(trajectory)
        return await self._run(self.store.record, trajectory, reward, task_type, task_text, states,
                               reward >= limits.success_threshold)

    async def retrieve(self, task_text: str, task_type: str = "",
                       top_k: int = DEFAULT_TOP_K) -> list[ScoredMetaCognition]:
        """The ``top_k`` meta-cognitions (0: 3) for a task by relevance × utility, best first; the
        utility each carries is its effective (decayed) one."""
        if not task_text.strip():
            raise InvalidArgument("task_text is empty: retrieval ranks by similarity to the task's text")
        _check_task(task_type, task_text, self.settings)
        top_k = top_k or DEFAULT_TOP_K
        if not 1 <= top_k <= self.settings.max_top_k:
            raise InvalidArgument(f"top_k must be in [1, {self.settings.max_top_k}], got {top_k}")
        vector, _ = await asyncio.gather(self._run(self.encoder.encode_one, task_text),
                                         self._run(self.index.refresh, self.store))
        return [ScoredMetaCognition(dataclasses.replace(h.record, utility=h.utility), h.score, h.relevance)
                for h in self.index.search(vector, task_type, top_k)]

    async def update_utility(self, updates: Sequence[UtilityUpdate], learning_rate: float = 0.0) -> list[MetaCognition]:
        """One update round over the meta-cognitions used (``memory_service.utility``).

        Raises:
            InvalidArgument: no updates, too many, a non-finite reward or a bad learning rate.
            NotFound: an id names no meta-cognition (nothing is changed).
        """
        if not updates:
            raise InvalidArgument("updates is empty: send one (meta_cognition_id, reward_with, reward_without) "
                                  "per meta-cognition used")
        if len(updates) > self.settings.max_updates:
            raise InvalidArgument(f"{len(updates)} updates, over the limit of {self.settings.max_updates} "
                                  "(RLYARD_MEMORY_MAX_UPDATES)")
        for i, u in enumerate(updates):
            if not u.meta_cognition_id:
                raise InvalidArgument(f"updates[{i}].meta_cognition_id is empty")
            if not (math.isfinite(u.reward_with) and math.isfinite(u.reward_without)):
                raise InvalidArgument(f"updates[{i}]: rewards must be finite numbers, got with={u.reward_with}, "
                                      f"without={u.reward_without}")
        if not math.isfinite(learning_rate) or learning_rate < 0:
            raise InvalidArgument(f"learning_rate must be a finite number >= 0 (0: the server's "
                                  f"{self.params.learning_rate}), got {learning_rate}")
        rate = learning_rate or self.params.learning_rate
        return await self._run(self.store.update_utilities, updates, rate, self.params)

    async def distill(self, task_type: str = "", min_paths: int = 0, max_new: int = 0) -> list[MetaCognition]:
        """New meta-cognitions from the paths of ``task_type`` ("" : of every task type that has at
        least ``min_paths`` paths), at most ``max_new``, strongest evidence first; advice already in
        the memory is not added again."""
        if min_paths < 0 or max_new < 0:
            raise InvalidArgument(f"min_paths and max_new must be >= 0 (0: the server's defaults), got "
                                  f"{min_paths} and {max_new}")
        _check_task(task_type, "", self.settings)
        min_paths = min_paths or self.settings.min_paths
        max_new = max_new or self.settings.max_new
        types = [task_type] if task_type else await self._run(self.store.task_types)
        found: list[tuple[str, Candidate]] = []
        for tt in types:
            paths = await self._run(self.store.paths, tt)
            if len(paths) < min_paths:
                continue
            known = await self._run(self.store.rule_keys, tt)
            found.extend((tt, c) for c in candidates(tt, paths, self.rules) if c.rule_key not in known)
        found.sort(key=lambda pair: (-pair[1].strength, pair[0], pair[1].rule_key))
        chosen = found[:max_new]
        if not chosen:
            return []
        texts = [c.text for _, c in chosen]
        if self.judge is not None:
            texts = [await self.judge.rewrite(c.text, c.evidence) for _, c in chosen]
        vectors = await self._run(self._embed, texts, [c.task_texts for _, c in chosen])
        new = [NewMetaCognition(tt, c.rule_key, text, c.source_path_ids, vector.tobytes())
               for (tt, c), text, vector in zip(chosen, texts, vectors, strict=True)]
        created = await self._run(self.store.add, new, self.params.prior)
        logger.info("distilled %d meta-cognition(s) from %d task type(s)", len(created), len(types))
        return created

    def _embed(self, texts: Sequence[str], task_texts: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Each meta-cognition's retrieval vector: the mean of its own text's embedding and the
        centroid of the task texts of the paths it came from (the paper's query → path →
        meta-cognition edges, folded into one vector), normalised; its text alone without tasks."""
        unique = list(dict.fromkeys(t for ts in task_texts for t in ts))
        own = self.encoder.encode(list(texts))
        tasks = dict(zip(unique, self.encoder.encode(unique), strict=True)) if unique else {}
        out = []
        for vector, ts in zip(own, task_texts, strict=True):
            if ts:
                centroid = np.mean([tasks[t] for t in ts], axis=0)
                vector = 0.5 * vector + 0.5 * centroid / max(float(np.linalg.norm(centroid)), 1e-12)
            out.append((vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32))
        return out

    async def stats(self) -> MemoryStats:
        """Rows per layer and the mean effective utility."""
        counts, _ = await asyncio.gather(self._run(self.store.counts), self._run(self.index.refresh, self.store))
        return MemoryStats(counts.trajectories, counts.states, counts.paths, counts.meta_cognitions,
                           self.index.mean_utility())


def _check_task(task_type: str, task_text: str, settings: MemorySettings) -> None:
    if len(task_type) > MAX_TASK_TYPE_CHARS:
        raise InvalidArgument(f"task_type is {len(task_type)} characters, over {MAX_TASK_TYPE_CHARS}")
    if len(task_text) > settings.max_task_text_chars:
        raise InvalidArgument(f"task_text is {len(task_text)} characters, over the limit of "
                              f"{settings.max_task_text_chars} (RLYARD_MEMORY_MAX_TASK_TEXT_CHARS)")
