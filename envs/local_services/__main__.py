"""Write the local-services database and its text-to-SQL tasks.

    python -m envs.local_services --out DIR --seed 0

writes ``DIR/local_services/local_services.sqlite`` and, next to it, ``train.json`` and
``heldout.json`` (Spider format: ``db_id``, ``question``, ``query``), ``train_tasks.json`` and
``heldout_tasks.json`` (with template, difficulty and slot values; held-out ones with their
slice: a in-distribution, b unseen values, c unseen templates) and ``split_info.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from envs.local_services.database import SCALES, build_database, database_path
from envs.local_services.questions import SLICE_NAMES, HeldoutSizes, generate_split


def spider_records(tasks: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The Spider-format records ``{db_id, question, query}`` of ``tasks``."""
    return [{"db_id": t["db_id"], "question": t["question"], "query": t["query"]} for t in tasks]


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Build the database and the task files; print what was written."""
    parser = argparse.ArgumentParser(prog="python -m envs.local_services", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="database directory (Spider layout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--n-train", type=int, default=400)
    for name, default in HeldoutSizes().counts().items():
        parser.add_argument(f"--n-heldout-{name}", type=int, default=default,
                            help=f"held-out questions of slice {name} ({SLICE_NAMES[name]}; default {default})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    start = time.perf_counter()
    info = build_database(database_path(args.out), args.seed, args.scale)
    sizes = HeldoutSizes(args.n_heldout_a, args.n_heldout_b, args.n_heldout_c)
    split = generate_split(info.path, args.seed, args.n_train, sizes)
    folder = info.path.parent
    _write_json(folder / "train.json", spider_records(split.train))
    _write_json(folder / "heldout.json", spider_records(split.heldout))
    _write_json(folder / "train_tasks.json", split.train)
    _write_json(folder / "heldout_tasks.json", split.heldout)
    _write_json(folder / "split_info.json", {**split.info, "scale": info.scale, "counts": info.counts,
                                              "content_hash": info.content_hash})
    rows = ", ".join(f"{table} {count}" for table, count in info.counts.items())
    print(f"database {info.path} ({rows})")
    slices = ", ".join(f"{name} {SLICE_NAMES[name]} {n}" for name, n in split.info["slices"].items())
    print(f"tasks: {len(split.train)} train, {len(split.heldout)} held-out ({slices}; "
          f"{len(split.info['heldout_only_templates'])} held-out-only templates, "
          f"held-out cities {', '.join(split.info['heldout_cities'])}) in {time.perf_counter() - start:.2f}s")


if __name__ == "__main__":
    main()
