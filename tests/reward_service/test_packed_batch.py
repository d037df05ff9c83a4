"""The packed form of ``ScoreBatch`` (issue 24) over real gRPC, with NQ answers from ``data/nq``: the
same results as ``items``, in either answer form, from the typed client and from a caller that
builds messages itself; errors that name the item as ``items`` does; a client that meets a server
from before the packed form, which drops the fields it does not know."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from reward_service.app import SERVICE_NAME, build_scorer, reward_service
from reward_service.servicer import RewardServicer
from reward_service.settings import RewardSettings
from rlyard.client import NO_RETRY
from rlyard.domain import ScoreStatus, ScoringItem, parse_spec
from rlyard.domain.convert import batch_request_to_pb, batch_results_from_pb, item_to_pb, spec_to_pb
from rlyard.reward.v1 import reward_pb2, reward_pb2_grpc
from rlyard.reward_client import RewardClient
from rlyard.server import RunningServer, Runtime, ServiceDefinition, start_server
from rlyard.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
QA = parse_spec({"qa_f1": 1.0, "qa_em": 0.5})


def nq_items(n: int) -> list[ScoringItem]:
    """NQ questions with exact, partial and wrong predictions, training steps that vary."""
    lines = (ROOT / "data" / "nq" / "test.jsonl").read_text().splitlines()
    rows = [json.loads(lines[i % len(lines)]) for i in range(n)]
    predictions = [row["golden_answers"][0] if i % 3 == 0 else f"maybe {row['golden_answers'][0]}" if i % 3 == 1
                   else "no idea" for i, row in enumerate(rows)]
    return [ScoringItem(f"nq-{i}", p, ground_truth={"answers": row["golden_answers"]}, training_step=i % 4)
            for i, (row, p) in enumerate(zip(rows, predictions, strict=True))]


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    running = await start_server(reward_service(RewardSettings()), ServerSettings())
    yield running
    await running.stop(0)


@pytest.fixture
async def reward(server: RunningServer) -> AsyncIterator[RewardClient]:
    async with RewardClient(server.address, timeout=30.0, retry=NO_RETRY) as client:
        yield client


async def refused(client: RewardClient, request: reward_pb2.ScoreBatchRequest) -> str:
    """The INVALID_ARGUMENT message that ``request`` gets."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.ScoreBatch(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value.details() or ""


async def test_both_forms_give_the_same_results_in_both_answer_forms(reward: RewardClient) -> None:
    items = nq_items(60)
    ids = [i.item_id for i in items]
    old = reward_pb2.ScoreBatchRequest(items=[item_to_pb(i) for i in items], default_spec=spec_to_pb(QA))
    packed = batch_request_to_pb(items, QA)
    assert packed.HasField("packed_items") and not packed.items and packed.packed_results
    assert len(packed.packed_items.training_steps) == 60
    answers = {}
    for name, request in [("items", old), ("packed", packed)]:
        for ask in (False, True):
            request.packed_results = ask
            response = await reward.stub.ScoreBatch(request, timeout=30)
            assert response.HasField("packed") == ask and len(response.results) == (0 if ask else 60)
            answers[name, ask] = batch_results_from_pb(response, ids)
    expected = answers["items", False]      # the answer an old client gets to an old request
    assert all(a == expected for a in answers.values())
    assert await reward.score_batch(items, QA) == expected
    statuses = {r.status for r in expected}
    assert statuses == {ScoreStatus.OK} and [r.item_id for r in expected] == ids
    # exact, partial, wrong: both components, in the spec's order, with their weights and explanations
    exact, partial, wrong = expected[:3]
    assert exact.values == {"qa_f1": 1.0, "qa_em": 1.0} and exact.total == 1.5
    assert 0 < partial.values["qa_f1"] < 1 and partial.values["qa_em"] == 0
    assert wrong.total == 0 and [c.weight for c in wrong.components] == [1.0, 0.5]
    assert "F1" in exact.components[0].explanation and exact.explanation.startswith("qa_f1=1")


