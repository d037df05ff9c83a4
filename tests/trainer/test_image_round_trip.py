"""An image round-trips end to end: attached to a task's tool session, returned by a tool over the
batched stream, kept in the rollout's trajectory (the text policy reads a placeholder), sent to the
reward service (a reward of the test's own checks the bytes it received) and written beside the
run's samples."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from reward_service import registry as reward_registry
from reward_service.app import reward_service
from reward_service.registry import RewardContext
from reward_service.settings import RewardSettings
from reward_service.types import RewardInputError, RewardKindName, RewardOutcome
from rlyard.domain import ImagePart, ScoringItem, Task, TrajectoryStatus
from rlyard.reward_client import RewardClient
from rlyard.server import start_server
from rlyard.settings import ServerSettings
from trainer.config import RolloutConfig
from trainer.outputs import write_samples
from trainer.policy.base import Generation, SamplingParams
from trainer.rollout import RolloutEngine
from trainer.sampler import LocalSampler
from trainer.scoring import score_trajectories


class ImageSeenParams(BaseModel):
    """No parameters."""


class ImageSeen:
    """1.0 when a tool result of the trajectory holds the ground truth's image, byte for byte."""

    name = "test_image_seen"
    description = "Whether the trajectory saw the expected image."
    kind: ClassVar[RewardKindName] = RewardKindName.RULE
    Params = ImageSeenParams

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    async def score(self, item: ScoringItem, params: ImageSeenParams) -> RewardOutcome:
        if item.trajectory is None or not isinstance(item.ground_truth, dict):
            raise RewardInputError("needs a trajectory and {sha256, width, height}")
        want = item.ground_truth
        seen = [(hashlib.sha256(i.data).hexdigest(), i.width, i.height, i.mime_type, i.image_id)
                for i in item.trajectory.images]
        hit = (want["sha256"], want["width"], want["height"], "image/png", want["image_id"]) in seen
        return RewardOutcome(1.0 if hit else 0.0, f"images seen: {len(seen)}")


class ScriptedGenerator:
    """A text policy that calls ``test_show_image`` once, then answers (turn k: the k-th reply)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.prompts: list[str] = []

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        out = []
        for prompt in prompts:
            text = self.tokenizer.decode(prompt)
            self.prompts.append(text)
            turn = text.count("<tool_response>")
            reply = ('<tool_call>{"name": "test_show_image", "arguments": {"image_id": "photo"}}</tool_call>'
                     if turn == 0 else "<answer>red</answer>")
            ids = [*self.tokenizer.encode(reply, add_special_tokens=False), self.tokenizer.eos_token_id]
            out.append(Generation(token_ids=ids, logprobs=[-0.5] * len(ids), finish_reason="stop",
                                  stop_reason=self.tokenizer.eos_token_id))
        return out


@pytest.fixture
def image_reward(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reward_registry, "REGISTRY", dict(reward_registry.REGISTRY))
    reward_registry.register(ImageSeen)


async def test_an_image_goes_from_a_tool_through_a_rollout_to_the_reward_service(
    image_tools: None, image_reward: None, start_tools: Any, make_client: Any, make_png: Any,
    tiny_tokenizer: Any, tmp_path: Path,
) -> None:
    tools = await start_tools(tools=("test_show_image",))
    rewards = await start_server(reward_service(RewardSettings(rewards=("test_image_seen",))), ServerSettings())
    data = make_png(8, 6, (220, 20, 20))
    photo = ImagePart(data, "image/png", 8, 6, "photo")
    truth = {"sha256": hashlib.sha256(data).hexdigest(), "width": 8, "height": 6, "image_id": "photo"}
    task = Task("t0", [{"role": "user", "content": "What colour is the photo?"}], attachments=(photo,),
                ground_truth=truth)
    generator = ScriptedGenerator(tiny_tokenizer)
    sampler = LocalSampler(generator)
    config = RolloutConfig(group_size=2, prompts_per_step=1, max_turns=3, max_new_tokens_per_turn=64,
                           max_total_tokens=512, max_observation_tokens=64)
    engine = RolloutEngine(sampler, tiny_tokenizer, make_client(tools), config, seed=0)
    client = RewardClient(rewards.address, timeout=30.0)
    try:
        trajectories = await engine.run([task])
        counts = await score_trajectories(client, trajectories, {"test_image_seen": 1.0}, 1)
    finally:
        await engine.aclose()
        await sampler.aclose()
        await client.close()
        await rewards.stop(0)
    assert counts == {"scored": 2, "reward_system_errors": 0}
    for traj in trajectories:
        assert traj.status == TrajectoryStatus.COMPLETED and traj.final_answer == "red"
        assert traj.reward == 1.0 and traj.reward_components == {"test_image_seen": 1.0}
        # the trajectory keeps the image; the text policy read its placeholder, never the bytes
        [result] = traj.record.tool_results
        assert result.images == (photo,) and traj.record.images == [photo]
        assert traj.images == [photo]
    placeholder = f"[image photo: 8x6 image/png, {len(data)} bytes]"
    assert any(placeholder in p for p in generator.prompts)
    write_samples(tmp_path, "grpo", 1, trajectories[:1], tiny_tokenizer)
    [written] = list((tmp_path / "samples").iterdir())
    assert written.read_bytes() == data and written.suffix == ".png"
    assert f"](samples/{written.name})" in (tmp_path / "samples.md").read_text()


async def test_a_reward_reads_no_image_when_none_was_returned(image_tools: None, image_reward: None) -> None:
    settings = RewardSettings(rewards=("test_image_seen",))
    rewards = await start_server(reward_service(settings), ServerSettings())
    try:
        async with RewardClient(rewards.address, timeout=30.0) as client:
            from rlyard.domain import Trajectory, parse_spec

            result = await client.score(ScoringItem("x", trajectory=Trajectory(), ground_truth={
                "sha256": "0" * 64, "width": 1, "height": 1, "image_id": "a"}), parse_spec({"test_image_seen": 1}))
    finally:
        await rewards.stop(0)
    assert (result.total, result.explanation) == (0.0, "test_image_seen=0 (images seen: 0)")
    assert json.loads(json.dumps(result.to_jsonable()))["components"] == {"test_image_seen": 0.0}
