"""Settings of the sampler service (environment prefix ``RLYARD_SAMPLER``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlyard.errors import ConfigError
from rlyard.settings import EnvSettings
from trainer.policy.prefix_cache import DEFAULT_MAX_TOKENS

SERVICE_BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class SamplerSettings(EnvSettings):
    """``policy_dir``: the base checkpoint (model, tokenizer); ``weights_root``: where the trainer
    publishes new versions (empty: the base weights only); ``backend``: hf (transformers on the
    CPU or ``device``) or vllm; ``max_batch_size``: rows of one generate call (0: no cap);
    ``keep_versions``: versions kept loaded for trajectories that began on them; ``poll_s``: how
    often ``LATEST`` is read; ``max_model_len``: prompt + new tokens (0: the model's positions)."""

    policy_dir: Path = Path("runs/policy")
    weights_root: Path | None = None
    backend: str = "hf"
    max_batch_size: int = 0
    keep_versions: int = 2
    poll_s: float = 0.5
    cache_max_tokens: int = DEFAULT_MAX_TOKENS
    max_model_len: int = 0
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.backend not in SERVICE_BACKENDS:
            raise ConfigError(f"RLYARD_SAMPLER_BACKEND={self.backend!r}: use one of {', '.join(SERVICE_BACKENDS)}")
        if self.max_batch_size < 0:
            raise ConfigError(f"RLYARD_SAMPLER_MAX_BATCH_SIZE={self.max_batch_size}: use >= 1, or 0 for no cap")
        if self.keep_versions < 1:
            raise ConfigError(f"RLYARD_SAMPLER_KEEP_VERSIONS={self.keep_versions}: keep at least 1 version")
        if self.poll_s <= 0:
            raise ConfigError(f"RLYARD_SAMPLER_POLL_S={self.poll_s}: must be > 0 seconds")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"RLYARD_SAMPLER_DTYPE={self.dtype!r}: use float32 or bfloat16")
