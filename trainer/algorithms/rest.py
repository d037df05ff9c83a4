"""ResT token weights: the authors' region schedule and the paper's entropy-informed form.

Both return weights w [B, T] (no gradient) to use with ``aggregate_loss(..., "weighted-token-mean",
weights=w)``, i.e. L = Σ ℓ·m·w / Σ m·w. Shapes: B sequences, T tokens, R = len(Region).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from trainer.algorithms.masks import NUM_REGIONS, Region, RegionLabels, region_multi_hot

__all__ = [
    "RestEntropyConfig",
    "RestSchedule",
    "rest_entropy_weights",
    "rest_token_weights",
    "token_entropy",
]


def _token_weights(hot: Tensor, region_w: Tensor, default: float) -> Tensor:
    """Per token the max of its regions' weights (overlap → max); ``default`` if it has no region."""
    per_region = torch.where(hot, region_w.to(hot.device), torch.full_like(region_w, -math.inf).to(hot.device))
    best = per_region.max(dim=-1).values
    return torch.where(hot.any(dim=-1), best, torch.full_like(best, default))


def _clamp_and_rescale(raw: Tensor, mask: Tensor, min_weight: float, max_weight: float) -> Tensor:
    """w = clamp(raw, min, max) on valid tokens, then per sequence w ← w · n_b / Σ_t w (mean 1 over
    the n_b valid tokens of sequence b); 0 on invalid tokens and on sequences without valid tokens."""
    m = mask.to(raw.dtype)
    w = raw.clamp(min_weight, max_weight) * m
    total = w.sum(dim=-1, keepdim=True)
    count = m.sum(dim=-1, keepdim=True)
    scale = count / torch.where(total > 0, total, torch.ones_like(total))
    return w * scale


@dataclass(frozen=True)
class RestSchedule:
    """The ResT authors' region schedule at training step s (reference defaults from their code).

    FORMAT_TAG 1.0; REASONING min(0.6 + 0.002·s, 1.0); TOOL_NAME 1.2;
    TOOL_ARGS min(0.6 + 0.002·s, 1.2); OTHER 0. PROMPT/OBSERVATION 0 (never trained anyway).
    ANSWER is not in the authors' taxonomy (their outputs are tool calls); here it follows the
    reasoning schedule when ``answer_as_reasoning`` (free text, like reasoning), else OTHER.
    After the overlap max, weights are clamped to [min_weight, max_weight] (so OTHER becomes 0.001,
    not 0) and each sequence is rescaled to mean 1 over its valid tokens.
    """

    format_tag: float = 1.0
    tool_name: float = 1.2
    reasoning_start: float = 0.6
    reasoning_max: float = 1.0
    args_start: float = 0.6
    args_max: float = 1.2
    slope: float = 0.002
    other: float = 0.0
    answer_as_reasoning: bool = True
    min_weight: float = 0.001
    max_weight: float = 8.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_weight <= self.max_weight:
            raise ValueError(f"need 0 ≤ min_weight ≤ max_weight, got {self.min_weight}, {self.max_weight}")

    def region_weights(self, step: int) -> dict[Region, float]:
        """Weight of each region at step ``step`` (before clamp and rescale); log these."""
        if step < 0:
            raise ValueError(f"step must be ≥ 0, got {step}")
        reasoning = min(self.reasoning_start + self.slope * step, self.reasoning_max)
        weights = dict.fromkeys(Region, 0.0)
        weights[Region.OTHER] = self.other
        weights[Region.FORMAT_TAG] = self.format_tag
        weights[Region.REASONING] = reasoning
        weights[Region.TOOL_NAME] = self.tool_name
        weights[Region.TOOL_ARGS] = min(self.args_start + self.slope * step, self.args_max)
        weights[Region.ANSWER] = reasoning if self.answer_as_reasoning else self.other
        return weights


def rest_token_weights(
    regions: RegionLabels,
    mask: Tensor,
    step: int,
    schedule: RestSchedule = RestSchedule(),
) -> Tensor:
    """ResT schedule weights [B, T]: overlap max, clamp, per-sequence rescale to mean 1.

    Args:
        regions: any ``RegionLabels`` form ([B, T] labels, [B, T, R] multi-hot, list/dict of masks).
        mask: [B, T] loss mask; weights are 0 outside it and average 1 inside each sequence.
        step: training step s.
        schedule: the region schedule.
    """
    hot = region_multi_hot(regions)
    table = schedule.region_weights(step)
    region_w = torch.tensor([table[r] for r in Region], dtype=torch.get_default_dtype())
    raw = _token_weights(hot, region_w, schedule.other)
    return _clamp_and_rescale(raw, mask, schedule.min_weight, schedule.max_weight)


def token_entropy(logits: Tensor) -> Tensor:
    """Policy entropy per position, H = logsumexp(z) − Σ_v softmax(z)_v·z_v, [B, T, V] → [B, T] (nats)."""
    z = logits.float()
    return torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(dim=-1)


_DEFAULT_WEIGHTED = (Region.FORMAT_TAG, Region.TOOL_NAME, Region.TOOL_ARGS, Region.REASONING, Region.ANSWER)


