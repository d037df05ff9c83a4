"""Requests a hostile or buggy caller sends the reward service, over real gRPC (issue 19): each is
INVALID_ARGUMENT naming what is wrong — never OK with a non-finite total, never UNKNOWN with a
Python exception's name, never a traceback at ERROR in the service's log — and the service never
dials an address a caller chose."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from reward_service.app import reward_service
from reward_service.settings import RewardSettings
from rlyard.client import NO_RETRY
from rlyard.common.v1 import common_pb2
from rlyard.domain import ScoreStatus, ScoringItem, parse_spec
from rlyard.domain.convert import score_from_pb
from rlyard.reward.v1 import reward_pb2
from rlyard.reward_client import RewardClient
from rlyard.server import RunningServer, start_server
from rlyard.settings import ServerSettings

# What must never reach a caller: the name of a Python exception or a traceback.
PYTHON_NAMES = re.compile(r"Error\b|Exception\b|Traceback|<class ")
QA_GT = '{"answers": ["paris"]}'

StartReward = Callable[..., Any]


@pytest.fixture
async def start_reward() -> AsyncIterator[StartReward]:
    """Factory: a reward service on 127.0.0.1:0 with ``RewardSettings(**overrides)`` and a client."""
    started: list[tuple[RunningServer, RewardClient]] = []

    async def start(**overrides: Any) -> RewardClient:
        running = await start_server(reward_service(RewardSettings(**overrides)), ServerSettings())
        client = RewardClient(running.address, timeout=30.0, retry=NO_RETRY)
        started.append((running, client))
        return client

    yield start
    for running, client in started:
        await client.close()
        await running.stop(0)


@pytest.fixture
async def reward(start_reward: StartReward) -> RewardClient:
    client: RewardClient = await start_reward()
    return client


def term(name: str, weight: float = 1.0, params_json: str = "") -> reward_pb2.RewardTerm:
    return reward_pb2.RewardTerm(name=name, weight=weight, params_json=params_json)


def request(*terms: reward_pb2.RewardTerm, prediction: str = "Paris", ground_truth_json: str = QA_GT,
            **fields: Any) -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(item_id="i", prediction=prediction, ground_truth_json=ground_truth_json,
                                   spec=reward_pb2.RewardSpec(terms=list(terms)), **fields)


async def refused(client: RewardClient, req: reward_pb2.ScoreRequest, *words: str) -> str:
    """Send ``req`` as ``Score`` and as a one-item ``ScoreBatch``: both INVALID_ARGUMENT, with
    ``words`` in the message and no Python exception name."""
    details = []
    for call in (lambda: client.stub.Score(req, timeout=30),
                 lambda: client.stub.ScoreBatch(reward_pb2.ScoreBatchRequest(items=[req]), timeout=30)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call()
        text = err.value.details() or ""
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.value.code(), text)
        assert not PYTHON_NAMES.search(text), text
        for word in words:
            assert word in text, (word, text)
        details.append(text)
    return details[0]


@pytest.fixture(autouse=True)
def no_traceback_logged(caplog: pytest.LogCaptureFixture) -> Any:
    """A refused request is not a failure of the service: nothing at ERROR, no traceback."""
    with caplog.at_level(logging.WARNING):
        yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


# ---------------------------------------------------------------- 3: weights that are not finite
@pytest.mark.parametrize("weight", [float("nan"), float("inf"), float("-inf")])
async def test_a_non_finite_weight_is_invalid_argument(reward: RewardClient, weight: float) -> None:
    await refused(reward, request(term("qa_em", weight)), "qa_em", "weight", "not a finite number")


async def test_weights_that_add_up_past_the_largest_float_are_invalid_argument(reward: RewardClient) -> None:
    # qa_em and qa_f1 are both 1 here: 1e308 + 1e308 was answered OK with total inf
    await refused(reward, request(term("qa_em", 1e308), term("qa_f1", 1e308)), "largest float")


@pytest.mark.parametrize("params_json, words", [
    ('{"terms": {"qa_em": NaN}}', ("composite", "NaN")),
    ('{"terms": {"qa_em": Infinity}}', ("composite", "Infinity")),
    ('{"terms": {"qa_em": 1e308, "qa_f1": 1e308}}', ("composite", "largest float")),
    ('{"terms": {"no_such_reward": 1}}', ("unknown reward", "no_such_reward")),
    ('{"terms": {"qa_em": {"weight": 1, "squad_version": "v9"}}}', ("qa_em", "squad_version")),
])
async def test_a_composite_with_a_bad_inner_spec_is_invalid_argument(reward: RewardClient, params_json: str,
                                                                     words: tuple[str, ...]) -> None:
    await refused(reward, request(term("composite", 1.0, params_json)), *words)


async def test_a_total_that_overflows_at_scoring_time_is_invalid_argument(reward: RewardClient) -> None:
    """Weights that add up to a finite number can still overflow with the values: 1e308 × 2 (the
    composite's total) is refused, not answered as inf."""
    inner = '{"terms": {"qa_em": 1, "qa_f1": 1}}'
    await refused(reward, request(term("composite", 1e308, inner)), "not a finite number")


async def test_parameters_that_make_a_value_non_finite_are_invalid_argument(reward: RewardClient) -> None:
    gt = '{"tool_calls": [{"name": "a", "arguments": {}}]}'
    req = request(term("tool_call_match", 1.0, '{"r_max": 1e308, "r_min": -1e308}'), prediction="none",
                  ground_truth_json=gt)
    await refused(reward, req, "tool_call_match", "r_max - r_min")


async def test_composite_nesting_is_bounded(reward: RewardClient) -> None:
    params: dict[str, Any] = {"terms": {"qa_em": 1}}
    for _ in range(6):
        params = {"terms": {"composite": params}}
    import json

    await refused(reward, request(term("composite", 1.0, json.dumps(params))), "nest deeper")


async def test_finite_weights_still_score(reward: RewardClient) -> None:
    resp = score_from_pb(await reward.stub.Score(request(term("qa_em", 1e300), term("qa_f1", -2.5)), timeout=30))
    assert resp.status == ScoreStatus.OK and resp.total == pytest.approx(1e300 - 2.5)


# ---------------------------------------------------------------- 4: malformed fields
async def test_an_undefined_trajectory_status_is_invalid_argument_naming_the_field(reward: RewardClient) -> None:
    req = request(term("qa_em"), trajectory=common_pb2.Trajectory(final_answer="Paris", status=77))
    message = await refused(reward, req, "trajectory.status", "77", "TRAJECTORY_STATUS_COMPLETED")
    assert "Enum" not in message


async def test_an_undefined_turn_role_is_invalid_argument_naming_the_field(reward: RewardClient) -> None:
    turns = [common_pb2.Turn(role=common_pb2.ROLE_USER, text="q"), common_pb2.Turn(role=9, text="a")]
    req = request(term("qa_em"), trajectory=common_pb2.Trajectory(turns=turns, status=1))
    await refused(reward, req, "trajectory.turns[1].role", "9")


@pytest.mark.parametrize("ground_truth_json, words", [
    ("[" * 1000 + "]" * 1000, ("ground_truth_json", "nests deeper")),
    ("[" * 100 + "]" * 100, ("ground_truth_json", "nests deeper")),
    ('{"answers": [' + "7" * 4301 + "]}", ("ground_truth_json", "too many digits")),
    ('{"answers": [NaN]}', ("ground_truth_json", "NaN")),
    ('{"answers": ', ("ground_truth_json", "not JSON")),
])
async def test_bad_ground_truth_json_is_invalid_argument(reward: RewardClient, ground_truth_json: str,
                                                         words: tuple[str, ...]) -> None:
    await refused(reward, request(term("qa_em"), ground_truth_json=ground_truth_json), *words)


@pytest.mark.parametrize("params_json, words", [
    ("{" * 2000, ("params_json",)),
    ('{"a": ' * 500 + "1" + "}" * 500, ("params_json", "nests deeper")),
    ('{"squad_version": ' + "9" * 5000 + "}", ("params_json", "too many digits")),
    ("[1, 2]", ("params_json", "JSON object")),
])
async def test_bad_params_json_is_invalid_argument(reward: RewardClient, params_json: str,
                                                   words: tuple[str, ...]) -> None:
    await refused(reward, request(term("qa_em", 1.0, params_json)), *words)


async def test_a_batch_names_the_bad_item(reward: RewardClient) -> None:
    good = request(term("qa_em"))
    bad = request(term("qa_em"), trajectory=common_pb2.Trajectory(status=-3))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await reward.stub.ScoreBatch(reward_pb2.ScoreBatchRequest(items=[good, good, bad]), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[2]" in (err.value.details() or "") and "trajectory.status" in (err.value.details() or "")
    bad_truth = reward_pb2.ScoreRequest(item_id="q-7", prediction="Paris", ground_truth_json='{"answers": [')
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await reward.stub.ScoreBatch(reward_pb2.ScoreBatchRequest(items=[good, bad_truth], default_spec=good.spec),
                                     timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == ("items[1] (item 'q-7'): ground_truth_json is not JSON: Expecting value at line 1 "
                                   "column 14")


async def test_tool_call_arguments_that_cannot_be_read_score_r_min(reward: RewardClient) -> None:
    """A trajectory's calls with arguments nested 5,000 deep or holding a 5,000-digit integer are
    unreadable calls (r_min), not a RecursionError or ValueError."""
    gt = '{"tool_calls": [{"name": "a", "arguments": {"x": 1}}]}'
    for arguments in ("[" * 5000 + "]" * 5000, '{"x": ' + "1" * 5000 + "}"):
        call = common_pb2.ToolCall(call_id="c0", name="a", arguments_json=arguments)
        traj = common_pb2.Trajectory(turns=[common_pb2.Turn(role=common_pb2.ROLE_ASSISTANT, tool_calls=[call])],
                                     status=1)
        resp = score_from_pb(await reward.stub.Score(
            request(term("tool_call_match"), prediction="", ground_truth_json=gt, trajectory=traj), timeout=30))
        assert resp.status == ScoreStatus.OK and resp.total == -3.0, resp
        assert "not a JSON object" in resp.components[0].explanation


# ---------------------------------------------------------------- 8: addresses a caller chooses
@pytest.mark.parametrize("name, params_json, words", [
    ("sql_execution", '{"tool_server": "169.254.169.254:80"}', ("tool_server", "169.254.169.254:80")),
    ("poi_correctness", '{"tool_server": "10.0.0.1:50055"}', ("tool_server", "10.0.0.1:50055")),
    ("judge", '{"endpoint": "http://169.254.169.254/latest", "require_reference": false}',
     ("endpoint", "169.254.169.254")),
    ("judge", '{"backend": "hf", "model": "/etc", "require_reference": false}', ("model", "/etc")),
])
async def test_a_spec_may_not_name_an_address_the_service_is_not_configured_with(
    reward: RewardClient, name: str, params_json: str, words: tuple[str, ...]
) -> None:
    await refused(reward, request(term(name, 1.0, params_json)), f"bad params for reward {name!r}", *words)


async def test_configured_and_allowed_targets_are_accepted(start_reward: StartReward, chat_server: Any) -> None:
    configured, other = chat_server("Score: 8\nReason: ok."), chat_server("Score: 2\nReason: meh.")
    client = await start_reward(judge_endpoint=configured.url, allowed_judge_endpoints=(other.url + "/",),
                                allowed_tool_targets=("127.0.0.1:1",))
    item = ScoringItem("i", "Paris", ground_truth={"answers": ["paris"]})
    judged = await client.score(item, parse_spec({"judge": {"endpoint": other.url}}))
    assert judged.status == ScoreStatus.OK and judged.total == pytest.approx(0.2)
    judged = await client.score(item, parse_spec({"judge": {"endpoint": configured.url + "/chat/completions"}}))
    assert judged.total == pytest.approx(0.8)
    # an allowed tool server is dialled (nothing listens there: a system error, not a refusal)
    sql = await client.score(ScoringItem("s", "SELECT 1", ground_truth={"db_id": "d", "query": "SELECT 1"}),
                             parse_spec({"sql_execution": {"tool_server": "127.0.0.1:1"}}))
    assert sql.status == ScoreStatus.SYSTEM_ERROR and "127.0.0.1:1" in sql.error
    assert not configured.requests[1:] and len(other.requests) == 1
