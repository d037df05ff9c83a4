"""The OpenCV operations of the image tools, as plain functions of pixel arrays (BGR, uint8):
what the tools run on the server's worker threads, and what the bench runs in process."""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np

from tool_servers.image.boxes import PixelBox
from tool_servers.image.codec import resize_to

FlipDirection = Literal["horizontal", "vertical", "both"]
_FLIP_CODES = {"horizontal": 1, "vertical": 0, "both": -1}
_QUARTER_TURNS = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}


def crop(pixels: np.ndarray, box: PixelBox) -> np.ndarray:
    """The region ``box`` of ``pixels``, as an array of its own."""
    left, top, right, bottom = box
    return np.ascontiguousarray(pixels[top:bottom, left:right])


def zoom_size(box: PixelBox, factor: float, max_side: int) -> tuple[int, int]:
    """The size of region ``box`` enlarged ``factor`` times, its longer side capped at ``max_side``."""
    width, height = box[2] - box[0], box[3] - box[1]
    scale = min(factor, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def zoom(pixels: np.ndarray, box: PixelBox, size: tuple[int, int]) -> np.ndarray:
    """Region ``box`` of ``pixels`` resized to ``size`` (width, height)."""
    return resize_to(crop(pixels, box), *size)


def rotated_size(width: int, height: int, degrees: float) -> tuple[int, int]:
    """The size of the canvas that holds a ``width`` × ``height`` image turned by ``degrees``."""
    turn = degrees % 360
    if turn in (0, 180):
        return width, height
    if turn in (90, 270):
        return height, width
    c, s = abs(math.cos(math.radians(turn))), abs(math.sin(math.radians(turn)))
    return math.ceil(width * c + height * s - 1e-9), math.ceil(width * s + height * c - 1e-9)


def rotate(pixels: np.ndarray, degrees: float) -> np.ndarray:
    """``pixels`` turned counter-clockwise by ``degrees``: quarter turns exactly, other angles on a
    canvas large enough to hold the whole image (corners filled black)."""
    turn = degrees % 360
    if turn == 0:
        return pixels.copy()
    if turn in _QUARTER_TURNS:
        return cv2.rotate(pixels, _QUARTER_TURNS[int(turn)])
    height, width = pixels.shape[:2]
    new_w, new_h = rotated_size(width, height, turn)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), turn, 1.0)
    matrix[0, 2] += (new_w - width) / 2
    matrix[1, 2] += (new_h - height) / 2
    return cv2.warpAffine(pixels, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def flip(pixels: np.ndarray, direction: FlipDirection) -> np.ndarray:
    """``pixels`` mirrored left-right (``horizontal``), upside down (``vertical``) or both."""
    return cv2.flip(pixels, _FLIP_CODES[direction])


def enhance(pixels: np.ndarray, contrast: float = 1.0, sharpen: float = 0.0, equalize: bool = False) -> np.ndarray:
    """``pixels`` with local histogram equalisation (CLAHE on lightness) if ``equalize``, contrast
    scaled by ``contrast`` around the mean brightness, then an unsharp mask of strength ``sharpen``."""
    out = pixels
    if equalize:
        lab = cv2.cvtColor(out, cv2.COLOR_BGR2LAB)
        lab[:, :, 0] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(lab[:, :, 0])
        out = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    if contrast != 1.0:
        mean = float(cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).mean())
        out = cv2.addWeighted(out, contrast, out, 0.0, mean * (1.0 - contrast))
    if sharpen > 0:
        blurred = cv2.GaussianBlur(out, (0, 0), sigmaX=2.0)
        out = cv2.addWeighted(out, 1.0 + sharpen, blurred, -sharpen, 0.0)
    return out if out is not pixels else pixels.copy()
