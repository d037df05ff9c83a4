"""The staleness rule of finished groups, against hand-worked cases."""

from __future__ import annotations

import pytest

from trainer.workers.staleness import Staleness, group_staleness, judge_staleness


def test_staleness_counts_from_the_oldest_version_of_the_group() -> None:
    assert group_staleness([7, 7, 7], 7) == 0
    assert group_staleness([5, 6], 7) == 2        # a turn sampled by version 5: as stale as that
    assert group_staleness([], 7) == 0            # nothing sampled, nothing to correct


def test_the_bound_keeps_groups_at_most_max_staleness_behind() -> None:
    assert judge_staleness([6], 7, 1) == Staleness(versions_behind=1, keep=True)
    assert judge_staleness([5], 7, 1) == Staleness(versions_behind=2, keep=False)
    assert judge_staleness([7], 7, 0) == Staleness(versions_behind=0, keep=True)
    assert judge_staleness([6], 7, 0) == Staleness(versions_behind=1, keep=False)


def test_versions_from_the_future_and_negative_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="newer than the trainer's 7"):
        group_staleness([8], 7)
    with pytest.raises(ValueError, match="max_staleness=-1"):
        judge_staleness([7], 7, -1)
