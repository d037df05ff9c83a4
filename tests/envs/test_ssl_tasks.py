"""SSL4RL task generators: each task is answerable (undoing the stored answer gives the original
scene), generation is deterministic, the held-out split never shares a scene with train, and the
task files round-trip with their images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from envs.vision.scenes import decode_png, make_scene
from envs.vision.ssl_tasks import (
    HOLE_GREY,
    MIN_PATCH_DIFFERENCE,
    REWARD_SPECS,
    SslConfig,
    assemble,
    generate,
    image_of,
    main,
    make_example,
    read_tasks,
    scene_seeds,
    scene_split,
    tiles_of,
    write_tasks,
)
from reward_service.catalog import REWARD_MODULES
from reward_service.ssl.answers import POSITIONS, TASKS, parse_candidate, parse_jigsaw, parse_position, parse_rotation
from rlyard.errors import ConfigError

SEEDS = scene_seeds("train", 6) + scene_seeds("heldout", 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_rotating_back_by_the_answer_gives_the_scene(seed: int) -> None:
    ex = make_example("rotation", seed)
    (image_id, shown), = ex.images
    angle = ex.ground_truth["answer"]
    assert image_id == "rotated" and angle in (0, 90, 180, 270)
    # Shown = the scene turned clockwise by the answer; turning it counter-clockwise undoes it.
    assert np.array_equal(np.rot90(shown, angle // 90), ex.scene.image)
    for other in {0, 90, 180, 270} - {angle}:
        assert not np.array_equal(np.rot90(shown, other // 90), ex.scene.image)


def test_rotation_angles_cover_all_four() -> None:
    assert {ex.ground_truth["answer"] for ex in generate("rotation", 40)} == {0, 90, 180, 270}


@pytest.mark.parametrize(("seed", "grid"), [(s, 2) for s in SEEDS] + [(SEEDS[0], 3), (SEEDS[1], 4)])
def test_reassembling_by_the_answer_gives_the_scene(seed: int, grid: int) -> None:
    config = SslConfig(size=120 if grid == 3 else 128, grid=grid)
    ex = make_example("jigsaw", seed, config)
    (_, shuffled), = ex.images
    answer = ex.ground_truth["answer"]
    assert sorted(answer) == list(range(grid**2)) and ex.ground_truth["grid"] == grid
    tiles = tiles_of(shuffled, grid)
    assert np.array_equal(assemble([tiles[j] for j in answer], grid), ex.scene.image)
    # Every tile differs from every other, so no other order gives the scene back.
    flat = [t.tobytes() for t in tiles]
    assert len(set(flat)) == grid**2


def test_jigsaw_hand_checked_2x2() -> None:
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    tiles = tiles_of(image, 2)
    assert np.array_equal(tiles[1], image[:2, 2:]) and np.array_equal(tiles[2], image[2:, :2])
    assert np.array_equal(assemble(tiles, 2), image)
    # Shuffled shows original tiles [2, 0, 3, 1]; so original 0 is at shuffled 1, 1 at 3, 2 at 0, 3 at 2.
    shuffled = tiles_of(assemble([tiles[2], tiles[0], tiles[3], tiles[1]], 2), 2)
    assert np.array_equal(assemble([shuffled[j] for j in (1, 3, 0, 2)], 2), image)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_neighbour_patch_comes_from_the_cell_the_answer_names(seed: int) -> None:
    ex = make_example("position", seed)
    images = dict(ex.images)
    gt = ex.ground_truth
    cell = 128 // 3
    for name, key in (("centre", "centre_box"), ("neighbour", "neighbour_box")):
        x0, y0, x1, y1 = gt[key]
        assert np.array_equal(images[name], ex.scene.image[y0:y1, x0:x1])
    cx, cy = gt["centre_box"][0] // cell, gt["centre_box"][1] // cell
    nx, ny = gt["neighbour_box"][0] // cell, gt["neighbour_box"][1] // cell
    assert (cx, cy) == (1, 1)
    assert POSITIONS[gt["answer"]] == (ny - cy, nx - cx)
    # Patches stay inside their cells, with a gap: edges never simply continue.
    for x0, y0, x1, y1 in (gt["centre_box"], gt["neighbour_box"]):
        assert x0 // cell == (x1 - 1) // cell and y0 // cell == (y1 - 1) // cell


def test_positions_cover_all_eight() -> None:
    assert {ex.ground_truth["answer"] for ex in generate("position", 80)} == set(POSITIONS)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_answer_candidate_is_the_hole_s_pixels(seed: int) -> None:
    ex = make_example("masked_patch", seed)
    images = dict(ex.images)
    gt = ex.ground_truth
    x0, y0, x1, y1 = gt["hole_box"]
    assert gt["candidates"] == 4 and list(images) == ["masked", "candidate_0", "candidate_1", "candidate_2",
                                                      "candidate_3"]
    original = ex.scene.image
    assert np.array_equal(images[f"candidate_{gt['answer']}"], original[y0:y1, x0:x1])
    masked = images["masked"]
    assert (masked[y0:y1, x0:x1] == np.array(HOLE_GREY, np.uint8)).all()
    outside = np.ones(original.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(masked[outside], original[outside])
    patches = [images[f"candidate_{i}"].astype(int) for i in range(4)]
    for i in range(4):
        bx0, by0, bx1, by1 = gt["candidate_boxes"][i]
        assert np.array_equal(patches[i], original[by0:by1, bx0:bx1])
        for j in range(i + 1, 4):
            assert np.abs(patches[i] - patches[j]).mean() >= MIN_PATCH_DIFFERENCE


def test_answers_are_spread_over_candidates() -> None:
    assert {ex.ground_truth["answer"] for ex in generate("masked_patch", 30)} == {0, 1, 2, 3}


@pytest.mark.parametrize("kind", TASKS)
def test_deterministic_and_tasks_carry_images_and_answer(kind: str) -> None:
    a, b = make_example(kind, 11).to_task(), make_example(kind, 11).to_task()
    assert a.task_id == b.task_id == f"ssl-{kind}-{scene_split(11)}-11"
    assert a.ground_truth == b.ground_truth and a.messages == b.messages
    assert [p.data for p in a.attachments] == [p.data for p in b.attachments]
    assert a.ground_truth["task"] == kind and "answer" in a.ground_truth
    assert a.tools == [] and a.attachments
    for part in a.attachments:
        assert part.mime_type == "image/png" and part.image_id in a.messages[1]["content"]
        assert decode_png(part.data).shape == (part.height, part.width, 3)
    assert "<answer>" in a.messages[0]["content"] + a.messages[1]["content"]
    assert set(REWARD_SPECS[kind]) <= set(REWARD_MODULES)


def test_the_stored_answer_parses_with_the_reward_s_rules() -> None:
    for ex in generate("rotation", 3):
        assert parse_rotation(str(ex.ground_truth["answer"])).value == ex.ground_truth["answer"]
    for ex in generate("jigsaw", 3):
        answer = ex.ground_truth["answer"]
        assert parse_jigsaw(" ".join(map(str, answer)), 4).value == tuple(answer)
    for ex in generate("position", 3):
        assert parse_position(ex.ground_truth["answer"]).value == ex.ground_truth["answer"]
    for ex in generate("masked_patch", 3):
        assert parse_candidate(str(ex.ground_truth["answer"]), 4).value == ex.ground_truth["answer"]


def test_the_split_is_fixed_by_the_scene() -> None:
    train, heldout = scene_seeds("train", 300), scene_seeds("heldout", 30)
    assert not set(train) & set(heldout)
    assert 15 <= len([s for s in range(300) if scene_split(s) == "heldout"]) <= 45     # about one in ten
    assert scene_seeds("train", 5, start=100)[0] >= 100
    assert scene_seeds("train", 300) == train                                         # fixed, not drawn per run
    heldout_images = {make_scene(s).image.tobytes() for s in heldout[:10]}
    assert not heldout_images & {make_scene(s).image.tobytes() for s in train[:100]}
    for kind in TASKS:
        assert all(ex.split == "heldout" and ex.ground_truth["split"] == "heldout"
                   for ex in generate(kind, 3, "heldout"))
    with pytest.raises(ConfigError, match="unknown split"):
        scene_seeds("test", 1)


def test_config_errors_say_how_to_fix() -> None:
    with pytest.raises(ConfigError, match="dividing the size 128"):
        SslConfig(grid=3)
    with pytest.raises(ConfigError, match="use 2 to 8"):
        SslConfig(candidates=1)
    with pytest.raises(ConfigError, match="unknown SSL task"):
        make_example("colourise", 0)


def test_files_round_trip_with_images(tmp_path: Path) -> None:
    examples = list(generate("masked_patch", 3))
    path = tmp_path / "masked.jsonl"
    assert write_tasks(examples, path) == 3
    tasks = read_tasks(path)
    assert [t.task_id for t in tasks] == [e.task_id for e in examples]
    for task, ex in zip(tasks, examples, strict=True):
        assert task.ground_truth == ex.ground_truth
        assert task.attachments == ex.to_task().attachments
        assert np.array_equal(image_of(task, "masked"), dict(ex.images)["masked"])
    line = json.loads(path.read_text().splitlines()[0])
    assert line["reward_spec"] == {"ssl_masked_patch": 1.0} and line["scene"]["seed"] == examples[0].scene.seed
    assert (tmp_path / line["attachments"][0]["path"]).is_file()


def test_cli_writes_tasks_and_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--task", "all", "--n", "2", "--split", "heldout", "--out", str(tmp_path)])
    for kind in TASKS:
        tasks = read_tasks(tmp_path / f"{kind}_heldout.jsonl")
        assert len(tasks) == 2 and all(t.ground_truth["split"] == "heldout" for t in tasks)
    assert "chance level 0.25" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--task", "jigsaw", "--grid", "3", "--out", str(tmp_path)])
