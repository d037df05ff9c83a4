"""Prometheus metrics of the service runtime and the HTTP endpoint that serves them."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_TOTAL = Counter(
    "rlyard_rpc_total", "RPCs handled, by method and status code", ["service", "method", "code"]
)
RPC_LATENCY = Histogram(
    "rlyard_rpc_latency_seconds",
    "RPC handling time",
    ["service", "method"],
    buckets=(0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
)
RPC_IN_FLIGHT = Gauge("rlyard_rpc_in_flight", "RPCs being handled now", ["service"])
TOOL_CALLS = Counter(
    "rlyard_tool_calls_total", "Tool calls, by tool and outcome", ["tool", "outcome"]
)
TOOL_LATENCY = Histogram(
    "rlyard_tool_latency_seconds",
    "Time spent inside a tool",
    ["tool"],
    buckets=(0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
)


class MetricsEndpoint:
    """``/metrics`` over HTTP on a background thread."""

    def __init__(self, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port: int = server.server_port

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
