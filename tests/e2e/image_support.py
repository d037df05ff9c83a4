"""What the image-tools e2e tests share (the launched service and the one under Compose): a PNG
whose pixels say where they are, decoding a tool's image, one session's crop and revisit checked
pixel for pixel, and the server's tool-call counters."""

from __future__ import annotations

import urllib.request

import cv2
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from rlyard.client import ToolClient
from rlyard.domain import ImagePart, TextPart

IMAGE_TOOLS = {"crop", "zoom", "rotate", "flip", "enhance", "revisit", "confirm"}


def pattern(width: int, height: int) -> np.ndarray:
    # every pixel says where it is (blue x mod 251, green y mod 241), so a crop's offset shows
    x = np.arange(width)[None, :]
    y = np.arange(height)[:, None]
    return np.stack([np.broadcast_to(x % 251, (height, width)), np.broadcast_to(y % 241, (height, width)),
                     np.broadcast_to((x + 3 * y) % 256, (height, width))], axis=-1).astype(np.uint8)


def png(image: np.ndarray, image_id: str) -> ImagePart:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return ImagePart(buf.tobytes(), "image/png", image.shape[1], image.shape[0], image_id)


def pixels(part: ImagePart) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(part.data, np.uint8), cv2.IMREAD_COLOR)


def tool_calls(metrics_port: int) -> dict[tuple[str, str], float]:
    """rlyard_tool_calls_total of the server, by (tool, outcome)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.labels["tool"], s.labels["outcome"]): s.value
            for family in text_string_to_metric_families(text) if family.name == "rlyard_tool_calls"
            for s in family.samples if s.name == "rlyard_tool_calls_total"}


async def crop_and_revisit(target: str) -> None:
    """On the image tool server at ``target``: the seven tools listed; a session opened with a PNG;
    its crop is the region pixel for pixel; the crop lives in the session (revisit follows it back
    to the photo); an unknown image is a tool error naming the session's images; the session closes."""
    photo = pattern(320, 240)
    async with ToolClient(target) as client:
        assert {t.name for t in await client.list_tools(timeout=10)} == IMAGE_TOOLS
        sid = await client.open_session({}, attachments=[png(photo, "photo")], timeout=10)
        crop = await client.call_tool("crop", {"image_id": "photo", "box": [40, 30, 200, 130]},
                                      session_id=sid, timeout=10)
        assert not crop.is_error, crop.content
        text, image = crop.content
        assert isinstance(text, TextPart) and "crop-1" in text.text
        assert isinstance(image, ImagePart) and (image.width, image.height) == (160, 100)
        assert np.array_equal(pixels(image), photo[30:130, 40:200])      # the region, pixel for pixel
        assert crop.structured["image_id"] == "crop-1" and crop.structured["box"] == [40, 30, 200, 130]
        back = await client.call_tool("revisit", {"image_id": "crop-1", "box": [10, 10, 20, 30]},
                                      session_id=sid, timeout=10)
        assert not back.is_error, back.content
        assert back.structured["source_image_id"] == "photo" and back.structured["source_box"] == [50, 40, 60, 60]
        assert np.array_equal(pixels(back.content[1]), photo[40:60, 50:60])   # type: ignore[arg-type]
        wrong = await client.call_tool("crop", {"image_id": "nope", "box": [0, 0, 1, 1]}, session_id=sid,
                                       timeout=10)
        assert wrong.is_error and "crop-1, photo" in wrong.content[0].text   # type: ignore[union-attr]
        assert await client.close_session(sid, timeout=10)
