"""The embedded launcher and the CLI for people, as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from launcher_support import RLYARD, ROOT, alive, rlyard_up, wait_for


@pytest.fixture
def up(tmp_path: Path):  # type: ignore[no-untyped-def]
    """`rlyard up --profile sql --ephemeral-ports` running in tmp_path: (Up, its state file's content)."""
    with rlyard_up(tmp_path, "sql") as launched:
        yield launched


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RLYARD, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_up_status_tool_and_clean_stop(tmp_path: Path, up) -> None:  # type: ignore[no-untyped-def]
    launched, state = up
    service = state["services"]["sql-tools"]
    child = int(service["pid"])
    assert alive(child)

    status = _run(tmp_path, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "SERVING" in status.stdout and "sql-tools" in status.stdout

    listed = _run(tmp_path, "tool", "list")
    assert listed.returncode == 0
    for name in ("sql_query", "list_tables", "describe_table"):
        assert name in listed.stdout

    called = _run(tmp_path, "tool", "call", "sql_query", '{"query": "SELECT count(*) FROM singer"}',
                  "--db", "concert_singer")
    assert called.returncode == 0, called.stderr
    assert "count(*)" in called.stdout and "6" in called.stdout

    refused = _run(tmp_path, "tool", "call", "sql_query", '{"query": "DELETE FROM singer"}', "--db", "concert_singer")
    assert refused.returncode == 1
    assert "refused" in refused.stdout

    as_json = _run(tmp_path, "tool", "call", "list_tables", "--db", "concert_singer", "--json")
    assert json.loads(as_json.stdout)["name"] == "list_tables"

    launched.proc.send_signal(signal.SIGINT)
    assert launched.exit_code(timeout=20) == 0, launched.output()
    assert "stopping" in launched.output()
    wait_for(lambda: not alive(child), 10, "the service process to exit")

    down = _run(tmp_path, "status", "--target", service["target"], "--timeout", "0.5")
    assert down.returncode == 1 and "UNREACHABLE" in down.stdout


def test_launcher_stops_everything_when_a_service_dies(tmp_path: Path, up) -> None:  # type: ignore[no-untyped-def]
    launched, state = up
    child = int(state["services"]["sql-tools"]["pid"])
    os.kill(child, signal.SIGKILL)
    assert launched.exit_code(timeout=20) == 1
    assert "sql-tools exited" in launched.output()


def test_killed_launcher_leaves_no_orphans(tmp_path: Path, up) -> None:  # type: ignore[no-untyped-def]
    launched, state = up
    proc = launched.proc
    child = int(state["services"]["sql-tools"]["pid"])
    proc.kill()  # SIGKILL: no cleanup code runs in the launcher
    proc.wait()
    wait_for(lambda: not alive(child), 15, "the orphaned service to die with its parent")


def test_service_that_fails_to_start_is_reported(tmp_path: Path) -> None:
    table = tmp_path / "services.yaml"
    table.write_text(
        "image: x\nservices:\n  - name: broken\n    kind: tools\n    port: 50999\n    metrics_port: 9999\n"
        "    profiles: [sql]\n    env:\n      RLYARD_TOOLS_TOOLS: no_such_tool\n"
    )
    result = subprocess.run(
        [*RLYARD, "--table", str(table), "up", "--profile", "sql", "--ephemeral-ports",
         "--log-dir", str(tmp_path / "logs")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "no_such_tool" in result.stdout + result.stderr


def test_unknown_profile_is_a_clear_error(tmp_path: Path) -> None:
    result = _run(tmp_path, "up", "--profile", "nope")
    assert result.returncode == 2
    assert "known profiles" in result.stderr


def test_tour_writes_a_report(tmp_path: Path) -> None:
    result = subprocess.run([*RLYARD, "tour", "--output-dir", str(tmp_path / "runs")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = list((tmp_path / "runs").glob("demo-*/report.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert [s["tool"] for s in report["session"]][:3] == ["list_tables", "describe_table", "sql_query"]
    assert report["session"][2]["output"].splitlines() == ["count(*)", "6"]
    assert report["spider_gold_batch"]["errors"] == 0
    assert [r["total"] for r in report["rewards"]] == [1.0, 1.0, 0.0]
    assert (reports[0].parent / "transcript.md").read_text().startswith("# rlyard demo transcript")


def test_trainer_service_starts_under_the_launcher(tmp_path: Path) -> None:
    from rlyard_app.launcher import Launcher, check_health
    from rlyard_app.services import load_table

    spec = load_table().get("trainer")
    with Launcher([spec], tmp_path / "logs", ephemeral_ports=True,
                  extra_env={"RLYARD_TRAINER_RUNS_DIR": str(tmp_path / "runs")}) as launcher:
        endpoint = launcher.start()["trainer"]
        assert check_health(endpoint.target, service="rlyard.trainer.v1.TrainerService") == "SERVING"
    assert launcher.dead()  # stopped with the launcher
