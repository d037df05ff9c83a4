"""The rollout engine against a real SQL tool server (127.0.0.1, port 0, Spider databases).

The policy is the tiny random Qwen2. To drive tool calls deterministically, most tests use a
``ScriptedSampler``: a test-only ``Sampler`` (the edge of the system, not one of our services)
that replays scripted turns as token ids, with their log-probs computed by the real
``HFPolicy.forward_logprobs``. The real ``HFPolicy.generate`` runs end to end once (invariants).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from rlyard.client import RetryPolicy, ToolClient
from rlyard.domain import Task, TrajectoryStatus
from rlyard.routing import RoutedToolClient
from rlyard.server import RunningServer, start_server
from rlyard.settings import ServerSettings
from trainer.config import RolloutConfig
from trainer.parsing import TRUNCATION_MARKER, Region, label_regions
from trainer.policy.base import Generation, SamplingParams
from trainer.policy.hf import HFPolicy
from trainer.rollout import EngineThread, RolloutEngine, rollout_sync
from trainer.rollout.engine import chat_prompt_ids
from trainer.sampler import LocalSampler
from trainer.types import RolloutTrajectory

COUNT_SINGERS = '<tool_call>{"name": "sql_query", "arguments": {"query": "SELECT count(*) FROM singer"}}</tool_call>'
LIST_TABLES = '<tool_call>{"name": "list_tables", "arguments": {}}</tool_call>'
MALFORMED = '<tool_call>{"name": "sql_query", "arguments": {query</tool_call>'
ALL_SINGERS = '<tool_call>{"name": "sql_query", "arguments": {"query": "SELECT * FROM singer"}}</tool_call>'
END = "<|im_end|>"
_TAG = re.compile(r"\[task:(\w+)\]")


@dataclass
class SampledTurn:
    at: float
    tag: str
    turn: int
    token_ids: list[int]
    logprobs: list[float]


class ScriptedSampler:
    """Replays ``scripts[tag][turn]`` (the last one repeats) for the prompt tagged ``[task:tag]``;
    the turn is the number of generation prompts in the prompt, minus one."""

    def __init__(self, policy: HFPolicy, scripts: dict[str, list[str]]) -> None:
        self.policy = policy
        self.tokenizer = policy.tokenizer
        self.scripts = scripts
        self.sampled: list[SampledTurn] = []
        self.batches: list[int] = []
        self._watches: list[tuple[Callable[[], bool], asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._lock = threading.Lock()

    def when(self, predicate: Callable[[], bool]) -> asyncio.Event:
        """An event set (on the caller's loop) once ``predicate()`` holds after a generate call."""
        event = asyncio.Event()
        with self._lock:
            self._watches.append((predicate, asyncio.get_running_loop(), event))
        return event

    def seen(self, tag: str, turn: int) -> int:
        return sum(1 for s in self.sampled if (s.tag, s.turn) == (tag, turn))

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        self.batches.append(len(prompts))
        outputs = []
        for prompt in prompts:
            text = self.tokenizer.decode(prompt, skip_special_tokens=False)
            match = _TAG.search(text)
            assert match, "every scripted task tags its prompt with [task:name]"
            tag, turn = match.group(1), text.count("<|im_start|>assistant") - 1
            script = self.scripts[tag]
            ids = self.tokenizer.encode(script[min(turn, len(script) - 1)], add_special_tokens=False)
            reason: int | None = None
            for i, tok in enumerate(ids):
                if tok in params.stop_token_ids:
                    ids, reason = ids[: i + 1], tok
                    break
            if len(ids) > params.max_new_tokens:
                ids, reason = ids[: params.max_new_tokens], None
            full = torch.tensor([prompt + ids])
            scores, _ = self.policy.forward_logprobs(full, temperature=params.temperature, compute_entropy=False)
            logprobs = scores[0, len(prompt) - 1:].tolist()
            self.sampled.append(SampledTurn(time.monotonic(), tag, turn, ids, logprobs))
            outputs.append(Generation(
                token_ids=ids, logprobs=logprobs, raw_logprobs=list(logprobs),
                finish_reason="stop" if reason is not None else "length", stop_reason=reason,
            ))
        with self._lock:
            for predicate, loop, event in self._watches:
                if predicate():
                    loop.call_soon_threadsafe(event.set)
        return outputs


def make_engine(generator: Any, *args: Any, max_batch_size: int | None = None, **kwargs: Any) -> RolloutEngine:
    """A rollout engine over the local sampler of a synchronous generator."""
    return RolloutEngine(LocalSampler(generator, max_batch_size=max_batch_size), *args, **kwargs)


async def close(engine: RolloutEngine) -> None:
    """Close the engine's tool stream and its sampler."""
    await engine.aclose()
    await engine.sampler.aclose()


def sql_call(query: str) -> str:
    return f'<tool_call>{json.dumps({"name": "sql_query", "arguments": {"query": query}})}</tool_call>'


def task(tag: str, db_id: str = "concert_singer") -> Task:
    return Task(
        task_id=tag,
        messages=[
            {"role": "system", "content": "Answer with the tools."},
            {"role": "user", "content": f"[task:{tag}] How many singers are there?"},
        ],
        context={"db_id": db_id},
    )


def config(**overrides: Any) -> RolloutConfig:
    values: dict[str, Any] = {
        "group_size": 2, "prompts_per_step": 1, "max_turns": 4, "max_new_tokens_per_turn": 128,
        "max_total_tokens": 900, "max_observation_tokens": 200,
    }
    values.update(overrides)
    return RolloutConfig(**values)


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path) -> HFPolicy:
    return HFPolicy(tiny_model_dir)


