"""One GRPO update on a batch of scored trajectories.

Order of work: trajectory filter → group advantages over the kept trajectories → two-level mask
(action level from the token regions, trajectory level from the filter) → optional ResT token
weights → ``updates_per_batch`` optimizer steps, each accumulating gradients over micro-batches of
the kept trajectories (``micro_batch_size`` bounds memory, not the update size: every micro-batch's
loss is divided by the loss aggregation's denominator over the whole kept batch, so the summed
loss, its gradient and the reported metrics are the batch's for any micro-batch size).

With ``algorithm.shared_prefix`` (the default) every forward — the update's, the entropy pass, the
reference's — computes the tokens that rows share before their first trained token (a group's
prompt) once per micro-batch (``trainer.policy.shared_prefix``), and a group's rows share a
micro-batch wherever they fit in one; the same log-probs and gradients to float rounding.

Dropped trajectories never enter a forward pass, so they cannot contribute a gradient. A generated
token whose region label is PROMPT (a rollout engine that does not label regions) is treated as
OTHER, so an unlabelled trajectory still trains on every generated token.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rlyard.domain import TrajectoryStatus
from trainer.algorithms import (
    PolicyLossConfig,
    Region,
    RestEntropyConfig,
    RestSchedule,
    action_mask,
    aggregation_denominator,
    filter_trajectories,
    grpo_advantages,
    needs_reference_model,
    policy_loss,
    rest_entropy_weights,
    rest_token_weights,
    two_level_mask,
)
from trainer.batching import TokenBatch, batch_logprobs, collate_trajectories
from trainer.config import StageConfig
from trainer.policy.hf import HFPolicy
from trainer.types import RolloutTrajectory

logger = logging.getLogger(__name__)

__all__ = ["frozen_reference", "grpo_update"]

# policy_loss metrics that are a micro-batch's share of the batch value (the rest are token means)
_LOSS_SHARES = frozenset({"actor/pg_loss", "actor/loss"})


def frozen_reference(policy: HFPolicy) -> HFPolicy:
    """A frozen copy of ``policy`` (eval mode, no grad) to score the KL reference log-probs."""
    model = copy.deepcopy(policy.model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return policy.with_model(model)


def _labelled_regions(batch: TokenBatch) -> torch.Tensor:
    """Regions with unlabelled generated tokens (PROMPT under mask 1) relabelled OTHER."""
    unlabelled = (batch.loss_mask > 0) & (batch.regions == int(Region.PROMPT))
    return torch.where(unlabelled, torch.full_like(batch.regions, int(Region.OTHER)), batch.regions)


def _widen(values: torch.Tensor, width: int) -> torch.Tensor:
    """``values`` [B, w] padded with zeros on the right to [B, width]."""
    return torch.nn.functional.pad(values, (0, width - values.shape[1]))


def _entropy_metrics(entropies: list[torch.Tensor], micro: list[list[int]], mask: torch.Tensor,
                     regions: torch.Tensor) -> dict[str, float]:
    """Entropy at the start of the update, overall and per region (ResT uses the same numbers)."""
    ent_sum, ent_n = 0.0, 0
    per_region: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for rows, ent in zip(micro, entropies, strict=True):
        m = mask[rows]
        ent_sum += float((ent * m).sum())
        ent_n += int(m.sum())
        for name, (s, c) in _region_entropy(ent, regions[rows], m).items():
            per_region[name][0] += s
            per_region[name][1] += c
    metrics = {"entropy": ent_sum / max(ent_n, 1)}
    for name, (s, c) in per_region.items():
        metrics[f"entropy/{name}"] = s / c
    return metrics


def _region_entropy(entropy: torch.Tensor, regions: torch.Tensor, mask: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Per-region (sum of entropy, token count) over masked tokens."""
    out: dict[str, tuple[float, float]] = {}
    for r in Region:
        sel = (regions == int(r)) & (mask > 0)
        n = float(sel.sum())
        if n:
            out[r.name.lower()] = (float(entropy[sel].sum()), n)
    return out


@dataclass(frozen=True)
class _KeptBatch:
    """The kept trajectories as the loss reads them."""

    adv: torch.Tensor              # [K] group advantages
    mask: torch.Tensor             # [K, T-1] two-level loss mask
    regions: torch.Tensor          # [K, T-1] Region labels, unlabelled generated tokens as OTHER
    micro: list[list[int]]         # the rows of each micro-batch
    subs: list[TokenBatch]         # each micro-batch cut to its own width
    shared_prefix: bool            # forwards compute a prefix that rows share once


