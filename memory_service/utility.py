"""Utility learning of meta-cognitions (arXiv 2511.07800, "weight optimization"), as pure functions.

For a task, half of a GRPO group is prompted with the retrieved meta-cognitions and half without;
ΔR = mean R(with) − mean R(without) is the feedback on each meta-cognition used. One update round:

    r        = round + 1                                   (a global counter of rounds)
    u_eff    = prior + (u − prior)·(1 − λ)^(r − 1 − last)   (decay toward the prior while unused)
    u'       = clip(u_eff + η·(ΔR − b), u_min, u_max)       (REINFORCE step with baseline b)
    b'       = (1 − β)·b + β·mean(ΔR of the round)          (running mean of ΔR)

The formula and its defaults are documented in docs/memory.md."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rlyard.errors import ConfigError


@dataclass(frozen=True)
class UtilityParams:
    """The update rule's constants: learning rate η, baseline momentum β, bounds, the prior the
    utility decays to and the decay rate λ per round a meta-cognition goes unused."""

    learning_rate: float = 0.5
    baseline_momentum: float = 0.1
    min_utility: float = 0.0
    max_utility: float = 1.0
    prior: float = 0.5
    decay: float = 0.01

    def __post_init__(self) -> None:
        values = (self.learning_rate, self.baseline_momentum, self.min_utility, self.max_utility, self.prior,
                  self.decay)
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"utility parameters must be finite numbers: {self}")
        if self.learning_rate < 0:
            raise ConfigError("the utility learning rate must be >= 0")
        if not 0 <= self.baseline_momentum <= 1:
            raise ConfigError("the baseline momentum must be in [0, 1] (0: no baseline update)")
        if not self.min_utility <= self.prior <= self.max_utility:
            raise ConfigError(f"the utility prior {self.prior} must lie within [min_utility, max_utility] = "
                              f"[{self.min_utility}, {self.max_utility}]")
        if not 0 <= self.decay <= 1:
            raise ConfigError("the utility decay per unused round must be in [0, 1] (0: no decay)")


def clip(value: float, low: float, high: float) -> float:
    """``value`` bounded to [low, high]."""
    return min(max(value, low), high)


def decayed(utility: float, rounds_unused: int, params: UtilityParams) -> float:
    """The utility after ``rounds_unused`` rounds without feedback: prior + (u − prior)·(1 − λ)^n."""
    if rounds_unused <= 0 or params.decay == 0:
        return utility
    return params.prior + (utility - params.prior) * (1.0 - params.decay) ** rounds_unused


def reinforce_step(utility: float, delta: float, baseline: float, learning_rate: float,
                   params: UtilityParams) -> float:
    """u + η·(ΔR − b), clipped to the bounds: a meta-cognition that helped more than the usual
    one gains utility, one that helped less (or hurt) loses it."""
    return clip(utility + learning_rate * (delta - baseline), params.min_utility, params.max_utility)


def next_baseline(baseline: float, deltas: Sequence[float], params: UtilityParams) -> float:
    """The running mean of ΔR after a round: (1 − β)·b + β·mean(deltas); unchanged without deltas."""
    if not deltas:
        return baseline
    return (1.0 - params.baseline_momentum) * baseline + params.baseline_momentum * (sum(deltas) / len(deltas))


def updated(utility: float, last_round: int, round_: int, delta: float, baseline: float, learning_rate: float,
            params: UtilityParams) -> float:
    """A meta-cognition's utility after feedback ``delta`` in round ``round_`` (it was last updated in
    ``last_round``): the decay of the rounds in between, then the REINFORCE step."""
    return reinforce_step(decayed(utility, round_ - 1 - last_round, params), delta, baseline, learning_rate, params)