@pytest.fixture
async def tools(start_tools: Callable[..., Any]) -> RunningServer:
    server: RunningServer = await start_tools()
    return server


@pytest.fixture
def fast_retry_client(make_client: Callable[..., ToolClient]) -> Callable[[RunningServer], ToolClient]:
    def make(server: RunningServer) -> ToolClient:
        return make_client(server, timeout=5.0, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01,
                                                                  max_backoff_s=0.02))
    return make


def runs(mask: list[int], value: int) -> list[tuple[int, int]]:
    """[start, end) of the maximal runs of ``value`` in ``mask``."""
    spans, start = [], None
    for i, m in enumerate([*mask, -1]):
        if m == value and start is None:
            start = i
        elif m != value and start is not None:
            spans.append((start, i))
            start = None
    return spans


def rendered_turns(tokenizer: Any, traj: RolloutTrajectory) -> str:
    """The chat template's rendering of the trajectory's turns (what the tokens must decode to)."""
    messages = [{"role": t.role, "content": t.text} for t in traj.record.turns]
    return str(tokenizer.apply_chat_template(messages, tokenize=False))


def check_invariants(traj: RolloutTrajectory, policy: HFPolicy, temperature: float = 1.0) -> None:
    traj.check_aligned()
    for start, end in runs(traj.loss_mask, 0):
        assert traj.regions[start:end] == [int(Region.OBSERVATION)] * (end - start)
        assert traj.old_logprobs[start:end] == [0.0] * (end - start)
    for start, end in runs(traj.loss_mask, 1):
        assert all(lp <= 0.0 for lp in traj.old_logprobs[start:end])
    # The stored log-probs are those of the stored tokens in their context: nothing shifted.
    full = torch.tensor([traj.prompt_ids + traj.token_ids])
    scores, _ = policy.forward_logprobs(full, temperature=temperature, compute_entropy=False)
    n = len(traj.prompt_ids)
    for i, m in enumerate(traj.loss_mask):
        if m:
            assert abs(scores[0, n + i - 1].item() - traj.old_logprobs[i]) < 1e-4


