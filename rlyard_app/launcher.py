"""The embedded launcher behind ``rlyard up``: every service of a profile as a
local process on loopback.

Each child runs ``python -m rlyard_app.cli.main serve <kind>`` with the service's
environment from the service table. The launcher waits for each child's ready
file and for its health check to say SERVING, reports where each listens,
watches them, and stops them all (SIGTERM, then SIGKILL after a grace period)
on Ctrl-C or when one dies. Children set PR_SET_PDEATHSIG themselves when they
start (``RLYARD_PARENT_PID``), so a launcher killed with SIGKILL leaves no orphans.
No Python runs between fork and exec: gRPC's fork handlers in a child forked from
this gRPC-using process could abort it before exec (its poller thread restarted,
then its epoll fd closed by close_fds).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rlyard.errors import ConfigError
from rlyard.tls import ClientTLS
from rlyard_app.services import ROOT, ServiceSpec

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a started service: get SIGTERM when the launcher named by ``RLYARD_PARENT_PID`` dies
    (Linux). A launcher already gone before this ran means SIGTERM now."""
    parent = os.environ.get("RLYARD_PARENT_PID", "")
    if not parent.isdigit():
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the launcher's own cleanup still applies
        return
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Endpoint:
    """Where a started service listens."""

    name: str
    kind: str
    host: str
    port: int
    metrics_port: int | None
    pid: int
    log_file: Path

    @property
    def target(self) -> str:
        """host:port for gRPC clients."""
        return f"{self.host}:{self.port}"


class ServiceStartError(RuntimeError):
    """A service did not come up; the message carries the tail of its log."""


