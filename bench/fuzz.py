"""Fuzz a tool server process with random requests, as a hostile client would, and report what
went wrong: crashes (the server died), hangs (a trivial call past its deadline), unclear errors
(UNKNOWN/INTERNAL, or a Python exception's name in a message), the server's RSS over time and how
much it logged.

``python -m bench.fuzz [--requests N] [--quick] [--seed S] [--concurrency C] [--output F]``
writes the ``tools`` section of ``bench/results/fuzz.json`` (other sections, one per service, are
kept) and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.tool_call import ServerProcess, server_env, start_process
from rlyard.client import make_channel
from rlyard.common.v1 import common_pb2
from rlyard.tools.v1 import tools_pb2

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "bench" / "results" / "fuzz.json"
DEFAULT_DB_DIR = REPO / "data" / "spider" / "database"
SERVICE = "/rlyard.tools.v1.ToolService/"
TOOLS = ["sql_query", "list_tables", "describe_table"]
DB_IDS = ["concert_singer", "pets_1", "singer", "world_1", "no_such_db", "../x", "concert_singer\n", ""]
QUERIES = ["SELECT count(*) FROM singer", "SELECT * FROM singer", "SELECT * FROM nope", "DROP TABLE singer",
           "", ";", "-- only a comment", "SELECT printf('%.*c', 2000000, 'x')", "SELECT 1; SELECT 2",
           "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c",
           "SELECT replace(hex(zeroblob(499999)),'0',char(1))"]
PLAIN = [("concert_singer", "SELECT name, country FROM singer WHERE age > 30"), ("pets_1", "SELECT count(*) FROM Pets"),
         ("world_1", "SELECT Name FROM country WHERE Population > 100000000"),
         ("concert_singer", "SELECT * FROM concert JOIN stadium USING (Stadium_ID)")]
EXCEPTION_NAMES = ("RecursionError", "ValueError", "DecodeError", "TypeError", "KeyError", "AttributeError",
                   "UnicodeEncodeError", "Traceback", "<class")
UNCLEAR = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
MARK = "QQQQ"   # a field holding it is sent as bytes that are not UTF-8
KINDS = {"call_tool": 35, "call_tools": 25, "open_session": 15, "close_session": 5, "list_tools": 2,
         "undecodable": 10, "plain_call": 8}   # plain_call: ordinary traffic among the hostile
PROBE_EVERY_S = 2.0


# ---------------------------------------------------------------- random requests


class Inputs:
    """Random names, arguments, contexts, ids and timeouts, hostile on purpose."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def text(self, n: int = 12) -> str:
        r = self.rng
        pools = [(0x20, 0x7E), (0xA0, 0x2FF), (0x4E00, 0x4E80), (0x1F600, 0x1F640), (0x0, 0x1F), (0xFFF0, 0xFFFF)]
        out = []
        for _ in range(r.randint(0, n)):
            lo, hi = r.choice(pools)
            out.append(chr(r.randint(lo, hi)))
        return "".join(out)

    def name(self) -> str:
        r = self.rng.random()
        if r < 0.7:
            return self.rng.choice(TOOLS)
        if r < 0.85:
            return self.text()
        if r < 0.95:
            return "n" * self.rng.choice([100, 10_000, 100_000, 300_000])
        return MARK

    def arguments(self) -> str:
        r, rng = self.rng.random(), self.rng
        if r < 0.35:
            return json.dumps({"query": rng.choice(QUERIES)})
        if r < 0.45:
            return json.dumps({"table": rng.choice(["singer", "concert", "nope", self.text()])})
        if r < 0.5:
            return "{}"
        if r < 0.58:
            n = rng.randint(1, 5000)
            return rng.choice(["[" * n + "]" * n, '{"query": ' + "[" * n + "]" * n + "}", "{" * n])
        if r < 0.65:
            n = rng.randint(50, 8000)
            return rng.choice(['{"query": ' + "9" * n + "}", '{"query": -0.' + "5" * n + "}", "1" * n])
        if r < 0.7:
            return json.dumps({"query": "SELECT '" + "a" * rng.choice([1000, 100_000, 999_990, 1_500_000]) + "'"})
        if r < 0.8:
            return self.text(40)
        if r < 0.9:
            return json.dumps({self.text(): self.text() for _ in range(rng.randint(0, 4))})
        if r < 0.95:
            return json.dumps({"query": [1, {"a": None}], "extra": True, "n": rng.choice([1e308, -0.0, 2**70])})
        return MARK

    def context(self) -> dict[str, str]:
        r, rng = self.rng.random(), self.rng
        if r < 0.6:
            return {"db_id": rng.choice(DB_IDS)}
        if r < 0.75:
            return {self.text(): self.text() for _ in range(rng.randint(0, 20))}
        if r < 0.85:
            key, value = rng.choice(["k" * 100_000, "note", MARK]), rng.choice(["v" * 100_000, "x"])
            return {"db_id": "concert_singer", key: value}
        if r < 0.9:
            return {"db_id": "concert_singer", "purpose": rng.choice(["verification", "other"])}
        return {}

    def call_id(self, i: int) -> str:
        r = self.rng.random()
        if r < 0.9:
            return f"c{i}"
        return self.rng.choice(["", "dup", "c" * 2000, MARK, self.text()])

    def idle(self) -> float:
        return self.rng.choice([0.0, 0.0, 5.0, 60.0, 1e308, math.inf, -math.inf, math.nan, -1.0, 3600.5])

    def session_id(self) -> str:
        return self.rng.choice(["", "", self.text(), "s" * 300, MARK])

    def call(self, i: int, session_id: str) -> tools_pb2.CallToolRequest:
        return tools_pb2.CallToolRequest(
            session_id=session_id if self.rng.random() < 0.5 else "",
            call=common_pb2.ToolCall(call_id=self.call_id(i), name=self.name(), arguments_json=self.arguments()),
            context=self.context())


