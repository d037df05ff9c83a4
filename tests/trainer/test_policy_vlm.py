"""The tiny vision-language policy: `rlyard model init --vision`, sampling with images, the rollout
keeping what was generated with the images, and the training forward over the stored trajectory
giving the sampling log-probs back; one SFT step and one GRPO update on image trajectories."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from rlyard.domain import ImagePart, Task, TrajectoryStatus
from trainer.batching import batch_logprobs, collate, collate_trajectories
from trainer.config import AlgorithmConfig, RolloutConfig, StageConfig
from trainer.grpo import frozen_reference, grpo_update
from trainer.model import count_params, init_policy
from trainer.model.vision import IMAGE_PLACEHOLDER, VISION_TOKENS
from trainer.policy import HFPolicy, ImageBatchGenerator, VLMPolicy, is_vision_checkpoint, load_policy
from trainer.policy.base import Generation, SamplingParams
from trainer.rollout import RolloutEngine
from trainer.sampler import LocalSampler
from trainer.sft import SftExample, sft_step
from trainer.types import RolloutTrajectory

TEMPERATURE = 0.8
TOLERANCE = 1e-4       # the bound on |sampling log-prob − training log-prob|


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_vlm")
    init_policy(out, vision=True)
    return out


@pytest.fixture
def vlm(vlm_dir: Path) -> VLMPolicy:
    policy = load_policy(vlm_dir)
    assert isinstance(policy, VLMPolicy)
    return policy


@pytest.fixture
def images(make_png: Any) -> list[ImagePart]:
    """Three images of different sizes (so of different token counts) and content."""
    return [ImagePart(make_png(40, 30, (220, 20, 20)), "image/png", 40, 30, "photo"),
            ImagePart(make_png(120, 90, (20, 200, 20), noise=True), "image/png", 120, 90, "chart"),
            ImagePart(make_png(64, 64, (20, 20, 220)), "image/png", 64, 64, "map")]


def _prompt(policy: VLMPolicy, shown: Sequence[ImagePart], text: str = "what colour is it?") -> list[int]:
    """The chat-template prompt with one image part per image, each pad expanded to its run."""
    content = [*({"type": "image", "image_id": i.image_id} for i in shown), {"type": "text", "text": text}]
    rendered = policy.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                    add_generation_prompt=True, tokenize=True)
    ids = rendered if isinstance(rendered, list) else rendered["input_ids"]
    return _expand(policy, [int(t) for t in ids], shown)


def _expand(policy: VLMPolicy, ids: list[int], shown: Sequence[ImagePart]) -> list[int]:
    out: list[int] = []
    pending = list(shown)
    for token in ids:
        out.extend([token] * policy.image_tokens(pending.pop(0)) if token == policy.image_pad_id else [token])
    assert not pending
    return out


def _padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    return ids, mask


# ------------------------------------------------------------------ the checkpoint
def test_init_vision_writes_a_qwen2_vl_checkpoint_that_loads_offline(vlm_dir: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    tokenizer = AutoTokenizer.from_pretrained(vlm_dir)
    processor = AutoImageProcessor.from_pretrained(vlm_dir)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert 1_000_000 < count_params(model) < 5_000_000
    assert json.loads((vlm_dir / "rlyard_policy.json").read_text())["arch"] == "qwen2_vl"
    # the repo's BPE plus the vision tokens, one special id each, at the end of the vocabulary
    ids = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    assert ids == list(range(len(tokenizer) - len(VISION_TOKENS), len(tokenizer)))
    config = model.config
    assert (config.vision_start_token_id, config.vision_end_token_id, config.image_token_id,
            config.video_token_id) == tuple(ids)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                          "text": "hi"}]}],
                                         tokenize=False)
    assert f"<|im_start|>user\n{IMAGE_PLACEHOLDER}hi<|im_end|>" in text
    assert processor.merge_size == 2 and processor.patch_size == 14
    assert is_vision_checkpoint(vlm_dir) and not is_vision_checkpoint(tiny_model_dir)
    assert type(load_policy(tiny_model_dir)) is HFPolicy


def test_an_image_becomes_4_to_16_tokens(vlm: VLMPolicy, images: list[ImagePart], make_png: Any) -> None:
    counts = [vlm.image_tokens(i) for i in images]
    assert all(4 <= n <= 16 for n in counts) and len(set(counts)) > 1
    huge = ImagePart(make_png(1000, 800, (1, 2, 3)), "image/png", 1000, 800)
    assert vlm.image_tokens(huge) <= 16


# ------------------------------------------------------------------ sampling and scoring
def test_generate_with_images_gives_the_log_probs_of_the_training_forward(vlm: VLMPolicy,
                                                                         images: list[ImagePart]) -> None:
    """A batch of rows showing 2, 1 and 0 images, left-padded for sampling, right-padded for
    scoring: every sampled token's log-prob is the forward's, plain and on the loss positions only."""
    shown = [images[:2], images[2:], []]
    prompts = [_prompt(vlm, s) for s in shown]
    params = SamplingParams(max_new_tokens=12, temperature=TEMPERATURE, seed=3)
    gens = vlm.generate(prompts, params, images=shown)
    ids, mask = _padded([p + g.token_ids for p, g in zip(prompts, gens, strict=True)])
    wanted = torch.zeros((len(prompts), ids.shape[1] - 1))
    for r, (p, g) in enumerate(zip(prompts, gens, strict=True)):
        wanted[r, len(p) - 1: len(p) - 1 + len(g.token_ids)] = 1
    plain, _ = vlm.forward_logprobs(ids, mask, temperature=TEMPERATURE, images=shown)
    picked, _ = vlm.forward_logprobs(ids, mask, temperature=TEMPERATURE, images=shown, positions=wanted)
    for r, (p, g) in enumerate(zip(prompts, gens, strict=True)):
        sampled = torch.tensor(g.logprobs)
        assert len(sampled) > 0
        assert float((plain[r, len(p) - 1: len(p) - 1 + len(sampled)] - sampled).abs().max()) < TOLERANCE
    assert torch.allclose(picked, plain * wanted, atol=1e-6)


def test_the_policy_reads_the_image(vlm: VLMPolicy, images: list[ImagePart], make_png: Any) -> None:
    """The same tokens with another image of the same size: other log-probs."""
    other = ImagePart(make_png(40, 30, (20, 220, 220), noise=True), "image/png", 40, 30, "photo")
    prompt = _prompt(vlm, images[:1])
    ids, mask = _padded([prompt])
    red, _ = vlm.forward_logprobs(ids, mask, images=[images[:1]])
    cyan, _ = vlm.forward_logprobs(ids, mask, images=[[other]])
    after = prompt.index(vlm.image_pad_id) + vlm.image_tokens(images[0])   # the first position past the image
    assert float((red[0, after:] - cyan[0, after:]).abs().max()) > 1e-6
    assert torch.equal(red[0, : prompt.index(vlm.image_pad_id) - 1], cyan[0, : prompt.index(vlm.image_pad_id) - 1])


def test_pads_that_do_not_match_the_images_are_refused(vlm: VLMPolicy, images: list[ImagePart]) -> None:
    prompt = _prompt(vlm, images[:1])
    with pytest.raises(ValueError, match="image pad tokens for 2 image"):
        vlm.generate([prompt], SamplingParams(max_new_tokens=2), images=[images[:2]])
    with pytest.raises(ValueError, match="image pad tokens for 0 image"):
        vlm.forward_logprobs(*_padded([prompt]))
    with pytest.raises(ValueError, match="shared-prefix"):
        vlm.forward_logprobs(*_padded([prompt]), images=[images[:1]], positions=torch.ones(1, len(prompt) - 1),
                             shared_prefix=True)


# ------------------------------------------------------------------ a rollout with images
class ScriptedFirstTurn:
    """The vision policy, except that a first turn (no tool response yet) is a scripted call of
    ``test_show_image`` whose log-probs the policy scores; later turns are the policy's samples. An
    untrained policy would not call a tool by itself."""

    def __init__(self, policy: VLMPolicy, call: str) -> None:
        self.policy = policy
        self.script = [*policy.tokenizer.encode(call, add_special_tokens=False),
                       policy.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        self.response_id = policy.tokenizer.convert_tokens_to_ids("<tool_response>")
        self.sampled: list[Generation] = []
        self.shown: list[int] = []

    supports_images = True

    @property
    def image_placeholder(self) -> str:
        return self.policy.image_placeholder

    @property
    def image_pad_id(self) -> int:
        return self.policy.image_pad_id

    def image_tokens(self, image: ImagePart) -> int:
        return self.policy.image_tokens(image)

    def generate(self, prompts: list[list[int]], params: SamplingParams, *,
                 images: Sequence[Sequence[ImagePart]] | None = None) -> list[Generation]:
        assert images is not None
        out: list[Generation] = []
        for prompt, shown in zip(prompts, images, strict=True):
            self.shown.append(len(shown))
            if self.response_id in prompt:
                [gen] = self.policy.generate([prompt], params, images=[shown])
                self.sampled.append(gen)
            else:
                ids, mask = _padded([prompt + self.script])
                logp, _ = self.policy.forward_logprobs(ids, mask, temperature=params.temperature, images=[shown])
                lps = logp[0, len(prompt) - 1:].tolist()
                gen = Generation(self.script, lps, lps, "stop", self.script[-1])
            out.append(gen)
        return out


async def test_a_rollout_stores_what_was_generated_with_the_images_and_the_forward_gives_it_back(
    vlm: VLMPolicy, images: list[ImagePart], image_tools: None, start_tools: Any, make_client: Any,
) -> None:
    """The prompt shows one image, a tool returns another; the second turn is sampled with both.
    Collated from the stored trajectories, the training forward gives every generated token's
    sampling log-prob within 1e-4."""
    photo, chart = images[0], images[1]
    tools = await start_tools(tools=("test_show_image",))
    task = Task("t0", [{"role": "user", "content": [{"type": "image", "image_id": "photo"},
                                                    {"type": "text", "text": "Is the chart like the photo?"}]}],
                attachments=(photo, chart))
    generator = ScriptedFirstTurn(vlm, '<tool_call>\n{"name": "test_show_image", "arguments": {"image_id": "chart"}}'
                                       '\n</tool_call>')
    assert isinstance(generator, ImageBatchGenerator)
    sampler = LocalSampler(generator)
    config = RolloutConfig(group_size=2, prompts_per_step=1, max_turns=2, max_new_tokens_per_turn=48,
                           max_total_tokens=1024, max_observation_tokens=64, temperature=TEMPERATURE)
    engine = RolloutEngine(sampler, vlm.tokenizer, make_client(tools), config, seed=0)
    try:
        trajectories = await engine.run([task])
    finally:
        await engine.aclose()
        await sampler.aclose()
    assert generator.shown == [1, 1, 2, 2]        # each request carried the images its context showed
    assert len(generator.sampled) == 2 and all(g.token_ids for g in generator.sampled)
    pads = vlm.image_pad_id
    for traj in trajectories:
        assert traj.status in (TrajectoryStatus.COMPLETED, TrajectoryStatus.TRUNCATED)
        assert traj.vision and traj.images == [photo, chart] and traj.context_images == (photo, chart)
        assert traj.prompt_ids.count(pads) == vlm.image_tokens(photo)
        observed = [t for t, m in zip(traj.token_ids, traj.loss_mask, strict=True) if m == 0]
        assert observed.count(pads) == vlm.image_tokens(chart)
        assert traj.record.images == [photo, chart]        # the prompt's image is in the record's user turn
    batch = collate_trajectories(trajectories, pad_token_id=vlm.pad_token_id)
    logp, _ = batch_logprobs(vlm, batch, temperature=TEMPERATURE, positions=batch.loss_mask)
    generated = batch.loss_mask > 0
    diff = float((logp - batch.old_logprobs)[generated].abs().max())
    assert int(generated.sum()) > 2 * len(generator.script) and diff < TOLERANCE


async def test_a_cut_observation_shows_only_the_images_it_kept(
    vlm: VLMPolicy, images: list[ImagePart], image_tools: None, start_tools: Any, make_client: Any,
) -> None:
    """An observation cap that cuts the tool's image placeholder: no pad of it is left, and the
    trajectory's images leave it out."""
    tools = await start_tools(tools=("test_show_image",))
    task = Task("t1", [{"role": "user", "content": "show the chart"}], attachments=(images[1],))
    generator = ScriptedFirstTurn(vlm, '<tool_call>\n{"name": "test_show_image", "arguments": {"image_id": "chart"}}'
                                       '\n</tool_call>')
    sampler = LocalSampler(generator)
    overhead = len(vlm.tokenizer.encode("<tool_response>\n\n</tool_response>", add_special_tokens=False))
    config = RolloutConfig(group_size=2, prompts_per_step=1, max_turns=2, max_new_tokens_per_turn=48,
                           max_total_tokens=1024, max_observation_tokens=overhead + 1)
    engine = RolloutEngine(sampler, vlm.tokenizer, make_client(tools), config, seed=0)
    try:
        [traj] = await engine.run([task], group_size=1)
    finally:
        await engine.aclose()
        await sampler.aclose()
    assert traj.vision and traj.images == [] and vlm.image_pad_id not in traj.prompt_ids + traj.token_ids
    assert traj.record.tool_results[0].images == (images[1],)    # the record keeps what the tool returned


