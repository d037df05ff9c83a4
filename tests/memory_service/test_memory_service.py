"""The memory service through the real client, on SQLite and on PostgreSQL (``db_url`` is
parametrised): recording, distillation, retrieval, utility learning, concurrency, bad input."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import grpc
import pytest
from conftest import DESCRIBE_FIRST, QUESTIONS, MakeMemoryClient, StartMemory, record_sql_paths, sql_trajectory

from memory_service.utility import UtilityParams, next_baseline, updated
from rlyard.domain import ToolCall, Trajectory, Turn, UtilityUpdate
from rlyard.memory_client import MemoryClient


async def test_recording_abstracts_the_path_and_is_idempotent_by_trajectory_id(
        start_memory: StartMemory, memory_client: MakeMemoryClient) -> None:
    client = memory_client(await start_memory())
    assert await client.health() == "SERVING"
    path = await client.record_trajectory(sql_trajectory("t1", True), 1.0, "sql", QUESTIONS[0])
    assert path.states == DESCRIBE_FIRST and path.reward == 1.0 and path.trajectory_id == "t1"
    again = await client.record_trajectory(sql_trajectory("t1", False), 0.0, "sql", "another text")
    assert again == path
    await client.record_trajectory(sql_trajectory("t2", False), 0.0, "sql", QUESTIONS[1])
    stats = await client.stats()
    # states: the 6 distinct ones of t1, plus TOOL_ERROR of t2
    assert (stats.num_trajectories, stats.num_paths, stats.num_states, stats.num_meta_cognitions) == (2, 2, 7, 0)
    assert stats.mean_utility == 0.0
    # a tool name is the policy's output, of any length: recorded, cut in its state
    babble = Trajectory("t3", turns=(Turn(0, "assistant", "", (ToolCall("c", "x" * 5000, "{}"),)),))
    assert (await client.record_trajectory(babble, 0.0, "sql")).states == ("START", "TOOL_CALL:" + "x" * 100,
                                                                          "NO_ANSWER")


async def test_distilled_advice_is_retrieved_by_relevance_times_utility_and_never_added_twice(
        start_memory: StartMemory, memory_client: MakeMemoryClient) -> None:
    client = memory_client(await start_memory())
    await record_sql_paths(client)
    assert await client.distill("sql", min_paths=9) == []      # 8 paths: not enough yet
    created = await client.distill("sql", max_new=2)
    assert len(created) == 2 and all(m.utility == 0.5 and m.uses == 0 and m.task_type == "sql" for m in created)
    texts = [m.text for m in created]
    assert ("For sql tasks, call describe_table before sql_query: paths that called sql_query without it failed "
            "4/4 times, against 0/4 with it.") in texts
    assert all(len(m.source_path_ids) == 8 for m in created)
    rest = await client.distill("sql")
    assert rest and not {m.text for m in rest} & set(texts)
    assert await client.distill("sql") == []                  # everything it can say is in the memory
    total = len(created) + len(rest)
    assert (await client.stats()).num_meta_cognitions == total

    hits = await client.retrieve("How many singers do we have?", "sql", top_k=total)
    assert len(hits) == total
    for h in hits:
        assert 0.0 < h.relevance <= 1.0
        assert h.score == pytest.approx(h.relevance * h.meta_cognition.utility)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert await client.retrieve("How many singers do we have?", "vision", top_k=3) == []
    assert len(await client.retrieve("How many singers do we have?", top_k=2)) == 2

    # learned utility reorders: the last one helps, the first one hurts
    first, last = hits[0].meta_cognition, hits[-1].meta_cognition
    await client.update_utility([UtilityUpdate(last.id, 1.0, 0.0), UtilityUpdate(first.id, 0.0, 1.0)])
    reranked = await client.retrieve("How many singers do we have?", "sql", top_k=total)
    assert reranked[0].meta_cognition.id == last.id and reranked[-1].meta_cognition.id == first.id


async def test_the_onnx_and_torch_encoders_rank_alike(
        start_memory: StartMemory, memory_client: MakeMemoryClient, tmp_path: Path) -> None:
    # the default ONNX encoder exports the packaged weights into encoder_dir at the first start
    onnx = memory_client(await start_memory(encoder="onnx", encoder_dir=str(tmp_path / "encoder")))
    assert list((tmp_path / "encoder").glob("minilm-onnx*.onnx"))
    await record_sql_paths(onnx)
    made = await onnx.distill("sql")
    torch = memory_client(await start_memory(encoder="torch"))      # the same store, read by PyTorch
    for question in QUESTIONS[:3]:
        a = await onnx.retrieve(question, "sql", top_k=len(made))
        b = await torch.retrieve(question, "sql", top_k=len(made))
        assert [h.meta_cognition.id for h in a] == [h.meta_cognition.id for h in b]
        assert [h.relevance for h in a] == pytest.approx([h.relevance for h in b], abs=1e-5)


async def test_utility_updates_follow_the_formula_with_baseline_and_decay(
        start_memory: StartMemory, memory_client: MakeMemoryClient) -> None:
    client = memory_client(await start_memory(learning_rate=0.5, baseline_momentum=0.1, decay=0.01))
    await record_sql_paths(client)
    m0, m1, *_ = await client.distill("sql")
    # round 1: ΔR = 0.4, baseline 0 → 0.5 + 0.5 * 0.4 = 0.7; baseline → 0.04
    (a,) = await client.update_utility([UtilityUpdate(m0.id, 0.8, 0.4)])
    assert (a.id, a.uses) == (m0.id, 1) and a.utility == pytest.approx(0.7)
    # round 2, learning rate 0.25: 0.7 + 0.25 * (0.2 - 0.04) = 0.74; baseline → 0.9 * 0.04 + 0.1 * 0.2 = 0.056
    (b,) = await client.update_utility([UtilityUpdate(m0.id, 0.5, 0.3)], learning_rate=0.25)
    assert b.utility == pytest.approx(0.74) and b.uses == 2
    # round 3: m1 hurt; it sat at the prior, so decay leaves it: 0.5 + 0.5 * (-0.2 - 0.056) = 0.372
    (c,) = await client.update_utility([UtilityUpdate(m1.id, 0.1, 0.3)])
    assert c.utility == pytest.approx(0.372)
    # m0 went unused in round 3: 0.5 + (0.74 - 0.5) * 0.99 = 0.7376
    hits = {h.meta_cognition.id: h.meta_cognition for h in await client.retrieve(QUESTIONS[0], "sql", top_k=10)}
    assert hits[m0.id].utility == pytest.approx(0.7376) and hits[m0.id].uses == 2
    assert hits[m1.id].utility == pytest.approx(0.372)


async def test_concurrent_updates_from_several_clients_lose_nothing(
        start_memory: StartMemory, memory_client: MakeMemoryClient) -> None:
    server = await start_memory(learning_rate=0.01, baseline_momentum=0.1, decay=0.0)
    setup = memory_client(server)
    await record_sql_paths(setup)
    target, *_ = await setup.distill("sql")
    clients, rounds = 6, 8
    # every round's ΔR is the same, so the result does not depend on the order the rounds land in
    expected, baseline = 0.5, 0.0
    params = UtilityParams(learning_rate=0.01, baseline_momentum=0.1, decay=0.0)
    for r in range(1, clients * rounds + 1):
        expected = updated(expected, r - 1, r, 0.6, baseline, 0.01, params)
        baseline = next_baseline(baseline, [0.6], params)

    async def hammer(client: MemoryClient) -> None:
        for _ in range(rounds):
            await client.update_utility([UtilityUpdate(target.id, 0.8, 0.2)])

    await asyncio.wait_for(asyncio.gather(*(hammer(memory_client(server)) for _ in range(clients))), 120)
    (hit,) = [h for h in await setup.retrieve(QUESTIONS[0], "sql", top_k=10) if h.meta_cognition.id == target.id]
    assert hit.meta_cognition.uses == clients * rounds
    assert hit.meta_cognition.utility == pytest.approx(expected)


async def test_concurrent_records_of_one_trajectory_store_it_once(
        start_memory: StartMemory, memory_client: MakeMemoryClient) -> None:
    server = await start_memory()
    trajectory = sql_trajectory("same", True)
    paths = await asyncio.wait_for(asyncio.gather(*(
        memory_client(server).record_trajectory(trajectory, 1.0, "sql", QUESTIONS[0]) for _ in range(6))), 60)
    assert len(set(paths)) == 1
    stats = await memory_client(server).stats()
    assert (stats.num_trajectories, stats.num_paths) == (1, 1)


async def test_concurrent_distills_never_add_the_same_advice_twice(
        start_memory: StartMemory, memory_client: MakeMemoryClient) -> None:
    one, two = memory_client(await start_memory()), memory_client(await start_memory())
    await record_sql_paths(one)
    results = await asyncio.wait_for(asyncio.gather(*(c.distill("sql") for c in (one, two, one, two))), 60)
    texts = [m.text for created in results for m in created]
    assert texts and len(texts) == len(set(texts))
    assert (await one.stats()).num_meta_cognitions == len(texts)


async def test_a_second_server_on_the_same_store_sees_every_change(
        start_memory: StartMemory, memory_client: MakeMemoryClient) -> None:
    one, two = memory_client(await start_memory()), memory_client(await start_memory())
    await record_sql_paths(one)
    created = await one.distill("sql")
    assert len(await two.retrieve(QUESTIONS[0], "sql", top_k=10)) == len(created)
    await one.update_utility([UtilityUpdate(created[0].id, 1.0, 0.0)])
    seen = {h.meta_cognition.id: h.meta_cognition.utility for h in await two.retrieve(QUESTIONS[0], "sql", top_k=10)}
    assert seen[created[0].id] == pytest.approx(1.0)


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code()


async def test_bad_input_is_refused_with_a_clear_status_and_changes_nothing(
        start_memory: StartMemory, memory_client: MakeMemoryClient) -> None:
    client = memory_client(await start_memory(max_turns=10))
    await record_sql_paths(client)
    (m,) = await client.distill("sql", max_new=1)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert await _code(client.update_utility([UtilityUpdate("mc-nope", 1.0, 0.0), UtilityUpdate(m.id, 1.0, 0.0)])) \
        == grpc.StatusCode.NOT_FOUND
    assert await _code(client.update_utility([UtilityUpdate(m.id, math.nan, 0.0)])) == invalid
    assert await _code(client.update_utility([UtilityUpdate(m.id, 1.0, math.inf)])) == invalid
    assert await _code(client.update_utility([])) == invalid
    assert await _code(client.update_utility([UtilityUpdate(m.id, 1.0, 0.0)], learning_rate=-1.0)) == invalid
    (still,) = await client.retrieve(QUESTIONS[0], "sql", top_k=1)
    assert (still.meta_cognition.utility, still.meta_cognition.uses) == (0.5, 0)   # nothing applied

    assert await _code(client.record_trajectory(Trajectory("empty"), 1.0)) == invalid
    assert await _code(client.record_trajectory(sql_trajectory("", True), 1.0)) == invalid
    assert await _code(client.record_trajectory(sql_trajectory("nan", True), math.nan)) == invalid
    long = Trajectory("long", turns=tuple(Turn(i, "assistant", "hmm") for i in range(11)))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.record_trajectory(long, 1.0)
    assert info.value.code() == invalid and "11 turns, over the limit of 10" in (info.value.details() or "")
    assert await _code(client.retrieve("", "sql")) == invalid
    assert await _code(client.retrieve(QUESTIONS[0], top_k=10_000)) == invalid
    assert await _code(client.distill(min_paths=-1)) == invalid
    assert (await client.stats()).num_trajectories == 8


async def test_a_configured_judge_rewrites_the_advice_and_a_failing_one_leaves_the_template(
        start_memory: StartMemory, memory_client: MakeMemoryClient, chat_server: object) -> None:
    judge = chat_server("Always inspect the schema with describe_table before writing sql_query.",  # type: ignore[operator]
                        {"status": 500, "body": "{}"})
    client = memory_client(await start_memory(judge_endpoint=judge.url, judge_model="judge-1"))
    await record_sql_paths(client)
    first, second = await client.distill("sql", max_new=2)
    assert first.text == "Always inspect the schema with describe_table before writing sql_query."
    assert second.text.startswith("For sql tasks, ")          # the judge failed: the template stays
    asked = judge.requests[0]["json"]
    assert asked["model"] == "judge-1" and "describe_table" in asked["messages"][1]["content"]
