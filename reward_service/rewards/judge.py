"""``judge``: a judge model grades the response against a rubric (RLFactory's model-judge
reward). The reply ``Score: N`` / ``Reason: ...`` (or JSON ``{"score", "reason"}``) becomes
the reward, normalised to [0, 1] by default, with the judge's reason as the explanation.

A reply that does not parse is asked for once more, then reported as a ``RewardSystemError``
(the trajectory is dropped, never scored 0). The judge is a local HF model or any
OpenAI-compatible endpoint (``RLYARD_REWARD_JUDGE_*``); a spec's params may name another
backend, endpoint or model, so one service serves several judges (one backend per checkpoint or
endpoint, built once; a model name goes with each request) — an endpoint or a local checkpoint
only among those the service is configured with or allowed (``RLYARD_REWARD_ALLOWED_JUDGE_ENDPOINTS``,
``…_CHECKPOINTS``).

Template fields: ``{rubric}``, ``{question}`` (ground truth ``question``, else the first user
turn), ``{reference}`` (ground truth ``answer``/``answers``), ``{response}``, ``{context}`` (the
trajectory's tool results as the policy saw them, for faithfulness rubrics such as the local-life
metrics of ``envs.local_life.judge.judge_spec``), ``{score_min}``, ``{score_max}``.
"""

from __future__ import annotations

import logging
import math
import string
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from reward_service.judges import JudgeSpec, get_judge
from reward_service.judges.openai_http import chat_completions_url
from reward_service.judges.verdict import ask_verdict
from reward_service.registry import RewardContext, register
from reward_service.types import RewardInputError, RewardKindName, RewardOutcome
from rlyard.domain import ScoringItem

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "You are a strict and fair grader. You follow the rubric and the answer format exactly."

DEFAULT_RUBRIC = (
    "Judge whether the response answers the question correctly, using the reference answer as the truth.\n"
    "- The maximum score: the response states the same answer as the reference (wording may differ).\n"
    "- A middle score: the response is partly correct or correct but with wrong extra claims.\n"
    "- The minimum score: the response is wrong, contradicts the reference, or gives no answer.\n"
    "Judge only correctness, not style or length."
)

DEFAULT_TEMPLATE = (
    "{rubric}\n\n"
    "Question:\n{question}\n\n"
    "Reference answer:\n{reference}\n\n"
    "Response to grade:\n{response}\n\n"
    "Give a score from {score_min} to {score_max}. Answer in exactly this format:\n"
    "Score: <number>\n"
    "Reason: <one sentence>"
)

TEMPLATE_FIELDS = frozenset({"rubric", "question", "reference", "response", "context", "score_min", "score_max"})
NO_CONTEXT = "(no tool results)"
NOT_GIVEN = "(not given)"


