"""SFT demonstrations with images: a message-form line's ``attachments`` and image parts render as
the rollout engine renders the same conversation (the same ids, the same images, hence the same
image tensors) for the vision policy, and as the text policy's rollout shows them for a text policy;
image pads and tool outputs are never trained; bad lines say what is wrong; a few SFT steps on one
image demonstration lower its loss."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from rlyard.domain import ImagePart, Task, TrajectoryStatus
from rlyard.errors import ConfigError
from trainer.config import RolloutConfig
from trainer.model import init_policy
from trainer.policy import HFPolicy, ImageBatchGenerator, VLMPolicy, load_policy
from trainer.policy.base import Generation, SamplingParams
from trainer.rollout import RolloutEngine
from trainer.sampler import LocalSampler
from trainer.sft import SftData, load_sft_examples, render_messages, sft_step
from trainer.types import RolloutTrajectory

CALL = '<tool_call>\n{"name": "test_show_image", "arguments": {"image_id": "chart"}}\n</tool_call>'
ANSWER = "<answer>red</answer>"
TOOLS = [{"type": "function", "function": {"name": "test_show_image", "description": "Show an image again.",
                                           "parameters": {"type": "object", "properties": {
                                               "image_id": {"type": "string"}}, "required": ["image_id"]}}}]
QUESTION = [{"type": "image", "image_id": "photo"}, {"type": "text", "text": "Is the chart like the photo?"}]


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_vlm_sft")
    init_policy(out, vision=True)
    return out


@pytest.fixture(scope="module")
def text_policy(tmp_path_factory: pytest.TempPathFactory) -> HFPolicy:
    """The repo's tiny text policy (its chat template is the vision policy's, without images)."""
    out = tmp_path_factory.mktemp("tiny_text_sft")
    init_policy(out)
    policy = load_policy(out)
    assert not isinstance(policy, VLMPolicy)
    return policy


@pytest.fixture
def vlm(vlm_dir: Path) -> VLMPolicy:
    policy = load_policy(vlm_dir)
    assert isinstance(policy, VLMPolicy)
    return policy


@pytest.fixture
def demo_dir(tmp_path: Path, make_png: Any) -> Path:
    """photo.png and chart.png under ``images/`` (paths in a demo line are relative to its file)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "photo.png").write_bytes(make_png(40, 30, (220, 20, 20)))
    (tmp_path / "images" / "chart.png").write_bytes(make_png(120, 90, (20, 200, 20), noise=True))
    return tmp_path


def _parts(folder: Path) -> tuple[ImagePart, ImagePart]:
    data = [(folder / "images" / f"{n}.png").read_bytes() for n in ("photo", "chart")]
    return ImagePart(data[0], "image/png", 40, 30, "photo"), ImagePart(data[1], "image/png", 120, 90, "chart")


def _demo(**extra: Any) -> dict[str, Any]:
    """The conversation the scripted rollout below has: a prompt showing the photo, a call of
    ``test_show_image`` on the chart, the tool's answer (the chart), the answer."""
    return copy.deepcopy({"tools": TOOLS, "attachments": [{"image_id": "photo", "path": "images/photo.png"},
                                            {"image_id": "chart", "path": "images/chart.png"}],
            "messages": [{"role": "user", "content": QUESTION},
                         {"role": "assistant", "content": CALL},
                         {"role": "tool", "name": "test_show_image",
                          "content": [{"type": "image", "image_id": "chart"}]},
                         {"role": "assistant", "content": ANSWER}], **extra})


def _write(folder: Path, *lines: dict[str, Any]) -> Path:
    path = folder / "demos.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


class Scripted:
    """A text generator that writes ``turns`` (turn k: the k-th text, then ``<|im_end|>``) and
    scores nothing (log-probs 0)."""

    supports_images = False

    def __init__(self, tokenizer: Any, turns: Sequence[str]) -> None:
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.scripts = [[*tokenizer.encode(t, add_special_tokens=False), end] for t in turns]
        self.response_id = tokenizer.convert_tokens_to_ids("<tool_response>")
        self.shown: list[int] = []

    def generate(self, prompts: list[list[int]], params: SamplingParams, *,
                 images: Sequence[Sequence[ImagePart]] | None = None) -> list[Generation]:
        out = []
        for row, prompt in enumerate(prompts):
            self.shown.append(len(images[row]) if images is not None else 0)
            script = self.scripts[prompt.count(self.response_id)]
            out.append(Generation(list(script), [0.0] * len(script), [0.0] * len(script), "stop", script[-1]))
        return out