async def test_turns_are_aligned_several_calls_and_a_malformed_one(
    policy: HFPolicy, tools: RunningServer, fast_retry_client: Callable[[RunningServer], ToolClient]
) -> None:
    scripts = {"multi": [COUNT_SINGERS + "\n" + LIST_TABLES + MALFORMED + END, "<answer>6</answer>" + END]}
    sampler = ScriptedSampler(policy, scripts)
    tok = policy.tokenizer
    engine = make_engine(sampler, tok, fast_retry_client(tools), config(), seed=1)
    try:
        trajs = await engine.run([task("multi")], group_size=2)
    finally:
        await close(engine)

    assert [(t.group_id, t.sample_index) for t in trajs] == [(0, 0), (0, 1)]
    for traj in trajs:
        assert traj.status is TrajectoryStatus.COMPLETED, traj.infra_error
        assert traj.final_answer == "6"
        assert traj.num_tool_calls == 2 and len(traj.tool_latency_ms) == 2
        check_invariants(traj, policy)

        # Generated runs are exactly the sampler's ids and log-probs, turn after turn.
        gen_runs = runs(traj.loss_mask, 1)
        expected = [tok.encode(s, add_special_tokens=False) for s in scripts["multi"]]
        assert [traj.token_ids[a:b] for a, b in gen_runs] == expected
        for (a, b), ids in zip(gen_runs, expected, strict=True):
            assert traj.regions[a:b] == label_regions(ids, tok)
        assert int(Region.TOOL_NAME) in traj.regions and int(Region.ANSWER) in traj.regions

        # No re-tokenization drift: the tokens decode to the template's rendering of the turns.
        decoded = tok.decode(traj.prompt_ids + traj.token_ids, skip_special_tokens=False)
        assert decoded + "\n" == rendered_turns(tok, traj)

        record = traj.record
        assert [t.role for t in record.turns] == ["system", "user", "assistant", "tool", "assistant"]
        assert record.status == "COMPLETED" and record.final_answer == "6" and record.task_id == "multi"
        assert [c.name for c in record.tool_calls] == ["sql_query", "list_tables"]
        tool_turn = record.turns[3]
        assert [r.name for r in tool_turn.tool_results] == ["sql_query", "list_tables"]
        assert not any(r.is_error for r in tool_turn.tool_results)
        assert tool_turn.tool_results[0].structured["rows"] == [[6]]
        assert tool_turn.text.count("<tool_response>") == 3
        assert "Error: tool call 3: invalid JSON" in tool_turn.text
        assert "concert (6 rows)" in tool_turn.text
    assert sampler.batches[0] == 2  # both samples generated their first turn in one call


async def test_calls_past_the_per_tool_limit_are_refused_not_run(
    policy: HFPolicy, tools: RunningServer, fast_retry_client: Callable[[RunningServer], ToolClient]
) -> None:
    turn = COUNT_SINGERS + ALL_SINGERS + LIST_TABLES + sql_call("SELECT 1") + MALFORMED + END
    scripts = {"greedy": [turn, "<answer>6</answer>" + END]}
    tok = policy.tokenizer
    roomy = {"max_observation_tokens": 600, "max_total_tokens": 2000}
    limited = make_engine(ScriptedSampler(policy, scripts), tok, fast_retry_client(tools),
                            config(max_calls_per_tool_per_turn=1, **roomy), seed=0)
    unlimited = make_engine(ScriptedSampler(policy, scripts), tok, fast_retry_client(tools), config(**roomy), seed=0)
    try:
        [traj, _] = await limited.run([task("greedy")], group_size=2)
        [free, _] = await unlimited.run([task("greedy")], group_size=2)
    finally:
        await close(limited)
        await close(unlimited)

    assert free.status is TrajectoryStatus.COMPLETED and free.num_tool_calls == 4   # 0 = no limit
    assert traj.status is TrajectoryStatus.COMPLETED, traj.infra_error
    check_invariants(traj, policy)
    # Only the first sql_query and the list_tables ran; the model's record keeps all four calls.
    assert traj.num_tool_calls == 2 and len(traj.tool_latency_ms) == 2
    record = traj.record
    assert [c.name for c in record.tool_calls] == ["sql_query", "sql_query", "list_tables", "sql_query"]
    tool_turn = record.turns[3]
    assert [(r.call_id.rsplit("/", 1)[1], r.name) for r in tool_turn.tool_results] == [
        ("c0", "sql_query"), ("c2", "list_tables")]
    assert tool_turn.tool_results[0].structured["rows"] == [[6]]
    # One response per call in the calls' order (refusals in place), then the parse error.
    responses = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", tool_turn.text, re.DOTALL)
    assert len(responses) == 5
    assert responses[0] == tool_turn.tool_results[0].text and responses[2] == tool_turn.tool_results[1].text
    assert responses[1].startswith("Error: sql_query call 2 of this turn: at most 1 call of sql_query per round; "
                                   "this call was not run")
    assert responses[3].startswith("Error: sql_query call 3 of this turn: at most 1 call")
    assert responses[4].startswith("Error: tool call 5: invalid JSON")
    assert TRUNCATION_MARKER not in tool_turn.text


