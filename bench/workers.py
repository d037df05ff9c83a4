"""Celery rollout workers on the latency-bound workload of ``bench/rollout.py``: how many
trajectories per second with 1 and 2 workers, what a worker round trip costs against the
in-process engine, and whether a worker killed mid-run loses a group.

The workload: groups of ``--group-size`` samples of one task, each trajectory 3 ``wait`` tool
calls (lognormal latency, median 50 ms, p99 1 s; ``bench/latency_tool.py``) with the tiny random
policy driven by ``ForcedToolSampler`` (``bench/rollout.py``: real sampled tokens, then a forced
call). Everything runs on this machine: a throwaway ``redis-server``, the ``wait`` tool server
(``python -m bench.latency_tool_server``) and each worker (``rlyard worker --include bench.workers``,
which registers the ``forced-tool`` sampler kind) in its own process.

1. ``in_process``: ``RolloutEngine.run`` on every group at once in this process (the peer).
2. ``workers_1`` / ``workers_2``: the same groups submitted to 1 and 2 workers
   (``--concurrency`` groups at once each), trajectories/s from the first submit to the last result.
3. ``round_trip``: ``--round-trips`` groups one after the other with the tool's latency at 0,
   each in-process then through one worker (alternating): the median difference is what a worker
   round trip costs; the worker's own rollout time splits it into queue + transport and the rest.
4. ``kill``: the groups submitted to 2 workers; once one worker is running groups it is SIGKILLed
   (its process group); its groups are redelivered after the visibility timeout and redone by the
   other. Lost = submitted − finished ok; the bar is 0.

``python -m bench.workers [--groups 16] [--group-size 4] [--concurrency 4] [--output F]`` writes
``bench/results/workers.json`` (about 2-3 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from bench.latency_tool import MEDIAN_S, P99_S
from bench.rollout import ForcedToolSampler, make_tasks, rollout_config, tool_server
from rlyard.client import ToolClient
from rlyard.domain import Task, TrajectoryStatus
from rlyard.tls import ClientSettings
from trainer.config import RolloutConfig
from trainer.model import init_policy
from trainer.policy.hf import HFPolicy
from trainer.rollout import RolloutEngine
from trainer.sampler import LocalSampler
from trainer.workers.samplers import BuiltSampler, register_sampler
from trainer.workers.settings import WorkerSettings
from trainer.workers.source import FinishedGroup, WorkerRollouts
from trainer.workers.wire import GroupJob

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "bench" / "results" / "workers.json"
TURNS = 3
_RECEIVED = re.compile(r"rlyard\.rollout_group\[([^\]]+)\] received")


# ---------------------------------------------------------------- the sampler kind of the workers


async def forced_tool_sampler(spec: dict[str, Any], settings: WorkerSettings | None = None,
                              client: ClientSettings | None = None) -> BuiltSampler:
    """``{"kind": "forced-tool", "path": checkpoint, "turns": 3, "think_tokens": 16, "version": 0}``:
    ``ForcedToolSampler`` over the checkpoint, behind a ``LocalSampler``."""
    policy = await asyncio.to_thread(HFPolicy, str(spec["path"]))
    policy.model.eval()
    sampler = LocalSampler(ForcedToolSampler(policy, turns=int(spec.get("turns", TURNS)),
                                             think_tokens=int(spec.get("think_tokens", 16))))
    await sampler.sync_weights(policy.model, int(spec.get("version", 0)))
    return BuiltSampler(sampler, policy.tokenizer)


register_sampler("forced-tool", forced_tool_sampler)


# ---------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(workdir: Path, attempts: int = 5) -> Iterator[str]:
    """A throwaway ``redis-server`` on 127.0.0.1 (no persistence) in ``workdir``; yields its URL.
    redis cannot report a port it picked, so a free one is chosen and tried again if taken."""
    workdir.mkdir(parents=True, exist_ok=True)
    last = ""
    for _ in range(attempts):
        port = _free_port()
        log = workdir / f"redis-{port}.log"
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(workdir), "--logfile", str(log)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
            time.sleep(0.02)
        if proc.poll() is None and time.monotonic() < deadline:
            try:
                yield f"redis://127.0.0.1:{port}/0"
            finally:
                proc.kill()
                proc.wait(10)
            return
        proc.kill()
        proc.wait(10)
        last = log.read_text() if log.exists() else (proc.stderr.read().decode() if proc.stderr else "")
    raise RuntimeError(f"redis-server did not start in {attempts} attempts: {last[-1000:]}")


class WorkerProcess:
    """``rlyard worker`` in its own process group (so SIGKILL takes the whole worker down)."""

    def __init__(self, broker: str, workdir: Path, name: str, *, concurrency: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.ready = workdir / f"{name}.ready"
        self.log_path = workdir / f"{name}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("RLYARD")}
        full_env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rlyard_app.cli.main", "worker", "--broker", broker, "--concurrency",
                 str(concurrency), "--include", "bench.workers", "--name", name, "--ready-file", str(self.ready)],
                cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def node(self) -> str:
        """The node name Celery gives it (what ``FinishedGroup.worker`` says)."""
        return self.name if "@" in self.name else f"celery@{self.name}"

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the worker consumes its queue."""
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited ({self.proc.returncode}): {self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} not ready in {timeout:.0f} s: {self.log()[-3000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (a machine that died)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM: a warm shutdown, which finishes the running groups)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def close(self) -> None:
        """Stop it: SIGTERM, then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def workers(broker: str, workdir: Path, names: list[str], *, concurrency: int,
            env: dict[str, str] | None = None) -> Iterator[list[WorkerProcess]]:
    """Start the named workers, wait until all consume, stop them at exit."""
    started = [WorkerProcess(broker, workdir, n, concurrency=concurrency, env=env) for n in names]
    try:
        for w in started:
            w.wait_ready()
        yield started
    finally:
        for w in started:
            w.terminate()
        for w in started:
            w.close()


# ---------------------------------------------------------------- the runs


def group_jobs(tasks: list[Task], cfg: RolloutConfig, sampler: dict[str, Any], tools: str, group_size: int,
               prefix: str) -> list[GroupJob]:
    """One job per task."""
    return [GroupJob(key=f"{prefix}/g{i}", task=task, group_size=group_size, rollout=cfg, sampler=sampler,
                     tools=tools, group_id=i, tool_timeout_s=60.0) for i, task in enumerate(tasks)]


def check_groups(groups: list[FinishedGroup], group_size: int, what: str) -> None:
    """Every group finished ok with every trajectory through all its tool turns."""
    bad = [(g.key, g.outcome, g.error) for g in groups if not g.kept]
    bad += [(g.key, t.status.value, t.infra_error) for g in groups for t in g.trajectories
            if t.status is not TrajectoryStatus.COMPLETED or t.num_tool_calls != TURNS]
    bad += [(g.key, "size", str(len(g.trajectories))) for g in groups if g.kept and len(g.trajectories) != group_size]
    if bad:
        raise RuntimeError(f"{what}: {len(bad)} groups or trajectories did not run every turn: {bad[:3]}")


def run_workers(source: WorkerRollouts, jobs: list[GroupJob], group_size: int, what: str) -> dict[str, Any]:
    """Submit every job, wait for all; trajectories/s over the whole run."""
    before = dict(source.counts)
    start = time.perf_counter()
    for job in jobs:
        source.submit(job)
    groups = source.wait(0, timeout=600)
    wall = time.perf_counter() - start
    check_groups(groups, group_size, what)
    by_worker: dict[str, int] = {}
    for g in groups:
        by_worker[g.worker] = by_worker.get(g.worker, 0) + 1
    n = sum(len(g.trajectories) for g in groups)
    return {"mode": what, "groups": len(groups), "trajectories": n, "wall_s": round(wall, 4),
            "trajectories_per_s": round(n / wall, 3), "groups_by_worker": by_worker,
            "redone": source.counts["redone"] - before.get("redone", 0)}


async def in_process(policy_dir: Path, address: str, tasks: list[Task], cfg: RolloutConfig, group_size: int,
                     *, one_at_a_time: bool) -> list[float]:
    """Every group through ``RolloutEngine`` in this process: all at once (one wall time) or one
    after the other (each group's time)."""
    built = await forced_tool_sampler({"path": str(policy_dir)})
    client = ToolClient(address, timeout=60.0)
    engine = RolloutEngine(built.sampler, built.tokenizer, client, cfg, tool_timeout_s=60.0)
    times: list[float] = []
    try:
        await client.list_tools(timeout=10.0)
        batches = [[t] for t in tasks] if one_at_a_time else [tasks]
        for batch in batches:
            start = time.perf_counter()
            trajs = await engine.run(batch, group_size=group_size)
            times.append(time.perf_counter() - start)
            bad = [t for t in trajs if t.status is not TrajectoryStatus.COMPLETED or t.num_tool_calls != TURNS]
            if bad:
                raise RuntimeError(f"in-process: {len(bad)} trajectories did not run every turn: {bad[0].infra_error}")
    finally:
        await engine.aclose()
        await built.sampler.aclose()
        await client.close()
    return times


def round_trips(source: WorkerRollouts, jobs: list[GroupJob], group_size: int) -> tuple[list[float], list[float]]:
    """Each job alone through the workers: its time from submit to result, and the time the
    worker spent rolling it out (the rest is queueing, transport and (de)serialisation)."""
    times, rollouts = [], []
    for job in jobs:
        start = time.perf_counter()
        source.submit(job)
        groups = source.wait(0, timeout=120)
        times.append(time.perf_counter() - start)
        check_groups(groups, group_size, "round trip")
        rollouts.append(groups[0].rollout_s)
    return times, rollouts


def kill_run(source: WorkerRollouts, jobs: list[GroupJob], victim: WorkerProcess, group_size: int) -> dict[str, Any]:
    """Submit every job to 2 workers, SIGKILL ``victim`` once it runs groups; nothing may be lost."""
    start = time.perf_counter()
    for job in jobs:
        source.submit(job)
    killed_at = None
    at_kill: list[str] = []
    groups: list[FinishedGroup] = []
    deadline = time.monotonic() + 600
    while source.pending and time.monotonic() < deadline:
        if killed_at is None:
            # mid-run: the victim has finished a group and is running others (or 60 s have passed)
            finished = {g.key for g in groups}
            running = set(_RECEIVED.findall(victim.log())) - finished
            done_by_victim = any(g.worker == victim.node for g in groups)
            if running and (done_by_victim or time.perf_counter() - start > 60):
                victim.kill()
                killed_at = time.perf_counter() - start
                at_kill = sorted(running)
        groups += source.poll(0)
        time.sleep(0.02)
    wall = time.perf_counter() - start
    ok = [g for g in groups if g.kept]
    check_groups(ok, group_size, "kill run")
    return {"mode": "kill", "groups_submitted": len(jobs), "groups_ok": len(ok),
            "groups_lost": len(jobs) - len(ok), "redone": sum(1 for g in groups if g.attempt > 1),
            "killed_at_s": None if killed_at is None else round(killed_at, 3), "running_on_victim": at_kill,
            "wall_s": round(wall, 3),
            "outcomes": {o: sum(1 for g in groups if g.outcome == o) for o in ("ok", "stale", "failed", "timed_out")},
            "pending_at_end": source.pending}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4, help="groups one worker runs at once")
    parser.add_argument("--round-trips", type=int, default=6)
    parser.add_argument("--think-tokens", type=int, default=16)
    parser.add_argument("--visibility-timeout", type=float, default=30.0,
                        help="seconds before a dead worker's groups are handed out again")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ns = parser.parse_args(argv)
    if ns.groups < 2 or ns.group_size < 1 or ns.concurrency < 1 or ns.round_trips < 1:
        parser.error("--groups >= 2, --group-size, --concurrency and --round-trips >= 1")
    console = Console()
    torch.manual_seed(ns.seed)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rlyard-bench-workers-") as tmp_name:
        tmp = Path(tmp_name)
        info = init_policy(tmp / "policy", seed=ns.seed)
        policy_dir = tmp / "policy"
        spec = {"kind": "forced-tool", "path": str(policy_dir), "turns": TURNS, "think_tokens": ns.think_tokens}
        tasks = make_tasks(ns.groups, ns.seed, 1.0)
        instant = make_tasks(ns.round_trips, ns.seed, 0.0)
        cfg = rollout_config(ns.groups * ns.group_size, TURNS, ns.think_tokens)
        env = {"RLYARD_WORKERS_VISIBILITY_TIMEOUT_S": str(ns.visibility_timeout),
               "RLYARD_WORKERS_RESTORE_INTERVAL_S": "1"}
        with tool_server(tmp) as address, redis_server(tmp / "redis") as broker:
            settings = WorkerSettings(broker_url=broker, visibility_timeout_s=ns.visibility_timeout,
                                      restore_interval_s=1.0)
            source = WorkerRollouts(settings, max_staleness=0, group_timeout_s=300)
            try:
                console.print(f"in-process engine: {ns.groups} groups × {ns.group_size} at once…")
                asyncio.run(in_process(policy_dir, address, tasks[:2], cfg, ns.group_size, one_at_a_time=False))
                wall = asyncio.run(in_process(policy_dir, address, tasks, cfg, ns.group_size, one_at_a_time=False))[0]
                n = ns.groups * ns.group_size
                results.append({"mode": "in_process", "groups": ns.groups, "trajectories": n, "wall_s": round(wall, 4),
                                "trajectories_per_s": round(n / wall, 3)})
                with workers(broker, tmp, ["w1"], concurrency=ns.concurrency, env=env):
                    console.print("1 worker: round trips, alternating with the same groups in-process…")
                    round_trips(source, group_jobs(instant[:2], cfg, spec, address, ns.group_size, "warm"),
                                ns.group_size)
                    # alternate in-process and worker groups, so that a change in the machine's
                    # load between the two series does not pass for overhead
                    local_rt, worker_rt, worker_rollout = [], [], []
                    for job in group_jobs(instant, cfg, spec, address, ns.group_size, "rt"):
                        local_rt += asyncio.run(in_process(policy_dir, address, [job.task], cfg, ns.group_size,
                                                           one_at_a_time=True))
                        times, rollouts = round_trips(source, [job], ns.group_size)
                        worker_rt += times
                        worker_rollout += rollouts
                    console.print("1 worker: every group at once…")
                    results.append(run_workers(source, group_jobs(tasks, cfg, spec, address, ns.group_size, "one"),
                                               ns.group_size, "workers_1"))
                    with workers(broker, tmp, ["w2"], concurrency=ns.concurrency, env=env):
                        console.print("2 workers…")
                        round_trips(source, group_jobs(instant[:4], cfg, spec, address, ns.group_size, "warm2"),
                                    ns.group_size)
                        results.append(run_workers(source, group_jobs(tasks, cfg, spec, address, ns.group_size,
                                                                      "two"), ns.group_size, "workers_2"))
                with workers(broker, tmp, ["k1", "k2"], concurrency=ns.concurrency, env=env) as (k1, _k2):
                    console.print("2 workers, one SIGKILLed mid-run…")
                    kill = kill_run(source, group_jobs(tasks, cfg, spec, address, ns.group_size, "kill"), k1,
                                    ns.group_size)
                counts = dict(source.counts)
            finally:
                source.close()

    by_mode = {r["mode"]: r for r in results}
    scaling = by_mode["workers_2"]["trajectories_per_s"] / by_mode["workers_1"]["trajectories_per_s"]
    overhead_ms = (statistics.median(worker_rt) - statistics.median(local_rt)) * 1000
    transport_ms = statistics.median(t - r for t, r in zip(worker_rt, worker_rollout, strict=True)) * 1000
    table = Table("mode", "groups", "trajectories", "wall s", "traj/s", "groups by worker")
    for r in results:
        table.add_row(r["mode"], str(r["groups"]), str(r["trajectories"]), f"{r['wall_s']:.2f}",
                      f"{r['trajectories_per_s']:.2f}", json.dumps(r.get("groups_by_worker", {})))
    console.print(table)
    worker_ms, local_ms = statistics.median(worker_rt) * 1000, statistics.median(local_rt) * 1000
    console.print(f"2 workers / 1 worker: {scaling:.2f}×; worker round trip {worker_ms:.0f} ms vs in-process "
                  f"{local_ms:.0f} ms per group (overhead {overhead_ms:.0f} ms, of which queue + transport "
                  f"{transport_ms:.0f} ms)")
    verdict = "[green]pass[/]" if kill["groups_lost"] == 0 else "[red]FAIL[/]"
    console.print(f"kill run: {kill['groups_ok']} of {kill['groups_submitted']} groups ok, {kill['redone']} redone, "
                  f"{kill['groups_lost']} lost {verdict}")
    report = {
        "benchmark": "workers",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": metadata.version("torch"),
                    "celery": metadata.version("celery"), "redis_py": metadata.version("redis"),
                    "redis_server": subprocess.run(["redis-server", "--version"], capture_output=True,
                                                   text=True).stdout.strip(),
                    "platform": platform.platform(), "loadavg_1m": round(os.getloadavg()[0], 2)},
        "params": {"groups": ns.groups, "group_size": ns.group_size, "concurrency_per_worker": ns.concurrency,
                   "turns": TURNS, "think_tokens": ns.think_tokens, "round_trips": ns.round_trips,
                   "visibility_timeout_s": ns.visibility_timeout, "seed": ns.seed},
        "policy": {"n_params": info.n_params, "sampler": "forced-tool (bench/rollout.py ForcedToolSampler)"},
        "tool": {"name": "wait", "distribution": "lognormal", "median_ms": MEDIAN_S * 1000, "p99_ms": P99_S * 1000},
        "results": results,
        "scaling_2_over_1": round(scaling, 3),
        "round_trip": {"latency_scale": 0.0, "groups": ns.round_trips,
                       "in_process_ms_median": round(statistics.median(local_rt) * 1000, 2),
                       "worker_ms_median": round(statistics.median(worker_rt) * 1000, 2),
                       "overhead_ms_median": round(overhead_ms, 2),
                       "worker_rollout_ms_median": round(statistics.median(worker_rollout) * 1000, 2),
                       "queue_transport_ms_median": round(transport_ms, 2),
                       "in_process_ms": [round(t * 1000, 2) for t in local_rt],
                       "worker_ms": [round(t * 1000, 2) for t in worker_rt],
                       "worker_rollout_ms": [round(t * 1000, 2) for t in worker_rollout]},
        "kill": kill,
        "source_counts": counts,
        "goal": "a worker killed during the run loses 0 groups",
        "pass": kill["groups_lost"] == 0 and kill["killed_at_s"] is not None,
    }
    if ns.output.exists():   # the pipelined runs' entry (bench/workers_pipeline.py) is kept
        earlier = json.loads(ns.output.read_text())
        if "pipeline" in earlier:
            report["pipeline"] = earlier["pipeline"]
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {ns.output}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
