"""Samplers of the rollout engine: the async contract (``base``), the local backend over the
in-process policy (``local``, batching in ``batching``), and backends by name (``registry``)."""

from trainer.sampler.base import PrefixCaching, Sampler, SampleRequest, WeightVersionUnavailable
from trainer.sampler.batching import GenerationBatcher, batch_seed, derive_seed
from trainer.sampler.local import LocalSampler
from trainer.sampler.registry import BACKENDS, SamplerBackend, build_sampler, check_backend

__all__ = [
    "BACKENDS",
    "GenerationBatcher",
    "LocalSampler",
    "PrefixCaching",
    "SampleRequest",
    "Sampler",
    "SamplerBackend",
    "WeightVersionUnavailable",
    "batch_seed",
    "build_sampler",
    "check_backend",
    "derive_seed",
]
