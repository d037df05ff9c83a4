"""Batching alignment, SFT and GRPO steps on the tiny policy."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from experiments.agreement import flat_gradient
from rlyard.domain import Task, TrajectoryStatus
from trainer.algorithms import (
    LOSS_AGG_MODES,
    FilterConfig,
    PolicyLossConfig,
    grpo_advantages,
    policy_loss,
    rest_token_weights,
)
from trainer.batching import TokenBatch, collate, collate_trajectories, length_chunks
from trainer.config import AlgorithmConfig, OptimConfig, RolloutConfig, StageConfig
from trainer.grpo import _micro_batches, frozen_reference, grpo_update
from trainer.parsing import Region
from trainer.policy.hf import HFPolicy
from trainer.sft import SftData, SftExample, render_messages, sft_loss, sft_step
from trainer.types import RolloutTrajectory


@pytest.fixture
def policy(tiny_model_dir: Path) -> HFPolicy:
    return HFPolicy(tiny_model_dir)


def _params(policy: HFPolicy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.model.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], policy: HFPolicy) -> bool:
    return any(not torch.equal(before[k], v) for k, v in policy.model.state_dict().items())


# ------------------------------------------------------------------ batching
def test_collate_alignment_by_hand(policy: HFPolicy) -> None:
    pad = policy.pad_token_id
    batch = collate(
        [[10, 11], [20]], [[12, 13, 14], [21]], [[1, 0, 1], [1]], pad_token_id=pad,
        old_logprobs=[[-0.1, 0.0, -0.3], [-0.5]], regions=[[3, 1, 4], [6]],
    )
    assert batch.input_ids.tolist() == [[10, 11, 12, 13, 14], [20, 21, pad, pad, pad]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    # position t scores input_ids[t+1]: token 12 (first generated) is scored at position 1
    assert batch.loss_mask.tolist() == [[0, 1, 0, 1], [1, 0, 0, 0]]
    assert torch.allclose(batch.old_logprobs, torch.tensor([[0, -0.1, 0, -0.3], [-0.5, 0, 0, 0]]))
    assert batch.regions.tolist() == [[0, 3, 1, 4], [6, 0, 0, 0]]
    # and forward_logprobs agrees: position 1 of row 0 is log p(12 | 10 11)
    logp, _ = policy.forward_logprobs(batch.input_ids, batch.attention_mask)
    with torch.no_grad():
        direct = torch.log_softmax(policy.model(torch.tensor([[10, 11]])).logits[0, -1].float(), -1)[12]
    assert math.isclose(float(logp[0, 1]), float(direct), abs_tol=1e-5)
    assert float(logp[1, 1]) == 0.0  # padding


def test_collate_without_prompt_drops_first_token() -> None:
    batch = collate([[]], [[5, 6, 7]], [[1, 1, 1]], pad_token_id=0)
    assert batch.loss_mask.tolist() == [[1, 1]]


# ------------------------------------------------------------------ SFT
def test_render_messages_masks_assistant_turns(tiny_tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "answer the query"},
        {"role": "user", "content": "how many singer"},
        {"role": "assistant", "content": "select count"},
        {"role": "user", "content": "the table"},
        {"role": "assistant", "content": "<answer>6</answer>"},
    ]
    ex = render_messages(tiny_tokenizer, messages)
    text = tiny_tokenizer.decode(ex.token_ids, skip_special_tokens=False)
    assert text == tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    trained = [t for t, m in zip(ex.token_ids, ex.loss_mask, strict=True) if m]
    assert tiny_tokenizer.decode(trained, skip_special_tokens=False) == (
        "select count<|im_end|>\n<answer>6</answer><|im_end|>\n"
    )


def test_sft_data_order_is_seeded_and_resumable() -> None:
    examples = [SftExample([], [1, 2], [1, 1]) for _ in range(5)]
    a = SftData(examples, seed=1, pad_token_id=0)
    seen = [a.indices(3) for _ in range(4)]
    assert sorted(seen[0] + seen[1][:2]) == [0, 1, 2, 3, 4]  # first epoch is a permutation
    b = SftData(examples, seed=1, pad_token_id=0, cursor=6)
    assert b.indices(3) == seen[2]


def test_sft_step_changes_parameters(policy: HFPolicy, tiny_tokenizer: Any) -> None:
    ids = tiny_tokenizer.encode("select name from singer where age", add_special_tokens=False)
    batch = collate([ids[:2]], [ids[2:]], [[1] * (len(ids) - 2)], pad_token_id=policy.pad_token_id)
    before = _params(policy)
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-3)
    metrics = sft_step(policy, optimizer, batch)
    assert _changed(before, policy)
    assert metrics["tokens"] == len(ids) - 2 and metrics["loss"] > 0


# ------------------------------------------------------------------ GRPO
def _trajectory(policy: HFPolicy, tok: Any, group: int, sample: int, answer: str,
                reward: float | None, status: TrajectoryStatus = TrajectoryStatus.COMPLETED) -> RolloutTrajectory:
    """prompt, an assistant turn, a tool observation (mask 0), a final answer; old log-probs from the policy."""
    text = tok.apply_chat_template([{"role": "user", "content": f"how many singer {group}"}],
                                   add_generation_prompt=True, tokenize=False)
    prompt = tok.encode(text, add_special_tokens=False)
    call = tok.encode('<tool_call>{"name": "sql_query"}</tool_call><|im_end|>', add_special_tokens=False)
    obs = tok.encode("\n<|im_start|>tool\n6<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    ans = tok.encode(f"<answer>{answer}</answer><|im_end|>", add_special_tokens=False)
    tokens = call + obs + ans
    mask = [1] * len(call) + [0] * len(obs) + [1] * len(ans)
    regions = ([int(Region.TOOL_NAME)] * len(call) + [int(Region.OBSERVATION)] * len(obs)
               + [int(Region.ANSWER)] * len(ans))
    logp, _ = policy.forward_logprobs(torch.tensor([prompt + tokens]))
    p = len(prompt)
    old = [float(logp[0, p + j - 1]) if m else 0.0 for j, m in enumerate(mask)]
    return RolloutTrajectory(task=Task(f"t{group}", []), group_id=group, sample_index=sample, prompt_ids=prompt,
                             token_ids=tokens, loss_mask=mask, old_logprobs=old, regions=regions,
                             status=status, reward=reward)


def _stage(**algo: object) -> StageConfig:
    algorithm = AlgorithmConfig(**{"updates_per_batch": 1, "micro_batch_size": 2, **algo})  # type: ignore[arg-type]
    return StageConfig(kind="rl", steps=10, reward={"exact_match": 1.0},
                       rollout=RolloutConfig(group_size=2, prompts_per_step=2), algorithm=algorithm)


def test_grpo_step_changes_parameters_with_ratio_one(policy: HFPolicy, tiny_tokenizer: Any) -> None:
    trajs = [_trajectory(policy, tiny_tokenizer, g, s, str(s), float(s)) for g in range(2) for s in range(2)]
    before = _params(policy)
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-3)
    metrics = grpo_update(policy, optimizer, trajs, _stage(), step=0)
    assert _changed(before, policy)
    assert metrics["kept"] == 4 and metrics["dropped"] == 0
    assert math.isclose(metrics["ratio_mean"], 1.0, abs_tol=1e-4)
    assert metrics["clip_frac"] == 0.0 and abs(metrics["approx_kl"]) < 1e-6
    assert metrics["reward_mean"] == 0.5 and metrics["tokens"] > 0 and metrics["entropy"] > 0
    assert "entropy/answer" in metrics and "entropy/observation" not in metrics


def test_a_step_whose_every_trajectory_failed_reports_no_reward(policy: HFPolicy, tiny_tokenizer: Any) -> None:
    """Nothing was scored: reward_mean and reward_std are missing (they were 0.0, a reward no
    trajectory earned, drawn into the curves); nothing is updated."""
    failed = TrajectoryStatus.INFRA_FAILED
    trajs = [_trajectory(policy, tiny_tokenizer, g, s, str(s), None, failed) for g in range(2) for s in range(2)]
    before = _params(policy)
    metrics = grpo_update(policy, torch.optim.AdamW(policy.model.parameters(), lr=1e-3), trajs, _stage(), step=0)
    assert "reward_mean" not in metrics and "reward_std" not in metrics
    assert metrics["kept"] == 0 and metrics["updated"] == 0.0 and not _changed(before, policy)


def _update_result(
    tiny_model_dir: Path, tok: Any, build: Any, stage: StageConfig
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    policy = HFPolicy(tiny_model_dir)
    trajs = build(policy, tok)
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-3)
    metrics = grpo_update(policy, optimizer, trajs, stage, step=0)
    return _params(policy), metrics


def test_uniform_group_and_infra_failure_give_no_gradient(tiny_model_dir: Path, tiny_tokenizer: Any) -> None:
    def informative(policy: HFPolicy, tok: Any) -> list[RolloutTrajectory]:
        return [_trajectory(policy, tok, 0, s, str(s), float(s)) for s in range(2)]

    def with_noise(policy: HFPolicy, tok: Any) -> list[RolloutTrajectory]:
        uniform = [_trajectory(policy, tok, 1, s, "7", 1.0) for s in range(2)]
        failed = _trajectory(policy, tok, 0, 2, "9", None, TrajectoryStatus.INFRA_FAILED)
        return informative(policy, tok) + uniform + [failed]

    stage = _stage()
    clean, m_clean = _update_result(tiny_model_dir, tiny_tokenizer, informative, stage)
    noisy, m_noisy = _update_result(tiny_model_dir, tiny_tokenizer, with_noise, stage)
    assert all(torch.equal(clean[k], noisy[k]) for k in clean)
    assert m_noisy["kept"] == 2 and m_noisy["dropped"] == 3
    assert m_noisy["dropped/uniform_group"] == 2 and m_noisy["dropped/infra_failed"] == 1
    assert m_noisy["tokens"] == m_clean["tokens"]
    # with the filter off, the uniform group's (zero-advantage) tokens enter the loss and change the update
    loose = _stage(filters=FilterConfig(drop_equal_reward_groups=False))
    unfiltered, m_unf = _update_result(tiny_model_dir, tiny_tokenizer, with_noise, loose)
    assert m_unf["kept"] == 4
    assert any(not torch.equal(clean[k], unfiltered[k]) for k in clean)


def test_all_filtered_means_no_update(policy: HFPolicy, tiny_tokenizer: Any) -> None:
    trajs = [_trajectory(policy, tiny_tokenizer, 0, s, "1", 1.0) for s in range(2)]
    before = _params(policy)
    metrics = grpo_update(policy, torch.optim.AdamW(policy.model.parameters(), lr=1e-3), trajs, _stage(), step=0)
    assert metrics["updated"] == 0.0 and not _changed(before, policy)


def test_grpo_with_reference_and_rest_weights(policy: HFPolicy, tiny_tokenizer: Any) -> None:
    trajs = [_trajectory(policy, tiny_tokenizer, g, s, str(s), float(s)) for g in range(2) for s in range(2)]
    reference = frozen_reference(policy)
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-3)
    stage = _stage(kl_coef=0.1, updates_per_batch=2, token_weighting="rest-schedule", loss_agg="weighted-token-mean")
    metrics = grpo_update(policy, optimizer, trajs, stage, step=100, reference=reference)
    assert metrics["kl"] >= 0 and metrics["rest/weight/reasoning"] == pytest.approx(0.8)
    assert metrics["rest/weight/tool_name"] == pytest.approx(1.2)
    entropy_stage = dataclasses.replace(stage, algorithm=dataclasses.replace(
        stage.algorithm, kl_coef=0.0, token_weighting="rest-entropy"))
    metrics = grpo_update(policy, optimizer, trajs, entropy_stage, step=5)
    assert "rest/weight/tool_name" in metrics and "rest/entropy/answer" in metrics
    with pytest.raises(ValueError, match="reference"):
        grpo_update(policy, optimizer, trajs, stage, step=0)


def test_entropy_metric_is_the_entropy_before_the_update(tiny_model_dir: Path, tiny_tokenizer: Any) -> None:
    """Without ResT's entropy weights the first update's forward measures the entropy (no extra
    pass); it must equal what the separate no-grad pass measures on the same weights."""
    def entropy_after(stage: StageConfig) -> dict[str, float]:
        policy = HFPolicy(tiny_model_dir)
        trajs = [_trajectory(policy, tiny_tokenizer, g, s, str(s), float(s)) for g in range(2) for s in range(2)]
        optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-2)
        metrics = grpo_update(policy, optimizer, trajs, stage, step=0)
        return {k: v for k, v in metrics.items() if k.startswith("entropy")}

    plain = entropy_after(_stage(updates_per_batch=3))
    separate = entropy_after(_stage(updates_per_batch=3, loss_agg="weighted-token-mean",
                                    token_weighting="rest-entropy"))
    assert plain.keys() == separate.keys() and "entropy/answer" in plain
    for key, value in plain.items():
        assert value == pytest.approx(separate[key], rel=1e-5), key
    policy = HFPolicy(tiny_model_dir)
    trajs = [_trajectory(policy, tiny_tokenizer, g, s, str(s), float(s)) for g in range(2) for s in range(2)]
    batch = collate_trajectories(trajs, pad_token_id=policy.pad_token_id)
    # measured inside a forward with gradients, as the first update does: a value, not part of the graph
    _, ent = policy.forward_logprobs(batch.input_ids, batch.attention_mask, with_grad=True)
    assert ent is not None and not ent.requires_grad
    mask = batch.loss_mask.to(ent.dtype)
    assert plain["entropy"] == pytest.approx(float((ent * mask).sum() / mask.sum()), rel=1e-5)


def test_grpo_update_reports_each_update_gradient_before_clipping(tiny_model_dir: Path, tiny_tokenizer: Any) -> None:
    policy = HFPolicy(tiny_model_dir)
    trajs = [_trajectory(policy, tiny_tokenizer, g, s, str(s), float(s)) for g in range(2) for s in range(2)]
    stage = _stage(updates_per_batch=2)
    stage = dataclasses.replace(stage, optim=OptimConfig(max_grad_norm=1e-6))
    seen: list[tuple[int, float]] = []
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-3)
    metrics = grpo_update(policy, optimizer, trajs, stage, step=0,
                          on_gradient=lambda u: seen.append((u, float(flat_gradient(policy.model).norm()))))
    assert [u for u, _ in seen] == [0, 1]
    assert seen[0][1] > 1e-3                                   # the raw gradient, not the clipped one (1e-6)
    assert metrics["grad_norm"] == pytest.approx((seen[0][1] + seen[1][1]) / 2, rel=1e-4)   # the norms clipping saw


def test_collate_trajectories_matches_stored_logprobs(policy: HFPolicy, tiny_tokenizer: Any) -> None:
    trajs = [_trajectory(policy, tiny_tokenizer, 0, s, "x" * (s + 1), 0.0) for s in range(2)]
    batch = collate_trajectories(trajs, pad_token_id=policy.pad_token_id)
    logp, _ = policy.forward_logprobs(batch.input_ids, batch.attention_mask)
    m = batch.loss_mask.bool()
    assert torch.allclose(logp[m], batch.old_logprobs[m], atol=1e-5)
    assert int(batch.loss_mask.sum()) == sum(t.num_generated for t in trajs)


# ------------------------------------------------------------------ padding-free micro-batches
def test_length_chunks_and_trimmed_by_hand() -> None:
    assert length_chunks([5, 2, 9, 2, 7], 2) == [[1, 3], [0, 4], [2]]
    with pytest.raises(ValueError, match="chunk size"):
        length_chunks([1], 0)
    batch = collate([[1, 2], [3], [4, 5, 6]], [[7, 8], [9], [1, 2, 3]], [[1, 1], [1], [0, 1, 1]], pad_token_id=0)
    assert batch.input_ids.shape == (3, 6) and batch.width == 6
    short = batch.select([0, 1]).trimmed()          # rows of 4 and 2 tokens: 2 padding columns go
    assert short.width == 4 and short.input_ids.tolist() == [[1, 2, 7, 8], [3, 9, 0, 0]]
    assert short.loss_mask.tolist() == [[0, 1, 1], [1, 0, 0]] and short.old_logprobs.shape == (2, 3)
    assert batch.trimmed() is batch


def _grads(policy: HFPolicy) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in policy.model.parameters() if p.grad is not None]).clone()


def test_sft_step_micro_batches_give_the_gradient_of_one_pass(policy: HFPolicy, tiny_tokenizer: Any) -> None:
    """Length-sorted micro-batches, each cut to its own width: the same loss and gradient as one
    forward over the whole padded batch."""
    texts = ["select name", "how many singer are there in the concert stadium where the age is over 30",
             "select count(*) from singer", "a", "select name from singer where age > 3 order by name desc"]
    rows = [tiny_tokenizer.encode(t, add_special_tokens=False) for t in texts]
    batch = collate([r[:1] for r in rows], [r[1:] for r in rows], [[1] * (len(r) - 1) for r in rows],
                    pad_token_id=policy.pad_token_id)
    policy.model.zero_grad()
    loss, count = sft_loss(policy, batch)
    loss.backward()
    whole = _grads(policy)
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.0)
    metrics = sft_step(policy, optimizer, batch, max_grad_norm=1e9, micro_rows=2)
    assert metrics["loss"] == pytest.approx(float(loss.detach()), rel=1e-5) and metrics["tokens"] == count
    assert torch.allclose(_grads(policy), whole, atol=1e-6, rtol=1e-4)


def test_grpo_micro_batches_cut_to_their_width_change_nothing(
    tiny_model_dir: Path, tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups of very different lengths: each update's gradient and the metrics equal those of
    micro-batches padded to the whole batch's width."""
    def run() -> tuple[list[torch.Tensor], dict[str, float]]:
        policy = HFPolicy(tiny_model_dir)
        trajs = [_trajectory(policy, tiny_tokenizer, g, s, ("x" * 40 if g else "") + str(s), float(s))
                 for g in range(2) for s in range(2)]
        optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-3)
        seen: list[torch.Tensor] = []
        metrics = grpo_update(policy, optimizer, trajs, _stage(updates_per_batch=2), step=0,
                              on_gradient=lambda _u: seen.append(flat_gradient(policy.model).clone()))
        return seen, metrics

    cut, cut_metrics = run()
    monkeypatch.setattr(TokenBatch, "trimmed", lambda self: self)
    padded, padded_metrics = run()
    # float rounding only (attention kernels block by width): 6e-6 of the norm in the first update;
    # Adam's first step moves every weight by ~lr however small its gradient, so the second update
    # starts from weights that differ a little more (1e-4 measured)
    (first_cut, second_cut), (first_padded, second_padded) = cut, padded
    assert float((first_cut - first_padded).norm() / first_padded.norm()) < 2e-5
    assert float((second_cut - second_padded).norm() / second_padded.norm()) < 1e-3
    assert cut_metrics.keys() == padded_metrics.keys()
    for key, value in cut_metrics.items():
        assert value == pytest.approx(padded_metrics[key], rel=1e-3, abs=1e-6), key


