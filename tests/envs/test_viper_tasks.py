"""ViPER task generation: the same arguments give the same task, the split is ssl_tasks', a crop
holds its object, the gold answers read back, and the files load as trainer tasks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from envs.vision.scenes import decode_png, make_scene
from envs.vision.ssl_tasks import scene_split
from envs.vision.viper_tasks import REWARD_SPECS, ViperConfig, crop_box, generate, main, make_example
from reward_service.viper.description import gold_instance, gold_scene, parse_description, parse_instance
from rlyard.errors import ConfigError
from trainer.model import init_policy
from trainer.policy import VLMPolicy, load_policy
from trainer.sft import load_sft_examples
from trainer.tasks import load_tasks


def test_the_same_arguments_give_the_same_task() -> None:
    for kind in ("image", "instance"):
        a, b = make_example(kind, 7), make_example(kind, 7)
        assert a.task_id == b.task_id == f"viper-{kind}-{scene_split(7)}-7"
        assert a.ground_truth == b.ground_truth and np.array_equal(a.image, b.image)
        assert a.to_task().attachments[0].data == b.to_task().attachments[0].data


def test_the_split_is_the_ssl_tasks_one() -> None:
    for split in ("train", "heldout"):
        for ex in generate("image", 5, split):
            assert ex.split == split == scene_split(ex.ground_truth["scene_seed"]) == ex.ground_truth["split"]


def test_image_tasks_show_the_scene_and_their_gold_reads_back() -> None:
    for ex in generate("image", 6):
        scene = make_scene(ex.ground_truth["scene_seed"])
        assert np.array_equal(ex.image, scene.image) and ex.image_id == "scene"
        parsed = parse_description(f"<answer>{ex.answer}</answer>")
        assert parsed.value is not None and len(parsed.value) == len(scene.objects) + len(scene.texts)
        assert len(gold_scene(ex.ground_truth).items) == len(parsed.value)
        task = ex.to_task()
        assert task.messages[1]["content"][0] == {"type": "image", "image_id": "scene"}
        assert "`<shape> <colour> at (x,y) size s`" in task.messages[1]["content"][1]["text"]


def test_instance_tasks_crop_their_object_with_a_margin() -> None:
    kinds = set()
    for ex in generate("instance", 30):
        scene, target, crop = gold_instance(ex.ground_truth)
        kinds.add(ex.ground_truth["target"]["kind"])
        x0, y0, x1, y1 = scene.items[target].box
        cx0, cy0, cx1, cy1 = crop
        assert cx0 <= x0 and cy0 <= y0 and x1 <= cx1 and y1 <= cy1
        assert crop == crop_box((x0, y0, x1, y1), 0.25, 128, 128)
        assert np.array_equal(ex.image, make_scene(ex.ground_truth["scene_seed"]).image[cy0:cy1, cx0:cx1])
        assert parse_instance(ex.answer).value is not None
    assert kinds == {"object", "text"}          # both shapes and signs are asked about


def test_bad_configs() -> None:
    with pytest.raises(ConfigError, match="decimals 4"):
        ViperConfig(decimals=4)
    with pytest.raises(ConfigError, match="unknown ViPER task"):
        make_example("caption", 0)


def test_the_cli_writes_tasks_the_trainer_loads_and_demos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--task", "all", "--n", "3", "--out", str(tmp_path), "--split", "heldout"])
    assert "3 image tasks (heldout)" in capsys.readouterr().out
    for kind in ("image", "instance"):
        path = tmp_path / f"{kind}_heldout.jsonl"
        tasks = load_tasks(path, [])
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(tasks) == 3 and all(line["reward_spec"] == REWARD_SPECS[kind] for line in lines)
        for task in tasks:
            (image,) = task.attachments
            assert decode_png(image.data).shape == (image.height, image.width, 3)
        demos = [json.loads(line) for line in (tmp_path / f"{kind}_heldout_demos.jsonl").read_text().splitlines()]
        assert [d["messages"][-1]["content"] for d in demos] == [f"<answer>{ln['ground_truth']['answer']}</answer>"
                                                               for ln in lines]


def test_the_demos_show_the_tasks_image_and_load_for_both_kinds_of_policy(tmp_path: Path) -> None:
    """The demos' prompts show the task's PNG (an attachment beside the file): a vision policy's
    examples hold its pad run, untrained, and the image; a text policy reads them as the text-only
    demos of ``--text-demos`` (its template renders a prompt image as nothing)."""
    main(["--task", "instance", "--n", "2", "--out", str(tmp_path / "img")])
    main(["--task", "instance", "--n", "2", "--out", str(tmp_path / "txt"), "--text-demos"])
    init_policy(tmp_path / "vlm", vision=True)
    init_policy(tmp_path / "lm")
    vlm, lm = load_policy(tmp_path / "vlm"), load_policy(tmp_path / "lm")
    assert isinstance(vlm, VLMPolicy)
    demos = tmp_path / "img" / "instance_train_demos.jsonl"
    tasks = load_tasks(tmp_path / "img" / "instance_train.jsonl", [])
    lines = [json.loads(line) for line in demos.read_text().splitlines()]
    assert all("attachments" in d for d in lines)
    assert all("attachments" not in json.loads(x) for x in (tmp_path / "txt" / "instance_train_demos.jsonl")
               .read_text().splitlines())
    examples = load_sft_examples(demos, vlm.tokenizer, vision=vlm)
    for example, task in zip(examples, tasks, strict=True):
        assert [i.data for i in example.images] == [task.attachments[0].data]
        pads = [m for t, m in zip(example.token_ids, example.loss_mask, strict=True) if t == vlm.image_pad_id]
        assert len(pads) == vlm.image_tokens(task.attachments[0]) and not any(pads)
    as_text = load_sft_examples(demos, lm.tokenizer)
    text_only = load_sft_examples(tmp_path / "txt" / "instance_train_demos.jsonl", lm.tokenizer)
    assert [e.token_ids for e in as_text] == [e.token_ids for e in text_only]
    assert [e.loss_mask for e in as_text] == [e.loss_mask for e in text_only]
