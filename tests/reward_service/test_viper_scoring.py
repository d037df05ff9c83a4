"""ViPER's rules by hand: the grammar, the image-level scores (F1, attributes, pixels) and the
instance-level scores, on scenes of the generator. Scene 4 holds a triangle, a hexagon (both
orange), a brown square and one sign: four items."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from envs.vision.scenes import make_scene
from envs.vision.viper_tasks import generate, make_example
from reward_service.ssl.answers import GoldError
from reward_service.viper.description import (
    MAX_DESCRIPTION_CHARS,
    Item,
    describe_gold,
    format_description,
    gold_description,
    gold_instance,
    gold_scene,
    parse_description,
    parse_instance,
)
from reward_service.viper.scoring import placed_gold, render, score_image, score_instance

W = (0.5, 0.2, 0.3)     # the default weights: F1, attributes, pixels


def scene_of(seed: int):  # type: ignore[no-untyped-def]
    return gold_scene({"task": "viper_image", "scene": make_scene(seed).describe()})


def described(seed: int, decimals: int = 2) -> list[Item]:
    parsed = parse_description(f"<answer>{format_description(gold_description(scene_of(seed)), decimals)}</answer>")
    assert parsed.value is not None, parsed.error
    return list(parsed.value)


# ------------------------------------------------------------------ rendering is the generator's drawing
@pytest.mark.parametrize("seed", range(8))
def test_the_gold_drawn_on_the_background_is_the_scene(seed: int) -> None:
    scene = scene_of(seed)
    assert np.array_equal(render(scene, [placed_gold(g) for g in scene.items]), make_scene(seed).image)


def test_every_exact_instance_answer_scores_about_1() -> None:
    for ex in generate("instance", 40):
        scene, target, crop = gold_instance(ex.ground_truth)
        result = score_instance(parse_instance(ex.answer).value, scene, target, crop)  # type: ignore[arg-type]
        assert result.attributes == 1.0 and result.pixels >= 0.95, (ex.task_id, result)


@pytest.mark.parametrize("seed", range(20))
def test_a_perfect_description_scores_about_1(seed: int) -> None:
    scene = scene_of(seed)
    for decimals, least in ((2, 0.95), (3, 0.99)):
        result = score_image(described(seed, decimals), scene)
        assert (result.precision, result.recall, result.f1, result.attributes) == (1, 1, 1, 1)
        assert result.pixels >= least, (decimals, result.pixels)
        assert result.total >= 1 - W[2] * (1 - least)
        assert result.missed == [] and result.extra == []


def test_nothing_described_scores_0() -> None:
    result = score_image([], scene_of(4))
    assert (result.f1, result.attributes, result.pixels, result.total) == (0, 0, 0, 0)
    assert len(result.missed) == 4


# ------------------------------------------------------------------ the hand-checked cases (scene 4)
def test_one_object_missing_loses_the_recall() -> None:
    scene, items = scene_of(4), described(4)
    full = score_image(items, scene)
    missing = score_image(items[1:], scene)      # the first line: the leftmost shape, the small brown square
    assert (missing.precision, missing.recall) == (1.0, 3 / 4)
    assert math.isclose(missing.f1, 6 / 7)                        # 2·1·¾ / (1 + ¾)
    assert missing.attributes == 1.0
    assert 0.5 < missing.pixels < full.pixels - 0.05              # its share of what is drawn is lost
    assert math.isclose(missing.total, 0.5 * 6 / 7 + 0.2 + 0.3 * missing.pixels)
    assert missing.missed == [format_description(items[:1])] and missing.extra == []
    assert "recall 0.750" in missing.explain() and "missed: " + format_description(items[:1]) in missing.explain()


def test_swapped_colours_lose_the_attribute_points() -> None:
    scene, items = scene_of(4), described(4)
    a, b = (i for i, it in enumerate(items) if it.colour in ("orange", "brown") and it.cls in ("triangle", "square"))
    items[a], items[b] = replace(items[a], colour=items[b].colour), replace(items[b], colour=items[a].colour)
    result = score_image(items, scene)
    assert result.f1 == 1.0                                       # still matched by class and place
    assert result.attributes == (0.5 + 0.5 + 1 + 1) / 4           # colour wrong, size right, twice
    assert result.pixels < 0.9
    assert math.isclose(result.total, 0.5 + 0.2 * 0.75 + 0.3 * result.pixels)


def test_an_extra_item_a_wrong_size_and_a_wrong_text() -> None:
    scene, items = scene_of(4), described(4)
    extra = score_image([*items, Item("circle", "red", 0.05, 0.05, 0.05)], scene)
    assert (extra.precision, extra.recall) == (4 / 5, 1.0) and math.isclose(extra.f1, 8 / 9)
    assert extra.extra == ["circle red at (0.05,0.05) size 0.05"]
    hexagon = next(i for i, it in enumerate(items) if it.cls == "hexagon")
    sign = next(i for i, it in enumerate(items) if it.is_sign)
    items[hexagon] = replace(items[hexagon], size=(items[hexagon].size or 0) * 1.5)    # IoU (27/41)² ≈ 0.43
    items[sign] = replace(items[sign], text="NOT IT")
    result = score_image(items, scene)
    assert result.f1 == 1.0 and result.attributes == (0.5 + 0.5 + 1 + 1) / 4


def test_a_far_off_position_does_not_match() -> None:
    scene, items = scene_of(4), described(4)
    items[0] = replace(items[0], x=(items[0].x or 0) + 0.3)
    result = score_image(items, scene)
    assert (result.precision, result.recall) == (3 / 4, 3 / 4) and len(result.extra) == len(result.missed) == 1


def test_the_weights_are_a_weighted_mean() -> None:
    scene, items = scene_of(4), described(4)
    only_f1 = score_image(items[1:], scene, weights=(1.0, 0.0, 0.0))
    assert math.isclose(only_f1.total, 6 / 7)
    assert math.isclose(score_image(items[1:], scene, weights=(2.0, 0.0, 2.0)).total,
                        (6 / 7 + only_f1.pixels) / 2)


# ------------------------------------------------------------------ the grammar
def test_spellings_that_read() -> None:
    text = ('<think>look</think><answer>\n- Circle RED at ( 0.31 , 0.62 ) size .12.\n'
            '2) sign Yellow "bus  7" at (0.4,0.5)\n</answer>')
    parsed = parse_description(text)
    assert parsed.value == (Item("circle", "red", 0.31, 0.62, 0.12), Item("sign", "yellow", 0.4, 0.5, None, "bus 7"))
    assert parse_instance("square blue size 0.5").value == Item("square", "blue", None, None, 0.5)


@pytest.mark.parametrize(("text", "why"), [
    ("<answer>circle red at (0.3,0.6)</answer>", "a shape needs `size s`"),
    ("<answer>oval red at (0.3,0.6) size 0.1</answer>", "'oval' is not a class"),
    ("<answer>circle mauve at (0.3,0.6) size 0.1</answer>", "'mauve' is not a colour"),
    ("<answer>circle red size 0.1</answer>", "has no position"),
    ("<answer>circle red at (1.3,0.6) size 0.1</answer>", "x 1.3 is outside 0–1"),
    ("<answer>circle red at (0.3,0.6) size 0</answer>", "size 0 is outside (0, 1]"),
    ('<answer>sign white at (0.3,0.6)</answer>', "a sign needs its text"),
    ('<answer>sign white "STOP" at (0.3,0.6) size 0.2</answer>', "a sign's size follows from its text"),
    ('<answer>circle red "A" at (0.3,0.6) size 0.2</answer>', "only a sign has a text"),
    ("<answer>there is a red circle</answer>", "is not an item; expected"),
    ("<answer>circle red at (0.3,0.6) size 0.1", "<answer> is never closed"),
    ("<answer> </answer>", "the answer is empty"),
    ("<answer>" + "circle red at (0.3,0.6) size 0.1\n" * 25 + "</answer>", "25 items described; at most 24"),
    ("<answer>" + "x" * (MAX_DESCRIPTION_CHARS + 1) + "</answer>", "characters long; at most 4000"),
    ("circle red at (0.3,0.6) size 0.1 " * 100_000, "a description is read up to 4000"),
])
def test_malformed_descriptions_score_0_and_say_why(text: str, why: str) -> None:
    parsed = parse_description(text)
    assert parsed.value is None and parsed.error.startswith("malformed: ") and why in parsed.error, parsed.error


def test_malformed_instance_answers() -> None:
    for text, why in [("circle red size 0.5\nsquare red size 0.5", "2 lines given"),
                      ("circle red", "a shape needs `size s`"), ("x" * 200, "characters long (at most 120)"),
                      ("y" * 100_000, "the answer is one line")]:
        parsed = parse_instance(text)
        assert parsed.value is None and parsed.error.startswith("malformed: ") and why in parsed.error, parsed.error


def test_bad_ground_truths_are_the_callers() -> None:
    good = make_scene(4).describe()
    with pytest.raises(GoldError, match="not 'viper_image'"):
        gold_scene({"task": "rotation", "scene": good})
    with pytest.raises(GoldError, match="no `scene`"):
        gold_scene({"task": "viper_image"})
    with pytest.raises(GoldError, match="not a box inside"):
        bad = {**good["objects"][0], "box": [0, 0, 999, 9]}
        gold_scene({"task": "viper_image", "scene": {**good, "objects": [bad]}})
    with pytest.raises(GoldError, match="does not exist"):
        gold_instance({"task": "viper_instance", "scene": good, "target": {"kind": "object", "index": 3},
                       "crop": [0, 0, 10, 10]})


# ------------------------------------------------------------------ the instance level
def _instance(seed: int, kind: str):  # type: ignore[no-untyped-def]
    """The first instance task from ``seed`` on whose target is a sign (``text``) or a shape."""
    for s in range(seed, seed + 50):
        ex = make_example("instance", s)
        if ex.ground_truth["target"]["kind"] == kind:
            scene, target, crop = gold_instance(ex.ground_truth)
            parsed = parse_instance(f"<answer>{ex.answer}</answer>")
            assert parsed.value is not None, parsed.error
            return scene, target, crop, parsed.value
    raise AssertionError(f"no {kind} target")


def gold_instance_size(scene, target, crop) -> float:  # type: ignore[no-untyped-def]
    x0, _, x1, _ = scene.items[target].box
    return float((x1 - x0) / (crop[2] - crop[0]))


def test_instance_exact_wrong_colour_class_and_size() -> None:
    scene, target, crop, gold = _instance(0, "object")
    exact = score_instance(gold, scene, target, crop)
    assert exact.attributes == 1.0 and exact.pixels >= 0.95 and exact.total >= 0.98
    colour = "red" if gold.colour != "red" else "blue"
    wrong_colour = score_instance(replace(gold, colour=colour), scene, target, crop)
    assert wrong_colour.attributes == 2 / 3 and wrong_colour.wrong == ["colour"]
    assert wrong_colour.pixels < exact.pixels
    assert math.isclose(wrong_colour.total, 0.7 * 2 / 3 + 0.3 * wrong_colour.pixels)
    shape = "star" if gold.cls != "star" else "circle"
    assert score_instance(replace(gold, cls=shape), scene, target, crop).attributes == 2 / 3
    size = gold.size or 0
    half = score_instance(replace(gold, size=size * 1.5), scene, target, crop)
    exact_size = gold_instance_size(scene, target, crop)           # 2 decimals: off by 0.005 at most, forgiven
    assert abs(size - exact_size) <= 0.005
    assert math.isclose(half.attributes, (1 + 1 + 1 - (abs(1.5 * size - exact_size) - 0.005) / exact_size) / 3)
    assert half.wrong[0].startswith("size (0.5")
    at_target = describe_gold(scene.items[target], crop)     # no position: drawn where the target is
    assert score_instance(replace(gold, x=at_target.x, y=at_target.y), scene, target, crop).pixels == exact.pixels
    assert score_instance(replace(gold, x=0.0, y=0.0), scene, target, crop).pixels < 0.5


def test_instance_sign_text() -> None:
    scene, target, crop, gold = _instance(0, "text")
    exact = score_instance(gold, scene, target, crop)
    assert exact.attributes == 1.0 and exact.pixels >= 0.95
    assert score_instance(replace(gold, text=(gold.text or "").lower()), scene, target, crop).attributes == 1.0
    wrong = score_instance(replace(gold, text="NOPE"), scene, target, crop)
    assert wrong.attributes == 2 / 3 and wrong.wrong == ["text"]
    as_shape = score_instance(Item("circle", gold.colour, size=0.5), scene, target, crop)
    assert as_shape.attributes == 1 / 3 and as_shape.pixels < 0.5
