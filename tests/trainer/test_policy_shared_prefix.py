"""The shared-prefix forward on the tiny policy: the plain forward's log-probs, entropies and
parameter gradients, with each distinct prefix computed once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from trainer.batching import collate
from trainer.policy import HFPolicy
from trainer.policy.shared_prefix import shared_prefix_hidden, split_rows

# log-probs reach |15| on the tiny random policy: 1e-5 absolute plus 1e-5 of the value is float
# rounding (the plain forward itself moves by 1e-5 between batchings of the same rows)
TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path) -> HFPolicy:
    return HFPolicy(tiny_model_dir)


def _tokens(policy: HFPolicy, text: str) -> list[int]:
    return list(policy.tokenizer.encode(text, add_special_tokens=False))


def _rows(policy: HFPolicy) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Two groups with prompts of different lengths and continuations of different lengths, a row
    whose prompt differs from its group's, a row with nothing to score and a one-token prompt."""
    short = _tokens(policy, "how many singer are there")
    long = _tokens(policy, "list the name of every concert stadium where the capacity is above 3000")
    other = _tokens(policy, "how many singer are older than 30")
    answers = ["select count(*) from singer", "select name", "select name from stadium where capacity > 3000 "
               "order by name desc", "x", "select count(*) from singer where age > 30 and country = 'France'"]
    prompts = [short, short, short, long, long, other, long, short[:1]]
    conts = [_tokens(policy, answers[i % len(answers)]) for i in range(len(prompts))]
    masks = [[1] * len(c) for c in conts]
    masks[2][2:5] = [0, 0, 0]                      # an observation inside a continuation
    masks[6] = [0] * len(conts[6])                 # a row the loss does not read
    return prompts, conts, masks


def _plain_and_shared(policy: HFPolicy, temperature: float = 0.7) -> dict[str, list[torch.Tensor]]:
    prompts, conts, masks = _rows(policy)
    batch = collate(prompts, conts, masks, pad_token_id=policy.pad_token_id)
    weights = torch.linspace(-1.0, 2.0, batch.loss_mask.numel()).reshape(batch.loss_mask.shape)
    out: dict[str, list[torch.Tensor]] = {"logp": [], "entropy": [], "grad": []}
    for shared in (False, True):
        policy.model.zero_grad(set_to_none=True)
        logp, ent = policy.forward_logprobs(batch.input_ids, batch.attention_mask, temperature=temperature,
                                            with_grad=True, positions=batch.loss_mask, shared_prefix=shared)
        assert ent is not None
        (logp * weights).sum().backward()
        out["logp"].append(logp.detach())
        out["entropy"].append(ent)
        out["grad"].append(torch.cat([p.grad.flatten() for p in policy.model.parameters() if p.grad is not None]))
    policy.model.zero_grad(set_to_none=True)
    return out


def test_shared_prefix_gives_the_plain_logprobs_entropies_and_gradients(policy: HFPolicy) -> None:
    out = _plain_and_shared(policy)
    (plain_lp, shared_lp), (plain_ent, shared_ent), (plain_grad, shared_grad) = out["logp"], out["entropy"], out["grad"]
    assert (plain_lp != 0).sum() > 40 and torch.equal(plain_lp == 0, shared_lp == 0)
    assert torch.allclose(shared_lp, plain_lp, **TOL)
    assert torch.allclose(shared_ent, plain_ent, **TOL)
    # the gradient through the prefix counts every suffix that reads it: 2e-6 of the norm measured
    assert float((shared_grad - plain_grad).norm() / plain_grad.norm()) < 1e-5


def test_each_distinct_prefix_is_computed_once(policy: HFPolicy) -> None:
    """The decoder embeds the distinct prefixes in one call and the suffixes in another."""
    prompts, conts, masks = _rows(policy)
    batch = collate(prompts, conts, masks, pad_token_id=policy.pad_token_id)
    valid = batch.loss_mask.bool()
    split = split_rows(batch.input_ids, batch.attention_mask, valid)
    # rows 0-2 share `short`, rows 3-4 `long` (row 6 has nothing to score), row 5 its own prompt,
    # row 7 an empty prefix (its first token is scored): the prefix ends before the first scored token
    assert split.rows.tolist() == [0, 1, 2, 3, 4, 5, 7]
    assert split.prefix_of_row.tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert [len(p) for p in split.prefixes] == [len(prompts[0]) - 1, len(prompts[3]) - 1, len(prompts[5]) - 1, 0]
    assert split.shared_tokens == 2 * (len(prompts[0]) - 1) + (len(prompts[3]) - 1)
    shapes: list[tuple[int, ...]] = []
    decoder = policy.model.get_decoder()
    handle = decoder.embed_tokens.register_forward_hook(lambda _m, args, _out: shapes.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            hidden = shared_prefix_hidden(decoder, batch.input_ids, batch.attention_mask, valid)
    finally:
        handle.remove()
    suffix_width = 1 + max(len(c) for row, c in enumerate(conts) if row != 6)    # from the last prompt token
    assert shapes == [(3, len(prompts[3]) - 1), (7, suffix_width)]
    assert hidden.shape == (int(valid.sum()), decoder.config.hidden_size)


class _MisnumberedSuffix:
    """A decoder whose suffix forward numbers its tokens from 0: what a wrong position offset gives."""

    def __init__(self, decoder: Any) -> None:
        self.decoder, self.config, self.dtype = decoder, decoder.config, decoder.dtype

    def __call__(self, **kwargs: Any) -> Any:
        if kwargs["position_ids"].shape[0] > 3:        # the suffixes' call (7 rows), not the prefixes' (3)
            kwargs["position_ids"] = kwargs["position_ids"] - kwargs["position_ids"][:, :1]
        return self.decoder(**kwargs)


def test_the_comparison_catches_a_wrong_suffix_position(policy: HFPolicy) -> None:
    """The tolerance above is far below what a mistake costs: suffixes numbered from 0."""
    prompts, conts, masks = _rows(policy)
    batch = collate(prompts, conts, masks, pad_token_id=policy.pad_token_id)
    valid = batch.loss_mask.bool()
    decoder = policy.model.get_decoder()
    with torch.no_grad():
        right = shared_prefix_hidden(decoder, batch.input_ids, batch.attention_mask, valid)
        plain = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state[:, :-1][valid]
        wrong = shared_prefix_hidden(_MisnumberedSuffix(decoder), batch.input_ids, batch.attention_mask, valid)
    assert torch.allclose(right, plain, atol=1e-4)
    assert float((wrong - plain).abs().max()) > 0.1


def test_shared_prefix_needs_positions_and_full_attention(policy: HFPolicy) -> None:
    ids = torch.tensor([[3, 4, 5, 6]])
    with pytest.raises(ValueError, match="needs positions"):
        policy.forward_logprobs(ids, shared_prefix=True)
    config = Qwen2Config(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True, sliding_window=2,
                         max_window_layers=1)
    model = Qwen2ForCausalLM(config)
    with pytest.raises(ValueError, match="sliding-window"):
        shared_prefix_hidden(model.get_decoder(), ids, torch.ones_like(ids), torch.ones(1, 3, dtype=torch.bool))
