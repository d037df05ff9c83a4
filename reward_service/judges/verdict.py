"""Reading a judge's verdict: ``Score: N`` / ``Reason: ...`` text or a JSON object
``{"score": N, "reason": "..."}``, and asking again once when the reply does not parse."""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

from reward_service.judges.base import ChatMessages, JudgeBackend
from reward_service.types import RewardSystemError

logger = logging.getLogger(__name__)

# "Score: 8", "**Score:** 7.5", "Final score = 8/10", "score: 3 out of 10". The last one wins,
# so a judge that thinks aloud ("a score: 5 would be too low ... Score: 8") is read right.
_SCORE_RE = re.compile(
    r"\bscore\b\**\s*[:=]\s*\**\s*([-+]?\d+(?:\.\d+)?)(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?",
    re.IGNORECASE,
)
_REASON_RE = re.compile(r"\b(?:reason|reasoning|explanation|rationale)\b\**\s*[:=]\s*\**", re.IGNORECASE)
_JSON_OBJECT_RE = re.compile(r"\{[^{}]*\}", re.DOTALL)

MAX_REASON_CHARS = 1000
_EXCERPT_CHARS = 200


class UnparseableVerdict(ValueError):
    """The judge's reply holds no score in the expected format and range; the message says why."""


@dataclass(frozen=True)
class Verdict:
    """A parsed verdict: the score on the judge's scale, its reason, and the raw reply."""

    score: float
    reason: str
    raw: str


def excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    """The start of ``text``, marked with … when cut."""
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _clean_reason(text: str) -> str:
    text = text.strip().strip("*").strip()
    return text[:MAX_REASON_CHARS]


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _check_range(score: float, score_min: float, score_max: float) -> float:
    if not math.isfinite(score) or not score_min <= score <= score_max:
        raise UnparseableVerdict(f"score {score:g} is outside [{score_min:g}, {score_max:g}]")
    return score


def _parse_json(text: str, score_min: float, score_max: float) -> Verdict | None:
    stripped = text.strip()
    candidates = [stripped] if stripped.startswith("{") else []
    candidates += [m.group(0) for m in reversed(list(_JSON_OBJECT_RE.finditer(text)))]
    for candidate in candidates:
        try:
            obj = json.loads(candidate)
        except ValueError:
            continue
        if not isinstance(obj, dict) or "score" not in obj:
            continue
        score = _as_number(obj["score"])
        if score is None:
            raise UnparseableVerdict(f"the JSON score {obj['score']!r} is not a number")
        reason = obj.get("reason", obj.get("explanation", ""))
        reason_text = reason if isinstance(reason, str) else json.dumps(reason)
        return Verdict(_check_range(score, score_min, score_max), _clean_reason(reason_text), text)
    return None


def parse_verdict(text: str, score_min: float = 0.0, score_max: float = 10.0) -> Verdict:
    """Parse a judge's reply.

    A JSON object with a ``score`` key wins; otherwise the last ``Score: N`` (an ``/M`` or
    ``out of M`` suffix must name ``score_max``). The reason is the text after the last
    ``Reason:`` (up to the score when it comes first), else the reply without the score.

    Raises:
        UnparseableVerdict: no score, a score that is not a number, or one outside
            ``[score_min, score_max]`` (never clamped: a judge on the wrong scale is wrong).
    """
    from_json = _parse_json(text, score_min, score_max)
    if from_json is not None:
        return from_json
    matches = list(_SCORE_RE.finditer(text))
    if not matches:
        raise UnparseableVerdict("no 'Score: <number>' line and no JSON object with a 'score'")
    last = matches[-1]
    score = float(last.group(1))
    if last.group(2) is not None and float(last.group(2)) != score_max:
        raise UnparseableVerdict(f"the score is given out of {last.group(2)} but the scale is "
                                 f"[{score_min:g}, {score_max:g}]")
    _check_range(score, score_min, score_max)
    reasons = list(_REASON_RE.finditer(text))
    if reasons:
        label = reasons[-1]
        end = last.start() if label.end() <= last.start() else len(text)
        reason = text[label.end():end]
    else:
        reason = text[:last.start()] + text[last.end():]
    return Verdict(score, _clean_reason(reason), text)


def format_reminder(score_min: float, score_max: float, why: str) -> str:
    """What the judge is told when its reply did not parse."""
    return (
        f"Your reply could not be read ({why}). Answer again in exactly this format and nothing else:\n"
        f"Score: <a number from {score_min:g} to {score_max:g}>\nReason: <one sentence>"
    )


async def ask_verdict(
    judge: JudgeBackend,
    messages: ChatMessages,
    *,
    score_min: float,
    score_max: float,
    max_new_tokens: int,
    temperature: float = 0.0,
    judge_name: str = "judge",
) -> tuple[Verdict, int]:
    """Ask the judge; when the reply does not parse, ask once more (showing it its reply
    and the format) and return ``(verdict, attempts)``.

    Raises:
        RewardSystemError: both replies were unparseable (the message quotes them), or the
            backend failed. An unreadable judge is never scored 0.
    """
    first = await judge.complete(messages, max_new_tokens, temperature)
    try:
        return parse_verdict(first, score_min, score_max), 1
    except UnparseableVerdict as exc:
        first_why = str(exc)
    logger.warning("judge %s reply unparseable (%s), asking again: %r", judge_name, first_why, excerpt(first))
    retry = [
        *messages,
        {"role": "assistant", "content": excerpt(first, MAX_REASON_CHARS)},
        {"role": "user", "content": format_reminder(score_min, score_max, first_why)},
    ]
    second = await judge.complete(retry, max_new_tokens, temperature)
    try:
        return parse_verdict(second, score_min, score_max), 2
    except UnparseableVerdict as exc:
        raise RewardSystemError(
            f"judge {judge_name} gave no parseable verdict in 2 attempts ({exc}); "
            f"last output: {excerpt(second)!r}; first output: {excerpt(first)!r}"
        ) from exc
