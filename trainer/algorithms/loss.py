"""Clipped surrogate, k3 KL to a reference, loss aggregation and the composed policy loss.

Shapes: B sequences, T token positions. Masks are float or bool [B, T]; 1 = token is trained.
Per-token log-probabilities are those of the sampled tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from trainer.algorithms.advantages import broadcast_to_tokens

__all__ = [
    "LOSS_AGG_MODES",
    "LossAggMode",
    "PolicyLossConfig",
    "SurrogateOutput",
    "aggregate_loss",
    "aggregation_denominator",
    "clipped_surrogate",
    "kl_k3",
    "kl_penalty",
    "masked_mean",
    "needs_reference_model",
    "policy_loss",
]

LossAggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "weighted-token-mean"]
LOSS_AGG_MODES: tuple[str, ...] = get_args(LossAggMode)

# exp() of a log-ratio beyond ±20 overflows float16 and gives useless gradients in float32 (verl clamps too).
_LOG_RATIO_CLAMP = 20.0


def _safe_div(num: Tensor, denom: Tensor) -> Tensor:
    """num / denom, and num (which is then 0, keeping its graph) where denom == 0; no host sync."""
    return num / torch.where(denom > 0, denom, torch.ones_like(denom))


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    """x where mask else 0; ``where`` (not x·m) so inf/NaN on padding cannot leak into the sum."""
    return torch.where(mask.bool(), x, torch.zeros_like(x))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Σ x·m / Σ m over all elements; 0 (with grad) when the mask is empty."""
    m = mask.to(x.dtype)
    return _safe_div((_masked(x, mask) * m).sum(), m.sum())


@dataclass(frozen=True)
class SurrogateOutput:
    """Per-token clipped-surrogate loss [B, T] and logging scalars (0-dim tensors, detached)."""

    loss: Tensor
    ratio: Tensor
    clip_frac: Tensor
    approx_kl: Tensor


def clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> SurrogateOutput:
    """PPO/GRPO clipped surrogate with asymmetric clipping (DAPO clip-higher).

    ρ = exp(logp − old_logp) (log-ratio clamped to ±20);
    ℓ = −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A).

    For A > 0 the objective stops rewarding ρ above 1 + ε_high; for A < 0 it stops rewarding ρ
    below 1 − ε_low. Past those bounds the token's gradient is 0; on the other side it is unclipped.

    Logging:
        clip_frac: fraction of valid tokens where the clipped term is the active one (strictly
            larger loss than the unclipped one, verl's ``pg_clipfrac``).
        approx_kl: masked mean of the k3 estimate of KL(π_old ‖ π) = (ρ − 1) − log ρ
            (non-negative, lower variance than the k1 mean of old_logp − logp).

    Args:
        logp, old_logp: [B, T] log-probabilities of the sampled tokens under π and π_old.
        advantages: [B, T] (use ``broadcast_to_tokens`` for per-sequence advantages).
        mask: [B, T] tokens that count for the logging means.
        clip_low, clip_high: ε_low, ε_high.
    """
    log_ratio = (logp - old_logp).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).to(logp.dtype), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return SurrogateOutput(loss=loss, ratio=ratio, clip_frac=clip_frac, approx_kl=approx_kl)


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(π ‖ π_ref): with d = ref_logp − logp, k3 = exp(d) − d − 1 ≥ 0.

    Unbiased for KL(π ‖ π_ref) on tokens sampled from π, 0 where the two agree. ``d`` is clamped
    to ±20 for the same reason as the ratio. Shapes: [B, T] → [B, T].
    """
    d = (ref_logp - logp).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1.0


def needs_reference_model(kl_coef: float) -> bool:
    """Whether the trainer must load a reference model and compute ref log-probs (kl_coef > 0)."""
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be ≥ 0, got {kl_coef}")
    return kl_coef > 0


def kl_penalty(logp: Tensor, ref_logp: Tensor | None, kl_coef: float) -> Tensor | None:
    """Per-token KL term β·k3 [B, T], or None when ``kl_coef == 0``.

    With ``kl_coef: 0`` (MTIR-SQL) the caller never loads the reference model: pass
    ``ref_logp=None`` and get None back, meaning "no KL term".

    Raises:
        ValueError: ``kl_coef > 0`` without ``ref_logp``.
    """
    if not needs_reference_model(kl_coef):
        return None
    if ref_logp is None:
        raise ValueError(f"kl_coef={kl_coef} > 0 needs ref_logp; set kl_coef: 0 to train without a reference model")
    return kl_coef * kl_k3(logp, ref_logp)


def _check_mode(mode: str, weights: Tensor | None) -> None:
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {mode!r}; choose one of {LOSS_AGG_MODES}")
    if (weights is not None) != (mode == "weighted-token-mean"):
        raise ValueError("weights are used by, and only by, loss_agg_mode 'weighted-token-mean'")


def _denominator(mask: Tensor, mode: str, weights: Tensor | None, dtype: torch.dtype) -> Tensor:
    m = mask.to(dtype)
    if mode == "token-mean":
        return m.sum()
    if mode == "weighted-token-mean":
        assert weights is not None
        return (_masked(weights.to(dtype), mask) * m).sum()
    return (m.sum(dim=-1) > 0).to(dtype).sum()


def aggregation_denominator(mask: Tensor, mode: LossAggMode = "token-mean", weights: Tensor | None = None) -> Tensor:
    """The denominator of ``aggregate_loss`` over a batch: Σ m (``token-mean``), Σ m·w
    (``weighted-token-mean``) or the number of sequences with a valid token (the sequence means).

    Computed once over the whole batch and passed to ``aggregate_loss(..., denominator=...)`` of each
    micro-batch, it makes the micro-batch losses (and their gradients) add up to the batch's.

    Raises:
        ValueError: as ``aggregate_loss`` for an unknown mode or misplaced ``weights``.
    """
    _check_mode(mode, weights)
    if weights is not None:
        dtype = weights.dtype
    else:
        dtype = mask.dtype if mask.is_floating_point() else torch.get_default_dtype()
    return _denominator(mask, mode, weights, dtype)


def aggregate_loss(
    loss_mat: Tensor,
    mask: Tensor,
    mode: LossAggMode = "token-mean",
    weights: Tensor | None = None,
    *,
    denominator: Tensor | float | None = None,
) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    - ``token-mean``: Σ ℓ·m / Σ m over the whole batch (long sequences weigh more; DAPO).
    - ``seq-mean-token-mean``: mean over sequences of (Σ_t ℓ·m / Σ_t m) (original GRPO).
    - ``seq-mean-token-sum``: mean over sequences of Σ_t ℓ·m.
    - ``weighted-token-mean``: Σ ℓ·m·w / Σ m·w (ResT token weights); needs ``weights`` [B, T].

    The sequence means run over sequences with at least one valid token, so a trajectory the
    filter dropped (all-zero mask row) does not dilute the loss. An all-zero mask (or Σ m·w = 0)
    gives 0, still connected to the graph of ``loss_mat``.

    ``denominator``: the batch's ``aggregation_denominator`` when ``loss_mat`` is one micro-batch
    of it; the result is then the micro-batch's share of the batch loss (its numerator over the
    batch's denominator), and the shares of any split into micro-batches sum to the batch loss.
    None: this tensor is the whole batch.

    Raises:
        ValueError: unknown mode, ``weights`` missing for ``weighted-token-mean``, or given for
            another mode (where it would be silently ignored).
    """
    _check_mode(mode, weights)
    if loss_mat.shape != mask.shape:
        raise ValueError(f"loss shape {tuple(loss_mat.shape)} != mask shape {tuple(mask.shape)}")
    m = mask.to(loss_mat.dtype)
    if mode == "token-mean":
        numerator = (_masked(loss_mat, mask) * m).sum()
    elif mode == "weighted-token-mean":
        assert weights is not None
        w = _masked(weights.to(loss_mat.dtype), mask) * m
        numerator = (_masked(loss_mat, mask) * w).sum()
    else:
        seq = (_masked(loss_mat, mask) * m).sum(dim=-1)
        if mode == "seq-mean-token-mean":
            seq = _safe_div(seq, m.sum(dim=-1))
        numerator = seq.sum()   # an empty row's seq is 0: it adds nothing
    if denominator is None:
        denom = _denominator(mask, mode, weights, loss_mat.dtype)
    else:
        denom = torch.as_tensor(denominator, dtype=loss_mat.dtype, device=loss_mat.device)
    return _safe_div(numerator, denom)


