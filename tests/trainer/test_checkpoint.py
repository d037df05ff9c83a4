"""Checkpoints: atomic, pruned, and a resumed run ends with the same parameters as an
uninterrupted one — including after SIGKILL of a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from trainer.checkpoint import latest_checkpoint, restore_checkpoint, save_checkpoint, seed_everything

ROOT = Path(__file__).resolve().parents[2]

# A small training script: random data drawn from the RNGs (so RNG state matters), AdamW,
# a LR schedule; it checkpoints every step and can SIGKILL itself after a given step.
SCRIPT = textwrap.dedent('''
    import os, signal, sys, torch
    from pathlib import Path
    from trainer.checkpoint import latest_checkpoint, restore_checkpoint, save_checkpoint, seed_everything
    ckpt_dir, steps, kill_after = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    seed_everything(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    start = 0
    ckpt = latest_checkpoint(ckpt_dir)
    if ckpt is not None:
        start = restore_checkpoint(ckpt, model=model, optimizer=opt, scheduler=sched)["step"]
    for step in range(start + 1, steps + 1):
        x = torch.randn(32, 8)
        loss = (model(x).squeeze(-1) - x.sum(-1)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        save_checkpoint(ckpt_dir, step, model=model, optimizer=opt, scheduler=sched,
                        trainer_state={"cursor": step * 32}, keep=2)
        if step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save(model.state_dict(), ckpt_dir / "final.pt")
''')


def _run(tmp: Path, ckpt_dir: Path, steps: int, kill_after: int) -> int:
    script = tmp / "train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(script), str(ckpt_dir), str(steps), str(kill_after)],
                          env=env, timeout=120, capture_output=True, text=True)
    return proc.returncode


def test_sigkill_mid_run_then_resume_gives_the_same_final_parameters(tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _run(tmp_path, straight, steps=10, kill_after=-1) == 0
    assert _run(tmp_path, killed, steps=10, kill_after=4) == -signal.SIGKILL
    assert not (killed / "final.pt").exists()
    ckpt = latest_checkpoint(killed)
    assert ckpt is not None and ckpt.step == 4 and ckpt.trainer_state["cursor"] == 128
    assert _run(tmp_path, killed, steps=10, kill_after=-1) == 0
    a = torch.load(straight / "final.pt")
    b = torch.load(killed / "final.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # only the newest `keep` checkpoints remain
    assert sorted(p.name for p in killed.glob("step-*")) == ["step-00000009", "step-00000010"]


def test_half_written_checkpoint_is_ignored(tmp_path: Path) -> None:
    seed_everything(1)
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path, 5, model=model, trainer_state={"stage": "rl"})
    (tmp_path / "step-00000006.tmp").mkdir()   # a writer killed mid-way
    (tmp_path / "step-00000006.tmp" / "model.pt").write_bytes(b"garbage")
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.step == 5
    other = torch.nn.Linear(3, 2)
    state = restore_checkpoint(ckpt, model=other)
    assert state == {"step": 5, "stage": "rl"}
    assert torch.equal(other.weight, model.weight)
    assert json.loads((tmp_path / "step-00000005" / "trainer_state.json").read_text())["stage"] == "rl"


def test_no_checkpoint_yet(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
