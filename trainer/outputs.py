"""What every run leaves in its directory.

- ``metrics.jsonl``: one JSON object per training step (``stage``, ``step``, ``global_step``,
  then the step's metrics); on resume the lines after the checkpoint are dropped, so the file
  never holds a step twice.
- ``curves/*.png``: loss, reward, accuracy (when a metric name holds "accuracy"), tokens/s and,
  with the graph memory on, reward with and without memory and its hit rate, against the global
  step (matplotlib, Agg backend).
- ``samples.md``: sample trajectories of RL stages, readable: roles, tool calls, observations, reward,
  the graph memory's meta-cognitions its prompt showed (ids and text); the images a tool returned
  are written beside it (``samples/``) and shown in place.
- ``report.json``: run id, config, stages, steps, final metrics, wall time, seed, state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlyard.domain import ImagePart
from trainer.types import RolloutTrajectory

__all__ = ["MetricsLog", "plot_curves", "render_trajectory", "write_report", "write_samples"]

METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.json"
SAMPLES_FILE = "samples.md"
SAMPLE_IMAGES_DIR = "samples"
CURVES_DIR = "curves"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends one line per step to ``run_dir/metrics.jsonl``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS_FILE

    def truncate_after(self, global_step: int) -> None:
        """Drop lines past ``global_step`` (written after the checkpoint a run resumes from)."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("global_step", 0) <= global_step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def append(self, record: dict[str, Any]) -> None:
        """Write one step's record (non-finite floats become null)."""
        with self.path.open("a") as fh:
            fh.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """All records so far."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_curves(run_dir: Path, records: Sequence[dict[str, Any]]) -> list[Path]:
    """Write one PNG per curve that has data; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in records for k, v in r.items() if isinstance(v, int | float)})
    curves: dict[str, list[str]] = {
        "loss": [k for k in ("loss",) if k in keys],
        "reward": [k for k in keys if k == "reward_mean" or k.startswith("reward/")],
        "accuracy": [k for k in keys if "accuracy" in k],
        "tokens_per_s": [k for k in ("tokens_per_s",) if k in keys],
        # the graph memory: reward with and without it (the ablation's halves) and its hit rate
        "memory": [k for k in ("memory/reward_with", "memory/reward_without", "memory/hit_rate") if k in keys],
    }
    out_dir = run_dir / CURVES_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, series in curves.items():
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in series:
            points = [(r["global_step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="." if len(points) < 50 else None, label=key)
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))


_IMAGE_SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}


def _image_links(images: Sequence[ImagePart], image_dir: Path | None, stem: str) -> list[str]:
    """Markdown image links to ``images`` written under ``image_dir`` (or their descriptions)."""
    lines = []
    for k, image in enumerate(images):
        if image_dir is None:
            lines.append(f"- {image.placeholder()}")
            continue
        image_dir.mkdir(parents=True, exist_ok=True)
        path = image_dir / f"{stem}-{k}{_IMAGE_SUFFIX.get(image.mime_type, '.bin')}"
        path.write_bytes(image.data)
        lines.append(f"- ![{image.image_id or 'image'} {image.width}x{image.height}]({image_dir.name}/{path.name})")
    return lines


def render_trajectory(traj: RolloutTrajectory, tokenizer: Any = None, image_dir: Path | None = None,
                      image_stem: str = "") -> str:
    """Markdown for one trajectory: its turns (from ``record``, else decoded token runs) and reward;
    images of tool results are written to ``image_dir`` and linked (else described)."""
    reward = "n/a" if traj.reward is None else f"{traj.reward:.4g}"
    lines = [f"### task `{traj.task.task_id}` · group {traj.group_id} · sample {traj.sample_index}",
             f"status **{traj.status}** · reward **{reward}** · tool calls {traj.num_tool_calls}"]
    if traj.reward_components:
        lines.append("components: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(traj.reward_components.items())))
    if traj.infra_error:
        lines.append(f"infra error: {traj.infra_error}")
    if traj.memories:
        lines.append("memories shown:")
        lines.extend(f"- `{m.meta_cognition.id}` (utility {m.meta_cognition.utility:.3g}, score {m.score:.3g}): "
                     f"{' '.join(m.meta_cognition.text.split())}" for m in traj.memories)
    lines.append("")
    if traj.record.turns:
        for turn in traj.record.turns:
            lines.append(f"**{turn.role}**:")
            lines.append("```text\n" + turn.text.strip() + "\n```")
            for call in turn.tool_calls:
                lines.append(f"- tool call `{call.name}` {call.arguments_json}")
            for n, res in enumerate(turn.tool_results):
                flag = " (error)" if res.is_error else ""
                lines.append(f"- observation from `{res.name}`{flag}:\n```text\n{res.text.strip()}\n```")
                stem = f"{image_stem or traj.task.task_id}-t{turn.index}-r{n}"
                lines.extend(_image_links(res.images, image_dir, _safe(stem)))
    else:
        for message in traj.task.messages:
            lines.append(f"**{message.get('role', '?')}**:\n```text\n{str(message.get('content', '')).strip()}\n```")
        if tokenizer is not None:
            # Runs of generated (mask 1) and observation (mask 0) tokens, as the policy saw them.
            start = 0
            for i in range(1, len(traj.token_ids) + 1):
                if i == len(traj.token_ids) or traj.loss_mask[i] != traj.loss_mask[start]:
                    role = "assistant" if traj.loss_mask[start] else "observation"
                    lines.append(f"**{role}**:\n```text\n{_decode(tokenizer, traj.token_ids[start:i])}\n```")
                    start = i
    if traj.final_answer:
        lines.append(f"final answer: `{traj.final_answer}`")
    return "\n".join(lines) + "\n"


def write_samples(
    run_dir: Path, stage: str, step: int, trajectories: Sequence[RolloutTrajectory], tokenizer: Any = None
) -> None:
    """Append the given trajectories under a heading for (stage, step) to ``samples.md``."""
    path = run_dir / SAMPLES_FILE
    parts = [f"## {stage} · step {step}\n"] + [
        render_trajectory(t, tokenizer, run_dir / SAMPLE_IMAGES_DIR, f"{stage}-{step}-g{t.group_id}-s{t.sample_index}")
        for t in trajectories
    ]
    with path.open("a") as fh:
        fh.write("\n".join(parts) + "\n")


def _safe(name: str) -> str:
    """A file-name-safe form of ``name``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120]


def write_report(run_dir: Path, report: dict[str, Any]) -> Path:
    """Write ``report.json`` atomically."""
    path = run_dir / REPORT_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)
    return path