def encoded(message: Any) -> bytes:
    """``message`` serialised, with every ``MARK`` as bytes that are not UTF-8."""
    return bytes(message.SerializeToString().replace(MARK.encode(), b"\xff\xfe\x80\xc0"))


# ---------------------------------------------------------------- the run


@dataclass
class Tally:
    """What the fuzz run saw."""

    requests: int = 0
    calls: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    result_outcomes: Counter[str] = field(default_factory=Counter)
    unclear: int = 0
    unclear_examples: list[dict[str, str]] = field(default_factory=list)
    crashes: int = 0
    hangs: int = 0
    probes: int = 0
    rss: list[dict[str, float]] = field(default_factory=list)

    def unclear_error(self, kind: str, code: str, message: str) -> None:
        self.unclear += 1
        if len(self.unclear_examples) < 20:
            self.unclear_examples.append({"kind": kind, "code": code, "message": message[:300]})

    def check(self, kind: str, code: grpc.StatusCode, message: str) -> None:
        self.codes[code.name] += 1
        if code in UNCLEAR or any(name in message for name in EXCEPTION_NAMES):
            self.unclear_error(kind, code.name, message)

    def check_result(self, kind: str, result: common_pb2.ToolResult) -> None:
        self.calls += 1
        err = result.system_error
        if err.code:
            code = next((c for c in grpc.StatusCode if c.value[0] == err.code), grpc.StatusCode.UNKNOWN)
            self.result_outcomes[f"system_error:{code.name}"] += 1
            if code in UNCLEAR or any(name in err.message for name in EXCEPTION_NAMES):
                self.unclear_error(f"{kind} result", code.name, err.message)
        else:
            self.result_outcomes["is_error" if result.is_error else "ok"] += 1
        for part in result.content:
            if any(name in part.text for name in EXCEPTION_NAMES):
                self.unclear_error(f"{kind} result text", "OK", part.text)


