"""A judge behind any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, TGI,
llama.cpp server, SGLang, OpenAI itself), over one pooled ``httpx.AsyncClient``."""

from __future__ import annotations

import copy
import logging
from typing import Any

import httpx

from reward_service.judges.base import ChatMessages
from reward_service.types import RewardSystemError

logger = logging.getLogger(__name__)

_EXCERPT = 300


def _excerpt(text: str, limit: int = _EXCERPT) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


def chat_completions_url(endpoint: str) -> str:
    """``http://host:8000/v1`` → ``http://host:8000/v1/chat/completions`` (a full URL is kept)."""
    endpoint = endpoint.rstrip("/")
    if endpoint.endswith("/chat/completions"):
        return endpoint
    return f"{endpoint}/chat/completions"


class OpenAIChatJudge:
    """Asks an OpenAI-compatible endpoint; every failure of the endpoint is a ``RewardSystemError``.

    Args:
        endpoint: the API base (``http://127.0.0.1:8000/v1``) or the full chat-completions URL.
        model: the served model name sent as ``model`` (left out when empty: single-model servers).
        api_key: sent as ``Authorization: Bearer <key>`` when set.
        timeout_s: the limit on one request, connecting included.
    """

    def __init__(self, endpoint: str, model: str, *, api_key: str = "", timeout_s: float = 60.0) -> None:
        if not endpoint:
            raise RewardSystemError("the openai judge has no endpoint: set RLYARD_REWARD_JUDGE_ENDPOINT")
        self.url = chat_completions_url(endpoint)
        self.model = model
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), headers=headers)

    def with_model(self, model: str) -> OpenAIChatJudge:
        """The same endpoint and connections, asking for another served model."""
        other = copy.copy(self)
        other.model = model
        return other

    async def complete(self, messages: ChatMessages, max_new_tokens: int, temperature: float = 0.0) -> str:
        """The content of the first choice of one chat completion."""
        body: dict[str, Any] = {
            "messages": [dict(m) for m in messages],
            "max_tokens": max_new_tokens,
            "temperature": temperature,
            "n": 1,
            "stream": False,
        }
        if self.model:
            body["model"] = self.model
        try:
            response = await self._client.post(self.url, json=body)
        except httpx.TimeoutException as exc:
            raise RewardSystemError(
                f"judge endpoint {self.url} timed out after {self.timeout_s:g} s ({_what(exc)})"
            ) from exc
        except httpx.HTTPError as exc:  # connection refused, DNS, reset, protocol error
            raise RewardSystemError(f"judge endpoint {self.url} is unreachable ({_what(exc)}): {exc}") from exc
        if response.status_code >= 500:
            raise RewardSystemError(
                f"judge endpoint {self.url} failed with HTTP {response.status_code}: {_excerpt(response.text)!r}"
            )
        if response.status_code >= 400:
            raise RewardSystemError(
                f"judge endpoint {self.url} rejected the request with HTTP {response.status_code} "
                f"(check the model name, API key and max_new_tokens): {_excerpt(response.text)!r}"
            )
        return self._content(response)

    def _content(self, response: httpx.Response) -> str:
        try:
            payload = response.json()
            message = payload["choices"][0]["message"]
            content = message.get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise RewardSystemError(
                f"judge endpoint {self.url} sent a response that is not a chat completion: "
                f"{_excerpt(response.text)!r}"
            ) from exc
        # A refusal or an empty message comes back as null content: the judge answered
        # nothing, which the reward treats as an unparseable verdict.
        if content is None:
            return ""
        if not isinstance(content, str):
            raise RewardSystemError(
                f"judge endpoint {self.url} sent non-text message content: {_excerpt(str(content))!r}"
            )
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
    """What went wrong, in words (callers of the reward service see no Python exception names)."""
    return _WHAT.get(type(exc).__name__, "the HTTP request failed")
