"""The in-process policy: the contract in ``base``, the Hugging Face policy in ``hf``, the keys and
values kept between a trajectory's turns in ``prefix_cache``."""

from trainer.policy.base import (
    BatchGenerator,
    CachingBatchGenerator,
    FinishReason,
    Generation,
    LogProbScorer,
    PolicyBackend,
    SamplingParams,
)
from trainer.policy.hf import HFPolicy
from trainer.policy.prefix_cache import PrefillStats, PrefixCache

__all__ = ["BatchGenerator", "CachingBatchGenerator", "FinishReason", "Generation", "HFPolicy", "LogProbScorer",
           "PolicyBackend", "PrefillStats", "PrefixCache", "SamplingParams"]
