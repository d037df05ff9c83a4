"""The in-process policy: token ids in, token ids and their log-probs out.

Two roles: a ``BatchGenerator`` samples a batch of continuations synchronously (what the local
sampler runs on a worker thread; the rollout engine talks to the async ``trainer.sampler.Sampler``);
a ``LogProbScorer`` recomputes log-probs and entropies for the loss, with gradients.
``PolicyBackend`` is both (``HFPolicy``). Text produced by the policy is never re-tokenized: a
``Generation`` carries the exact sampled ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch

from rlyard.domain import ImagePart
from trainer.policy.prefix_cache import PrefixCache

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one batch of continuations.

    ``temperature`` 0 means greedy decoding. ``stop_token_ids``: stop after sampling any of these
    (the token is kept in the output). ``stop_strings``: stop after the token whose text completes
    one of these, checked on the decoded text of the new tokens only. ``seed`` makes the batch
    reproducible (one generator for the whole batch, so the draws depend on the batch's makeup).
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: Sequence[int] = ()
    stop_strings: Sequence[str] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: ask for at least 1 token")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: use 0 for greedy decoding or a positive value")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p}: must lie in (0, 1]; use 1.0 to turn nucleus sampling off")
        if any(not s for s in self.stop_strings):
            raise ValueError("stop_strings holds an empty string, which would stop at once; remove it")


@dataclass
class Generation:
    """One continuation: exactly the sampled ids and their log-probs.

    ``logprobs[i]`` is log π(token_ids[i] | prefix) under the distribution that was sampled from,
    softmax(logits / temperature) over the whole vocabulary (top-p truncation is not renormalised
    in, so it matches ``forward_logprobs(..., temperature=T)``); for greedy decoding T is taken as 1.
    ``raw_logprobs[i]`` is the same at temperature 1. ``finish_reason`` is "stop" when a stop token
    or string ended it (``stop_reason`` holds which: the token id or the string), "length" when it
    ran out of ``max_new_tokens``. ``weight_version``: the version of the weights that sampled it
    (set by the sampler).
    """

    token_ids: list[int]
    logprobs: list[float]
    raw_logprobs: list[float] = field(default_factory=list)
    finish_reason: FinishReason = "length"
    stop_reason: int | str | None = None
    weight_version: int = 0


@runtime_checkable
class BatchGenerator(Protocol):
    """Generates continuations of tokenized prompts, one batch at a time. Synchronous: the local
    sampler calls it from its worker thread."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        """One ``Generation`` per prompt, in order."""
        ...


@runtime_checkable
class CachingBatchGenerator(BatchGenerator, Protocol):
    """A ``BatchGenerator`` that can keep each row's keys and values in a ``PrefixCache`` under the
    row's key and reuse them for a later prompt that starts with the same tokens."""

    @property
    def supports_prefix_cache(self) -> bool:
        """Whether ``cache=`` is used (False: ``generate`` ignores it)."""
        ...

    def generate(self, prompts: list[list[int]], params: SamplingParams, *, cache: PrefixCache | None = None,
                 cache_keys: Sequence[str | None] | None = None) -> list[Generation]:
        """One ``Generation`` per prompt, in order; the same as without a cache, to float rounding."""
        ...


@runtime_checkable
class ImageTokenizer(Protocol):
    """How images become tokens for a vision-language policy.

    A context shows an image as a run of ``image_tokens(image)`` copies of ``image_pad_id``. The chat
    template renders one image as ``image_placeholder`` (which holds one ``image_pad_id``); whoever
    builds the context expands that one pad to the image's run.
    """

    @property
    def image_placeholder(self) -> str:
        """The text that stands for one image before expansion (Qwen2-VL:
        ``<|vision_start|><|image_pad|><|vision_end|>``)."""
        ...

    @property
    def image_pad_id(self) -> int:
        """The token whose run stands for an image."""
        ...

    def image_tokens(self, image: ImagePart) -> int:
        """How many ``image_pad_id`` tokens ``image`` becomes."""
        ...


@runtime_checkable
class ImageBatchGenerator(BatchGenerator, ImageTokenizer, Protocol):
    """A ``BatchGenerator`` whose prompts may show images: ``images`` gives each prompt's images in
    the order of their pad runs."""

    @property
    def supports_images(self) -> bool:
        """Whether ``images=`` is taken."""
        ...

    def generate(self, prompts: list[list[int]], params: SamplingParams, *,
                 images: Sequence[Sequence[ImagePart]] | None = None) -> list[Generation]:
        """One ``Generation`` per prompt, in order."""
        ...


@runtime_checkable
class LogProbScorer(Protocol):
    """Recomputes per-token log-probs and entropies of given sequences, for the loss."""

    def forward_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        with_grad: bool = False,
        compute_entropy: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logprobs, entropy)``, both [B, T-1] float32: position t scores ``input_ids[:, t+1]``
        given ``input_ids[:, :t+1]``; positions whose target is padding hold 0. Padding may be on
        either side (positions come from the mask). With ``with_grad`` the graph is kept."""
        ...


@runtime_checkable
class PolicyBackend(BatchGenerator, LogProbScorer, Protocol):
    """A policy that both samples and scores (the HF backend)."""