class JudgeParams(BaseModel):
    """Parameters of ``judge``. Literal braces in ``template`` are written ``{{`` and ``}}``."""

    model_config = ConfigDict(extra="forbid")

    rubric: str = Field(default=DEFAULT_RUBRIC, description="what the judge grades and how")
    score_min: float = Field(default=0.0, description="the lowest score the judge may give")
    score_max: float = Field(default=10.0, description="the highest score the judge may give")
    normalize: bool = Field(default=True, description="map the score to [0, 1]; else return it as given")
    template: str = Field(
        default=DEFAULT_TEMPLATE,
        description="the user message; fields: " + ", ".join(f"{{{f}}}" for f in sorted(TEMPLATE_FIELDS)),
    )
    system_prompt: str = Field(default=DEFAULT_SYSTEM_PROMPT, description="the system message ('' for none)")
    require_reference: bool = Field(
        default=True,
        description="an item whose ground truth has no answer is an input error (when the template uses it)",
    )
    backend: Literal["openai", "hf"] | None = Field(default=None, description="override RLYARD_REWARD_JUDGE_BACKEND")
    endpoint: str | None = Field(default=None, description="override RLYARD_REWARD_JUDGE_ENDPOINT (openai backend)")
    model: str | None = Field(default=None, description="override RLYARD_REWARD_JUDGE_MODEL (name, or checkpoint dir)")
    max_new_tokens: int | None = Field(default=None, ge=1, description="override RLYARD_REWARD_JUDGE_MAX_NEW_TOKENS")
    temperature: float = Field(default=0.0, ge=0.0, description="0 = greedy")
    context_max_chars: int = Field(
        default=8000, ge=100, description="{context} (the trajectory's tool results) is cut to this many characters"
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.score_max > self.score_min:
            raise ValueError(f"score_max ({self.score_max:g}) must be greater than score_min ({self.score_min:g})")
        if not math.isfinite(self.score_max - self.score_min):
            raise ValueError(f"score_max - score_min ({self.score_max:g} - {self.score_min:g}) is not a finite number")
        try:
            used = {name for _, name, _, _ in string.Formatter().parse(self.template) if name is not None}
        except ValueError as exc:
            raise ValueError(f"template is not a valid format string ({exc}); write literal braces as {{{{ }}}}") \
                from exc
        unknown = used - TEMPLATE_FIELDS
        if unknown:
            raise ValueError(
                f"template uses unknown field(s) {sorted(unknown)}; available: {sorted(TEMPLATE_FIELDS)} "
                "(write literal braces as {{ }})"
            )
        if "response" not in used:
            raise ValueError("template must contain {response}, or the judge never sees what it grades")
        return self

    @property
    def template_fields(self) -> set[str]:
        """The fields the template uses."""
        return {name for _, name, _, _ in string.Formatter().parse(self.template) if name}


def _question(item: ScoringItem) -> str | None:
    gt = item.ground_truth
    if isinstance(gt, dict) and gt.get("question"):
        return str(gt["question"])
    if item.trajectory is not None:
        for turn in item.trajectory.turns:
            if turn.role == "user" and turn.text.strip():
                return turn.text
    return None


def _reference(item: ScoringItem) -> str | None:
    gt = item.ground_truth
    answers: Any = gt
    if isinstance(gt, dict):
        answers = gt.get("answer")
        if answers is None or answers == "" or answers == []:
            answers = gt.get("answers")
    if answers is None or answers == "":
        return None
    if isinstance(answers, list | tuple):
        texts = [str(a) for a in answers if str(a).strip()]
        if not texts:
            return None
        return texts[0] if len(texts) == 1 else "Any of:\n" + "\n".join(f"- {t}" for t in texts)
    return str(answers)


def _context(item: ScoringItem, max_chars: int) -> str:
    """The trajectory's tool results, turn by turn, as the policy saw them (cut to ``max_chars``)."""
    if item.trajectory is None:
        return NO_CONTEXT
    parts = []
    for turn in item.trajectory.turns:
        if turn.role == "tool":
            text = turn.text or "\n".join(r.text for r in turn.tool_results)
            if text.strip():
                parts.append(text.strip())
    text = "\n\n".join(parts)
    if not text:
        return NO_CONTEXT
    return text if len(text) <= max_chars else text[:max_chars] + f"\n… ({len(text) - max_chars} more characters cut)"


def judge_messages(item: ScoringItem, params: JudgeParams) -> list[dict[str, str]]:
    """The chat the judge is given for ``item``.

    Raises:
        RewardInputError: the template uses the reference answer, ``require_reference`` is on
            and the ground truth has no ``answer``/``answers``.
    """
    reference = _reference(item)
    if reference is None and params.require_reference and "reference" in params.template_fields:
        raise RewardInputError(
            "judge needs a reference answer: the ground truth has no 'answer' or 'answers' "
            "(or set require_reference=false)"
        )
    user = params.template.format(
        rubric=params.rubric,
        question=_question(item) or NOT_GIVEN,
        reference=reference if reference is not None else NOT_GIVEN,
        response=item.text,
        context=_context(item, params.context_max_chars) if "context" in params.template_fields else "",
        score_min=f"{params.score_min:g}",
        score_max=f"{params.score_max:g}",
    )
    messages = [{"role": "system", "content": params.system_prompt}] if params.system_prompt else []
    messages.append({"role": "user", "content": user})
    return messages


@register
class Judge:
    """A judge model scores the response against a rubric."""

    name = "judge"
    description = (
        "A judge model (local HF model or OpenAI-compatible endpoint) grades the response against a rubric; "
        "the score is normalised to [0, 1] and the judge's reason is the explanation."
    )
    kind = RewardKindName.MODEL_JUDGE
    Params = JudgeParams
    # the response goes into the judge's prompt; a judge model reads some thousands of tokens
    max_text_chars = 200_000

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    def check_params(self, params: JudgeParams) -> None:
        """A spec may pick only a configured or allowed judge: the service never sends a request to
        an endpoint, nor loads a checkpoint directory, of a caller's choosing."""
        settings = self.ctx.settings
        backend = params.backend or settings.judge_backend
        if backend == "openai" and params.endpoint is not None:
            allowed = {chat_completions_url(e) for e in settings.judge_endpoints}
            if chat_completions_url(params.endpoint) not in allowed:
                raise ValueError(f"endpoint {params.endpoint[:200]!r} is not a judge this service may call; allowed: "
                                 f"{', '.join(sorted(settings.judge_endpoints))} "
                                 "(RLYARD_REWARD_ALLOWED_JUDGE_ENDPOINTS adds more)")
        if backend == "hf" and params.model is not None and params.model not in settings.judge_checkpoints:
            raise ValueError(f"model {params.model[:200]!r} is not a judge checkpoint this service may load; allowed: "
                             f"{', '.join(sorted(settings.judge_checkpoints)) or '(none)'} "
                             "(RLYARD_REWARD_ALLOWED_JUDGE_CHECKPOINTS adds more)")

    def floor(self, params: JudgeParams, item: ScoringItem) -> float:
        """The lowest value: 0 normalised, else ``score_min``."""
        return 0.0 if params.normalize else params.score_min

    def judge_spec(self, params: JudgeParams) -> JudgeSpec:
        """Which judge the params select (the service's settings fill what they leave out).

        The API key of the settings goes only to the configured endpoint, never to an
        endpoint that a spec names.
        """
        settings = self.ctx.settings
        endpoint = params.endpoint or settings.judge_endpoint
        same_endpoint = endpoint.rstrip("/") == settings.judge_endpoint.rstrip("/")
        return JudgeSpec(
            backend=params.backend or settings.judge_backend,
            model=params.model or settings.judge_model,
            endpoint=endpoint,
            api_key=settings.judge_api_key if same_endpoint else "",
            timeout_s=settings.judge_timeout_s,
        )

    async def score(self, item: ScoringItem, params: JudgeParams) -> RewardOutcome:
        """Ask the judge; raise ``RewardSystemError`` when it cannot answer in the format."""
        messages = judge_messages(item, params)
        spec = self.judge_spec(params)
        judge = get_judge(self.ctx.shared, spec)
        verdict, attempts = await ask_verdict(
            judge,
            messages,
            score_min=params.score_min,
            score_max=params.score_max,
            max_new_tokens=params.max_new_tokens or self.ctx.settings.judge_max_new_tokens,
            temperature=params.temperature,
            judge_name=f"{spec.describe()} (item {item.item_id or '?'})",
        )
        value = verdict.score
        if params.normalize:
            value = (verdict.score - params.score_min) / (params.score_max - params.score_min)
        retried = " after a retry" if attempts > 1 else ""
        explanation = (
            f"judge score {verdict.score:g} in [{params.score_min:g}, {params.score_max:g}]{retried}: "
            f"{verdict.reason or '(no reason given)'}"
        )
        return RewardOutcome(value=value, explanation=explanation)
