"""Judge backends of the model-judge rewards: a local HF causal LM or any
OpenAI-compatible ``/v1/chat/completions`` endpoint, behind one ``JudgeBackend`` protocol.

``get_judge`` builds a backend once per ``JudgeSpec`` and keeps it in the reward
context's ``shared`` dict, so one service can serve several judges and closes them all
with ``RewardContext.close()``.
"""

from __future__ import annotations

from typing import Any

from reward_service.judges.base import ChatMessages, JudgeBackend, JudgeSpec
from reward_service.judges.hf_local import HFLocalJudge
from reward_service.judges.openai_http import OpenAIChatJudge
from reward_service.types import RewardSystemError
from rlyard.errors import ConfigError

BACKENDS = ("openai", "hf")


def make_judge(spec: JudgeSpec) -> JudgeBackend:
    """A new backend for ``spec`` (nothing is loaded or connected yet).

    Raises:
        RewardSystemError: the spec names no endpoint (openai) or no checkpoint (hf).
        ConfigError: an unknown backend.
    """
    if spec.backend == "openai":
        return OpenAIChatJudge(spec.endpoint, spec.model, api_key=spec.api_key, timeout_s=spec.timeout_s)
    if spec.backend == "hf":
        if not spec.model:
            raise RewardSystemError(
                "the hf judge needs a local checkpoint directory: set RLYARD_REWARD_JUDGE_MODEL or the "
                "reward's 'model' param"
            )
        return HFLocalJudge(spec.model)
    raise ConfigError(f"unknown judge backend {spec.backend!r}; expected one of {', '.join(BACKENDS)}")


def get_judge(shared: dict[str, Any], spec: JudgeSpec) -> JudgeBackend:
    """The backend for ``spec`` cached in ``shared`` (built on first use): one per checkpoint, one
    per endpoint (another model name on the same endpoint shares its HTTP connections).

    Building is synchronous and loads nothing, so concurrent callers on one event loop
    cannot build two backends for the same spec.
    """
    judge = shared.get(spec.cache_key)
    if judge is None:
        judge = make_judge(spec)
        shared[spec.cache_key] = judge
    if isinstance(judge, OpenAIChatJudge) and judge.model != spec.model:
        return judge.with_model(spec.model)
    return judge


__all__ = ["BACKENDS", "ChatMessages", "HFLocalJudge", "JudgeBackend", "JudgeSpec", "OpenAIChatJudge", "get_judge",
           "make_judge"]