async def test_observation_is_capped_in_tokens(
    policy: HFPolicy, tools: RunningServer, fast_retry_client: Callable[[RunningServer], ToolClient]
) -> None:
    sampler = ScriptedSampler(policy, {"big": [ALL_SINGERS + END, "<answer>x</answer>" + END]})
    tok = policy.tokenizer
    engine = make_engine(sampler, tok, fast_retry_client(tools), config(max_observation_tokens=24), seed=0)
    try:
        [traj, _] = await engine.run([task("big")], group_size=2)
    finally:
        await close(engine)
    assert traj.status is TrajectoryStatus.COMPLETED
    check_invariants(traj, policy)
    observation = traj.record.turns[3].text
    assert TRUNCATION_MARKER in observation
    assert len(tok.encode(observation, add_special_tokens=False)) <= 24
    [(a, b)] = runs(traj.loss_mask, 0)
    wrapper = len(tok.encode("\n<|im_start|>tool\n", add_special_tokens=False)) + len(
        tok.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False))
    assert b - a <= 24 + wrapper
    assert len(traj.record.turns[3].tool_results[0].text) > len(observation)  # the record keeps it whole


async def test_turn_limits_answers_and_plain_text(
    policy: HFPolicy, tools: RunningServer, fast_retry_client: Callable[[RunningServer], ToolClient]
) -> None:
    scripts = {
        "loop": [LIST_TABLES + END],
        "direct": ["<think>easy</think><answer>42</answer>" + END],
        "plain": ["six singers" + END],
        "rambling": ["select name from singer " * 40],   # never ends its turn
    }
    sampler = ScriptedSampler(policy, scripts)
    tasks = [task(tag) for tag in scripts]
    engine = make_engine(sampler, policy.tokenizer, fast_retry_client(tools),
                           config(max_turns=2, max_new_tokens_per_turn=32), seed=0)
    strict = make_engine(sampler, policy.tokenizer, fast_retry_client(tools), config(max_turns=2), seed=0,
                           require_answer=True)
    try:
        loop, direct, plain, rambling = (await engine.run(tasks, group_size=2))[::2]
        [strict_plain, _] = await strict.run([task("plain")], group_size=2)
    finally:
        await close(engine)
        await close(strict)

    assert loop.status is TrajectoryStatus.TRUNCATED
    assert [t.role for t in loop.record.turns[2:]] == ["assistant", "tool", "assistant"]
    assert loop.num_tool_calls == 1  # the last turn's call is not run: no turn would read it
    assert (direct.status, direct.final_answer, direct.num_tool_calls) == (TrajectoryStatus.COMPLETED, "42", 0)
    assert (plain.status, plain.final_answer) == (TrajectoryStatus.COMPLETED, "six singers")
    assert (rambling.status, rambling.num_generated) == (TrajectoryStatus.TRUNCATED, 32)
    assert strict_plain.status is TrajectoryStatus.FORMAT_ERROR
    for traj in (loop, direct, plain, rambling, strict_plain):
        check_invariants(traj, policy)


async def test_the_samples_of_a_group_may_start_from_different_prompts(
    policy: HFPolicy, tools: RunningServer, fast_retry_client: Callable[[RunningServer], ToolClient]
) -> None:
    """``run_groups``: the graph memory's half of a group reads a system message of its own; the
    prompt is the chat template of each sample's own messages, and the group stays one group."""
    sampler = ScriptedSampler(policy, {"mem": ["<answer>6</answer>" + END], "other": ["<answer>1</answer>" + END]})
    plain = task("mem")
    shown = Task(plain.task_id, [{"role": "system", "content": "Answer with the tools.\n\nStrategies:\n- count rows"},
                                 plain.messages[1]], context=plain.context)
    engine = make_engine(sampler, policy.tokenizer, fast_retry_client(tools), config(), seed=0)
    try:
        trajectories = await engine.run_groups([[shown, shown, plain], [task("other")] * 2])
    finally:
        await close(engine)
    assert [(t.group_id, t.sample_index) for t in trajectories] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    first, second, third = trajectories[:3]
    assert first.prompt_ids == second.prompt_ids == chat_prompt_ids(policy.tokenizer, shown)
    assert third.prompt_ids == chat_prompt_ids(policy.tokenizer, plain) != first.prompt_ids
    assert "- count rows" in first.record.turns[0].text and "count rows" not in third.record.turns[0].text
    assert all(t.final_answer == "6" for t in (first, second, third)) and trajectories[3].final_answer == "1"