class Fuzzer:
    """Drives one server address with random requests."""

    def __init__(self, address: str, rng: random.Random, tally: Tally) -> None:
        self.channel = make_channel(address, 64 * 1024 * 1024)
        self.inputs = Inputs(rng)
        self.rng = rng
        self.tally = tally
        self.sessions: list[str] = []
        self._ids = 0

    def _unary(self, method: str, reply: Any) -> Any:
        return self.channel.unary_unary(SERVICE + method, request_serializer=lambda b: b,
                                        response_deserializer=reply.FromString)

    async def unary(self, kind: str, method: str, data: bytes, reply: Any) -> Any:
        try:
            response = await self._unary(method, reply)(data, timeout=10)
        except grpc.aio.AioRpcError as exc:
            self.tally.check(kind, exc.code(), exc.details() or "")
            return None
        self.tally.codes["OK"] += 1
        return response

    def session_id(self) -> str:
        return self.rng.choice(self.sessions) if self.sessions and self.rng.random() < 0.7 else "nope"

    async def one(self) -> None:
        kind = self.rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        self.tally.requests += 1
        self.tally.by_kind[kind] += 1
        inputs = self.inputs
        self._ids += 1
        if kind == "call_tool":
            resp = await self.unary(kind, "CallTool", encoded(inputs.call(self._ids, self.session_id())),
                                    tools_pb2.CallToolResponse)
            if resp is not None:
                self.tally.check_result(kind, resp.result)
        elif kind == "call_tools":
            await self.stream(kind)
        elif kind == "open_session":
            request = tools_pb2.OpenSessionRequest(session_id=inputs.session_id(), context=inputs.context(),
                                                   idle_timeout_s=inputs.idle())
            resp = await self.unary(kind, "OpenSession", encoded(request), tools_pb2.OpenSessionResponse)
            if resp is not None:
                self.sessions.append(resp.session_id)
                if len(self.sessions) > 30:   # most trajectories close their session; some never do
                    sid = self.sessions.pop(0)
                    if self.rng.random() < 0.9:
                        await self.unary(kind, "CloseSession", encoded(tools_pb2.CloseSessionRequest(session_id=sid)),
                                         tools_pb2.CloseSessionResponse)
        elif kind == "close_session":
            sid = self.sessions.pop() if self.sessions and self.rng.random() < 0.5 else inputs.session_id()
            await self.unary(kind, "CloseSession", encoded(tools_pb2.CloseSessionRequest(session_id=sid)),
                             tools_pb2.CloseSessionResponse)
        elif kind == "plain_call":
            db_id, query = self.rng.choice(PLAIN)
            plain = tools_pb2.CallToolRequest(context={"db_id": db_id}, call=common_pb2.ToolCall(
                call_id=f"p{self._ids}", name="sql_query", arguments_json=json.dumps({"query": query})))
            resp = await self.unary(kind, "CallTool", plain.SerializeToString(), tools_pb2.CallToolResponse)
            if resp is not None:
                self.tally.check_result(kind, resp.result)
        elif kind == "list_tools":
            await self.unary(kind, "ListTools", b"", tools_pb2.ListToolsResponse)
        else:   # bytes that do not decode as the request: invalid UTF-8, truncated, or noise
            method, message = self.rng.choice([
                ("CallTool", inputs.call(self._ids, "")),
                ("OpenSession", tools_pb2.OpenSessionRequest(session_id=MARK, context={"db_id": "singer"})),
                ("CloseSession", tools_pb2.CloseSessionRequest(session_id=MARK)),
            ])
            data = encoded(message)
            data = self.rng.choice([data.replace(b"sql", b"\xc0\xaf", 1) + b"\x80", data[: max(1, len(data) // 2)],
                                    self.rng.randbytes(self.rng.randint(1, 200))])
            reply = {"CallTool": tools_pb2.CallToolResponse, "OpenSession": tools_pb2.OpenSessionResponse,
                     "CloseSession": tools_pb2.CloseSessionResponse}[method]
            await self.unary(kind, method, data, reply)

    async def stream(self, kind: str) -> None:
        call = self.channel.stream_stream(SERVICE + "CallTools", request_serializer=lambda b: b,
                                          response_deserializer=tools_pb2.CallToolsResponse.FromString)(timeout=10)
        try:
            for _ in range(self.rng.randint(1, 3)):
                calls = []
                for _ in range(self.rng.randint(1, 8)):
                    self._ids += 1
                    calls.append(self.inputs.call(self._ids, self.session_id()))
                message = tools_pb2.CallToolsRequest(calls=calls)
                if message.ByteSize() < 16 * 1024 * 1024:   # what a client may send
                    try:
                        await call.write(encoded(message))
                    except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                        break   # the server ended the stream (a message did not decode): its status says why
            with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
                await call.done_writing()
            async for response in call:
                for result in response.results:
                    self.tally.check_result(kind, result)
        except grpc.aio.AioRpcError:
            pass
        code = await call.code()
        self.tally.check(kind, code, await call.details() or "")

    async def probe(self) -> bool:
        """A trivial call answers within 5 s."""
        request = tools_pb2.CallToolRequest(
            call=common_pb2.ToolCall(call_id="probe", name="list_tables", arguments_json="{}"),
            context={"db_id": "concert_singer"})
        try:
            await self._unary("CallTool", tools_pb2.CallToolResponse)(request.SerializeToString(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED
        return True

    async def close(self) -> None:
        await self.channel.close()


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (nan if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


@dataclass
class FuzzConfig:
    requests: int
    concurrency: int
    seed: int
    session_idle_s: float
    log_level: str


async def fuzz(cfg: FuzzConfig, db_dir: Path) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    tally = Tally()
    env = server_env(db_dir)
    env.update({"RLYARD_TOOLS_TOOLS": ",".join(TOOLS), "RLYARD_LOG_LEVEL": cfg.log_level,
                "RLYARD_TOOLS_SESSION_IDLE_S": str(cfg.session_idle_s)})
    with tempfile.TemporaryDirectory(prefix="rlyard-fuzz-") as tmp:
        started = time.monotonic()

        def start(n: int) -> ServerProcess:
            ready, log = Path(tmp) / f"tools{n}.ready", Path(tmp) / f"tools{n}.log"
            return start_process("tool server", [sys.executable, "-m", "tool_servers"],
                                 {**env, "RLYARD_READY_FILE": str(ready)}, ready, log)

        server = start(0)
        fuzzer = Fuzzer(f"127.0.0.1:{server.port}", rng, tally)
        next_probe = time.monotonic()
        tally.rss.append({"requests": 0, "seconds": 0.0, "rss_mb": round(rss_mb(server.proc.pid), 1)})

        async def worker() -> None:
            while tally.requests < cfg.requests:
                await fuzzer.one()

        try:
            while tally.requests < cfg.requests:
                chunk = [asyncio.create_task(worker()) for _ in range(cfg.concurrency)]
                # the workers stop at the limit; check on the server every PROBE_EVERY_S meanwhile
                while not all(t.done() for t in chunk):
                    await asyncio.wait(chunk, timeout=max(0.0, next_probe - time.monotonic()))
                    if time.monotonic() < next_probe:
                        continue
                    next_probe = time.monotonic() + PROBE_EVERY_S
                    tally.probes += 1
                    if server.proc.poll() is not None:   # crashed: count it, start another
                        tally.crashes += 1
                        for t in chunk:
                            t.cancel()
                        await fuzzer.close()
                        server = start(tally.crashes)
                        fuzzer = Fuzzer(f"127.0.0.1:{server.port}", rng, tally)
                        break
                    if not await fuzzer.probe():
                        tally.hangs += 1
                    tally.rss.append({"requests": tally.requests, "seconds": round(time.monotonic() - started, 1),
                                      "rss_mb": round(rss_mb(server.proc.pid), 1)})
                for t in chunk:
                    if t.done() and not t.cancelled() and t.exception() is not None:
                        raise t.exception()   # type: ignore[misc]   # a bug of the fuzzer itself
            tally.probes += 1
            if not await fuzzer.probe():
                tally.hangs += 1
            if server.proc.poll() is not None:
                tally.crashes += 1
            tally.rss.append({"requests": tally.requests, "seconds": round(time.monotonic() - started, 1),
                              "rss_mb": round(rss_mb(server.proc.pid), 1)})
        finally:
            await fuzzer.close()
            server.stop()
        seconds = time.monotonic() - started
        log = read_logs(Path(tmp))
    return report(cfg, tally, seconds, log)


def read_logs(directory: Path) -> dict[str, int]:
    """Bytes, lines and ERROR lines the server processes logged."""
    out = {"bytes": 0, "lines": 0, "error_lines": 0, "warning_lines": 0}
    for log in directory.glob("*.log"):
        text = log.read_text(errors="replace")
        out["bytes"] += len(text.encode())
        out["lines"] += text.count("\n")
        out["error_lines"] += sum(1 for line in text.splitlines() if " ERROR " in line)
        out["warning_lines"] += sum(1 for line in text.splitlines() if " WARNING " in line)
    return out


def rss_summary(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Start, peak, end and growth of the server's RSS; ``levels_off`` when the second half of the
    run grew it by under a quarter of the first half's growth (or under 10 MiB)."""
    values = [s["rss_mb"] for s in samples if not math.isnan(s["rss_mb"])]
    if len(values) < 3:
        return {"start_mb": values[0] if values else None, "end_mb": values[-1] if values else None}
    mid = len(values) // 2
    first, second = values[mid] - values[0], values[-1] - values[mid]
    return {"start_mb": values[0], "peak_mb": max(values), "end_mb": values[-1],
            "growth_first_half_mb": round(first, 1), "growth_second_half_mb": round(second, 1),
            "levels_off": second < 10 or second < 0.25 * max(first, 0.0)}


def report(cfg: FuzzConfig, tally: Tally, seconds: float, log: dict[str, int]) -> dict[str, Any]:
    rss = rss_summary(tally.rss)
    return {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": vars(cfg) | {"kinds": KINDS, "probe_every_s": PROBE_EVERY_S},
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                    "grpcio": grpc.__version__, "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "seconds": round(seconds, 1),
        "requests": tally.requests,
        "calls": tally.calls,
        "requests_per_second": round(tally.requests / seconds, 1) if seconds else None,
        "by_kind": dict(tally.by_kind),
        "status_codes": dict(tally.codes.most_common()),   # of the RPCs
        "call_results": dict(tally.result_outcomes.most_common()),   # of the calls they carried
        "crashes": tally.crashes,
        "hangs": tally.hangs,
        "probes": tally.probes,
        "unclear_errors": tally.unclear,
        "unclear_examples": tally.unclear_examples,
        "rss": rss,
        "rss_samples": tally.rss,
        "server_log": {**log, "level": cfg.log_level},
        "goals": {"crashes": tally.crashes == 0, "hangs": tally.hangs == 0, "unclear_errors": tally.unclear == 0,
                  "rss_levels_off": bool(rss.get("levels_off", True))},
    }


def write_section(path: Path, section: str, data: dict[str, Any]) -> None:
    """Write ``data`` as ``path``'s ``section``, keeping the other services' sections."""
    existing: dict[str, Any] = {}
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = {}
    existing[section] = data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(existing, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description="fuzz the tool server; report crashes, hangs, unclear errors, RSS")
    p.add_argument("--requests", type=int, default=100_000, help="requests in all (default 10^5)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 300 requests")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--seed", type=int, default=19)
    p.add_argument("--session-idle-s", type=float, default=30.0, help="the server's RLYARD_TOOLS_SESSION_IDLE_S")
    p.add_argument("--log-level", default="INFO", help="the server's RLYARD_LOG_LEVEL (its log size is reported)")
    p.add_argument("--db-dir", type=Path, default=DEFAULT_DB_DIR)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ns = p.parse_args(argv)
    cfg = FuzzConfig(300 if ns.quick else ns.requests, ns.concurrency, ns.seed, ns.session_idle_s, ns.log_level)
    result = asyncio.run(fuzz(cfg, ns.db_dir))
    write_section(ns.output, "tools", result)
    rss = result["rss"]
    print(f"tools: {result['requests']} requests ({result['calls']} calls) in {result['seconds']} s: "
          f"{result['crashes']} crashes, {result['hangs']} hangs, {result['unclear_errors']} unclear errors; "
          f"RSS {rss.get('start_mb')} -> {rss.get('end_mb')} MiB (peak {rss.get('peak_mb')}, levels off: "
          f"{rss.get('levels_off')}); server log {result['server_log']['bytes']} bytes, "
          f"{result['server_log']['error_lines']} ERROR lines")
    print(f"wrote {ns.output}")
    return result


if __name__ == "__main__":
    main()
