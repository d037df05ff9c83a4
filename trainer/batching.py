"""Trajectories → padded tensors aligned with ``HFPolicy.forward_logprobs``.

A row is ``prompt_ids + token_ids``, right-padded to the longest row. ``forward_logprobs`` returns
[B, T-1] next-token log-probs where position t scores ``input_ids[:, t+1]``, so token j of
``token_ids`` (at input position P + j, P = len(prompt_ids)) is scored at position P + j − 1.
Every per-token list of a trajectory (loss mask, old log-probs, regions) is shifted the same way;
prompt and padding positions get mask 0, old log-prob 0 and region PROMPT. A row may carry images
(a vision policy's trajectory: the images whose pad runs its tokens hold); ``batch_logprobs`` gives
them to the policy's forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rlyard.domain import ImagePart
from trainer.parsing import Region
from trainer.policy.hf import HFPolicy
from trainer.policy.vlm import VLMPolicy
from trainer.types import RolloutTrajectory

__all__ = ["TokenBatch", "batch_logprobs", "collate", "collate_trajectories", "length_chunks"]

ImageRows = tuple[tuple[ImagePart, ...], ...]


def _rows_of(images: ImageRows | None, rows: Tensor | slice | list[int]) -> ImageRows | None:
    """The images of ``rows`` (as ``select`` indexes the tensors)."""
    if images is None:
        return None
    if isinstance(rows, slice):
        return images[rows]
    if isinstance(rows, Tensor):
        rows = torch.nonzero(rows).flatten().tolist() if rows.dtype == torch.bool else rows.flatten().tolist()
    return tuple(images[int(r)] for r in rows)


@dataclass(frozen=True)
class TokenBatch:
    """Padded rows: ``input_ids``/``attention_mask`` [B, T]; the rest [B, T-1] (predicted positions)."""

    input_ids: Tensor
    attention_mask: Tensor
    loss_mask: Tensor
    old_logprobs: Tensor
    regions: Tensor
    images: ImageRows | None = None     # per row, the images its tokens show; None: no row shows any

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        """Tokens that carry loss."""
        return int(self.loss_mask.sum())

    def select(self, rows: Tensor | slice | list[int]) -> TokenBatch:
        """A sub-batch of rows (padding kept; harmless, masked out)."""
        return TokenBatch(
            input_ids=self.input_ids[rows],
            attention_mask=self.attention_mask[rows],
            loss_mask=self.loss_mask[rows],
            old_logprobs=self.old_logprobs[rows],
            regions=self.regions[rows],
            images=_rows_of(self.images, rows),
        )

    @property
    def width(self) -> int:
        """Columns up to the last real token of any row (the rest is padding every row shares)."""
        used = torch.nonzero(self.attention_mask.any(dim=0)).flatten()
        return int(used[-1]) + 1 if len(used) else 0

    def trimmed(self) -> TokenBatch:
        """The same rows without the padding columns they all share at the end (a sub-batch of
        short rows from a batch padded to a long one computes only its own width)."""
        width = max(self.width, 2)
        if width >= self.input_ids.shape[1]:
            return self
        return TokenBatch(
            input_ids=self.input_ids[:, :width],
            attention_mask=self.attention_mask[:, :width],
            loss_mask=self.loss_mask[:, : width - 1],
            old_logprobs=self.old_logprobs[:, : width - 1],
            regions=self.regions[:, : width - 1],
            images=self.images,
        )


def collate(
    prompts: Sequence[Sequence[int]],
    tokens: Sequence[Sequence[int]],
    loss_masks: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    old_logprobs: Sequence[Sequence[float]] | None = None,
    regions: Sequence[Sequence[int]] | None = None,
    images: Sequence[Sequence[ImagePart]] | None = None,
) -> TokenBatch:
    """Pad rows of (prompt, tokens, per-token lists, and the images each row shows) into a ``TokenBatch``.

    With an empty prompt the first token has no predicting position, so it cannot carry loss.

    Raises:
        ValueError: lengths disagree, or a row is shorter than 2 tokens.
    """
    n = len(prompts)
    if not (len(tokens) == len(loss_masks) == n):
        raise ValueError(f"{n} prompts, {len(tokens)} token lists, {len(loss_masks)} masks")
    if images is not None and len(images) != n:
        raise ValueError(f"{n} rows but {len(images)} rows of images")
    if n == 0:
        raise ValueError("cannot collate an empty batch")
    width = max(len(p) + len(t) for p, t in zip(prompts, tokens, strict=True))
    if width < 2:
        raise ValueError("every batch needs a row of at least 2 tokens to predict anything")
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width - 1), dtype=torch.get_default_dtype())
    old = torch.zeros((n, width - 1), dtype=torch.float32)
    reg = torch.full((n, width - 1), int(Region.PROMPT), dtype=torch.long)
    for row in range(n):
        prompt, toks = list(prompts[row]), list(tokens[row])
        if len(loss_masks[row]) != len(toks):
            raise ValueError(f"row {row}: {len(toks)} tokens but {len(loss_masks[row])} mask values")
        p, length = len(prompt), len(prompt) + len(toks)
        input_ids[row, :length] = torch.tensor(prompt + toks, dtype=torch.long)
        attention[row, :length] = 1
        # token j sits at input position p + j and is scored at position p + j − 1
        start = 1 if p == 0 else 0          # with no prompt, token 0 is never predicted
        lo, hi = p + start - 1, length - 1
        if hi > lo:
            mask[row, lo:hi] = torch.tensor(list(loss_masks[row])[start:], dtype=mask.dtype)
            if old_logprobs is not None:
                old[row, lo:hi] = torch.tensor(list(old_logprobs[row])[start:], dtype=old.dtype)
            if regions is not None:
                reg[row, lo:hi] = torch.tensor([int(r) for r in regions[row]][start:], dtype=torch.long)
    shown = None if images is None or not any(images) else tuple(tuple(row) for row in images)
    return TokenBatch(input_ids=input_ids, attention_mask=attention, loss_mask=mask, old_logprobs=old, regions=reg,
                      images=shown)


def length_chunks(lengths: Tensor | Sequence[int], size: int) -> list[list[int]]:
    """Row indices sorted by length, in chunks of ``size``: micro-batches of similar length, each
    padded only to its own longest row (a training step sums their gradients)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1 (got {size})")
    order = sorted(range(len(lengths)), key=lambda i: (int(lengths[i]), i))
    return [order[i:i + size] for i in range(0, len(order), size)]


