"""Synthetic scenes drawn from a seed: a sky and a ground, textures, shapes and short texts.

A scene is an RGB image (``uint8``, H×W×3) and its description: every shape's class, colour,
box and size, and every text's string, box and sign colour. The same seed gives the same bytes
(numpy's PCG64 and OpenCV's integer drawing; no clock, no global state). The drawing itself is
``rlyard.scene_render``, with which the ``viper_*`` rewards draw a description to compare it.

What makes the SSL tasks decidable: the scene is upright by construction — a sky (a vertical
gradient, lighter towards the horizon, with clouds and sometimes a sun) above a ground (a darker
gradient with noise and grass strokes), shapes resting in the lower part and texts on signs,
written upright — so a rotation changes where the sky is; and every pixel carries seeded noise, so
no two tiles or patches of a scene are equal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from rlyard.scene_render import (
    COLOURS,
    INK,
    SHAPES,
    SIGN_COLOURS,
    draw_background,
    draw_shape,
    draw_sign,
    font_scale,
    shape_box,
    sign_size,
)

__all__ = ["COLOURS", "MIN_SIZE", "SHAPES", "WORDS", "Scene", "SceneObject", "SceneText", "decode_png",
           "encode_png", "make_scene"]

WORDS = ("STOP", "CAFE", "EXIT", "OPEN", "PARK", "SALE", "BUS 7", "ZOO", "INN", "TAXI", "SHOP", "GATE 3")
MIN_SIZE = 32


@dataclass(frozen=True)
class SceneObject:
    """A shape: class, colour name, box ``(x0, y0, x1, y1)`` (exclusive ends) and size in pixels."""

    shape: str
    colour: str
    box: tuple[int, int, int, int]
    size: int


@dataclass(frozen=True)
class SceneText:
    """A short upright text on a sign: the string, the sign's box, the text's colour name and the
    sign's colour name."""

    text: str
    box: tuple[int, int, int, int]
    colour: str
    sign: str = "white"


@dataclass(frozen=True)
class Scene:
    """An image and what is drawn on it."""

    seed: int
    image: np.ndarray               # uint8, H×W×3, RGB
    horizon: int                    # the first row of the ground
    objects: tuple[SceneObject, ...]
    texts: tuple[SceneText, ...]

    def describe(self) -> dict[str, Any]:
        """The structured description, as JSON-able data."""
        height, width = self.image.shape[:2]
        return {"seed": self.seed, "width": width, "height": height, "horizon": self.horizon,
                "objects": [asdict(o) for o in self.objects], "texts": [asdict(t) for t in self.texts]}


def _overlaps(box: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]], gap: int = 2) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + gap and b[0] < x1 + gap and y0 < b[3] + gap and b[1] < y1 + gap for b in taken)


def make_scene(seed: int, width: int = 128, height: int = 128, *, n_objects: tuple[int, int] = (3, 5),
               n_texts: tuple[int, int] = (1, 2)) -> Scene:
    """Draw the scene of ``seed``: the same seed and size give identical pixels.

    Raises:
        ValueError: a side under ``MIN_SIZE`` pixels, or a negative seed.
    """
    if width < MIN_SIZE or height < MIN_SIZE:
        raise ValueError(f"a scene is at least {MIN_SIZE}x{MIN_SIZE} pixels, got {width}x{height}")
    if seed < 0:
        raise ValueError(f"a scene's seed is a non-negative integer, got {seed}")
    rng = np.random.default_rng(seed)
    image, horizon = draw_background(rng, width, height)
    taken: list[tuple[int, int, int, int]] = []
    scale = font_scale(width)
    texts = []
    for _ in range(int(rng.integers(n_texts[0], n_texts[1] + 1))):
        word = str(rng.choice(WORDS))
        box_w, box_h = sign_size(word, width)
        for _ in range(50):
            x0 = int(rng.integers(1, max(2, width - box_w - 1)))
            y0 = int(rng.integers(max(1, horizon - box_h // 2), max(2, height - box_h - 1)))
            box = (x0, y0, x0 + box_w, y0 + box_h)
            if box[2] <= width and box[3] <= height and not _overlaps(box, taken):
                break
        else:
            continue
        sign = SIGN_COLOURS[0] if rng.random() < 0.5 else SIGN_COLOURS[1]
        draw_sign(image, word, box, sign, scale)
        taken.append(box)
        texts.append(SceneText(word, box, INK, sign))
    objects = []
    for _ in range(int(rng.integers(n_objects[0], n_objects[1] + 1))):
        shape = str(rng.choice(SHAPES))
        colour = str(rng.choice(list(COLOURS)))
        r = int(rng.integers(max(4, min(width, height) // 20), max(6, min(width, height) // 9) + 1))
        for _ in range(50):
            cx = int(rng.integers(r + 1, width - r - 1))
            # Shapes stand in the lower part of the scene, most of them on the ground.
            cy = int(rng.integers(max(r + 1, horizon - 2 * r), height - r - 1))
            box = shape_box(cx, cy, r)
            if not _overlaps(box, taken):
                break
        else:
            continue
        draw_shape(image, shape, colour, cx, cy, r)
        taken.append(box)
        objects.append(SceneObject(shape, colour, box, 2 * r + 1))
    return Scene(seed, image, horizon, tuple(objects), tuple(texts))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB ``uint8`` image (deterministic: the same pixels give the same bytes)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {image.shape} as PNG")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """The RGB ``uint8`` image of PNG bytes."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a PNG (or any image OpenCV reads)")
    return np.ascontiguousarray(image[:, :, ::-1])