async def test_failed_items_keep_their_status_and_error_in_the_packed_answer(reward: RewardClient) -> None:
    items = nq_items(4)
    items[2] = ScoringItem("no-answers", "Paris", ground_truth={"question": "where?"})  # qa_f1 cannot score it
    items[3] = ScoringItem("no-truth", "Paris")
    results = await reward.score_batch(items, QA)
    response = await reward.stub.ScoreBatch(batch_request_to_pb(items, QA), timeout=30)
    assert response.HasField("packed")
    old = await reward.stub.ScoreBatch(reward_pb2.ScoreBatchRequest(items=[item_to_pb(i) for i in items],
                                                                    default_spec=spec_to_pb(QA)), timeout=30)
    assert results == batch_results_from_pb(old, [i.item_id for i in items])
    assert [r.status for r in results] == [ScoreStatus.OK, ScoreStatus.OK, ScoreStatus.INVALID_INPUT,
                                           ScoreStatus.INVALID_INPUT]
    assert results[2].error and results[2].total == 0
    assert {c.status for c in results[2].components} == {ScoreStatus.INVALID_INPUT}


async def test_results_with_step_rewards_come_in_results(reward: RewardClient) -> None:
    """``format`` gives one step reward per turn: those results do not fit the packed answer."""
    items = nq_items(5)
    spec = parse_spec({"qa_f1": 1.0, "format": 0.1})
    response = await reward.stub.ScoreBatch(batch_request_to_pb(items, spec), timeout=30)
    assert not response.HasField("packed") and len(response.results) == 5
    results = await reward.score_batch(items, spec)
    assert all(r.step_rewards and r.step_rewards[0].component == "format" for r in results)
    old = await reward.stub.ScoreBatch(batch_request_to_pb(items, spec, packed=False), timeout=30)
    assert results == batch_results_from_pb(old, [i.item_id for i in items])


async def test_a_packed_item_that_does_not_convert_is_named_as_in_items(reward: RewardClient) -> None:
    items = nq_items(3)
    deep = {"answers": ["x"], "more": json.loads("[" * 64 + "]" * 64)}    # 65 levels, one too many
    batch = [*items[:1], ScoringItem("q-7", "Paris", ground_truth=deep), *items[1:]]
    old = reward_pb2.ScoreBatchRequest(items=[item_to_pb(i) for i in batch], default_spec=spec_to_pb(QA))
    message = await refused(reward, old)
    assert message == "items[1] (item 'q-7'): ground_truth_json nests deeper than 64 levels"
    assert await refused(reward, batch_request_to_pb(batch, QA)) == message
    # 64 levels, the most allowed, in a packed batch whose array makes 65
    batch[1] = ScoringItem("q-7", "Paris", ground_truth={"answers": ["x"], "more": json.loads("[" * 63 + "]" * 63)})
    assert len(await reward.score_batch(batch, QA)) == 4
    # no spec anywhere: the first item is named, as in items
    no_spec = batch_request_to_pb(items, QA)
    no_spec.ClearField("default_spec")
    old = reward_pb2.ScoreBatchRequest(items=[item_to_pb(i) for i in items])
    assert await refused(reward, no_spec) == await refused(reward, old) == (
        "items[0] (item 'nq-0') has no spec and the batch has no default_spec")


