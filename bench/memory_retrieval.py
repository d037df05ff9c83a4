"""How fast is Retrieve through the memory service with many meta-cognitions in the store?

Fills a fresh store (any SQLAlchemy URL: a SQLite file by default, or PostgreSQL) with ``--count``
meta-cognitions of 20 task types — random unit vectors as their embeddings (the index does the same
work whatever the vectors hold) — starts the real service on 127.0.0.1, and times ``--queries``
sequential Retrieve calls through the real client (MiniLM encoding of the task text included, by
ONNX Runtime, the service's default, and again by PyTorch as the peer on the same store): with
a task type (one shard of the index, 5,000 rows), over every type (all 100,000 rows), and with a task
type again after a utility update round, which makes the index catch up with the rows it changed.
The issue's goal: p50 < 20 ms at 100,000 meta-cognitions on SQLite and on PostgreSQL.

``python -m bench.memory_retrieval [--count 100000] [--queries 200] [--db-url URL] [--output F]``
writes ``bench/results/memory_retrieval.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from memory_service.app import memory_service
from memory_service.settings import MemorySettings
from memory_service.store import MemoryStore, NewMetaCognition
from rlyard.client import RetryPolicy
from rlyard.domain import UtilityUpdate
from rlyard.embedding import DIMENSION
from rlyard.memory_client import MemoryClient
from rlyard.server import start_server
from rlyard.settings import ServerSettings

TASKS = ["How many singers are older than 30?", "List the stadiums by capacity.", "Which concert had the most "
         "attendees?", "What is the average price of products in each category?", "Find the merchant nearest to "
         "the station that sells dumplings."]


def fill(url: str, count: int, batch: int = 5_000, seed: int = 0) -> float:
    """Insert ``count`` meta-cognitions; the seconds it took."""
    rng = np.random.default_rng(seed)
    store = MemoryStore(url)
    tic = time.perf_counter()
    try:
        for start in range(0, count, batch):
            n = min(batch, count - start)
            vectors = rng.standard_normal((n, DIMENSION)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.add([NewMetaCognition(f"type-{(start + i) % 20}", f"rule:{start + i}",
                                        f"Strategy number {start + i}: inspect before you query.", (),
                                        vectors[i].tobytes()) for i in range(n)], 0.5)
    finally:
        store.close()
    return time.perf_counter() - tic


def _percentiles(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=100)
    return {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(q[94], 2), "max_ms": round(max(ms), 2)}


async def measure(url: str, queries: int, encoder: str = "onnx") -> dict[str, Any]:
    """Retrieve latencies through the service with MiniLM in ``encoder``'s runtime, before and after
    an update round."""
    running = await start_server(memory_service(MemorySettings(db_url=url, encoder=encoder)),
                                 ServerSettings(host="127.0.0.1", port=0))
    tic = time.perf_counter()
    await running.wait_ready(timeout=600)
    ready_s = time.perf_counter() - tic
    try:
        async with MemoryClient(running.address, timeout=60, retry=RetryPolicy(max_attempts=1)) as client:
            for task in TASKS:   # warm the encoder and the channel
                await client.retrieve(task, top_k=5)

            async def timed(n: int, typed: bool) -> list[float]:
                out = []
                for i in range(n):
                    t0 = time.perf_counter()
                    hits = await client.retrieve(TASKS[i % len(TASKS)], task_type=f"type-{i % 20}" if typed else "",
                                                 top_k=5)
                    out.append((time.perf_counter() - t0) * 1000)
                    assert len(hits) == 5
                return out

            typed = await timed(queries, True)
            untyped = await timed(queries, False)
            some = [h.meta_cognition.id for h in await client.retrieve(TASKS[0], top_k=50)]
            await client.update_utility([UtilityUpdate(i, 1.0, 0.0) for i in some])
            after_update = await timed(max(queries // 4, 10), True)
            stats = await client.stats()
    finally:
        await running.stop(0)
    return {"encoder": encoder, "ready_s": round(ready_s, 2), "typed": _percentiles(typed),
            "all_types": _percentiles(untyped),
            "typed_after_update": _percentiles(after_update), "meta_cognitions": stats.num_meta_cognitions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--db-url", default="", help="an empty database (default: a new SQLite file)")
    parser.add_argument("--output", type=Path, default=Path("bench/results/memory_retrieval.json"))
    parser.add_argument("--peer-encoder", default="torch", choices=["torch", "none"],
                        help="also time the same store with PyTorch's MiniLM (the service's fallback), as the peer")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlyard-memory-bench-") as tmp:
        url = args.db_url or f"sqlite:///{tmp}/memory.db"
        fill_s = fill(url, args.count)
        result = asyncio.run(measure(url, args.queries, "onnx"))
        if args.peer_encoder != "none":
            peer = asyncio.run(measure(url, args.queries, args.peer_encoder))
            result["peer"] = {**peer, "typed_p50_ratio": round(result["typed"]["p50_ms"] / peer["typed"]["p50_ms"], 3),
                              "all_types_p50_ratio": round(result["all_types"]["p50_ms"]
                                                           / peer["all_types"]["p50_ms"], 3)}
    backend = url.split(":", 1)[0].split("+", 1)[0]
    record = {"when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "host": platform.node(),
              "backend": backend, "count": args.count, "queries": args.queries, "fill_s": round(fill_s, 1), **result}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(args.output.read_text()) if args.output.is_file() else []
    args.output.write_text(json.dumps([*runs, record], indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
