"""Hostile requests against the reward service, counted: crashes, hangs, unclear errors, memory.

``python -m reward_service`` runs in its own process (port 0 + ready file; its tool servers and
judge are a port that refuses connections, so the tool-verification and judge rewards fail as
SYSTEM_ERROR fast). ``--concurrency`` clients send ``--requests`` ``Score`` and ``ScoreBatch``
calls built by a seeded generator: specs with NaN, infinite and huge weights and params JSON of any
shape (composites, addresses the service may not dial), predictions of tag soup, unicode and,
now and then, a megabyte of unclosed tags, ground truths and trajectories with undefined enum
values, deep or huge JSON, bad images.

Counted per call: a **crash** is the process gone (it is restarted and counted) or an UNKNOWN /
INTERNAL status; a **hang** is a call past ``--deadline`` (DEADLINE_EXCEEDED) or the process not
answering; an **unclear error** is any other status than INVALID_ARGUMENT, a message that names a
Python exception, an OK answer with a non-finite total, or an item error that says "internal
error". The server's RSS is sampled from ``/proc`` every ``--rss-every`` requests. Goal: 0, 0, 0,
and RSS that levels off. Writes ``bench/results/fuzz_reward.json``.

``python -m bench.fuzz_reward [--requests 100000] [--quick] [--seed 0] [--output F]``
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc

from rlyard.common.v1 import common_pb2
from rlyard.reward.v1 import reward_pb2, reward_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "bench" / "results" / "fuzz_reward.json"
PYTHON_NAMES = re.compile(r"Error\b|Exception\b|Traceback|<class ")
EXAMPLES_KEPT = 5   # per kind of finding

NAMES = ["qa_em", "qa_f1", "search_r1", "format", "tool_call_match", "composite", "sql_execution", "judge",
         "poi_correctness", "poi_completeness", "poi_faithfulness", "no_such_reward", ""]
PIECES = ["<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>", "<search>", "{", "}",
          "[", "]", '"', "\n", " ", "Paris", "paris", "the", '{"name": "a", "arguments": {"q": 1}}', "SELECT 1",
          "```sql", "```", "rated 4.5", "¥120", "SH000001", "é", "漢字", "\u200b", "\x00"]
HUGE = ["<think>" * 150_000, "<tool_call>" * 90_000, "<answer>" * 120_000, "x" * 1_200_000,
        "rating" + " " * 300_000, "[" * 200_000, "SELECT " + "1+" * 60_000 + "1"]
ODD_JSON = ["NaN", '{"a": Infinity}', "-Infinity", "[" * 3000 + "]" * 3000, '{"x": ' + "9" * 5000 + "}", "{",
            "", "null", '"text"', "[1, 2]", "1e999", '{"answers": ' * 80 + "1" + "}" * 80, "\ud7ff", "true"]
KEYS = ["answers", "answer", "target", "tool_calls", "db_id", "query", "SQL", "terms", "weight", "r_max", "r_min",
        "format_score", "max_tool_calls", "endpoint", "tool_server", "backend", "model", "squad_version", "schedule",
        "checklist", "gold_answers", "anchor", "aggregate", "think_tag", "semantics", "template", "normalize",
        "score_min", "score_max", "question"]


def _number(rng: random.Random, hostile: float = 0.15) -> float:
    """A weight: mostly sensible, sometimes NaN, infinite or huge."""
    if rng.random() < hostile:
        return rng.choice([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e307, float(rng.randint(-10**6, 10**6))])
    return rng.choice([1.0, 1.0, 0.5, 0.1, 2.0, -1.0, 0.0, rng.uniform(-3, 3)])


def _text(rng: random.Random, huge_rate: float) -> str:
    if rng.random() < huge_rate:
        return rng.choice(HUGE)
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40)))


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([rng.randint(-10**9, 10**9), 10**40, -1, 0])
    if kind == 3:
        return rng.choice([rng.uniform(-1e6, 1e6), 1e300, -0.0])
    if kind == 4:
        return _text(rng, 0.0)[:30]
    if kind in (5, 6):
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(KEYS) if rng.random() < 0.7 else _text(rng, 0.0)[:10]: _value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def _json(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.1:
        return rng.choice(ODD_JSON)
    if roll < 0.2:
        return _text(rng, 0.0)
    return json.dumps(_value(rng), allow_nan=True)


def _ground_truth(rng: random.Random) -> str:
    """Mostly the shape some reward expects (with odd contents), else anything."""
    roll = rng.random()
    if roll < 0.25:
        return json.dumps({"answers": [_value(rng) if rng.random() < 0.2 else _text(rng, 0)[:20]
                                       for _ in range(rng.randint(0, 3))]})
    if roll < 0.4:
        return json.dumps({"tool_calls": [{"name": rng.choice(["a", "search", ""]), "arguments": _value(rng)}
                                          for _ in range(rng.randint(0, 3))]})
    if roll < 0.5:
        return json.dumps({"db_id": rng.choice(["concert_singer", "x", ""]), "query": _text(rng, 0)})
    if roll < 0.55:
        return json.dumps({"checklist": [{"kind": rng.choice(["count", "rating", "x"]), "value": _value(rng)}],
                           "gold_answers": ["SH000001"], "anchor": None})
    return _json(rng)


def _params(rng: random.Random, name: str) -> str:
    if name == "composite" and rng.random() < 0.7:
        inner = {rng.choice(NAMES): _number(rng) for _ in range(rng.randint(1, 3))}
        nest: dict[str, Any] = {"terms": inner}
        for _ in range(rng.choice([0, 0, 0, 1, 6])):
            nest = {"terms": {"composite": {"weight": 1, **nest}}}
        return json.dumps(nest, allow_nan=True)
    roll = rng.random()
    if roll < 0.1:
        address = rng.choice(["169.254.169.254:80", "http://10.0.0.1/v1", "/etc", "127.0.0.1:1"])
        return json.dumps({rng.choice(["tool_server", "endpoint", "model"]): address,
                           "backend": rng.choice(["hf", "openai"])})
    if roll < 0.18:
        return _json(rng)
    if roll < 0.4:
        return json.dumps({rng.choice(KEYS): _value(rng) for _ in range(rng.randint(1, 3))})
    return ""


def _spec(rng: random.Random) -> reward_pb2.RewardSpec:
    names = rng.sample(NAMES[:-2] if rng.random() < 0.9 else NAMES, rng.choice([0, 1, 1, 1, 1, 2, 2, 3]))
    if rng.random() < 0.03 and names:
        names.append(names[0])   # a reward named twice
    return reward_pb2.RewardSpec(terms=[reward_pb2.RewardTerm(name=n, weight=_number(rng), params_json=_params(rng, n))
                                        for n in names])


def _trajectory(rng: random.Random, huge_rate: float) -> common_pb2.Trajectory:
    turns = []
    for i in range(rng.randint(0, 4)):
        calls = [common_pb2.ToolCall(call_id=f"c{i}{j}", name=rng.choice(["sql_query", "a", "poi_detail", ""]),
                                     arguments_json=_json(rng)) for j in range(rng.randint(0, 2))]
        results = [common_pb2.ToolResult(call_id=f"c{i}0", name="sql_query", structured_json=_json(rng),
                                         is_error=rng.random() < 0.3, content=[common_pb2.Content(text=_text(rng, 0))],
                                         system_error=common_pb2.ErrorStatus(code=rng.choice([0, 0, 4, 14, 99])))
                   for _ in range(rng.randint(0, 1))]
        content = []
        if rng.random() < 0.02:
            content.append(common_pb2.Content(image=common_pb2.Image(
                data=rng.randbytes(rng.randint(0, 8)), mime_type=rng.choice(["image/png", "text/html", ""]),
                width=rng.randint(-1, 3), height=rng.randint(-1, 3))))
        # undefined enum numbers now and then (the stubs' types do not allow them: cast)
        role: Any = rng.choice([0, 1, 2, 3, 3, 3, 4]) if rng.random() < 0.97 else rng.choice([9, -1])
        turns.append(common_pb2.Turn(index=i, role=role,
                                     text=_text(rng, huge_rate), tool_calls=calls, tool_results=results,
                                     content=content))
    status: Any = rng.choice([1, 1, 1, 2, 2, 3, 4, 0]) if rng.random() < 0.95 else rng.choice([77, -3, 5])
    return common_pb2.Trajectory(turns=turns, final_answer=_text(rng, 0), status=status)


def _item(rng: random.Random, huge_rate: float, with_spec: bool) -> reward_pb2.ScoreRequest:
    req = reward_pb2.ScoreRequest(item_id=_text(rng, 0)[:20], prediction=_text(rng, huge_rate),
                                  ground_truth_json=_ground_truth(rng),
                                  training_step=rng.choice([0, 5, -1, 2**63 - 1]))
    if with_spec:
        req.spec.CopyFrom(_spec(rng))
    if rng.random() < 0.4:
        req.trajectory.CopyFrom(_trajectory(rng, huge_rate))
    return req


def hostile_request(rng: random.Random, huge_rate: float) -> tuple[str, Any]:
    """One call: ("Score", ScoreRequest) or ("ScoreBatch", ScoreBatchRequest)."""
    if rng.random() < 0.6:
        return "Score", _item(rng, huge_rate, True)
    items = [_item(rng, huge_rate / 4, rng.random() < 0.3) for _ in range(rng.randint(0, 8))]
    batch = reward_pb2.ScoreBatchRequest(items=items)
    if rng.random() < 0.9:
        batch.default_spec.CopyFrom(_spec(rng))
    return "ScoreBatch", batch


# ---------------------------------------------------------------- the service process
class Service:
    """``python -m reward_service`` with its dependencies on a refused port; restarted if it dies."""

    def __init__(self, workdir: Path, refused: str) -> None:
        self.workdir, self.refused = workdir, refused
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        ready = self.workdir / f"ready-{self.starts}.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RLYARD")}
        env.update(PYTHONPATH=str(REPO), RLYARD_PORT="0", RLYARD_READY_FILE=str(ready), RLYARD_LOG_LEVEL="WARNING",
                   RLYARD_REWARD_SQL_TOOLS_TARGET=self.refused, RLYARD_REWARD_POI_TOOLS_TARGET=self.refused,
                   RLYARD_REWARD_JUDGE_ENDPOINT=f"http://{self.refused}/v1", RLYARD_REWARD_TOOL_TIMEOUT_S="2",
                   RLYARD_REWARD_JUDGE_TIMEOUT_S="2")
        log = (self.workdir / f"reward-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "reward_service"], cwd=self.workdir, env=env,
                                     stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the reward service did not start: {self.log_tail()}")
            time.sleep(0.02)
        self.address = f"127.0.0.1:{json.loads(ready.read_text())['port']}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return math.nan

    def log_tail(self, chars: int = 2000) -> str:
        path = self.workdir / f"reward-{self.starts}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def error_lines(self) -> int:
        """Lines logged at ERROR over every start (tracebacks count once, by their first line)."""
        return sum(p.read_text(errors="replace").count(" ERROR ") for p in self.workdir.glob("reward-*.log"))

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


# ---------------------------------------------------------------- the run
@dataclass
class Tally:
    requests: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    item_statuses: Counter[str] = field(default_factory=Counter)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    hangs: list[dict[str, Any]] = field(default_factory=list)
    unclear: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def finding(self, kind: str, where: list[dict[str, Any]], what: dict[str, Any]) -> None:
        self.counts[kind] += 1
        if len(where) < EXAMPLES_KEPT:
            where.append(what)


def _describe(method: str, request: Any) -> str:
    text = str(request)
    return f"{method}: {text[:300]}" + (f"… ({len(text)} characters)" if len(text) > 300 else "")


def _check(tally: Tally, method: str, request: Any, response: Any) -> None:
    results = response.results if method == "ScoreBatch" else [response]
    for r in results:
        tally.item_statuses[reward_pb2.ScoreStatus.Name(r.status)] += 1
        bad = (not math.isfinite(r.total) or not all(math.isfinite(c.value) for c in r.components)
               or "internal error" in r.error or PYTHON_NAMES.search(r.error)
               or r.status not in (reward_pb2.SCORE_STATUS_OK, reward_pb2.SCORE_STATUS_SYSTEM_ERROR,
                                   reward_pb2.SCORE_STATUS_INVALID_INPUT))
        if bad:
            tally.finding("unclear_errors", tally.unclear, {"request": _describe(method, request), "total": r.total,
                                                              "status": r.status, "error": r.error[:300]})


async def run(requests: int, concurrency: int, seed: int, deadline: float, rss_every: int,
              huge_rate: float) -> dict[str, Any]:
    rng = random.Random(seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))              # bound, never listening: every dependency refuses
    refused = f"127.0.0.1:{sock.getsockname()[1]}"
    tally = Tally()
    rss: list[list[float]] = []
    with tempfile.TemporaryDirectory(prefix="fuzz-reward-") as tmp:
        service = Service(Path(tmp), refused)
        await asyncio.to_thread(service.start)
        options = [("grpc.max_send_message_length", 16 * 1024 * 1024),
                   ("grpc.max_receive_message_length", 16 * 1024 * 1024)]
        channel = grpc.aio.insecure_channel(service.address, options=options)
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue(maxsize=concurrency * 4)
        started = time.monotonic()
        rss.append([0, round(service.rss_mb(), 1), 0.0])
        restart = asyncio.Lock()

        async def worker() -> None:
            nonlocal channel, stub
            while (job := await queue.get()) is not None:
                method, request = job
                tic = time.monotonic()
                try:
                    response = await getattr(stub, method)(request, timeout=deadline)
                except grpc.aio.AioRpcError as exc:
                    code, details = exc.code(), exc.details() or ""
                    tally.codes[code.name] += 1
                    what = {"request": _describe(method, request), "code": code.name, "details": details[:300]}
                    if not service.alive():
                        async with restart:
                            if not service.alive():
                                tally.finding("crashes", tally.crashes, {**what, "log": service.log_tail()})
                                await asyncio.to_thread(service.start)
                                await channel.close()
                                channel = grpc.aio.insecure_channel(service.address, options=options)
                                stub = reward_pb2_grpc.RewardServiceStub(channel)
                    elif code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
                        tally.finding("crashes", tally.crashes, what)
                    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        tally.finding("hangs", tally.hangs, what)
                    elif code != grpc.StatusCode.INVALID_ARGUMENT or PYTHON_NAMES.search(details):
                        tally.finding("unclear_errors", tally.unclear, what)
                else:
                    tally.codes["OK"] += 1
                    _check(tally, method, request, response)
                tally.latencies.append(time.monotonic() - tic)
                tally.requests += 1
                if tally.requests % rss_every == 0 and service.alive():
                    rss.append([tally.requests, round(service.rss_mb(), 1), round(time.monotonic() - started, 1)])

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        for _ in range(requests):
            await queue.put(hostile_request(rng, huge_rate))
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
        seconds = time.monotonic() - started
        qa_em = reward_pb2.RewardSpec(terms=[reward_pb2.RewardTerm(name="qa_em", weight=1)])
        plain = reward_pb2.ScoreRequest(prediction="Paris", ground_truth_json='{"answers": ["paris"]}', spec=qa_em)
        after = await stub.Score(plain, timeout=10)
        rss.append([tally.requests, round(service.rss_mb(), 1), round(time.monotonic() - started, 1)])
        await channel.close()
        error_lines = service.error_lines()
        exit_code = service.stop()
    sock.close()
    return summarize(tally, rss, seconds, after.total == 1.0, error_lines, exit_code, service.starts,
                     dict(requests=requests, concurrency=concurrency, seed=seed, deadline_s=deadline,
                          rss_every=rss_every, huge_rate=huge_rate))


def summarize(tally: Tally, rss: list[list[float]], seconds: float, plain_ok: bool, error_lines: int,
              exit_code: int | None, starts: int, config: dict[str, Any]) -> dict[str, Any]:
    lat = sorted(tally.latencies)
    quarter = rss[max(1, len(rss) // 4)][1] if len(rss) > 2 else rss[-1][1]
    growth = {"start_mb": rss[0][1], "after_first_quarter_mb": quarter, "end_mb": rss[-1][1],
              "growth_after_first_quarter_mb": round(rss[-1][1] - quarter, 1),
              "peak_mb": max(r[1] for r in rss)}
    counts = {k: tally.counts.get(k, 0) for k in ("crashes", "hangs", "unclear_errors")}
    return {
        "bench": "fuzz_reward", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": config,
        "requests": tally.requests, "seconds": round(seconds, 1),
        "requests_per_s": round(tally.requests / seconds, 1) if seconds else None,
        "latency_ms": {"p50": round(lat[len(lat) // 2] * 1000, 2), "p99": round(lat[int(len(lat) * 0.99)] * 1000, 2),
                       "max": round(lat[-1] * 1000, 1)} if lat else {},
        "status_codes": dict(tally.codes.most_common()), "item_statuses": dict(tally.item_statuses.most_common()),
        **counts,
        "examples": {"crashes": tally.crashes, "hangs": tally.hangs, "unclear_errors": tally.unclear},
        "error_log_lines": error_lines, "process_starts": starts, "exit_code_on_sigterm": exit_code,
        "plain_score_after": plain_ok,
        "rss_mb": rss, "rss": growth,
        "goals": {"no_crashes": counts["crashes"] == 0, "no_hangs": counts["hangs"] == 0,
                  "no_unclear_errors": counts["unclear_errors"] == 0, "no_error_log_lines": error_lines == 0,
                  "answers_afterwards": plain_ok, "clean_exit": exit_code == 0},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "grpcio": metadata.version("grpcio"),
                    "platform": platform.platform(), "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="2,000 requests (a smoke run)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=30.0, help="a call past it is a hang (seconds)")
    parser.add_argument("--rss-every", type=int, default=0, help="sample RSS every N requests (0: 50 samples)")
    parser.add_argument("--huge-rate", type=float, default=0.005, help="share of texts that are ~1 MB")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ns = parser.parse_args(argv)
    requests = 2_000 if ns.quick else ns.requests
    result = asyncio.run(run(requests, ns.concurrency, ns.seed, ns.deadline, ns.rss_every or max(1, requests // 50),
                             ns.huge_rate))
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(result, indent=2) + "\n")
    keys = ("requests", "seconds", "requests_per_s", "crashes", "hangs", "unclear_errors", "error_log_lines",
            "rss", "goals")
    print(json.dumps({k: result[k] for k in keys}, indent=2))
    print(f"written: {ns.output}")
    return 0 if all(result["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
