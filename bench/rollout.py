"""How much faster is the async rollout engine than a lock-step rollout, when tools are slow?

64 trajectories (``--trajectories``) of 3 tool-calling turns (``--turns``) each, against one tool,
``wait`` (``bench/latency_tool.py``), whose latency is lognormal with median 50 ms and p99 1 s,
drawn per (trajectory, turn) from a seeded hash, so that both modes wait exactly as long for the
same call. The tool server runs in its own process (``python -m bench.latency_tool_server``).

- ``async``: ``RolloutEngine.run``: every trajectory runs its own loop; the generation requests
  made while the policy is busy are batched into the next ``generate`` call.
- ``lockstep``: the same engine, policy, sampler, tool and stream, except that each trajectory
  waits at a barrier before every generation until all trajectories have reached it: turn k is
  generated for all in one ``generate`` call, then all their tool calls run (concurrently), and
  turn k + 1 starts only when the slowest call is back (verl/SkyRL-style synchronous multi-turn).

The policy is the tiny random Qwen2 (``trainer.model.init_policy``), driven by ``ForcedToolSampler``:
each turn it samples ``--think-tokens`` real tokens with ``HFPolicy.generate`` (the generation cost
is real), then appends a fixed tool call (``<tool_call>{"name": "wait", ...}</tool_call><|im_end|>``)
or, on the last turn, ``<answer>done</answer><|im_end|>``; the log-probs of the appended tokens
come from one batched ``HFPolicy.forward_logprobs`` per call. An untrained policy would not call
the tool on its own. A trajectory is therefore 4 generations (``max_turns = turns + 1``) and
3 tool calls.

Then the training throughput of the same policy on the trajectories produced: ``grpo_update``
(``trainer/grpo.py``: one update of the GRPO loss over micro-batches of 8; trajectories regrouped
in groups of 4 with seeded random rewards) and ``sft_step`` (``trainer/sft.py``: forward+backward
of the masked NLL), in tokens/s.

``python -m bench.rollout [--trajectories 64] [--turns 3] [--seed 0] [--output F]``
writes ``bench/results/rollout.json`` and prints a table. The goal is async ≥ 3× lock-step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from bench.latency_tool import MEDIAN_S, P99_S, SIGMA, WaitArgs, latency_s
from rlyard.client import ToolClient
from rlyard.domain import ImagePart, Task, TrajectoryStatus
from trainer.batching import collate_trajectories
from trainer.config import AlgorithmConfig, OptimConfig, RolloutConfig, StageConfig
from trainer.grpo import grpo_update
from trainer.model import init_policy
from trainer.parsing import DEFAULT_MARKERS, parse_tool_calls
from trainer.policy.base import Generation, SamplingParams
from trainer.policy.hf import HFPolicy
from trainer.rollout import RolloutEngine
from trainer.rollout.engine import chat_prompt_ids
from trainer.sampler import GenerationBatcher, LocalSampler
from trainer.sft import sft_step
from trainer.types import RolloutTrajectory

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "bench" / "results" / "rollout.json"
GOAL_SPEEDUP = 3.0
GROUP = 4                # trajectories per GRPO group in the training measurement
_TAG = re.compile(r"\[task:(\d+)\]")
_ASSISTANT = "<|im_start|>assistant"


# ---------------------------------------------------------------- the policy


def call_text(key: str) -> str:
    """The forced tool call of one turn."""
    return "<tool_call>" + json.dumps({"name": "wait", "arguments": {"key": key}}) + "</tool_call>"


class ForcedToolSampler:
    """A ``Sampler`` that generates ``think_tokens`` real tokens with ``policy.generate``, then
    appends the turn's forced ending: the ``wait`` call keyed ``"<task>-<turn>"`` on turns below
    ``turns``, ``<answer>done</answer>`` after. Every turn ends with ``<|im_end|>``.

    The task comes from ``[task:N]`` in the prompt, the turn from the number of assistant turns in
    it. Real tokens are kept up to the first special/marker token; if the decoded turn then does not
    parse to exactly the forced call (or answer), the real tokens are dropped for that row. The
    log-probs of the kept real tokens are those they were sampled with; the forced tokens' come from
    one batched ``forward_logprobs`` at the sampling temperature.
    """

    def __init__(self, policy: HFPolicy, *, turns: int, think_tokens: int) -> None:
        self.policy = policy
        self.tokenizer = policy.tokenizer
        self.turns = turns
        self.think_tokens = think_tokens
        vocab = self.tokenizer.get_vocab()
        self.stop_ids = {int(i) for i in self.tokenizer.all_special_ids}
        self.stop_ids |= {int(vocab[m]) for m in DEFAULT_MARKERS if m in vocab}
        self.end_ids = self._encode("<|im_end|>")
        self.calls = 0
        self.rows = 0
        self.fallbacks = 0      # rows whose real tokens were dropped to keep the forced turn exact

    def _encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text, add_special_tokens=False)]

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def _ending(self, prompt: list[int]) -> tuple[str, str]:
        """(forced text, expected: the call key or "" for the answer)."""
        text = self._decode(prompt)
        match = _TAG.search(text)
        if match is None:
            raise ValueError("ForcedToolSampler needs a prompt tagged [task:N]")
        turn = text.count(_ASSISTANT) - 1
        if turn < self.turns:
            key = f"{match.group(1)}-{turn}"
            return "\n" + call_text(key), key
        return "\n<answer>done</answer>", ""

    def _exact(self, ids: list[int], expected: str) -> bool:
        parsed = parse_tool_calls(self._decode(ids))
        if parsed.errors:
            return False
        if not expected:
            return parsed.answer == "done" and not parsed.calls
        return parsed.answer is None and [(c.name, c.arguments) for c in parsed.calls] == [
            ("wait", {"key": expected})]

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        self.calls += 1
        self.rows += len(prompts)
        real = self.policy.generate(prompts, dataclasses.replace(
            params, max_new_tokens=max(1, min(self.think_tokens, params.max_new_tokens)),
            stop_token_ids=(), stop_strings=()))
        rows: list[tuple[list[int], list[float], int]] = []   # ids, real log-probs, number of real ids
        for prompt, gen in zip(prompts, real, strict=True):
            ending, expected = self._ending(prompt)
            keep = len(gen.token_ids) if self.think_tokens else 0
            for i, tok in enumerate(gen.token_ids[:keep]):
                if tok in self.stop_ids:
                    keep = i
                    break
            tail = self._encode(ending) + self.end_ids
            ids = gen.token_ids[:keep] + tail
            if keep and not self._exact(ids[: -len(self.end_ids)], expected):
                self.fallbacks += 1
                keep, ids = 0, list(tail)
            ids = ids[: params.max_new_tokens]
            rows.append((ids, gen.logprobs[:keep], keep))
        scored = self._score([p + ids for p, (ids, _, _) in zip(prompts, rows, strict=True)],
                             params.temperature or 1.0)
        out = []
        for prompt, (ids, lps, keep), row_scores in zip(prompts, rows, scored, strict=True):
            forced = row_scores[len(prompt) - 1 + keep: len(prompt) - 1 + len(ids)]
            logprobs = list(lps[: len(ids)]) + forced
            ended = bool(ids) and ids[-1] in params.stop_token_ids
            out.append(Generation(token_ids=ids, logprobs=logprobs, raw_logprobs=list(logprobs),
                                  finish_reason="stop" if ended else "length",
                                  stop_reason=ids[-1] if ended else None))
        return out

    def _score(self, rows: list[list[int]], temperature: float) -> list[list[float]]:
        """Log-probs of every next token of each (right-padded) row."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.policy.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        logprobs, _ = self.policy.forward_logprobs(ids, mask, temperature=temperature, compute_entropy=False)
        return [row[: len(r) - 1] for row, r in zip(logprobs.tolist(), rows, strict=True)]


