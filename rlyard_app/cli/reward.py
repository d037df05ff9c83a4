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

from rlyard.domain import ScoreResult, ScoringItem, load_spec
from rlyard.domain.jsonform import item_from_json
from rlyard.errors import InvalidArgument
from rlyard.reward_client import RewardClient
from rlyard.tls import PLAINTEXT, ClientSettings
from trainer.config import EmbeddedConfig, ServicesConfig
from trainer.embedded import embedded_services


@dataclass
class Line:
    """One input line: its parsed request, or why it could not be parsed."""

    item_id: str
    item: ScoringItem | None
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
                lines.append(Line(item.item_id, item))
            except (json.JSONDecodeError, InvalidArgument, ValueError, TypeError) as exc:
                item_id = str(obj.get("id", no)) if isinstance(obj, dict) else str(no)
                lines.append(Line(item_id, None, f"line {no}: {exc}"))
    return lines


def _output(line: Line, result: ScoreResult | None) -> dict[str, Any]:
    if result is None:
        return {"id": line.item_id, "total": None, "components": {}, "status": "INVALID_INPUT",
                "error": line.error}
    return {"id": line.item_id, **result.to_jsonable()}


async def score_file(
    spec_text: str, input_path: Path, output_path: Path, *, target: str | None, sql_db_dir: Path,
    batch_size: int, console: Console,
) -> dict[str, int]:
    """Score every line; returns counts by status."""
    spec = load_spec(spec_text)
    lines = read_lines(input_path)
    counts: dict[str, int] = {}
    async with contextlib.AsyncExitStack() as stack:
        if target:
            address = target
        else:
            config = ServicesConfig(embedded=EmbeddedConfig(families={"sql": {"db_dir": str(sql_db_dir)}}))
            address = (await stack.enter_async_context(embedded_services(config, [spec]))).reward
        # a given reward service: TLS and its token from RLYARD_CLIENT_*; an embedded one is plaintext
        client_settings = ClientSettings.from_env("RLYARD_CLIENT") if target else PLAINTEXT
        client = await stack.enter_async_context(RewardClient(
            address, timeout=600.0, auth_token=client_settings.token_for(address), tls=client_settings.channel_tls()))
        output_path.parent.mkdir(parents=True, exist_ok=True)
        with output_path.open("w", encoding="utf-8") as out, Progress(
            TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
        ) as progress:
            task = progress.add_task("score", total=len(lines))
            for start in range(0, len(lines), batch_size):
                chunk = lines[start:start + batch_size]
                valid = [ln for ln in chunk if ln.item is not None]
                results = await client.score_batch([ln.item for ln in valid if ln.item], spec) if valid else []
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
