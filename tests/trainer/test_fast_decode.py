"""FastDecoder against the transformers forward it replaces in ``HFPolicy.generate``: the same logits
at the prefill and at every decoding step (left padding, rows leaving the batch), for Qwen2 (q/k/v
biases) and Llama, and the same greedy generations."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from trainer.model.build import build_config, build_model
from trainer.policy.base import SamplingParams
from trainer.policy.fast_decode import FastDecoder
from trainer.policy.hf import HFPolicy, _positions

VOCAB = 300


def _model(arch: str) -> Any:
    model = build_model(build_config(arch, "tiny", VOCAB, pad_token_id=0, eos_token_id=2), seed=1)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():         # initial weights are near zero (uniform logits); make the layers matter
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def _batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (4, 11), generator=gen)
    mask = torch.ones(4, 11, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :10] = 0              # a one-token prompt
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_logits_match_transformers_at_every_step(arch: str) -> None:
    model = _model(arch)
    gen = torch.Generator().manual_seed(0)
    ids, mask = _batch(gen)
    decoder = FastDecoder(model)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True)
        fast = decoder.prefill(ids, mask, capacity=ids.shape[1] + 12)
        assert ref.logits[:, -1].abs().max() > 1.0                       # not a near-uniform model
        torch.testing.assert_close(fast, ref.logits[:, -1], atol=1e-4, rtol=1e-4)
        cache, position = ref.past_key_values, _positions(mask)[:, -1:] + 1
        for step in range(10):
            tokens = torch.randint(3, VOCAB, (mask.shape[0],), generator=gen)
            if step == 5:                                                # row 1 finished: it leaves the batch
                rows = torch.tensor([0, 2, 3])
                cache.batch_select_indices(rows)
                mask, position, tokens = mask[rows], position[rows], tokens[rows]
                decoder.select(rows)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            ref = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=position,
                        past_key_values=cache, use_cache=True)
            cache, position = ref.past_key_values, position + 1
            torch.testing.assert_close(decoder.step(tokens), ref.logits[:, -1], atol=1e-4, rtol=1e-4)
        with pytest.raises(RuntimeError, match="cache is full"):
            for _ in range(3):
                decoder.step(tokens)


def test_generate_is_the_same_with_and_without_the_fast_decoder() -> None:
    model = _model("qwen2")
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=2)
    fast, slow = HFPolicy(model=model, tokenizer=tokenizer), HFPolicy(model=model, tokenizer=tokenizer,
                                                                       fast_decode=False)
    assert fast.fast_decode and not slow.fast_decode
    prompts = [[5, 6, 7, 8, 9], [10], [11, 12, 13]]
    params = SamplingParams(temperature=0.0, max_new_tokens=16, stop_token_ids=(2, 40, 41, 42))
    a, b = fast.generate(prompts, params), slow.generate(prompts, params)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert len({len(g.token_ids) for g in a}) > 1 or all(len(g.token_ids) == 16 for g in a)
    for x, y in zip(a, b, strict=True):
        assert x.finish_reason == y.finish_reason
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4, rtol=1e-4)


def test_the_decoder_reads_the_weights_of_each_generation() -> None:
    model = _model("qwen2")
    policy = HFPolicy(model=model, tokenizer=SimpleNamespace(pad_token_id=0, eos_token_id=2))
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    before = policy.generate([[5, 6, 7]], params)[0]
    with torch.no_grad():                   # an optimizer step changes the parameters in place
        for p in model.parameters():
            p.mul_(-1.0)
    after = policy.generate([[5, 6, 7]], params)[0]
    expected = HFPolicy(model=model, tokenizer=policy.tokenizer, fast_decode=False).generate([[5, 6, 7]], params)[0]
    assert after.token_ids == expected.token_ids and after.logprobs != before.logprobs


def test_other_models_keep_the_transformers_path() -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    assert "architecture 'gpt2'" in FastDecoder.unsupported(gpt2)
    assert not HFPolicy(model=gpt2, tokenizer=SimpleNamespace(pad_token_id=0, eos_token_id=1)).fast_decode
    windowed = build_config("qwen2", "tiny", VOCAB, pad_token_id=0, eos_token_id=2)
    windowed.use_sliding_window = True
    assert FastDecoder.unsupported(SimpleNamespace(config=windowed)) == "sliding-window attention"
    with pytest.raises(ValueError, match="cannot run this model"):
        FastDecoder(gpt2)


def _full(model: Any, tokens: torch.Tensor, room: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One row's last logits and keys/values from a prefill of all of ``tokens``."""
    decoder = FastDecoder(model)
    logits = decoder.prefill(tokens[None], torch.ones(1, len(tokens), dtype=torch.long), len(tokens) + room)
    return logits[0], decoder.export(0)