class ScriptedVision(Scripted):
    """``Scripted`` as a vision generator: the images and their token counts are ``policy``'s."""

    supports_images = True

    def __init__(self, policy: VLMPolicy, turns: Sequence[str]) -> None:
        super().__init__(policy.tokenizer, turns)
        self.policy = policy

    @property
    def image_placeholder(self) -> str:
        return self.policy.image_placeholder

    @property
    def image_pad_id(self) -> int:
        return self.policy.image_pad_id

    def image_tokens(self, image: ImagePart) -> int:
        return self.policy.image_tokens(image)


async def _rollout(generator: Scripted, tokenizer: Any, tools_address: str, make_client: Any,
                   attachments: tuple[ImagePart, ...]) -> RolloutTrajectory:
    sampler = LocalSampler(generator)
    config = RolloutConfig(group_size=2, prompts_per_step=1, max_turns=2, max_new_tokens_per_turn=64,
                           max_total_tokens=2048, max_observation_tokens=256)
    engine = RolloutEngine(sampler, tokenizer, make_client(tools_address), config, seed=0)
    task = Task("t0", [{"role": "user", "content": QUESTION}], TOOLS, attachments=attachments)
    try:
        [traj] = await engine.run([task], group_size=1)
    finally:
        await engine.aclose()
        await sampler.aclose()
    assert traj.status == TrajectoryStatus.COMPLETED and traj.final_answer == "red"
    return traj


