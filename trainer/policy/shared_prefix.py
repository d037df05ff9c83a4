"""The shared-prefix forward (Prefix Grouper, arXiv 2506.05433): rows that begin with the same
tokens compute those tokens once.

A GRPO batch holds G samples of each prompt, and the prompt (a system message, often with a schema
or tool schemas) is a large share of every row. Each row is split at its first wanted position f
(the first position whose hidden state the caller reads: for a loss mask, the last prompt token,
which predicts the first generated one). Rows whose tokens before f are identical share that
prefix, and each distinct prefix goes through the decoder once, its keys and values kept in a
``DynamicCache``; the rows' suffixes, tokens [f, end), then run as one batch against their
prefix's cached keys and values (cache rows gathered by index), position ids continuing at f. Each
suffix token attends to exactly the keys it attends to in the full row, so the hidden states are
the same up to float rounding. The prefix's keys and values are computed with the graph kept, so
the gather's backward sums the G suffixes' gradients into the one prefix computation, as the
plain forward's G copies of the prefix would be summed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["PrefixSplit", "shared_prefix_hidden", "split_rows"]


@dataclass(frozen=True)
class PrefixSplit:
    """Where each scored row splits into a shared prefix and its own suffix."""

    rows: torch.Tensor         # [R] the rows with a wanted position, in order
    start: torch.Tensor        # [R] each row's first real column (0 under right padding)
    first: torch.Tensor        # [R] its first wanted column: the prefix is [start, first)
    end: torch.Tensor          # [R] one past its last real column
    prefix_of_row: torch.Tensor  # [R] index of the row's prefix in ``prefixes``
    prefixes: list[list[int]]  # the distinct prefixes' token ids

    @property
    def shared_tokens(self) -> int:
        """Prefix tokens computed once instead of once per row."""
        lengths = (self.first - self.start).tolist()
        return int(sum(lengths)) - sum(len(p) for p in self.prefixes)


def split_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, wanted: torch.Tensor) -> PrefixSplit:
    """Group the rows with a wanted position by the tokens before their first one.

    Args:
        input_ids: [B, T] token ids.
        attention_mask: [B, T], each row's real tokens one contiguous run (either padding side).
        wanted: [B, T-1] bool, the positions whose hidden states are read (within the real tokens).

    Raises:
        ValueError: a row's real tokens are not contiguous.
    """
    real = attention_mask.bool()
    rows = torch.nonzero(wanted.any(dim=1)).flatten()
    start = real[rows].int().argmax(dim=1)
    end = start + real[rows].sum(dim=1)
    if not torch.equal(real[rows].sum(dim=1), _run_lengths(real[rows], start, end)):
        raise ValueError("shared-prefix forward: each row's real tokens must be one contiguous run")
    first = wanted[rows].int().argmax(dim=1)
    keys: dict[tuple[int, ...], int] = {}
    prefix_of_row = []
    for row, lo, hi in zip(rows.tolist(), start.tolist(), first.tolist(), strict=True):
        prefix_of_row.append(keys.setdefault(tuple(input_ids[row, lo:hi].tolist()), len(keys)))
    return PrefixSplit(rows=rows, start=start, first=first, end=end,
                       prefix_of_row=torch.tensor(prefix_of_row, dtype=torch.long),
                       prefixes=[list(key) for key in keys])


def _run_lengths(real: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Real tokens of each row inside [start, end): equal to its count iff the run is contiguous."""
    cols = torch.arange(real.shape[1], device=real.device)
    inside = (cols >= start[:, None]) & (cols < end[:, None])
    return (real & inside).sum(dim=1)


def shared_prefix_hidden(decoder: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         wanted: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden states at the wanted positions, [N, H] in the order of
    ``hidden[wanted]`` (row by row), with each distinct prefix computed once.

    Args:
        decoder: a transformers decoder (``model.get_decoder()``) that takes ``past_key_values``,
            ``position_ids`` and a 2-D attention mask; full attention in every layer.
        input_ids: [B, T] token ids.
        attention_mask: [B, T], each row's real tokens one contiguous run.
        wanted: [B, T-1] bool, positions inside the real tokens (position t reads token t's state).

    Raises:
        ValueError: the decoder has sliding-window layers (a window could drop prefix keys that the
            full row still attends to), or a row's real tokens are not contiguous.
    """
    from transformers import DynamicCache

    config = decoder.config
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or []):
        raise ValueError("the shared-prefix forward needs full attention in every layer; this model has "
                         "sliding-window layers: set algorithm.shared_prefix: false")
    device = input_ids.device
    wanted = wanted.to(device).bool()
    split = split_rows(input_ids, attention_mask.to(device), wanted)
    if len(split.rows) == 0:
        return torch.zeros((0, config.hidden_size), dtype=decoder.dtype, device=device)
    prefix_of_row = split.prefix_of_row.to(device)
    prefix_len = [len(p) for p in split.prefixes]
    width = max(prefix_len)
    prefix_mask = (torch.arange(width, device=device)[None, :]
                   < torch.tensor(prefix_len, device=device)[:, None]).long()
    cache = None
    if width:
        # the non-empty prefixes, right-padded: a pad never precedes a real token, so no real query
        # attends to one and no query attends to nothing (an all-pad row would give NaN keys); the
        # suffixes' mask hides the pads, and a row with an empty prefix hides all of its cache row
        computed = [k for k, n in enumerate(prefix_len) if n]
        prefix_ids = torch.zeros((len(computed), width), dtype=torch.long, device=device)
        for i, k in enumerate(computed):
            prefix_ids[i, : prefix_len[k]] = torch.tensor(split.prefixes[k], dtype=torch.long)
        cache = DynamicCache(config=config)
        decoder(input_ids=prefix_ids, attention_mask=prefix_mask[computed],
                position_ids=torch.arange(width, device=device).expand(len(computed), -1),
                past_key_values=cache, use_cache=True)
        slot = torch.zeros(len(prefix_len), dtype=torch.long, device=device)
        slot[computed] = torch.arange(len(computed), device=device)
        cache.batch_select_indices(slot[prefix_of_row])      # one cache row per suffix: a differentiable gather
    suffix_len = split.end - split.first
    cols = torch.arange(int(suffix_len.max()), device=device)
    in_suffix = cols[None, :] < suffix_len[:, None]
    source = torch.where(in_suffix, split.first[:, None] + cols[None, :], 0)
    suffix_ids = torch.where(in_suffix, input_ids[split.rows[:, None], source], 0)
    mask = torch.cat([prefix_mask[prefix_of_row], in_suffix.long()], dim=1)
    # the plain forward numbers a row's tokens from its first real one: the suffix continues there
    positions = (split.first - split.start)[:, None] + cols[None, :]
    hidden = decoder(input_ids=suffix_ids, attention_mask=mask, position_ids=positions,
                     past_key_values=cache, use_cache=cache is not None).last_hidden_state
    # wanted (row, t) → suffix row, column t − first; nonzero() is row-major, as hidden[wanted] is
    where, t = torch.nonzero(wanted[split.rows], as_tuple=True)
    return hidden[where, t - split.first[where]]
