"""What the image tools share: the family's settings and decoded-image cache on a server, finding
and decoding a session's image by id, keeping a tool's output as a new image of the session, and
the result the model reads (text, the image within the output limits, structured data)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
from pydantic import BaseModel

from rlyard.domain import ImagePart, TextPart, ToolResult
from rlyard.errors import InvalidArgument, ResourceExhausted
from tool_servers.image import ops
from tool_servers.image.boxes import BoxError, PixelBox, Units, clamp_box, resolve_box
from tool_servers.image.codec import DecodedCache, DecodeError, Encoded, check_header, decode, encode, encode_within
from tool_servers.image.settings import ImageSettings
from tool_servers.registry import ToolContext
from tool_servers.session import Session

_LOCK = threading.Lock()
_ORIGINS = "image.origins"      # session.state: derived image id → Origin
_COUNTER = "image.counter"      # session.state: the number of the next image a tool makes
_LISTED_IDS = 20                # ids an unknown-id message lists at most


class ToolError(Exception):
    """A mistake of the model (a bad box, an unknown image): answered as an ``is_error`` result."""


@dataclass(frozen=True)
class Origin:
    """Where a crop or zoom came from: pixel (x, y) of the image is (ox + x·sx, oy + y·sy) of ``parent``."""

    parent: str
    ox: float
    oy: float
    sx: float
    sy: float

    def to_parent(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """``box`` in the parent's pixels."""
        x1, y1, x2, y2 = box
        return (self.ox + x1 * self.sx, self.oy + y1 * self.sy, self.ox + x2 * self.sx, self.oy + y2 * self.sy)


def settings(ctx: ToolContext) -> ImageSettings:
    """The image family's settings on this server (and OpenCV's thread count set from them, once)."""
    s = ctx.family(ImageSettings)
    with _LOCK:
        if not ctx.shared.get("image.threads_set"):
            cv2.setNumThreads(s.opencv_threads)
            ctx.shared["image.threads_set"] = True
    return s


def cache(ctx: ToolContext) -> DecodedCache:
    """This server's cache of decoded images."""
    budget = settings(ctx).decoded_cache_bytes   # before taking the lock, which settings() takes too
    with _LOCK:
        found = ctx.shared.get("image.cache")
        if found is None:
            found = ctx.shared["image.cache"] = DecodedCache(budget)
        return found  # type: ignore[no-any-return]


def check_attachments(images: Sequence[ImagePart], max_pixels: int) -> None:
    """INVALID_ARGUMENT for an attachment the image tools cannot read, read from its header alone:
    not PNG, JPEG or WebP, a type or size that differs from what the request declares, or more
    pixels than ``max_pixels`` (a decompression bomb is refused here, never decoded)."""
    for image in images:
        try:
            header = check_header(image.data, max_pixels)
        except DecodeError as exc:
            raise InvalidArgument(f"attachment {image.image_id!r} cannot be used by the image tools: {exc}") from None
        if header.mime_type != image.mime_type:
            raise InvalidArgument(f"attachment {image.image_id!r} is declared {image.mime_type} but its bytes are "
                                  f"{header.mime_type}")
        if (header.width, header.height) != (image.width, image.height):
            raise InvalidArgument(f"attachment {image.image_id!r} is declared {image.width}x{image.height} but its "
                                  f"header gives {header.width}x{header.height}")


def image_of(session: Session, image_id: str) -> ImagePart:
    """The session's image ``image_id``; ``ToolError`` listing the ids it has when unknown."""
    found = session.images.get(image_id)
    if found is not None:
        return found
    ids = sorted(session.images)
    if not ids:
        raise ToolError(f"no image {image_id[:64]!r}: this session holds no images")
    listed = ", ".join(ids[:_LISTED_IDS]) + (f", … ({len(ids) - _LISTED_IDS} more)" if len(ids) > _LISTED_IDS else "")
    raise ToolError(f"no image {image_id[:64]!r} in this session; its images are: {listed}")


def pixels_of(ctx: ToolContext, image: ImagePart) -> np.ndarray:
    """The decoded pixels of a session's image (cached); blocking: call on a worker thread.

    Raises:
        InvalidArgument: its bytes do not decode (an attachment's data is broken: not the model's fault).
    """
    decoded = cache(ctx)
    found = decoded.get(image)
    if found is not None:
        return found
    try:
        pixels = decode(image.data, settings(ctx).max_pixels)
    except DecodeError as exc:
        raise InvalidArgument(f"image {image.image_id!r} of the session cannot be used: {exc}") from None
    decoded.put(image, pixels)
    return pixels


def origin_root(session: Session, image_id: str, box: Sequence[float]) -> tuple[str, tuple[float, ...], list[str]]:
    """``box`` of image ``image_id`` followed back through crops and zooms to the image they came
    from: that image's id, the box in its pixels, and the ids passed on the way."""
    origins: dict[str, Origin] = session.state.get(_ORIGINS, {})
    path: list[str] = []
    current, region = image_id, tuple(float(v) for v in box)
    while current in origins and len(path) <= len(origins):
        origin = origins[current]
        region = origin.to_parent(region)
        path.append(current)
        current = origin.parent
    return current, region, path


