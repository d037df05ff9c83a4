"""What the tests of `rlyard up` share: the CLI as a child process, its output read as it comes,
and the profile started in a temporary directory with free ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RLYARD = [sys.executable, "-m", "rlyard_app.cli.main"]


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Up:
    """A running `rlyard up`: the process, its state file, and its output, read as it comes (a
    reader thread, so the pipe never fills) with Python's fault handler on, so that a launcher that
    hangs can be made to print every thread's stack."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        if self.proc.poll() is not None:
            self.reader.join(timeout=5)
        return "".join(self.lines)

    def exit_code(self, timeout: float) -> int:
        """The exit code within ``timeout``; else the thread stacks (SIGABRT → faulthandler) in the failure."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            raise AssertionError(f"rlyard up did not exit within {timeout}s; its output, then its threads' "
                                 f"stacks (faulthandler on SIGABRT):\n{self.output()}") from None


@contextmanager
def rlyard_up(tmp_path: Path, profile: str, timeout: float = 60) -> Iterator[tuple[Up, dict[str, Any]]]:
    """`rlyard up --profile PROFILE --ephemeral-ports` running in ``tmp_path``: (Up, its state
    file's content) once every service is SERVING; killed on exit if still running."""
    proc = subprocess.Popen(
        [*RLYARD, "up", "--profile", profile, "--ephemeral-ports", "--log-dir", str(tmp_path / "logs")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    launched = Up(proc)
    state = tmp_path / ".rlyard" / "up.json"
    try:
        wait_for(lambda: state.exists() or proc.poll() is not None, timeout, "rlyard up to report its services")
        assert proc.poll() is None, launched.output()
        yield launched, json.loads(state.read_text())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
