"""Hostile input to the image tools, each case answered with an error the model can act on
(``is_error``) or a status (INVALID_ARGUMENT; RESOURCE_EXHAUSTED for a message over the limit), and
the server answering ordinary calls afterwards. The whole list also runs against a server in its
own process, whose peak RSS must stay under 1 GB: decompression bombs are refused from their
headers, never decoded."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import IMAGE_TOOLS, encoded, jpeg_bomb, pattern, photo, png_bomb_header, webp_bomb

from rlyard.client import NO_RETRY, ToolClient, make_channel
from rlyard.common.v1 import common_pb2
from rlyard.tools.v1 import tools_pb2, tools_pb2_grpc

MESSAGE_BYTES = 4 * 1024 * 1024      # the servers' message limit in these tests
INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
GOOD = photo(320, 240)


def _truncated_png() -> bytes:
    data = encoded(pattern(320, 240))
    return data[: len(data) // 3]          # the header survives, the pixel data is cut


def _corrupt_png() -> bytes:
    data = bytearray(encoded(pattern(320, 240)))
    rng = random.Random(21)
    for i in range(60, len(data) - 20, 7):   # noise over the compressed pixels; the IHDR stays whole
        data[i] = rng.randrange(256)
    return bytes(data)


# An attachment as the pb message (so that the domain's own checks do not stop a case first).
def _image(data: bytes, mime: str = "image/png", width: int = 320, height: int = 240,
           image_id: str = "x") -> common_pb2.Image:
    return common_pb2.Image(data=data, mime_type=mime, width=width, height=height, image_id=image_id)


@dataclass(frozen=True)
class Attach:
    """Open a session with this attachment; expect ``code`` with ``message`` in its details."""

    image: Callable[[], common_pb2.Image]
    code: grpc.StatusCode
    message: str


@dataclass(frozen=True)
class Call:
    """A call in a session holding ``photo`` (320x240) and ``broken`` (a truncated PNG); expect
    an ``is_error`` result (``code`` None) or a ``system_error`` of ``code``, with ``message``."""

    tool: str
    arguments: str
    message: str
    code: grpc.StatusCode | None = None


CASES: dict[str, Attach | Call] = {
    "png bomb header (50,000 x 50,000, a few KB)": Attach(
        lambda: _image(png_bomb_header(), width=50_000, height=50_000), INVALID,
        "its header gives 50000x50000 = 2,500,000,000 pixels, over this server's limit of 25,000,000"),
    "png bomb, complete (110 KB that OpenCV would decode to 2.7 GB)": Attach(
        lambda: _image(_BOMB[0], width=30_000, height=30_000), INVALID, "900,000,000 pixels, over this server's"),
    "jpeg bomb (65,000 x 65,000)": Attach(
        lambda: _image(jpeg_bomb(), "image/jpeg", 65_000, 65_000), INVALID, "65000x65000 = 4,225,000,000 pixels"),
    "webp bomb (16,384 x 16,384)": Attach(
        lambda: _image(webp_bomb(), "image/webp", 16_384, 16_384), INVALID, "16384x16384 = 268,435,456 pixels"),
    "bomb that declares a small size": Attach(
        lambda: _image(png_bomb_header(), width=10, height=10), INVALID, "2,500,000,000 pixels"),
    "truncated before the size": Attach(
        lambda: _image(encoded(pattern(8, 8))[:20], width=8, height=8), INVALID, "PNG header is truncated"),
    "jpeg cut before its frame header": Attach(
        lambda: _image(encoded(pattern(8, 8), ".jpg")[:40], "image/jpeg", 8, 8), INVALID, "JPEG data ends before"),
    "unsupported format (BMP)": Attach(
        lambda: _image(encoded(pattern(8, 8), ".bmp"), width=8, height=8), INVALID,
        "it is not PNG, JPEG or WebP (it is BMP)"),
    "unsupported format (PDF)": Attach(
        lambda: _image(b"%PDF-1.7\n" + b"0" * 100, "image/png", 8, 8), INVALID, "(it is PDF)"),
    "random bytes": Attach(
        lambda: _image(bytes(random.Random(1).randrange(256) for _ in range(500))), INVALID,
        "it is not PNG, JPEG or WebP (its first bytes are"),
    "empty bytes": Attach(lambda: _image(b""), INVALID, "image x: no bytes"),
    "an attachment over the message limit": Attach(
        lambda: _image(b"\x89PNG\r\n\x1a\n" + b"\x00" * (MESSAGE_BYTES + 1024)), EXHAUSTED, "larger than max"),
    "truncated pixel data, used": Call("crop", '{"image_id": "broken", "box": [0, 0, 10, 10]}',
                                       "image 'broken' of the session cannot be used: its PNG data does not decode: "
                                       "truncated or corrupt", INVALID),
    "inverted box": Call("crop", '{"image_id": "photo", "box": [100, 10, 50, 60]}',
                         "right (50) must be greater than left (100) — it is inverted"),
    "zero-area box": Call("zoom", '{"image_id": "photo", "box": [10, 40, 60, 40]}',
                          "bottom (40) must be greater than top (40) — it has zero width or height"),
    "negative box": Call("crop", '{"image_id": "photo", "box": [-5, 0, 50, 60]}', "cannot be negative"),
    "box past the edge": Call("revisit", '{"image_id": "photo", "box": [0, 0, 321, 60]}',
                              "reaches outside the image, which is 320x240 pixels: right must be at most 320"),
    "huge box": Call("crop", '{"image_id": "photo", "box": [0, 0, 1e308, 1e308]}', "reaches outside the image"),
    "normalized box out of 0..1": Call("crop", '{"image_id": "photo", "box": [0, 0, 1.5, 1], "units": "normalized"}',
                                       "normalized coordinates are fractions between 0 and 1"),
    "NaN coordinate": Call("crop", '{"image_id": "photo", "box": [NaN, 0, 10, 10]}',
                           "field 'box.0': Input should be a finite number"),
    "infinite coordinate": Call("confirm", '{"image_id": "photo", "box": [0, 0, Infinity, 10], "claim": "x"}',
                                "field 'box.2': Input should be a finite number"),
    "three coordinates": Call("crop", '{"image_id": "photo", "box": [0, 0, 10]}',
                              "field 'box': List should have at least 4 items"),
    "text coordinates": Call("crop", '{"image_id": "photo", "box": ["left", 0, 10, 10]}', "field 'box.0'"),
    "zoom beyond the cap": Call("zoom", '{"image_id": "photo", "box": [0, 0, 10, 10], "factor": 1000}',
                                "a factor of 1000 is over this server's zoom cap of 8"),
    "zoom factor NaN": Call("zoom", '{"image_id": "photo", "box": [0, 0, 10, 10], "factor": NaN}',
                            "field 'factor': Input should be a finite number"),
    "zoom out": Call("zoom", '{"image_id": "photo", "box": [0, 0, 10, 10], "factor": 0.01}',
                     "field 'factor': Input should be greater than or equal to 1"),
    "unknown image id": Call("revisit", '{"image_id": "nope", "box": [0, 0, 10, 10]}',
                             "no image 'nope' in this session; its images are: broken, photo"),
    "long unknown image id": Call("crop", '{"image_id": "' + "i" * 5000 + '", "box": [0, 0, 10, 10]}',
                                  "field 'image_id': String should have at most 128 characters"),
    "rotate by NaN": Call("rotate", '{"image_id": "photo", "degrees": NaN}', "field 'degrees'"),
    "claim too long": Call("confirm", '{"image_id": "photo", "box": [0, 0, 10, 10], "claim": "' + "c" * 3000 + '"}',
                           "field 'claim': String should have at most 2000 characters"),
    "unknown argument": Call("flip", '{"image_id": "photo", "direction": "diagonal"}', "field 'direction'"),
}
_BOMB: list[bytes] = []      # the complete PNG bomb, built once by the fixture below


@pytest.fixture(autouse=True)
def _bomb(real_png_bomb: bytes) -> None:
    if not _BOMB:
        _BOMB.append(real_png_bomb)


async def run_case(target: str, session: str, case: Attach | Call) -> None:
    """Send one hostile case to the server at ``target`` and check its answer."""
    # a channel that sends more than the server accepts, so that the server's limit is what answers
    async with make_channel(target, 4 * MESSAGE_BYTES) as channel:
        stub = tools_pb2_grpc.ToolServiceStub(channel)
        if isinstance(case, Attach):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.OpenSession(tools_pb2.OpenSessionRequest(attachments=[case.image()]), timeout=30)
            assert info.value.code() == case.code, info.value.details()
            assert case.message in str(info.value.details()), info.value.details()
            return
        request = tools_pb2.CallToolRequest(session_id=session, call=common_pb2.ToolCall(
            call_id="h", name=case.tool, arguments_json=case.arguments))
        call = stub.CallTools(timeout=30)      # through the stream, so that a system error answers just this call
        await call.write(tools_pb2.CallToolsRequest(calls=[request]))
        await call.done_writing()
        (result,) = [r async for m in call for r in m.results]
        text = "\n".join(c.text for c in result.content)
        if case.code is None:
            assert result.is_error and result.system_error.code == 0, (text, result.system_error)
            assert case.message in text, text
        else:
            assert result.system_error.code == case.code.value[0], (text, result.system_error)
            assert case.message in result.system_error.message, result.system_error.message


async def open_hostile_session(client: ToolClient) -> str:
    """A session with a good photo and a PNG whose pixel data is truncated (its header is whole)."""
    broken = photo(320, 240, "broken")
    broken = type(broken)(_truncated_png(), "image/png", 320, 240, "broken")
    return await client.open_session(attachments=[GOOD, broken])


async def check_still_serving(client: ToolClient, session: str) -> None:
    """An ordinary crop is answered after the hostile calls."""
    result = await client.call_tool("crop", {"image_id": "photo", "box": [0, 0, 32, 32]}, session_id=session)
    assert not result.is_error and result.images[0].width == 32, result.text


@pytest.mark.parametrize("name", list(CASES))
async def test_hostile_input_gets_a_clear_error(name: str, start_images: Any, make_client: Any) -> None:
    running = await start_images(message_bytes=MESSAGE_BYTES)
    client: ToolClient = make_client(running, retry=NO_RETRY)
    session = await open_hostile_session(client)
    await run_case(running.address, session, CASES[name])
    await check_still_serving(client, session)


async def test_corrupt_pixel_data_is_refused_or_decoded_never_a_crash(start_images: Any, make_client: Any) -> None:
    client: ToolClient = make_client(await start_images(), retry=NO_RETRY)
    noisy = type(GOOD)(_corrupt_png(), "image/png", 320, 240, "noisy")
    session = await client.open_session(attachments=[GOOD, noisy])
    stream = client.stream(batch=True)
    try:
        results = await asyncio.gather(
            *(stream.call("crop", {"image_id": i, "box": [0, 0, 16, 16]}, session_id=session)
              for i in ("noisy", "photo")),
            return_exceptions=True)
    finally:
        await stream.close()
    noisy_result, good = results
    assert not isinstance(good, BaseException) and not good.is_error
    # libpng either rejects the noise (INVALID_ARGUMENT for that call) or the CRC check lets some through
    assert not isinstance(noisy_result, BaseException)
    assert noisy_result.system_error is None or noisy_result.system_error.code == INVALID.value[0]
    await check_still_serving(client, session)


# ------------------------------------------------------------------- the whole list, peak RSS


@pytest.fixture
async def server_process(repo: Any, tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``python -m tool_servers`` serving the image tools, with the tests' message limit."""
    ready = tmp_path / "ready.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLYARD")}
    env.update({"RLYARD_PORT": "0", "RLYARD_READY_FILE": str(ready), "RLYARD_TOOLS_TOOLS": ",".join(IMAGE_TOOLS),
                "RLYARD_MAX_MESSAGE_BYTES": str(MESSAGE_BYTES), "RLYARD_LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(repo.root)})
    proc = await asyncio.create_subprocess_exec(str(repo.python), "-m", "tool_servers", cwd=tmp_path, env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        async def wait_ready() -> str:
            while not await asyncio.to_thread(ready.exists) or not ready.read_text().strip():
                assert proc.returncode is None, f"the server exited with {proc.returncode}"
                await asyncio.sleep(0.05)
            return f"127.0.0.1:{json.loads(ready.read_text())['port']}"

        yield proc, await asyncio.wait_for(wait_ready(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


async def test_the_whole_hostile_list_keeps_the_server_up_under_1_gb(
    server_process: tuple[asyncio.subprocess.Process, str], make_client: Any
) -> None:
    proc, target = server_process
    client: ToolClient = make_client(target, retry=NO_RETRY, max_message_bytes=4 * MESSAGE_BYTES)
    session = await open_hostile_session(client)
    failures: list[str] = []
    for name, case in CASES.items():
        try:
            await run_case(target, session, case)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    await check_still_serving(client, session)
    assert proc.returncode is None and not failures, failures
    peak = peak_rss_mb(proc.pid)
    print(f"tool server peak RSS over {len(CASES)} hostile cases: {peak:.0f} MiB")
    assert peak < 1024
