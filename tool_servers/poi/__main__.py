"""Build the indexes the local-life tools load, ahead of serving, for a POI corpus that
``python -m envs.local_services.poi_corpus`` wrote.

    python -m tool_servers.poi --poi-dir data/generated/poi [--index-dir DIR] [--no-dense]

The ``search`` and ``retrieve`` services build a missing index (and export the ONNX query encoder)
on start and stay NOT_SERVING until it is ready; running this first makes them ready in seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rlyard.embedding import TorchEncoder, export_onnx, onnx_file
from tool_servers.poi import dense
from tool_servers.poi.bm25 import PoiBm25
from tool_servers.poi.store import DB_NAME, PoiStore


def main(argv: list[str] | None = None) -> None:
    """BM25 index, then dense index, for an existing corpus — each only when not already there."""
    parser = argparse.ArgumentParser(prog="python -m tool_servers.poi", description=__doc__.splitlines()[0])
    parser.add_argument("--poi-dir", type=Path, default=Path("data/generated/poi"))
    parser.add_argument("--index-dir", type=Path, default=None, help="default: POI_DIR/index")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense index (minutes on a CPU)")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = Console()
    index_dir = ns.index_dir or ns.poi_dir / "index"
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    if not (ns.poi_dir / DB_NAME).is_file():
        parser.error(f"no POI corpus at {ns.poi_dir / DB_NAME}; build it first with "
                     f"`python -m envs.local_services.poi_corpus --out {ns.poi_dir}`")
    with Progress(*columns, console=console) as bar:
        store = PoiStore(ns.poi_dir / DB_NAME)
        tic = time.perf_counter()
        task = bar.add_task("BM25 index (tokenising)", total=None)
        PoiBm25.load_or_build(store, index_dir, on_progress=lambda d, t: bar.update(task, completed=d, total=t))
        bar.update(task, description=f"BM25 index ({time.perf_counter() - tic:.1f} s)")
        if not ns.no_dense:
            tic = time.perf_counter()
            task = bar.add_task("dense index (embedding)", total=None)
            # an offline build has the cores to itself: every core, not the serving encoder's one thread
            torch_encoder = TorchEncoder(torch_threads=os.cpu_count())
            dense.load_or_build(store, index_dir, torch_encoder,
                                on_progress=lambda d, t: bar.update(task, completed=d, total=t))
            bar.update(task, description=f"dense index ({time.perf_counter() - tic:.1f} s)")
            model = onnx_file(index_dir)
            if not model.is_file():        # the query encoder of RLYARD_TOOLS_POI_ENCODER=onnx
                export_onnx(torch_encoder, model)
    console.print(f"corpus {store.version[:16]} at {ns.poi_dir}; indexes under {index_dir}")
    store.close()


if __name__ == "__main__":
    main()
