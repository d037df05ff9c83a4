"""Multi-turn rollouts through the sampler service: the real ``RolloutEngine`` over a real SQL tool
server and a real sampler service (both 127.0.0.1, port 0) serving the tiny Qwen2, whose turns
begin with scripted tool calls (as in ``test_rollout_kv_cache.py``: the scripted tokens are forced,
their log-probs are the policy's own). The trainer publishes a new weight version while the
trajectories run: with a window of two versions each trajectory finishes on the version it began
with; with a window of one, its next turn is refused and it ends INFRA_FAILED, never mixing."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import trainer.policy.hf as hf
from rlyard.client import ToolClient
from rlyard.domain import Task, TrajectoryStatus
from rlyard.server import RunningServer, start_server
from rlyard.settings import ServerSettings
from trainer.config import RolloutConfig
from trainer.policy.base import Generation, SamplingParams
from trainer.policy.hf import HFPolicy
from trainer.rollout import RolloutEngine
from trainer.sampler import LocalSampler, SampleRequest
from trainer.sampler.remote import RemoteSampler
from trainer.sampler.service import sampler_service
from trainer.sampler.serving import SamplerHost
from trainer.sampler.settings import SamplerSettings
from trainer.types import RolloutTrajectory

END = "<|im_end|>"
_TAG = re.compile(r"\[task:(\w+)\]")


def sql_call(query: str) -> str:
    return f'<tool_call>{json.dumps({"name": "sql_query", "arguments": {"query": query}})}</tool_call>'


SCRIPTS = {"singers": [sql_call("SELECT count(*) FROM singer") + END, sql_call("SELECT name FROM singer") + END,
                       "<answer>6</answer>" + END]}


class ScriptedStart(HFPolicy):
    """The tiny policy, beginning turn t of the prompt tagged ``[task:tag]`` with ``scripts[tag][t]``
    (only in its own ``generate``: another policy sampling on another thread samples freely)."""

    def __init__(self, policy: HFPolicy, scripts: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(model=policy.model, tokenizer=policy.tokenizer)
        self.scripts = scripts
        self.forced: list[list[int]] = []
        self.thread = 0
        self.sample_fn = hf._sample
        monkeypatch.setattr(hf, "_sample", self._sample)

    def generate(self, prompts: list[list[int]], params: SamplingParams, **kwargs: Any) -> list[Generation]:
        self.forced = [self._script(p) for p in prompts]
        self.thread = threading.get_ident()
        return super().generate(prompts, params, **kwargs)

    def _script(self, prompt: list[int]) -> list[int]:
        text = self.tokenizer.decode(prompt, skip_special_tokens=False)
        match = _TAG.search(text)
        script = self.scripts[match.group(1)] if match else []
        turn = text.count("<|im_start|>assistant") - 1
        return self.tokenizer.encode(script[turn], add_special_tokens=False) if turn < len(script) else []

    def _sample(self, logits: torch.Tensor, params: SamplingParams,
                generator: torch.Generator) -> tuple[list[int], list[float], list[float]]:
        tokens, logprobs, raw_logprobs = self.sample_fn(logits, params, generator)
        if threading.get_ident() != self.thread:
            return tokens, logprobs, raw_logprobs
        raw = F.log_softmax(logits, dim=-1)
        scaled = raw if params.temperature in (0.0, 1.0) else F.log_softmax(logits / params.temperature, dim=-1)
        for row, script in enumerate(self.forced):
            if script:
                tok = script.pop(0)
                tokens[row], logprobs[row], raw_logprobs[row] = tok, scaled[row, tok].item(), raw[row, tok].item()
        self.forced = [s for s, tok in zip(self.forced, tokens, strict=True) if tok not in params.stop_token_ids]
        return tokens, logprobs, raw_logprobs


class PublishingDuringRollout(RemoteSampler):
    """A remote sampler whose trainer publishes ``model`` as version 1 as soon as the first turn of
    any trajectory is answered (before that answer reaches the engine)."""

    def __init__(self, target: str, model: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.model = model
        self.published = False
        self.synced = asyncio.Event()

    async def sample(self, request: SampleRequest) -> Generation:
        gen = await super().sample(request)
        if not self.published:
            self.published = True
            await self.sync_weights(self.model, 1)
            self.synced.set()
        await self.synced.wait()    # every first answer reaches the engine after version 1 is served
        return gen


def task(tag: str, db_id: str) -> Task:
    return Task(task_id=tag, context={"db_id": db_id}, messages=[
        {"role": "system", "content": "Answer with the tools."},
        {"role": "user", "content": f"[task:{tag}] How many singers are there?"},
    ])


CONFIG = RolloutConfig(group_size=2, prompts_per_step=1, max_turns=4, max_new_tokens_per_turn=32,
                       max_total_tokens=700, max_observation_tokens=80)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> HFPolicy:
    return HFPolicy(tiny_model_dir)


@pytest.fixture
async def client(start_tools: Callable[..., Any], make_client: Callable[..., ToolClient]) -> ToolClient:
    server: RunningServer = await start_tools()
    return make_client(server, timeout=5.0)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    running: list[RunningServer] = []

    async def start(host: SamplerHost) -> RunningServer:
        server = await start_server(sampler_service(SamplerSettings(), host=host), ServerSettings(port=0))
        running.append(server)
        await server.wait_ready(30)
        return server

    yield start
    for server in running:
        await server.stop(0)


async def run(sampler: Any, policy: HFPolicy, client: ToolClient) -> list[RolloutTrajectory]:
    engine = RolloutEngine(sampler, policy.tokenizer, client, CONFIG, seed=11)
    try:
        return await engine.run([task("singers", "concert_singer")], step=1)
    finally:
        await engine.aclose()


def perturbed(policy: HFPolicy) -> torch.nn.Module:
    model = copy.deepcopy(policy.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return model


async def test_remote_rollouts_equal_local_ones_and_finish_on_the_version_they_began_with(
    tiny: HFPolicy, client: ToolClient, serve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    policy = ScriptedStart(tiny, SCRIPTS, monkeypatch)
    local = LocalSampler(policy)
    try:
        want = await run(local, policy, client)
    finally:
        await local.aclose()

    root = tmp_path / "weights"
    server = await serve(SamplerHost(policy, weights_root=root, keep_versions=2, poll_s=0.05))
    remote = PublishingDuringRollout(server.address, perturbed(tiny), weights_root=root)
    try:
        got = await run(remote, policy, client)
        assert remote.published and remote.weight_version == 1
        assert [t.status for t in got] == [TrajectoryStatus.COMPLETED] * 2
        assert [t.token_ids for t in got] == [t.token_ids for t in want]
        for a, b in zip(got, want, strict=True):
            assert len(a.record.assistant_turns) == 3 and a.num_tool_calls == 2
            torch.testing.assert_close(torch.tensor(a.old_logprobs), torch.tensor(b.old_logprobs), atol=1e-4, rtol=0)
            # (to 1e-4: rows meet in other batches, so other paddings and cached lengths)
            # begun on version 0, finished on it, after version 1 was served
            assert a.weight_versions == {0} and a.record.metadata["weight_versions"] == "0"
        # a trajectory begun now samples with version 1 throughout
        later = await run(remote, policy, client)
        assert all(t.weight_versions == {1} for t in later)
    finally:
        await remote.aclose()


async def test_a_version_dropped_mid_trajectory_fails_it_instead_of_mixing(
    tiny: HFPolicy, client: ToolClient, serve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    policy = ScriptedStart(tiny, SCRIPTS, monkeypatch)
    root = tmp_path / "weights"
    server = await serve(SamplerHost(policy, weights_root=root, keep_versions=1, poll_s=0.05))
    remote = PublishingDuringRollout(server.address, perturbed(tiny), weights_root=root)
    try:
        got = await run(remote, policy, client)
        for t in got:
            assert t.status is TrajectoryStatus.INFRA_FAILED and t.weight_versions == {0}
            assert "sampler: WeightVersionUnavailable" in t.infra_error and "weight version 0" in t.infra_error
            assert len(t.record.assistant_turns) == 1      # the first turn only: nothing of version 1
    finally:
        await remote.aclose()
