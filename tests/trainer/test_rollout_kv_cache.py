"""Rollouts with the KV cache kept across turns equal rollouts without it: the real ``RolloutEngine``
over a real SQL tool server (127.0.0.1, port 0) and the real ``HFPolicy.generate`` of the tiny Qwen2.

The tiny random policy never calls a tool by itself. ``ScriptedStart`` makes it begin a turn with a
scripted text: while a row's script lasts, the token drawn is replaced by the script's and its
log-probs are read from the policy's own logits at that step (the cached forward's, when caching);
after the script the policy samples freely. So the tool calls are scripted, and every log-prob of
every turn, forced or sampled, is the policy's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import trainer.policy.hf as hf
from rlyard.client import ToolClient
from rlyard.domain import Task, TrajectoryStatus
from rlyard.server import RunningServer
from trainer.config import RolloutConfig
from trainer.policy.base import Generation, SamplingParams
from trainer.policy.hf import HFPolicy
from trainer.rollout import RolloutEngine
from trainer.sampler import LocalSampler
from trainer.types import RolloutTrajectory

END = "<|im_end|>"
_TAG = re.compile(r"\[task:(\w+)\]")


def sql_call(query: str) -> str:
    return f'<tool_call>{json.dumps({"name": "sql_query", "arguments": {"query": query}})}</tool_call>'


class ScriptedStart(HFPolicy):
    """The tiny policy, beginning turn t of the prompt tagged ``[task:tag]`` with ``scripts[tag][t]``
    (tokenized; none past the script's end)."""

    def __init__(self, policy: HFPolicy, scripts: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(model=policy.model, tokenizer=policy.tokenizer)
        self.scripts = scripts
        self.forced: list[list[int]] = []           # per row still in the batch: its script's tokens to come
        self.sample_fn = hf._sample
        monkeypatch.setattr(hf, "_sample", self._sample)

    def generate(self, prompts: list[list[int]], params: SamplingParams, **kwargs: Any) -> list[Generation]:
        self.forced = [self._script(p) for p in prompts]
        return super().generate(prompts, params, **kwargs)

    def _script(self, prompt: list[int]) -> list[int]:
        text = self.tokenizer.decode(prompt, skip_special_tokens=False)
        match = _TAG.search(text)
        assert match, "every scripted task tags its prompt with [task:name]"
        script = self.scripts[match.group(1)]
        turn = text.count("<|im_start|>assistant") - 1
        return self.tokenizer.encode(script[turn], add_special_tokens=False) if turn < len(script) else []

    def _sample(self, logits: torch.Tensor, params: SamplingParams,
                generator: torch.Generator) -> tuple[list[int], list[float], list[float]]:
        tokens, logprobs, raw_logprobs = self.sample_fn(logits, params, generator)   # the draws happen either way
        raw = F.log_softmax(logits, dim=-1)
        scaled = raw if params.temperature in (0.0, 1.0) else F.log_softmax(logits / params.temperature, dim=-1)
        for row, script in enumerate(self.forced):
            if script:
                tok = script.pop(0)
                tokens[row], logprobs[row], raw_logprobs[row] = tok, scaled[row, tok].item(), raw[row, tok].item()
        # the rows that ended their turn leave the batch, as in HFPolicy.generate
        self.forced = [s for s, tok in zip(self.forced, tokens, strict=True) if tok not in params.stop_token_ids]
        return tokens, logprobs, raw_logprobs


def task(tag: str, db_id: str) -> Task:
    return Task(task_id=tag, context={"db_id": db_id}, messages=[
        {"role": "system", "content": "Answer with the tools."},
        {"role": "user", "content": f"[task:{tag}] How many singers are there?"},
    ])


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> HFPolicy:
    return HFPolicy(tiny_model_dir)


@pytest.fixture
async def client(start_tools: Callable[..., Any], make_client: Callable[..., ToolClient]) -> ToolClient:
    server: RunningServer = await start_tools()
    return make_client(server, timeout=5.0)


async def rollouts(policy: HFPolicy, client: ToolClient, tasks: list[Task], *, kv_cache: bool,
                   max_batch_size: int | None, group_size: int) -> tuple[list[RolloutTrajectory], LocalSampler]:
    sampler = LocalSampler(policy, max_batch_size=max_batch_size)
    cfg = RolloutConfig(group_size=group_size, prompts_per_step=len(tasks), max_turns=4, max_new_tokens_per_turn=32,
                        max_total_tokens=700, max_observation_tokens=80, kv_cache=kv_cache)
    engine = RolloutEngine(sampler, policy.tokenizer, client, cfg, seed=11)
    try:
        return await engine.run(tasks, step=2), sampler
    finally:
        await engine.aclose()
        await sampler.aclose()


def assert_same_trajectories(cached: list[RolloutTrajectory], plain: list[RolloutTrajectory],
                             policy: HFPolicy) -> None:
    assert [t.status for t in cached] == [t.status for t in plain]
    assert [t.token_ids for t in cached] == [t.token_ids for t in plain]
    assert [t.loss_mask for t in cached] == [t.loss_mask for t in plain]
    for a, b in zip(cached, plain, strict=True):
        torch.testing.assert_close(torch.tensor(a.old_logprobs), torch.tensor(b.old_logprobs), atol=1e-4, rtol=0)
        # and both are the log-probs of one forward pass over the whole trajectory
        full = torch.tensor([a.prompt_ids + a.token_ids])
        scores, _ = policy.forward_logprobs(full, compute_entropy=False)
        n = len(a.prompt_ids)
        for i, m in enumerate(a.loss_mask):
            if m:
                assert abs(scores[0, n + i - 1].item() - a.old_logprobs[i]) < 1e-4


def observations(traj: RolloutTrajectory) -> list[int]:
    """The length of each run of observation tokens (loss mask 0)."""
    lengths, run = [], 0
    for m in [*traj.loss_mask, 1]:
        if m == 0:
            run += 1
        elif run:
            lengths.append(run)
            run = 0
    return lengths


SCRIPTS = {  # per task: a call, another call (another observation length), then an answer sampled freely
    "singers": [sql_call("SELECT count(*) FROM singer") + END, sql_call("SELECT name FROM singer") + END,
                "<answer>"],
    "pets": [sql_call("SELECT count(*) FROM singer") + END, sql_call("SELECT * FROM pets") + END, "<answer>"],
}


async def test_one_row_at_a_time_the_cached_rollout_is_the_plain_one(
    tiny: HFPolicy, client: ToolClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = ScriptedStart(tiny, SCRIPTS, monkeypatch)
    tasks = [task("singers", "concert_singer"), task("pets", "pets_1")]
    plain, _ = await rollouts(policy, client, tasks, kv_cache=False, max_batch_size=1, group_size=2)
    cached, sampler = await rollouts(policy, client, tasks, kv_cache=True, max_batch_size=1, group_size=2)
    assert_same_trajectories(cached, plain, policy)
    for traj in cached:
        assert traj.num_tool_calls == 2 and len(traj.record.assistant_turns) == 3
    assert {t.record.turns[3].tool_results[0].is_error for t in cached} == {False, True}   # no singer in pets_1
    stats = sampler.prefill_stats
    # a later turn ran only its new tokens: the last token sampled before it (not fed yet) and the
    # observation with its template; one row per call: nothing shared
    assert stats.prefilled == sum(len(t.prompt_ids) + sum(1 + n for n in observations(t)) for t in cached)
    assert stats.reused == stats.prompt_tokens - stats.prefilled > 0 and stats.shared == 0
    assert sampler.cache is not None and len(sampler.cache) == 0    # every trajectory released its entry


async def test_batched_rollouts_with_shared_prompts_and_mixed_cached_lengths(
    tiny: HFPolicy, client: ToolClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # whole turns scripted, so that how the rows meet in batches (tool timing) does not change the samples
    scripts = {tag: [*turns[:2], "<answer>6</answer>" + END] for tag, turns in SCRIPTS.items()}
    policy = ScriptedStart(tiny, scripts, monkeypatch)
    tasks = [task("singers", "concert_singer"), task("pets", "pets_1")]
    plain, _ = await rollouts(policy, client, tasks, kv_cache=False, max_batch_size=None, group_size=3)
    cached, sampler = await rollouts(policy, client, tasks, kv_cache=True, max_batch_size=None, group_size=3)
    assert_same_trajectories(cached, plain, policy)
    assert all(t.status is TrajectoryStatus.COMPLETED and t.final_answer == "6" for t in cached)
    stats = sampler.prefill_stats
    # the six first turns met in one batch: each task's prompt ran once for its three samples (and, all
    # turns being scripted, a group's samples stay identical: their later prompts are shared too)
    assert stats.shared >= sum(2 * len(t.prompt_ids) for t in cached[::3])
    # later turns prefill only their new tokens, shared or not depending on how the tool results
    # arrive: at most each group's prompt once plus every row's own new tokens
    most = sum(len(t.prompt_ids) for t in cached[::3]) + sum(sum(1 + n for n in observations(t)) for t in cached)
    assert stats.reused > 0 and stats.prefilled <= most < stats.prompt_tokens // 2
    assert sampler.stats[0] < sampler.stats[1]                      # rows did meet in batches
