"""How fast can a rollout worker call a tool? ``sql_query`` throughput and
latency per transport, at several numbers of concurrent callers.

Modes (each caller is an asyncio task that calls in a loop):

- ``in_process``: ``ToolExecutor.call`` in this process: the limit;
- ``grpc_unary``: ``ToolClient.call_tool`` (``CallTool``), one channel;
- ``grpc_stream``: one ``CallTools`` stream per caller, one call per message;
- ``grpc_stream_batched``: one shared ``ToolStream(batch=True)``: the calls
  ready in one event-loop tick go out as one message;
- ``http``: FastAPI + uvicorn JSON endpoint (``bench/http_peer.py``) around
  the same executor, one call per ``POST /call``;
- ``http_batched``: the same endpoint, calls ready in one tick posted together
  to ``POST /call_batch`` (the peers' batched style).

The gRPC tool server (``python -m tool_servers``) and the HTTP peer run in
their own processes; by default they are pinned to one CPU and this load
generator to another, so that client and server each have a core, as in a
deployment (``--no-pin`` turns that off). ``in_process`` runs on the load
generator's core, so it has the same one core that a server has.

``python -m bench.tool_call [--duration S] [--concurrency 1,8,32] [--output F]``
writes the JSON (machine, per mode x concurrency numbers, ratios to
``in_process``, goal checks) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from rlyard.client import ToolClient, ToolStream
from tool_servers.app import build_executor
from tool_servers.executor import ToolExecutor
from tool_servers.settings import ToolServerSettings
from tool_servers.sql.settings import SqlSettings

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "bench" / "results" / "tool_call.json"
DEFAULT_DB_DIR = REPO / "data" / "spider" / "database"
DEFAULT_DB_ID = "concert_singer"
# Cheap but realistic: a filtered SELECT that returns 4 short rows.
DEFAULT_QUERY = "SELECT name, country FROM singer WHERE age > 30"
TOOL = "sql_query"

MODES = ("in_process", "grpc_unary", "grpc_stream", "grpc_stream_batched", "http", "http_batched")
LABELS = {
    "in_process": "in-process (limit)",
    "grpc_unary": "gRPC unary",
    "grpc_stream": "gRPC stream per caller",
    "grpc_stream_batched": "gRPC stream batched",
    "http": "HTTP /call",
    "http_batched": "HTTP /call_batch",
}

Call = Callable[[], Awaitable[str]]  # one tool call; returns the result text
CPUS_AT_START = sorted(os.sched_getaffinity(0))  # before the bench pins itself


# ---------------------------------------------------------------- statistics


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) by linear interpolation of sorted values."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class LevelResult:
    """One mode at one concurrency."""

    mode: str
    concurrency: int
    calls: int
    errors: int
    seconds: float
    throughput: float       # calls/s completed in the measured window
    p50_ms: float
    p99_ms: float
    mean_ms: float
    batch_mean: float | None = None  # calls per message/request, batched modes
    client_cpu_us_per_call: float = math.nan  # load generator (in_process: all the work)
    server_cpu_us_per_call: float | None = None
    client_cpu_util: float = math.nan  # cores busy on average
    server_cpu_util: float | None = None


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) used so far by this process
    (``pid=None``) or by another one."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Drive:
    """What one mode at one concurrency did in the measured window."""

    calls: int
    errors: int
    latencies: list[float]
    client_cpu_s: float
    server_cpu_s: float | None


async def drive(callers: list[Call], expected: str, warmup: float, duration: float,
                server_pid: int | None = None) -> Drive:
    """Run every caller in a loop for ``warmup + duration`` seconds; return the
    calls and errors that completed in the measured window, their latencies and
    the CPU time the load generator and the server used in the window."""
    clock = time.perf_counter
    t_measure = clock() + warmup
    t_end = t_measure + duration
    latencies: list[float] = []
    errors = 0
    cpu: dict[str, float] = {}

    async def sample() -> None:
        await asyncio.sleep(max(0.0, t_measure - clock()))
        cpu["client0"], cpu["server0"] = process_cpu_s(None), process_cpu_s(server_pid)
        await asyncio.sleep(max(0.0, t_end - clock()))
        cpu["client1"], cpu["server1"] = process_cpu_s(None), process_cpu_s(server_pid)

    async def loop(call: Call) -> None:
        nonlocal errors
        while True:
            start = clock()
            if start >= t_end:
                return
            text = await call()
            end = clock()
            if t_measure <= end <= t_end:
                latencies.append(end - start)
                if text != expected:
                    errors += 1

    await asyncio.gather(sample(), *(loop(c) for c in callers))
    return Drive(
        len(latencies), errors, latencies, cpu["client1"] - cpu["client0"],
        None if server_pid is None else cpu["server1"] - cpu["server0"],
    )


# ------------------------------------------------------------------- targets


class Target:
    """A transport under test: makes ``n`` callers, and reports batch sizes."""

    async def callers(self, n: int) -> list[Call]:
        raise NotImplementedError

    async def release(self) -> None:
        """Undo ``callers`` (close per-level streams)."""

    async def close(self) -> None:
        """Free the client."""

    def batch_stats(self) -> float | None:
        """Mean calls per message since the last call, for batched targets."""
        return None


class InProcess(Target):
    def __init__(self, executor: ToolExecutor, context: dict[str, str], args: str) -> None:
        self.executor, self.context, self.args = executor, context, args

    async def callers(self, n: int) -> list[Call]:
        executor, context, args = self.executor, self.context, self.args

        async def call() -> str:
            result = await executor.call("", context, "c", TOOL, args)
            return result.first_text

        return [call] * n


class GrpcUnary(Target):
    def __init__(self, address: str, context: dict[str, str], args: str) -> None:
        self.client = ToolClient(address)
        self.context, self.args = context, args

    async def callers(self, n: int) -> list[Call]:
        client, context, args = self.client, self.context, self.args

        async def call() -> str:
            result = await client.call_tool(TOOL, args, context=context)
            return result.first_text

        return [call] * n

    async def close(self) -> None:
        await self.client.close()


class GrpcStream(Target):
    """``batch=False``: a stream per caller; ``batch=True``: one shared stream."""

    def __init__(self, address: str, context: dict[str, str], args: str, *, batch: bool) -> None:
        self.client = ToolClient(address)
        self.context, self.args, self.batch = context, args, batch
        self.streams: list[ToolStream] = []
        self._messages = 0
        self._calls = 0

    def _count(self, stream: ToolStream) -> None:
        # count the messages a stream writes, to report the batch size (a private
        # hook: without it the bench still runs, without the batch size)
        original = getattr(stream, "_send", None)
        if original is None:
            return

        async def send(calls: list[Any]) -> None:
            self._messages += 1
            self._calls += len(calls)
            await original(calls)

        stream._send = send  # type: ignore[method-assign]

    async def callers(self, n: int) -> list[Call]:
        self.streams = [self.client.stream(batch=True)] if self.batch else [
            self.client.stream(batch=False) for _ in range(n)
        ]
        if self.batch:
            self._count(self.streams[0])
        context, args = self.context, self.args

        def make(stream: ToolStream) -> Call:
            async def call() -> str:
                result = await stream.call(TOOL, args, context=context)
                return result.first_text

            return call

        return [make(self.streams[0 if self.batch else i]) for i in range(n)]

    async def release(self) -> None:
        await asyncio.gather(*(s.close() for s in self.streams))
        self.streams = []

    async def close(self) -> None:
        await self.client.close()

    def batch_stats(self) -> float | None:
        if not self.batch or not self._messages:
            return None
        mean = self._calls / self._messages
        self._messages = self._calls = 0
        return mean


class Http(Target):
    """The FastAPI peer through ``httpx``, per call or batched per tick.

    Per call, every caller has its own ``AsyncClient`` (one keep-alive
    connection each): one client shared by 32 callers spends ~3.5 ms of CPU
    per request in httpx's connection pool, which would measure httpx rather
    than HTTP. Batched, one client posts the gathered calls.
    """

    def __init__(self, base_url: str, context: dict[str, str], args: str, *, batch: bool) -> None:
        import httpx

        self.httpx = httpx
        self.base_url, self.context, self.args, self.batch = base_url, context, args, batch
        self.client: Any = None
        self.clients: list[Any] = []
        self._outbox: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
        self._scheduled = False
        self._ids = 0
        self._posts = 0
        self._calls = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def _body(self) -> dict[str, Any]:
        self._ids += 1
        return {"name": TOOL, "arguments_json": self.args, "context": self.context,
                "call_id": f"h{self._ids}"}

    async def callers(self, n: int) -> list[Call]:
        await self.release()
        if self.batch:
            self.client = self.httpx.AsyncClient(base_url=self.base_url, timeout=30.0)
            self.clients = [self.client]
        else:
            self.clients = [self.httpx.AsyncClient(base_url=self.base_url, timeout=30.0) for _ in range(n)]

        def single(client: Any) -> Call:
            async def call() -> str:
                resp = await client.post("/call", json=self._body())
                resp.raise_for_status()
                return str(resp.json()["content"][0])

            return call

        async def batched() -> str:
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._outbox.append((self._body(), fut))
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
            return str((await fut)["content"][0])

        return [batched] * n if self.batch else [single(c) for c in self.clients]

    def _flush(self) -> None:
        self._scheduled = False
        items, self._outbox = self._outbox, []
        if items:
            task = asyncio.get_running_loop().create_task(self._post(items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _post(self, items: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]]) -> None:
        self._posts += 1
        self._calls += len(items)
        try:
            resp = await self.client.post("/call_batch", json={"calls": [body for body, _ in items]})
            resp.raise_for_status()
            results = resp.json()["results"]
        except Exception as exc:
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(items, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    async def release(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients))
        self.clients, self.client = [], None

    def batch_stats(self) -> float | None:
        if not self.batch or not self._posts:
            return None
        mean = self._calls / self._posts
        self._posts = self._calls = 0
        return mean


# ------------------------------------------------------------------- servers


@dataclass
class ServerProcess:
    """A server started in its own process, with the port it reported."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_process(name: str, argv: list[str], env: dict[str, str], ready: Path, log: Path,
                  timeout: float = 60.0) -> ServerProcess:
    """Start ``argv`` and wait until it writes ``{"port": ...}`` to ``ready``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{name} did not start; its output:\n{log.read_text()[-4000:]}")
        time.sleep(0.02)
    return ServerProcess(name, proc, int(json.loads(ready.read_text())["port"]), log)


def server_env(db_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "RLYARD_HOST": "127.0.0.1",
        "RLYARD_PORT": "0",
        "RLYARD_LOG_LEVEL": "WARNING",
        "RLYARD_TOOLS_TOOLS": TOOL,
        "RLYARD_TOOLS_SQL_DB_DIR": str(db_dir.resolve()),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
    })
    return env


def pin_process(cpu: int) -> None:
    """Pin every thread of this process (and what it starts later) to ``cpu``."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(int(tid), {cpu})


