"""The graph memory's prompting and half-group ablation (``trainer/memory.py``) against hand-computed values."""

from __future__ import annotations

from typing import Any

import pytest

from rlyard.domain import MetaCognition, ScoredMetaCognition, Task, TrajectoryStatus, UtilityUpdate
from trainer.memory import (
    GroupOutcome,
    explore_order,
    group_outcomes,
    memory_block,
    memory_metrics,
    memory_samples,
    reward_gap,
    task_text,
    task_type,
    utility_updates,
    with_memory,
)
from trainer.types import RolloutTrajectory


class Words:
    """A tokenizer whose tokens are whitespace-separated words: counts a test can do by hand."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [len(word) for word in text.split()]


def _item(mid: str, text: str, utility: float = 0.5) -> ScoredMetaCognition:
    return ScoredMetaCognition(MetaCognition(mid, text, utility), score=utility, relevance=1.0)


def _task(**kwargs: Any) -> Task:
    messages = [{"role": "system", "content": "You answer in SQL."}, {"role": "user", "content": "How many singers?"}]
    return Task("q1", messages, **kwargs)


def test_the_task_type_comes_from_a_label_the_context_or_a_fixed_name() -> None:
    task = _task(context={"db_id": "concert_singer"}, labels={"template": "count_all"})
    assert task_type(task, "label:template") == "count_all"
    assert task_type(task, "context:db_id") == "concert_singer"
    assert task_type(task, "fixed:text_to_sql") == "text_to_sql"
    assert task_type(task, "label:slice") == "" and task_type(task, "") == ""


def test_the_task_text_is_the_last_user_message() -> None:
    assert task_text(_task()) == "How many singers?"
    parts = Task("v", [{"role": "user", "content": [{"type": "image", "image_id": "p"},
                                                     {"type": "text", "text": "What colour?"}]}])
    assert task_text(parts) == "What colour?"
    assert task_text(Task("none", [{"role": "system", "content": "x"}])) == ""


def test_whole_items_in_rank_order_fit_the_token_budget() -> None:
    items = [_item("a", "check the schema first"),            # "- check the schema first": 5 words
             _item("b", "a very long strategy that does not fit the budget at all"),   # 13 words
             _item("c", "count  rows\nwith count(*)"),         # whitespace collapsed: "- count rows with count(*)": 5
             _item("d", "   ")]                                 # empty: dropped
    # header 1 word + a 5 + c 5 = 11; with b it would be 24
    block = memory_block(items, Words(), budget=11, header="Strategies:")
    assert [i.meta_cognition.id for i in block.items] == ["a", "c"]
    assert block.text == "Strategies:\n- check the schema first\n- count rows with count(*)"
    assert (block.tokens, block.dropped) == (11, 2)
    tight = memory_block(items, Words(), budget=10, header="Strategies:")     # one short: c no longer fits
    assert [i.meta_cognition.id for i in tight.items] == ["a"] and (tight.tokens, tight.dropped) == (6, 3)
    assert memory_block(items, Words(), budget=5, header="Strategies:").items == ()   # nothing fits: no block
    assert memory_block([], Words(), budget=100, header="Strategies:") == memory_block([], Words(), 1, "x")


def test_the_budget_counts_the_policys_own_tokens(tiny_tokenizer: Any) -> None:
    items = [_item("a", "select name from singer"), _item("b", "count the singer table")]
    full = memory_block(items, tiny_tokenizer, budget=10_000, header="Strategies:")
    n = len(tiny_tokenizer.encode(full.text, add_special_tokens=False))
    assert full.tokens == n and len(full.items) == 2
    assert len(memory_block(items, tiny_tokenizer, budget=n - 1, header="Strategies:").items) == 1


def test_the_memories_go_into_the_system_message() -> None:
    task = _task()
    block = memory_block([_item("a", "check the schema")], Words(), 100, "Strategies:")
    shown = with_memory(task, block)
    assert shown.messages[0] == {"role": "system",
                                 "content": "You answer in SQL.\n\nStrategies:\n- check the schema"}
    assert shown.messages[1:] == task.messages[1:] and shown.task_id == task.task_id
    assert task.messages[0]["content"] == "You answer in SQL."          # the task itself is unchanged
    bare = Task("q2", [{"role": "user", "content": "hi"}])
    assert with_memory(bare, block).messages == [{"role": "system", "content": "Strategies:\n- check the schema"},
                                                 {"role": "user", "content": "hi"}]
    parts = Task("q3", [{"role": "system", "content": [{"type": "text", "text": "Look."}]}])
    assert with_memory(parts, block).messages[0]["content"][-1] == {
        "type": "text", "text": "\n\nStrategies:\n- check the schema"}
    empty = memory_block([], Words(), 100, "Strategies:")
    assert with_memory(task, empty) is task


def test_the_ablation_prompts_the_first_half_of_a_group() -> None:
    assert memory_samples(4, ablation=True) == (True, True, False, False)
    assert memory_samples(3, ablation=True) == (True, True, False)
    assert memory_samples(3, ablation=False) == (True, True, True)


def test_exploration_ranks_by_an_upper_confidence_bound_on_the_score() -> None:
    def item(mid: str, score: float, relevance: float, uses: int) -> ScoredMetaCognition:
        return ScoredMetaCognition(MetaCognition(mid, mid, score / relevance, uses=uses), score=score,
                                   relevance=relevance)

    a, b, c = item("a", 0.8, 1.0, 3), item("b", 0.5, 1.0, 0), item("c", 0.3, 0.5, 0)
    # by hand, score + relevance · bonus / sqrt(1 + uses):
    # bonus 0.5: a 0.8 + 0.5/2 = 1.05, b 0.5 + 0.5 = 1.0, c 0.3 + 0.25 = 0.55
    assert [i.meta_cognition.id for i in explore_order([c, b, a], 0.5)] == ["a", "b", "c"]
    # bonus 1: a 0.8 + 0.5 = 1.3, b 1.5, c 0.3 + 0.5 = 0.8: the untried one first
    assert [i.meta_cognition.id for i in explore_order([a, b, c], 1.0)] == ["b", "a", "c"]
    assert [i.meta_cognition.id for i in explore_order([a, c, b], 0.0)] == ["a", "b", "c"]     # the score alone
    twin = item("a2", 0.8, 1.0, 3)
    assert [i.meta_cognition.id for i in explore_order([twin, a], 0.5)] == ["a2", "a"]          # ties keep order


def test_the_reward_gap_is_the_difference_of_the_halves_means() -> None:
    assert reward_gap([1.0, 0.5, 0.0, 0.25], [True, True, False, False]) == (0.75, 0.125)
    assert reward_gap([1.0, None, None, 0.0], [True, True, False, False]) == (1.0, 0.0)   # unscored: left out
    assert reward_gap([1.0, 0.5, None, None], [True, True, False, False]) is None        # no baseline
    assert reward_gap([1.0, 0.5], [False, False]) is None


def test_utility_updates_average_each_meta_cognitions_groups() -> None:
    groups = [
        GroupOutcome(("m1", "m2"), (1.0, 0.5, 0.0, 0.25), (True, True, False, False)),    # 0.75 vs 0.125
        GroupOutcome(("m2", "m3"), (0.0, 0.0, 1.0, 1.0), (True, True, False, False)),     # 0 vs 1
        GroupOutcome(("m4",), (1.0, 1.0, None, None), (True, True, False, False)),        # no evidence
        GroupOutcome((), (0.0, 1.0), (False, False)),                                      # no memory shown
    ]
    assert utility_updates(groups) == [
        UtilityUpdate("m1", 0.75, 0.125),
        UtilityUpdate("m2", 0.375, 0.5625),         # (0.75 + 0) / 2, (0.125 + 1) / 2
        UtilityUpdate("m3", 0.0, 1.0),
    ]
    assert utility_updates(groups)[1].delta == pytest.approx(-0.1875)


def _traj(group: int, sample: int, reward: float | None, memories: tuple[ScoredMetaCognition, ...] = (),
          status: TrajectoryStatus = TrajectoryStatus.COMPLETED) -> RolloutTrajectory:
    return RolloutTrajectory(task=Task(f"q{group}", []), group_id=group, sample_index=sample, prompt_ids=[1],
                             reward=reward, status=status, memories=memories)


def test_groups_and_metrics_of_a_step() -> None:
    a, b = _item("a", "x", utility=0.8), _item("b", "y", utility=0.2)
    rolled = [
        _traj(0, 1, 0.0, (a, b)), _traj(0, 0, 1.0, (a, b)), _traj(0, 2, 0.5), _traj(0, 3, None,
                                                                                   status=TrajectoryStatus.INFRA_FAILED),
        _traj(1, 0, 1.0, (b,)), _traj(1, 1, 0.0),
        _traj(2, 0, 0.0), _traj(2, 1, 1.0),                   # retrieval gave nothing: no memory
    ]
    assert group_outcomes(rolled) == [
        GroupOutcome(("a", "b"), (1.0, 0.0, 0.5, None), (True, True, False, False)),
        GroupOutcome(("b",), (1.0, 0.0), (True, False)),
        GroupOutcome((), (0.0, 1.0), (False, False)),
    ]
    assert utility_updates(group_outcomes(rolled)) == [UtilityUpdate("a", 0.5, 0.5), UtilityUpdate("b", 0.75, 0.25)]
    assert memory_metrics(rolled) == {
        "memory/hit_rate": pytest.approx(2 / 3),
        "memory/reward_with": pytest.approx((1.0 + 0.0 + 1.0) / 3),
        "memory/reward_without": pytest.approx((0.5 + 0.0) / 2),   # groups with memory only; INFRA_FAILED left out
        "memory/shown": 2.0,
        "memory/utility_mean": pytest.approx(0.5),
    }
    assert memory_metrics([_traj(0, 0, 1.0)]) == {"memory/hit_rate": 0.0, "memory/shown": 0.0}
