"""The interface every judge backend implements, and what a judge is keyed by."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# One chat message: {"role": "system" | "user" | "assistant", "content": "..."}.
ChatMessages = Sequence[Mapping[str, str]]


@runtime_checkable
class JudgeBackend(Protocol):
    """A model that answers a chat: a local HF model or an OpenAI-compatible endpoint.

    ``complete`` raises ``RewardSystemError`` when the judge cannot answer (endpoint down,
    request rejected, checkpoint missing); what the judge *says* is never an error here.
    """

    async def complete(self, messages: ChatMessages, max_new_tokens: int, temperature: float = 0.0) -> str:
        """The judge's reply to ``messages`` (greedy when ``temperature`` is 0)."""
        ...

    async def aclose(self) -> None:
        """Free the backend's resources (HTTP connections, model weights)."""
        ...


@dataclass(frozen=True)
class JudgeSpec:
    """Which judge to ask; equal specs share one backend per service.

    ``endpoint`` is used by the ``openai`` backend only; ``model`` is the served model
    name (``openai``) or a local checkpoint directory (``hf``).
    """

    backend: str
    model: str
    endpoint: str = ""
    api_key: str = field(default="", repr=False)
    timeout_s: float = 60.0

    @property
    def cache_key(self) -> str:
        """The key under which the backend is kept in ``RewardContext.shared``: a local checkpoint
        by its directory, an endpoint by its URL alone — the model is a name sent with each
        request, so a caller naming model after model cannot grow the cache."""
        if self.backend == "hf":
            return f"judge:hf:{self.model}"
        return f"judge:{self.backend}:{self.endpoint}"

    def describe(self) -> str:
        """A short name for messages: ``openai:<model>@<endpoint>`` or ``hf:<dir>``."""
        if self.backend == "hf":
            return f"hf:{self.model}"
        return f"{self.backend}:{self.model or '(default model)'}@{self.endpoint}"
