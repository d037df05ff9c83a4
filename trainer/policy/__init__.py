"""The in-process policy: the contract in ``base``, the Hugging Face policy in ``hf``."""

from trainer.policy.base import (
    BatchGenerator,
    FinishReason,
    Generation,
    LogProbScorer,
    PolicyBackend,
    SamplingParams,
)
from trainer.policy.hf import HFPolicy

__all__ = ["BatchGenerator", "FinishReason", "Generation", "HFPolicy", "LogProbScorer", "PolicyBackend",
           "SamplingParams"]
