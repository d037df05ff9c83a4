"""Synthetic scenes: the same seed gives identical bytes, the description matches the pixels, and
the scene is upright (sky above ground), so that a rotation can be told."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from envs.vision.scenes import COLOURS, SHAPES, WORDS, decode_png, encode_png, make_scene


def test_same_seed_same_bytes_other_seed_other_scene() -> None:
    a, b = make_scene(7), make_scene(7)
    assert a.image.dtype == np.uint8 and a.image.shape == (128, 128, 3)
    assert a.image.tobytes() == b.image.tobytes()
    assert encode_png(a.image) == encode_png(b.image)
    assert a.describe() == b.describe()
    digests = {hashlib.sha256(make_scene(s).image.tobytes()).hexdigest() for s in range(20)}
    assert len(digests) == 20


def test_sizes_and_bad_arguments() -> None:
    assert make_scene(1, width=200, height=96).image.shape == (96, 200, 3)
    with pytest.raises(ValueError, match="at least 32x32"):
        make_scene(1, width=16)
    with pytest.raises(ValueError, match="non-negative"):
        make_scene(-1)


def test_png_round_trip() -> None:
    image = make_scene(3).image
    data = encode_png(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(decode_png(data), image)
    with pytest.raises(ValueError, match="not a PNG"):
        decode_png(b"not an image")


@pytest.mark.parametrize("seed", range(12))
def test_description_matches_what_is_drawn(seed: int) -> None:
    scene = make_scene(seed)
    height, width = scene.image.shape[:2]
    assert 3 <= len(scene.objects) + len(scene.texts)
    boxes = [o.box for o in scene.objects] + [t.box for t in scene.texts]
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    for i, a in enumerate(boxes):                       # nothing overlaps anything else
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    for obj in scene.objects:
        assert obj.shape in SHAPES and obj.colour in COLOURS
        assert obj.size == obj.box[2] - obj.box[0] == obj.box[3] - obj.box[1]
        x0, y0, x1, y1 = obj.box
        centre = scene.image[(y0 + y1) // 2, (x0 + x1) // 2].astype(int)
        # The shape's centre pixel has the shape's colour (antialiasing only touches its rim).
        assert np.abs(centre - np.array(COLOURS[obj.colour])).max() <= 1, obj
    for text in scene.texts:
        assert text.text in WORDS
        x0, y0, x1, y1 = text.box
        sign = scene.image[y0:y1, x0:x1].reshape(-1, 3).astype(int)
        ink = np.array(COLOURS[text.colour])
        # Some of the sign's pixels are the text's ink.
        assert (np.abs(sign - ink).max(axis=1) < 40).sum() >= 10


@pytest.mark.parametrize("seed", range(12))
def test_scenes_are_upright_sky_above_ground(seed: int) -> None:
    scene = make_scene(seed)
    image = scene.image.astype(float)
    top, bottom = image[:10], image[-10:]
    # The sky is blue (blue over green), the ground green (green over blue), whatever is drawn on them.
    assert np.median(top[..., 2] - top[..., 1]) > 20
    assert np.median(bottom[..., 1] - bottom[..., 2]) > 20
    assert 0.4 * 128 <= scene.horizon <= 0.6 * 128
