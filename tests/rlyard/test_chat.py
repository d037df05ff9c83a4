"""``rlyard.chat``: the one chat-completions client of the reward and memory services, against a real
scripted HTTP server on 127.0.0.1 (the ``chat_server`` fixture)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from rlyard.chat import ChatClient, ChatEndpointError, chat_completions_url

StartChatServer = Callable[..., Any]

MESSAGES = [{"role": "user", "content": "Say yes."}]


def test_the_url_gets_its_chat_completions_path_once() -> None:
    assert chat_completions_url("http://h:8000/v1") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


async def test_a_completion_sends_the_request_and_returns_the_first_choice(chat_server: StartChatServer) -> None:
    server = chat_server("yes", {"body": '{"choices": [{"message": {"content": null}}]}'})
    client = ChatClient(server.url, "m1", api_key="k", label="test endpoint")
    try:
        assert await client.complete(MESSAGES, max_tokens=8, temperature=0.5) == "yes"
        assert await client.with_model("m2").complete(MESSAGES, max_tokens=8) == ""      # a refusal: no content
        first, second = (r["json"] for r in server.requests)
        assert first == {"messages": MESSAGES, "max_tokens": 8, "temperature": 0.5, "n": 1, "stream": False,
                         "model": "m1"}
        assert second["model"] == "m2" and server.requests[0]["headers"]["authorization"] == "Bearer k"
        assert client.model == "m1"                       # with_model leaves the original alone
    finally:
        await client.aclose()
    assert client.closed


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [
        ({"status": 502, "body": "bad gateway"}, r"test endpoint http://\S+ failed with HTTP 502: 'bad gateway'"),
        ({"status": 404, "body": "no such model"}, "rejected the request with HTTP 404"),
        ({"body": "[]"}, "not a chat completion"),
        ({"body": '{"choices": [{"message": {"content": [1, 2]}}]}'}, "non-text message content"),
        ({"content": "late", "hang": True}, r"timed out after 0\.3 s \(no answer in time\)"),
    ],
)
async def test_every_failure_is_one_error_that_says_what_went_wrong(
    chat_server: StartChatServer, reply: dict[str, object], fragment: str
) -> None:
    client = ChatClient(chat_server(reply).url, timeout_s=0.3, label="test endpoint")
    try:
        with pytest.raises(ChatEndpointError, match=fragment):
            await client.complete(MESSAGES, max_tokens=8)
    finally:
        await client.aclose()


async def test_a_closed_port_is_unreachable() -> None:
    client = ChatClient("http://127.0.0.1:9/v1", timeout_s=2.0)
    try:
        with pytest.raises(ChatEndpointError, match=r"unreachable \(could not connect\)"):
            await client.complete(MESSAGES, max_tokens=8)
    finally:
        await client.aclose()
