"""The utility update against hand-computed values."""

from __future__ import annotations

import pytest

from memory_service.utility import UtilityParams, decayed, next_baseline, reinforce_step, updated
from rlyard.errors import ConfigError

P = UtilityParams(learning_rate=0.5, baseline_momentum=0.1, min_utility=0.0, max_utility=1.0, prior=0.5, decay=0.1)


def test_decay_moves_toward_the_prior_geometrically() -> None:
    # 0.5 + (0.9 - 0.5) * 0.9^2 = 0.5 + 0.4 * 0.81 = 0.824
    assert decayed(0.9, 2, P) == pytest.approx(0.824)
    # 0.5 + (0.1 - 0.5) * 0.9 = 0.14
    assert decayed(0.1, 1, P) == pytest.approx(0.14)
    assert decayed(0.9, 0, P) == 0.9


def test_the_reinforce_step_subtracts_the_baseline_and_clips() -> None:
    # 0.5 + 0.5 * (0.6 - 0.2) = 0.7
    assert reinforce_step(0.5, 0.6, 0.2, 0.5, P) == pytest.approx(0.7)
    # helped less than usual: 0.5 + 0.5 * (0.1 - 0.3) = 0.4
    assert reinforce_step(0.5, 0.1, 0.3, 0.5, P) == pytest.approx(0.4)
    assert reinforce_step(0.9, 1.0, 0.0, 0.5, P) == 1.0      # 1.4 clipped to max
    assert reinforce_step(0.1, -1.0, 0.0, 0.5, P) == 0.0     # -0.4 clipped to min


def test_the_baseline_is_a_running_mean_of_the_rounds_deltas() -> None:
    # 0.9 * 0.2 + 0.1 * mean(0.6, 1.0) = 0.18 + 0.08 = 0.26
    assert next_baseline(0.2, [0.6, 1.0], P) == pytest.approx(0.26)
    assert next_baseline(0.2, [], P) == 0.2


def test_an_update_decays_the_rounds_it_missed_then_steps() -> None:
    # last updated in round 3, now round 6: 2 rounds missed → 0.824; then + 0.5 * (0.2 - 0.1) = 0.874
    assert updated(0.9, 3, 6, 0.2, 0.1, 0.5, P) == pytest.approx(0.874)
    # updated in the previous round: no decay
    assert updated(0.9, 5, 6, 0.2, 0.1, 0.5, P) == pytest.approx(0.95)


@pytest.mark.parametrize("bad", [dict(learning_rate=-1.0), dict(prior=2.0), dict(decay=1.5),
                                 dict(baseline_momentum=-0.1), dict(max_utility=float("nan"))])
def test_bad_parameters_are_refused_with_the_reason(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        UtilityParams(**bad)
