"""What goes over the broker: a group job in, a finished group out, as JSON-safe dicts.

Token ids, loss masks, regions and behaviour log-probs travel as JSON lists (a Python float
survives ``json`` exactly, so the off-policy ratio sees the log-probs the sampler returned);
images as base64 inside their protobuf JSON form; the readable record (``Trajectory``) through its
protobuf converter. ``from_json`` refuses a payload of another wire version, or a malformed one,
with a ``WireError`` that names the field.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from rlyard.common.v1 import common_pb2
from rlyard.domain import ImagePart, Task, TrajectoryStatus
from rlyard.domain.convert import trajectory_from_pb, trajectory_to_pb
from trainer.config import RolloutConfig
from trainer.types import RolloutTrajectory

WIRE_VERSION = 1

# RolloutConfig fields a job carries (the nested dynamic-sampling, selection and workers configs
# are the trainer's business: a worker rolls out one group and needs none of them)
_ROLLOUT_FIELDS = tuple(f.name for f in dataclasses.fields(RolloutConfig)
                        if f.name not in ("dynamic_sampling", "selection", "workers"))


class WireError(ValueError):
    """A job or result payload that is not what this version sends."""


def _image_to_json(image: ImagePart) -> dict[str, Any]:
    return {"data": base64.b64encode(image.data).decode("ascii"), "mime_type": image.mime_type,
            "width": image.width, "height": image.height, "image_id": image.image_id}


def _image_from_json(obj: dict[str, Any]) -> ImagePart:
    return ImagePart(base64.b64decode(obj["data"]), str(obj["mime_type"]), int(obj["width"]), int(obj["height"]),
                     str(obj.get("image_id", "")))


def task_to_json(task: Task) -> dict[str, Any]:
    """``task`` as a JSON-safe dict (its ground truth must be JSON already: it comes from JSONL)."""
    return {"task_id": task.task_id, "messages": task.messages, "tools": task.tools, "context": task.context,
            "ground_truth": task.ground_truth, "attachments": [_image_to_json(a) for a in task.attachments],
            "labels": task.labels}


def task_from_json(obj: dict[str, Any]) -> Task:
    """The inverse of ``task_to_json``."""
    return Task(task_id=str(obj["task_id"]), messages=list(obj["messages"]), tools=list(obj.get("tools", [])),
                context={str(k): str(v) for k, v in obj.get("context", {}).items()},
                ground_truth=obj.get("ground_truth"),
                attachments=tuple(_image_from_json(a) for a in obj.get("attachments", [])),
                labels={str(k): str(v) for k, v in obj.get("labels", {}).items()})


def trajectory_to_json(t: RolloutTrajectory) -> dict[str, Any]:
    """A rolled-out (and maybe scored) trajectory without its task (the group carries it once)."""
    return {
        "group_id": t.group_id, "sample_index": t.sample_index, "prompt_ids": t.prompt_ids,
        "token_ids": t.token_ids, "loss_mask": t.loss_mask, "old_logprobs": t.old_logprobs, "regions": t.regions,
        "record": json_format.MessageToDict(trajectory_to_pb(t.record), preserving_proto_field_name=True),
        "status": t.status.value, "final_answer": t.final_answer, "num_tool_calls": t.num_tool_calls,
        "tool_latency_ms": t.tool_latency_ms, "infra_error": t.infra_error, "reward": t.reward,
        "reward_components": t.reward_components, "images": [_image_to_json(i) for i in t.images],
        "weight_versions": sorted(t.weight_versions), "vision": t.vision,
    }


def trajectory_from_json(obj: dict[str, Any], task: Task) -> RolloutTrajectory:
    """The inverse of ``trajectory_to_json`` for a trajectory of ``task``."""
    pb = json_format.ParseDict(obj["record"], common_pb2.Trajectory())
    t = RolloutTrajectory(
        task=task, group_id=int(obj["group_id"]), sample_index=int(obj["sample_index"]),
        prompt_ids=[int(x) for x in obj["prompt_ids"]], token_ids=[int(x) for x in obj["token_ids"]],
        loss_mask=[int(x) for x in obj["loss_mask"]], old_logprobs=[float(x) for x in obj["old_logprobs"]],
        regions=[int(x) for x in obj["regions"]], record=trajectory_from_pb(pb),
        status=TrajectoryStatus(obj["status"]), final_answer=str(obj["final_answer"]),
        num_tool_calls=int(obj["num_tool_calls"]), tool_latency_ms=[float(x) for x in obj["tool_latency_ms"]],
        infra_error=str(obj["infra_error"]), reward=None if obj["reward"] is None else float(obj["reward"]),
        reward_components={str(k): float(v) for k, v in obj["reward_components"].items()},
        images=[_image_from_json(i) for i in obj["images"]],
        weight_versions={int(v) for v in obj["weight_versions"]}, vision=bool(obj["vision"]),
    )
    t.check_aligned()
    return t


@dataclass(frozen=True)
class GroupJob:
    """One group to roll out on a worker: ``group_size`` samples of ``task``.

    ``key`` is the group's idempotency key (also the Celery task id): a redelivered job has the
    same key, and the trainer takes one result per key. ``sampler`` names a sampler kind and its
    options (``trainer.workers.samplers``); ``weight_version`` is the version the trainer had when
    it submitted the job (the sampler's own version is what the trajectories record). ``tools`` and
    ``reward`` are gRPC targets; without ``reward`` the group comes back unscored (evaluation
    jobs score elsewhere). ``reward_spec`` is the stage's spec (``{name: weight}`` or a list).
    Tokens are the worker's own (``WorkerSettings``): a job carries no secret through the broker.
    """

    key: str
    task: Task
    group_size: int
    rollout: RolloutConfig
    sampler: dict[str, Any]
    tools: str
    weight_version: int = 0
    step: int = 0
    group_id: int = 0
    seed: int = 0
    reward: str = ""
    reward_spec: Any = None
    tool_timeout_s: float = 30.0
    reward_timeout_s: float = 120.0
    submitted_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("GroupJob.key is empty: every group needs an idempotency key")
        if self.group_size < 1:
            raise ValueError(f"GroupJob.group_size={self.group_size}: must be >= 1")
        if "kind" not in self.sampler:
            raise ValueError(f"GroupJob.sampler {self.sampler!r} names no kind (e.g. {{'kind': 'remote', ...}})")
        if self.reward and self.reward_spec is None:
            raise ValueError("GroupJob: a reward target without a reward_spec; give the stage's reward spec")

    def to_json(self) -> dict[str, Any]:
        """The job as the Celery task's one argument."""
        return {
            "wire": WIRE_VERSION, "key": self.key, "task": task_to_json(self.task), "group_size": self.group_size,
            "rollout": {name: getattr(self.rollout, name) for name in _ROLLOUT_FIELDS},
            "sampler": self.sampler, "tools": self.tools, "weight_version": self.weight_version, "step": self.step,
            "group_id": self.group_id, "seed": self.seed, "reward": self.reward, "reward_spec": self.reward_spec,
            "tool_timeout_s": self.tool_timeout_s, "reward_timeout_s": self.reward_timeout_s,
            "submitted_at": self.submitted_at,
        }

    @classmethod
    def from_json(cls, obj: Any) -> GroupJob:
        """The job back from ``to_json``; WireError for another wire version or a bad field."""
        _check_wire(obj, "job")
        try:
            return cls(key=str(obj["key"]), task=task_from_json(obj["task"]), group_size=int(obj["group_size"]),
                       rollout=RolloutConfig(**obj["rollout"]), sampler=dict(obj["sampler"]), tools=str(obj["tools"]),
                       weight_version=int(obj["weight_version"]), step=int(obj["step"]),
                       group_id=int(obj["group_id"]), seed=int(obj["seed"]), reward=str(obj["reward"]),
                       reward_spec=obj["reward_spec"], tool_timeout_s=float(obj["tool_timeout_s"]),
                       reward_timeout_s=float(obj["reward_timeout_s"]),
                       submitted_at=float(obj.get("submitted_at", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"group job: {type(exc).__name__}: {exc}") from None


@dataclass
class GroupResult:
    """A finished group as the worker sends it back: the trajectories (scored when the job named
    a reward service), which attempt at the key produced it (> 1: the group was redelivered and
    redone), the worker's name, and its timings."""

    key: str
    trajectories: list[RolloutTrajectory]
    attempt: int = 1
    worker: str = ""
    rollout_seconds: float = 0.0
    score_seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def weight_versions(self) -> set[int]:
        """Every weight version that sampled a token of the group."""
        return {v for t in self.trajectories for v in t.weight_versions}

    def to_json(self) -> dict[str, Any]:
        """The Celery task's return value (without the task: the trainer keeps the task of each key)."""
        return {"wire": WIRE_VERSION, "key": self.key, "attempt": self.attempt, "worker": self.worker,
                "rollout_seconds": self.rollout_seconds, "score_seconds": self.score_seconds,
                "counts": self.counts, "trajectories": [trajectory_to_json(t) for t in self.trajectories]}

    @classmethod
    def from_json(cls, obj: Any, task: Task) -> GroupResult:
        """The result back, its trajectories attached to ``task``; WireError for a bad payload."""
        _check_wire(obj, "result")
        try:
            return cls(key=str(obj["key"]), attempt=int(obj["attempt"]), worker=str(obj["worker"]),
                       rollout_seconds=float(obj["rollout_seconds"]), score_seconds=float(obj["score_seconds"]),
                       counts={str(k): int(v) for k, v in obj["counts"].items()},
                       trajectories=[trajectory_from_json(t, task) for t in obj["trajectories"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"group result: {type(exc).__name__}: {exc}") from None


def _check_wire(obj: Any, what: str) -> None:
    if not isinstance(obj, dict):
        raise WireError(f"group {what}: expected a JSON object, got {type(obj).__name__}")
    if obj.get("wire") != WIRE_VERSION:
        raise WireError(f"group {what}: wire version {obj.get('wire')!r}, this version speaks {WIRE_VERSION}; "
                        "run trainer and workers of the same rlyard version")