# ------------------------------------------------------------------ SFT and GRPO
def _image_trajectory(policy: VLMPolicy, shown: list[ImagePart], group: int, sample: int,
                      reward: float) -> RolloutTrajectory:
    """Prompt with the first image, a sampled turn, an observation showing the second (mask 0),
    a sampled turn with both; old log-probs from the sampling."""
    tok = policy.tokenizer
    prompt = _prompt(policy, shown[:1], f"question {group}")
    params = SamplingParams(max_new_tokens=6, temperature=TEMPERATURE, seed=100 * group + sample)
    [first] = policy.generate([prompt], params, images=[shown[:1]])
    observation = tok.encode(f"<|im_end|>\n<|im_start|>user\n<tool_response>\n{policy.image_placeholder}\n"
                             "</tool_response><|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    observation = _expand(policy, observation, shown[1:2])
    [second] = policy.generate([prompt + first.token_ids + observation], params, images=[shown[:2]])
    tokens = first.token_ids + observation + second.token_ids
    mask = [1] * len(first.token_ids) + [0] * len(observation) + [1] * len(second.token_ids)
    old = first.logprobs + [0.0] * len(observation) + second.logprobs
    return RolloutTrajectory(task=Task(f"q{group}", []), group_id=group, sample_index=sample, prompt_ids=prompt,
                             token_ids=tokens, loss_mask=mask, old_logprobs=old, regions=[5] * len(tokens),
                             reward=reward, images=shown[:2], vision=True)


def _params(policy: VLMPolicy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.model.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], policy: VLMPolicy, prefix: str = "") -> bool:
    return any(not torch.equal(before[k], v) for k, v in policy.model.state_dict().items() if k.startswith(prefix))


