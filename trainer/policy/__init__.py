"""Policy backends: the contract in ``base``, the Hugging Face backend in ``hf``."""

from trainer.policy.base import FinishReason, Generation, LogProbScorer, PolicyBackend, Sampler, SamplingParams
from trainer.policy.hf import HFPolicy

__all__ = ["FinishReason", "Generation", "HFPolicy", "LogProbScorer", "PolicyBackend", "Sampler", "SamplingParams"]