# ------------------------------------------------------------------ loss aggregation over micro-batches
AGG_STEP = 100   # ResT schedule step of the weighted case


def _uneven_batch(policy: HFPolicy, tok: Any) -> list[RolloutTrajectory]:
    """Two groups of three with answers of different lengths, one infra failure (5 kept: not a
    multiple of 3), and old log-probs off by ±0.3 on alternate tokens so that some ratios clip."""
    trajs = [_trajectory(policy, tok, g, s, "x" * (7 * s + 3 * g) + str(s), float(s))
             for g in range(2) for s in range(3)]
    trajs[4].status, trajs[4].reward = TrajectoryStatus.INFRA_FAILED, None
    for t in trajs:
        t.old_logprobs = [lp + (0.3 if j % 2 else -0.3) if m else 0.0
                          for j, (lp, m) in enumerate(zip(t.old_logprobs, t.loss_mask, strict=True))]
    return trajs


def _perturbed_reference(policy: HFPolicy) -> HFPolicy:
    """A frozen copy with slightly moved weights: the KL term then has a gradient of its own."""
    reference = frozen_reference(policy)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in reference.model.parameters():
            p.add_(0.005 * torch.randn(p.shape, generator=generator))
    return reference


def _one_pass(policy: HFPolicy, trajs: list[RolloutTrajectory], reference: HFPolicy,
              mode: str) -> tuple[dict[str, float], torch.Tensor]:
    """The batch loss by its definition: one forward over every kept trajectory, one policy_loss."""
    kept = [t for t in trajs if t.status != TrajectoryStatus.INFRA_FAILED]
    adv = grpo_advantages(torch.tensor([float(t.reward or 0.0) for t in kept]),
                          torch.tensor([t.group_id for t in kept]))
    batch = collate_trajectories(kept, pad_token_id=policy.pad_token_id)
    mask = batch.loss_mask
    weights = rest_token_weights(batch.regions, mask, AGG_STEP) if mode == "weighted-token-mean" else None
    ref_logp, _ = reference.forward_logprobs(batch.input_ids, batch.attention_mask, compute_entropy=False)
    policy.model.zero_grad(set_to_none=True)
    logp, _ = policy.forward_logprobs(batch.input_ids, batch.attention_mask, with_grad=True)
    config = PolicyLossConfig(kl_coef=0.1, loss_agg_mode=mode)  # type: ignore[arg-type]
    loss, info = policy_loss(logp, batch.old_logprobs, adv, mask, config, ref_logp=ref_logp, weights=weights)
    loss.backward()
    return {k.removeprefix("actor/"): v for k, v in info.items()}, flat_gradient(policy.model).clone()


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_every_micro_batch_size_gives_the_batch_loss_gradient_and_metrics(
    tiny_model_dir: Path, tiny_tokenizer: Any, mode: str
) -> None:
    """Micro-batches of 1, of 3 (5 kept rows: 3 + 2) and the whole batch: the loss, the gradient
    and the clip/KL metrics equal those of one pass over the batch, for every aggregation."""
    policy = HFPolicy(tiny_model_dir)
    trajs = _uneven_batch(policy, tiny_tokenizer)
    reference = _perturbed_reference(policy)
    expected, expected_grad = _one_pass(policy, trajs, reference, mode)
    assert expected["clip_frac"] > 0 and expected["kl"] > 0
    weighting = "rest-schedule" if mode == "weighted-token-mean" else "none"
    frozen = torch.optim.SGD(policy.model.parameters(), lr=0.0)
    wrong: dict[str, object] = {}      # every disagreement, so that a failure shows them all
    grads: list[torch.Tensor] = []
    for size in (1, 3, 6):
        grads.clear()
        stage = StageConfig(kind="rl", steps=10, reward={"exact_match": 1.0},
                            rollout=RolloutConfig(group_size=3, prompts_per_step=2),
                            algorithm=AlgorithmConfig(updates_per_batch=1, micro_batch_size=size, kl_coef=0.1,
                                                      loss_agg=mode, token_weighting=weighting))  # type: ignore[arg-type]
        metrics = grpo_update(policy, frozen, trajs, stage, step=AGG_STEP, reference=reference,
                              on_gradient=lambda _u: grads.append(flat_gradient(policy.model).clone()))
        assert metrics["kept"] == 5 and metrics["updated"] == 1 and len(grads) == 1
        # float rounding only: 2e-6 of the norm measured for micro-batches of 1
        gap = float((grads[0] - expected_grad).norm() / expected_grad.norm())
        if gap > 1e-4:
            wrong[f"micro {size}: gradient, relative error"] = gap
        for key, value in expected.items():
            if metrics[key] != pytest.approx(value, rel=1e-5, abs=1e-6):
                wrong[f"micro {size}: {key} (got, batch)"] = (metrics[key], value)
    assert not wrong, "\n".join(f"{what}: {value}" for what, value in wrong.items())


