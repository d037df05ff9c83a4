"""Each algorithm against a hand-computed example; the arithmetic is in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.algorithms import (
    LOSS_AGG_MODES,
    ActionMaskConfig,
    FilterConfig,
    PolicyLossConfig,
    Region,
    RestEntropyConfig,
    RestSchedule,
    action_mask,
    aggregate_loss,
    aggregation_denominator,
    broadcast_to_tokens,
    clipped_surrogate,
    filter_trajectories,
    grpo_advantages,
    kl_k3,
    kl_penalty,
    needs_reference_model,
    policy_loss,
    rest_entropy_weights,
    rest_token_weights,
    token_entropy,
    two_level_mask,
)

R = Region


def close(actual: torch.Tensor, expected: list | float, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual.float(), torch.tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


# --------------------------------------------------------------------------- GRPO advantages


def test_grpo_unbiased_std_example() -> None:
    # [1, 0, 0, 1]: mean 0.5; unbiased var = 4·0.25/3 = 1/3, std 0.57735; A = ±0.5/0.57735 = ±0.86603
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 0, 0]))
    close(adv, [0.86603, -0.86603, -0.86603, 0.86603])
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    close(adv, ((r - r.mean()) / (r.std() + 1e-6)).tolist())  # same flavour as torch.std (Bessel)


def test_grpo_group_ids_need_not_be_contiguous() -> None:
    # group 7: [1, 0] mean 0.5, std sqrt(0.5/1) = 0.70711 → ±0.70711
    # group 2: [3, 5] mean 4,   std sqrt(2/1)   = 1.41421 → ∓0.70711
    adv = grpo_advantages(torch.tensor([1.0, 3.0, 0.0, 5.0]), torch.tensor([7, 2, 7, 2]))
    close(adv, [0.70711, -0.70711, -0.70711, 0.70711])


def test_grpo_2d_form_uniform_group_and_dr_grpo() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    # row 2 is uniform: 0 / (0 + eps) = 0
    close(grpo_advantages(rewards), [[0.86603, -0.86603, -0.86603, 0.86603], [0.0, 0.0, 0.0, 0.0]])
    # Dr.GRPO: r − mean only
    close(grpo_advantages(rewards, norm_by_std=False), [[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]])
    close(grpo_advantages(torch.tensor([[3, 1]]), norm_by_std=False), [[1.0, -1.0]])  # int rewards ok


def test_grpo_singleton_group_is_zero_and_bad_input_raises() -> None:
    close(grpo_advantages(torch.tensor([5.0, 1.0, 3.0]), torch.tensor([0, 1, 1])), [0.0, -0.70711, 0.70711])
    with pytest.raises(ValueError, match="group_ids"):
        grpo_advantages(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="group_ids must be None"):
        grpo_advantages(torch.ones(2, 2), torch.zeros(4))


def test_broadcast_to_tokens() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(broadcast_to_tokens(torch.tensor([2.0, -1.0]), mask), [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])


# --------------------------------------------------------------------------- clipped surrogate


def test_clip_both_sides_both_signs() -> None:
    # ε_low 0.2, ε_high 0.3 → clip range [0.8, 1.3]; ratios 0.5, 1.0, 1.5 for A = +1 and A = −1
    ratios = torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, 1.5]])
    old = torch.zeros(2, 3)
    logp = ratios.log().clone().requires_grad_(True)
    adv = torch.tensor([[1.0] * 3, [-1.0] * 3])
    out = clipped_surrogate(logp, old, adv, torch.ones(2, 3), clip_low=0.2, clip_high=0.3)
    # A=+1: ρ=0.5 → max(−0.5, −0.8) = −0.5 (unclipped);  ρ=1.5 → max(−1.5, −1.3) = −1.3 (clipped)
    # A=−1: ρ=0.5 → max(0.5, 0.8) = 0.8 (clipped);        ρ=1.5 → max(1.5, 1.3) = 1.5 (unclipped)
    close(out.loss, [[-0.5, -1.0, -1.3], [0.8, 1.0, 1.5]])
    out.loss.sum().backward()
    # d(−A·ρ)/dlogp = −A·ρ where unclipped; 0 where the clipped term is active
    assert logp.grad is not None
    close(logp.grad, [[-0.5, -1.0, 0.0], [0.0, 1.0, 1.5]])
    # clipped term active at 2 of 6 tokens
    close(out.clip_frac, 1 / 3)
    # k3 per token (ρ−1) − log ρ: ρ=0.5 → 0.193147, ρ=1 → 0, ρ=1.5 → 0.094535; mean = 2·0.287682/6
    close(out.approx_kl, 0.095894)


def test_clip_higher_is_asymmetric() -> None:
    # A=+1, ρ=1.25: symmetric ε=0.2 clips at 1.2 (loss −1.2); clip-higher ε_high=0.28 does not (−1.25)
    logp, old, adv, m = torch.tensor([[math.log(1.25)]]), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1)
    close(clipped_surrogate(logp, old, adv, m, clip_low=0.2, clip_high=0.2).loss, [[-1.2]])
    close(clipped_surrogate(logp, old, adv, m, clip_low=0.2, clip_high=0.28).loss, [[-1.25]])


# --------------------------------------------------------------------------- KL


def test_k3_values() -> None:
    logp = torch.tensor([[math.log(0.5), math.log(0.5), -1.0]])
    ref = torch.tensor([[math.log(0.25), math.log(1.0), -1.0]])
    # d = ref − logp: −log2 → 0.5 + 0.693147 − 1 = 0.193147;  +log2 → 2 − 0.693147 − 1 = 0.306853;  0 → 0
    close(kl_k3(logp, ref), [[0.193147, 0.306853, 0.0]])


def test_kl_coef_zero_needs_no_reference() -> None:
    assert not needs_reference_model(0.0)
    assert needs_reference_model(0.1)
    assert kl_penalty(torch.zeros(1, 2), None, 0.0) is None
    with pytest.raises(ValueError, match="needs ref_logp"):
        kl_penalty(torch.zeros(1, 2), None, 0.1)
    pen = kl_penalty(torch.full((1, 1), math.log(0.5)), torch.full((1, 1), math.log(0.25)), 0.5)
    assert pen is not None
    close(pen, [[0.5 * 0.193147]])


# --------------------------------------------------------------------------- aggregation

LOSS = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
MASK = [[1, 1, 0], [1, 0, 0]]
WEIGHTS = [[2.0, 1.0, 5.0], [1.0, 9.0, 9.0]]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 7 / 3),  # (1 + 2 + 4) / 3
        ("seq-mean-token-mean", 2.75),  # ((1 + 2)/2 + 4/1) / 2 = (1.5 + 4) / 2
        ("seq-mean-token-sum", 3.5),  # ((1 + 2) + 4) / 2
        ("weighted-token-mean", 2.0),  # (1·2 + 2·1 + 4·1) / (2 + 1 + 1) = 8 / 4
    ],
)
def test_aggregation_modes(mode: str, expected: float) -> None:
    weights = torch.tensor(WEIGHTS) if mode == "weighted-token-mean" else None
    close(aggregate_loss(torch.tensor(LOSS), torch.tensor(MASK), mode, weights), expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_aggregation_empty_mask_is_zero_with_grad(mode: str) -> None:
    loss_mat = torch.tensor(LOSS, requires_grad=True)
    weights = torch.tensor(WEIGHTS) if mode == "weighted-token-mean" else None
    out = aggregate_loss(loss_mat, torch.zeros(2, 3), mode, weights)  # type: ignore[arg-type]
    assert out.item() == 0.0
    out.backward()
    assert loss_mat.grad is not None
    close(loss_mat.grad, [[0.0] * 3] * 2)


def test_aggregation_ignores_padding_inf_and_empty_rows() -> None:
    loss_mat = torch.tensor([[1.0, 2.0, math.inf], [math.nan, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    close(aggregate_loss(loss_mat, mask, "token-mean"), 1.5)
    # the empty row does not dilute the sequence mean: 1.5, not 0.75
    close(aggregate_loss(loss_mat, mask, "seq-mean-token-mean"), 1.5)


# three rows split into micro-batches [rows 0, 1] and [row 2], as a batch of 5 kept trajectories
# splits into 3 + 2: valid tokens ℓ = 1, 2 | 4 | 8, 9 with weights 2, 1 | 1 | 1, 2
SPLIT_LOSS = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
SPLIT_MASK = [[1, 1, 0], [1, 0, 0], [0, 1, 1]]
SPLIT_WEIGHTS = [[2.0, 1.0, 5.0], [1.0, 9.0, 9.0], [3.0, 1.0, 2.0]]


@pytest.mark.parametrize(
    ("mode", "denominator", "shares"),
    [
        # Σ m = 5; (1 + 2 + 4) / 5 and (8 + 9) / 5 → 24 / 5 = 4.8
        # (each micro-batch's own mean, averaged, would be (7/3 + 17/2) / 2 = 5.4167)
        ("token-mean", 5.0, [7 / 5, 17 / 5]),
        # 3 sequences with means 1.5, 4, 8.5; (1.5 + 4) / 3 and 8.5 / 3 → 14 / 3
        # (per micro-batch means averaged: (2.75 + 8.5) / 2 = 5.625)
        ("seq-mean-token-mean", 3.0, [5.5 / 3, 8.5 / 3]),
        # 3 sequences with sums 3, 4, 17; 7 / 3 and 17 / 3 → 8
        ("seq-mean-token-sum", 3.0, [7 / 3, 17 / 3]),
        # Σ m·w = 2 + 1 + 1 + 1 + 2 = 7; (1·2 + 2·1 + 4·1) / 7 and (8·1 + 9·2) / 7 → 34 / 7
        ("weighted-token-mean", 7.0, [8 / 7, 26 / 7]),
    ],
)
def test_aggregation_micro_batches_with_the_batch_denominator_sum_to_the_batch_loss(
    mode: str, denominator: float, shares: list[float]
) -> None:
    loss_mat = torch.tensor(SPLIT_LOSS, requires_grad=True)
    mask = torch.tensor(SPLIT_MASK, dtype=torch.float32)
    weights = torch.tensor(SPLIT_WEIGHTS) if mode == "weighted-token-mean" else None
    denom = aggregation_denominator(mask, mode, weights)  # type: ignore[arg-type]
    close(denom, denominator)
    whole = aggregate_loss(loss_mat, mask, mode, weights)  # type: ignore[arg-type]
    close(whole.detach(), sum(shares))
    (whole_grad,) = torch.autograd.grad(whole, loss_mat)
    parts = []
    for rows in ([0, 1], [2]):
        w = None if weights is None else weights[rows]
        parts.append(aggregate_loss(loss_mat[rows], mask[rows], mode, w, denominator=denom))  # type: ignore[arg-type]
    close(torch.stack(parts).detach(), shares)
    (split_grad,) = torch.autograd.grad(torch.stack(parts).sum(), loss_mat)
    close(split_grad, whole_grad.tolist())


def test_aggregation_weights_only_with_weighted_mode() -> None:
    with pytest.raises(ValueError, match="weighted-token-mean"):
        aggregate_loss(torch.tensor(LOSS), torch.tensor(MASK), "token-mean", torch.tensor(WEIGHTS))
    with pytest.raises(ValueError, match="weighted-token-mean"):
        aggregate_loss(torch.tensor(LOSS), torch.tensor(MASK), "weighted-token-mean")
    with pytest.raises(ValueError, match="unknown"):
        aggregate_loss(torch.tensor(LOSS), torch.tensor(MASK), "sum")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- trajectory filters

NONE_ON = FilterConfig(
    drop_equal_reward_groups=False, drop_infra_failed=False, drop_truncated=False, drop_format_errors=False
)


def test_filter_uniform_groups_switch() -> None:
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])  # groups: [1,0] mixed, [1,1] and [0,0] uniform
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    res = filter_trajectories(rewards, ids, FilterConfig(drop_infra_failed=False))
    assert res.keep.tolist() == [True, True, False, False, False, False]
    assert res.counts["uniform_group"] == 4 and res.counts["kept"] == 2 and res.counts["dropped"] == 4
    assert filter_trajectories(rewards, ids, NONE_ON).keep.all()


@pytest.mark.parametrize(
    ("switch", "flag"),
    [
        ("drop_infra_failed", "infra_failed"),
        ("drop_truncated", "truncated"),
        ("drop_format_errors", "format_violation"),
    ],
)
def test_filter_per_trajectory_switches(switch: str, flag: str) -> None:
    rewards, ids = torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0, 0, 1, 1])
    flags = {flag: torch.tensor([False, True, False, False])}
    on = FilterConfig(**{**NONE_ON.__dict__, switch: True})
    res = filter_trajectories(rewards, ids, on, **flags)
    assert res.keep.tolist() == [True, False, True, True]
    assert res.counts[flag] == 1 and res.counts["dropped"] == 1
    off = filter_trajectories(rewards, ids, NONE_ON, **flags)
    assert off.keep.all() and off.counts[flag] == 0
    with pytest.raises(ValueError, match=flag):
        filter_trajectories(rewards, ids, on)  # switch on, flags missing


def test_filter_uniform_judged_on_survivors() -> None:
    # group [1, 1, 0] where the 0 is an infra failure's placeholder: survivors [1, 1] are uniform
    rewards, ids = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0]), torch.tensor([0, 0, 0, 1, 1])
    infra = torch.tensor([False, False, True, False, False])
    res = filter_trajectories(rewards, ids, FilterConfig(), infra_failed=infra)
    assert res.keep.tolist() == [False, False, False, True, True]
    assert res.counts == {
        "uniform_group": 3,
        "infra_failed": 1,
        "truncated": 0,
        "format_violation": 0,
        "kept": 2,
        "dropped": 3,
    }


# --------------------------------------------------------------------------- two-level mask

LABELS = torch.tensor(
    [
        [R.PROMPT, R.FORMAT_TAG, R.REASONING, R.FORMAT_TAG, R.TOOL_NAME, R.TOOL_ARGS, R.OBSERVATION, R.ANSWER],
        [R.PROMPT, R.PROMPT, R.REASONING, R.OTHER, R.ANSWER, R.OTHER, R.OTHER, R.OTHER],
    ]
)


def test_action_mask_switches() -> None:
    close(action_mask(LABELS), [[0, 1, 1, 1, 1, 1, 0, 1], [0, 0, 1, 1, 1, 1, 1, 1]])
    no_reasoning = action_mask(LABELS, config=ActionMaskConfig(include_reasoning=False))
    close(no_reasoning[0], [0, 1, 0, 1, 1, 1, 0, 1])
    no_tools = action_mask(LABELS, config=ActionMaskConfig(include_tool_calls=False))
    close(no_tools[0], [0, 1, 1, 1, 0, 0, 0, 1])
    no_answer = action_mask(LABELS, config=ActionMaskConfig(include_answer=False))
    close(no_answer[0], [0, 1, 1, 1, 1, 1, 0, 0])
    # tool calls only; nothing includes PROMPT/OBSERVATION
    only_tools = ActionMaskConfig(
        include_format_tags=False, include_reasoning=False, include_answer=False, include_other=False
    )
    close(action_mask(LABELS, config=only_tools)[0], [0, 0, 0, 0, 1, 1, 0, 0])
    # padding (valid = 0) is never trained
    valid = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    close(action_mask(LABELS, valid)[1], [0, 0, 1, 1, 1, 0, 0, 0])


def test_action_mask_observation_wins_overlap() -> None:
    hot = torch.zeros(1, 2, len(Region), dtype=torch.bool)
    hot[0, 0, [R.OBSERVATION, R.REASONING]] = True  # an observation token also tagged reasoning
    hot[0, 1, [R.FORMAT_TAG, R.TOOL_ARGS]] = True
    close(action_mask(hot), [[0.0, 1.0]])


def test_two_level_mask_drops_whole_trajectories() -> None:
    act = action_mask(LABELS)
    both = two_level_mask(act, torch.tensor([True, False]))
    close(both, [[0, 1, 1, 1, 1, 1, 0, 1], [0] * 8])


# --------------------------------------------------------------------------- ResT schedule

FIVE = torch.tensor([[R.FORMAT_TAG, R.REASONING, R.TOOL_NAME, R.TOOL_ARGS, R.OTHER]])


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        # s=0:   raw [1, 0.6, 1.2, 0.6, 0→0.001], Σ 3.401, ×5/3.401 = 1.470156
        (0, [1.470156, 0.882094, 1.764187, 0.882094, 0.001470]),
        # s=100: reasoning, args 0.6+0.2 = 0.8; Σ 3.801, ×5/3.801 = 1.315443
        (100, [1.315443, 1.052354, 1.578532, 1.052354, 0.001315]),
        # s=300: reasoning min(1.2, 1.0) = 1.0, args min(1.2, 1.2) = 1.2; Σ 4.401, ×5/4.401 = 1.136105
        (300, [1.136105, 1.136105, 1.363326, 1.363326, 0.001136]),
    ],
)
def test_rest_schedule_steps(step: int, expected: list[float]) -> None:
    w = rest_token_weights(FIVE, torch.ones(1, 5), step)
    close(w, [expected])
    close(w.sum(), 5.0)  # mean 1 over valid tokens


def test_rest_overlap_max_clamp_and_padding() -> None:
    # token 0 ∈ {FORMAT_TAG 1.0, TOOL_ARGS 0.6} → 1.0; token 1 REASONING 0.6; Σ 1.6, ×2/1.6 → [1.25, 0.75]
    masks = [torch.zeros(1, 2, dtype=torch.bool) for _ in Region]
    masks[R.FORMAT_TAG][0, 0] = masks[R.TOOL_ARGS][0, 0] = masks[R.REASONING][0, 1] = True
    close(rest_token_weights(masks, torch.ones(1, 2), 0), [[1.25, 0.75]])
    close(
        rest_token_weights({R.FORMAT_TAG: masks[R.FORMAT_TAG], R.REASONING: masks[R.REASONING]}, torch.ones(1, 2), 0),
        [[1.25, 0.75]],
    )
    # clamp: tool name 20 → 8; [8, 1], Σ 9, ×2/9 → [16/9, 2/9]; padding token → 0
    labels = torch.tensor([[R.TOOL_NAME, R.FORMAT_TAG, R.TOOL_NAME]])
    w = rest_token_weights(labels, torch.tensor([[1, 1, 0]]), 0, RestSchedule(tool_name=20.0))
    close(w, [[16 / 9, 2 / 9, 0.0]])


def test_rest_weighted_loss_and_empty_sequence() -> None:
    # s=0 on [FORMAT_TAG, REASONING]: raw [1, 0.6] → ×2/1.6 → [1.25, 0.75]; second sequence fully masked
    labels = torch.tensor([[R.FORMAT_TAG, R.REASONING], [R.REASONING, R.REASONING]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    w = rest_token_weights(labels, mask, 0)
    close(w, [[1.25, 0.75], [0.0, 0.0]])
    # L = (2·1.25 + 4·0.75) / (1.25 + 0.75) = 5.5 / 2 = 2.75
    close(aggregate_loss(torch.tensor([[2.0, 4.0], [9.0, 9.0]]), mask, "weighted-token-mean", w), 2.75)


# --------------------------------------------------------------------------- ResT entropy form

FOUR = torch.tensor([[R.FORMAT_TAG, R.FORMAT_TAG, R.REASONING, R.REASONING]])
ENT = torch.tensor([[0.2, 0.4, 2.0, 3.0]])


def test_rest_entropy_hand_example_and_curriculum() -> None:
    # H_fmt = 0.3, H_reas = 2.5, τ = 1, β = 1. p = 0: softmax(−0.3, −2.5) → fmt 1/(1+e^−2.2) = 0.900250
    # w = 2·softmax → fmt 1.800500, reas 0.199500; tokens sum 4 already → rescale ×1
    w0, info0 = rest_entropy_weights(ENT, FOUR, torch.ones(1, 4), 0.0)
    close(w0, [[1.800500, 1.800500, 0.199500, 0.199500]])
    assert info0["rest/entropy/format_tag"] == pytest.approx(0.3)
    assert info0["rest/entropy/reasoning"] == pytest.approx(2.5)
    assert info0["rest/weight/format_tag"] == pytest.approx(1.800500, abs=1e-5)
    assert "rest/weight/tool_name" not in info0  # absent regions are not reported
    # p = 1: logits (−0.3, −2.5 + 1) → fmt 1/(1+e^−1.2) = 0.768525 → w fmt 1.537050, reas 0.462950
    w1, _ = rest_entropy_weights(ENT, FOUR, torch.ones(1, 4), 1.0)
    close(w1, [[1.537050, 1.537050, 0.462950, 0.462950]])
    # curriculum: reasoning weight rises monotonically with progress
    reas = [rest_entropy_weights(ENT, FOUR, torch.ones(1, 4), p)[1]["rest/weight/reasoning"] for p in (0, 0.25, 0.5, 1)]
    assert reas == sorted(reas) and len(set(reas)) == 4


def test_rest_entropy_lower_entropy_weighs_more() -> None:
    labels = torch.tensor([[R.TOOL_NAME, R.TOOL_ARGS, R.REASONING]])
    _, info = rest_entropy_weights(torch.tensor([[0.1, 1.0, 2.0]]), labels, torch.ones(1, 3), 0.0)
    weights = [info[f"rest/weight/{name}"] for name in ("tool_name", "tool_args", "reasoning")]
    assert weights[0] > weights[1] > weights[2]
    assert sum(weights) == pytest.approx(3.0)  # region weights average 1
    # higher temperature flattens the preference
    _, hot_info = rest_entropy_weights(
        torch.tensor([[0.1, 1.0, 2.0]]), labels, torch.ones(1, 3), 0.0, RestEntropyConfig(temperature=10.0)
    )
    assert hot_info["rest/weight/tool_name"] < info["rest/weight/tool_name"]


def test_rest_entropy_ignores_masked_tokens_and_bad_progress() -> None:
    # the masked reasoning token (entropy 100) must not enter H_reas
    ent = torch.tensor([[0.2, 0.4, 2.0, 100.0]])
    _, info = rest_entropy_weights(ent, FOUR, torch.tensor([[1, 1, 1, 0]]), 0.0)
    assert info["rest/entropy/reasoning"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="progress"):
        rest_entropy_weights(ent, FOUR, torch.ones(1, 4), 1.5)


def test_token_entropy() -> None:
    # uniform over 4 → log 4 = 1.386294; a near-one-hot → ≈ 0
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [50.0, 0.0, 0.0, 0.0]]])
    close(token_entropy(logits), [[1.386294, 0.0]])


# --------------------------------------------------------------------------- policy_loss


def test_policy_loss_hand_example_and_gradient() -> None:
    # ρ = 1, A = 2 on both tokens → ℓ = −2 each; token-mean −2; d/dlogp_t = −A·ρ/2 = −1
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, metrics = policy_loss(logp, logp.detach().clone(), torch.tensor([2.0]), torch.ones(1, 2))
    close(loss.detach(), -2.0)
    loss.backward()
    assert logp.grad is not None
    close(logp.grad, [[-1.0, -1.0]])
    assert metrics["actor/clip_frac"] == 0.0 and metrics["actor/approx_kl"] == 0.0
    assert metrics["actor/ratio_mean"] == pytest.approx(1.0)
    assert "actor/kl" not in metrics


def test_policy_loss_with_kl() -> None:
    # ref − logp = −log 2 on both tokens → k3 0.193147; L = −2 + 0.5·0.193147 = −1.903427
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = logp.detach() - math.log(2.0)
    loss, metrics = policy_loss(
        logp, logp.detach().clone(), torch.tensor([2.0]), torch.ones(1, 2), PolicyLossConfig(kl_coef=0.5), ref_logp=ref
    )
    close(loss.detach(), -1.903427)
    assert metrics["actor/kl"] == pytest.approx(0.193147, abs=1e-5)
    assert metrics["actor/pg_loss"] == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(logp, logp.detach(), torch.tensor([2.0]), torch.ones(1, 2), PolicyLossConfig(kl_coef=0.5))


def test_policy_loss_empty_mask_no_nan() -> None:
    logp = torch.randn(2, 3, requires_grad=True)
    for mode in LOSS_AGG_MODES:
        weights = torch.ones(2, 3) if mode == "weighted-token-mean" else None
        cfg = PolicyLossConfig(kl_coef=0.1, loss_agg_mode=mode)  # type: ignore[arg-type]
        loss, metrics = policy_loss(
            logp, logp.detach() + 1.0, torch.ones(2, 3), torch.zeros(2, 3), cfg, ref_logp=logp.detach(), weights=weights
        )
        loss.backward()
        assert loss.item() == 0.0 and all(math.isfinite(v) for v in metrics.values())
        assert logp.grad is not None and torch.isfinite(logp.grad).all()


def test_policy_loss_composes_filter_masks_and_rest() -> None:
    # two trajectories of one group, rewards 1 and 0 → A = ±0.70711; both kept
    rewards, ids = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    kept = filter_trajectories(rewards, ids, FilterConfig(drop_infra_failed=False))
    adv = grpo_advantages(rewards[kept.keep], ids[kept.keep])
    labels = LABELS[:, :6]
    mask = two_level_mask(action_mask(labels), kept.keep)
    weights = rest_token_weights(labels, mask, step=0)
    logp = torch.full((2, 6), -1.0, requires_grad=True)
    cfg = PolicyLossConfig(clip_high=0.28, loss_agg_mode="weighted-token-mean")
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, cfg, weights=weights)
    loss.backward()
    assert logp.grad is not None
    # prompt tokens get no gradient; the trained tokens of the positive trajectory get negative gradient
    assert logp.grad[:, 0].eq(0).all() and (logp.grad[0, 1:] < 0).all() and (logp.grad[1, 2:] > 0).all()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="clip_low"):
        PolicyLossConfig(clip_low=1.0)
    with pytest.raises(ValueError, match="kl_coef"):
        PolicyLossConfig(kl_coef=-0.1)
    with pytest.raises(ValueError, match="temperature"):
        RestEntropyConfig(temperature=0.0)
    with pytest.raises(ValueError, match="uniform_atol"):
        FilterConfig(uniform_atol=-1.0)