@dataclass(frozen=True)
class Output:
    """What a tool made on a worker thread: pixels encoded for the session and for the model."""

    width: int
    height: int
    stored: bytes | None        # full-size bytes to keep in the session (None: kept nowhere)
    mime_type: str
    shown: Encoded              # within the output limits
    pixels: np.ndarray


def make_output(ctx: ToolContext, pixels: np.ndarray, *, keep: bool) -> Output:
    """Encode ``pixels``: at full size in the output format when ``keep`` (a new image of the
    session), and within the output limits for the model (the same bytes when they fit)."""
    s = settings(ctx)
    height, width = pixels.shape[:2]
    stored = encode(pixels, s.output_format, s.jpeg_quality) if keep else None
    mime = "image/png" if s.output_format == "png" else "image/jpeg"
    return Output(width, height, stored, mime, encode_within(pixels, s, stored), pixels)


def keep_image(ctx: ToolContext, session: Session, tool: str, out: Output, origin: Origin | None) -> str:
    """Add ``out`` to the session under a new id (``<tool>-<n>``); ``ToolError`` when the session
    is at its image limit. Runs on the event loop, so that ids are handed out in order."""
    assert out.stored is not None
    number = session.state.get(_COUNTER, 1)
    while f"{tool}-{number}" in session.images:
        number += 1
    image_id = f"{tool}-{number}"
    try:
        session.add_image(ImagePart(out.stored, out.mime_type, out.width, out.height, image_id))
    except ResourceExhausted as exc:
        raise ToolError(f"{exc.message}; no new image was kept: use revisit to look at a region without "
                        "keeping it, or work on the images already made") from None
    session.state[_COUNTER] = number + 1
    if origin is not None:
        session.state.setdefault(_ORIGINS, {})[image_id] = origin
    cache(ctx).put(session.images[image_id], out.pixels)
    return image_id


def result(text: str, out: Output, image_id: str, structured: Mapping[str, Any]) -> ToolResult:
    """The model's result: ``text`` (and what was done to fit the limits), then the image."""
    shown = out.shown
    lines = [text]
    if shown.changed:
        lines.append("The image below was " + "; ".join(shown.notes) + f"; the full image is {out.width}x{out.height}"
                     " and boxes refer to the full image's pixels.")
    part = ImagePart(shown.data, shown.mime_type, shown.width, shown.height, image_id)
    returned = {"width": shown.width, "height": shown.height, "mime_type": shown.mime_type, "bytes": len(shown.data),
                "downscaled": (shown.width, shown.height) != (out.width, out.height), "reencoded": shown.changed}
    return ToolResult(content=(TextPart("\n".join(lines)), part),
                      structured={**structured, "width": out.width, "height": out.height, "returned": returned})


def box_list(box: PixelBox) -> list[int]:
    """A pixel box as JSON."""
    return list(box)


class ImageTool:
    """Base of the image tools: the model's mistakes (``ToolError``, ``BoxError``) become
    ``is_error`` results; attachments are checked from their headers when a session opens."""

    name: ClassVar[str]
    description: ClassVar[str]
    Args: ClassVar[type[BaseModel]]

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx
        self.settings = settings(ctx)

    def validate_context(self, context: Mapping[str, str]) -> None:
        """The image tools need nothing from the context."""

    def validate_images(self, images: Sequence[ImagePart]) -> None:
        """INVALID_ARGUMENT for an attachment these tools cannot read (see ``check_attachments``)."""
        check_attachments(images, self.settings.max_pixels)

    async def call(self, args: Any, session: Session) -> ToolResult:
        """Run the tool; the model's mistakes are results with ``is_error``."""
        try:
            return await self.run(args, session)
        except (ToolError, BoxError) as exc:
            return ToolResult.error(f"{self.name}: {exc}")

    async def run(self, args: Any, session: Session) -> ToolResult:
        """The tool's work (a subclass's)."""
        raise NotImplementedError


async def full_resolution_region(tool: ImageTool, image_id: str, box: Sequence[float], units: Units,
                                 session: Session) -> tuple[str, Output, dict[str, Any]]:
    """Region ``box`` of image ``image_id`` at full resolution: followed back through crops and
    zooms to the image they came from and cut from it (a zoom's interpolated pixels are not what
    the model sees again). Returns the text describing it, the output (kept nowhere) and the
    structured data."""
    image = image_of(session, image_id)
    box_px = resolve_box(box, units, image.width, image.height)
    root_id, region, path = origin_root(session, image_id, box_px)
    root = session.images[root_id]
    root_box = clamp_box(region, root.width, root.height)

    def work() -> Output:
        return make_output(tool.ctx, ops.crop(pixels_of(tool.ctx, root), root_box), keep=False)

    out = await tool.ctx.run_blocking(work)
    text = f"region {box_list(box_px)} of image {image_id}"
    if path:
        text += f" (it came from image {root_id}: region {box_list(root_box)} of it)"
    text += f" at full resolution, {out.width}x{out.height} pixels (not kept as a new image)."
    structured = {"image_id": image_id, "box": box_list(box_px), "source_image_id": root_id,
                  "source_box": box_list(root_box)}
    return text, out, structured
