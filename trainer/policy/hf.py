"""Hugging Face policy backend: batched sampling with a KV cache and exact per-token log-probs.

A manual decoding loop instead of ``model.generate``: it returns exactly the sampled ids, the
log-probs of the distribution they were drawn from, and stops on token ids or strings per row.
Qwen2 and Llama checkpoints decode through ``FastDecoder`` (the same logits without transformers'
per-token overhead; ``fast_decode=False`` keeps the transformers forward); scoring and training
always use the transformers model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trainer.policy.base import Generation, SamplingParams
from trainer.policy.fast_decode import FastDecoder
from trainer.policy.prefix_cache import PrefixCache
from trainer.policy.shared_prefix import shared_prefix_hidden

logger = logging.getLogger(__name__)


class HFPolicy:
    """A causal LM from transformers as a ``PolicyBackend``.

    Build it from a checkpoint directory (``HFPolicy(path)``) or from a loaded model and
    tokenizer (``HFPolicy(model=..., tokenizer=...)``). ``self.model`` is the trainable module.
    ``dtype``: float32 when loading unless given; a passed-in model keeps its dtype unless given.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        attn_implementation: str | None = None,
        fast_decode: bool = True,
    ) -> None:
        if model_dir is not None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
            if attn_implementation is not None:
                kwargs["attn_implementation"] = attn_implementation
            model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_dir)
        elif model is None or tokenizer is None:
            raise ValueError("HFPolicy needs a model_dir, or both model= and tokenizer=")
        self.device = torch.device(device)
        self.model = model.to(device=self.device) if dtype is None else model.to(device=self.device, dtype=dtype)
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id: int = int(pad) if pad is not None else 0
        # Qwen2/Llama decode through FastDecoder (one per generate call: its cache is that call's state)
        self.fast_decode: bool = fast_decode and not FastDecoder.unsupported(self.model)

    # the GRPO update may compute rows' shared prompt once (``forward_logprobs(shared_prefix=True)``)
    supports_shared_prefix = True

    def with_model(self, model: Any) -> HFPolicy:
        """A policy of the same kind over ``model`` (e.g. a frozen copy), with this one's tokenizer."""
        return HFPolicy(model=model, tokenizer=self.tokenizer, device=self.device)

    def save_pretrained(self, out: str | Path) -> None:
        """Write a checkpoint folder that loads like any (``save_pretrained`` of the model and tokenizer)."""
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)

    @property
    def vocab_size(self) -> int:
        """Width of the output layer (may exceed ``len(tokenizer)``)."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    # ------------------------------------------------------------------ sampling
    @property
    def supports_prefix_cache(self) -> bool:
        """Whether ``generate`` can keep and reuse keys and values (``cache=``): FastDecoder models."""
        return self.fast_decode

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams, *, cache: PrefixCache | None = None,
                 cache_keys: Sequence[str | None] | None = None) -> list[Generation]:
        """Sample one continuation per prompt; rows are left-padded into one batch.

        With a ``cache`` and ``cache_keys`` (one per row; None: that row keeps nothing) on a model that
        ``supports_prefix_cache``: a row reuses its key's entry for the common prefix of its prompt,
        identical prompts of the batch are run once, and each keyed row stores its tokens' keys and
        values when it ends. The same logits as without, to float rounding.
        """
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (start it with the chat template)")
        if cache_keys is not None and len(cache_keys) != len(prompts):
            raise ValueError(f"{len(cache_keys)} cache keys for {len(prompts)} prompts")
        keys = list(cache_keys) if cache is not None and cache_keys is not None and self.fast_decode else []
        if any(k is not None for k in keys):
            assert cache is not None
            return self._generate(prompts, params, _Keep(cache, keys, cache.epoch))
        return self._generate(prompts, params, None)

    def _generate(self, prompts: list[list[int]], params: SamplingParams, kept: _Keep | None) -> list[Generation]:
        batch = len(prompts)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt):] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        position_ids = _positions(attention_mask)

        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()

        stop_ids = set(params.stop_token_ids)
        # A stop string of n bytes spans at most n tokens (every token has at least one byte),
        # so decoding the last n + 1 tokens is enough to see it appear.
        window = max((len(s.encode()) for s in params.stop_strings), default=0) + 1
        outputs = [Generation(token_ids=[], logprobs=[], raw_logprobs=[]) for _ in prompts]
        done = [False] * batch

        was_training = self.model.training
        self.model.eval()
        decoder = FastDecoder(self.model) if self.fast_decode else None
        try:
            out: Any = None
            if decoder is not None and kept is not None:
                last = kept.prefill(decoder, prompts, params.max_new_tokens, self.device)
            elif decoder is not None:
                last = decoder.prefill(input_ids, attention_mask, capacity=width + params.max_new_tokens)
            else:
                out = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True
                )
                last = out.logits[:, -1, :]
            next_position = position_ids[:, -1:] + 1
            active = list(range(batch))          # prompt index of each row still in the batch
            for step in range(params.max_new_tokens):
                tokens = self._take_step(_sample(last.float(), params, generator), active, outputs, done,
                                         stop_ids, params, window)
                if all(done) or step + 1 == params.max_new_tokens:
                    break
                # Finished rows leave the batch (their KV cache rows too), so a turn's long tail
                # decodes only the rows still going.
                keep = [pos for pos, row in enumerate(active) if not done[row]]
                if len(keep) < len(active):
                    index = torch.tensor(keep, device=self.device)
                    if decoder is not None and kept is not None:
                        kept.store(decoder, [(pos, row) for pos, row in enumerate(active) if done[row]],
                                   prompts, outputs)
                    if decoder is not None:
                        decoder.select(index)
                    else:
                        out.past_key_values.batch_select_indices(index)
                        attention_mask, next_position = attention_mask[index], next_position[index]
                    tokens = [tokens[pos] for pos in keep]
                    active = [active[pos] for pos in keep]
                if decoder is not None:
                    last = decoder.step(torch.tensor(tokens, device=self.device))
                    continue
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
                out = self.model(
                    input_ids=torch.tensor(tokens, device=self.device).unsqueeze(1),
                    attention_mask=attention_mask,
                    position_ids=next_position,
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )
                last = out.logits[:, -1, :]
                next_position = next_position + 1
            if decoder is not None and kept is not None:
                kept.store(decoder, list(enumerate(active)), prompts, outputs)
        finally:
            self.model.train(was_training)
        return outputs

    def _take_step(self, sampled: tuple[list[int], list[float], list[float]], active: list[int],
                   outputs: list[Generation], done: list[bool], stop_ids: set[int], params: SamplingParams,
                   window: int) -> list[int]:
        """Append one decoding step's samples (tokens, log-probs, raw log-probs; one per active row)
        to their rows' generations and mark the rows that stopped; the tokens."""
        tokens, logprobs, raw_logprobs = sampled
        for pos, (tok, lp, raw) in enumerate(zip(tokens, logprobs, raw_logprobs, strict=True)):
            row = active[pos]
            gen = outputs[row]
            gen.token_ids.append(tok)
            gen.logprobs.append(lp)
            gen.raw_logprobs.append(raw)
            reason = self._stop_reason(gen.token_ids, stop_ids, params.stop_strings, window)
            if reason is not None:
                gen.finish_reason, gen.stop_reason, done[row] = "stop", reason, True
        return tokens

    def _stop_reason(
        self, token_ids: list[int], stop_ids: set[int], stop_strings: Sequence[str], window: int
    ) -> int | str | None:
        """The stop token id or string that the newest token completes, if any."""
        if token_ids[-1] in stop_ids:
            return token_ids[-1]
        if stop_strings:
            tail = self.tokenizer.decode(
                token_ids[-window:], skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
            for stop in stop_strings:
                if stop in tail:
                    return stop
        return None

    # ------------------------------------------------------------------ scoring
    def forward_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        with_grad: bool = False,
        compute_entropy: bool = True,
        positions: torch.Tensor | None = None,
        shared_prefix: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs of the next tokens and the policy's entropy at each position, [B, T-1] each.

        Position t scores ``input_ids[:, t+1]``; positions where either token is padding hold 0.
        ``temperature`` must match the one used for sampling for the ratio to be exact.
        ``positions`` ([B, T-1], nonzero where wanted; e.g. a loss mask): only those positions go
        through the output layer and the softmax, the rest hold 0 too. Same values where computed;
        a training step whose loss reads a few of the positions (SFT and GRPO read the assistant's
        tokens, not the schema prompt and observations) skips most of the vocabulary-wide work.
        """
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: score at a positive temperature (1.0 for greedy rollouts)")
        input_ids = input_ids.to(self.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(self.device)
        valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).bool()
        if positions is not None:
            if positions.shape != valid.shape:
                raise ValueError(f"positions has shape {tuple(positions.shape)}; expected {tuple(valid.shape)} "
                                 "(one per predicted position: [B, T-1])")
            valid = valid & positions.to(self.device).bool()
        elif shared_prefix:
            raise ValueError("shared_prefix needs positions: the prefix is what precedes a row's first wanted one")
        grad_mode: AbstractContextManager[Any] = torch.enable_grad() if with_grad else torch.no_grad()
        with grad_mode:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask,
                      "position_ids": _positions(attention_mask), "use_cache": False}
            targets = input_ids[:, 1:]
            if positions is None:
                logits = self.model(**kwargs).logits[:, :-1].float()
            else:   # the decoder's hidden states, then the output layer on the wanted positions only
                if shared_prefix:
                    hidden = shared_prefix_hidden(self.model.get_decoder(), input_ids, attention_mask, valid)
                else:
                    hidden = self.model.get_decoder()(**kwargs).last_hidden_state[:, :-1][valid]
                logits = self.model.get_output_embeddings()(hidden).float()
                targets = targets[valid]
            logprobs, entropy = scored_logprobs(logits, targets, valid, temperature=temperature,
                                                compute_entropy=compute_entropy, picked_only=positions is not None)
        return logprobs, entropy


@dataclass
class _Keep:
    """One cached ``generate`` call: the cache, each row's key, the cache epoch it started in."""

    cache: PrefixCache
    keys: list[str | None]
    epoch: int

    def prefill(self, decoder: FastDecoder, prompts: list[list[int]], room: int, device: torch.device) -> torch.Tensor:
        """Each distinct prompt once, after the longest entry of its rows; then one cache row per prompt."""
        distinct: dict[tuple[int, ...], int] = {}
        source = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]   # row -> distinct prompt
        firsts = {u: row for row, u in reversed(list(enumerate(source)))}
        unique = [prompts[firsts[u]] for u in range(len(distinct))]
        past: list[torch.Tensor | None] = [None] * len(unique)
        for row, key in enumerate(self.keys):
            if key is None:
                continue
            kv = self.cache.take(key, prompts[row])       # taken out: the row stores its new entry at its end
            best = past[source[row]]
            if kv is not None and (best is None or kv.shape[3] > best.shape[3]):
                past[source[row]] = kv
        reused = [0 if kv is None else kv.shape[3] for kv in past]
        new = [p[n:] for p, n in zip(unique, reused, strict=True)]
        width = max(len(t) for t in new)
        input_ids = torch.zeros((len(new), width), dtype=torch.long)
        attention_mask = torch.zeros((len(new), width), dtype=torch.long)
        for u, tokens in enumerate(new):
            input_ids[u, width - len(tokens):] = torch.tensor(tokens, dtype=torch.long)
            attention_mask[u, width - len(tokens):] = 1
        last = decoder.prefill_after(past, input_ids.to(device), attention_mask.to(device), room)
        stats = self.cache.stats
        stats.prompt_tokens += sum(len(p) for p in prompts)
        stats.reused += sum(reused)
        stats.shared += sum(len(p) for p in prompts) - sum(len(p) for p in unique)
        if len(unique) < len(prompts):                    # copy each shared prompt's cache to its rows
            index = torch.tensor(source, device=last.device)
            decoder.select(index)
            last = last.index_select(0, index)
        return last

    def store(self, decoder: FastDecoder, rows: list[tuple[int, int]], prompts: list[list[int]],
              outputs: list[Generation]) -> None:
        """Store the entries of ``rows`` ((position in the decoder's batch, prompt index) pairs)."""
        for pos, row in rows:
            key = self.keys[row]
            if key is None:
                continue
            kv = decoder.export(pos)
            tokens = prompts[row] + outputs[row].token_ids
            if kv.shape[3] > len(tokens):
                raise RuntimeError(f"the decoder holds {kv.shape[3]} positions for a row of {len(tokens)} tokens")
            self.cache.put(key, tokens[: kv.shape[3]], kv, self.epoch)


