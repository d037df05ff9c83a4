"""A tiny policy for the local-life environment: the environment's folder (corpus, tasks,
demonstrations), then a tokenizer that learned the project corpus plus the demonstrations with
their place names cut out, a fresh tiny policy, and at most ``copy_steps`` of the copying warm-up.

    python -m experiments.local_life --out data/generated/local_life [--copy-steps 600]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from envs.local_life.env import Prepared, add_arguments, prepare_from_args
from envs.local_services.database import place_neutral


def build_policy(prepared: Prepared, *, size: str = "tiny", seed: int = 0, copy_steps: int = 0,
                 on_progress: Callable[[str], None] | None = None) -> Path:
    """``prepared.root/policy``: a fresh tiny policy given at most ``copy_steps`` of the copying
    warm-up (as the text-to-SQL demo: it ends once the policy copies; 0 = none)."""
    import json

    from experiments.copy_warmup import copy_warmup_checkpoint
    from trainer.model.build import init_policy
    from trainer.model.corpus import DEFAULT_CORPUS_FILE, render_chat

    say = on_progress or (lambda _msg: None)
    say("training the tokenizer and building the tiny policy")
    demos = [json.loads(line) for line in prepared.demos.read_text(encoding="utf-8").splitlines() if line.strip()]
    corpus = prepared.root / "corpus.txt"
    # The demonstrations with their place names cut out (as the text-to-SQL demo's tokenizer):
    # train and held-out places are spelled in the same kind of pieces.
    corpus.write_text("\n".join([DEFAULT_CORPUS_FILE.read_text(encoding="utf-8"),
                                 *(place_neutral(render_chat(d["messages"])) for d in demos)]), encoding="utf-8")
    policy_dir = prepared.root / "policy"
    init_policy(policy_dir, size=size, seed=seed, corpus=corpus)
    if copy_steps:
        say(f"copying warm-up (at most {copy_steps} steps)")
        copy_warmup_checkpoint(policy_dir, corpus, steps=copy_steps, seed=seed)
    return policy_dir


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.local_life --out DIR [--copy-steps N] ...``."""
    from rich.console import Console

    parser = argparse.ArgumentParser(prog="python -m experiments.local_life", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--copy-steps", type=int, default=600,
                        help="at most this many copying warm-up steps (ends once it copies; 0 = none)")
    ns = parser.parse_args(argv)
    console = Console()
    with console.status("preparing the local-life environment…") as status:
        def say(msg: str) -> None:
            status.update(f"{msg}…")

        got = prepare_from_args(ns, on_progress=say)
        policy = build_policy(got, seed=ns.seed, copy_steps=ns.copy_steps, on_progress=say)
    console.print(f"{got.n_train} RL tasks: {got.train_tasks}\n{got.n_heldout} held-out tasks: {got.heldout_tasks}\n"
                  f"{got.n_demos} demonstrations: {got.demos}\npolicy: {policy}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