def test_one_sft_step_on_image_examples_lowers_their_loss(vlm: VLMPolicy, images: list[ImagePart]) -> None:
    examples = []
    for k, shown in enumerate([images[:1], images[1:3]]):
        prompt = _prompt(vlm, shown, f"describe {k}")
        answer = vlm.tokenizer.encode(f"<answer>colour {k}</answer><|im_end|>", add_special_tokens=False)
        examples.append(SftExample(prompt, answer, [1] * len(answer), images=tuple(shown)))
    batch = collate([e.prompt_ids for e in examples], [e.token_ids for e in examples],
                    [e.loss_mask for e in examples], pad_token_id=vlm.pad_token_id, images=[e.images for e in examples])
    assert batch.images is not None and batch.select([1]).images == (tuple(images[1:3]),)
    before = _params(vlm)
    optimizer = torch.optim.AdamW(vlm.model.parameters(), lr=3e-3)
    first = sft_step(vlm, optimizer, batch)
    second = sft_step(vlm, optimizer, batch)
    assert math.isfinite(first["loss"]) and second["loss"] < first["loss"]
    assert _changed(before, vlm, "model.visual.")     # the gradient reached the vision tower
    assert _changed(before, vlm, "model.language_model.")


def test_one_grpo_update_on_image_trajectories(vlm: VLMPolicy, images: list[ImagePart]) -> None:
    trajs = [_image_trajectory(vlm, [images[g], images[2]], g, s, float(s)) for g in range(2) for s in range(2)]
    batch = collate_trajectories(trajs, pad_token_id=vlm.pad_token_id)
    logp, _ = batch_logprobs(vlm, batch, temperature=TEMPERATURE)
    assert float(((logp - batch.old_logprobs) * batch.loss_mask).abs().max()) < TOLERANCE
    before = _params(vlm)
    reference = frozen_reference(vlm)
    assert isinstance(reference, VLMPolicy)
    stage = StageConfig(kind="rl", steps=10, reward={"exact_match": 1.0},
                        rollout=RolloutConfig(group_size=2, prompts_per_step=2, temperature=TEMPERATURE),
                        algorithm=AlgorithmConfig(updates_per_batch=1, micro_batch_size=2, kl_coef=0.05))
    assert stage.algorithm.shared_prefix      # the default: the vision policy runs its rows whole instead
    optimizer = torch.optim.AdamW(vlm.model.parameters(), lr=1e-3)
    metrics = grpo_update(vlm, optimizer, trajs, stage, step=0, reference=reference)
    assert metrics["updated"] == 1 and metrics["kept"] == 4
    assert math.isclose(metrics["ratio_mean"], 1.0, abs_tol=1e-4)     # on-policy: the rollout's log-probs
    assert all(math.isfinite(metrics[k]) for k in ("loss", "pg_loss", "grad_norm", "entropy"))
    assert metrics["grad_norm"] > 0
    assert _changed(before, vlm, "model.visual.") and _changed(before, vlm, "model.language_model.")