def scored_logprobs(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, *, temperature: float,
                    compute_entropy: bool, picked_only: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``targets`` and the entropy under ``logits / temperature``, [B, T-1] with 0 where
    not ``valid``. ``picked_only``: ``logits`` and ``targets`` hold the valid positions only ([N, V], [N])."""
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    picked = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if compute_entropy:      # a measurement: no gradient flows through it
        lp = logp_all.detach()
        entropy = -(lp.exp() * lp).sum(-1)
    if not picked_only:
        logprobs = picked.masked_fill(~valid, 0.0)
        if entropy is not None:
            entropy = entropy.masked_fill(~valid, 0.0)
        return logprobs, entropy
    logprobs = torch.zeros(valid.shape, dtype=picked.dtype, device=picked.device).masked_scatter(valid, picked)
    if entropy is not None:
        entropy = torch.zeros(valid.shape, dtype=entropy.dtype, device=entropy.device).masked_scatter(valid, entropy)
    return logprobs, entropy


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _sample(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> tuple[list[int], list[float], list[float]]:
    """Draw one token per row; return the tokens, their log-probs at T, and at temperature 1."""
    raw = F.log_softmax(logits, dim=-1)
    if params.temperature == 0.0:
        tokens = logits.argmax(dim=-1)
        scaled = raw
    else:
        scaled = raw if params.temperature == 1.0 else F.log_softmax(logits / params.temperature, dim=-1)
        probs = scaled.exp()
        if params.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least the first token).
            drop = (sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            picked = torch.multinomial(sorted_probs, 1, generator=generator)
            tokens = order.gather(-1, picked).squeeze(-1)
        else:
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    index = tokens.unsqueeze(-1)
    return tokens.tolist(), scaled.gather(-1, index).squeeze(-1).tolist(), raw.gather(-1, index).squeeze(-1).tolist()
