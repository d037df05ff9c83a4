"""GRPO / Dr.GRPO group-relative advantages.

Shapes: N trajectories, B sequences (= N), T token positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["broadcast_to_tokens", "grpo_advantages"]


def grpo_advantages(
    rewards: Tensor,
    group_ids: Tensor | None = None,
    *,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """Group-relative advantages: A_i = (r_i − mean_g(r)) / (std_g(r) + eps), or A_i = r_i − mean_g(r).

    ``std`` is the *unbiased* (Bessel-corrected, ``correction=1``) sample standard deviation, as
    ``torch.std`` computes it by default and as verl's ``compute_grpo_outcome_advantage`` uses:
    for rewards [1, 0, 0, 1], mean 0.5, std = sqrt(4·0.25 / 3) = 0.57735, A = ±0.86603.
    ``norm_by_std=False`` is Dr.GRPO (no std division, which otherwise up-weights easy/hard groups).

    A group of one trajectory has no baseline to compare with, so its advantage is 0 (verl instead
    uses mean 0, std 1; the experiment config requires group size ≥ 2, so this only matters after
    filtering). Advantages carry no gradient.

    To compute advantages over only the trajectories a filter kept, pass ``rewards[keep]`` and
    ``group_ids[keep]``.

    Args:
        rewards: [N] with ``group_ids``, or [num_groups, G] where each row is a group.
        group_ids: [N] integer group id per trajectory (any values; equal id = same prompt).
            Must be None when ``rewards`` is 2-D.
        norm_by_std: divide by the group std (GRPO) or not (Dr.GRPO).
        eps: added to the std so that a uniform group gives 0 rather than 0/0.

    Returns:
        Advantages with the shape of ``rewards``, float.
    """
    r = rewards.detach()
    r = r.to(torch.get_default_dtype()) if not r.is_floating_point() else r
    if r.dim() == 2:
        if group_ids is not None:
            raise ValueError("group_ids must be None when rewards is [num_groups, G]; each row is a group")
        ids = torch.arange(r.shape[0], device=r.device).repeat_interleave(r.shape[1])
        return grpo_advantages(r.reshape(-1), ids, norm_by_std=norm_by_std, eps=eps).reshape(r.shape)
    if r.dim() != 1:
        raise ValueError(f"rewards must be [N] or [num_groups, G], got shape {tuple(r.shape)}")
    if group_ids is None:
        raise ValueError("rewards is [N]: pass group_ids [N], or reshape rewards to [num_groups, G]")
    if group_ids.shape != r.shape:
        raise ValueError(f"group_ids shape {tuple(group_ids.shape)} != rewards shape {tuple(r.shape)}")
    if r.numel() == 0:
        return r.clone()

    _, inv = torch.unique(group_ids, return_inverse=True)
    num_groups = int(inv.max().item()) + 1
    count = torch.zeros(num_groups, dtype=r.dtype, device=r.device).index_add_(0, inv, torch.ones_like(r))
    total = torch.zeros(num_groups, dtype=r.dtype, device=r.device).index_add_(0, inv, r)
    mean = total / count
    centred = r - mean[inv]
    singleton = count[inv] < 2
    if norm_by_std:
        sq = torch.zeros(num_groups, dtype=r.dtype, device=r.device).index_add_(0, inv, centred * centred)
        std = (sq / (count - 1).clamp(min=1)).sqrt()
        adv = centred / (std[inv] + eps)
    else:
        adv = centred
    return torch.where(singleton, torch.zeros_like(adv), adv)


def broadcast_to_tokens(advantages: Tensor, mask: Tensor) -> Tensor:
    """Per-sequence advantage [B] → per-token [B, T]: A_{b,t} = A_b · m_{b,t} (0 on masked-out tokens)."""
    if advantages.dim() != 1:
        raise ValueError(f"advantages must be [B], got shape {tuple(advantages.shape)}")
    if mask.shape[0] != advantages.shape[0]:
        raise ValueError(f"mask batch {mask.shape[0]} != advantages batch {advantages.shape[0]}")
    return advantages[:, None] * mask.to(advantages.dtype)
