"""Drawing the synthetic scenes: the background of a seed, the shapes and the signs.

The one definition of how a scene is drawn, shared by the generator (``envs.vision.scenes``) and
the rewards that render a description and compare it with the original (``viper_image``,
``viper_instance``): the same description drawn onto the background of the same seed gives the
same pixels. Needs the ``image`` extra (numpy, OpenCV); nothing in the core imports this module.
"""

from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]                     # (x0, y0, x1, y1), exclusive ends

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
COLOURS: dict[str, tuple[int, int, int]] = {   # RGB
    "red": (214, 39, 40), "orange": (255, 127, 14), "yellow": (240, 210, 40), "purple": (148, 60, 189),
    "pink": (247, 120, 190), "blue": (31, 80, 200), "white": (245, 245, 245), "black": (25, 25, 25),
    "brown": (140, 86, 45), "cyan": (23, 190, 207),
}
SIGN_COLOURS = ("white", "yellow")
INK = "black"
POST = (90, 70, 50)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _gradient(rows: int, width: int, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    t = np.linspace(0.0, 1.0, rows, dtype=np.float64)[:, None, None]
    return np.broadcast_to(top * (1 - t) + bottom * t, (rows, width, 3)).copy()


def _sky_and_ground(rng: np.random.Generator, height: int, width: int, horizon: int) -> np.ndarray:
    sky_top = np.array([30, 70, 170]) + rng.integers(-20, 21, 3)
    sky_bottom = np.array([170, 205, 240]) + rng.integers(-15, 16, 3)
    ground_top = np.array([110, 170, 70]) + rng.integers(-25, 26, 3)
    ground_bottom = np.array([60, 95, 35]) + rng.integers(-20, 21, 3)
    canvas = np.concatenate([_gradient(horizon, width, sky_top, sky_bottom),
                             _gradient(height - horizon, width, ground_top, ground_bottom)])
    # Texture: faint noise in the sky, coarser noise on the ground.
    noise = rng.normal(0.0, 1.0, (height, width, 1))
    canvas += noise * np.where(np.arange(height) < horizon, 3.0, 9.0)[:, None, None]
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def _decorate(rng: np.random.Generator, image: np.ndarray, horizon: int) -> None:
    """Clouds and sometimes a sun in the sky; grass strokes on the ground."""
    height, width = image.shape[:2]
    if rng.random() < 0.6:
        r = int(rng.integers(width // 20 + 2, width // 10 + 3))
        centre = (int(rng.integers(r, width - r)), int(rng.integers(r, max(r + 1, horizon // 2))))
        cv2.circle(image, centre, r, (250, 220, 90), -1, cv2.LINE_AA)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = int(rng.integers(0, width)), int(rng.integers(2, max(3, horizon - 6)))
        for _ in range(3):
            axes = (int(rng.integers(width // 16 + 2, width // 8 + 3)), int(rng.integers(2, width // 24 + 4)))
            offset = int(rng.integers(-width // 12, width // 12 + 1))
            cv2.ellipse(image, (cx + offset, cy), axes, 0, 0, 360, (240, 243, 248), -1, cv2.LINE_AA)
    for _ in range(width // 2):
        x, y = int(rng.integers(0, width)), int(rng.integers(horizon + 2, height))
        shade = (int(rng.integers(30, 70)), int(rng.integers(90, 140)), int(rng.integers(20, 50)))
        cv2.line(image, (x, y), (x + int(rng.integers(-1, 2)), y - int(rng.integers(2, 5))), shade, 1)


def draw_background(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, int]:
    """The sky, the ground and their decoration, drawn with ``rng``: ``(image, horizon)``, where
    ``horizon`` is the first row of the ground. A scene's generator draws the rest with the same
    ``rng`` afterwards."""
    horizon = round(height * float(rng.uniform(0.42, 0.58)))
    image = _sky_and_ground(rng, height, width, horizon)
    _decorate(rng, image, horizon)
    return image, horizon


def background(seed: int, width: int, height: int) -> np.ndarray:
    """The background of the scene of ``seed``: the scene with no sign and no shape drawn."""
    image, _ = draw_background(np.random.default_rng(seed), width, height)
    return image


def polygon(shape: str, cx: int, cy: int, r: int) -> np.ndarray:
    """The vertices of a polygonal shape of circumradius ``r`` (upright: a triangle points up)."""
    if shape == "square":
        angles, radii = np.deg2rad([225, 315, 45, 135]), np.full(4, r)
    elif shape == "diamond":
        angles, radii = np.deg2rad([270, 0, 90, 180]), np.full(4, r)
    elif shape == "triangle":
        angles, radii = np.deg2rad([270, 30, 150]), np.full(3, r)
    elif shape == "hexagon":
        angles, radii = np.deg2rad(np.arange(0, 360, 60)), np.full(6, r)
    elif shape == "star":
        angles = np.deg2rad(np.arange(270, 630, 36))
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return np.round(points).astype(np.int32)


def shape_box(cx: int, cy: int, r: int) -> Box:
    """The box of a shape of centre ``(cx, cy)`` and radius ``r``: its side (the size) is 2r + 1."""
    return (cx - r, cy - r, cx + r + 1, cy + r + 1)


def draw_shape(image: np.ndarray, shape: str, colour: str, cx: int, cy: int, r: int) -> None:
    """A filled shape with a darker anti-aliased outline, in place."""
    fill = COLOURS[colour]
    outline = tuple(max(0, c - 90) for c in fill)
    if shape == "circle":
        cv2.circle(image, (cx, cy), r, fill, -1, cv2.LINE_AA)
        cv2.circle(image, (cx, cy), r, outline, 1, cv2.LINE_AA)
        return
    points = polygon(shape, cx, cy, r)
    cv2.fillPoly(image, [points], fill, cv2.LINE_AA)
    cv2.polylines(image, [points], True, outline, 1, cv2.LINE_AA)


def font_scale(width: int) -> float:
    """The scale of a sign's text on an image ``width`` pixels wide."""
    return max(0.3, width / 320)


def sign_size(text: str, width: int) -> tuple[int, int]:
    """The ``(width, height)`` of the sign that holds ``text`` on an image ``width`` pixels wide."""
    (tw, th), base = cv2.getTextSize(text, FONT, font_scale(width), 1)
    return tw + 6, th + base + 6


def draw_sign(image: np.ndarray, text: str, box: Box, colour: str, scale: float, ink: str = INK) -> None:
    """A sign of ``colour`` filling ``box``, on a post below it, with ``text`` written upright, in place."""
    x0, y0, x1, y1 = box
    height = image.shape[0]
    cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), COLOURS[colour], -1)
    # A post below the sign: one more cue of which way is down.
    cv2.line(image, ((x0 + x1) // 2, y1), ((x0 + x1) // 2, min(height - 1, y1 + 6)), POST, 2)
    (_, th), _ = cv2.getTextSize(text, FONT, scale, 1)
    cv2.putText(image, text, (x0 + 3, y0 + 3 + th), FONT, scale, COLOURS[ink], 1, cv2.LINE_AA)
