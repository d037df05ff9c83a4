"""Keys and values kept between a trajectory's turns: the cache's own rules (reuse only a common
prefix, least recently stored out past the token cap, nothing stored across a clear), and
``HFPolicy.generate`` with a cache giving the generations it gives without one, on the tiny policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.policy import HFPolicy, PrefixCache, SamplingParams
from trainer.policy.prefix_cache import common_prefix


def _kv(n: int, fill: float = 1.0) -> torch.Tensor:
    return torch.full((2, 2, 1, n, 4), fill)          # layers, k/v, kv heads, tokens, head dim


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix([1, 2, 3, 4], [1, 2, 3]) == 3
    assert common_prefix([1, 2, 9, 4, 5], [1, 2, 3, 4, 5]) == 2
    assert common_prefix([7] * 100 + [1], [7] * 100 + [2]) == 100
    assert common_prefix([5], [6]) == 0
    assert common_prefix([], [1]) == 0


def test_take_reuses_the_common_prefix_less_one_token_and_removes_the_entry() -> None:
    cache = PrefixCache(100)
    kv = torch.arange(6.0).reshape(1, 1, 1, 6, 1)
    assert cache.put("t", [1, 2, 3, 4, 5, 6], kv, cache.epoch)
    got = cache.take("t", [1, 2, 3, 4, 5, 6, 7, 8])            # the usual case: the prompt goes on
    assert got is not None and got.flatten().tolist() == [0, 1, 2, 3, 4, 5]
    assert "t" not in cache and cache.tokens == 0
    cache.put("t", [1, 2, 3, 4, 5, 6], kv, cache.epoch)
    got = cache.take("t", [1, 2, 3, 4, 5, 6])                  # the same prompt: its last token is run again
    assert got is not None and got.shape[3] == 5
    cache.put("t", [1, 2, 3, 4, 5, 6], kv, cache.epoch)
    got = cache.take("t", [1, 2, 3, 9, 9, 9, 9])               # a prompt that left the cached path
    assert got is not None and got.flatten().tolist() == [0, 1, 2]
    cache.put("t", [1, 2, 3, 4, 5, 6], kv, cache.epoch)
    assert cache.take("t", [9, 2, 3, 4, 5, 6, 7]) is None      # no common prefix: a full prefill
    assert cache.take("t", [1, 2, 3]) is None and cache.take("other", [1, 2]) is None


def test_the_token_cap_evicts_the_least_recently_stored() -> None:
    cache = PrefixCache(10)
    for key in ("a", "b"):
        assert cache.put(key, [1, 2, 3, 4], _kv(4), cache.epoch)
    assert cache.take("a", [1, 2, 3, 4, 5]) is not None          # a is used again: b is now the oldest
    assert cache.put("a", [1, 2, 3, 4, 5], _kv(5), cache.epoch)
    assert cache.put("c", [1, 2, 3], _kv(3), cache.epoch)         # 4 + 5 + 3 > 10: b goes
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.tokens == 8 and cache.stats.evictions == 1
    assert cache.put("c", [1, 2, 3, 4, 5, 6], _kv(6), cache.epoch)   # replaces c: 5 + 6 > 10, a goes
    assert list(cache._entries) == ["c"] and cache.tokens == 6 and cache.stats.evictions == 2
    assert not cache.put("d", list(range(11)), _kv(11), cache.epoch)   # alone over the cap: not kept
    assert "d" not in cache and cache.tokens == 6
    with pytest.raises(ValueError, match="3 cached positions for 2 tokens"):
        cache.put("e", [1, 2], _kv(3), cache.epoch)


def test_clear_drops_everything_and_refuses_entries_computed_before_it() -> None:
    cache = PrefixCache(100)
    epoch = cache.epoch                                   # a generation starts
    cache.put("a", [1, 2], _kv(2), epoch)
    cache.clear()                                         # the weights change meanwhile
    assert len(cache) == 0 and cache.tokens == 0
    assert not cache.put("b", [1, 2], _kv(2), epoch)      # its entries were computed by the old weights
    assert cache.put("b", [1, 2], _kv(2), cache.epoch)
    cache.release("b")
    cache.release("never-stored")
    assert len(cache) == 0 and cache.tokens == 0


# ------------------------------------------------------------------ the policy with a cache
@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path) -> HFPolicy:
    return HFPolicy(tiny_model_dir)


def _encode(policy: HFPolicy, text: str) -> list[int]:
    return [int(t) for t in policy.tokenizer.encode(text, add_special_tokens=False)]


def _assert_same(cached: list, plain: list) -> None:   # type: ignore[type-arg]
    assert [g.token_ids for g in cached] == [g.token_ids for g in plain]
    assert [g.finish_reason for g in cached] == [g.finish_reason for g in plain]
    for a, b in zip(cached, plain, strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.tensor(a.raw_logprobs), torch.tensor(b.raw_logprobs), atol=1e-4, rtol=0)


def test_turn_after_turn_a_cached_generation_equals_a_full_one(policy: HFPolicy) -> None:
    question = _encode(policy, "<|im_start|>user\nhow many singers are there<|im_end|>\n<|im_start|>assistant\n")
    other = _encode(policy, "<|im_start|>user\nlist the pets<|im_end|>\n<|im_start|>assistant\n")
    contexts = [list(question), list(question), list(question), list(other)]   # a group of three, and one more
    keys = ["q/s0", "q/s1", "q/s2", "o/s0"]
    cache = PrefixCache()
    stop = tuple(_encode(policy, "<|im_end|>"))
    for turn in range(3):
        params = SamplingParams(max_new_tokens=10 + 4 * turn, temperature=1.0, stop_token_ids=stop, seed=turn)
        cached = policy.generate(contexts, params, cache=cache, cache_keys=keys)
        _assert_same(cached, policy.generate(contexts, params))
        if turn == 0:          # the group's prompt ran once and was copied to its other two rows
            assert cache.stats.shared == 2 * len(question) and cache.stats.reused == 0
        for row, gen in enumerate(cached):   # every row keeps what it fed: its prompt and all but its last token
            assert len(cache._entries[keys[row]].tokens) == len(contexts[row]) + len(gen.token_ids) - 1
        observations = [_encode(policy, f"<tool_response>\n{row * 'cat '}{turn}\n</tool_response>\n")
                        for row in range(4)]
        contexts = [c + g.token_ids + o for c, g, o in zip(contexts, cached, observations, strict=True)]
    stats = cache.stats
    assert stats.reused > stats.prefilled > 0           # later turns ran their new tokens only
    assert stats.prompt_tokens == stats.reused + stats.shared + stats.prefilled


def test_a_prompt_that_does_not_continue_its_entry_falls_back_to_a_full_prefill(policy: HFPolicy) -> None:
    cache = PrefixCache()
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=5)
    first = _encode(policy, "select name from singer")
    gen = policy.generate([first], params, cache=cache, cache_keys=["k"])[0]
    assert "k" in cache
    elsewhere = _encode(policy, "how many pets are older than 3")   # not a continuation of the entry
    assert common_prefix(elsewhere, first + gen.token_ids) == 0
    again = policy.generate([elsewhere], params, cache=cache, cache_keys=["k"])
    _assert_same(again, policy.generate([elsewhere], params))
    assert cache.stats.reused == 0
    # a prompt that shares only the start of the entry reuses that start, and nothing after it
    branch = elsewhere[:3] + _encode(policy, " count the singers")
    shared = common_prefix(branch, elsewhere + again[0].token_ids)
    assert 3 <= shared < len(elsewhere)
    _assert_same(policy.generate([branch], params, cache=cache, cache_keys=["k"]), policy.generate([branch], params))
    assert cache.stats.reused == shared
    # rows without a key keep nothing; a model without the fast decoder ignores the cache
    policy.generate([first], params, cache=cache, cache_keys=[None])
    slow = HFPolicy(model=policy.model, tokenizer=policy.tokenizer, fast_decode=False)
    assert not slow.supports_prefix_cache
    slow.generate([first], params, cache=cache, cache_keys=["other"])
    assert "other" not in cache
