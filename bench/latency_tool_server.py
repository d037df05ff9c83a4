"""``python -m bench.latency_tool_server [--ready-file F]``: a tool server with only ``wait``.

Binds 127.0.0.1 on a free port (written to the ready file, as ``rlyard serve`` does) and runs
until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import bench.latency_tool  # noqa: F401  (registers the ``wait`` tool)
from rlyard.server import serve
from rlyard.settings import ServerSettings
from tool_servers.app import tool_service
from tool_servers.settings import ToolServerSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ready-file", type=Path, default=None)
    parser.add_argument("--port", type=int, default=0)
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = ServerSettings(host="127.0.0.1", port=ns.port, ready_file=ns.ready_file, grace_s=1.0,
                              max_concurrent_rpcs=4096)
    asyncio.run(serve(tool_service(ToolServerSettings(tools=("wait",), worker_threads=1)), settings))


if __name__ == "__main__":
    main()
