"""The sampler contract on the tiny policy: the local backend batches concurrent requests, stamps
each generation with the weight version, syncs weights from another module, refuses images."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pytest
import torch

from rlyard.domain import ImagePart
from trainer.policy import HFPolicy, PrefixCache, SamplingParams
from trainer.sampler import LocalSampler, Sampler, SampleRequest, build_sampler

GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0)


@pytest.fixture
def policy(tiny_model_dir: Path) -> HFPolicy:
    return HFPolicy(tiny_model_dir)


def _prompts(policy: HFPolicy) -> list[list[int]]:
    return [policy.tokenizer.encode(t, add_special_tokens=False) for t in ("select name", "how many", "count it")]


async def test_concurrent_requests_are_batched_and_stamped_with_the_weight_version(policy: HFPolicy) -> None:
    sampler = build_sampler("hf", policy)
    assert isinstance(sampler, LocalSampler) and isinstance(sampler, Sampler)
    try:
        prompts = _prompts(policy)
        gens = await asyncio.gather(*(sampler.sample(SampleRequest(p, GREEDY)) for p in prompts))
        assert sampler.stats == (1, 3)       # three requests of one tick: one generate call
        assert [g.token_ids for g in gens] == [g.token_ids for g in policy.generate(prompts, GREEDY)]
        assert {g.weight_version for g in gens} == {0}
        await sampler.sync_weights(policy.model, 7)      # its own module: only the version moves
        assert sampler.weight_version == 7
        assert (await sampler.sample(SampleRequest(prompts[0], GREEDY))).weight_version == 7
    finally:
        await sampler.aclose()


async def test_weights_of_another_module_are_copied_in(policy: HFPolicy) -> None:
    trained = copy.deepcopy(policy.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=generator))
    target = HFPolicy(model=trained, tokenizer=policy.tokenizer)
    prompt = _prompts(policy)[1]
    want = target.generate([prompt], GREEDY)[0].token_ids
    sampler = LocalSampler(policy)
    try:
        before = (await sampler.sample(SampleRequest(prompt, GREEDY))).token_ids
        assert before != want              # the perturbation changes the greedy continuation
        await sampler.sync_weights(trained, 1)
        after = await sampler.sample(SampleRequest(prompt, GREEDY))
        assert (after.token_ids, after.weight_version) == (want, 1)
    finally:
        await sampler.aclose()


async def test_a_text_sampler_refuses_images(policy: HFPolicy) -> None:
    sampler = LocalSampler(policy)
    image = ImagePart(b"\x89PNG....", "image/png", 4, 4, "img-1")
    try:
        assert not sampler.supports_images
        with pytest.raises(ValueError, match="takes no images; the request carries 1"):
            await sampler.sample(SampleRequest(_prompts(policy)[0], GREEDY, (image,)))
    finally:
        await sampler.aclose()


async def test_a_weight_sync_drops_the_kept_keys_and_values(policy: HFPolicy) -> None:
    sampler = LocalSampler(policy)
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=3)
    prompt = _prompts(policy)[0]
    try:
        first = await sampler.sample(SampleRequest(prompt, params, cache_key="t"))
        assert sampler.cache is not None and "t" in sampler.cache
        unsynced = PrefixCache()                 # what a sampler would keep if nothing dropped it
        policy.generate([prompt], params, cache=unsynced, cache_keys=["t"])
        context = prompt + first.token_ids + _prompts(policy)[1]          # the trajectory's next turn
        with torch.no_grad():                    # an optimizer step changes the weights in place
            for p in policy.model.parameters():
                p.mul_(1.5)
        fresh = policy.generate([context], params)[0]
        # without a sync the kept keys and values are the old weights': the log-probs differ
        stale = policy.generate([context], params, cache=unsynced, cache_keys=["t"])[0]
        assert max(abs(a - b) for a, b in zip(stale.logprobs, fresh.logprobs, strict=False)) > 1e-3
        await sampler.sync_weights(policy.model, 1)
        assert len(sampler.cache) == 0
        after = await sampler.sample(SampleRequest(context, params, cache_key="t"))
        assert after.token_ids == fresh.token_ids and after.weight_version == 1
        torch.testing.assert_close(torch.tensor(after.logprobs), torch.tensor(fresh.logprobs), atol=1e-4, rtol=0)
        sampler.release("t")
        assert len(sampler.cache) == 0 and sampler.cache.tokens == 0
        assert sampler.prefill_stats.prompt_tokens == len(prompt) + len(context)
    finally:
        await sampler.aclose()


async def test_without_a_key_or_with_caching_off_nothing_is_kept(policy: HFPolicy) -> None:
    on, off = LocalSampler(policy), LocalSampler(policy, cache_max_tokens=0)
    try:
        await on.sample(SampleRequest(_prompts(policy)[0], GREEDY))
        assert on.cache is not None and len(on.cache) == 0
        await off.sample(SampleRequest(_prompts(policy)[0], GREEDY, cache_key="t"))
        assert off.cache is None
        off.release("t")
        with pytest.raises(ValueError, match="cache_max_tokens=-1"):
            LocalSampler(policy, cache_max_tokens=-1)
    finally:
        await on.aclose()
        await off.aclose()