@contextlib.contextmanager
def servers(db_dir: Path, need_grpc: bool, need_http: bool, pin: tuple[int, int] | None
            ) -> Iterator[dict[str, ServerProcess]]:
    """The gRPC tool server and the HTTP peer, each in its own process."""
    started: dict[str, ServerProcess] = {}
    if pin is not None:  # children inherit the affinity they are forked with
        pin_process(pin[1])
    try:
        with tempfile.TemporaryDirectory(prefix="rlyard-bench-") as tmp:
            env = server_env(db_dir)
            if need_grpc:
                ready = Path(tmp) / "grpc.ready"
                started["grpc"] = start_process(
                    "gRPC tool server", [sys.executable, "-m", "tool_servers"],
                    {**env, "RLYARD_READY_FILE": str(ready)}, ready, Path(tmp) / "grpc.log",
                )
            if need_http:
                ready = Path(tmp) / "http.ready"
                started["http"] = start_process(
                    "HTTP peer", [sys.executable, "-m", "bench.http_peer", "--ready-file", str(ready)],
                    env, ready, Path(tmp) / "http.log",
                )
            if pin is not None:
                pin_process(pin[0])
            yield started
    finally:
        for server in started.values():
            server.stop()


# ---------------------------------------------------------------- the bench


@dataclass
class BenchConfig:
    duration: float
    warmup: float
    concurrency: list[int]
    modes: list[str]
    db_id: str
    query: str
    db_dir: str
    pin: list[int] | None = None
    notes: list[str] = field(default_factory=list)