async def test_max_total_tokens_truncates(
    policy: HFPolicy, tools: RunningServer, fast_retry_client: Callable[[RunningServer], ToolClient]
) -> None:
    sampler = ScriptedSampler(policy, {"loop": [LIST_TABLES + END]})
    engine = make_engine(sampler, policy.tokenizer, fast_retry_client(tools),
                           config(max_turns=50, max_total_tokens=200, max_new_tokens_per_turn=64), seed=0)
    try:
        trajs = await engine.run([task("loop")], group_size=2)
    finally:
        await close(engine)
    for traj in trajs:
        assert traj.status is TrajectoryStatus.TRUNCATED
        assert len(traj.prompt_ids) + len(traj.token_ids) <= 200
        check_invariants(traj, policy)


async def test_tool_server_stopped_mid_rollout_fails_only_those_in_flight(
    policy: HFPolicy, tools: RunningServer, fast_retry_client: Callable[[RunningServer], ToolClient],
    endless_count_sql: str,
) -> None:
    slow_call = sql_call(endless_count_sql)
    scripts = {
        "quick": ["<answer>6</answer>" + END],
        "onecall": [COUNT_SINGERS + END, "<answer>6</answer>" + END],
        "slow": [slow_call + END, "<answer>?</answer>" + END],
    }
    sampler = ScriptedSampler(policy, scripts)
    engine = make_engine(sampler, policy.tokenizer, fast_retry_client(tools), config(), seed=0)
    try:
        running = asyncio.create_task(engine.run([task(t) for t in scripts], group_size=2))
        # Stop the server once the one-call trajectories are done and the slow queries (which run
        # up to the server's 1.5 s limit) are in flight.
        ready = sampler.when(lambda: sampler.seen("onecall", 1) == 2 and sampler.seen("slow", 0) == 2)
        await asyncio.wait_for(ready.wait(), timeout=10)
        await asyncio.sleep(0.2)
        await tools.stop(0)
        trajs = await asyncio.wait_for(running, timeout=20)
    finally:
        await close(engine)
    by_task = {(t.task.task_id, t.sample_index): t for t in trajs}
    for s in range(2):
        assert by_task["quick", s].status is TrajectoryStatus.COMPLETED
        assert by_task["onecall", s].status is TrajectoryStatus.COMPLETED
        slow = by_task["slow", s]
        assert slow.status is TrajectoryStatus.INFRA_FAILED
        assert "sql_query" in slow.infra_error and "Unavailable" in slow.infra_error
        assert slow.record.status == "INFRA_FAILED" and slow.num_tool_calls == 1
        check_invariants(slow, policy)


async def test_a_slow_tool_does_not_hold_back_other_trajectories(
    policy: HFPolicy, tools: RunningServer, fast_retry_client: Callable[[RunningServer], ToolClient],
    endless_count_sql: str,
) -> None:
    slow_call = sql_call(endless_count_sql)
    scripts = {
        "slow": [slow_call + END, "<answer>?</answer>" + END],
        "busy": [COUNT_SINGERS + END, LIST_TABLES + END, COUNT_SINGERS + END, "<answer>6</answer>" + END],
    }
    sampler = ScriptedSampler(policy, scripts)
    engine = make_engine(sampler, policy.tokenizer, fast_retry_client(tools), config(), seed=0)
    started = time.monotonic()
    try:
        trajs = await engine.run([task("slow"), task("busy")], group_size=2)
    finally:
        await close(engine)
    assert all(t.status is TrajectoryStatus.COMPLETED for t in trajs), [t.infra_error for t in trajs]
    slow = [t for t in trajs if t.task.task_id == "slow"]
    # The server stopped the query at its time limit: a model-visible error, not a system failure.
    assert all(t.record.turns[3].tool_results[0].is_error for t in slow)
    assert all(t.tool_latency_ms[0] > 1000 for t in slow)

    busy_done = max(s.at for s in sampler.sampled if s.tag == "busy")
    slow_resumed = min(s.at for s in sampler.sampled if s.tag == "slow" and s.turn == 1)
    assert busy_done < slow_resumed
    assert slow_resumed - started > 1.0
    assert len([s for s in sampler.sampled if s.tag == "busy"]) == 8   # 2 samples x 4 turns
    assert sampler.batches[0] == 4  # the first turn of all four trajectories: one generate call