@dataclass(frozen=True)
class RestEntropyConfig:
    """Entropy-informed ResT weights with a reasoning curriculum.

    For the weighted regions P present in the batch, with H_r the mean policy entropy (nats) over
    the valid tokens of region r and p ∈ [0, 1] the training progress:

        w_r = |P| · softmax_{r∈P}( −H_r / τ + β·p·[r ∈ C] )

    - Lower entropy → larger weight: structured, near-deterministic regions (tags, tool names,
      argument keys) weigh more, so a wrong token there — which decides whether the call parses at
      all — is not drowned out by the many high-entropy reasoning tokens. The softmax is the
      Boltzmann form: the weight ratio of two regions is exp((H_b − H_a)/τ), so τ (nats) sets how
      strongly an entropy gap turns into a weight gap (τ → ∞: uniform). The |P| factor makes the
      region weights average 1.
    - Curriculum: C (default REASONING) gets a log-weight bonus β·p, i.e. a factor e^{β·p}
      relative to the other regions; at p = 0 the weights are purely entropy-based, and as training
      proceeds (structure learned) the weight moves toward reasoning.

    Tokens in no weighted region get ``other_weight``; overlap takes the max; then clamp to
    [min_weight, max_weight] and rescale each sequence to mean 1, as in the schedule form.

    Attributes:
        temperature: τ > 0, nats.
        curriculum_strength: β ≥ 0; e^β is the relative boost of C at p = 1.
        curriculum_regions: C.
        weighted_regions: the regions that receive entropy-based weights.
        other_weight, min_weight, max_weight: as in ``RestSchedule``.
    """

    temperature: float = 1.0
    curriculum_strength: float = 1.0
    curriculum_regions: frozenset[Region] = frozenset({Region.REASONING})
    weighted_regions: tuple[Region, ...] = field(default=_DEFAULT_WEIGHTED)
    other_weight: float = 0.0
    min_weight: float = 0.001
    max_weight: float = 8.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: must be > 0 (nats; 1.0 is a good start)")
        if self.curriculum_strength < 0:
            raise ValueError(f"curriculum_strength={self.curriculum_strength}: must be ≥ 0 (0 = no curriculum)")
        if {Region.PROMPT, Region.OBSERVATION} & set(self.weighted_regions):
            raise ValueError("weighted_regions cannot hold PROMPT or OBSERVATION: they are never trained")
        if not 0.0 <= self.min_weight <= self.max_weight:
            raise ValueError(f"need 0 ≤ min_weight ≤ max_weight, got {self.min_weight}, {self.max_weight}")


def rest_entropy_weights(
    entropy: Tensor,
    regions: RegionLabels,
    mask: Tensor,
    progress: float,
    config: RestEntropyConfig = RestEntropyConfig(),
) -> tuple[Tensor, dict[str, float]]:
    """Entropy-informed ResT weights [B, T] and a logging dict.

    Args:
        entropy: [B, T] per-token policy entropy (``token_entropy``), taken as a constant.
        regions: any ``RegionLabels`` form.
        mask: [B, T] loss mask; only its tokens enter the region means and the rescale.
        progress: p ∈ [0, 1], e.g. step / total_steps.
        config: temperature, curriculum, clamp.

    Returns:
        (weights, info) where info holds ``rest/entropy/<region>`` (mean H_r) and
        ``rest/weight/<region>`` (w_r before clamp/rescale) for each weighted region present
        in the batch, and ``rest/progress``.
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    hot = region_multi_hot(regions)
    valid = mask.bool()
    h = entropy.detach().to(torch.get_default_dtype())
    in_region = hot & valid[..., None]  # [B, T, R]
    counts = in_region.sum(dim=(0, 1)).to(h.dtype)  # [R]
    sums = (in_region.to(h.dtype) * h[..., None]).sum(dim=(0, 1))
    mean_h = sums / counts.clamp(min=1.0)
    chosen = torch.zeros(NUM_REGIONS, dtype=torch.bool)
    chosen[[int(r) for r in config.weighted_regions]] = True
    present = chosen & (counts.cpu() > 0)
    boost = torch.zeros(NUM_REGIONS, dtype=h.dtype)
    boost[[int(r) for r in config.curriculum_regions]] = config.curriculum_strength * progress
    logits = -mean_h.cpu() / config.temperature + boost
    logits = torch.where(present, logits, torch.full_like(logits, -math.inf))
    region_w = torch.zeros(NUM_REGIONS, dtype=h.dtype)
    n_present = int(present.sum())
    if n_present:
        region_w = torch.where(present, n_present * torch.softmax(logits, dim=0), region_w)
    # Regions not weighted (or absent) fall back to other_weight for any token of theirs.
    region_w = torch.where(present, region_w, torch.full_like(region_w, config.other_weight))
    raw = _token_weights(hot, region_w, config.other_weight)
    weights = _clamp_and_rescale(raw, mask, config.min_weight, config.max_weight)
    info: dict[str, float] = {"rest/progress": float(progress)}
    for r in Region:
        if present[r]:
            info[f"rest/entropy/{r.name.lower()}"] = float(mean_h[r])
            info[f"rest/weight/{r.name.lower()}"] = float(region_w[r])
    return weights, info