# ---------------------------------------------------------------- lock-step


class LockStepBatcher(GenerationBatcher):
    """A ``GenerationBatcher`` with a barrier in front: a request waits until every trajectory
    still running has made its request for this round, then all go out together."""

    def __init__(self, sampler: Any, parties: int, **kwargs: Any) -> None:
        super().__init__(sampler, **kwargs)
        self.parties = parties
        self.rounds = 0
        self._waiting = 0
        self._gate = asyncio.Event()

    def _release_if_full(self) -> None:
        if self._waiting and self._waiting >= self.parties:
            gate, self._gate, self._waiting = self._gate, asyncio.Event(), 0
            self.rounds += 1
            gate.set()   # the waiters resume before the batch's kick, which the last one schedules

    async def generate(self, prompt: list[int], params: SamplingParams, cache_key: str | None = None,
                       images: Sequence[ImagePart] = ()) -> Generation:
        gate = self._gate
        self._waiting += 1
        self._release_if_full()
        await gate.wait()
        return await super().generate(prompt, params, cache_key, images)

    def leave(self) -> None:
        """A trajectory ended: the barrier stops waiting for it."""
        self.parties -= 1
        self._release_if_full()


class LockStepSampler(LocalSampler):
    """The local sampler with the lock-step batcher in place of the usual one."""

    def __init__(self, generator: Any, parties: int, **kwargs: Any) -> None:
        super().__init__(generator, **kwargs)
        self.batcher.close()
        self.lockstep = LockStepBatcher(generator, parties, max_batch_size=self.batcher.max_batch_size,
                                        cache=self.cache)
        self.batcher = self.lockstep


