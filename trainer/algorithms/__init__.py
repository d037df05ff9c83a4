"""RL algorithms as pure tensor functions (verl ``core_algos`` style), each unit-tested.

- ``advantages``: GRPO / Dr.GRPO group advantages.
- ``loss``: clipped surrogate (asymmetric clip), k3 KL, loss aggregation, ``policy_loss``.
- ``masks``: trajectory filters and the two-level (action × trajectory) loss mask.
- ``rest``: ResT token weights (region schedule and entropy-informed form).
"""

from trainer.algorithms.advantages import broadcast_to_tokens, grpo_advantages
from trainer.algorithms.loss import (
    LOSS_AGG_MODES,
    LossAggMode,
    PolicyLossConfig,
    SurrogateOutput,
    aggregate_loss,
    aggregation_denominator,
    clipped_surrogate,
    kl_k3,
    kl_penalty,
    masked_mean,
    needs_reference_model,
    policy_loss,
)
from trainer.algorithms.masks import (
    ActionMaskConfig,
    FilterConfig,
    FilterResult,
    Region,
    RegionLabels,
    action_mask,
    filter_trajectories,
    region_multi_hot,
    two_level_mask,
)
from trainer.algorithms.rest import (
    RestEntropyConfig,
    RestSchedule,
    rest_entropy_weights,
    rest_token_weights,
    token_entropy,
)

__all__ = [
    "LOSS_AGG_MODES",
    "ActionMaskConfig",
    "FilterConfig",
    "FilterResult",
    "LossAggMode",
    "PolicyLossConfig",
    "Region",
    "RegionLabels",
    "RestEntropyConfig",
    "RestSchedule",
    "SurrogateOutput",
    "action_mask",
    "aggregate_loss",
    "aggregation_denominator",
    "broadcast_to_tokens",
    "clipped_surrogate",
    "filter_trajectories",
    "grpo_advantages",
    "kl_k3",
    "kl_penalty",
    "masked_mean",
    "needs_reference_model",
    "policy_loss",
    "region_multi_hot",
    "rest_entropy_weights",
    "rest_token_weights",
    "token_entropy",
    "two_level_mask",
]
