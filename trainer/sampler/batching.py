"""Generation batching: many trajectories, one synchronous ``BatchGenerator.generate`` call at a time.

Each trajectory awaits ``GenerationBatcher.generate(prompt, params)``. The requests made while the
policy is idle are collected until the event loop next runs (one tick) and go out as one
``generate`` call; the requests made while the policy is busy wait and go out together as soon as
it is free. The call runs on a single worker thread, because torch is synchronous and one model
should run one batch at a time; the event loop keeps serving tool calls meanwhile.

Requests whose ``SamplingParams`` differ only in ``max_new_tokens`` and ``seed`` share a call: it
generates up to the largest ``max_new_tokens`` and each row is cut back to its own (cutting an
autoregressive sample at n tokens is exactly a sample with a limit of n). The call's seed is
derived from the seeds of its rows, in order (see ``batch_seed``): a batch is reproducible when the
same rows meet in the same order, which the completion order of tool calls decides.

Given a ``PrefixCache`` and a generator that supports it, a call passes each row's cache key (a
request's ``cache_key``; rows without one keep nothing), so that a trajectory's turn runs only
what is new since its last turn. Given an ``ImageBatchGenerator`` that ``supports_images``, a
call passes each row's images (a request's ``images``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rlyard.domain import ImagePart
from trainer.policy.base import BatchGenerator, CachingBatchGenerator, Generation, ImageBatchGenerator, SamplingParams
from trainer.policy.prefix_cache import PrefixCache

logger = logging.getLogger(__name__)

_SEED_BITS = 63


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. ``(seed, step, group, sample, turn)``), stable across
    processes and Python versions (unlike ``hash``)."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - _SEED_BITS)


def batch_seed(seeds: list[int | None]) -> int | None:
    """The seed of one ``generate`` call from its rows' seeds: a lone row keeps its own seed, so
    with ``max_batch_size=1`` every trajectory is reproducible whatever the completion order."""
    if any(s is None for s in seeds):
        return None
    if len(seeds) == 1:
        return seeds[0]
    return derive_seed(*(s for s in seeds if s is not None))


@dataclass
class _Request:
    prompt: list[int]
    params: SamplingParams
    future: asyncio.Future[Generation]
    cache_key: str | None = None
    images: tuple[ImagePart, ...] = ()


def _group_key(params: SamplingParams) -> SamplingParams:
    return dataclasses.replace(params, max_new_tokens=1, seed=None)


def _cut(gen: Generation, limit: int) -> Generation:
    """``gen`` as if sampled with ``max_new_tokens=limit``."""
    if len(gen.token_ids) <= limit:
        return gen
    return Generation(
        token_ids=gen.token_ids[:limit],
        logprobs=gen.logprobs[:limit],
        raw_logprobs=gen.raw_logprobs[:limit],
        finish_reason="length",
        stop_reason=None,
    )


class GenerationBatcher:
    """Collects concurrent ``generate`` requests into batched calls of a synchronous ``BatchGenerator``.

    Use it from one event loop. ``max_batch_size`` caps the rows of one call (``None``: no cap).
    ``cache``: the keys and values kept between a trajectory's requests (used when the generator
    ``supports_prefix_cache``). ``calls``, ``rows``, ``prompt_tokens`` and ``generated_tokens`` count
    what went through (the mean batch size is rows / calls).
    """

    def __init__(self, sampler: BatchGenerator, *, max_batch_size: int | None = None,
                 cache: PrefixCache | None = None) -> None:
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size}: use >= 1, or None for no cap")
        self.sampler = sampler
        self.max_batch_size = max_batch_size
        self.cache = cache if isinstance(sampler, CachingBatchGenerator) and sampler.supports_prefix_cache else None
        self.images = isinstance(sampler, ImageBatchGenerator) and sampler.supports_images
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-policy")
        self._pending: list[_Request] = []
        self._busy = False
        self._kick_scheduled = False
        self._task: asyncio.Task[None] | None = None
        self.calls = 0
        self.rows = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0

    async def generate(self, prompt: list[int], params: SamplingParams, cache_key: str | None = None,
                       images: Sequence[ImagePart] = ()) -> Generation:
        """One continuation of ``prompt`` (showing ``images``, in order); batched with the other
        requests of this tick."""
        if images and not self.images:
            raise ValueError(f"{type(self.sampler).__name__} takes no images; the request carries {len(images)}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Generation] = loop.create_future()
        self._pending.append(_Request(list(prompt), params, future, cache_key, tuple(images)))
        if not self._busy and not self._kick_scheduled:
            self._kick_scheduled = True
            loop.call_soon(self._kick)
        return await future

    def _kick(self) -> None:
        self._kick_scheduled = False
        self._pending = [r for r in self._pending if not r.future.done()]  # drop cancelled requests
        if self._busy or not self._pending:
            return
        # One call per group of compatible params; the first group in arrival order goes first.
        key = _group_key(self._pending[0].params)
        batch = [r for r in self._pending if _group_key(r.params) == key]
        if self.max_batch_size is not None:
            batch = batch[: self.max_batch_size]
        taken = {id(r) for r in batch}
        self._pending = [r for r in self._pending if id(r) not in taken]
        self._busy = True
        self._task = asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[_Request]) -> None:
        try:
            params = dataclasses.replace(
                batch[0].params,
                max_new_tokens=max(r.params.max_new_tokens for r in batch),
                seed=batch_seed([r.params.seed for r in batch]),
            )
            prompts = [r.prompt for r in batch]
            keys = [r.cache_key for r in batch]
            call: Callable[[], list[Generation]] = functools.partial(self.sampler.generate, prompts, params)
            if self.images:
                assert isinstance(self.sampler, ImageBatchGenerator)
                call = functools.partial(self.sampler.generate, prompts, params, images=[r.images for r in batch])
            elif self.cache is not None and any(k is not None for k in keys):
                assert isinstance(self.sampler, CachingBatchGenerator)
                call = functools.partial(self.sampler.generate, prompts, params, cache=self.cache, cache_keys=keys)
            loop = asyncio.get_running_loop()
            try:
                outputs = await loop.run_in_executor(self._executor, call)
                if len(outputs) != len(batch):
                    raise RuntimeError(f"the sampler returned {len(outputs)} generations for {len(batch)} prompts")
            except Exception as exc:  # a bug in the policy: every waiting trajectory sees it
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                return
            self.calls += 1
            self.rows += len(batch)
            self.prompt_tokens += sum(len(p) for p in prompts)
            for r, gen in zip(batch, outputs, strict=True):
                cut = _cut(gen, r.params.max_new_tokens)
                self.generated_tokens += len(cut.token_ids)
                if not r.future.done():
                    r.future.set_result(cut)
        finally:
            self._busy = False
            if self._pending and not self._kick_scheduled:
                self._kick_scheduled = True
                asyncio.get_running_loop().call_soon(self._kick)

    def close(self) -> None:
        """Stop the worker thread (waits for a running call)."""
        self._executor.shutdown(wait=True)