# ------------------------------------------------------------------ shared-prefix forward
def test_micro_batches_keep_a_group_together_where_it_fits() -> None:
    groups = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    assert _micro_batches(groups, 4, whole_groups=False) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert _micro_batches(groups, 4, whole_groups=True) == [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9]]
    assert _micro_batches([0, 1, 0, 1, 2], 2, whole_groups=True) == [[0, 2], [1, 3], [4]]
    assert _micro_batches([0, 0, 0], 8, whole_groups=True) == [[0, 1, 2]]


def _with_stray_prompt(policy: HFPolicy, tok: Any) -> list[RolloutTrajectory]:
    """``_uneven_batch`` whose group 1 has a sample that was asked another question: its prompt
    differs from its group's (the engine never does this; the forward must not assume it)."""
    trajs = _uneven_batch(policy, tok)
    trajs[5] = dataclasses.replace(_trajectory(policy, tok, 12345, 2, "y" * 9 + "2", 2.0), group_id=1)
    return trajs


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_shared_prefix_update_gives_the_batch_loss_gradient_and_metrics(
    tiny_model_dir: Path, tiny_tokenizer: Any, mode: str
) -> None:
    """``shared_prefix: true`` against the batch loss by its definition (one plain forward over the
    kept batch): continuations of different lengths, an infra failure dropped from a group, a
    sample whose prompt differs from its group's, a KL reference (its log-probs through the shared
    forward too), ResT weights with weighted-token-mean, and micro-batches of 1, 2 (a group of
    three split), 3 and 6. The gradient within 1e-5 of its norm, the metrics within 1e-5."""
    policy = HFPolicy(tiny_model_dir)
    trajs = _with_stray_prompt(policy, tiny_tokenizer)
    reference = _perturbed_reference(policy)
    expected, expected_grad = _one_pass(policy, trajs, reference, mode)
    assert expected["clip_frac"] > 0 and expected["kl"] > 0
    weighting = "rest-schedule" if mode == "weighted-token-mean" else "none"
    frozen = torch.optim.SGD(policy.model.parameters(), lr=0.0)
    wrong: dict[str, object] = {}
    grads: list[torch.Tensor] = []
    for size in (1, 2, 3, 6):
        grads.clear()
        stage = StageConfig(kind="rl", steps=10, reward={"exact_match": 1.0},
                            rollout=RolloutConfig(group_size=3, prompts_per_step=2),
                            algorithm=AlgorithmConfig(updates_per_batch=1, micro_batch_size=size, kl_coef=0.1,
                                                      loss_agg=mode, token_weighting=weighting,  # type: ignore[arg-type]
                                                      shared_prefix=True))
        metrics = grpo_update(policy, frozen, trajs, stage, step=AGG_STEP, reference=reference,
                              on_gradient=lambda _u: grads.append(flat_gradient(policy.model).clone()))
        assert metrics["kept"] == 5 and metrics["updated"] == 1 and len(grads) == 1
        # float rounding only: 3e-7 to 2e-6 of the norm measured
        gap = float((grads[0] - expected_grad).norm() / expected_grad.norm())
        if gap > 1e-5:
            wrong[f"micro {size}: gradient, relative error"] = gap
        for key, value in expected.items():
            if metrics[key] != pytest.approx(value, rel=1e-5, abs=1e-6):
                wrong[f"micro {size}: {key} (got, batch)"] = (metrics[key], value)
    assert not wrong, "\n".join(f"{what}: {value}" for what, value in wrong.items())