class LockStepEngine(RolloutEngine):
    """``RolloutEngine`` whose trajectories take every turn together (see ``LockStepBatcher``)."""

    def __init__(self, sampler: LockStepSampler, *args: Any, **kwargs: Any) -> None:
        super().__init__(sampler, *args, **kwargs)
        self.lockstep = sampler.lockstep

    async def rollout(self, task: Task, group_id: int, sample_index: int, *, step: int = 0) -> RolloutTrajectory:
        try:
            return await super().rollout(task, group_id, sample_index, step=step)
        finally:
            self.lockstep.leave()


# ---------------------------------------------------------------- the run


def make_tasks(n: int, seed: int, scale: float) -> list[Task]:
    schema = {"type": "function", "function": {
        "name": "wait", "description": "Wait for a slow external service.",
        "parameters": WaitArgs.model_json_schema()}}
    return [
        Task(
            task_id=f"t{i}",
            messages=[
                {"role": "system", "content": "Use the tools, then answer."},
                {"role": "user", "content": f"[task:{i}] Wait for the service three times, then say done."},
            ],
            tools=[schema],
            context={"latency_seed": str(seed), "latency_scale": repr(scale)},
        )
        for i in range(n)
    ]


def rollout_config(n: int, turns: int, think_tokens: int) -> RolloutConfig:
    return RolloutConfig(
        group_size=2, prompts_per_step=max(1, n // 2), max_turns=turns + 1,
        max_new_tokens_per_turn=think_tokens + 64, max_total_tokens=4096, max_observation_tokens=64,
        tool_concurrency=max(64, n), per_tool_concurrency=max(64, n),
    )


@contextlib.contextmanager
def tool_server(tmp: Path) -> Iterator[str]:
    """``python -m bench.latency_tool_server`` in its own process; yields its address."""
    ready = tmp / "wait-tools.ready"
    proc = subprocess.Popen([sys.executable, "-m", "bench.latency_tool_server", "--ready-file", str(ready)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"the wait tool server exited ({proc.returncode}): {err[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the wait tool server did not start within 60 s")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        yield f"{info['host']}:{info['port']}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run_mode(mode: str, sampler: ForcedToolSampler, address: str, tasks: list[Task],
                   cfg: RolloutConfig, seed: int) -> tuple[dict[str, Any], list[RolloutTrajectory]]:
    """One rollout of every task, once, in ``mode``; the wall time covers ``engine.run`` only."""
    client = ToolClient(address, timeout=60.0)
    engine: RolloutEngine
    local: LocalSampler
    kwargs: dict[str, Any] = {"seed": seed, "tool_timeout_s": 60.0}
    if mode == "lockstep":
        local = LockStepSampler(sampler, parties=len(tasks))
        engine = LockStepEngine(local, sampler.tokenizer, client, cfg, **kwargs)
    else:
        local = LocalSampler(sampler)
        engine = RolloutEngine(local, sampler.tokenizer, client, cfg, **kwargs)
    try:
        await client.list_tools(timeout=10.0)       # the channel is up before the clock starts
        calls0, rows0 = sampler.calls, sampler.rows
        start = time.perf_counter()
        trajs = await engine.run(tasks, group_size=1)
        wall = time.perf_counter() - start
    finally:
        await engine.aclose()
        await local.aclose()
        await client.close()
    calls, rows = sampler.calls - calls0, sampler.rows - rows0
    bad = [(t.task.task_id, t.status.value, t.infra_error) for t in trajs
           if t.status is not TrajectoryStatus.COMPLETED or t.num_tool_calls != cfg.max_turns - 1]
    if bad:
        raise RuntimeError(f"{mode}: {len(bad)} trajectories did not run every turn: {bad[:3]}")
    tool_ms = [ms for t in trajs for ms in t.tool_latency_ms]
    result = {
        "mode": mode,
        "trajectories": len(trajs),
        "wall_s": round(wall, 4),
        "trajectories_per_s": round(len(trajs) / wall, 3),
        "generate_calls": calls,
        "rows_per_generate_call": round(rows / max(calls, 1), 2),
        "generated_tokens": sum(t.num_generated for t in trajs),
        "tool_calls": len(tool_ms),
        "tool_latency_ms_p50": round(statistics.median(tool_ms), 2),
        "tool_latency_ms_max": round(max(tool_ms), 2),
    }
    if isinstance(engine, LockStepEngine):
        result["barrier_rounds"] = engine.lockstep.rounds
    return result, trajs


def latency_bounds(n: int, turns: int, seed: int, scale: float) -> dict[str, float]:
    """What the tool latencies alone impose: the async engine cannot finish before the trajectory
    with the largest sum of latencies; lock-step waits for each turn's slowest call."""
    lat = [[latency_s(f"{i}-{k}", seed, scale) for k in range(turns)] for i in range(n)]
    every = sorted(x for row in lat for x in row)
    return {
        "async_s": round(max(sum(row) for row in lat), 4),
        "lockstep_s": round(sum(max(row[k] for row in lat) for k in range(turns)), 4),
        "drawn_median_ms": round(statistics.median(every) * 1000, 2),
        "drawn_max_ms": round(every[-1] * 1000, 2),
    }


def measure_training(policy: HFPolicy, trajs: Sequence[RolloutTrajectory], seed: int,
                     repeats: int) -> dict[str, Any]:
    """tokens/s of ``grpo_update`` and ``sft_step`` on the produced trajectories."""
    rng = random.Random(seed)
    n = len(trajs) - len(trajs) % GROUP
    regrouped = [dataclasses.replace(t, group_id=i // GROUP, reward=rng.random()) for i, t in enumerate(trajs[:n])]
    micro = 8
    stage = StageConfig(
        kind="rl", steps=1, reward={"bench": 1.0},
        rollout=RolloutConfig(group_size=GROUP, prompts_per_step=max(1, n // GROUP)),
        algorithm=AlgorithmConfig(updates_per_batch=1, micro_batch_size=micro),
        optim=OptimConfig(),
    )
    batch = collate_trajectories(regrouped, pad_token_id=policy.pad_token_id)
    seq_tokens = int(batch.attention_mask.sum())
    loss_tokens = int(batch.loss_mask.sum())
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-5)

    def grpo() -> None:
        metrics = grpo_update(policy, optimizer, regrouped, stage, step=0)
        if metrics.get("updated") != 1.0:
            raise RuntimeError(f"grpo_update made no update: {metrics}")

    def sft() -> None:
        for i in range(0, n, micro):
            sft_step(policy, optimizer, batch.select(list(range(i, min(i + micro, n)))))

    out: dict[str, Any] = {"trajectories": n, "micro_batch_size": micro, "sequence_tokens": seq_tokens,
                           "loss_tokens": loss_tokens, "padded_tokens": int(batch.input_ids.numel())}
    for name, fn in (("grpo_update", grpo), ("sft_step", sft)):
        fn()   # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        out[name] = {"seconds_median": round(median, 4), "seconds_min": round(min(times), 4),
                     "sequence_tokens_per_s": round(seq_tokens / median, 1),
                     "loss_tokens_per_s": round(loss_tokens / median, 1)}
    return out


def warm_up(sampler: ForcedToolSampler, prompt: list[int], n: int) -> None:
    """First calls of torch are slow: run the batch sizes both modes will use once."""
    params = SamplingParams(max_new_tokens=4, seed=0)
    for size in sorted({1, 2, 4, 8, n}):
        sampler.policy.generate([prompt] * size, params)
        sampler._score([prompt] * size, 1.0)


async def run_rollouts(sampler: ForcedToolSampler, address: str, tasks: list[Task], cfg: RolloutConfig,
                       seed: int, console: Console) -> tuple[list[dict[str, Any]], list[RolloutTrajectory]]:
    results = []
    kept: list[RolloutTrajectory] = []
    for mode in ("lockstep", "async"):
        console.print(f"rollout: {mode} ({len(tasks)} trajectories × {cfg.max_turns - 1} tool turns)…")
        result, trajs = await run_mode(mode, sampler, address, tasks, cfg, seed)
        results.append(result)
        if mode == "async":
            kept = trajs
    return results, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=64)
    parser.add_argument("--turns", type=int, default=3, help="tool-calling turns per trajectory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--think-tokens", type=int, default=16, help="real tokens sampled per turn")
    parser.add_argument("--latency-scale", type=float, default=1.0, help="multiplies every tool latency")
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ns = parser.parse_args(argv)
    if ns.trajectories < 1 or ns.turns < 1 or ns.think_tokens < 0 or ns.latency_scale < 0:
        parser.error("--trajectories and --turns must be >= 1, --think-tokens and --latency-scale >= 0")
    console = Console()
    torch.manual_seed(ns.seed)
    with tempfile.TemporaryDirectory(prefix="rlyard-bench-rollout-") as tmp_name:
        tmp = Path(tmp_name)
        info = init_policy(tmp / "policy", seed=ns.seed)
        policy = HFPolicy(tmp / "policy")
        sampler = ForcedToolSampler(policy, turns=ns.turns, think_tokens=ns.think_tokens)
        tasks = make_tasks(ns.trajectories, ns.seed, ns.latency_scale)
        cfg = rollout_config(ns.trajectories, ns.turns, ns.think_tokens)
        prompt = chat_prompt_ids(policy.tokenizer, tasks[0])  # the prompt the engine will build
        warm_up(sampler, prompt, ns.trajectories)
        with tool_server(tmp) as address:
            results, trajs = asyncio.run(run_rollouts(sampler, address, tasks, cfg, ns.seed, console))
        console.print("training: grpo_update and sft_step on the async trajectories…")
        training = measure_training(policy, trajs, ns.seed, ns.train_repeats)

    by_mode = {r["mode"]: r for r in results}
    speedup = by_mode["async"]["trajectories_per_s"] / by_mode["lockstep"]["trajectories_per_s"]
    bounds = latency_bounds(ns.trajectories, ns.turns, ns.seed, ns.latency_scale)
    table = Table("mode", "trajectories", "wall s", "traj/s", "generate calls", "rows/call", "latency-only bound s")
    for r in results:
        table.add_row(r["mode"], str(r["trajectories"]), f"{r['wall_s']:.2f}", f"{r['trajectories_per_s']:.2f}",
                      str(r["generate_calls"]), f"{r['rows_per_generate_call']:.1f}",
                      f"{bounds['async_s' if r['mode'] == 'async' else 'lockstep_s']:.2f}")
    console.print(table)
    verdict = "[green]pass[/]" if speedup >= GOAL_SPEEDUP else "[red]FAIL[/]"
    console.print(f"async / lock-step: {speedup:.2f}× (goal ≥ {GOAL_SPEEDUP:.0f}×) {verdict}")
    train = Table("training step", "seconds", "sequence tokens/s", "loss tokens/s")
    for name in ("grpo_update", "sft_step"):
        t = training[name]
        train.add_row(name, f"{t['seconds_median']:.3f}", f"{t['sequence_tokens_per_s']:.0f}",
                      f"{t['loss_tokens_per_s']:.0f}")
    console.print(train)

    report = {
        "benchmark": "rollout",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": metadata.version("torch"),
                    "transformers": metadata.version("transformers"), "grpcio": metadata.version("grpcio"),
                    "platform": platform.platform(), "loadavg_1m": round(os.getloadavg()[0], 2)},
        "params": {"trajectories": ns.trajectories, "turns": ns.turns, "generations_per_trajectory": ns.turns + 1,
                   "seed": ns.seed, "think_tokens": ns.think_tokens, "latency_scale": ns.latency_scale,
                   "train_repeats": ns.train_repeats},
        "policy": {"n_params": info.n_params, "vocab_size": info.vocab_size, "arch": info.arch,
                   "sampler": "ForcedToolSampler: think_tokens real tokens from HFPolicy.generate, then a forced "
                              "wait call (or <answer> on the last turn); forced tokens scored by forward_logprobs",
                   "fallback_rows": sampler.fallbacks},
        "tool": {"name": "wait", "distribution": "lognormal", "median_ms": MEDIAN_S * 1000, "p99_ms": P99_S * 1000,
                 "sigma": round(SIGMA, 4), "scale": ns.latency_scale, "server": "separate process",
                 **{k: v for k, v in bounds.items() if k.startswith("drawn")}},
        "latency_only_bounds_s": {k: v for k, v in bounds.items() if k.endswith("_s")},
        "results": results,
        "speedup": round(speedup, 3),
        "goal": f">= {GOAL_SPEEDUP:.0f}x trajectories/s over lock-step",
        "pass": speedup >= GOAL_SPEEDUP,
        "training": training,
    }
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {ns.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
