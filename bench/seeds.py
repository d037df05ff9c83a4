"""What the multi-seed learning benches share: resuming from the seeds an earlier run finished."""

from __future__ import annotations

import dataclasses
import json
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
