"""Question selection and pass-rate estimates (trainer/selection.py): pure functions, hand-checked."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from rlyard.domain import Task, TrajectoryStatus
from rlyard.errors import ConfigError
from trainer.algorithms import FilterConfig
from trainer.config import SelectionConfig, parse_config
from trainer.selection import (
    Drawn,
    PassRate,
    TaskDraws,
    band,
    group_pass_rates,
    groups_with_signal,
    pass_rate_shares,
    record_groups,
    select,
    skip_coin,
    update_rate,
)
from trainer.tasks import TaskSampler
from trainer.types import RolloutTrajectory

PASS_RATE = SelectionConfig(mode="pass_rate", ema=0.5, zero_at=0.05, one_at=0.95, skip=0.75, revisit=0.5)


def _traj(task: str, group: int, reward: float | None, component: float | None = None,
          status: TrajectoryStatus = TrajectoryStatus.COMPLETED) -> RolloutTrajectory:
    t = RolloutTrajectory(Task(task, []), group, 0, [1], status=status, reward=reward)
    if component is not None:
        t.reward_components = {"sql_execution": component, "format": 0.1}
    return t


def test_the_estimate_is_an_exponential_moving_average_of_group_pass_rates() -> None:
    first = update_rate(None, 0.25, 0.5, step=3)
    assert first == PassRate(0.25, 1, 3)                            # a first group is taken as it is
    second = update_rate(first, 1.0, 0.5, step=4)
    assert second == PassRate(0.625, 2, 4)                          # 0.5·0.25 + 0.5·1
    assert update_rate(second, 0.0, 0.5, step=9) == PassRate(0.3125, 3, 9)
    assert update_rate(second, 0.0, 1.0, step=9).estimate == 0.0    # weight 1: the last group alone


def test_bands_use_the_configured_edges() -> None:
    def at(p: float) -> str:
        return band(PassRate(p, 1, 1), PASS_RATE)

    assert band(None, PASS_RATE) == "unseen"
    assert [at(0.0), at(0.05), at(0.0501), at(0.5), at(0.9499), at(0.95), at(1.0)] == [
        "at_0", "at_0", "between", "between", "between", "at_1", "at_1"]


def test_a_group_pass_rate_is_the_mean_first_component_of_its_scored_samples() -> None:
    trajectories = [
        _traj("a", 0, 1.1, 1.0), _traj("a", 0, 0.1, 0.0), _traj("a", 0, None, status=TrajectoryStatus.INFRA_FAILED),
        _traj("b", 1, 0.0, 0.0), _traj("b", 1, 0.0, 0.0),
        _traj("c", 2, None, status=TrajectoryStatus.INFRA_FAILED),    # nothing scored: no estimate
        _traj("d", 3, 0.7), _traj("d", 3, 3.0),                      # no such component: the total, clipped
    ]
    assert group_pass_rates(trajectories, "sql_execution") == [("a", 0.5), ("b", 0.0), ("d", 0.85)]
    draws = TaskDraws(rates={"b": PassRate(0.5, 2, 1)})
    record_groups(draws, trajectories, "sql_execution", PASS_RATE, step=7)
    assert draws.rates == {"a": PassRate(0.5, 1, 7), "b": PassRate(0.25, 3, 7), "d": PassRate(0.85, 1, 7)}


def test_groups_with_signal_are_the_groups_the_update_keeps() -> None:
    failed = TrajectoryStatus.INFRA_FAILED
    trajectories = [
        _traj("a", 4, 0.0), _traj("a", 4, 0.0),                          # uniform
        _traj("b", 5, 0.0), _traj("b", 5, 1.0),                          # signal
        _traj("c", 6, None, status=failed), _traj("c", 6, None, status=failed),   # only failures
        _traj("d", 7, 1.0), _traj("d", 7, None, status=failed),          # one scored sample is no comparison
        _traj("e", 8, 0.5), _traj("e", 8, 0.5), _traj("e", 8, 0.2),      # signal
        _traj("f", 9, 0.0), _traj("f", 9, 1.0, status=TrajectoryStatus.TRUNCATED),
    ]
    assert groups_with_signal(trajectories, FilterConfig()) == [5, 8, 9]
    # dropping truncated trajectories leaves group 9 one sample: no signal any more
    assert groups_with_signal(trajectories, FilterConfig(drop_truncated=True)) == [5, 8]
    assert groups_with_signal([], FilterConfig()) == []


def _stream(n: int = 6, seed: int = 11) -> TaskSampler:
    return TaskSampler([Task(f"q{i}", []) for i in range(n)], seed)


def test_uniform_selection_is_the_stream_at_the_cursor() -> None:
    stream = _stream()
    draws = TaskDraws(cursor=4, rates={"q0": PassRate(0.0, 3, 1), "q1": PassRate(1.0, 3, 1)})
    draw = select(stream, draws, 5, SelectionConfig(), seed=11)
    assert [t.task_id for t in draw.tasks] == [t.task_id for t in stream.take(4, 5)]
    assert draw.cursor == 9 and draws.cursor == 4                       # the caller moves the cursor
    assert draw.counts["revisited"] == draw.counts["skipped"] == 0
    settled = sum(t.task_id in ("q0", "q1") for t in draw.tasks)      # drawn all the same
    assert draw.counts["settled"] == settled >= 1 and draw.counts["unseen"] == 5 - settled


def test_pass_rate_selection_revisits_then_walks_the_stream_skipping_settled_questions() -> None:
    stream = _stream()
    order = [t.task_id for t in stream.take(0, 6)]
    rates = {
        order[0]: PassRate(0.0, 2, 1),     # at 0
        order[1]: PassRate(0.5, 1, 5),     # between, rolled out at step 5
        order[2]: PassRate(1.0, 1, 2),     # at 1
        order[4]: PassRate(0.3, 1, 2),     # between, rolled out at step 2
        order[5]: PassRate(0.6, 1, 2),     # between, step 2 (tie with order[4]: by task id)
    }
    draws = TaskDraws(cursor=0, rates=rates)
    coins = [skip_coin(11, pos) for pos in range(6)]
    config = SelectionConfig(mode="pass_rate", skip=0.999, revisit=0.5)
    assert all(c < 0.999 for c in coins[:3])          # these seeds' coins: settled positions are skipped
    draw = select(stream, draws, 4, config, seed=11, taken={order[5]})
    # floor(0.5·4) = 2 revisits among the between questions not taken this step, least recent
    # first: order[4] (step 2) then order[1] (step 5); order[5] was drawn earlier in the step.
    # Then the stream: position 0 (at 0) skipped, 1 (between) drawn, 2 (at 1) skipped, 3 (unseen).
    assert [t.task_id for t in draw.tasks] == [order[4], order[1], order[1], order[3]]
    assert draw.cursor == 4
    assert draw.counts == {"revisited": 2, "unseen": 1, "between": 1, "settled": 0, "skipped": 2}
    # the same inputs, the same draw; skip 0 draws the settled ones too
    assert select(stream, draws, 4, config, seed=11, taken={order[5]}) == draw
    plain = select(stream, draws, 4, SelectionConfig(mode="pass_rate", skip=0.0, revisit=0.0), seed=11)
    assert [t.task_id for t in plain.tasks] == order[:4] and plain.counts["settled"] == 2


def test_one_question_a_round_is_never_a_revisit() -> None:
    stream = _stream()
    order = [t.task_id for t in stream.take(0, 6)]
    draws = TaskDraws(cursor=0, rates={order[3]: PassRate(0.5, 1, 1)})
    draw = select(stream, draws, 1, PASS_RATE, seed=11)          # floor(0.5 · 1) = 0: the stream goes on
    assert [t.task_id for t in draw.tasks] == [order[0]] and draw.counts["revisited"] == 0


def test_settled_questions_are_skipped_with_the_configured_probability_and_never_starved() -> None:
    stream = _stream(n=20, seed=3)
    draws = TaskDraws(rates={f"q{i}": PassRate(0.0 if i % 2 else 1.0, 4, 1) for i in range(20)})
    drawn: Counter[str] = Counter()
    skipped = 0
    for _ in range(400):
        draw = select(stream, draws, 2, PASS_RATE, seed=3)
        draws.cursor = draw.cursor
        drawn.update(t.task_id for t in draw.tasks)
        skipped += draw.counts["skipped"]
    assert set(drawn) == {f"q{i}" for i in range(20)}            # every question still comes up
    assert skipped / (skipped + 800) == pytest.approx(0.75, abs=0.02)


def test_draws_round_trip_through_json_exactly() -> None:
    draws = TaskDraws(cursor=17, cap_hits=2, rates={"a": PassRate(0.1 + 0.2, 3, 9), "b": PassRate(1 / 3, 1, 2)})
    again = TaskDraws.from_json(json.loads(json.dumps(draws.to_json())))
    assert again == draws and again.rates["a"].estimate == 0.1 + 0.2


def test_a_draw_made_ahead_comes_back_from_a_checkpoint_as_the_same_questions() -> None:
    # two questions share an id (a task file may repeat one): the draw keeps each by its place
    tasks = [Task("q0", []), Task("q1", [{"role": "user", "content": "a"}]), Task("q1", [{"role": "user",
                                                                                     "content": "b"}])]
    stream = TaskSampler(tasks, seed=5)
    draw = select(stream, TaskDraws(cursor=1), 3, SelectionConfig(), seed=5)
    draws = TaskDraws(cursor=draw.cursor, ahead={7: Drawn.of(draw, tasks)})
    again = TaskDraws.from_json(json.loads(json.dumps(draws.to_json())))
    assert again == draws
    assert [id(t) for t in again.ahead[7].tasks(tasks)] == [id(t) for t in draw.tasks]
    assert again.ahead[7].counts == draw.counts
    with pytest.raises(ValueError, match="not at their places in the stage's task file"):
        again.ahead[7].tasks(list(reversed(tasks)))
    with pytest.raises(ValueError, match="not at their places"):
        again.ahead[7].tasks(tasks[:1])


def test_pass_rate_shares_count_distinct_questions_per_band() -> None:
    tasks = [Task(f"q{i}", []) for i in range(8)] + [Task("q0", [])]
    draws = TaskDraws(rates={"q0": PassRate(0.0, 1, 1), "q1": PassRate(0.02, 1, 1), "q2": PassRate(0.5, 1, 1),
                             "q3": PassRate(1.0, 1, 1), "gone": PassRate(0.5, 1, 1)})
    assert pass_rate_shares(tasks, draws, PASS_RATE) == {"unseen": 0.5, "at_0": 0.25, "between": 0.125, "at_1": 0.125}


def _rl(rollout: dict[str, Any], filters: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": "x", "stages": [{"kind": "rl", "steps": 1, "reward": {"sql_execution": 1.0},
                                     "tasks": {"path": "t.jsonl"}, "rollout": rollout,
                                     "algorithm": {"filters": filters or {}}}]}


def test_dynamic_sampling_and_selection_configs_load_and_say_how_to_fix_a_value() -> None:
    config = parse_config(_rl({"dynamic_sampling": {"enabled": True, "max_rounds": 6, "oversample": 2},
                               "selection": {"mode": "pass_rate", "skip": 0.5}}))
    rollout = config.stages[0].rollout
    assert rollout.dynamic_sampling.enabled and rollout.dynamic_sampling.max_rounds == 6
    assert rollout.dynamic_sampling.oversample == 2.0 and isinstance(rollout.dynamic_sampling.oversample, float)
    assert rollout.selection.mode == "pass_rate" and rollout.selection.revisit == 0.5
    default = parse_config(_rl({})).stages[0].rollout
    assert not default.dynamic_sampling.enabled and default.selection.mode == "uniform"
    bad = [
        ({"dynamic_sampling": {"max_rounds": 0}}, r"dynamic_sampling\.max_rounds: must be >= 1"),
        ({"dynamic_sampling": {"oversample": 0.5}}, r"oversample: must be in \[1, 64\]"),
        ({"dynamic_sampling": {"rounds": 3}}, r"unknown key\(s\) rounds; valid keys: enabled, max_rounds, oversample"),
        ({"selection": {"mode": "greedy"}}, r"'greedy' is not one of 'uniform', 'pass_rate'"),
        ({"selection": {"ema": 0}}, r"selection\.ema: must be in \(0, 1\]"),
        ({"selection": {"zero_at": 0.5, "one_at": 0.5}}, r"need 0 <= zero_at < one_at <= 1"),
        ({"selection": {"skip": 1.0}}, r"selection\.skip: must be in \[0, 1\) \(1 would never draw"),
        ({"selection": {"revisit": 1.0}}, r"selection\.revisit: must be in \[0, 1\)"),
    ]
    for rollout_raw, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_config(_rl(rollout_raw))
    with pytest.raises(ConfigError, match="drop_equal_reward_groups false it keeps every group"):
        parse_config(_rl({"dynamic_sampling": {"enabled": True}}, {"drop_equal_reward_groups": False}))