def machine_info() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(CPUS_AT_START),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "grpcio": grpc.__version__,
        "protobuf": version("protobuf"),
        "fastapi": version("fastapi"),
        "uvicorn": version("uvicorn"),
        "httpx": version("httpx"),
        "event_loop": "asyncio (no uvloop)",
        # this bench alone keeps ~1-2 runnable; much more means something else shared the CPUs
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
    }


async def run_bench(cfg: BenchConfig, console: Console) -> dict[str, Any]:
    loadavg_start = round(os.getloadavg()[0], 2)
    ctx = {"db_id": cfg.db_id}
    args = json.dumps({"query": cfg.query})
    pin = (cfg.pin[0], cfg.pin[1]) if cfg.pin else None
    need_grpc = any(m.startswith("grpc") for m in cfg.modes)
    need_http = any(m.startswith("http") for m in cfg.modes)
    results: list[LevelResult] = []
    per_level = cfg.warmup + cfg.duration
    with servers(Path(cfg.db_dir), need_grpc, need_http, pin) as procs:
        # built after pinning, so that the executor's threads share the one CPU
        # the same settings (from the same environment) as the servers
        env = server_env(Path(cfg.db_dir))
        settings = ToolServerSettings.from_env("RLYARD_TOOLS", env)
        executor, tool_ctx = build_executor(settings, [SqlSettings.from_env(SqlSettings.ENV_PREFIX, env)])
        checked = await executor.call("", ctx, "check", TOOL, args)
        if checked.is_error:
            raise RuntimeError(f"the bench query fails: {checked.text}")
        expected: str = checked.first_text
        grpc_addr = f"127.0.0.1:{procs['grpc'].port}" if need_grpc else ""
        http_url = f"http://127.0.0.1:{procs['http'].port}" if need_http else ""
        factories: dict[str, Callable[[], Target]] = {
            "in_process": lambda: InProcess(executor, ctx, args),
            "grpc_unary": lambda: GrpcUnary(grpc_addr, ctx, args),
            "grpc_stream": lambda: GrpcStream(grpc_addr, ctx, args, batch=False),
            "grpc_stream_batched": lambda: GrpcStream(grpc_addr, ctx, args, batch=True),
            "http": lambda: Http(http_url, ctx, args, batch=False),
            "http_batched": lambda: Http(http_url, ctx, args, batch=True),
        }
        progress = Progress(
            TextColumn("[bold]{task.description:<34}"), BarColumn(), TextColumn("{task.completed:>5.1f}s"),
            TimeRemainingColumn(), console=console, auto_refresh=False,  # no render thread while measuring
        )
        with progress:
            total = progress.add_task("", total=per_level * len(cfg.modes) * len(cfg.concurrency))
            for mode in cfg.modes:
                target = factories[mode]()
                try:
                    for n in cfg.concurrency:
                        progress.update(total, description=f"{LABELS[mode]} x{n}")
                        progress.refresh()
                        callers = await target.callers(n)
                        target.batch_stats()  # reset counters
                        gc.collect()
                        server = procs.get(mode.split("_")[0])
                        d = await drive(callers, expected, cfg.warmup, cfg.duration,
                                        server.proc.pid if server else None)
                        await target.release()
                        lat = sorted(d.latencies)
                        per_call = 1e6 / max(d.calls, 1)
                        results.append(LevelResult(
                            mode, n, d.calls, d.errors, cfg.duration, d.calls / cfg.duration,
                            percentile(lat, 0.5) * 1e3, percentile(lat, 0.99) * 1e3,
                            (sum(lat) / len(lat) * 1e3) if lat else math.nan, target.batch_stats(),
                            d.client_cpu_s * per_call,
                            None if d.server_cpu_s is None else d.server_cpu_s * per_call,
                            d.client_cpu_s / cfg.duration,
                            None if d.server_cpu_s is None else d.server_cpu_s / cfg.duration,
                        ))
                        progress.advance(total, per_level)
                        progress.refresh()
                finally:
                    await target.close()
        tool_ctx.close()
    return summarize(cfg, results, loadavg_start)


