"""The keys and values of tokens a trajectory has already run through the policy, kept between its turns.

A multi-turn rollout sends its whole context every turn; what changed since the last turn is only
the end of it (the last sampled token, the observation and the chat template around it). An entry
holds, under the trajectory's key, the tokens whose keys and values were computed
(``FastDecoder.export``) and those keys and values. A new request of that key reuses them for the
longest common prefix of its prompt and the entry's tokens (keys and values at a position depend
only on the tokens up to it), less at least one token, whose logits start the turn. Entries are
only valid for the weights that computed them: ``clear`` (the sampler's ``sync_weights``) drops all
of them and refuses those that a generation still running would store. The total is capped in
tokens, least recently used first out; an evicted or missing entry only means a full prefill.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_MAX_TOKENS = 1 << 17


@dataclass(frozen=True)
class _Entry:
    tokens: tuple[int, ...]
    kv: torch.Tensor            # [layers, 2, kv heads, len(tokens), head_dim]


@dataclass
class PrefillStats:
    """Prompt tokens of the cached generations, and where their keys and values came from."""

    prompt_tokens: int = 0      # every row's prompt, summed
    reused: int = 0             # taken from the row's entry
    shared: int = 0             # computed once for identical prompts of one batch, copied to the others
    evictions: int = 0          # entries dropped by the token cap

    @property
    def prefilled(self) -> int:
        """Tokens that went through a forward pass."""
        return self.prompt_tokens - self.reused - self.shared


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):
        return n
    lo, hi = 0, n                      # a[:lo] == b[:lo] and a[:hi] != b[:hi]: bisect the first mismatch
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if list(a[lo:mid]) == list(b[lo:mid]):
            lo = mid
        else:
            hi = mid
    return lo


class PrefixCache:
    """Entries by key (one per trajectory), at most ``max_tokens`` tokens in all. Thread-safe: the
    sampler's worker thread takes and stores, the event loop releases and clears."""

    def __init__(self, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens}: must be >= 1 (a sampler without a cache takes none)")
        self.max_tokens = max_tokens
        self.stats = PrefillStats()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._tokens = 0
        self._epoch = 0
        self._lock = threading.Lock()

    @property
    def epoch(self) -> int:
        """Bumped by ``clear``: a generation stores its entries under the epoch it started in."""
        return self._epoch

    @property
    def tokens(self) -> int:
        """Tokens held now."""
        return self._tokens

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def take(self, key: str, prompt: Sequence[int]) -> torch.Tensor | None:
        """Remove ``key``'s entry and return the keys and values of its longest common prefix with
        ``prompt``, at most ``len(prompt) - 1`` tokens (None when nothing is reusable)."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return None
            self._tokens -= len(entry.tokens)
        n = min(common_prefix(entry.tokens, prompt), len(prompt) - 1)
        return entry.kv[:, :, :, :n] if n > 0 else None

    def put(self, key: str, tokens: Sequence[int], kv: torch.Tensor, epoch: int) -> bool:
        """Store ``key``'s tokens and their keys and values, unless ``epoch`` is stale or the entry
        alone exceeds the cap; evicts the least recently stored entries past the cap."""
        if kv.shape[3] != len(tokens):
            raise ValueError(f"{kv.shape[3]} cached positions for {len(tokens)} tokens")
        if not tokens or len(tokens) > self.max_tokens:
            return False
        with self._lock:
            if epoch != self._epoch:
                return False
            old = self._entries.pop(key, None)
            if old is not None:
                self._tokens -= len(old.tokens)
            self._entries[key] = _Entry(tuple(tokens), kv)
            self._tokens += len(tokens)
            while self._tokens > self.max_tokens:
                _, evicted = self._entries.popitem(last=False)
                self._tokens -= len(evicted.tokens)
                self.stats.evictions += 1
        return True

    def release(self, key: str) -> None:
        """Drop ``key``'s entry (its trajectory ended)."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._tokens -= len(entry.tokens)

    def clear(self) -> None:
        """Drop every entry: the weights changed, so every cached key and value did."""
        with self._lock:
            self._entries.clear()
            self._tokens = 0
            self._epoch += 1