@dataclass(frozen=True)
class _LossInputs:
    """What the loss needs besides the policy's log-probs, per micro-batch or over the batch."""

    config: PolicyLossConfig
    ref_logp: list[torch.Tensor | None]
    weights: torch.Tensor | None   # [K, T-1] ResT token weights
    denominator: torch.Tensor      # the aggregation's denominator over the whole kept batch


def grpo_update(
    policy: HFPolicy,
    optimizer: torch.optim.Optimizer,
    trajectories: Sequence[RolloutTrajectory],
    stage_cfg: StageConfig,
    step: int,
    *,
    reference: HFPolicy | None = None,
    total_steps: int | None = None,
    on_gradient: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Filter, compute advantages and take ``updates_per_batch`` optimizer steps; returns metrics.

    Args:
        policy: the trained policy (``policy.model`` is what ``optimizer`` holds).
        optimizer: its optimizer; the caller steps any scheduler.
        trajectories: scored trajectories (``reward`` set unless ``status`` is INFRA_FAILED).
        stage_cfg: the RL stage (algorithm, filters, rollout temperature, optim.max_grad_norm).
        step: training step within the stage (ResT schedule).
        reference: frozen reference policy; required when ``algorithm.kl_coef > 0``, unused otherwise.
        total_steps: steps of the stage, for the ResT entropy curriculum (default ``stage_cfg.steps``).
        on_gradient: called with the update's index once its gradient is complete and before it is
            clipped and applied (``policy.model``'s ``.grad``; see ``experiments.agreement``).

    Raises:
        ValueError: ``kl_coef > 0`` without a reference, or a non-failed trajectory without a reward.
    """
    algo = stage_cfg.algorithm
    _check_inputs(trajectories, algo.kl_coef, reference)
    metrics: dict[str, float] = {"trajectories": float(len(trajectories))}
    if not trajectories:
        return metrics | {"kept": 0.0, "dropped": 0.0, "updated": 0.0}
    kept_idx, rewards, group_ids, stats = _filter_with_stats(trajectories, stage_cfg)
    metrics |= stats
    if not kept_idx:
        logger.info("step %s: every trajectory filtered out, no update", step)
        return metrics | {"updated": 0.0, "tokens": 0.0}
    kb = _kept_batch(policy, [trajectories[i] for i in kept_idx], rewards[kept_idx], group_ids[kept_idx], stage_cfg)
    metrics["tokens"] = float(kb.mask.sum())
    metrics["advantage_abs_mean"] = float(kb.adv.abs().mean())
    temperature = stage_cfg.rollout.temperature
    # ResT's entropy weights need the entropy before the first backward: a no-grad pass; otherwise
    # the first update's forward (same weights) measures it
    entropies = _entropy_pass(policy, kb, temperature) if algo.token_weighting == "rest-entropy" else []
    progress = min(max(step / max(total_steps or stage_cfg.steps, 1), 0.0), 1.0)
    weights, weight_metrics = _token_weights(kb, algo.token_weighting, step, progress, entropies)
    metrics |= weight_metrics
    inputs = _LossInputs(
        config=PolicyLossConfig(clip_low=algo.clip_low, clip_high=algo.clip_high, kl_coef=algo.kl_coef,
                                loss_agg_mode=algo.loss_agg),
        ref_logp=_reference_logprobs(reference, kb, temperature, algo.kl_coef),
        weights=weights,
        denominator=aggregation_denominator(kb.mask, algo.loss_agg, weights),
    )
    sums, measured = _update_loop(policy, optimizer, kb, inputs, stage_cfg, step, on_gradient,
                                  measure_entropy=not entropies)
    metrics |= _entropy_metrics(entropies or measured, kb.micro, kb.mask, kb.regions)
    metrics |= {key.removeprefix("actor/"): value / algo.updates_per_batch for key, value in sums.items()}
    metrics["updated"] = 1.0
    return metrics


def _check_inputs(trajectories: Sequence[RolloutTrajectory], kl_coef: float, reference: HFPolicy | None) -> None:
    """Refuse a KL term without a reference policy and a scored trajectory without a reward."""
    if needs_reference_model(kl_coef) and reference is None:
        raise ValueError(f"kl_coef={kl_coef} > 0 needs a reference policy (see frozen_reference)")
    for t in trajectories:
        if t.reward is None and t.status != TrajectoryStatus.INFRA_FAILED:
            raise ValueError(f"trajectory {t.task.task_id}/{t.sample_index} has no reward and did not fail")


def _filter_with_stats(
    trajectories: Sequence[RolloutTrajectory], stage_cfg: StageConfig
) -> tuple[list[int], torch.Tensor, torch.Tensor, dict[str, float]]:
    """The trajectory filter's kept indices, rewards and group ids [N], and the batch's statistics."""
    n = len(trajectories)
    infra = torch.tensor([t.status == TrajectoryStatus.INFRA_FAILED for t in trajectories])
    rewards = torch.tensor([0.0 if t.reward is None else float(t.reward) for t in trajectories])
    group_ids = torch.tensor([t.group_id for t in trajectories])
    result = filter_trajectories(
        rewards, group_ids, stage_cfg.algorithm.filters,
        infra_failed=infra,
        truncated=torch.tensor([t.status == TrajectoryStatus.TRUNCATED for t in trajectories]),
        format_violation=torch.tensor([t.status == TrajectoryStatus.FORMAT_ERROR for t in trajectories]),
    )
    metrics: dict[str, float] = {}
    scored = rewards[~infra]
    if len(scored):  # nothing scored (every trajectory failed): no reward to report, not 0.0
        metrics["reward_mean"] = float(scored.mean())
        metrics["reward_std"] = float(scored.std()) if len(scored) > 1 else 0.0
    components: dict[str, list[float]] = defaultdict(list)
    for t in trajectories:
        for name, value in t.reward_components.items():
            components[name].append(float(value))
    for name, values in components.items():
        metrics[f"reward/{name}"] = sum(values) / len(values)
    metrics["response_tokens"] = sum(t.num_generated for t in trajectories) / n
    metrics["tool_calls"] = sum(t.num_tool_calls for t in trajectories) / n
    metrics["kept"] = float(result.counts["kept"])
    metrics["dropped"] = float(result.counts["dropped"])
    for reason, count in result.counts.items():
        if reason not in ("kept", "dropped"):
            metrics[f"dropped/{reason}"] = float(count)
    return torch.nonzero(result.keep).flatten().tolist(), rewards, group_ids, metrics


def _kept_batch(policy: HFPolicy, kept: list[RolloutTrajectory], rewards: torch.Tensor, group_ids: torch.Tensor,
                stage_cfg: StageConfig) -> _KeptBatch:
    """Advantages over the kept trajectories, their two-level mask and their micro-batches."""
    algo = stage_cfg.algorithm
    adv = grpo_advantages(rewards, group_ids, norm_by_std=algo.advantage_std)
    batch = collate_trajectories(kept, pad_token_id=policy.pad_token_id)
    regions = _labelled_regions(batch)
    mask = two_level_mask(action_mask(regions, valid=batch.loss_mask), torch.ones(len(kept), dtype=torch.bool))
    # a policy without a shared-prefix forward (the vision policy) runs each row whole: same values
    shared_prefix = algo.shared_prefix and policy.supports_shared_prefix
    micro = _micro_batches(group_ids.tolist(), algo.micro_batch_size, whole_groups=shared_prefix)
    # each micro-batch without the padding columns its rows share (a group's trajectories are
    # usually much shorter than the batch's longest); per-token tensors of the whole batch are cut
    # to the same width, entropies padded back (the cut columns are padding: mask 0 everywhere)
    subs = [batch.select(rows).trimmed() for rows in micro]
    return _KeptBatch(adv=adv, mask=mask, regions=regions, micro=micro, subs=subs, shared_prefix=shared_prefix)


def _micro_batches(group_ids: list[int], size: int, *, whole_groups: bool) -> list[list[int]]:
    """Row indices in micro-batches of at most ``size`` rows: consecutive rows or, with
    ``whole_groups``, each group's rows together where they fit (groups in order of first
    appearance; a group larger than ``size`` is cut into chunks of ``size``), so that a shared-prefix
    forward computes a group's prompt once. Any split gives the batch's loss and gradient."""
    if not whole_groups:
        return [list(range(i, min(i + size, len(group_ids)))) for i in range(0, len(group_ids), size)]
    groups: dict[int, list[int]] = defaultdict(list)
    for row, group in enumerate(group_ids):
        groups[group].append(row)
    micro: list[list[int]] = []
    current: list[int] = []
    for rows in groups.values():
        if len(current) + len(rows) > size and current:
            micro.append(current)
            current = []
        while len(rows) > size:
            micro.append(rows[:size])
            rows = rows[size:]
        current = current + rows
    if current:
        micro.append(current)
    return micro


def _entropy_pass(policy: HFPolicy, kb: _KeptBatch, temperature: float) -> list[torch.Tensor]:
    """Each micro-batch's token entropy [rows, T-1] on the weights before the update (no grad)."""
    entropies: list[torch.Tensor] = []
    with torch.no_grad():
        for sub in kb.subs:
            _, ent = batch_logprobs(policy, sub, temperature=temperature, positions=sub.loss_mask,
                                    shared_prefix=kb.shared_prefix)
            assert ent is not None
            entropies.append(_widen(ent, kb.mask.shape[1]))
    return entropies


def _reference_logprobs(reference: HFPolicy | None, kb: _KeptBatch, temperature: float,
                        kl_coef: float) -> list[torch.Tensor | None]:
    """The frozen reference's log-probs of each micro-batch for the KL term (None without one)."""
    if reference is None or not needs_reference_model(kl_coef):
        return [None] * len(kb.micro)
    ref_logp: list[torch.Tensor | None] = []
    with torch.no_grad():
        for sub in kb.subs:
            logp, _ = batch_logprobs(reference, sub, temperature=temperature, compute_entropy=False,
                                     positions=sub.loss_mask, shared_prefix=kb.shared_prefix)
            ref_logp.append(logp)
    return ref_logp


def _token_weights(kb: _KeptBatch, token_weighting: str, step: int, progress: float,
                   entropies: list[torch.Tensor]) -> tuple[torch.Tensor | None, dict[str, float]]:
    """ResT token weights [K, T-1] (None for ``token_weighting: none``) and their metrics."""
    metrics: dict[str, float] = {}
    if token_weighting == "rest-schedule":
        for r, w in RestSchedule().region_weights(step).items():
            if r not in (Region.PROMPT, Region.OBSERVATION):
                metrics[f"rest/weight/{r.name.lower()}"] = w
        return rest_token_weights(kb.regions, kb.mask, step), metrics
    if token_weighting == "rest-entropy":
        full_entropy = torch.zeros_like(kb.mask)
        for rows, ent in zip(kb.micro, entropies, strict=True):
            full_entropy[rows] = ent.to(kb.mask.dtype)
        weights, info = rest_entropy_weights(full_entropy, kb.regions, kb.mask, progress, RestEntropyConfig())
        return weights, metrics | info
    return None, metrics


def _update_loop(
    policy: HFPolicy,
    optimizer: torch.optim.Optimizer,
    kb: _KeptBatch,
    inputs: _LossInputs,
    stage_cfg: StageConfig,
    step: int,
    on_gradient: Callable[[int], None] | None,
    *,
    measure_entropy: bool,
) -> tuple[dict[str, float], list[torch.Tensor]]:
    """``updates_per_batch`` optimizer steps over the micro-batches: each update's batch-level
    metrics summed over the updates and, with ``measure_entropy``, each micro-batch's entropy
    measured by the first update's forward.

    Every micro-batch's loss is its share of the batch loss (the batch's aggregation denominator),
    so their gradients add up to the gradient of the batch loss for any micro-batch size.
    """
    algo = stage_cfg.algorithm
    temperature = stage_cfg.rollout.temperature
    total_tokens = max(float(kb.mask.sum()), 1.0)
    sums: dict[str, float] = defaultdict(float)
    entropies: list[torch.Tensor] = []
    policy.model.train()
    for update in range(algo.updates_per_batch):
        optimizer.zero_grad(set_to_none=True)
        for k, (rows, sub) in enumerate(zip(kb.micro, kb.subs, strict=True)):
            width = sub.loss_mask.shape[1]
            measure = measure_entropy and update == 0
            logp, ent = batch_logprobs(policy, sub, temperature=temperature, with_grad=True, compute_entropy=measure,
                                       positions=sub.loss_mask, shared_prefix=kb.shared_prefix)
            if measure:
                assert ent is not None
                entropies.append(_widen(ent, kb.mask.shape[1]))
            loss, info = policy_loss(
                logp, sub.old_logprobs.to(logp.dtype), kb.adv[rows], kb.mask[rows, :width], inputs.config,
                ref_logp=inputs.ref_logp[k], weights=None if inputs.weights is None else inputs.weights[rows, :width],
                denominator=inputs.denominator,
            )
            loss.backward()
            # the losses are shares of the batch's: summed; the rest are means over the micro-batch's
            # tokens: weighted by its share of the batch's tokens
            share = float(kb.mask[rows].sum()) / total_tokens
            for key, value in info.items():
                sums[key] += value if key in _LOSS_SHARES else value * share
        if on_gradient is not None:
            on_gradient(update)
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.model.parameters(), stage_cfg.optim.max_grad_norm)
        sums["grad_norm"] += float(grad_norm)
        if math.isfinite(float(grad_norm)):
            optimizer.step()
        else:
            logger.warning("step %s: non-finite grad norm, update skipped", step)
    return sums, entropies