def _level(results: list[LevelResult], mode: str, n: int) -> LevelResult | None:
    return next((r for r in results if r.mode == mode and r.concurrency == n), None)


def summarize(cfg: BenchConfig, results: list[LevelResult], loadavg_start: float = math.nan) -> dict[str, Any]:
    """Results, ratios to in-process and the goal checks, as JSON-ready data."""
    by_mode: dict[str, dict[str, Any]] = {}
    ratios: dict[str, dict[str, Any]] = {}
    for r in results:
        by_mode.setdefault(r.mode, {})[str(r.concurrency)] = {
            k: (round(v, 4) if isinstance(v, float) else v)
            for k, v in asdict(r).items() if k not in ("mode", "concurrency")
        }
        base = _level(results, "in_process", r.concurrency)
        if base is None or r.mode == "in_process" or not r.throughput or not base.throughput:
            continue
        ratios.setdefault(r.mode, {})[str(r.concurrency)] = {
            "throughput_vs_in_process": round(r.throughput / base.throughput, 4),
            "p50_overhead_ms": round(r.p50_ms - base.p50_ms, 4),
            # extra time per call on the critical resource, from throughput
            "extra_us_per_call": round(1e6 / r.throughput - 1e6 / base.throughput, 1),
        }
        if r.server_cpu_us_per_call and math.isfinite(base.client_cpu_us_per_call):
            # what the throughput ratio is when both sides are CPU-bound on one core each; it holds
            # when another job takes CPU time from the two sides unevenly (a shared VM)
            ratios[r.mode][str(r.concurrency)]["cpu_per_call_vs_in_process"] = round(
                base.client_cpu_us_per_call / r.server_cpu_us_per_call, 4)

    lo, hi = min(cfg.concurrency), max(cfg.concurrency)
    goals: list[dict[str, Any]] = []

    def goal(name: str, target: str, measured: dict[str, Any], ok: bool | None) -> None:
        goals.append({"goal": name, "target": target, "measured": measured,
                      "pass": ok, "status": "n/a" if ok is None else ("pass" if ok else "FAIL")})

    inp_hi, bat_hi = _level(results, "in_process", hi), _level(results, "grpc_stream_batched", hi)
    http_hi = _level(results, "http_batched", hi)
    if inp_hi and bat_hi:
        ratio = bat_hi.throughput / inp_hi.throughput
        goal(f"batched stream throughput at {hi} caller(s)", ">= 0.85 x in-process",
             {"concurrency": hi, "ratio": round(ratio, 3), "batched_stream": round(bat_hi.throughput, 1),
              "in_process": round(inp_hi.throughput, 1),
              "cpu_per_call_ratio": ratios["grpc_stream_batched"][str(hi)].get("cpu_per_call_vs_in_process")},
             ratio >= 0.85)
    else:
        goal(f"batched stream throughput at {hi} caller(s)", ">= 0.85 x in-process", {}, None)
    if bat_hi and http_hi:
        goal(f"batched stream beats batched HTTP at {hi} caller(s)", "> http_batched",
             {"concurrency": hi, "batched_stream": round(bat_hi.throughput, 1),
              "http_batched": round(http_hi.throughput, 1),
              "ratio": round(bat_hi.throughput / http_hi.throughput, 3)},
             bat_hi.throughput > http_hi.throughput)
    else:
        goal(f"batched stream beats batched HTTP at {hi} caller(s)", "> http_batched", {}, None)
    inp_lo, st_lo = _level(results, "in_process", lo), _level(results, "grpc_stream", lo)
    if inp_lo and st_lo:
        over = st_lo.p50_ms - inp_lo.p50_ms
        goal(f"per-call stream p50 overhead at {lo} caller(s)", "<= 0.4 ms over in-process",
             {"concurrency": lo, "overhead_ms": round(over, 4), "grpc_stream_p50_ms": round(st_lo.p50_ms, 4),
              "in_process_p50_ms": round(inp_lo.p50_ms, 4)}, over <= 0.4)
    else:
        goal(f"per-call stream p50 overhead at {lo} caller(s)", "<= 0.4 ms over in-process", {}, None)

    return {
        "bench": "tool_call",
        "loadavg_1m_at_start": loadavg_start,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": asdict(cfg),
        "machine": machine_info(),
        "results": by_mode,
        "ratios": ratios,
        "goals": goals,
    }