def _continued(model: Any, past: torch.Tensor | None, new: torch.Tensor) -> tuple[torch.Tensor, FastDecoder]:
    decoder = FastDecoder(model)
    logits = decoder.prefill_after([past], new[None], torch.ones(1, len(new), dtype=torch.long), room=4)
    return logits[0], decoder


# In float64, so that rounding (~1e-14 here; ~1e-5 on logits of ~10 in float32) is far below the tolerance
# and anything wrong in the cache (a position, a slot, a mask) is far above it.
EXACT = {"atol": 1e-5, "rtol": 0.0}


def _model64(arch: str) -> Any:
    return _model(arch).double()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_a_continued_prefill_equals_a_full_prefill_at_every_position(arch: str) -> None:
    model = _model64(arch)
    tokens = torch.randint(3, VOCAB, (11,), generator=torch.Generator().manual_seed(3))
    full = [_full(model, tokens[:end]) for end in range(1, len(tokens) + 1)]     # full[e - 1]: tokens[:e]
    for split in range(1, len(tokens)):
        _, past = full[split - 1]
        assert past.shape == (6, 2, 2, split, 32)                 # layers, k/v, kv heads, tokens, head dim
        # one new token (the logits of every position) and all the rest (every position's keys and values)
        for end in sorted({split + 1, len(tokens)}):
            logits, decoder = _continued(model, past, tokens[split:end])
            torch.testing.assert_close(logits, full[end - 1][0], **EXACT)
            torch.testing.assert_close(decoder.export(0), full[end - 1][1], **EXACT)
            assert int(decoder.position[0]) == end                # the next token's rotary position continues


def test_rows_with_different_cached_lengths_decode_as_one_full_batch() -> None:
    model = _model64("qwen2")
    gen = torch.Generator().manual_seed(4)
    shape = [(0, 5), (3, 4), (7, 9), (12, 1)]                       # (cached tokens, new tokens) per row
    seqs = [torch.randint(3, VOCAB, (a + b,), generator=gen) for a, b in shape]
    past = [_full(model, s[:a])[1] if a else None for (a, _), s in zip(shape, seqs, strict=True)]
    n = max(b for _, b in shape)
    ids, mask = torch.zeros(4, n, dtype=torch.long), torch.zeros(4, n, dtype=torch.long)
    for row, ((a, b), s) in enumerate(zip(shape, seqs, strict=True)):
        ids[row, n - b:], mask[row, n - b:] = s[a:], 1
    width = max(len(s) for s in seqs)                               # the reference: a full left-padded prefill
    full_ids, full_mask = torch.zeros(4, width, dtype=torch.long), torch.zeros(4, width, dtype=torch.long)
    for row, s in enumerate(seqs):
        full_ids[row, width - len(s):], full_mask[row, width - len(s):] = s, 1
    decoder, reference = FastDecoder(model), FastDecoder(model)
    torch.testing.assert_close(decoder.prefill_after(past, ids, mask, room=8),
                               reference.prefill(full_ids, full_mask, capacity=width + 8), **EXACT)
    for step in range(8):
        tokens = torch.randint(3, VOCAB, (decoder.position.shape[0],), generator=gen)
        if step == 3:                                               # rows 1 and 3 finished: they leave the batch
            rows = torch.tensor([0, 2])
            decoder.select(rows)
            reference.select(rows)
            tokens = tokens[rows]
        torch.testing.assert_close(decoder.step(tokens), reference.step(tokens), **EXACT)
    torch.testing.assert_close(decoder.export(1), reference.export(1), **EXACT)
    assert decoder.export(1).shape[3] == len(seqs[2]) + 8          # the prompt and every token fed since


def test_a_continued_prefill_refuses_rows_without_new_tokens() -> None:
    model = _model("qwen2")
    _, past = _full(model, torch.tensor([5, 6, 7]))
    with pytest.raises(ValueError, match="at least one new token"):
        FastDecoder(model).prefill_after([past, None], torch.tensor([[0, 9], [0, 0]]),
                                         torch.tensor([[0, 1], [0, 0]]), room=2)
