"""Every gold query of Spider dev runs through ``sql_query`` (one server, one
``CallTools`` stream) and its structured rows equal what Python's sqlite3 returns
on the same file: the guards must not change the answer of a legitimate query."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from rlyard.client import ToolClient

CONCURRENCY = 16


def load_gold(dev_json: Path) -> list[dict[str, str]]:
    items = json.loads(dev_json.read_text())
    assert len(items) == 1026, f"expected the 1026 items of data/spider/dev.json, got {len(items)}"
    return items


def expected_rows(db_dir: Path, items: list[dict[str, str]]) -> list[list[Any]]:
    """The rows sqlite3 gives for each gold query, JSON-encoded the way the tool encodes them."""
    conns: dict[str, sqlite3.Connection] = {}
    out: list[list[Any]] = []
    try:
        for item in items:
            db_id = item["db_id"]
            if db_id not in conns:
                path = (db_dir / db_id / f"{db_id}.sqlite").resolve()
                conns[db_id] = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            rows = conns[db_id].execute(item["query"]).fetchall()
            out.append(
                [[{"$blob_hex": v.hex()} if isinstance(v, bytes) else v for v in row] for row in rows]
            )
    finally:
        for conn in conns.values():
            conn.close()
    # through JSON, as the tool's structured_json travels (floats round-trip exactly)
    return json.loads(json.dumps(out))


async def test_every_gold_query_matches_sqlite3(repo: Any, start_tools: Any, make_client: Any) -> None:
    items = load_gold(repo.spider_dev_json)
    expected = await asyncio.to_thread(expected_rows, repo.spider_db_dir, items)
    assert sum(len(rows) for rows in expected) > 5_000  # the comparison is not over empty answers
    running = await start_tools(sql={"max_rows": 100_000, "timeout_s": 10.0})
    client: ToolClient = make_client(running, timeout=30.0)
    sessions = {db_id: await client.open_session({"db_id": db_id}) for db_id in sorted({i["db_id"] for i in items})}
    stream = client.stream()
    gate = asyncio.Semaphore(CONCURRENCY)

    async def run(index: int, item: dict[str, str]) -> Any:
        async with gate:
            return await stream.call(
                "sql_query", {"query": item["query"]}, session_id=sessions[item["db_id"]], call_id=f"gold-{index}"
            )

    results = await asyncio.gather(*(run(i, item) for i, item in enumerate(items)))
    await stream.close()

    mismatches = []
    for index, (item, result, want) in enumerate(zip(items, results, expected, strict=True)):
        assert result.call_id == f"gold-{index}"
        if result.system_error_code or result.is_error or result.structured["truncated"]:
            mismatches.append((index, item["db_id"], item["query"], result.system_error.message or
                               result.content[0].text))
            continue
        got = result.structured["rows"]
        if got != want:
            mismatches.append((index, item["db_id"], item["query"], f"rows differ: {got[:3]} vs {want[:3]}"))
    assert not mismatches, f"{len(mismatches)} gold queries disagree, e.g.:\n" + "\n".join(
        map(str, mismatches[:10])
    )
