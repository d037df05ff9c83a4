"""How much faster does the tiny policy sample through ``FastDecoder`` than through transformers?

``HFPolicy.generate`` on the same prompts with the same seed, once with ``fast_decode=True`` (the
default for Qwen2/Llama: ``trainer/policy/fast_decode.py``) and once with ``fast_decode=False``
(the transformers forward with its dynamic cache). The prompts are the demo's: ``--batch`` rows
(default 64, a GRPO step's 8 questions × 8 samples) of its compact text-to-SQL prompt (~90
tokens), temperature 1, up to ``--max-new-tokens`` (default 200, the demo's per-turn limit), rows
leaving the batch as they end their turn. The policy is a fresh tiny Qwen2 (``init_policy``), whose
rows rarely end a turn (the full batch decodes to the limit); ``--model DIR`` samples from a trained
checkpoint instead (e.g. a demo run's ``models/sft``: rows end at their own lengths). Each mode runs
``--repeats`` times after one warm-up call; the best time counts. Both modes must produce the same
tokens (checked: ``same_tokens``), since they sample the same logits with the same generator.

``python -m bench.decode [--threads 2] [--output F]`` writes ``bench/results/decode.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "bench" / "results" / "decode.json"


def _policy_dir(tmp: Path) -> Path:
    """A fresh tiny Qwen2 (untrained: its rows rarely end a turn, so every row decodes to the limit)."""
    from trainer.model.build import init_policy

    out = tmp / "policy"
    init_policy(out, size="tiny", seed=0)
    return out


def _prompts(tokenizer: Any, batch: int) -> list[list[int]]:
    from experiments.sql_learning import system_prompt

    questions = ["How much does a visit to 'Peak Performance (Qingyang)' cost per person on average?",
                 "Which 'Escape Room' merchants in 'Wuhan' are open at '22:00' on Saturday?",
                 "How many merchants are there in the 'Xihu' district?",
                 "What is the phone number of 'Boba Garden (Xuanwu)'?"]
    rows = []
    for i in range(batch):
        messages = [{"role": "system", "content": system_prompt(3)},
                    {"role": "user", "content": questions[i % len(questions)]}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        rows.append(tokenizer.encode(text, add_special_tokens=False))
    return rows


def run(model_dir: Path, batch: int, max_new_tokens: int, repeats: int) -> dict[str, Any]:
    from trainer.policy.base import SamplingParams
    from trainer.policy.hf import HFPolicy

    results: dict[str, Any] = {}
    tokens: dict[str, list[list[int]]] = {}
    for mode, fast in (("transformers", False), ("fast_decode", True)):
        policy = HFPolicy(model_dir, fast_decode=fast)
        prompts = _prompts(policy.tokenizer, batch)
        params = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens,
                                stop_token_ids=tuple(policy.tokenizer.convert_tokens_to_ids(["<|im_end|>"])), seed=1)
        policy.generate(prompts, params)                      # warm-up
        seconds = []
        for _ in range(repeats):
            tic = time.perf_counter()
            out = policy.generate(prompts, params)
            seconds.append(time.perf_counter() - tic)
        tokens[mode] = [g.token_ids for g in out]
        n = sum(len(t) for t in tokens[mode])
        best = min(seconds)
        results[mode] = {"seconds": [round(s, 3) for s in seconds], "best_seconds": round(best, 3),
                         "generated_tokens": n, "tokens_per_s": round(n / best, 1),
                         "longest_row": max(len(t) for t in tokens[mode])}
    results["speedup"] = round(results["transformers"]["best_seconds"] / results["fast_decode"]["best_seconds"], 3)
    results["same_tokens"] = tokens["transformers"] == tokens["fast_decode"]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="a checkpoint (default: a fresh, untrained tiny Qwen2)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the demo uses the machine's cores)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ns = parser.parse_args(argv)
    console = Console()
    torch.set_num_threads(ns.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = ns.model or _policy_dir(Path(tmp))
        results = run(model_dir, ns.batch, ns.max_new_tokens, ns.repeats)
    report = {
        "benchmark": "decode",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": ns.threads, "python": platform.python_version(),
                    "torch": torch.__version__, "loadavg_1m": round(os.getloadavg()[0], 2)},
        "config": {"model": str(ns.model or "fresh tiny qwen2"), "batch": ns.batch,
                   "max_new_tokens": ns.max_new_tokens, "repeats": ns.repeats},
        **results,
    }
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(report, indent=2) + "\n")
    table = Table("mode", "best s", "tokens", "tokens/s", "longest row")
    for mode in ("transformers", "fast_decode"):
        r = results[mode]
        table.add_row(mode, f"{r['best_seconds']:.2f}", str(r["generated_tokens"]), f"{r['tokens_per_s']:.0f}",
                      str(r["longest_row"]))
    console.print(table)
    console.print(f"speedup {results['speedup']:.2f}×, same tokens: {results['same_tokens']}; wrote {ns.output}")
    return 0 if results["same_tokens"] else 1


if __name__ == "__main__":
    sys.exit(main())
