"""The in-process policy: the contract in ``base``, the Hugging Face policy in ``hf``, the
vision-language one in ``vlm``, the keys and values kept between a trajectory's turns in
``prefix_cache``; ``load_policy`` picks the class a checkpoint needs."""

from trainer.policy.base import (
    BatchGenerator,
    CachingBatchGenerator,
    FinishReason,
    Generation,
    ImageBatchGenerator,
    ImageTokenizer,
    LogProbScorer,
    PolicyBackend,
    SamplingParams,
)
from trainer.policy.hf import HFPolicy
from trainer.policy.loading import is_vision_checkpoint, load_policy
from trainer.policy.prefix_cache import PrefillStats, PrefixCache
from trainer.policy.vlm import VLMPolicy

__all__ = ["BatchGenerator", "CachingBatchGenerator", "FinishReason", "Generation", "HFPolicy",
           "ImageBatchGenerator", "ImageTokenizer", "LogProbScorer", "PolicyBackend", "PrefillStats", "PrefixCache",
           "SamplingParams", "VLMPolicy", "is_vision_checkpoint", "load_policy"]
