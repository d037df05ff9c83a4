"""A judge behind any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, TGI,
llama.cpp server, SGLang, OpenAI itself), through the core's pooled chat client
(``rlyard.chat``); every failure of the endpoint is a ``RewardSystemError``."""

from __future__ import annotations

import copy

from reward_service.judges.base import ChatMessages
from reward_service.types import RewardSystemError
from rlyard.chat import ChatClient, ChatEndpointError, chat_completions_url

__all__ = ["OpenAIChatJudge", "chat_completions_url"]


class OpenAIChatJudge:
    """Asks an OpenAI-compatible endpoint; the arguments are ``rlyard.chat.ChatClient``'s (an empty
    endpoint is refused here, with the setting that names it)."""

    def __init__(self, endpoint: str, model: str, *, api_key: str = "", timeout_s: float = 60.0) -> None:
        if not endpoint:
            raise RewardSystemError("the openai judge has no endpoint: set RLYARD_REWARD_JUDGE_ENDPOINT")
        self.chat = ChatClient(endpoint, model, api_key=api_key, timeout_s=timeout_s, label="judge endpoint")

    @property
    def url(self) -> str:
        return self.chat.url

    @property
    def model(self) -> str:
        return self.chat.model

    def with_model(self, model: str) -> OpenAIChatJudge:
        """The same endpoint and connections, asking for another served model."""
        other = copy.copy(self)
        other.chat = self.chat.with_model(model)
        return other

    async def complete(self, messages: ChatMessages, max_new_tokens: int, temperature: float = 0.0) -> str:
        """The content of the first choice of one chat completion ("" for a refusal or an empty
        message, which the reward treats as an unparseable verdict)."""
        try:
            return await self.chat.complete(messages, max_new_tokens, temperature)
        except ChatEndpointError as exc:
            raise RewardSystemError(str(exc)) from exc

    @property
    def closed(self) -> bool:
        """Whether ``aclose`` has run."""
        return self.chat.closed

    async def aclose(self) -> None:
        """Close the pooled HTTP connections."""
        await self.chat.aclose()
