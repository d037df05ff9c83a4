"""Fuzzing the reward service's ``Score`` and ``ScoreBatch`` over real gRPC (issue 19): random
specs (NaN, infinite and huge weights, params JSON of any shape), predictions (unclosed tags, huge
strings), ground truths and trajectories with undefined enum values. Whatever comes in, the
service answers with a status it means: never UNKNOWN or INTERNAL, never a Python exception's name,
never OK with a non-finite total, nothing logged at ERROR; and it still answers a plain request."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reward_service.app import reward_service
from reward_service.settings import RewardSettings
from rlyard.common.v1 import common_pb2
from rlyard.reward.v1 import reward_pb2, reward_pb2_grpc
from rlyard.server import RunningServer, start_server
from rlyard.settings import ServerSettings

PYTHON_NAMES = re.compile(r"Error\b|Exception\b|Traceback|<class ")
NAMES = ["qa_em", "qa_f1", "search_r1", "format", "tool_call_match", "composite", "sql_execution", "judge",
         "poi_correctness", "no_such_reward", ""]
TAGS = ["<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>", "{", "}", "[", "]", '"',
        "\n", " ", "paris", '{"name": "a", "arguments": {}}', "SELECT 1", "```sql", "```", "rated 4.5", "SH000001"]
HUGE = ["<think>" * 160_000, "<tool_call>" * 100_000, "x" * 1_100_000, "<answer>" + "a " * 300_000,
        "[" * 50_000, "rating" + " " * 200_000]

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
tag_soup = st.lists(st.sampled_from(TAGS), max_size=30).map("".join)
prediction = st.one_of(text, tag_soup, st.sampled_from(HUGE))
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**30), 10**30),
                   st.sampled_from([1e308, -1e308, 5e307, 0.0, 1.0]))
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=False), text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)
known_keys = st.sampled_from(["answers", "tool_calls", "db_id", "query", "terms", "weight", "r_max", "r_min",
                              "format_score", "endpoint", "tool_server", "backend", "model", "squad_version",
                              "schedule", "checklist", "gold_answers", "aggregate", "think_tag"])
json_object = st.dictionaries(st.one_of(known_keys, text), st.one_of(json_value, number), max_size=5)
odd_json = st.sampled_from(["NaN", '{"a": Infinity}', "[" * 2000 + "]" * 2000, '{"x": ' + "9" * 5000 + "}",
                            "{", "", "null", '"text"', "[1, 2]", '{"answers": ' * 70 + "1" + "}" * 70])
json_text = st.one_of(json_object.map(json.dumps), json_value.map(json.dumps), odd_json)
composite_params = st.dictionaries(st.sampled_from(NAMES), number, min_size=1, max_size=3).map(
    lambda terms: json.dumps({"terms": terms}, allow_nan=True))


@st.composite
def terms(draw: Any) -> list[reward_pb2.RewardTerm]:
    out = []
    for name in draw(st.lists(st.sampled_from(NAMES), min_size=0, max_size=3)):
        params = draw(composite_params if name == "composite" and draw(st.booleans()) else json_text)
        out.append(reward_pb2.RewardTerm(name=name, weight=draw(number.map(float)), params_json=params))
    return out


@st.composite
def trajectories(draw: Any) -> common_pb2.Trajectory:
    turns = []
    for i in range(draw(st.integers(0, 3))):
        calls = [common_pb2.ToolCall(call_id=draw(text), name=draw(st.sampled_from(["a", "sql_query", ""])),
                                     arguments_json=draw(json_text)) for _ in range(draw(st.integers(0, 2)))]
        results = [common_pb2.ToolResult(call_id=draw(text), name="sql_query", structured_json=draw(json_text),
                                         is_error=draw(st.booleans()),
                                         content=[common_pb2.Content(text=draw(text))],
                                         system_error=common_pb2.ErrorStatus(code=draw(st.integers(0, 20))))
                   for _ in range(draw(st.integers(0, 1)))]
        content = []
        if draw(st.integers(0, 9)) == 0:
            content.append(common_pb2.Content(image=common_pb2.Image(
                data=draw(st.binary(max_size=8)), mime_type=draw(st.sampled_from(["image/png", "text/html", ""])),
                width=draw(st.integers(-2, 3)), height=draw(st.integers(-2, 3)))))
        turns.append(common_pb2.Turn(index=i, role=draw(st.integers(-1, 7)), text=draw(prediction),
                                     tool_calls=calls, tool_results=results, content=content))
    return common_pb2.Trajectory(turns=turns, final_answer=draw(text), status=draw(st.integers(-3, 80)))


@st.composite
def score_requests(draw: Any) -> reward_pb2.ScoreRequest:
    request = reward_pb2.ScoreRequest(item_id=draw(text), prediction=draw(prediction),
                                      ground_truth_json=draw(json_text),
                                      training_step=draw(st.integers(-(2**63), 2**63 - 1)),
                                      spec=reward_pb2.RewardSpec(terms=draw(terms())))
    if draw(st.booleans()):
        request.trajectory.CopyFrom(draw(trajectories()))
    return request


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class ServerThread:
    """A reward service on 127.0.0.1:0 on its own event loop in a thread (hypothesis tests are
    synchronous), and a blocking stub for it. Its tool servers and judge are a refused port; what
    is logged at ERROR while it runs is kept in ``errors``."""

    def __init__(self) -> None:
        self._handler = _Errors()
        logging.getLogger().addHandler(self._handler)
        self.errors = self._handler.records
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))       # bound, never listening: every dependency is down
        refused = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed-reward", daemon=True)
        self.thread.start()
        reward_settings = RewardSettings(sql_tools_target=refused, poi_tools_target=refused, tool_timeout_s=2.0,
                                         judge_endpoint=f"http://{refused}/v1", judge_timeout_s=2.0)
        self.running: RunningServer = self.run(start_server(reward_service(reward_settings), ServerSettings()))
        self.channel = grpc.insecure_channel(self.running.address, options=[
            ("grpc.max_send_message_length", 16 * 1024 * 1024), ("grpc.max_receive_message_length", 16 * 1024 * 1024)])
        self.stub = reward_pb2_grpc.RewardServiceStub(self.channel)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.channel.close()
        self.run(self.running.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.sock.close()
        logging.getLogger().removeHandler(self._handler)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    running = ServerThread()
    yield running
    running.close()


def check_answer(call: Any) -> None:
    """The call's outcome is one the contract means."""
    try:
        response = call()
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details[:500])
        assert not PYTHON_NAMES.search(details), details[:500]
        return
    results = response.results if isinstance(response, reward_pb2.ScoreBatchResponse) else [response]
    for r in results:
        assert r.status in (reward_pb2.SCORE_STATUS_OK, reward_pb2.SCORE_STATUS_SYSTEM_ERROR,
                            reward_pb2.SCORE_STATUS_INVALID_INPUT), r.status
        assert math.isfinite(r.total), (r.total, r.explanation[:300])
        assert all(math.isfinite(c.value) for c in r.components)
        assert "internal error" not in r.error and not PYTHON_NAMES.search(r.error), r.error[:500]


FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


@FUZZ
@given(score_requests())
def test_score_answers_every_request_with_a_meant_status(server: ServerThread,
                                                         request: reward_pb2.ScoreRequest) -> None:
    check_answer(lambda: server.stub.Score(request, timeout=60))


@FUZZ
@given(st.lists(score_requests(), max_size=4), st.one_of(st.none(), terms()))
def test_score_batch_answers_every_request_with_a_meant_status(
    server: ServerThread, items: list[reward_pb2.ScoreRequest], default: list[reward_pb2.RewardTerm] | None
) -> None:
    request = reward_pb2.ScoreBatchRequest(items=items)
    if default is not None:
        request.default_spec.CopyFrom(reward_pb2.RewardSpec(terms=default))
    check_answer(lambda: server.stub.ScoreBatch(request, timeout=60))


def test_after_the_fuzzing_a_plain_request_is_answered_and_nothing_was_logged_at_error(server: ServerThread) -> None:
    assert not [r.getMessage() for r in server.errors]
    plain = reward_pb2.ScoreRequest(item_id="plain", prediction="Paris", ground_truth_json='{"answers": ["paris"]}',
                                    spec=reward_pb2.RewardSpec(terms=[reward_pb2.RewardTerm(name="qa_em", weight=1)]))
    response = server.stub.Score(plain, timeout=10)
    assert response.status == reward_pb2.SCORE_STATUS_OK and response.total == 1.0
