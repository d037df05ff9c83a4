"""``rlyard reward score``: score a JSONL file of predictions or trajectories.

With ``--target`` it calls a running reward service. Without, it starts one
embedded — with the SQL tool server that ``sql_execution`` needs — on loopback
ports of its own, and stops them at the end. Malformed input lines are not
dropped: their output line carries ``status: INVALID_INPUT`` and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from reward_service.convert import item_from_json, item_to_pb, spec_to_pb
from reward_service.spec import load_spec
from rlyard.embedded import sql_services
from rlyard.errors import InvalidArgument
from rlyard.reward.v1 import reward_pb2
from rlyard.reward_client import RewardClient

_STATUS = {
    reward_pb2.SCORE_STATUS_OK: "OK",
    reward_pb2.SCORE_STATUS_SYSTEM_ERROR: "SYSTEM_ERROR",
    reward_pb2.SCORE_STATUS_INVALID_INPUT: "INVALID_INPUT",
}


@dataclass
class Line:
    """One input line: its parsed request, or why it could not be parsed."""

    item_id: str
    request: reward_pb2.ScoreRequest | None
    error: str = ""


def read_lines(path: Path) -> list[Line]:
    """Parse the input JSONL; a bad line becomes an error entry, never an exception."""
    lines = []
    with path.open(encoding="utf-8") as f:
        for no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            obj: Any = None
            try:
                obj = json.loads(raw)
                item = item_from_json(obj, no)
                lines.append(Line(item.item_id, item_to_pb(item)))
            except (json.JSONDecodeError, InvalidArgument, ValueError, TypeError) as exc:
                item_id = str(obj.get("id", no)) if isinstance(obj, dict) else str(no)
                lines.append(Line(item_id, None, f"line {no}: {exc}"))
    return lines


def _output(line: Line, resp: reward_pb2.ScoreResponse | None) -> dict[str, Any]:
    if resp is None:
        return {"id": line.item_id, "total": None, "components": {}, "status": "INVALID_INPUT",
                "error": line.error}
    out: dict[str, Any] = {
        "id": line.item_id,
        "total": resp.total,
        "components": {c.name: c.value for c in resp.components},
        "status": _STATUS.get(resp.status, "UNSPECIFIED"),
    }
    if resp.step_rewards:
        out["step_rewards"] = [{"turn_index": s.turn_index, "value": s.value, "component": s.component}
                               for s in resp.step_rewards]
    if resp.explanation:
        out["explanation"] = resp.explanation
    if resp.error:
        out["error"] = resp.error
    return out


async def score_file(
    spec_text: str, input_path: Path, output_path: Path, *, target: str | None, sql_db_dir: Path,
    batch_size: int, console: Console,
) -> dict[str, int]:
    """Score every line; returns counts by status."""
    spec = spec_to_pb(load_spec(spec_text))
    lines = read_lines(input_path)
    counts: dict[str, int] = {}
    async with contextlib.AsyncExitStack() as stack:
        address: str = target or (await stack.enter_async_context(sql_services(sql_db_dir)))[1]
        client = await stack.enter_async_context(RewardClient(address, timeout=600.0))
        output_path.parent.mkdir(parents=True, exist_ok=True)
        with output_path.open("w", encoding="utf-8") as out, Progress(
            TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
        ) as progress:
            task = progress.add_task("score", total=len(lines))
            for start in range(0, len(lines), batch_size):
                chunk = lines[start:start + batch_size]
                valid = [ln for ln in chunk if ln.request is not None]
                results = await client.score_batch([ln.request for ln in valid if ln.request], spec) if valid else []
                by_line = dict(zip([id(ln) for ln in valid], results, strict=True))
                for ln in chunk:
                    record = _output(ln, by_line.get(id(ln)))
                    counts[record["status"]] = counts.get(record["status"], 0) + 1
                    out.write(json.dumps(record) + "\n")
                progress.advance(task, len(chunk))
    return counts


def run(ns: Any, console: Console) -> int:
    """Entry of ``rlyard reward score``."""
    counts = asyncio.run(score_file(
        ns.spec, Path(ns.input), Path(ns.output), target=ns.target, sql_db_dir=Path(ns.sql_db_dir),
        batch_size=ns.batch_size, console=console,
    ))
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    console.print(f"wrote {ns.output} ({summary})")
    return 0 if set(counts) <= {"OK"} else 1
