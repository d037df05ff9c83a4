"""The optional judge of Distill: an OpenAI-compatible ``/chat/completions`` endpoint that rewrites a
rule's template text as one strategy sentence. Only used when ``RLYARD_MEMORY_JUDGE_ENDPOINT`` is
set; when the endpoint fails or answers nothing usable the template text is kept (logged), so a
judge outage never loses a meta-cognition."""

from __future__ import annotations

import logging

import httpx

logger = logging.getLogger(__name__)

SYSTEM = ("You turn statistics about an AI agent's past attempts into one short, imperative strategy "
          "sentence the agent can follow. Keep tool names exactly as given. Answer with the sentence only.")
MAX_CHARS = 600   # a longer answer is not one sentence of advice: the template is kept


class StrategyJudge:
    """Rewrites candidate texts through a chat-completions endpoint (one pooled HTTP client)."""

    def __init__(self, endpoint: str, model: str = "", api_key: str = "", timeout_s: float = 30.0) -> None:
        base = endpoint.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else f"{base}/chat/completions"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), headers=headers)

    async def rewrite(self, template: str, evidence: str) -> str:
        """The judge's sentence for ``template``, or ``template`` when the judge fails."""
        body: dict[str, object] = {
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": f"Draft: {template}\nEvidence: {evidence}"}],
            "temperature": 0.0, "max_tokens": 128, "n": 1, "stream": False,
        }
        if self.model:
            body["model"] = self.model
        try:
            response = await self._client.post(self.url, json=body)
            response.raise_for_status()
            text = str(response.json()["choices"][0]["message"]["content"]).strip()
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            logger.warning("distill judge %s failed (%s: %s); keeping the template text", self.url,
                           type(exc).__name__, exc)
            return template
        if not text or len(text) > MAX_CHARS:
            logger.warning("distill judge %s answered %d characters; keeping the template text", self.url, len(text))
            return template
        return text

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