def test_shared_prefix_entropy_pass_gives_the_plain_entropies_weights_and_gradient(
    tiny_model_dir: Path, tiny_tokenizer: Any
) -> None:
    """ResT's entropy weights read the no-grad entropy pass: through the shared-prefix forward, the
    same per-region entropies, weights, metrics and gradient as through the plain one."""
    def run(shared: bool) -> tuple[dict[str, float], torch.Tensor]:
        policy = HFPolicy(tiny_model_dir)
        trajs = _with_stray_prompt(policy, tiny_tokenizer)
        grads: list[torch.Tensor] = []
        stage = StageConfig(kind="rl", steps=10, reward={"exact_match": 1.0},
                            rollout=RolloutConfig(group_size=3, prompts_per_step=2),
                            algorithm=AlgorithmConfig(updates_per_batch=1, micro_batch_size=2,
                                                      loss_agg="weighted-token-mean", token_weighting="rest-entropy",
                                                      shared_prefix=shared))
        metrics = grpo_update(policy, torch.optim.SGD(policy.model.parameters(), lr=0.0), trajs, stage, step=3,
                              on_gradient=lambda _u: grads.append(flat_gradient(policy.model).clone()))
        return metrics, grads[0]

    (plain, plain_grad), (shared, shared_grad) = run(False), run(True)
    assert plain.keys() == shared.keys() and "rest/entropy/answer" in plain and "entropy/tool_name" in plain
    for key, value in plain.items():
        assert shared[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert float((shared_grad - plain_grad).norm() / plain_grad.norm()) < 1e-5