def _assistant_newlines(ids: list[int], mask: list[int], tokenizer: Any) -> set[int]:
    """Positions of the newline the template writes after a trained ``<|im_end|>``: SFT trains it
    (it is in the assistant message's rendering), the rollout did not generate it."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return {k + 1 for k in range(len(ids) - 1) if ids[k] == end and mask[k] == 1}


# ------------------------------------------------------------------ the rollout's layout
async def test_a_vision_demo_renders_as_the_rollout_builds_the_same_conversation(
    vlm: VLMPolicy, demo_dir: Path, image_tools: None, start_tools: Any, make_client: Any,
) -> None:
    """The same conversation run through the rollout engine (the prompt shows the photo, the real
    tool server returns the chart) and loaded from an SFT file: the same ids (SFT has one more, the
    template's newline after the last ``<|im_end|>``), the same images and image tensors, and the
    same trained tokens up to the newlines after each ``<|im_end|>``."""
    photo, chart = _parts(demo_dir)
    generator = ScriptedVision(vlm, [CALL, ANSWER])
    assert isinstance(generator, ImageBatchGenerator)
    tools = await start_tools(tools=("test_show_image",))
    traj = await _rollout(generator, vlm.tokenizer, tools, make_client, (photo, chart))
    assert generator.shown == [1, 2] and traj.vision

    [example] = load_sft_examples(_write(demo_dir, _demo()), vlm.tokenizer, vision=vlm)
    rollout_ids = traj.prompt_ids + traj.token_ids
    newline = vlm.tokenizer.encode("\n", add_special_tokens=False)
    assert example.prompt_ids == [] and example.token_ids == rollout_ids + newline
    assert [i.data for i in example.images] == [i.data for i in traj.images] == [photo.data, chart.data]
    sft_vision, rollout_vision = vlm.vision_inputs([example.images]), vlm.vision_inputs([traj.images])
    assert all(torch.equal(sft_vision[k], rollout_vision[k]) for k in ("pixel_values", "image_grid_thw"))

    rollout_mask = [0] * len(traj.prompt_ids) + traj.loss_mask
    extra = _assistant_newlines(example.token_ids, example.loss_mask, vlm.tokenizer)
    assert len(extra) == 2 and all(example.token_ids[k] == newline[0] for k in extra)
    assert [m for k, m in enumerate(example.loss_mask) if k not in extra] == \
        [m for k, m in enumerate([*rollout_mask, 1]) if k not in extra]
    pads = [k for k, t in enumerate(example.token_ids) if t == vlm.image_pad_id]
    assert len(pads) == vlm.image_tokens(photo) + vlm.image_tokens(chart)
    assert all(example.loss_mask[k] == 0 for k in pads)        # image tokens are never trained


async def test_a_text_policy_reads_the_demo_as_its_rollout_shows_it(
    text_policy: HFPolicy, demo_dir: Path, image_tools: None, start_tools: Any, make_client: Any,
) -> None:
    """For a text policy the prompt's image renders as its template renders it in rollouts
    (nothing) and the tool's image as the placeholder its observation holds: the same ids as its
    rollout, and no images."""
    policy = text_policy
    photo, chart = _parts(demo_dir)
    generator = Scripted(policy.tokenizer, [CALL, ANSWER])
    tools = await start_tools(tools=("test_show_image",))
    traj = await _rollout(generator, policy.tokenizer, tools, make_client, (photo, chart))
    assert not traj.vision

    [example] = load_sft_examples(_write(demo_dir, _demo()), policy.tokenizer)
    newline = policy.tokenizer.encode("\n", add_special_tokens=False)
    assert example.token_ids == traj.prompt_ids + traj.token_ids + newline and example.images == ()
    observed = policy.tokenizer.decode([t for t, m in zip(example.token_ids, example.loss_mask, strict=True) if not m])
    assert chart.placeholder() in observed and "[image photo" not in observed


# ------------------------------------------------------------------ masks and errors
def test_tool_outputs_and_image_pads_are_never_trained(vlm: VLMPolicy, demo_dir: Path) -> None:
    demo = _demo()
    demo["messages"][2]["content"] = [{"type": "text", "text": "here it is"}, {"type": "image", "image_id": "chart"}]
    [example] = load_sft_examples(_write(demo_dir, demo), vlm.tokenizer, vision=vlm)
    trained = vlm.tokenizer.decode([t for t, m in zip(example.token_ids, example.loss_mask, strict=True) if m])
    assert trained == f"{CALL}<|im_end|>\n{ANSWER}<|im_end|>\n"
    text = vlm.tokenizer.decode(example.token_ids)
    assert f"<tool_response>\nhere it is\n<|vision_start|>{'<|image_pad|>' * vlm.image_tokens(_parts(demo_dir)[1])}" \
           "<|vision_end|>\n</tool_response>" in text            # parts joined by newlines, as in the rollout


@pytest.mark.parametrize(("change", "error"), [
    (lambda d: d["messages"][2]["content"].append({"type": "image", "image_id": "map"}),
     r"demos.jsonl:1: message 2 \(tool\): an image part names 'map', which is not among the line's attachments "
     r"\(chart, photo\)"),
    (lambda d: d["attachments"].pop(), "names 'chart', which is not among"),
    (lambda d: d["attachments"].append({"image_id": "bad", "path": "images/missing.png"}),
     "demos.jsonl:1: attachment 'bad': cannot read"),
    (lambda d: d["attachments"].append({"image_id": "photo", "path": "images/chart.png"}),
     "two attachments are named 'photo'"),
    (lambda d: d["messages"][3].update(content=[{"type": "image", "image_id": "photo"}]),
     "an assistant message cannot show an image"),
    (lambda d: d["messages"][0]["content"].append({"type": "text", "text": "<|image_pad|>"}),
     "rendered 3 image placeholder"),
])
def test_bad_image_lines_say_what_is_wrong(vlm: VLMPolicy, demo_dir: Path, change: Any, error: str) -> None:
    demo = _demo()
    change(demo)
    with pytest.raises(ConfigError, match=error):
        load_sft_examples(_write(demo_dir, demo), vlm.tokenizer, vision=vlm)


def test_an_unreadable_image_is_named(vlm: VLMPolicy, demo_dir: Path) -> None:
    (demo_dir / "images" / "chart.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"demos.jsonl:1: attachment 'chart': cannot read .*chart.png"):
        load_sft_examples(_write(demo_dir, _demo()), vlm.tokenizer, vision=vlm)


def test_lines_without_images_render_as_the_template_does(text_policy: HFPolicy) -> None:
    """Lines without images render as the chat template renders them (a tool message's text parts
    joined by newlines, as in the rollout)."""
    tiny_tokenizer = text_policy.tokenizer
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant", "content": "yo"},
        {"role": "tool", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "ok"}]
    example = render_messages(tiny_tokenizer, messages)
    assert "<tool_response>\na\nb\n</tool_response>" in tiny_tokenizer.decode(example.token_ids)
    plain = render_messages(tiny_tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert plain.token_ids == tiny_tokenizer.encode(
        tiny_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                           tokenize=False), add_special_tokens=False)


# ------------------------------------------------------------------ training
def test_sft_steps_on_an_image_demo_lower_its_loss(vlm: VLMPolicy, demo_dir: Path) -> None:
    """The file loads, the batch carries the images, and four steps on the one example lower its
    loss; the gradient reaches the vision tower."""
    examples = load_sft_examples(_write(demo_dir, _demo()), vlm.tokenizer, vision=vlm)
    data = SftData(examples, seed=0, pad_token_id=vlm.pad_token_id)
    before = {k: v.detach().clone() for k, v in vlm.model.state_dict().items() if k.startswith("model.visual.")}
    optimizer = torch.optim.AdamW(vlm.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        batch = data.next_batch(1)
        assert batch.images is not None and len(batch.images[0]) == 2
        assert not bool((batch.loss_mask[0] > 0)[(batch.input_ids[0, 1:] == vlm.image_pad_id)].any())
        losses.append(sft_step(vlm, optimizer, batch)["loss"])
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0]
    assert any(not torch.equal(before[k], v) for k, v in vlm.model.state_dict().items() if k in before)
