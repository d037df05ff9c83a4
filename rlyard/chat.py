"""One client of OpenAI-compatible ``/chat/completions`` endpoints (vLLM, TGI, llama.cpp server,
SGLang, OpenAI itself) over one pooled ``httpx.AsyncClient``: the reward service's judges and the
memory service's Distill judge both ask through it. Every failure of the endpoint is a
``ChatEndpointError`` whose message says what went wrong in words; what a failure means (a reward
system error, keeping a template text) is the caller's decision. ``httpx`` comes with the extras
of the services that use it."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

EXCERPT = 300      # characters of an endpoint's answer quoted in an error


class ChatEndpointError(RuntimeError):
    """The endpoint failed: unreachable, timed out, an HTTP error, or an answer that is not a chat
    completion."""


def excerpt(text: str, limit: int = EXCERPT) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


def chat_completions_url(endpoint: str) -> str:
    """``http://host:8000/v1`` → ``http://host:8000/v1/chat/completions`` (a full URL is kept)."""
    endpoint = endpoint.rstrip("/")
    if endpoint.endswith("/chat/completions"):
        return endpoint
    return f"{endpoint}/chat/completions"


class ChatClient:
    """Chat completions from one endpoint.

    Args:
        endpoint: the API base (``http://127.0.0.1:8000/v1``) or the full chat-completions URL.
        model: the served model name sent as ``model`` (left out when empty: single-model servers).
        api_key: sent as ``Authorization: Bearer <key>`` when set.
        timeout_s: the limit on one request, connecting included.
        label: how errors name the endpoint (e.g. "judge endpoint").
    """

    def __init__(self, endpoint: str, model: str = "", *, api_key: str = "", timeout_s: float = 60.0,
                 label: str = "chat endpoint") -> None:
        self.url = chat_completions_url(endpoint)
        self.model = model
        self.timeout_s = timeout_s
        self.label = label
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), headers=headers)

    def with_model(self, model: str) -> ChatClient:
        """The same endpoint and connections, asking for another served model."""
        other = copy.copy(self)
        other.model = model
        return other

    async def complete(self, messages: Sequence[Mapping[str, Any]], max_tokens: int, temperature: float = 0.0) -> str:
        """The content of the first choice of one chat completion ("" when the message has none,
        e.g. a refusal)."""
        body: dict[str, Any] = {"messages": [dict(m) for m in messages], "max_tokens": max_tokens,
                                "temperature": temperature, "n": 1, "stream": False}
        if self.model:
            body["model"] = self.model
        where = f"{self.label} {self.url}"
        try:
            response = await self._client.post(self.url, json=body)
        except httpx.TimeoutException as exc:
            raise ChatEndpointError(f"{where} timed out after {self.timeout_s:g} s ({_what(exc)})") from exc
        except httpx.HTTPError as exc:  # connection refused, DNS, reset, protocol error
            raise ChatEndpointError(f"{where} is unreachable ({_what(exc)}): {exc}") from exc
        if response.status_code >= 500:
            raise ChatEndpointError(f"{where} failed with HTTP {response.status_code}: {excerpt(response.text)!r}")
        if response.status_code >= 400:
            raise ChatEndpointError(f"{where} rejected the request with HTTP {response.status_code} "
                                    f"(check the model name, API key and max_new_tokens): {excerpt(response.text)!r}")
        try:
            content = response.json()["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ChatEndpointError(f"{where} sent a response that is not a chat completion: "
                                    f"{excerpt(response.text)!r}") from exc
        if content is None:      # a refusal or an empty message: the endpoint answered nothing
            return ""
        if not isinstance(content, str):
            raise ChatEndpointError(f"{where} sent non-text message content: {excerpt(str(content))!r}")
        return content

    @property
    def closed(self) -> bool:
        """Whether ``aclose`` has run."""
        return self._client.is_closed

    async def aclose(self) -> None:
        """Close the pooled HTTP connections."""
        await self._client.aclose()


_WHAT = {"ConnectError": "could not connect", "ConnectTimeout": "connecting timed out",
         "ReadTimeout": "no answer in time", "WriteTimeout": "sending timed out", "PoolTimeout": "no free connection",
         "ReadError": "the connection broke while reading", "WriteError": "the connection broke while sending",
         "RemoteProtocolError": "the endpoint broke the HTTP protocol", "UnsupportedProtocol": "not an http(s) URL"}


def _what(exc: Exception) -> str:
    """What went wrong, in words (callers of the services see no Python exception names)."""
    return _WHAT.get(type(exc).__name__, "the HTTP request failed")
