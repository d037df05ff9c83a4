"""Boxes the model names (``[left, top, right, bottom]`` in pixels, or normalised 0..1) made into
whole-pixel regions of an image, or refused with a message that says what to change."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Units = Literal["pixels", "normalized"]
Coordinate = Annotated[float, Field(allow_inf_nan=False)]
PixelBox = tuple[int, int, int, int]


class BoxError(ValueError):
    """A box the image cannot serve; the message is for the model."""


class ImageArgs(BaseModel):
    """Arguments that name an image of the session."""

    model_config = ConfigDict(extra="forbid")

    image_id: str = Field(min_length=1, max_length=128,
                          description="the id of an image of this session (an attachment, or one a tool returned)")


class RegionArgs(ImageArgs):
    """Arguments that name a region of an image."""

    box: list[Coordinate] = Field(
        min_length=4, max_length=4,
        description="the region as [left, top, right, bottom]: pixels from the image's top-left corner, "
                    "or fractions of its width and height with units 'normalized'")
    units: Units = Field("pixels", description="'pixels' (default) or 'normalized' (0..1 of the image's size)")


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def resolve_box(box: Sequence[float], units: Units, width: int, height: int) -> PixelBox:
    """The whole-pixel region ``(left, top, right, bottom)`` of ``box`` in a ``width`` × ``height``
    image (edges rounded outwards).

    Raises:
        BoxError: a coordinate that is not finite, a box that is inverted or of zero area, a
            negative coordinate, or one past the image's edge (normalised: outside 0..1).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    shown = _fmt(box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise BoxError(f"box {shown} has a coordinate that is not a finite number")
    for lo, hi, a, b in (("left", "right", x1, x2), ("top", "bottom", y1, y2)):
        if b <= a:
            kind = "it has zero width or height" if b == a else "it is inverted"
            raise BoxError(f"box {shown}: {hi} ({b:g}) must be greater than {lo} ({a:g}) — {kind}; "
                           "a box is [left, top, right, bottom]")
    if units == "normalized":
        if min(x1, y1) < 0 or max(x2, y2) > 1:
            raise BoxError(f"box {shown}: normalized coordinates are fractions between 0 and 1 of the image's "
                           f"size; for pixels of this {width}x{height} image, set units to 'pixels'")
        x1, x2, y1, y2 = x1 * width, x2 * width, y1 * height, y2 * height
    elif min(x1, y1) < 0:
        raise BoxError(f"box {shown}: coordinates are pixels from the top-left corner and cannot be negative")
    elif x2 > width or y2 > height:
        raise BoxError(f"box {shown} reaches outside the image, which is {width}x{height} pixels: right must be "
                       f"at most {width} and bottom at most {height}")
    left, top = min(math.floor(x1), width - 1), min(math.floor(y1), height - 1)
    right, bottom = max(min(math.ceil(x2), width), left + 1), max(min(math.ceil(y2), height), top + 1)
    return left, top, right, bottom


def clamp_box(region: Sequence[float], width: int, height: int) -> PixelBox:
    """A region computed by the tools (a box followed back to its source image) as whole pixels
    inside a ``width`` × ``height`` image, edges rounded outwards, at least one pixel."""
    x1, y1, x2, y2 = region
    left = min(max(math.floor(x1 + 1e-6), 0), width - 1)
    top = min(max(math.floor(y1 + 1e-6), 0), height - 1)
    right = max(min(math.ceil(x2 - 1e-6), width), left + 1)
    bottom = max(min(math.ceil(y2 - 1e-6), height), top + 1)
    return left, top, right, bottom