def collate_trajectories(trajectories: Sequence[RolloutTrajectory], *, pad_token_id: int) -> TokenBatch:
    """``collate`` for rollout trajectories (checks each one's alignment first)."""
    for traj in trajectories:
        traj.check_aligned()
    return collate(
        [t.prompt_ids for t in trajectories],
        [t.token_ids for t in trajectories],
        [t.loss_mask for t in trajectories],
        pad_token_id=pad_token_id,
        old_logprobs=[t.old_logprobs for t in trajectories],
        regions=[t.regions for t in trajectories],
        images=[t.context_images for t in trajectories],
    )


def batch_logprobs(
    policy: HFPolicy,
    batch: TokenBatch,
    *,
    temperature: float = 1.0,
    with_grad: bool = False,
    compute_entropy: bool = True,
    positions: Tensor | None = None,
    shared_prefix: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``policy.forward_logprobs`` of the batch's rows, with their images when they show any.

    Raises:
        ValueError: the batch shows images and the policy is not a ``VLMPolicy``.
    """
    if batch.images is None:
        return policy.forward_logprobs(batch.input_ids, batch.attention_mask, temperature=temperature,
                                       with_grad=with_grad, compute_entropy=compute_entropy, positions=positions,
                                       shared_prefix=shared_prefix)
    if not isinstance(policy, VLMPolicy):
        raise ValueError(f"the batch shows {sum(map(len, batch.images))} image(s) to a text policy "
                         f"({type(policy).__name__}); train image trajectories with a vision policy")
    return policy.forward_logprobs(batch.input_ids, batch.attention_mask, temperature=temperature,
                                   with_grad=with_grad, compute_entropy=compute_entropy, positions=positions,
                                   shared_prefix=shared_prefix, images=batch.images)