@pytest.mark.parametrize("change, words", [
    (lambda r: r.packed_items.predictions.append("extra"), "packed_items.predictions has 4 entries for 3 items"),
    (lambda r: r.packed_items.training_steps.pop(), "packed_items.training_steps has 2 entries for 3 items"),
    (lambda r: setattr(r.packed_items, "ground_truths_json", '[{"answers": ["a"]}]'),
     "one entry per item (3), not 1 entries"),
    (lambda r: setattr(r.packed_items, "ground_truths_json", '{"answers": ["a"]}'), "not a JSON dict"),
    (lambda r: setattr(r.packed_items, "ground_truths_json", '[{"answers": [NaN]}, null, null]'),
     "packed_items.ground_truths_json is not valid JSON: NaN is not a JSON number"),
    (lambda r: setattr(r.packed_items, "ground_truths_json", '[{"answers": [}, null, null]'),
     "packed_items.ground_truths_json is not JSON: Expecting value at line 1 column 15"),
    (lambda r: r.items.append(reward_pb2.ScoreRequest(item_id="x")), "sets items or packed_items, not both"),
])
async def test_a_bad_packed_batch_is_invalid_argument(reward: RewardClient, change: object, words: str) -> None:
    request = batch_request_to_pb(nq_items(3), QA)
    change(request)  # type: ignore[operator]
    assert words in await refused(reward, request)


async def test_a_packed_batch_without_predictions_or_ground_truth_scores_empty_text(reward: RewardClient) -> None:
    """Unset lists mean every item's field unset, as an unset field of ``ScoreRequest`` does."""
    items = [ScoringItem("a"), ScoringItem("b")]
    request = batch_request_to_pb(items, parse_spec({"format": 1.0}))
    assert not request.packed_items.predictions and not request.packed_items.ground_truths_json
    assert not request.packed_items.training_steps and request.HasField("packed_items")
    old = batch_request_to_pb(items, parse_spec({"format": 1.0}), packed=False)
    got = batch_results_from_pb(await reward.stub.ScoreBatch(request, timeout=30), ["a", "b"])
    assert got == batch_results_from_pb(await reward.stub.ScoreBatch(old, timeout=30), ["a", "b"])
    assert [r.values["format"] for r in got] == [0.0, 0.0]


def test_a_packed_answer_that_does_not_fit_the_batch_is_refused() -> None:
    response = reward_pb2.ScoreBatchResponse()
    response.packed.totals.extend([1.0])
    response.packed.statuses.extend([reward_pb2.SCORE_STATUS_OK])
    response.packed.explanations.append("")
    response.packed.errors.append("")
    response.packed.component_names.append("qa_f1")
    response.packed.component_weights.append(1.0)
    with pytest.raises(ValueError, match="does not fit 2 items of 1 components"):
        batch_results_from_pb(response, ["a", "b"])


class ServicerBeforePackedForm(RewardServicer):
    """The real servicer as a server built before the packed form sees a request: protobuf drops
    the fields its contract does not have (``packed_items``, ``packed_results``)."""

    async def ScoreBatch(self, request: reward_pb2.ScoreBatchRequest, context: object) -> reward_pb2.ScoreBatchResponse:
        old = reward_pb2.ScoreBatchRequest(items=request.items, default_spec=request.default_spec)
        return await super().ScoreBatch(old, context)


async def test_a_new_client_falls_back_to_items_with_a_server_before_the_packed_form() -> None:
    scorer, ctx = build_scorer(RewardSettings())

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        reward_pb2_grpc.add_RewardServiceServicer_to_server(ServicerBeforePackedForm(scorer), server)

    running = await start_server(ServiceDefinition("reward", [SERVICE_NAME], register, on_stop=[ctx.close]),
                                 ServerSettings())
    try:
        async with RewardClient(running.address, timeout=30.0, retry=NO_RETRY) as client:
            items = nq_items(6)
            results = await client.score_batch(items, QA)
            assert client._packed_items is False     # and stays so: the next batch goes as items at once
            assert [r.item_id for r in results] == [i.item_id for i in items]
            assert results[0].values == {"qa_f1": 1.0, "qa_em": 1.0} and results[2].total == 0
            assert await client.score_batch(items, QA) == results
        async with RewardClient(running.address, timeout=30.0, retry=NO_RETRY) as client:
            response = await client.stub.ScoreBatch(batch_request_to_pb(items, QA), timeout=30)
            assert not response.results and not response.HasField("packed")   # what the fallback reads
    finally:
        await running.stop(0)
