"""The sampler service against in-process generation, on the demo's batch.

The demo's GRPO step samples 64 rows (8 questions × 8 samples) of its compact text-to-SQL prompt,
temperature 1, up to 200 new tokens a turn. Both ways get the same 64 ``SampleRequest``s at once,
each with its own seed (``derive_seed`` as the rollout engine makes them):

- in process: ``LocalSampler`` over ``HFPolicy`` (the `hf` backend);
- service: ``RemoteSampler`` (the `remote` backend) to ``rlyard serve sampler`` in its own process
  on loopback, over the same checkpoint. The 64 requests travel as one ``GenerateBatch``.

Each way batches the 64 rows into one ``generate`` call with the same seed, so both must sample the
same tokens (``same_tokens``) and the same log-probs (``max_logprob_diff``). Both ways run with the
same torch threads; after a warm-up call the two alternate ``--repeats`` times, the best time
counts. The policy is a fresh tiny Qwen2 (rows decode to the limit) unless ``--model DIR``.

``python -m bench.sampler [--threads 1] [--output F]`` writes ``bench/results/sampler.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.decode import _policy_dir, _prompts

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "bench" / "results" / "sampler.json"


@contextlib.contextmanager
def sampler_service(model_dir: Path, workdir: Path, *, weights_root: Path | None = None, threads: int = 1,
                    log_level: str = "INFO") -> Iterator[str]:
    """``rlyard serve sampler`` over ``model_dir`` in its own process on 127.0.0.1 (a free port),
    loading the versions published under ``weights_root`` when given; yields its address once it
    listens. At exit it is stopped with SIGTERM; a service that then exits non-zero is an error. Its
    log goes to ``workdir/sampler.log`` (a pipe nobody reads would block it once full)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready, log = workdir / "sampler-ready.json", workdir / "sampler.log"
    ready.unlink(missing_ok=True)
    env = {**os.environ, "RLYARD_HOST": "127.0.0.1", "RLYARD_PORT": "0", "RLYARD_READY_FILE": str(ready),
           "RLYARD_LOG_LEVEL": log_level, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads),
           "RLYARD_SAMPLER_POLICY_DIR": str(model_dir)}
    if weights_root is not None:
        env.update(RLYARD_SAMPLER_WEIGHTS_ROOT=str(weights_root), RLYARD_SAMPLER_POLL_S="0.1")
    with log.open("wb") as err:
        server = subprocess.Popen([sys.executable, "-c", "from rlyard_app.cli.serve import run_service; "
                                   "run_service('sampler')"], cwd=REPO, env=env, stderr=err)

    def tail() -> str:
        return log.read_text(errors="replace")[-2000:]

    def stop() -> int:
        server.send_signal(signal.SIGTERM)
        try:
            return server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
            return -signal.SIGKILL

    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if server.poll() is not None:
                raise RuntimeError(f"the sampler service exited {server.returncode}: {tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError("the sampler service did not start listening within 120 s")
            time.sleep(0.05)
        yield f"127.0.0.1:{json.loads(ready.read_text())['port']}"
    except BaseException:
        stop()
        raise
    code = stop()
    if code != 0:
        raise RuntimeError(f"the sampler service exited {code} when stopped: {tail()}")


async def measure(model_dir: Path, address: str, batch: int, max_new_tokens: int, repeats: int,
                  progress: Progress) -> dict[str, Any]:
    from trainer.policy.base import SamplingParams
    from trainer.policy.hf import HFPolicy
    from trainer.sampler import LocalSampler, SampleRequest, derive_seed
    from trainer.sampler.remote import RemoteSampler

    policy = HFPolicy(model_dir)
    stop = tuple(policy.tokenizer.convert_tokens_to_ids(["<|im_end|>"]))
    prompts = _prompts(policy.tokenizer, batch)
    requests = [SampleRequest(p, SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, stop_token_ids=stop,
                                                seed=derive_seed(1, 0, i // 8, i % 8, 0)))
                for i, p in enumerate(prompts)]
    ways: dict[str, Any] = {"in_process": LocalSampler(policy),
                            "service": RemoteSampler(address, retry_window_s=120, timeout_s=600)}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    outputs: dict[str, list[Any]] = {}
    task = progress.add_task("warm-up + repeats (both ways)", total=2 * (repeats + 1))
    try:
        for rep in range(repeats + 1):        # the first round warms up
            for name, sampler in ways.items():
                tic = time.perf_counter()
                outputs[name] = list(await asyncio.gather(*(sampler.sample(r) for r in requests)))
                if rep:
                    seconds[name].append(time.perf_counter() - tic)
                progress.advance(task)
    finally:
        for sampler in ways.values():
            await sampler.aclose()
    results: dict[str, Any] = {}
    for name in ways:
        n = sum(len(g.token_ids) for g in outputs[name])
        best = min(seconds[name])
        results[name] = {"seconds": [round(s, 3) for s in seconds[name]], "best_seconds": round(best, 3),
                         "generated_tokens": n, "tokens_per_s": round(n / best, 1),
                         "longest_row": max(len(g.token_ids) for g in outputs[name]),
                         "weight_versions": sorted({g.weight_version for g in outputs[name]})}
    local, remote = outputs["in_process"], outputs["service"]
    results["ratio"] = round(results["service"]["tokens_per_s"] / results["in_process"]["tokens_per_s"], 3)
    results["same_tokens"] = [g.token_ids for g in local] == [g.token_ids for g in remote]
    results["max_logprob_diff"] = max((abs(a - b) for x, y in zip(local, remote, strict=True)
                                       for a, b in zip(x.logprobs, y.logprobs, strict=False)), default=0.0)
    results["ways"] = ways["service"].calls, ways["service"].rows
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="a checkpoint (default: a fresh, untrained tiny Qwen2)")
    parser.add_argument("--batch", type=int, default=64, help="rows (the demo: 8 questions x 8 samples)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each way")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ns = parser.parse_args(argv)
    console = Console()
    torch.set_num_threads(ns.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = ns.model or _policy_dir(Path(tmp))
        with sampler_service(model_dir, Path(tmp), threads=ns.threads, log_level="WARNING") as address, \
                Progress(console=console, transient=True) as progress:
            results = asyncio.run(measure(model_dir, address, ns.batch, ns.max_new_tokens, ns.repeats, progress))
    calls, rows = results.pop("ways")
    report = {
        "benchmark": "sampler",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": ns.threads, "python": platform.python_version(),
                    "torch": torch.__version__, "loadavg_1m": round(os.getloadavg()[0], 2)},
        "config": {"model": str(ns.model or "fresh tiny qwen2"), "batch": ns.batch,
                   "max_new_tokens": ns.max_new_tokens, "repeats": ns.repeats,
                   "service_messages": calls, "service_rows": rows},
        **results,
    }
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(report, indent=2) + "\n")
    table = Table("way", "best s", "tokens", "tokens/s", "longest row")
    for way in ("in_process", "service"):
        r = results[way]
        table.add_row(way, f"{r['best_seconds']:.2f}", str(r["generated_tokens"]), f"{r['tokens_per_s']:.0f}",
                      str(r["longest_row"]))
    console.print(table)
    console.print(f"service / in-process: {results['ratio']:.3f}×; same tokens: {results['same_tokens']}; "
                  f"max log-prob diff {results['max_logprob_diff']:.2e}; wrote {ns.output}")
    return 0 if results["same_tokens"] else 1


if __name__ == "__main__":
    sys.exit(main())
