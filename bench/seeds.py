"""What the multi-seed learning benches share: resuming from the seeds an earlier run finished, and
the report they rewrite after every seed."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any


def earlier_seeds(path: Path, cfg: Any, quick_run: bool, wanted: list[int]) -> list[dict[str, Any]]:
    """The finished seeds of an earlier run in ``path`` made with the same configuration ``cfg`` (a
    dataclass; the seed aside), in the order of ``wanted``; none when the file is missing or was
    made otherwise."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text(encoding="utf-8"))
    same = {**dataclasses.asdict(cfg), "seed": None} == {**earlier.get("config", {}), "seed": None}
    if not same or bool(earlier.get("quick")) != quick_run:
        return []
    by_seed = {s["seed"]: s for s in earlier.get("seeds", [])}
    return [by_seed[seed] for seed in wanted if seed in by_seed]


def write_report(path: Path, benchmark: str, cfg: Any, *, quick: bool, complete: bool, seeds: list[dict[str, Any]],
                 summary: dict[str, Any], machine: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
    """Write a learning bench's JSON: the machine, the configuration ``cfg`` (a dataclass), the seeds so
    far and their summary; ``complete`` is False while seeds are still running (a killed bench keeps
    these, and ``earlier_seeds`` resumes from them)."""
    report = {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), **(machine or {}), "python": platform.python_version(),
                    "platform": platform.platform()},
        "config": dataclasses.asdict(cfg),
        "quick": quick,
        "complete": complete,
        **(extra or {}),
        "seeds": seeds,
        "summary": summary,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
