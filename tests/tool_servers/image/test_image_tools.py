"""The image tools through a real tool server on 127.0.0.1 and the real client: pixels checked
against the source pattern, new images by id, revisit back to full resolution, the output limits
(downscaled or re-encoded, and the result says so), and the batched CallTools stream."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import IMAGE_TOOLS, decoded, encoded, pattern, photo

from rlyard.client import NO_RETRY, ToolClient
from rlyard.domain import ImagePart
from rlyard.errors import ConfigError
from tool_servers.app import family_settings
from tool_servers.image.settings import ImageSettings


async def _open(start_images: Any, make_client: Any, *images: ImagePart, **settings: Any) -> tuple[ToolClient, str]:
    client: ToolClient = make_client(await start_images(**settings), retry=NO_RETRY)
    return client, await client.open_session(attachments=list(images or [photo()]))


async def test_list_tools_publishes_the_seven_tools_with_their_schemas(start_images: Any, make_client: Any) -> None:
    client: ToolClient = make_client(await start_images())
    specs = {spec.name: json.loads(spec.parameters_json_schema) for spec in await client.list_tools()}
    assert tuple(specs) == IMAGE_TOOLS
    box = specs["crop"]["properties"]["box"]
    assert (box["minItems"], box["maxItems"]) == (4, 4)
    assert specs["zoom"]["properties"]["factor"]["minimum"] == 1
    assert set(specs["confirm"]["required"]) == {"image_id", "box", "claim"}


async def test_crop_returns_the_exact_region_and_keeps_it_as_a_new_image(start_images: Any,
                                                                         make_client: Any) -> None:
    client, session = await _open(start_images, make_client)
    source = pattern(640, 480)
    first = await client.call_tool("crop", {"image_id": "photo", "box": [100, 50, 300, 250]}, session_id=session)
    assert not first.is_error, first.text
    assert first.text == "crop of image photo, region [100, 50, 300, 250]: new image crop-1, 200x200 pixels."
    (part,) = first.images
    assert part.image_id == "crop-1" and np.array_equal(decoded(part), source[50:250, 100:300])
    # the new image is addressable, and a crop of it is the same pixels of the source
    second = await client.call_tool("crop", {"image_id": "crop-1", "box": [0.5, 0.5, 1, 1], "units": "normalized"},
                                    session_id=session)
    assert second.structured["box"] == [100, 100, 200, 200] and second.images[0].image_id == "crop-2"
    assert np.array_equal(decoded(second.images[0]), source[150:250, 200:300])
    # fractional pixel edges are rounded outwards
    third = await client.call_tool("crop", {"image_id": "photo", "box": [10.5, 10.2, 20.1, 20.9]}, session_id=session)
    assert third.structured["box"] == [10, 10, 21, 21]


async def test_zoom_enlarges_within_the_caps_and_revisit_goes_back_to_full_resolution(
    start_images: Any, make_client: Any
) -> None:
    client, session = await _open(start_images, make_client, image={"max_output_side": 512, "max_zoom": 4})
    source = pattern(640, 480)
    zoom = await client.call_tool("zoom", {"image_id": "photo", "box": [100, 100, 200, 150], "factor": 3},
                                  session_id=session)
    assert not zoom.is_error, zoom.text
    assert (zoom.images[0].width, zoom.images[0].height, zoom.images[0].image_id) == (300, 150, "zoom-1")
    capped = await client.call_tool("zoom", {"image_id": "photo", "box": [0, 0, 256, 128], "factor": 4},
                                    session_id=session)
    assert (capped.images[0].width, capped.images[0].height) == (512, 256)
    assert "enlarged 2x" in capped.text
    assert "(Asked for 4x: a zoom's result is at most 512 pixels a side.)" in capped.text
    over = await client.call_tool("zoom", {"image_id": "photo", "box": [0, 0, 10, 10], "factor": 5},
                                  session_id=session)
    assert over.is_error and "a factor of 5 is over this server's zoom cap of 4" in over.text
    # revisit a region of the zoom: the source's own pixels, not the interpolated ones
    back = await client.call_tool("revisit", {"image_id": "zoom-1", "box": [30, 15, 150, 75]}, session_id=session)
    assert not back.is_error, back.text
    assert back.structured["source_image_id"] == "photo" and back.structured["source_box"] == [110, 105, 150, 125]
    assert np.array_equal(decoded(back.images[0]), source[105:125, 110:150])
    assert "(it came from image photo: region [110, 105, 150, 125] of it) at full resolution, 40x20 pixels" in back.text
    assert back.images[0].image_id == ""                  # revisit keeps nothing
    assert "revisit" not in json.dumps(back.structured)


async def test_confirm_returns_the_region_with_the_claim(start_images: Any, make_client: Any) -> None:
    client, session = await _open(start_images, make_client)
    claim = "the top-left corner is dark"
    result = await client.call_tool("confirm", {"image_id": "photo", "box": [0, 0, 0.25, 0.25], "units": "normalized",
                                                "claim": claim}, session_id=session)
    assert not result.is_error and result.structured["claim"] == claim
    assert result.text.startswith(f"Claim to check: {claim!r}\n")
    assert np.array_equal(decoded(result.images[0]), pattern(640, 480)[0:120, 0:160])


async def test_rotate_flip_and_enhance_match_numpy(start_images: Any, make_client: Any) -> None:
    client, session = await _open(start_images, make_client, photo(64, 48))
    source = pattern(64, 48)
    stream = client.stream(batch=True)
    try:
        quarter, mirror, tilted, sharper = await asyncio.gather(
            stream.call("rotate", {"image_id": "photo", "degrees": 90}, session_id=session),
            stream.call("flip", {"image_id": "photo", "direction": "horizontal"}, session_id=session),
            stream.call("rotate", {"image_id": "photo", "degrees": -30}, session_id=session),
            stream.call("enhance", {"image_id": "photo", "contrast": 2.0}, session_id=session),
        )
    finally:
        await stream.close()
    assert np.array_equal(decoded(quarter.images[0]), np.rot90(source))           # counter-clockwise
    assert np.array_equal(decoded(mirror.images[0]), source[:, ::-1])
    assert (tilted.images[0].width, tilted.images[0].height) == (80, 74)          # the canvas holds every corner
    assert decoded(sharper.images[0]).std() > source.std()
    ids = {r.images[0].image_id for r in (quarter, mirror, tilted, sharper)}
    assert len(ids) == 4 and all(i.split("-")[0] in ("rotate", "flip", "enhance") for i in ids)


async def test_a_large_result_is_downscaled_and_reencoded_to_fit_and_says_so(start_images: Any,
                                                                             make_client: Any) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (600, 1200, 3), dtype=np.uint8)
    big = ImagePart(encoded(noise), "image/png", 1200, 600, "noise")
    client, session = await _open(start_images, make_client, big,
                                  image={"max_output_side": 800, "max_output_bytes": 100_000})
    result = await client.call_tool("crop", {"image_id": "noise", "box": [0, 0, 1200, 600]}, session_id=session)
    assert not result.is_error, result.text
    (part,) = result.images
    assert part.mime_type == "image/jpeg" and len(part.data) <= 100_000 and part.width <= 800
    assert "downscaled from 1200x600 to 800x400 (at most 800 pixels a side)" in result.text
    assert "re-encoded as" in result.text and "JPEG" in result.text and "to fit 100,000 bytes" in result.text
    assert "the full image is 1200x600" in result.text
    assert result.structured["width"] == 1200 and result.structured["returned"]["reencoded"] is True
    # the session keeps the full image: a crop of it is exact
    again = await client.call_tool("crop", {"image_id": "crop-1", "box": [1100, 500, 1200, 600]}, session_id=session)
    assert np.array_equal(decoded(again.images[0]), noise[500:600, 1100:1200])


async def test_the_sessions_image_limit_is_an_error_the_model_reads(start_images: Any, make_client: Any) -> None:
    client, session = await _open(start_images, make_client, photo(32, 32), session_max_images=2)
    made = await client.call_tool("flip", {"image_id": "photo", "direction": "both"}, session_id=session)
    assert not made.is_error
    full = await client.call_tool("flip", {"image_id": "photo", "direction": "both"}, session_id=session)
    assert full.is_error and "holds 2 images, its limit; no new image was kept: use revisit" in full.text
    look = await client.call_tool("revisit", {"image_id": "flip-1", "box": [0, 0, 8, 8]}, session_id=session)
    assert not look.is_error


@pytest.mark.parametrize(("image", "message"), [
    (ImagePart(encoded(pattern(8, 8), ".jpg"), "image/png", 8, 8, "a"),
     "is declared image/png but its bytes are image/jpeg"),
    (ImagePart(encoded(pattern(8, 8)), "image/png", 9, 8, "a"), "is declared 9x8 but its header gives 8x8"),
    (ImagePart(encoded(pattern(8, 8), ".gif"), "image/gif", 8, 8, "a"), "it is not PNG, JPEG or WebP (it is GIF)"),
])
async def test_attachments_the_tools_cannot_read_are_refused_when_the_session_opens(
    start_images: Any, make_client: Any, image: ImagePart, message: str
) -> None:
    client: ToolClient = make_client(await start_images(), retry=NO_RETRY)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.open_session(attachments=[image])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in str(info.value.details())
    assert "attachment 'a'" in str(info.value.details())


async def test_jpeg_and_webp_attachments_work(start_images: Any, make_client: Any) -> None:
    jpeg = ImagePart(encoded(pattern(40, 30), ".jpg"), "image/jpeg", 40, 30, "j")
    webp = ImagePart(encoded(pattern(40, 30), ".webp", 1, 101), "image/webp", 40, 30, "w")   # lossless
    client, session = await _open(start_images, make_client, jpeg, webp)
    crop = await client.call_tool("crop", {"image_id": "w", "box": [0, 0, 20, 10]}, session_id=session)
    assert np.array_equal(decoded(crop.images[0]), pattern(40, 30)[0:10, 0:20])
    assert not (await client.call_tool("zoom", {"image_id": "j", "box": [0, 0, 20, 10]}, session_id=session)).is_error


def test_settings_refuse_bad_values_and_read_the_environment() -> None:
    for values, message in (({"max_zoom": 0.5}, "RLYARD_TOOLS_IMAGE_MAX_ZOOM must be a finite factor >= 1"),
                            ({"max_output_bytes": 64 * 1024 * 1024}, "RLYARD_TOOLS_IMAGE_MAX_OUTPUT_BYTES must be"),
                            ({"output_format": "gif"}, "RLYARD_TOOLS_IMAGE_OUTPUT_FORMAT must be one of png, jpeg"),
                            ({"max_pixels": 100}, "MAX_OUTPUT_SIDE² (1048576) must be at most"),
                            ({"jpeg_quality": 0}, "JPEG_QUALITY must be between 1 and 100")):
        with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)")):
            ImageSettings(**values)
    env = {"RLYARD_TOOLS_IMAGE_MAX_ZOOM": "3", "RLYARD_TOOLS_IMAGE_OUTPUT_FORMAT": "jpeg"}
    s = ImageSettings.from_env("RLYARD_TOOLS_IMAGE", env)
    assert (s.max_zoom, s.output_format) == (3.0, "jpeg")
    assert family_settings("image", {"max_pixels": 2_000_000}, env).max_pixels == 2_000_000


def test_a_sql_server_does_not_import_opencv(repo: Any) -> None:
    probe = ("import sys\nfrom tool_servers.app import tool_service\nfrom tool_servers.settings import "
             "ToolServerSettings\ntool_service(ToolServerSettings(tools=('sql_query',)))\nprint('cv2' in sys.modules)\n"
             "tool_service(ToolServerSettings(tools=('crop',)))\nprint('cv2' in sys.modules)\n")
    out = subprocess.run([str(repo.python), "-c", probe], capture_output=True, text=True, cwd=repo.root, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(repo.root)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