def print_report(report: dict[str, Any], console: Console) -> None:
    levels = report["config"]["concurrency"]
    table = Table(title="sql_query per transport: calls/s, latency ms, CPU µs per call (cores busy)")
    table.add_column("mode")
    table.add_column("callers", justify="right")
    for col in ("calls/s", "x in-proc", "p50", "p99", "p50 +ms", "µs/call +", "batch",
                "cli CPU µs/call", "srv CPU µs/call"):
        table.add_column(col, justify="right")
    for mode in report["config"]["modes"]:
        for n in levels:
            r = report["results"].get(mode, {}).get(str(n))
            if r is None:
                continue
            ratio = report["ratios"].get(mode, {}).get(str(n), {})
            table.add_row(
                LABELS[mode], str(n), f"{r['throughput']:.0f}",
                f"{ratio['throughput_vs_in_process']:.2f}" if ratio else "1.00",
                f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
                f"{ratio['p50_overhead_ms']:+.3f}" if ratio else "",
                f"{ratio['extra_us_per_call']:+.0f}" if ratio else "",
                f"{r['batch_mean']:.1f}" if r.get("batch_mean") else "",
                f"{r['client_cpu_us_per_call']:.0f} ({r['client_cpu_util']:.2f})",
                "" if r["server_cpu_us_per_call"] is None
                else f"{r['server_cpu_us_per_call']:.0f} ({r['server_cpu_util']:.2f})",
                end_section=n == levels[-1],
            )
    console.print(table)
    for g in report["goals"]:
        style = {"pass": "green", "FAIL": "red"}.get(g["status"], "yellow")
        console.print(f"[{style}]{g['status']:>4}[/] {g['goal']}: {g['target']}  measured {g['measured']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="sql_query throughput/latency per transport")
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per mode and level")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds before measuring, per mode and level (default: min(1, duration))")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated numbers of callers")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--db-dir", type=Path, default=DEFAULT_DB_DIR)
    p.add_argument("--db-id", default=DEFAULT_DB_ID)
    p.add_argument("--query", default=DEFAULT_QUERY)
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the servers and the load generator to separate CPUs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ns = parse_args(argv)
    modes = [m.strip() for m in ns.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; known: {', '.join(MODES)}")
    if "in_process" not in modes:
        modes.insert(0, "in_process")  # the ratios need it
    levels = sorted({int(x) for x in ns.concurrency.split(",") if x.strip()})
    if not levels or levels[0] < 1:
        raise SystemExit("--concurrency needs positive integers, e.g. 1,8,32")
    cpus = CPUS_AT_START
    pin = None if ns.no_pin or len(cpus) < 2 else [cpus[0], cpus[1]]
    cfg = BenchConfig(
        duration=ns.duration,
        warmup=min(1.0, ns.duration) if ns.warmup is None else ns.warmup,
        concurrency=levels, modes=modes, db_id=ns.db_id, query=ns.query,
        db_dir=str(ns.db_dir), pin=pin,
    )
    if pin:
        cfg.notes.append(f"load generator and in_process on CPU {pin[0]}; servers on CPU {pin[1]}")
    console = Console(width=None if sys.stdout.isatty() else 150)
    report = asyncio.run(run_bench(cfg, console))
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report, console)
    console.print(f"wrote {ns.output}")
    return report


if __name__ == "__main__":
    main()
