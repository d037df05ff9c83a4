"""The local sampler: a synchronous ``BatchGenerator`` (the HF policy) run on one worker thread,
with the concurrent requests of the rollout's trajectories batched (``GenerationBatcher``), and
each trajectory's keys and values kept between its requests (``PrefixCache``, by ``cache_key``), and
the requests' images passed to a generator that takes them (``VLMPolicy``)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import torch

from rlyard.domain import ImagePart
from trainer.policy.base import BatchGenerator, Generation, ImageBatchGenerator
from trainer.policy.prefix_cache import DEFAULT_MAX_TOKENS, PrefillStats, PrefixCache
from trainer.sampler.base import SampleRequest, WeightVersionUnavailable
from trainer.sampler.batching import GenerationBatcher


class LocalSampler:
    """A ``Sampler`` over a ``BatchGenerator`` in this process. It samples with the generator's own
    module: when that is the trained module itself (the default backend), a weight sync only
    records the version; given another module, its weights are copied in.

    Requests with a ``cache_key`` keep their keys and values between requests, up to
    ``cache_max_tokens`` tokens in all (least recently used out; 0: keep nothing), on a generator
    that ``supports_prefix_cache`` (``HFPolicy`` on Qwen2/Llama). A weight sync drops them all;
    ``release(key)`` drops one.
    """

    def __init__(self, generator: BatchGenerator, *, max_batch_size: int | None = None,
                 cache_max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        if cache_max_tokens < 0:
            raise ValueError(f"cache_max_tokens={cache_max_tokens}: use >= 0 (0 keeps no keys and values)")
        self.generator = generator
        self.cache = PrefixCache(cache_max_tokens) if cache_max_tokens else None
        self.batcher = GenerationBatcher(generator, max_batch_size=max_batch_size, cache=self.cache)
        self._version = 0

    @property
    def weight_version(self) -> int:
        """The version of the weights it samples with now."""
        return self._version

    @property
    def supports_images(self) -> bool:
        """Whether the generator takes images (an ``ImageBatchGenerator`` that says so)."""
        return isinstance(self.generator, ImageBatchGenerator) and self.generator.supports_images

    def _vision(self) -> ImageBatchGenerator:
        if not isinstance(self.generator, ImageBatchGenerator) or not self.generator.supports_images:
            raise TypeError(f"{type(self.generator).__name__} takes no images")
        return self.generator

    @property
    def image_placeholder(self) -> str:
        """The generator's text for one image (``ImageTokenizer``); only when ``supports_images``."""
        return self._vision().image_placeholder

    @property
    def image_pad_id(self) -> int:
        """The generator's image pad token; only when ``supports_images``."""
        return self._vision().image_pad_id

    def image_tokens(self, image: ImagePart) -> int:
        """The pad tokens ``image`` becomes; only when ``supports_images``."""
        return self._vision().image_tokens(image)

    @property
    def stats(self) -> tuple[int, int]:
        """``(generate calls, rows)`` so far: rows / calls is the mean batch size."""
        return self.batcher.calls, self.batcher.rows

    @property
    def prefill_stats(self) -> PrefillStats:
        """Prompt tokens so far, and how many were reused or shared instead of run again."""
        kept = self.batcher.cache.stats if self.batcher.cache is not None else PrefillStats()
        return PrefillStats(prompt_tokens=self.batcher.prompt_tokens, reused=kept.reused, shared=kept.shared,
                            evictions=kept.evictions)

    async def sample(self, request: SampleRequest) -> Generation:
        """One continuation, batched with the other requests of this event-loop tick."""
        if request.images and not self.supports_images:
            raise ValueError(f"this sampler ({type(self.generator).__name__}) takes no images; the request carries "
                             f"{len(request.images)}: use a vision-language policy or leave images to placeholders")
        if request.weight_version is not None and request.weight_version != self._version:
            raise WeightVersionUnavailable(f"weight version {request.weight_version} is not held; this sampler "
                                           f"holds version {self._version} only")
        generation = await self.batcher.generate(list(request.prompt_ids), request.params, request.cache_key,
                                                 request.images)
        return dataclasses.replace(generation, weight_version=self._version)

    def release(self, cache_key: str) -> None:
        """Drop what is kept for ``cache_key`` (its trajectory ended)."""
        if self.cache is not None:
            self.cache.release(cache_key)

    async def sync_weights(self, model: torch.nn.Module, version: int) -> None:
        """Sample with ``model``'s weights as ``version`` (copied unless it is the generator's own);
        the keys and values kept so far were computed by other weights and are dropped."""
        own: Any = getattr(self.generator, "model", None)
        if own is not None and own is not model:
            own.load_state_dict(model.state_dict())
        if self.cache is not None:
            self.cache.clear()
        self._version = int(version)

    async def aclose(self) -> None:
        """Stop the worker thread (waits for a running batch)."""
        await asyncio.to_thread(self.batcher.close)
