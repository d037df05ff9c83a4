"""The image family's plain modules: headers read without decoding, boxes resolved to whole
pixels, results fitted to the output limits, and the decoded-image cache's budget."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from conftest import encoded, pattern

from rlyard.domain import ImagePart
from tool_servers.image import ops
from tool_servers.image.boxes import BoxError, clamp_box, resolve_box
from tool_servers.image.codec import DecodedCache, DecodeError, decode, encode_within
from tool_servers.image.header import HeaderError, read_header
from tool_servers.image.settings import ImageSettings


@pytest.mark.parametrize(("ext", "params", "fmt"), [
    (".png", (), "png"), (".jpg", (), "jpeg"), (".webp", (64, 101), "webp"), (".webp", (64, 80), "webp"),
])
def test_headers_give_the_size_opencv_decodes(ext: str, params: tuple[int, ...], fmt: str) -> None:
    header = read_header(encoded(pattern(37, 23), ext, *params))
    assert (header.format, header.width, header.height) == (fmt, 37, 23)


def test_a_progressive_jpeg_with_leading_segments_is_read() -> None:
    data = encoded(pattern(300, 200), ".jpg", 2, 1)    # IMWRITE_JPEG_PROGRESSIVE
    assert (read_header(data).width, read_header(data).height) == (300, 200)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "it has no bytes"),
    (b"GIF89a\x01\x00\x01\x00", "it is not PNG, JPEG or WebP (it is GIF)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG header is truncated"),
    (b"\xff\xd8\xff\xda\x00\x02", "no frame header (SOF) before the scan"),
    (b"\xff\xd8\x00", "JPEG markers are corrupt"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WebP header is truncated"),
])
def test_headers_that_are_not_images_say_why(data: bytes, message: str) -> None:
    with pytest.raises(HeaderError, match=message.replace("(", "\\(").replace(")", "\\)")):
        read_header(data)


def test_decode_checks_the_pixel_limit_before_decoding() -> None:
    data = encoded(pattern(100, 100))
    assert decode(data, 10_000).shape == (100, 100, 3)
    with pytest.raises(DecodeError, match="100x100 = 10,000 pixels, over this server's limit of 9,999"):
        decode(data, 9_999)


def test_boxes_resolve_to_whole_pixels_or_say_what_to_change() -> None:
    assert resolve_box([0, 0, 1, 1], "normalized", 640, 480) == (0, 0, 640, 480)
    assert resolve_box([0.1, 0.1, 0.2, 0.3], "normalized", 100, 50) == (10, 5, 20, 15)
    assert resolve_box([5.5, 5.5, 5.6, 5.6], "pixels", 10, 10) == (5, 5, 6, 6)      # never empty
    assert resolve_box([0, 0, 10, 10], "pixels", 10, 10) == (0, 0, 10, 10)
    for box, message in (([5, 0, 5, 1], "zero width"), ([0, 9, 1, 2], "inverted"), ([-1, 0, 2, 2], "negative"),
                         ([0, 0, 11, 2], "reaches outside"), ([0, 0, float("nan"), 1], "not a finite number")):
        with pytest.raises(BoxError, match=message):
            resolve_box(box, "pixels", 10, 10)
    assert clamp_box([-0.5, 2.0000001, 10.4, 9.9999999], 10, 10) == (0, 2, 10, 10)


def test_rotated_canvas_sizes() -> None:
    assert ops.rotated_size(64, 48, 90) == (48, 64) and ops.rotated_size(64, 48, -180) == (64, 48)
    assert ops.rotated_size(64, 48, 45) == (80, 80)
    assert ops.rotate(pattern(64, 48), 45).shape == (80, 80, 3)


def test_encode_within_fits_side_and_bytes() -> None:
    noise = np.random.default_rng(1).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    fitted = encode_within(noise, ImageSettings(max_output_side=200, max_output_bytes=20_000))
    assert (fitted.width, fitted.height) <= (200, 120) and len(fitted.data) <= 20_000
    assert fitted.mime_type == "image/jpeg" and len(fitted.notes) == 2
    plain = encode_within(pattern(50, 40), ImageSettings())
    assert (plain.width, plain.height, plain.mime_type, plain.notes) == (50, 40, "image/png", ())


def test_the_decoded_cache_keeps_its_budget_and_forgets_closed_images() -> None:
    pixels = [np.zeros((10, 10, 3), np.uint8) for _ in range(3)]          # 300 bytes each
    parts = [ImagePart(b"x", "image/png", 10, 10, f"i{k}") for k in range(3)]
    cache = DecodedCache(700)
    for part, px in zip(parts, pixels, strict=True):
        cache.put(part, px)
    assert cache.get(parts[0]) is None and cache.get(parts[2]) is pixels[2] and cache.size_bytes == 600
    assert not pixels[2].flags.writeable
    same_bytes = ImagePart(b"x", "image/png", 10, 10, "i2")               # equal, but another image
    assert cache.get(same_bytes) is None
    del parts[2], part                  # the session that held it is closed
    gc.collect()
    assert len(cache) == 1 and cache.size_bytes == 300
    cache.put(ImagePart(b"y", "image/png", 99, 99, "big"), np.zeros((20, 20, 3), np.uint8))   # over the budget
    assert len(cache) == 1
