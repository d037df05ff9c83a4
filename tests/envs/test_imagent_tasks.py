"""IMAgent multi-image tasks: determinism, the split, the tile's detail (right at full resolution,
absent at the input resolution for every arrangement), the files the trainer loads, the demos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from envs.vision.imagent import (
    KINDS,
    QUADRANTS,
    ImagentConfig,
    downscale,
    generate,
    main,
    oracle_boxes,
    preview_is_answer_free,
    quadrant_boxes,
)
from envs.vision.ssl_tasks import scene_split
from rlyard.errors import ConfigError
from rlyard.scene_render import COLOURS
from trainer.tasks import load_tasks


@pytest.fixture(scope="module")
def heldout() -> list:
    return list(generate(16, "heldout", seed=0))


def test_the_same_arguments_give_the_same_tasks() -> None:
    a, b = list(generate(3, "train", seed=5)), list(generate(3, "train", seed=5))
    assert [x.ground_truth for x in a] == [y.ground_truth for y in b]
    assert all(p.data == q.data for x, y in zip(a, b, strict=True)
               for p, q in zip(x.attachments(), y.attachments(), strict=True))
    assert [x.ground_truth for x in generate(3, "train", seed=6)] != [x.ground_truth for x in a]


def test_the_split_is_fixed_by_the_scene_and_no_scene_repeats(heldout: list) -> None:
    train = list(generate(16, "train", seed=0))
    train_seeds = [s for ex in train for s in ex.ground_truth["scene_seeds"]]
    heldout_seeds = [s for ex in heldout for s in ex.ground_truth["scene_seeds"]]
    assert all(scene_split(s) == "train" for s in train_seeds)
    assert all(scene_split(s) == "heldout" for s in heldout_seeds)
    assert len(set(train_seeds)) == len(train_seeds) and len(set(heldout_seeds)) == len(heldout_seeds)
    assert {ex.kind for ex in heldout} == set(KINDS)
    assert {len(ex.images) for ex in heldout} == {2, 3, 4}


def test_the_detail_is_in_the_full_image_and_answers_the_question(heldout: list) -> None:
    for ex in heldout:
        gt = ex.ground_truth
        q = QUADRANTS.index(gt["quadrant"])
        for k, tile in enumerate(gt["tiles"]):
            x0, y0, x1, y1 = tile["box"]
            assert x1 - x0 == y1 - y0 == ImagentConfig().factor and x0 % 4 == 0 and y0 % 4 == 0
            assert len(set(tile["colours"])) == 4
            for square, name in zip(quadrant_boxes(tuple(tile["box"])), tile["colours"], strict=True):
                sx0, sy0, sx1, sy1 = square
                assert (ex.images[k][sy0:sy1, sx0:sx1] == COLOURS[name]).all()
        target = next(t for t in gt["tiles"] if t["image_id"] == gt["target"])
        if ex.kind == "tile_colour":
            assert ex.answer == target["colours"][q] and ex.answer in gt["answers"]
            assert all(c in ex.question for c in target["colours"])
        else:
            assert ex.answer == gt["target"]
            assert [t for t in gt["tiles"] if t["colours"][q] == gt["colour"]] == [target]
            assert len({frozenset(t["colours"]) for t in gt["tiles"]}) == 1       # same four colours everywhere
        prompt = json.dumps(ex.messages())
        assert "colours" not in prompt and QUADRANTS[q] in prompt


def test_the_input_resolution_cannot_show_the_answer(heldout: list) -> None:
    """Every arrangement of every tile's colours gives the same previews: no reader of the previews
    can do better than chance. A tile is one input pixel, and that pixel is the mean of its colours."""
    for ex in heldout:
        assert preview_is_answer_free(ex)
        for image, preview, tile in zip(ex.images, ex.previews, ex.ground_truth["tiles"], strict=True):
            assert preview.shape == (112, 112, 3)
            assert np.array_equal(preview, downscale(image, 112))
            x0, y0 = tile["box"][0] // 4, tile["box"][1] // 4
            mean = np.mean([COLOURS[c] for c in tile["colours"]], axis=0)
            assert np.abs(preview[y0, x0].astype(float) - mean).max() <= 0.5 + 1e-9
    # the check can fail: a tile off the input-pixel grid is visible in the previews
    ex = heldout[0]
    tile = ex.ground_truth["tiles"][0]
    shifted = dict(tile, box=[tile["box"][0] + 1, tile["box"][1], tile["box"][2] + 1, tile["box"][3]])
    moved = type(ex)(ex.task_id, ex.kind, ex.split, ex.question, ex.images, ex.previews, ex.answer,
                     {**ex.ground_truth, "tiles": [shifted, *ex.ground_truth["tiles"][1:]]})
    assert not preview_is_answer_free(moved)


def test_oracle_boxes_hold_the_tiles(heldout: list) -> None:
    for ex in heldout:
        boxes = oracle_boxes(ex.ground_truth)
        assert len(boxes) == (1 if ex.kind == "tile_colour" else len(ex.images))
        for image_id, box in boxes:
            tile = next(t for t in ex.ground_truth["tiles"] if t["image_id"] == image_id)
            assert box[0] <= tile["box"][0] and box[1] <= tile["box"][1]
            assert box[2] >= tile["box"][2] and box[3] >= tile["box"][3] and max(box) <= 448


@pytest.mark.parametrize("kwargs", [{"size": 448, "input_size": 150}, {"size": 336, "input_size": 112},
                                    {"size": 224, "input_size": 112}, {"min_images": 1},
                                    {"min_images": 3, "max_images": 2}, {"input_size": 20, "size": 160}])
def test_bad_configs_say_what_to_use(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ImagentConfig(**kwargs)


def test_cli_writes_files_the_trainer_loads(tmp_path: Path) -> None:
    main(["--out", str(tmp_path), "--n-train", "3", "--n-heldout", "2", "--seed", "1"])
    tasks = load_tasks(tmp_path / "heldout.jsonl", [])
    assert len(tasks) == 2
    for task in tasks:
        n = len(task.ground_truth["tiles"])
        assert [a.image_id for a in task.attachments] == [*(f"image-{k}" for k in range(n)),
                                                          *(f"preview-{k}" for k in range(n))]
        assert {(a.width, a.height) for a in task.attachments} == {(448, 448), (112, 112)}
        shown = [p["image_id"] for p in task.messages[1]["content"] if p.get("type") == "image"]
        assert shown == [f"preview-{k}" for k in range(n)]          # the prompt shows only the previews
    line = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])
    assert line["reward_spec"] == {"qa_em": 1.0} and line["tools"] == []
    info = json.loads((tmp_path / "split.json").read_text())
    assert info["n_train"] == 3 and info["n_heldout"] == 2 and 0.25 <= info["chance_heldout"] <= 0.5
    demos = [json.loads(x) for x in (tmp_path / "train_demos.jsonl").read_text().splitlines()]
    assert len(demos) == 3
    for demo, task in zip(demos, load_tasks(tmp_path / "train.jsonl", []), strict=True):
        calls = demo["messages"][2]["tool_calls"]
        assert [c["function"]["arguments"]["box"] for c in calls] == [b for _, b in oracle_boxes(task.ground_truth)]
        results = [m for m in demo["messages"] if m["role"] == "tool"]
        assert len(results) == len(calls)
        for k, result in enumerate(results, 1):      # the zoom's text, then the image the real tool returned
            text, image = result["content"]
            assert text["text"].startswith("zoom into image image-") and image == {"type": "image",
                                                                                   "image_id": f"zoom-{k}"}
        assert demo["messages"][1] == task.messages[1]          # the prompt shows the previews, as the task's
        assert demo["messages"][-1]["content"] == f"<answer>{task.ground_truth['answer']}</answer>"
        assert [a["image_id"] for a in demo["attachments"]] == [
            *(f"preview-{k}" for k in range(len(task.ground_truth["tiles"]))), *(f"zoom-{k}" for k in
                                                                                 range(1, len(calls) + 1))]


def test_the_demos_show_the_previews_and_the_returned_zooms(tmp_path: Path) -> None:
    """A vision policy's demo examples hold the previews' and the zooms' pad runs (untrained) and
    the images in that order; each zoom is the real tool's 112x112 output, whose detail (the
    tile's squares) the previews do not have. ``--text-demos`` writes the text-only demos."""
    from PIL import Image

    from trainer.model import init_policy
    from trainer.policy import VLMPolicy, load_policy
    from trainer.sft import load_sft_examples

    main(["--out", str(tmp_path / "img"), "--n-train", "2", "--n-heldout", "0", "--seed", "3"])
    main(["--out", str(tmp_path / "txt"), "--n-train", "2", "--n-heldout", "0", "--seed", "3", "--text-demos"])
    init_policy(tmp_path / "vlm", vision=True)
    vlm = load_policy(tmp_path / "vlm")
    assert isinstance(vlm, VLMPolicy)
    examples = load_sft_examples(tmp_path / "img" / "train_demos.jsonl", vlm.tokenizer, vision=vlm)
    tasks = load_tasks(tmp_path / "img" / "train.jsonl", [])
    for example, task in zip(examples, tasks, strict=True):
        n = len(task.ground_truth["tiles"])
        ids = [i.image_id for i in example.images]
        zooms = len(oracle_boxes(task.ground_truth))
        assert ids == [*(f"preview-{k}" for k in range(n)), *(f"zoom-{k}" for k in range(1, zooms + 1))]
        assert [i.data for i in example.images[:n]] == [a.data for a in task.attachments[n:]]
        assert all((i.width, i.height) == (112, 112) for i in example.images)
        zoom = Image.open(tmp_path / "img" / "images" / task.task_id / "zoom-1.png")
        assert zoom.size == (112, 112)
        pads = [m for t, m in zip(example.token_ids, example.loss_mask, strict=True) if t == vlm.image_pad_id]
        assert len(pads) == sum(vlm.image_tokens(i) for i in example.images) and not any(pads)
        trained = vlm.tokenizer.decode([t for t, m in zip(example.token_ids, example.loss_mask, strict=True) if m])
        assert "<tool_call>" in trained and "<answer>" in trained and "zoom into image" not in trained
    texts = [json.loads(x) for x in (tmp_path / "txt" / "train_demos.jsonl").read_text().splitlines()]
    assert all("attachments" not in d and isinstance(d["messages"][1]["content"], str) for d in texts)
    assert all(isinstance(m["content"], str) for d in texts for m in d["messages"])
