"""Gradient agreement: does one batch's gradient point where the next batch's does?

A training step helps only as far as its batch gradient carries the true gradient's direction.
With the weights held fixed, the gradients of ``k`` independent batches are ``g_i = μ + ε_i`` (``μ``
the true gradient, ``ε_i`` the batch's noise, of squared norm ``σ²/B`` for ``B`` samples). Then

    E[g_i · g_j] = |μ|²   (i ≠ j)        E[|g_i|²] = |μ|² + σ²/B

so ``signal_share = mean_{i≠j} g_i·g_j / mean_i |g_i|²`` estimates ``|μ|² / (|μ|² + σ²/B)``, the
share of one batch gradient's squared norm that is signal (the mean pairwise cosine estimates the
same when the norms are alike). Noise shrinks with ``B``, so the batch that reaches a target share
``t`` is ``B · (1 - s)/s · t/(1 - t)`` (``batch_for_share``).

What counts as "noise" depends on what the batches share: between batches of different questions,
``ε`` holds each question's own direction as well as sampling noise; between fresh samples of the
same questions (``same_tasks``), only the sampling noise. Why: a few minutes of this say whether a
design's gradients share anything across questions, before a long run says whether it learns
(``bench/grad_agreement.py``; results in bench/README.md).

    grads = sft_gradients(policy, demos, batches=12, batch_size=16, seed=0)
    agreement(grads).mean_cosine
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.compose import StageRollouts
from trainer.config import StageConfig
from trainer.grpo import grpo_update
from trainer.policy.hf import HFPolicy
from trainer.sft import SftData, load_sft_examples, sft_loss

logger = logging.getLogger(__name__)


def flat_gradient(model: torch.nn.Module) -> torch.Tensor:
    """Every parameter's ``.grad`` as one float32 vector (zeros where a parameter has none, so that
    vectors of different batches line up)."""
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().float()
             for p in model.parameters()]
    return torch.cat(parts)          # a new tensor: later backward passes do not change it


@dataclass(frozen=True)
class Agreement:
    """How alike the gradients of independent batches are (see the module docstring)."""

    batches: int
    mean_cosine: float
    min_cosine: float
    max_cosine: float
    signal_share: float      # mean pairwise dot product / mean squared norm
    mean_norm: float

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def agreement(grads: Sequence[torch.Tensor]) -> Agreement:
    """Pairwise agreement of ``grads`` (at least two vectors of one length).

    Raises:
        ValueError: fewer than two gradients, or gradients of different lengths.
    """
    if len(grads) < 2:
        raise ValueError(f"agreement needs at least two batch gradients (got {len(grads)})")
    if len({g.numel() for g in grads}) != 1:
        raise ValueError("the gradients have different lengths: they are not of one model")
    vectors = [g.double().flatten() for g in grads]
    pairs = list(itertools.combinations(range(len(vectors)), 2))
    dots = [float(vectors[i] @ vectors[j]) for i, j in pairs]
    norms = [float(v.norm()) for v in vectors]
    cosines = [d / (norms[i] * norms[j]) if norms[i] and norms[j] else 0.0
               for d, (i, j) in zip(dots, pairs, strict=True)]
    mean_square = sum(n * n for n in norms) / len(norms)
    return Agreement(
        batches=len(vectors),
        mean_cosine=sum(cosines) / len(cosines),
        min_cosine=min(cosines),
        max_cosine=max(cosines),
        signal_share=(sum(dots) / len(dots)) / mean_square if mean_square else 0.0,
        mean_norm=sum(norms) / len(norms),
    )


def batch_for_share(share: float, batch: float, target: float) -> float | None:
    """The batch size at which the signal share would reach ``target``, from ``share`` measured at
    ``batch`` (noise variance falls as 1/batch); None when ``share <= 0`` (no signal measured).

    Raises:
        ValueError: ``target`` outside (0, 1), ``share >= 1`` or ``batch <= 0``.
    """
    if not 0 < target < 1:
        raise ValueError(f"target share {target} must be in (0, 1)")
    if share >= 1 or batch <= 0:
        raise ValueError(f"share {share} must be < 1 and batch {batch} > 0")
    if share <= 0:
        return None
    return batch * (1 - share) / share * target / (1 - target)


def sft_gradients(policy: HFPolicy, demos: Path, *, batches: int, batch_size: int, seed: int,
                  on_batch: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """The SFT loss gradient of ``batches`` consecutive batches of ``demos`` at the policy's
    current weights (nothing is updated)."""
    data = SftData(load_sft_examples(demos, policy.tokenizer), seed=seed, pad_token_id=policy.pad_token_id)
    grads = []
    policy.model.train()
    for k in range(batches):
        policy.model.zero_grad(set_to_none=True)
        loss, _ = sft_loss(policy, data.next_batch(batch_size))
        loss.backward()
        grads.append(flat_gradient(policy.model))
        if on_batch is not None:
            on_batch(k + 1)
    policy.model.zero_grad(set_to_none=True)
    return grads


@dataclass
class GrpoGradients:
    """The first-update gradients of GRPO batches, and each batch's rollout metrics."""

    grads: list[torch.Tensor]
    batch_metrics: list[dict[str, float]]   # one per batch sampled, including those without signal


def grpo_gradients(policy: HFPolicy, rollouts: StageRollouts, stage: StageConfig, *, batches: int,
                   max_batches: int | None = None, same_tasks: bool = False,
                   on_batch: Callable[[int, dict[str, float]], None] | None = None) -> GrpoGradients:
    """The GRPO loss gradient of ``batches`` batches sampled from the policy at its current weights.

    ``rollouts`` is what the runner uses (``Stack.stage`` with the policy's sampler). Each batch is
    a fresh draw of ``stage.rollout.prompts_per_step`` tasks (with ``same_tasks``, fresh samples of
    the first draw's tasks: agreement then says whether the gradient of given questions is
    consistent, apart from whether it carries over to other questions); the gradient is that of the
    stage's first update (ratio 1, before clipping). A batch whose groups are all uniform has no
    gradient and is skipped; at most ``max_batches`` (default 2 × batches) are sampled. The weights
    do not change: the update runs with a zero learning rate.
    """
    one_update = dataclasses.replace(stage, algorithm=dataclasses.replace(stage.algorithm, updates_per_batch=1))
    frozen = torch.optim.SGD(policy.model.parameters(), lr=0.0)
    grads: list[torch.Tensor] = []
    metrics: list[dict[str, float]] = []
    limit = max_batches if max_batches is not None else 2 * batches
    step = 0
    while len(grads) < batches and step < limit:
        step += 1
        tasks = rollouts.tasks(1 if same_tasks else step)
        trajectories = rollouts.rollout(tasks, step)
        rollouts.score(trajectories, step)
        values = grpo_update(policy, frozen, trajectories, one_update, step - 1,
                             on_gradient=lambda _update: grads.append(flat_gradient(policy.model)))
        metrics.append(values)
        if on_batch is not None:
            on_batch(len(grads), values)
    if len(grads) < batches:
        logger.warning("only %d of %d batches had a group with signal in %d draws", len(grads), batches, step)
    policy.model.zero_grad(set_to_none=True)
    return GrpoGradients(grads=grads, batch_metrics=metrics)
