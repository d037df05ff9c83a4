"""The sampler contract: token ids (and images) in, token ids and their log-probs out, async.

The trainer keeps the trainable module; a ``Sampler`` generates rollouts from a copy of (or a view
on) its weights. After each update the trainer calls ``sync_weights`` with the new version, and
every ``Generation`` says which version sampled it. Backends come from ``trainer.sampler.registry``
by name (``model.backend``): the local one runs the trained module itself in this process; a vLLM
or remote one receives the weights through the same hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from rlyard.domain import ImagePart
from rlyard.errors import FailedPrecondition
from trainer.policy.base import Generation, SamplingParams


@dataclass(frozen=True)
class SampleRequest:
    """One continuation to sample: the whole context so far as token ids, the images it shows
    (in order; only for samplers that take images: each is a run of pad tokens in ``prompt_ids``,
    ``trainer.policy.ImageTokenizer``), and how to sample.

    ``cache_key``: the same for every request of one trajectory (None: none). A sampler that keeps
    keys and values between requests (``PrefixCaching``) may reuse those of the key's last request
    for the part of ``prompt_ids`` it shares with it; one that does not ignores the key. Either
    way the generation is the same, to float rounding.

    ``weight_version``: the version that must sample it (None: the sampler's current one). The
    rollout engine sends a trajectory's later turns with the version of its first, so that a
    trajectory never mixes two versions; a sampler that no longer holds that version raises
    ``WeightVersionUnavailable`` (the engine marks the trajectory failed, masked from the loss).
    """

    prompt_ids: Sequence[int]
    params: SamplingParams
    images: tuple[ImagePart, ...] = ()
    cache_key: str | None = None
    weight_version: int | None = None


class WeightVersionUnavailable(FailedPrecondition):
    """The request names a weight version the sampler no longer holds (newer weights replaced it
    while the trajectory ran): the trajectory cannot go on without mixing versions."""


@dataclass(frozen=True)
class SamplerInfo:
    """What a sampler service serves: ``SamplerHost.info`` on the server, ``GetInfo`` through
    ``SamplerClient.info`` on the client."""

    model: str
    backend: str
    weight_version: int
    weight_publication: str
    loaded_versions: tuple[int, ...]
    latest_published: int | None
    weights_root: str
    max_model_len: int
    vocab_size: int
    supports_images: bool
    max_batch_size: int


@runtime_checkable
class Sampler(Protocol):
    """Samples continuations for the rollout engine (many concurrent ``sample`` calls; the
    backend batches them as it sees fit)."""

    @property
    def weight_version(self) -> int:
        """The version of the weights it samples with now."""
        ...

    @property
    def supports_images(self) -> bool:
        """Whether requests may carry images (such a sampler is also an ``ImageTokenizer``: the
        rollout engine asks it how many tokens an image takes)."""
        ...

    async def sample(self, request: SampleRequest) -> Generation:
        """One continuation; ``Generation.weight_version`` says which weights sampled it."""
        ...

    async def sync_weights(self, model: torch.nn.Module, version: int) -> None:
        """Sample with ``model``'s current weights from now on, as ``version``."""
        ...

    async def aclose(self) -> None:
        """Free what it holds (threads, engines, connections)."""
        ...


@runtime_checkable
class PrefixCaching(Protocol):
    """A sampler that keeps what it computed for a ``cache_key`` until told the key is done."""

    def release(self, cache_key: str) -> None:
        """Free what is kept for ``cache_key`` (its trajectory ended)."""
        ...
