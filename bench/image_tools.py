"""What does serving the image tools cost over running their OpenCV calls in process?

``crop`` and ``zoom`` on 1024 × 1024 images, two ways, at 1 and 16 callers, with results encoded as
PNG (the default) and as JPEG (``RLYARD_TOOLS_IMAGE_OUTPUT_FORMAT=jpeg``):

- ``in_process``: the tools' own operations (``tool_servers.image.ops`` and the result encoding of
  ``codec.encode_within``) on already decoded pixels, run on a pool of as many threads as the
  server has workers — what a server adds nothing to;
- ``grpc_stream_batched``: the same calls through a ``python -m tool_servers`` process (the image
  tools, ``RLYARD_TOOLS_WORKER_THREADS`` workers) over one batched ``CallTools`` stream, in a
  session holding the images as attachments (decoded once, then from the server's cache); a new
  session per measurement, since each call keeps its result as a new image of the session.

Each caller calls in a loop, random boxes of 128–384 pixels a side (zoom factor 2), seed 21.
Reported per tool and level: calls/s, p50/p99 latency, the ratio of the stream's calls/s to
in-process; the server's peak RSS (VmHWM) and this process's.

``python -m bench.image_tools [--duration 3] [--concurrency 1,16] [--formats png,jpeg] [--quick]
[--output F]`` writes
``bench/results/image_tools.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
from rich.console import Console

from bench.tool_call import ServerProcess, start_process
from rlyard.client import ToolClient
from rlyard.domain import ImagePart
from tool_servers.image import ops
from tool_servers.image.codec import encode, encode_within
from tool_servers.image.settings import ImageSettings

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "bench" / "results" / "image_tools.json"
SIDE = 1024
N_IMAGES = 4
WORKERS = 2
TOOLS = ("crop", "zoom")


def scene(seed: int, side: int = SIDE) -> np.ndarray:
    """A synthetic photo: a gradient, shapes, text and mild noise (PNG of a realistic size)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    img = np.stack([80 + 120 * x, 60 + 140 * y, 200 - 100 * x * y], axis=-1).astype(np.uint8)
    for _ in range(40):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy, r = (int(v) for v in rng.integers(0, side, 3) // (1, 1, 8))
        if rng.random() < 0.5:
            cv2.circle(img, (cx, cy), r, color, -1)
        else:
            cv2.rectangle(img, (cx, cy), (cx + r, cy + r // 2), color, -1)
    for k in range(12):
        cv2.putText(img, f"rlyard {seed}-{k}", (int(rng.integers(0, side - 300)), int(rng.integers(30, side))),
                    cv2.FONT_HERSHEY_SIMPLEX, 1.2, (20, 20, 20), 2)
    noise = rng.normal(0, 2.0, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def boxes(seed: int, n: int) -> list[list[int]]:
    """``n`` random boxes of 128–384 pixels a side inside a SIDE × SIDE image."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w, h = rng.randint(128, 384), rng.randint(128, 384)
        x, y = rng.randint(0, SIDE - w), rng.randint(0, SIDE - h)
        out.append([x, y, x + w, y + h])
    return out


def rss_mb(pid: int | str = "self", field: str = "VmHWM") -> float:
    """A memory figure of ``/proc/<pid>/status`` (VmHWM: peak resident), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stats(latencies: list[float], seconds: float) -> dict[str, float]:
    """Calls/s and latency percentiles (ms) of one measured window."""
    ordered = sorted(latencies)
    if not ordered:        # no call both started and ended in the window (a very short quick run)
        return {"calls": 0, "calls_per_s": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}

    def pct(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)

    return {"calls": len(ordered), "calls_per_s": round(len(ordered) / seconds, 1), "p50_ms": pct(0.5),
            "p99_ms": pct(0.99), "mean_ms": round(1000 * statistics.fmean(ordered), 3)}


async def drive(call: Callable[[int, int], Awaitable[None]], callers: int, warmup: float,
                duration: float) -> dict[str, float]:
    """``callers`` tasks calling ``call(caller, i)`` in a loop; the calls that start and end in the
    measured window after ``warmup`` count."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    begin, end = start + warmup, start + warmup + duration
    latencies: list[float] = []

    async def caller(c: int) -> None:
        i = 0
        while loop.time() < end:
            t0 = loop.time()
            await call(c, i)
            t1 = loop.time()
            if t0 >= begin and t1 <= end:
                latencies.append(t1 - t0)
            i += 1

    await asyncio.gather(*(caller(c) for c in range(callers)))
    return stats(latencies, duration)


def tool_arguments(tool: str, image: int, box: list[int]) -> dict[str, Any]:
    """A call's arguments."""
    args: dict[str, Any] = {"image_id": f"img{image}", "box": box}
    if tool == "zoom":
        args["factor"] = 2
    return args


def in_process_work(tool: str, pixels: np.ndarray, box: list[int], settings: ImageSettings) -> int:
    """What the server does for one call once the image is decoded: the operation, the encoding of
    the kept image and of what the model reads (the same bytes when they fit, as on the server)."""
    b = (box[0], box[1], box[2], box[3])
    if tool == "crop":
        out = ops.crop(pixels, b)
    else:
        out = ops.zoom(pixels, b, ops.zoom_size(b, 2.0, settings.max_output_side))
    stored = encode(out, settings.output_format, settings.jpeg_quality)
    return len(encode_within(out, settings, stored).data)


async def run(duration: float, warmup: float, levels: list[int], fmt: str, console: Console) -> dict[str, Any]:
    """Every tool × level × mode, results encoded as ``fmt``."""
    settings = ImageSettings(output_format=fmt)
    pixels = [scene(k) for k in range(N_IMAGES)]
    pngs = [encode(p, "png") for p in pixels]
    box_list = boxes(21, 512)
    results: dict[str, Any] = {}
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="inproc")
    cv2.setNumThreads(settings.opencv_threads)
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="rlyard-image-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RLYARD")}
        ready = Path(tmp) / "ready"
        env.update({"RLYARD_HOST": "127.0.0.1", "RLYARD_PORT": "0", "RLYARD_READY_FILE": str(ready),
                    "RLYARD_LOG_LEVEL": "WARNING", "RLYARD_TOOLS_TOOLS": ",".join(TOOLS),
                    "RLYARD_TOOLS_WORKER_THREADS": str(WORKERS), "RLYARD_TOOLS_IMAGE_OUTPUT_FORMAT": fmt,
                    "RLYARD_TOOLS_SESSION_MAX_IMAGES": "1000000",              # see the session per measurement
                    "RLYARD_TOOLS_SESSION_MAX_IMAGE_BYTES": str(1 << 40),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))})
        server: ServerProcess = start_process("image tool server", [sys.executable, "-m", "tool_servers"], env,
                                              ready, Path(tmp) / "server.log")
        client = ToolClient(f"127.0.0.1:{server.port}", timeout=60.0)
        try:
            attachments = [ImagePart(png, "image/png", SIDE, SIDE, f"img{k}") for k, png in enumerate(pngs)]
            server_rss_open = 0.0
            stream = client.stream(batch=True)
            # in process, then through the server, one right after the other: the CPUs' other load
            # (a shared machine) then weighs on both alike
            for tool in TOOLS:
                for n in levels:
                    async def local(c: int, i: int, tool: str = tool) -> None:
                        await loop.run_in_executor(pool, in_process_work, tool, pixels[(c + i) % N_IMAGES],
                                                   box_list[(c * 31 + i) % 512], settings)

                    results[f"{tool}/{n}/in_process"] = await drive(local, n, warmup, duration)
                    console.print(f"{fmt:4} {tool:4} {n:3} callers  in-process  {results[f'{tool}/{n}/in_process']}")
                    # a session per measurement: every crop and zoom is kept in it as a new image
                    session = await client.open_session(attachments=attachments)
                    server_rss_open = server_rss_open or rss_mb(server.proc.pid, "VmRSS")

                    async def remote(c: int, i: int, tool: str = tool, session: str = session) -> None:
                        args = tool_arguments(tool, (c + i) % N_IMAGES, box_list[(c * 31 + i) % 512])
                        result = await stream.call(tool, args, session_id=session)
                        if result.is_error or result.system_error is not None or not result.images:
                            raise RuntimeError(f"{tool} failed: {result.text} {result.system_error}")

                    results[f"{tool}/{n}/grpc_stream_batched"] = await drive(remote, n, warmup, duration)
                    await client.close_session(session)
                    console.print(f"{fmt:4} {tool:4} {n:3} callers  gRPC stream "
                                  f"{results[f'{tool}/{n}/grpc_stream_batched']}")
            await stream.close()
            server_rss = {"after_open_session_mb": round(server_rss_open, 1),
                          "peak_mb": round(rss_mb(server.proc.pid), 1),
                          "end_mb": round(rss_mb(server.proc.pid, "VmRSS"), 1)}
        finally:
            await client.close()
            server.stop()
            pool.shutdown()
    bench_rss = rss_mb()

    table = {}
    for tool in TOOLS:
        for n in levels:
            local_r, remote_r = results[f"{tool}/{n}/in_process"], results[f"{tool}/{n}/grpc_stream_batched"]
            table[f"{fmt}/{tool}/{n}"] = {
                "output_format": fmt, "tool": tool, "callers": n,
                "in_process": local_r, "grpc_stream_batched": remote_r,
                "ratio_calls_per_s_vs_in_process": round(remote_r["calls_per_s"] / max(local_r["calls_per_s"], 1e-9),
                                                         3),
                "p50_overhead_ms": round(remote_r["p50_ms"] - local_r["p50_ms"], 3),
            }
    return {"results": table, "server_rss": server_rss, "bench_process_peak_rss_mb": round(bench_rss, 1),
            "image_png_bytes": [len(p) for p in pngs]}


