"""The ``judge`` reward (model-judge): verdict parsing, the prompt, and both backends
end to end — a real OpenAI-compatible HTTP server on 127.0.0.1 with scripted replies,
and a tiny Qwen2 built and trained here."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
from transformers import AutoTokenizer

from reward_service.judges import HFLocalJudge, OpenAIChatJudge, get_judge
from reward_service.judges.base import JudgeSpec
from reward_service.judges.hf_local import plain_prompt
from reward_service.judges.verdict import UnparseableVerdict, excerpt, parse_verdict
from reward_service.registry import REGISTRY, RewardContext
from reward_service.rewards.judge import Judge, JudgeParams, judge_messages
from reward_service.settings import RewardSettings
from reward_service.types import RewardInputError, RewardKindName, RewardSystemError
from rlyard.domain import ScoringItem, Trajectory, Turn

ITEM = ScoringItem(
    item_id="q1",
    prediction="The capital is Paris.",
    ground_truth={"question": "What is the capital of France?", "answer": "Paris"},
)
GOOD = "Score: 8\nReason: the response names Paris, as the reference does."

MakeContext = Callable[..., RewardContext]
# The fixtures of tests/reward_service/conftest.py (test folders are not packages, so the
# helpers come as fixtures, typed loosely here).
StartChatServer = Callable[..., Any]
OverfitJudge = Callable[[Path, Any, str, Path], Path]


@pytest.fixture
async def make_ctx() -> AsyncIterator[MakeContext]:
    """Factory of reward contexts (settings by keyword); every one is closed at teardown."""
    made: list[RewardContext] = []

    def make(**settings: Any) -> RewardContext:
        ctx = RewardContext(settings=RewardSettings(**settings))
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        await ctx.close()


# --- verdict parsing ---------------------------------------------------------------------


def test_parse_score_and_reason() -> None:
    verdict = parse_verdict(GOOD)
    assert verdict.score == 8.0
    assert verdict.reason == "the response names Paris, as the reference does."


def test_the_last_score_wins_and_a_reason_before_it_is_kept() -> None:
    text = "A score: 3 would be harsh.\nReason: mostly right\n**Score:** 6.5"
    verdict = parse_verdict(text)
    assert verdict.score == 6.5
    assert verdict.reason == "mostly right"


def test_parse_json_verdicts() -> None:
    assert parse_verdict('{"score": 6, "reason": "ok"}') == parse_verdict('{"score": 6, "reason": "ok"}')
    verdict = parse_verdict('Here you go:\n```json\n{"score": "4", "reason": "half"}\n```', 1, 5)
    assert (verdict.score, verdict.reason) == (4.0, "half")


def test_a_score_out_of_the_max_is_accepted() -> None:
    assert parse_verdict("Score: 7/10\nReason: fine").score == 7.0
    assert parse_verdict("Final score = 9 out of 10").score == 9.0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "A great answer, well done.",
        "Score: 11\nReason: above the scale",
        "Score: -1\nReason: below the scale",
        "Score: 4/5\nReason: another scale",
        '{"score": "high", "reason": "not a number"}',
        '{"score": 12, "reason": "out of range"}',
    ],
)
def test_unparseable_verdicts_are_refused_not_clamped(text: str) -> None:
    with pytest.raises(UnparseableVerdict):
        parse_verdict(text, 0, 10)


# --- params and prompt -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"score_min": 5, "score_max": 5}, "score_max"),
        ({"template": "{rubric} {response} {answer}"}, "unknown field"),
        ({"template": "{rubric} {question}"}, "{response}"),
        ({"template": "{response} {"}, "format string"),
        ({"rubrik": "typo"}, "rubrik"),
    ],
)
def test_bad_params_are_refused(params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=fragment.replace("{", r"\{").replace("}", r"\}")):
        JudgeParams(**params)


def test_the_prompt_holds_question_reference_and_response() -> None:
    messages = judge_messages(ITEM, JudgeParams(score_min=1, score_max=5, rubric="Grade it."))
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    for part in ("Grade it.", "What is the capital of France?", "Reference answer:\nParis",
                 "The capital is Paris.", "from 1 to 5", "Score: <number>"):
        assert part in user


def test_the_prompt_lists_several_answers_and_falls_back_to_the_first_user_turn() -> None:
    trajectory = Trajectory(
        turns=(Turn(0, "system", "be brief"), Turn(1, "user", "Name a Nordic capital."),
               Turn(2, "assistant", "Oslo")),
        final_answer="Oslo",
    )
    item = ScoringItem(trajectory=trajectory, ground_truth={"answers": ["Oslo", "Helsinki"]})
    user = judge_messages(item, JudgeParams(system_prompt=""))[0]["content"]
    assert "Question:\nName a Nordic capital." in user
    assert "Any of:\n- Oslo\n- Helsinki" in user
    assert "Response to grade:\nOslo" in user


def test_a_missing_reference_is_an_input_error_unless_allowed() -> None:
    item = ScoringItem(prediction="x", ground_truth={"question": "q"})
    with pytest.raises(RewardInputError, match="reference answer"):
        judge_messages(item, JudgeParams())
    user = judge_messages(item, JudgeParams(require_reference=False))[1]["content"]
    assert "Reference answer:\n(not given)" in user


def test_judge_is_registered_as_a_model_judge() -> None:
    assert REGISTRY["judge"] is Judge
    assert Judge.kind is RewardKindName.MODEL_JUDGE
    assert "rubric" in Judge.Params.model_json_schema()["properties"]


# --- OpenAI-compatible endpoint ----------------------------------------------------------


async def test_a_good_reply_is_scored_and_explained(chat_server: StartChatServer, make_ctx: MakeContext) -> None:
    server = chat_server(GOOD)
    ctx = make_ctx(judge_endpoint=server.url, judge_model="judge-7b", judge_api_key="sk-test",
                   judge_max_new_tokens=64)
    outcome = await Judge(ctx).score(ITEM, JudgeParams())
    assert outcome.value == pytest.approx(0.8)
    assert outcome.explanation == "judge score 8 in [0, 10]: the response names Paris, as the reference does."
    assert len(server.requests) == 1
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == "Bearer sk-test"
    body = request["json"]
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("judge-7b", 64, 0.0)
    assert body["messages"] == judge_messages(ITEM, JudgeParams())


async def test_an_unparseable_reply_is_asked_again_once(chat_server: StartChatServer, make_ctx: MakeContext) -> None:
    server = chat_server("I think it is good!", "Score: 10\nReason: correct")
    outcome = await Judge(make_ctx(judge_endpoint=server.url)).score(ITEM, JudgeParams())
    assert outcome.value == 1.0
    assert outcome.explanation == "judge score 10 in [0, 10] after a retry: correct"
    assert len(server.requests) == 2
    retry = server.requests[1]["json"]["messages"]
    assert retry[:2] == server.requests[0]["json"]["messages"]
    assert retry[2] == {"role": "assistant", "content": "I think it is good!"}
    assert retry[3]["role"] == "user" and "Score: <a number from 0 to 10>" in retry[3]["content"]


async def test_two_unparseable_replies_are_an_error_not_a_zero(
    chat_server: StartChatServer, make_ctx: MakeContext
) -> None:
    server = chat_server("Looks right to me.", "Score: eleven\nReason: superb")
    with pytest.raises(RewardSystemError, match="no parseable verdict in 2 attempts") as raised:
        await Judge(make_ctx(judge_endpoint=server.url)).score(ITEM, JudgeParams())
    assert "Score: eleven" in str(raised.value) and "Looks right to me." in str(raised.value)
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [
        ({"status": 500, "body": '{"error": "out of memory"}'}, "failed with HTTP 500.*out of memory"),
        ({"status": 503, "body": "overloaded"}, "failed with HTTP 503"),
        ({"status": 400, "body": '{"error": "max_tokens too large"}'}, "rejected the request with HTTP 400"),
        ({"status": 401, "body": '{"error": "bad key"}'}, "rejected the request with HTTP 401"),
        ({"body": '{"result": "not a chat completion"}'}, "not a chat completion"),
    ],
)
async def test_endpoint_failures_are_system_errors_without_retry(
    chat_server: StartChatServer, make_ctx: MakeContext, reply: dict[str, Any], fragment: str
) -> None:
    server = chat_server(reply, GOOD)
    with pytest.raises(RewardSystemError, match=fragment):
        await Judge(make_ctx(judge_endpoint=server.url)).score(ITEM, JudgeParams())
    assert len(server.requests) == 1


async def test_a_closed_port_is_a_system_error(refused_endpoint: str, make_ctx: MakeContext) -> None:
    with pytest.raises(RewardSystemError, match=r"unreachable \(could not connect\)"):
        await Judge(make_ctx(judge_endpoint=refused_endpoint)).score(ITEM, JudgeParams())


async def test_a_slow_endpoint_times_out_as_a_system_error(
    chat_server: StartChatServer, make_ctx: MakeContext
) -> None:
    server = chat_server({"content": GOOD, "hang": True})
    with pytest.raises(RewardSystemError, match=r"timed out after 0\.3 s"):
        await Judge(make_ctx(judge_endpoint=server.url, judge_timeout_s=0.3)).score(ITEM, JudgeParams())


async def test_a_json_reply_on_a_custom_scale_unnormalised(
    chat_server: StartChatServer, make_ctx: MakeContext
) -> None:
    server = chat_server('{"score": 4, "reason": "close"}')
    outcome = await Judge(make_ctx(judge_endpoint=server.url)).score(
        ITEM, JudgeParams(score_min=1, score_max=5, normalize=False)
    )
    assert (outcome.value, outcome.explanation) == (4.0, "judge score 4 in [1, 5]: close")
    normalised = chat_server('{"score": 4, "reason": "close"}')
    outcome = await Judge(make_ctx(judge_endpoint=normalised.url)).score(ITEM, JudgeParams(score_min=1, score_max=5))
    assert outcome.value == pytest.approx(0.75)


async def test_params_pick_another_judge_and_backends_are_shared(
    chat_server: StartChatServer, make_ctx: MakeContext
) -> None:
    default = chat_server("Score: 2\nReason: a", "Score: 3\nReason: b")
    other = chat_server("Score: 9\nReason: c", "Score: 10\nReason: d")
    ctx = make_ctx(judge_endpoint=default.url, judge_model="small", judge_api_key="sk-default")
    judge = Judge(ctx)
    override = JudgeParams(endpoint=other.url, model="big")
    values = [
        (await judge.score(ITEM, JudgeParams())).value,
        (await judge.score(ITEM, override)).value,
        (await judge.score(ITEM, JudgeParams())).value,
        (await judge.score(ITEM, override)).value,
    ]
    assert values == pytest.approx([0.2, 0.9, 0.3, 1.0])
    assert [r["json"]["model"] for r in default.requests] == ["small", "small"]
    assert [r["json"]["model"] for r in other.requests] == ["big", "big"]
    # The service's key goes only to the configured endpoint.
    assert all(r["headers"]["authorization"] == "Bearer sk-default" for r in default.requests)
    assert all("authorization" not in r["headers"] for r in other.requests)
    backends = [b for k, b in ctx.shared.items() if k.startswith("judge:")]
    assert len(backends) == 2 and all(isinstance(b, OpenAIChatJudge) for b in backends)
    await ctx.close()
    assert all(b.closed for b in backends)  # type: ignore[attr-defined]


async def test_model_names_share_their_endpoints_backend(chat_server: StartChatServer, make_ctx: MakeContext) -> None:
    """A judge backend was cached per (endpoint, model): a caller naming a new model with every
    request grew the service's memory without bound (bench/fuzz_reward.py). Backends are per
    endpoint now; the model is a name sent with the request."""
    server = chat_server(*["Score: 5\nReason: ok"] * 20)
    ctx = make_ctx(judge_endpoint=server.url, judge_model="base")
    judge = Judge(ctx)
    for i in range(20):
        await judge.score(ITEM, JudgeParams(model=f"m{i}"))
    assert [r["json"]["model"] for r in server.requests] == [f"m{i}" for i in range(20)]
    assert [k for k in ctx.shared if k.startswith("judge:")] == [f"judge:openai:{server.url}"]
    await ctx.close()


# --- local HF model ----------------------------------------------------------------------


async def test_a_random_tiny_model_generates_and_its_babble_is_an_error(
    tiny_judge_dir: Path, make_ctx: MakeContext
) -> None:
    backend = HFLocalJudge(tiny_judge_dir)
    messages = judge_messages(ITEM, JudgeParams())
    prompt = backend.render_prompt(messages)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    babble = await backend.complete(messages, max_new_tokens=12)
    assert babble.strip(), "the random model should generate some text"
    assert babble == await backend.complete(messages, max_new_tokens=12)  # greedy: deterministic
    await backend.aclose()

    ctx = make_ctx(judge_backend="hf", judge_model=str(tiny_judge_dir), judge_max_new_tokens=12)
    with pytest.raises(RewardSystemError, match="no parseable verdict in 2 attempts") as raised:
        await Judge(ctx).score(ITEM, JudgeParams())
    assert f"first output: {excerpt(babble)!r}" in str(raised.value)
    assert isinstance(ctx.shared[f"judge:hf:{tiny_judge_dir}"], HFLocalJudge)


async def test_a_tokenizer_without_chat_template_gets_a_plain_prompt(tiny_judge_dir: Path, tmp_path: Path) -> None:
    plain_dir = tmp_path / "plain"
    shutil.copytree(tiny_judge_dir, plain_dir)
    tokenizer = AutoTokenizer.from_pretrained(plain_dir)
    tokenizer.chat_template = None
    (plain_dir / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer.save_pretrained(plain_dir)
    backend = HFLocalJudge(plain_dir)
    messages = judge_messages(ITEM, JudgeParams())
    assert backend.render_prompt(messages) == plain_prompt(messages)
    assert plain_prompt(messages).endswith("\n\nAssistant:")
    assert isinstance(await backend.complete(messages, max_new_tokens=4), str)
    await backend.aclose()


async def test_a_missing_checkpoint_is_a_system_error(tmp_path: Path, make_ctx: MakeContext) -> None:
    ctx = make_ctx(judge_backend="hf", judge_model=str(tmp_path / "nowhere"))
    with pytest.raises(RewardSystemError, match="nowhere"):
        await Judge(ctx).score(ITEM, JudgeParams())


async def test_a_trained_tiny_judge_scores_through_a_per_call_backend(
    tiny_judge_dir: Path, tmp_path: Path, overfit_judge: OverfitJudge, make_ctx: MakeContext
) -> None:
    params = JudgeParams(backend="hf", model=str(tmp_path / "judge"), max_new_tokens=16)
    trained = overfit_judge(tiny_judge_dir, judge_messages(ITEM, params), "Score: 7\nReason: fine", tmp_path / "judge")
    # The service is configured for an HTTP judge; the params pick the local model.
    ctx = make_ctx(judge_backend="openai", judge_endpoint="http://127.0.0.1:9/v1")
    outcome = await Judge(ctx).score(ITEM, params)
    assert outcome.value == pytest.approx(0.7)
    assert outcome.explanation == "judge score 7 in [0, 10]: fine"
    assert get_judge(ctx.shared, JudgeSpec("hf", str(trained))) is ctx.shared[f"judge:hf:{trained}"]
