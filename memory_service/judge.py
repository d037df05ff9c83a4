"""The optional judge of Distill: an OpenAI-compatible ``/chat/completions`` endpoint (through the
core's chat client, ``rlyard.chat``) that rewrites a rule's template text as one strategy sentence.
Only used when ``RLYARD_MEMORY_JUDGE_ENDPOINT`` is set; when the endpoint fails or answers nothing
usable the template text is kept (logged), so a judge outage never loses a meta-cognition."""

from __future__ import annotations

import logging

from rlyard.chat import ChatClient, ChatEndpointError

logger = logging.getLogger(__name__)

SYSTEM = ("You turn statistics about an AI agent's past attempts into one short, imperative strategy "
          "sentence the agent can follow. Keep tool names exactly as given. Answer with the sentence only.")
MAX_CHARS = 600   # a longer answer is not one sentence of advice: the template is kept
MAX_TOKENS = 128


class StrategyJudge:
    """Rewrites candidate texts through a chat-completions endpoint (one pooled HTTP client)."""

    def __init__(self, endpoint: str, model: str = "", api_key: str = "", timeout_s: float = 30.0) -> None:
        self.chat = ChatClient(endpoint, model, api_key=api_key, timeout_s=timeout_s, label="distill judge")

    @property
    def url(self) -> str:
        return self.chat.url

    async def rewrite(self, template: str, evidence: str) -> str:
        """The judge's sentence for ``template``, or ``template`` when the judge fails."""
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Draft: {template}\nEvidence: {evidence}"}]
        try:
            text = (await self.chat.complete(messages, MAX_TOKENS)).strip()
        except ChatEndpointError as exc:
            logger.warning("%s; keeping the template text", exc)
            return template
        if not text or len(text) > MAX_CHARS:
            logger.warning("distill judge %s answered %d characters; keeping the template text", self.url, len(text))
            return template
        return text

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.chat.aclose()