def test_real_policy_end_to_end_on_the_engine_thread(
    policy: HFPolicy, tool_settings: Callable[..., Any]
) -> None:
    cfg = config(max_turns=2, max_new_tokens_per_turn=24, max_total_tokens=256)
    tasks = [task("a"), task("b", db_id="pets_1")]
    with EngineThread() as thread:
        async def start() -> tuple[RunningServer, ToolClient]:
            server = await start_server(tool_settings().service(), ServerSettings(host="127.0.0.1", port=0))
            return server, ToolClient(server.address, timeout=5.0)

        server, client = thread.run(start())
        try:
            first = make_engine(policy, policy.tokenizer, client, cfg, seed=7, max_batch_size=1)
            again = make_engine(policy, policy.tokenizer, client, cfg, seed=7)
            batched = rollout_sync(thread, again, tasks, group_size=2, step=3)
            one = rollout_sync(thread, first, tasks, group_size=2, step=3)
            two = rollout_sync(thread, first, tasks, group_size=2, step=3)
            thread.run(close(first))
            thread.run(close(again))
        finally:
            thread.run(client.close())
            thread.run(server.stop(0))

    for trajs in (batched, one):
        assert [(t.group_id, t.sample_index) for t in trajs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        for traj in trajs:
            assert traj.status is not TrajectoryStatus.INFRA_FAILED, traj.infra_error
            assert 1 <= traj.num_generated and traj.record.assistant_turns
            assert len(traj.prompt_ids) + len(traj.token_ids) <= 256
            check_invariants(traj, policy)
    # With one row per generate call, a trajectory depends only on (seed, step, group, sample, turn).
    assert [t.token_ids for t in one] == [t.token_ids for t in two]
    assert len({tuple(t.token_ids) for t in one}) > 1


async def test_routed_replica_stopped_mid_rollout_fails_only_its_sessions(
    policy: HFPolicy, start_tools: Callable[..., Any], endless_count_sql: str
) -> None:
    # three tool replicas behind one RoutedToolClient (rlyard.routing); every trajectory's second
    # call is a slow query, in flight when one replica stops
    servers = [await start_tools() for _ in range(3)]
    scripts = {f"r{i}": [COUNT_SINGERS + END, sql_call(endless_count_sql) + END, "<answer>6</answer>" + END]
               for i in range(12)}
    sampler = ScriptedSampler(policy, scripts)
    client = RoutedToolClient(",".join(s.address for s in servers), timeout=5.0, down_s=60.0,
                              retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.02))
    engine = make_engine(sampler, policy.tokenizer, client, config(), seed=0)
    try:
        running = asyncio.create_task(engine.run([task(t) for t in scripts], group_size=2))
        ready = sampler.when(lambda: all(sampler.seen(t, 1) == 2 for t in scripts))
        await asyncio.wait_for(ready.wait(), timeout=20)
        await asyncio.sleep(0.2)
        load = Counter(client._sessions.values())
        assert len(client._sessions) == 24 and len(load) == 3, load   # spread over the replicas
        victim, lost = load.most_common(1)[0]
        await next(s for s in servers if s.address == victim).stop(0)
        trajs = await asyncio.wait_for(running, timeout=30)
        failed = [t for t in trajs if t.status is TrajectoryStatus.INFRA_FAILED]
        assert len(failed) == lost
        assert all("sql_query" in t.infra_error and "Unavailable" in t.infra_error for t in failed)
        assert all(t.status is TrajectoryStatus.COMPLETED for t in trajs if t not in failed)
        # the next rollouts open their sessions on the two replicas left, and all complete
        sampler.scripts = {t: [COUNT_SINGERS + END, "<answer>6</answer>" + END] for t in scripts}
        again = await asyncio.wait_for(engine.run([task(t) for t in scripts], group_size=2), timeout=30)
        assert all(t.status is TrajectoryStatus.COMPLETED for t in again), [t.infra_error for t in again]
    finally:
        await close(engine)
        await client.close()
