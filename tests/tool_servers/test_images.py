"""Images on the tool server: attachments put into a session by id, image results through the
batched stream, and response messages kept under the message limit (split, or a per-call error)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from rlyard.client import NO_RETRY, ToolClient
from rlyard.common.v1 import common_pb2
from rlyard.domain import ImagePart
from rlyard.domain.convert import system_failure_pb
from rlyard.server import RunningServer
from rlyard.settings import ServerSettings
from rlyard.tools.v1 import tools_pb2
from tool_servers.servicer import pack_results, result_budget


async def _server(start_tools: Any, **server: Any) -> RunningServer:
    running: RunningServer = await start_tools(tools=("test_show_image", "test_make_image"),
                                               session_max_images=3, session_max_image_bytes=200_000,
                                               server=ServerSettings(**server) if server else None)
    return running


async def test_attachments_are_held_by_id_and_come_back_through_the_stream(
    image_tools: None, start_tools: Any, make_client: Any, make_png: Any
) -> None:
    client: ToolClient = make_client(await _server(start_tools), retry=NO_RETRY)
    photo = ImagePart(make_png(8, 6), "image/png", 8, 6, "photo")
    chart = ImagePart(make_png(4, 4, (0, 0, 255)), "image/png", 4, 4, "chart")
    session = await client.open_session(attachments=[photo, chart])
    stream = client.stream(batch=True)
    try:
        shown, missing = await asyncio.gather(
            stream.call("test_show_image", {"image_id": "photo"}, session_id=session),
            stream.call("test_show_image", {"image_id": "nope"}, session_id=session),
        )
    finally:
        await stream.close()
    assert shown.images == (photo,) and shown.structured == {"image_id": "photo", "bytes": len(photo.data)}
    assert shown.observation == f"[image photo: 8x6 image/png, {len(photo.data)} bytes]"
    assert shown.text == ""                  # what rewards read as text: no bytes, no placeholder
    assert missing.is_error and "images: ['chart', 'photo']" in missing.text


@pytest.mark.parametrize(("images", "code", "message"), [
    ([ImagePart(b"x", "image/png", 1, 1, "a"), ImagePart(b"y", "image/png", 1, 1, "a")],
     grpc.StatusCode.INVALID_ARGUMENT, "image_id 'a' is already used"),
    ([ImagePart(b"x", "image/png", 1, 1, "")], grpc.StatusCode.INVALID_ARGUMENT, "needs an image_id"),
    ([ImagePart(b"x", "image/png", 1, 1, f"i{k}") for k in range(4)], grpc.StatusCode.RESOURCE_EXHAUSTED,
     "holds 3 images, its limit"),
    ([ImagePart(b"x" * 150_000, "image/png", 9, 9, "a"), ImagePart(b"y" * 60_000, "image/png", 9, 9, "b")],
     grpc.StatusCode.RESOURCE_EXHAUSTED, "past 200000 bytes of images"),
])
async def test_bad_attachments_are_refused_with_their_code(image_tools: None, start_tools: Any, make_client: Any,
                                                           images: list[ImagePart], code: grpc.StatusCode,
                                                           message: str) -> None:
    client: ToolClient = make_client(await _server(start_tools), retry=NO_RETRY)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.open_session(attachments=images)
    assert info.value.code() == code and message in str(info.value.details())


async def test_an_attachment_of_an_unknown_type_is_invalid(image_tools: None, start_tools: Any,
                                                           make_client: Any) -> None:
    client: ToolClient = make_client(await _server(start_tools), retry=NO_RETRY)
    request = tools_pb2.OpenSessionRequest(
        attachments=[common_pb2.Image(data=b"%PDF", mime_type="application/pdf", width=1, height=1, image_id="a")])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.stub.OpenSession(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mime type 'application/pdf' is not one of image/png" in str(info.value.details())


def test_results_are_packed_in_place_into_messages_under_the_budget() -> None:
    results = [system_failure_pb(f"c{i}", "t", 0, "x" * n) for i, n in enumerate((100, 100, 120, 50, 400))]
    sizes = [tools_pb2.CallToolsResponse(results=[r]).ByteSize() for r in results]   # with tag and length prefix
    budget = sizes[0] + sizes[1] + 10
    written: list[str] = []

    def write(pb: common_pb2.ToolResult, call: common_pb2.ToolCall, result: object) -> int:
        assert pb.ByteSize() == 0 and isinstance(result, common_pb2.ToolResult)
        pb.MergeFrom(result)
        written.append(call.call_id)
        return pb.ByteSize()

    finished = [(common_pb2.ToolCall(call_id=r.call_id), r) for r in results]
    messages = pack_results(finished, budget, write)
    assert [[r.call_id for r in m.results] for m in messages] == [["c0", "c1"], ["c2", "c3"], ["c4"]]
    assert [r for m in messages for r in m.results] == results and written == ["c0", "c1", "c2", "c3", "c4"]
    assert all(m.ByteSize() <= budget for m in messages[:-1])
    assert sum(m.ByteSize() for m in messages) == sum(sizes)          # the sizes counted are the real ones
    assert pack_results([], budget, write) == []
    assert result_budget(16 * 1024 * 1024) == 16 * 1024 * 1024 - 4096 and result_budget(4096) == 3584


async def test_results_finishing_together_are_split_under_the_message_limit(
    image_tools: None, start_tools: Any, make_client: Any
) -> None:
    """Six ~48 KB images that finish together would make a ~290 KB message; the server's limit is
    128 KiB, so they travel in several messages, each under it. A result alone over the limit is
    answered with RESOURCE_EXHAUSTED for that call, and the stream goes on."""
    limit = 128 * 1024
    running = await _server(start_tools, max_message_bytes=limit)
    client: ToolClient = make_client(running, retry=NO_RETRY)
    call = client.stub.CallTools(timeout=60)
    reqs = [tools_pb2.CallToolRequest(call=common_pb2.ToolCall(call_id=f"m{i}", name="test_make_image",
                                                               arguments_json='{"side": 128}')) for i in range(6)]
    reqs.append(tools_pb2.CallToolRequest(call=common_pb2.ToolCall(call_id="huge", name="test_make_image",
                                                                   arguments_json='{"side": 300}')))
    await call.write(tools_pb2.CallToolsRequest(calls=reqs))
    await call.done_writing()
    messages = [resp async for resp in call]
    assert await call.code() == grpc.StatusCode.OK
    results = {r.call_id: r for m in messages for r in m.results}
    assert set(results) == {f"m{i}" for i in range(6)} | {"huge"}
    assert all(m.ByteSize() <= limit for m in messages)
    assert len(messages) >= 3                  # no two 48 KB images share a 128 KiB message with a third
    for i in range(6):
        image = results[f"m{i}"].content[0].image
        assert (image.width, results[f"m{i}"].system_error.code) == (128, 0) and len(image.data) > 40_000
    huge = results["huge"].system_error
    assert huge.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "over this server's message limit of 131072 bytes" in huge.message
    # the unary call refuses it with the status itself
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.call_tool("test_make_image", {"side": 300})
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
