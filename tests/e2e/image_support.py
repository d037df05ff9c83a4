"""What the image-tools e2e tests share (the launched service and the one under Compose): a PNG
whose pixels say where they are, decoding a tool's image, and the server's tool-call counters."""

from __future__ import annotations

import urllib.request

import cv2
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from rlyard.domain import ImagePart


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