@dataclass(frozen=True)
class PolicyLossConfig:
    """Settings of ``policy_loss``.

    Attributes:
        clip_low: ε_low, the ratio's lower bound is 1 − ε_low. In [0, 1).
        clip_high: ε_high, upper bound 1 + ε_high; DAPO's clip-higher uses 0.28 with ε_low 0.2.
        kl_coef: β of the k3 KL to the reference model; 0 removes the reference model entirely.
        loss_agg_mode: see ``aggregate_loss``; ResT weights need ``weighted-token-mean``.
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    loss_agg_mode: LossAggMode = "token-mean"

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(f"clip_low={self.clip_low}: must be in [0, 1) so that 1 − clip_low > 0")
        if self.clip_high < 0.0:
            raise ValueError(f"clip_high={self.clip_high}: must be ≥ 0 (e.g. 0.2, or 0.28 for DAPO clip-higher)")
        if self.kl_coef < 0.0:
            raise ValueError(f"kl_coef={self.kl_coef}: must be ≥ 0; use 0 to drop the reference model")
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise ValueError(f"loss_agg_mode={self.loss_agg_mode!r}: choose one of {LOSS_AGG_MODES}")


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    config: PolicyLossConfig = PolicyLossConfig(),
    *,
    ref_logp: Tensor | None = None,
    weights: Tensor | None = None,
    denominator: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Scalar policy loss L = agg(ℓ_clip + β·k3) and logging metrics.

    Args:
        logp: [B, T] current log-probs of the sampled tokens (requires grad).
        old_logp: [B, T] log-probs under the rollout policy.
        advantages: [B] per-sequence (broadcast to tokens) or [B, T] per-token.
        mask: [B, T] loss mask (e.g. ``two_level_mask``).
        config: clipping, KL and aggregation settings.
        ref_logp: [B, T] reference log-probs; needed only when ``config.kl_coef > 0``.
        weights: [B, T] token weights (ResT); requires ``loss_agg_mode='weighted-token-mean'``.
        denominator: for a micro-batch, the whole batch's ``aggregation_denominator`` (see
            ``aggregate_loss``): the micro-batches' losses then sum to the batch loss.

    Returns:
        (loss, metrics) with metrics ``actor/pg_loss``, ``actor/clip_frac``, ``actor/approx_kl``,
        ``actor/ratio_mean``, ``actor/loss`` and, when β > 0, ``actor/kl`` (token-mean of k3).
        With ``denominator`` the two losses are this micro-batch's shares (sum them over the
        batch); the other four are always means over this call's masked tokens (weight them by
        its token count for the batch's means).
    """
    adv = broadcast_to_tokens(advantages, mask) if advantages.dim() == 1 else advantages
    if adv.shape != logp.shape or old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(
            f"shapes differ: logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)}, "
            f"advantages {tuple(adv.shape)}, mask {tuple(mask.shape)}"
        )
    surrogate = clipped_surrogate(
        logp, old_logp, adv.detach(), mask, clip_low=config.clip_low, clip_high=config.clip_high
    )
    mode = config.loss_agg_mode
    pg_loss = aggregate_loss(surrogate.loss, mask, mode, weights, denominator=denominator)
    kl = kl_penalty(logp, ref_logp, config.kl_coef)
    loss = pg_loss if kl is None else pg_loss + aggregate_loss(kl, mask, mode, weights, denominator=denominator)
    metrics = {
        "actor/pg_loss": float(pg_loss.detach()),
        "actor/clip_frac": float(surrogate.clip_frac),
        "actor/approx_kl": float(surrogate.approx_kl),
        "actor/ratio_mean": float(masked_mean(surrogate.ratio.detach(), mask)),
        "actor/loss": float(loss.detach()),
    }
    if kl is not None:
        assert ref_logp is not None
        metrics["actor/kl"] = float(masked_mean(kl_k3(logp.detach(), ref_logp), mask))
    return loss, metrics
