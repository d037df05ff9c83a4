"""HFPolicy on a tiny random Qwen2: exact log-probs, stops, batching, gradients."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainer.policy import Generation, HFPolicy, SamplingParams

PROMPTS = ["select name from singer", "how many", "Let me count the concert stadium where age are 3"]


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path) -> HFPolicy:
    return HFPolicy(tiny_model_dir)


@pytest.fixture(scope="module")
def prompts(policy: HFPolicy) -> list[list[int]]:
    return [policy.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]


def greedy(max_new_tokens: int, **kwargs: object) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, **kwargs)  # type: ignore[arg-type]


def rescore(policy: HFPolicy, prompt: list[int], gen: Generation, temperature: float = 1.0) -> torch.Tensor:
    """Log-probs of the generated tokens, recomputed in one forward pass over prompt + generation."""
    logprobs, _ = policy.forward_logprobs(torch.tensor([prompt + gen.token_ids]), temperature=temperature)
    return logprobs[0, len(prompt) - 1:]


def test_one_generation_per_prompt_in_order_with_aligned_logprobs(policy: HFPolicy,
                                                                   prompts: list[list[int]]) -> None:
    # the BatchGenerator contract: the batch's rows come back in order, each as if generated alone
    params = greedy(8)
    batch = policy.generate(prompts, params)
    alone = [policy.generate([p], params)[0] for p in reversed(prompts)][::-1]
    assert len(batch) == len(prompts)
    for got, want in zip(batch, alone, strict=True):
        assert got.token_ids == want.token_ids
        assert len(got.logprobs) == len(got.token_ids) == len(got.raw_logprobs)
        assert got.finish_reason in ("stop", "length")
        assert (got.finish_reason == "stop") == (got.stop_reason is not None)


def test_sampled_logprobs_match_a_forward_pass(policy: HFPolicy, prompts: list[list[int]]) -> None:
    gens = policy.generate(prompts, SamplingParams(max_new_tokens=16, temperature=1.0, seed=3))
    for prompt, gen in zip(prompts, gens, strict=True):
        assert len(gen.token_ids) == len(gen.logprobs) == len(gen.raw_logprobs) == 16
        assert torch.allclose(rescore(policy, prompt, gen), torch.tensor(gen.logprobs), atol=1e-4)
        assert gen.logprobs == gen.raw_logprobs


def test_logprobs_at_a_temperature_and_raw(policy: HFPolicy, prompts: list[list[int]]) -> None:
    gen = policy.generate(prompts[:1], SamplingParams(max_new_tokens=12, temperature=0.7, seed=5))[0]
    assert torch.allclose(rescore(policy, prompts[0], gen, 0.7), torch.tensor(gen.logprobs), atol=1e-4)
    assert torch.allclose(rescore(policy, prompts[0], gen, 1.0), torch.tensor(gen.raw_logprobs), atol=1e-4)


def test_seed_makes_sampling_reproducible(policy: HFPolicy, prompts: list[list[int]]) -> None:
    a = policy.generate(prompts, SamplingParams(max_new_tokens=10, seed=11))
    b = policy.generate(prompts, SamplingParams(max_new_tokens=10, seed=11))
    c = policy.generate(prompts, SamplingParams(max_new_tokens=10, seed=12))
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]


def test_tiny_top_p_is_greedy(policy: HFPolicy, prompts: list[list[int]]) -> None:
    nucleus = policy.generate(prompts, SamplingParams(max_new_tokens=10, top_p=1e-6, seed=1))
    assert [g.token_ids for g in nucleus] == [g.token_ids for g in policy.generate(prompts, greedy(10))]


def test_max_new_tokens_ends_with_length(policy: HFPolicy, prompts: list[list[int]]) -> None:
    for gen in policy.generate(prompts, greedy(5)):
        assert len(gen.token_ids) == 5
        assert (gen.finish_reason, gen.stop_reason) == ("length", None)


def test_stop_token_is_kept_and_ends_with_stop(policy: HFPolicy, prompts: list[list[int]]) -> None:
    reference = policy.generate(prompts[:1], greedy(12))[0].token_ids
    stop = reference[4]
    first = reference.index(stop)
    gen = policy.generate(prompts[:1], greedy(12, stop_token_ids=[stop]))[0]
    assert gen.token_ids == reference[: first + 1]
    assert (gen.finish_reason, gen.stop_reason) == ("stop", stop)


def test_stop_string_ends_on_the_token_that_completes_it(policy: HFPolicy, prompts: list[list[int]]) -> None:
    tok = policy.tokenizer
    reference = policy.generate(prompts[:1], greedy(16))[0].token_ids
    stop = next(
        text for k in range(3, 16) if (text := tok.decode([reference[k]], skip_special_tokens=False).strip())
        and "\ufffd" not in text
    )
    expected = next(j for j in range(16) if stop in tok.decode(reference[: j + 1], skip_special_tokens=False))
    gen = policy.generate(prompts[:1], greedy(16, stop_strings=[stop]))[0]
    assert gen.token_ids == reference[: expected + 1]
    assert (gen.finish_reason, gen.stop_reason) == ("stop", stop)


def test_batched_greedy_equals_one_at_a_time(policy: HFPolicy, prompts: list[list[int]]) -> None:
    # A stop token met by the first row only: rows of one batch finish at different steps.
    stop = policy.generate(prompts[:1], greedy(8))[0].token_ids[3]
    params = greedy(20, stop_token_ids=[stop])
    batched = policy.generate(prompts, params)
    single = [policy.generate([p], params)[0] for p in prompts]
    assert len({len(p) for p in prompts}) == 3  # three different prompt lengths
    assert batched[0].finish_reason == "stop"
    for b, s in zip(batched, single, strict=True):
        assert b.token_ids == s.token_ids
        assert b.finish_reason == s.finish_reason
        assert torch.allclose(torch.tensor(b.logprobs), torch.tensor(s.logprobs), atol=1e-4)


def test_left_padded_scoring_equals_unpadded(policy: HFPolicy, prompts: list[list[int]]) -> None:
    short, long = prompts[1], prompts[2]
    pad = len(long) - len(short)
    ids = torch.tensor([[policy.pad_token_id] * pad + short, long])
    mask = torch.tensor([[0] * pad + [1] * len(short), [1] * len(long)])
    logprobs, entropy = policy.forward_logprobs(ids, mask)
    alone, alone_entropy = policy.forward_logprobs(torch.tensor([short]))
    assert entropy is not None and alone_entropy is not None
    assert torch.allclose(logprobs[0, pad:], alone[0], atol=1e-4)
    assert torch.allclose(entropy[0, pad:], alone_entropy[0], atol=1e-4)
    assert torch.all(logprobs[0, :pad] == 0)


def test_entropy_is_between_zero_and_log_vocab(policy: HFPolicy, prompts: list[list[int]]) -> None:
    _, entropy = policy.forward_logprobs(torch.tensor([prompts[2]]))
    assert entropy is not None and entropy.shape == (1, len(prompts[2]) - 1)
    assert torch.all(entropy >= 0)
    assert torch.all(entropy <= math.log(policy.vocab_size) + 1e-4)


def test_gradients_flow_only_when_asked(policy: HFPolicy, prompts: list[list[int]]) -> None:
    ids = torch.tensor([prompts[2]])
    frozen, _ = policy.forward_logprobs(ids)
    assert not frozen.requires_grad
    policy.model.zero_grad()
    logprobs, entropy = policy.forward_logprobs(ids, with_grad=True)
    assert entropy is not None
    (-logprobs.sum() - 0.01 * entropy.sum()).backward()
    grads = [p.grad for p in policy.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    policy.model.zero_grad()


def test_bad_arguments_are_refused(policy: HFPolicy) -> None:
    with pytest.raises(ValueError, match="greedy"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="at least one token"):
        policy.generate([[]], greedy(2))
    assert policy.generate([], greedy(2)) == []


def test_rows_leaving_the_batch_keep_exact_logprobs(policy: HFPolicy, prompts: list[list[int]]) -> None:
    """Finished rows leave the decoding batch (with their KV-cache rows); the rows still going
    must keep sampling from exactly their own distribution."""
    many = prompts * 4                                       # 12 rows of 3 prompt lengths
    first = policy.generate(many, SamplingParams(max_new_tokens=24, temperature=1.0, seed=11))
    stop = first[0].token_ids[2]                             # a token some rows meet early
    gens = policy.generate(many, SamplingParams(max_new_tokens=24, temperature=1.0, seed=11, stop_token_ids=[stop]))
    lengths = {len(g.token_ids) for g in gens}
    assert len(lengths) > 1 and min(lengths) < 24            # rows did finish at different steps
    for prompt, gen in zip(many, gens, strict=True):
        assert torch.allclose(rescore(policy, prompt, gen), torch.tensor(gen.logprobs), atol=1e-4)
        assert (gen.finish_reason == "stop") == (gen.token_ids[-1] == stop)


def test_scoring_only_wanted_positions_gives_the_same_values_and_gradients(
    policy: HFPolicy, prompts: list[list[int]]
) -> None:
    """``positions`` (a loss mask) runs the output layer on those positions only: the log-probs,
    entropies and parameter gradients there equal the full pass's; every other position holds 0."""
    short, long = prompts[1], prompts[2]
    pad = len(long) - len(short)
    ids = torch.tensor([short + [policy.pad_token_id] * pad, long])     # right padding, as SFT and GRPO batch
    mask = torch.tensor([[1] * len(short) + [0] * pad, [1] * len(long)])
    wanted = torch.zeros(2, len(long) - 1)
    wanted[0, 1:len(short) - 1] = 1
    wanted[1, 3:] = 1
    wanted[0, -1] = 1                                                   # a padding position: stays 0
    grads = []
    for positions in (None, wanted):
        policy.model.zero_grad()
        logprobs, entropy = policy.forward_logprobs(ids, mask, temperature=0.7, with_grad=True, positions=positions)
        assert entropy is not None
        kept = wanted.bool() & (mask[:, 1:] * mask[:, :-1]).bool()
        (-(logprobs * kept).sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.model.parameters() if p.grad is not None]))
        if positions is None:
            full_lp, full_ent = logprobs.detach(), entropy
        else:
            assert torch.allclose(logprobs[kept], full_lp[kept], atol=1e-5)
            assert torch.allclose(entropy[kept], full_ent[kept], atol=1e-5)
            assert torch.all(logprobs[~kept] == 0) and torch.all(entropy[~kept] == 0)
    policy.model.zero_grad()
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match=r"\[B, T-1\]"):
        policy.forward_logprobs(ids, mask, positions=torch.ones(2, len(long)))
