"""Trajectory filters (MTIR-SQL, DAPO) and the two-level loss mask (IMAgent).

Shapes: N = B trajectories, T token positions, R = len(Region).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from trainer.parsing import Region

__all__ = [
    "ActionMaskConfig",
    "FilterConfig",
    "FilterResult",
    "Region",
    "RegionLabels",
    "action_mask",
    "filter_trajectories",
    "region_multi_hot",
    "two_level_mask",
]


# What a token of a trajectory is (PROMPT and OBSERVATION are never trained): one enum,
# defined with the parser that labels the tokens.
NUM_REGIONS = len(Region)

# Region labels come as one of:
#   [B, T] integer tensor, one Region per token;
#   [B, T, R] multi-hot (bool/float), a token may sit in several regions (e.g. a tag inside arguments);
#   a Sequence of R [B, T] masks indexed by Region value, or a Mapping Region → [B, T] mask
#   (missing regions are empty).
RegionLabels = Tensor | Sequence[Tensor] | Mapping[Region, Tensor]


def region_multi_hot(regions: RegionLabels) -> Tensor:
    """Normalise any ``RegionLabels`` form to a bool multi-hot [B, T, R]."""
    if isinstance(regions, Mapping):
        if not regions:
            raise ValueError("empty region mapping: the [B, T] shape is unknown")
        like = next(iter(regions.values()))
        planes = [regions.get(r, torch.zeros_like(like)).bool() for r in Region]
        return torch.stack(planes, dim=-1)
    if isinstance(regions, Tensor):
        if regions.dim() == 2:
            if regions.is_floating_point() or regions.dtype == torch.bool:
                raise ValueError("[B, T] region labels must be an integer tensor of Region values")
            if regions.numel() and (int(regions.min()) < 0 or int(regions.max()) >= NUM_REGIONS):
                raise ValueError(f"region labels must be in [0, {NUM_REGIONS}), see Region")
            return torch.nn.functional.one_hot(regions.long(), NUM_REGIONS).bool()
        if regions.dim() == 3 and regions.shape[-1] == NUM_REGIONS:
            return regions.bool()
        raise ValueError(f"region tensor must be [B, T] labels or [B, T, {NUM_REGIONS}] multi-hot")
    if len(regions) != NUM_REGIONS:
        raise ValueError(f"a list of region masks needs {NUM_REGIONS} masks, one per Region, got {len(regions)}")
    return torch.stack([m.bool() for m in regions], dim=-1)


@dataclass(frozen=True)
class FilterConfig:
    """Which trajectories ``filter_trajectories`` drops; every switch is independent.

    The experiment config's ``algorithm.filters`` section is this class: the field names are the
    YAML keys.

    Attributes:
        drop_equal_reward_groups: drop groups whose kept rewards are all equal (within
            ``uniform_atol``): GRPO advantages are all 0 there, so they only dilute the batch (DAPO
            dynamic sampling).
        drop_infra_failed: drop trajectories whose tool/reward call failed for infrastructure
            reasons; their reward says nothing about the policy.
        drop_truncated: drop trajectories that hit the length limit (DAPO overlong filtering,
            MTIR-SQL). Off by default: a truncation penalty in the reward is the alternative.
        drop_format_errors: drop trajectories that break the output format (MTIR-SQL). Off by
            default, because a format reward usually teaches the format from these very samples.
        uniform_atol: rewards within this of each other count as equal.
    """

    drop_equal_reward_groups: bool = True
    drop_infra_failed: bool = True
    drop_truncated: bool = False
    drop_format_errors: bool = False
    uniform_atol: float = 1e-6

    def __post_init__(self) -> None:
        if self.uniform_atol < 0:
            raise ValueError(f"uniform_atol={self.uniform_atol}: must be ≥ 0 (e.g. 1e-6)")


@dataclass(frozen=True)
class FilterResult:
    """keep: bool [N]; counts: trajectories per reason (a trajectory can count under several),
    plus ``kept`` and ``dropped``. Reasons: uniform_group, infra_failed, truncated, format_violation."""

    keep: Tensor
    counts: dict[str, int]


def _flag(name: str, flags: Tensor | None, enabled: bool, n: int, device: torch.device) -> Tensor:
    if not enabled:
        return torch.zeros(n, dtype=torch.bool, device=device)
    if flags is None:
        raise ValueError(
            f"FilterConfig drops {name} trajectories but no {name} flags were passed: pass them or turn it off"
        )
    if flags.shape != (n,):
        raise ValueError(f"{name} flags must be [{n}], got {tuple(flags.shape)}")
    return flags.bool()


def filter_trajectories(
    rewards: Tensor,
    group_ids: Tensor,
    config: FilterConfig = FilterConfig(),
    *,
    infra_failed: Tensor | None = None,
    truncated: Tensor | None = None,
    format_violation: Tensor | None = None,
) -> FilterResult:
    """Keep-mask [N] over trajectories and counts by reason.

    The per-trajectory filters (infra_failed, truncated, format_violation) apply first; a group is
    then "uniform" when its remaining trajectories have equal rewards or fewer than two remain, so a
    failed call's placeholder reward cannot make a group look informative. Compute advantages over
    the kept trajectories (``grpo_advantages(rewards[keep], group_ids[keep])``).

    Args:
        rewards: [N] scalar reward per trajectory.
        group_ids: [N] group (prompt) id per trajectory.
        config: which filters are on.
        infra_failed, truncated, format_violation: bool [N] flags; required when their switch is on.
    """
    n = rewards.shape[0]
    if rewards.shape != (n,) or group_ids.shape != (n,):
        raise ValueError(
            f"rewards and group_ids must both be [N], got {tuple(rewards.shape)}, {tuple(group_ids.shape)}"
        )
    dev = rewards.device
    reasons = {
        "infra_failed": _flag("infra_failed", infra_failed, config.drop_infra_failed, n, dev),
        "truncated": _flag("truncated", truncated, config.drop_truncated, n, dev),
        "format_violation": _flag("format_violation", format_violation, config.drop_format_errors, n, dev),
    }
    alive = ~(reasons["infra_failed"] | reasons["truncated"] | reasons["format_violation"])
    uniform = torch.zeros(n, dtype=torch.bool, device=dev)
    if config.drop_equal_reward_groups and n:
        _, inv = torch.unique(group_ids, return_inverse=True)
        g = int(inv.max()) + 1
        r = rewards.detach().to(torch.float64)
        big = torch.full((g,), float("inf"), dtype=r.dtype, device=dev)
        hi = (-big).scatter_reduce(0, inv, torch.where(alive, r, -torch.inf), reduce="amax")
        lo = big.scatter_reduce(0, inv, torch.where(alive, r, torch.inf), reduce="amin")
        alive_count = torch.zeros(g, dtype=torch.long, device=dev).index_add_(0, inv, alive.long())
        group_uniform = (alive_count < 2) | (hi - lo <= config.uniform_atol)
        uniform = group_uniform[inv]
    reasons = {"uniform_group": uniform, **reasons}
    keep = alive & ~uniform
    counts = {name: int(flags.sum()) for name, flags in reasons.items()}
    counts["kept"] = int(keep.sum())
    counts["dropped"] = n - counts["kept"]
    return FilterResult(keep=keep, counts=counts)


@dataclass(frozen=True)
class ActionMaskConfig:
    """Which generated regions carry loss (action level of the IMAgent two-level mask).

    PROMPT and OBSERVATION tokens are always 0: the policy did not generate them.
    ``include_tool_calls`` covers TOOL_NAME and TOOL_ARGS. OTHER is generated text outside the
    tagged regions (EOS, whitespace between tags); it is trained by default so the policy learns to stop.
    """

    include_format_tags: bool = True
    include_reasoning: bool = True
    include_tool_calls: bool = True
    include_answer: bool = True
    include_other: bool = True

    def included(self) -> frozenset[Region]:
        """The regions whose tokens get mask 1."""
        chosen = {
            Region.FORMAT_TAG: self.include_format_tags,
            Region.REASONING: self.include_reasoning,
            Region.TOOL_NAME: self.include_tool_calls,
            Region.TOOL_ARGS: self.include_tool_calls,
            Region.ANSWER: self.include_answer,
            Region.OTHER: self.include_other,
        }
        return frozenset(r for r, on in chosen.items() if on)


def action_mask(
    regions: RegionLabels,
    valid: Tensor | None = None,
    config: ActionMaskConfig = ActionMaskConfig(),
) -> Tensor:
    """Action-level loss mask, float [B, T].

    m_{b,t} = 1 iff the token is valid (not padding), lies in at least one included region, and
    lies in neither PROMPT nor OBSERVATION (those win over any overlapping region).

    Args:
        regions: any ``RegionLabels`` form.
        valid: [B, T] attention/response mask; padding is 0. None = every position valid.
        config: which regions are included.
    """
    hot = region_multi_hot(regions)
    include = torch.zeros(NUM_REGIONS, dtype=torch.bool, device=hot.device)
    include[[int(r) for r in config.included()]] = True
    in_included = (hot & include).any(dim=-1)
    never = hot[..., Region.PROMPT] | hot[..., Region.OBSERVATION]
    mask = in_included & ~never
    if valid is not None:
        mask = mask & valid.bool()
    return mask.to(torch.get_default_dtype())


def two_level_mask(action: Tensor, keep: Tensor) -> Tensor:
    """Trajectory level on top of action level: m_{b,t} = action_{b,t} · keep_b, float [B, T].

    A trajectory the filter dropped contributes no token.
    """
    if keep.shape != (action.shape[0],):
        raise ValueError(f"keep must be [{action.shape[0]}], got {tuple(keep.shape)}")
    dtype = action.dtype if action.is_floating_point() else torch.get_default_dtype()
    return action.to(dtype) * keep.to(dtype)[:, None]
