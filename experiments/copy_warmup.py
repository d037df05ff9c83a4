"""A copying warm-up for a freshly built tiny policy: it forms induction heads.

Why: a text-to-SQL agent writes the question's values into its query and repeats its checked
query in the answer. Both are copying, which a transformer does with induction heads (attend to
the token after the earlier occurrence of the current token). A policy of ~1M parameters trained
from scratch on a few hundred demonstrations does not form them within minutes: it learns the SQL
templates but emits memorised names.

Each sequence: a window of tokens, ``<|im_end|>``, then a random sub-window of it; the loss is
on the repeated sub-window after its first token (which cannot be known). Window lengths and
positions vary, so no fixed offset solves it. The windows are uniformly random ordinary tokens by
default (``random_share=1.0``): nothing in them is predictable from language, so only copying
lowers the loss, and the heads that form copy names never seen in training (windows of corpus
text, ``random_share=0``, are mostly learnt as language instead). The warm-up stops once the last
10 steps average a loss of ``target_loss``. The loss curve and what each choice did to held-out
accuracy: docs/envs.md ("Values quoted as SQL literals, and a copying warm-up").
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


def copy_batch(ids: list[int], rng: random.Random, batch_size: int, sep: int, pad: int,
               window: tuple[int, int] = (48, 128), span: tuple[int, int] = (8, 48),
               random_share: float = 0.0, random_ids: tuple[int, int] = (3, 2040),
               random_window: tuple[int, int] = (16, 48)) -> tuple[torch.Tensor, ...]:
    """``(input_ids, attention_mask, loss_mask)`` of one batch of copy sequences from corpus ids;
    a ``random_share`` of the rows use ``random_window`` uniformly random ids in ``random_ids``
    instead of corpus text (nothing to predict from language there: only copying lowers their
    loss), repeating a third of the window or more."""
    rows: list[tuple[list[int], list[int]]] = []
    for _ in range(batch_size):
        if rng.random() < random_share:
            n = rng.randint(*random_window)
            text = [rng.randrange(*random_ids) for _ in range(n)]
            k = rng.randint(max(4, n // 3), n)
        else:
            n = rng.randint(*window)
            start = rng.randrange(0, len(ids) - n)
            text = ids[start:start + n]
            k = rng.randint(span[0], min(span[1], n))
        s = rng.randrange(0, n - k + 1)
        seq = [*text, sep, *text[s:s + k]]
        mask = [0] * (n + 2) + [1] * (k - 1)
        rows.append((seq, mask))
    width = max(len(r[0]) for r in rows)
    input_ids = torch.full((batch_size, width), pad, dtype=torch.long)
    attention = torch.zeros((batch_size, width), dtype=torch.long)
    loss_mask = torch.zeros((batch_size, width), dtype=torch.float32)
    for i, (seq, mask) in enumerate(rows):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        loss_mask[i, : len(mask)] = torch.tensor(mask, dtype=torch.float32)
    return input_ids, attention, loss_mask


# Rows a forward pass of the warm-up takes (``sft_step``'s micro-batches): 0.60 s a step against 0.97 s
# for one pass over the padded batch with the output layer everywhere (batch 64, 2 cores).
COPY_MICRO_ROWS = 16


def _chunks(text: str, size: int = 8192) -> list[str]:
    """``text`` in pieces of about ``size`` characters cut at line ends (a tokenizer warns about, and
    a model could not take, one sequence of the whole corpus; only the ids are needed here)."""
    out, start = [], 0
    while start < len(text):
        cut = text.find("\n", start + size)
        end = len(text) if cut < 0 else cut + 1
        out.append(text[start:end])
        start = end
    return out


def _ordinary_range(tokenizer: Any) -> tuple[int, int]:
    """The ids between the leading special tokens and the first added token after them (rlyard's
    tokenizer: specials 0–2, BPE tokens, then the markers), as ``[lo, hi)``."""
    added = set(tokenizer.get_added_vocab().values())
    lo = 0
    while lo in added:
        lo += 1
    hi = min((i for i in added if i > lo), default=len(tokenizer))
    return lo, hi


def copy_warmup(model: Any, tokenizer: Any, corpus: str, *, steps: int = 600, batch_size: int = 64,
                lr: float = 2e-3, seed: int = 0, random_share: float = 1.0, target_loss: float | None = 0.15,
                on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``model`` in place on copy sequences for at most ``steps`` steps, ending early once the
    mean loss of the last 10 steps is at most ``target_loss`` (None: never early); returns the loss
    per step. Stop on the loss, not on greedy accuracy: right after the transition 98% of copied
    tokens are already right at a loss of ~0.7, and a policy stopped there copied unseen names
    after SFT far less often (1 of 70 held-out questions vs 7 of 70 at a loss of ~0.1)."""
    from trainer.batching import TokenBatch
    from trainer.policy.hf import HFPolicy
    from trainer.sft import sft_step

    ids = [i for chunk in _chunks(corpus) for i in tokenizer.encode(chunk, add_special_tokens=False)]
    if len(ids) < 256:
        raise ValueError(f"the corpus has {len(ids)} tokens; copy warm-up needs at least 256")
    sep = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rng = random.Random(seed)
    ordinary = _ordinary_range(tokenizer)
    policy = HFPolicy(model=model, tokenizer=tokenizer, fast_decode=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))
    model.train()
    losses: list[float] = []
    for step in range(steps):
        input_ids, attention, loss_mask = copy_batch(ids, rng, batch_size, sep, pad, random_share=random_share,
                                                     random_ids=ordinary)
        # SFT's step on the copy rows: the masked NLL, length-sorted micro-batches each cut to its own
        # width and the output layer on the loss positions only (``trainer.sft.sft_step``; rows are
        # 18–97 tokens, 16 rows a pass), gradient clipping at 1, the optimizer and schedule steps
        batch = TokenBatch(input_ids=input_ids, attention_mask=attention, loss_mask=loss_mask[:, 1:],
                           old_logprobs=torch.zeros(loss_mask[:, 1:].shape),
                           regions=torch.zeros(loss_mask[:, 1:].shape, dtype=torch.long))
        losses.append(sft_step(policy, optimizer, batch, max_grad_norm=1.0, scheduler=scheduler,
                               micro_rows=COPY_MICRO_ROWS)["loss"])
        if on_step is not None:
            on_step(step + 1, losses[-1])
        if target_loss is not None and len(losses) >= 10 and sum(losses[-10:]) / 10 <= target_loss:
            logger.info("copy warm-up: mean loss %.3f after %d steps", sum(losses[-10:]) / 10, step + 1)
            break
    model.eval()
    return losses


def copy_warmup_checkpoint(path: Path, corpus: Path, **kwargs: Any) -> list[float]:
    """Warm up the checkpoint at ``path`` in place (its own tokenizer, ``corpus`` text)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    losses = copy_warmup(model, tokenizer, corpus.read_text(encoding="utf-8"), **kwargs)
    model.save_pretrained(path)
    logger.info("copy warm-up: loss %.3f -> %.3f over %d steps", losses[0], losses[-1], len(losses))
    return losses
