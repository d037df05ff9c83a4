"""The IMAgent bar: a scripted policy that zooms where the tiles are, and reads the answer from the
pixels the real tool server returns, answers >= 90% of held-out questions; the same reader on the
input-resolution previews alone is within 10 points of chance. Everything runs through the
composition root of configs/imagent.yaml: the embedded tool server (the image family) and reward
service on 127.0.0.1 (port 0), the local sampler, the rollout engine and ``trainer.evaluate``; then
``rlyard eval`` on the same tasks with the tiny VLM prints the three metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from envs.vision.imagent import REWARD_SPEC, oracle_boxes
from envs.vision.imagent import main as write_tasks
from envs.vision.imagent_scripted import ScriptedImagentPolicy
from rlyard.domain import Task
from trainer.compose import Stack, open_stack
from trainer.config import ExperimentConfig, parse_config
from trainer.evaluate import evaluate
from trainer.model import init_policy

ROOT = Path(__file__).resolve().parents[2]
N_HELDOUT = 40


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imagent")
    write_tasks(["--out", str(out), "--n-train", "4", "--n-heldout", str(N_HELDOUT), "--seed", "0"])
    init_policy(out / "policy", vision=True)
    return out


def imagent_config(data: Path) -> ExperimentConfig:
    raw: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "imagent.yaml").read_text())
    return parse_config(json.loads(json.dumps(raw).replace("data/generated/imagent", str(data))), "imagent.yaml")


@pytest.fixture(scope="module")
def stack(data: Path) -> Iterator[Stack]:
    with open_stack(imagent_config(data)) as s:
        assert s.services.tools.startswith("127.0.0.1:")
        assert {t["function"]["name"] for t in s.tools} >= {"zoom", "crop", "revisit"}
        yield s


@pytest.fixture(scope="module")
def heldout(stack: Stack, data: Path) -> list[Task]:
    return stack.tasks(data / "heldout.jsonl")


def _run(stack: Stack, data: Path, tasks: list[Task], use_tools: bool) -> Any:
    from transformers import AutoTokenizer

    policy = ScriptedImagentPolicy(AutoTokenizer.from_pretrained(data / "policy"), tasks, use_tools=use_tools)
    rollout = imagent_config(data).stages[1].rollout
    return evaluate(policy, tasks, stack, reward_spec=REWARD_SPEC, rollout_config=rollout, max_tool_calls=2)


def test_scripted_zoom_policy_reads_the_answer_after_zooming(stack: Stack, data: Path, heldout: list[Task]) -> None:
    report = _run(stack, data, heldout, use_tools=True)
    chance = sum(t.ground_truth["chance"] for t in heldout) / len(heldout)
    print(f"\nscripted with tools: accuracy {report.execution_accuracy:.3f} on {report.n} held-out questions "
          f"(chance {chance:.3f}), tool calls/question {report.mean_tool_calls:.2f}, "
          f"answered after a zoom {report.answered_after_zoom:.3f}")
    assert report.n == N_HELDOUT and report.infra_failures == 0
    assert report.execution_accuracy >= 0.9
    assert report.answered_after_zoom == 1.0
    assert report.mean_tool_calls == pytest.approx(
        sum(len(oracle_boxes(t.ground_truth)) for t in heldout) / len(heldout))
    assert report.env == "imagent" and report.metrics["qa_em"] == report.execution_accuracy
    for result in report.results:          # every zoom went through the tool server and came back
        assert result.turns == 2 and result.status == "COMPLETED"


def test_the_same_reader_without_tools_is_near_chance(stack: Stack, data: Path, heldout: list[Task]) -> None:
    report = _run(stack, data, heldout, use_tools=False)
    chance = sum(t.ground_truth["chance"] for t in heldout) / len(heldout)
    print(f"\nscripted without tools: accuracy {report.execution_accuracy:.3f} (chance {chance:.3f})")
    assert report.mean_tool_calls == 0 and report.answered_after_zoom == 0.0
    assert abs(report.execution_accuracy - chance) <= 0.10


def test_rlyard_eval_prints_accuracy_tool_calls_and_answers_after_a_zoom(
        stack: Stack, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rlyard_app.cli.main import main

    config = tmp_path / "imagent.yaml"
    config.write_text((ROOT / "configs" / "imagent.yaml").read_text().replace("data/generated/imagent", str(data)))
    out = tmp_path / "eval.json"
    code = main(["eval", "-c", str(config), "--tasks", str(data / "heldout.jsonl"), "--limit", "1",
                 "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    print(printed)
    for row in ("accuracy", "tool calls / task", "answered after a zoom"):
        assert row in printed
    assert "execution accuracy" not in printed
    report = json.loads(out.read_text())
    assert report["env"] == "imagent" and report["n"] == 1
    assert report["settings"]["reward_spec"] == REWARD_SPEC
    assert report["settings"]["max_tool_calls"] == 2                # the stage's max_turns - 1
    assert 0.0 <= report["answered_after_zoom"] <= 1.0