def machine_info() -> dict[str, Any]:
    """Where it ran."""
    return {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "python": sys.version.split()[0], "grpcio": grpc.__version__, "opencv": cv2.__version__,
            "numpy": np.__version__, "opencv_python_headless": metadata.version("opencv-python-headless"),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per tool, mode and level")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before measuring (default min(1, d))")
    parser.add_argument("--concurrency", default="1,16", help="callers, comma-separated levels")
    parser.add_argument("--formats", default="png,jpeg",
                        help="output formats of the tools (RLYARD_TOOLS_IMAGE_OUTPUT_FORMAT)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 0.3 s per measurement, 1 and 4 callers")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run, print and write the report."""
    args = parse_args(argv)
    duration = 0.3 if args.quick else args.duration
    levels = [1, 4] if args.quick else [int(c) for c in args.concurrency.split(",")]
    warmup = (0.2 if args.quick else min(1.0, duration)) if args.warmup is None else args.warmup
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    console = Console()
    tic = time.perf_counter()
    runs = [asyncio.run(run(duration, warmup, levels, fmt, console)) for fmt in formats]
    measured = {"results": {k: v for r in runs for k, v in r["results"].items()},
                "server_rss": {fmt: r["server_rss"] for fmt, r in zip(formats, runs, strict=True)},
                "bench_process_peak_rss_mb": max(r["bench_process_peak_rss_mb"] for r in runs),
                "image_png_bytes": runs[0]["image_png_bytes"]}
    report = {"bench": "image_tools", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "config": {"output_formats": formats,
                         "duration_s": duration, "warmup_s": warmup, "concurrency": levels, "image_side": SIDE,
                         "images": N_IMAGES, "worker_threads": WORKERS, "box_sides": [128, 384], "zoom_factor": 2,
                         "quick": args.quick},
              **measured, "seconds": round(time.perf_counter() - tic, 1), "machine": machine_info()}
    for key, row in report["results"].items():
        console.print(f"{key:14} stream {row['grpc_stream_batched']['calls_per_s']:>7} calls/s vs in-process "
                      f"{row['in_process']['calls_per_s']:>7}: ratio {row['ratio_calls_per_s_vs_in_process']}, "
                      f"p50 {row['grpc_stream_batched']['p50_ms']} vs {row['in_process']['p50_ms']} ms")
    peaks = ", ".join(f"{fmt} {r['peak_mb']}" for fmt, r in report["server_rss"].items())
    console.print(f"server peak RSS (MiB): {peaks}; bench process peak "
                  f"{report['bench_process_peak_rss_mb']} MiB")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
