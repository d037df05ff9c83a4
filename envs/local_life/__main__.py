"""Write the local-life multi-hop tasks over a POI corpus.

    python -m envs.local_life --corpus data/generated/poi --out data/generated/local_life --seed 0 \
        --n-train 800 --n-heldout 200

reads ``CORPUS/poi.sqlite`` and writes ``OUT/train.jsonl``, ``OUT/heldout.jsonl`` (one task per line)
and ``OUT/split_info.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from envs.local_life.tasks import CorpusTooSmallError, generate_split


def _write_jsonl(path: Path, tasks: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for task in tasks:
            out.write(json.dumps(task, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Generate the split with a progress bar; write the files and print a summary."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    parser = argparse.ArgumentParser(prog="python -m envs.local_life", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="folder holding poi.sqlite")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for train.jsonl, heldout.jsonl and split_info.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--n-heldout", type=int, default=200)
    parser.add_argument("--index-dir", type=Path, default=None,
                        help="BM25 cache to replay gold searches through (default CORPUS/index, as the tool server)")
    parser.add_argument("--no-replay", action="store_true", help="skip replaying gold searches through BM25")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("bm25s").setLevel(logging.WARNING)      # it sets itself to DEBUG on import
    index_dir = None if args.no_replay else args.index_dir or args.corpus / "index"

    console = Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        bars = {"index": bar.add_task("BM25 index", total=None, visible=index_dir is not None),
                "train": bar.add_task("train tasks", total=args.n_train),
                "heldout": bar.add_task("held-out tasks", total=args.n_heldout)}
        try:
            split = generate_split(args.corpus / "poi.sqlite", args.seed, args.n_train, args.n_heldout, index_dir,
                                   on_progress=lambda name, done, total: bar.update(bars[name], completed=done,
                                                                                    total=total))
        except (CorpusTooSmallError, FileNotFoundError) as exc:
            raise SystemExit(f"error: {exc}") from exc
        if bar.tasks[bars["index"]].total is None:     # loaded from the cache: nothing was reported
            bar.update(bars["index"], description="BM25 index (cached)", total=1, completed=1)
    args.out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(args.out / "train.jsonl", split.train)
    _write_jsonl(args.out / "heldout.jsonl", split.heldout)
    (args.out / "split_info.json").write_text(json.dumps(split.info, indent=2, ensure_ascii=False) + "\n",
                                              encoding="utf-8")

    info = split.info
    table = Table("template", "difficulty", "train", "held-out", title=f"local-life tasks, seed {args.seed}")
    for name, spec in info["templates"].items():
        table.add_row(name + (" (held-out only)" if spec["heldout_only"] else ""), spec["difficulty"],
                      str(info["train"]["by_template"].get(name, 0)), str(info["heldout"]["by_template"].get(name, 0)))
    console.print(table)
    for name in ("train", "heldout"):
        c = info[name]
        console.print(f"{name}: {c['tasks']} tasks, hops {c['by_hops']}, {c['mean_gold']} gold answers and "
                      f"{c['mean_calls']} gold calls on average")
    tasks = info["train"]["tasks"] + info["heldout"]["tasks"]
    console.print(f"held-out-only cities: {', '.join(info['heldout_cities'])}; {tasks} tasks from {info['draws']} "
                  f"draws in {info['seconds_generate']:.1f} s (+{info['seconds_load']:.1f} s loading the corpus"
                  f"{' and the BM25 index' if index_dir else ''}); wrote {args.out}/train.jsonl, heldout.jsonl, "
                  "split_info.json")


if __name__ == "__main__":
    main()