def test_sft_then_grpo_on_image_tasks_through_the_runner(vlm_dir: Path, make_png: Any, tmp_path: Path,
                                                          chat_server: Any) -> None:
    """The runner loads the vision checkpoint as a VLMPolicy; an SFT step, then a GRPO step on tasks
    whose prompt shows an attached image (a scripted judge varies the rewards, so the step updates);
    the stage's model is exported with its image processor."""
    from trainer.compose import open_stack
    from trainer.config import parse_config
    from trainer.events import MetricsEvent
    from trainer.runner import run_experiment

    (tmp_path / "red.png").write_bytes(make_png(40, 30, (220, 20, 20)))
    (tmp_path / "blue.png").write_bytes(make_png(64, 64, (20, 20, 220)))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({
        "task_id": f"q{i}", "tools": [], "ground_truth": {"answers": [colour]},
        "attachments": [{"image_id": "photo", "path": f"{colour}.png"}],
        "messages": [{"role": "user", "content": [{"type": "image", "image_id": "photo"},
                                                  {"type": "text", "text": "What colour is the photo?"}]}],
    }) + "\n" for i, colour in enumerate(["red", "blue"])))
    demos = tmp_path / "demos.jsonl"
    demos.write_text(json.dumps({"messages": [{"role": "user", "content": "What colour?"},
                                              {"role": "assistant", "content": "<answer>red</answer>"}]}) + "\n")
    judge = chat_server(*(f"Score: {s}\nReason: scripted." for s in (0, 9, 3, 6)))
    config = parse_config({
        "name": "vlm-test", "seed": 3, "model": {"path": str(vlm_dir)},
        "stages": [
            {"kind": "sft", "name": "sft", "data": str(demos), "steps": 1, "batch_size": 1, "optim": {"lr": 1e-3}},
            {"kind": "rl", "name": "grpo", "steps": 1, "tasks": {"path": str(tasks)},
             "reward": {"qa_em": 1.0, "judge": {"weight": 0.1, "backend": "openai", "endpoint": judge.url,
                                                "model": "grader", "require_reference": False}},
             "rollout": {"group_size": 2, "prompts_per_step": 2, "max_turns": 1, "max_new_tokens_per_turn": 8,
                         "max_total_tokens": 256},
             "algorithm": {"micro_batch_size": 2, "updates_per_batch": 1}, "optim": {"lr": 1e-3}}],
    })
    events: list[Any] = []
    with open_stack(config) as stack:
        report = run_experiment(config, tmp_path / "run", stack=stack, on_event=events.append)
    assert report["state"] == "SUCCEEDED"
    sft, rl = [e.values for e in events if isinstance(e, MetricsEvent)]
    assert math.isfinite(sft["loss"]) and sft["loss"] > 0
    assert rl["trajectories"] == 4 and rl["updated"] == 1.0 and math.isfinite(rl["loss"])
    assert math.isclose(rl["ratio_mean"], 1.0, abs_tol=1e-4)   # the update's log-probs are the rollout's
    exported = tmp_path / "run" / "models" / "grpo"
    assert (exported / "preprocessor_config.json").is_file() and is_vision_checkpoint(exported)


def test_a_text_policy_refuses_image_batches(tiny_model_dir: Path, images: list[ImagePart]) -> None:
    policy = HFPolicy(tiny_model_dir)
    batch = collate([[1, 2]], [[3, 4]], [[1, 1]], pad_token_id=0, images=[images[:1]])
    with pytest.raises(ValueError, match="to a text policy"):
        batch_logprobs(policy, batch)
    # a text policy's trajectory keeps its tools' images as a record only: none reach the forward
    traj = RolloutTrajectory(task=Task("t", []), group_id=0, sample_index=0, prompt_ids=[1, 2], token_ids=[3],
                             loss_mask=[1], old_logprobs=[0.0], regions=[5], images=images[:1])
    assert collate_trajectories([traj], pad_token_id=0).images is None
