"""The local sampler: a synchronous ``BatchGenerator`` (the HF policy) run on one worker thread,
with the concurrent requests of the rollout's trajectories batched (``GenerationBatcher``)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import torch

from trainer.policy.base import BatchGenerator, Generation
from trainer.sampler.base import SampleRequest
from trainer.sampler.batching import GenerationBatcher


class LocalSampler:
    """A ``Sampler`` over a ``BatchGenerator`` in this process. It samples with the generator's own
    module: when that is the trained module itself (the default backend), a weight sync only
    records the version; given another module, its weights are copied in."""

    def __init__(self, generator: BatchGenerator, *, max_batch_size: int | None = None) -> None:
        self.generator = generator
        self.batcher = GenerationBatcher(generator, max_batch_size=max_batch_size)
        self._version = 0

    @property
    def weight_version(self) -> int:
        """The version of the weights it samples with now."""
        return self._version

    @property
    def supports_images(self) -> bool:
        """A text-only generator: no images."""
        return False

    @property
    def stats(self) -> tuple[int, int]:
        """``(generate calls, rows)`` so far: rows / calls is the mean batch size."""
        return self.batcher.calls, self.batcher.rows

    async def sample(self, request: SampleRequest) -> Generation:
        """One continuation, batched with the other requests of this event-loop tick."""
        if request.images:
            raise ValueError(f"this sampler ({type(self.generator).__name__}) takes no images; the request carries "
                             f"{len(request.images)}: use a vision-language policy or leave images to placeholders")
        generation = await self.batcher.generate(list(request.prompt_ids), request.params)
        return dataclasses.replace(generation, weight_version=self._version)

    async def sync_weights(self, model: torch.nn.Module, version: int) -> None:
        """Sample with ``model``'s weights as ``version`` (copied unless it is the generator's own)."""
        own: Any = getattr(self.generator, "model", None)
        if own is not None and own is not model:
            own.load_state_dict(model.state_dict())
        self._version = int(version)

    async def aclose(self) -> None:
        """Stop the worker thread (waits for a running batch)."""
        await asyncio.to_thread(self.batcher.close)