def check_health(target: str, timeout: float = 2.0, service: str = "", tls: ClientTLS | None = None) -> str:
    """The health status name of ``target`` ("SERVING", ...), or "UNREACHABLE"; over TLS with ``tls``
    (health needs no token)."""
    channel = (grpc.secure_channel(target, tls.credentials(), options=tls.channel_options()) if tls is not None
               else grpc.insecure_channel(target))
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return "UNREACHABLE"
            return code.name if code is not None else "ERROR"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Launcher:
    """Starts, watches and stops the services of a profile."""

    def __init__(
        self,
        specs: list[ServiceSpec],
        run_dir: Path,
        *,
        ephemeral_ports: bool = False,
        host: str = "127.0.0.1",
        extra_env: dict[str, str] | None = None,
        start_timeout_s: float = 60.0,
        grace_s: float = 5.0,
        health_tls: ClientTLS | None = None,
    ) -> None:
        self.specs = specs
        self.run_dir = run_dir
        self.ephemeral_ports = ephemeral_ports
        self.host = host
        self.extra_env = extra_env or {}
        self.start_timeout_s = start_timeout_s
        self.grace_s = grace_s
        self.health_tls = health_tls      # how to dial the services' health checks (they serve TLS)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.endpoints: dict[str, Endpoint] = {}

    def _env(self, spec: ServiceSpec, ready: Path) -> dict[str, str]:
        port = 0 if self.ephemeral_ports else spec.port
        metrics = 0 if self.ephemeral_ports else spec.metrics_port
        env = dict(os.environ)
        peers = {dep: self.endpoints[dep].target for dep in spec.depends_on}
        for peer in spec.wants:
            # started here: its real address; else where a launcher of its own profile puts it
            started = self.endpoints.get(peer)
            peers[peer] = started.target if started is not None else f"{self.host}:{spec.peer_ports[peer]}"
        env.update(spec.runtime_env(self.host, port, metrics, peers))
        # relative paths in the table are relative to the repository root
        for key, value in spec.env.items():
            if key.endswith("_DIR") and not os.path.isabs(value):
                env[key] = str(ROOT / value)
        env["RLYARD_READY_FILE"] = str(ready)
        env["RLYARD_GRACE_S"] = str(self.grace_s)
        env["RLYARD_PARENT_PID"] = str(os.getpid())
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.extra_env)
        return env

    def start(self, on_ready: Callable[[Endpoint], None] | None = None) -> dict[str, Endpoint]:
        """Start the services in table order — each after the services it depends on (and those
        it wants that this profile starts) are SERVING, so their real addresses reach it — and
        wait until every one is SERVING; on failure stop them all."""
        names = {s.name for s in self.specs}
        for spec in self.specs:
            missing = [d for d in spec.depends_on if d not in names]
            if missing:
                raise ConfigError(
                    f"{spec.name} depends on {', '.join(missing)}, which this profile does not start; "
                    "add them to the profile"
                )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            for spec in self.specs:
                ready = self.run_dir / f"{spec.name}.ready.json"
                ready.unlink(missing_ok=True)
                log_file = self.run_dir / f"{spec.name}.log"
                with log_file.open("wb") as log:
                    self.procs[spec.name] = subprocess.Popen(
                        [sys.executable, "-m", "rlyard_app.cli.main", "serve", spec.kind],
                        env=self._env(spec, ready),
                        cwd=ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                endpoint = self._wait_ready(spec, ready, log_file)
                self.endpoints[spec.name] = endpoint
                if on_ready is not None:
                    on_ready(endpoint)
        except BaseException:
            self.stop()
            raise
        return self.endpoints

    def _wait_ready(self, spec: ServiceSpec, ready: Path, log_file: Path) -> Endpoint:
        proc = self.procs[spec.name]
        limit = max(self.start_timeout_s, spec.startup_s)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServiceStartError(
                    f"{spec.name} exited with code {proc.returncode} while starting; "
                    f"last lines of {log_file}:\n{_tail(log_file)}"
                )
            if ready.exists():
                info = json.loads(ready.read_text())
                endpoint = Endpoint(
                    spec.name, spec.kind, info["host"], int(info["port"]),
                    info.get("metrics_port"), proc.pid, log_file,
                )
                if check_health(endpoint.target, tls=self.health_tls) == "SERVING":
                    return endpoint
            time.sleep(0.05)
        raise ServiceStartError(
            f"{spec.name} did not become healthy within {limit:.0f}s; "
            f"last lines of {log_file}:\n{_tail(log_file)}"
        )

    def dead(self) -> list[tuple[str, int]]:
        """Services whose process has exited, with the exit codes."""
        return [(n, p.returncode) for n, p in self.procs.items() if p.poll() is not None]

    def wait(self, poll_s: float = 0.2) -> tuple[str, int]:
        """Block until a service dies; returns its name and exit code."""
        while True:
            gone = self.dead()
            if gone:
                return gone[0]
            time.sleep(poll_s)

    def stop(self) -> None:
        """SIGTERM every child, then SIGKILL what is left after the grace period."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + 2.0
        for proc in self.procs.values():
            remaining = max(0.0, deadline - time.monotonic())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                logger.warning("pid %s ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


STATE_FILE = Path(".rlyard") / "up.json"


def write_state(endpoints: dict[str, Endpoint], path: Path = STATE_FILE) -> None:
    """Record where ``rlyard up`` started each service (read by status and tool)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        name: {"kind": e.kind, "target": e.target, "metrics_port": e.metrics_port, "pid": e.pid}
        for name, e in endpoints.items()
    }
    # Atomically: a reader (`rlyard status`, a test polling for the file) never sees it half written.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"launcher_pid": os.getpid(), "services": data}, indent=2))
    os.replace(tmp, path)


def read_state(path: Path = STATE_FILE) -> dict[str, dict[str, object]]:
    """Services recorded by a running ``rlyard up`` (empty if none is running)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    pid = int(data.get("launcher_pid", 0))
    try:
        os.kill(pid, 0)
    except (OSError, ProcessLookupError):
        return {}  # stale: that launcher is gone
    services: dict[str, dict[str, object]] = data.get("services", {})
    return services
