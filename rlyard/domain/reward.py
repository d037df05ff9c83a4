"""Reward specs, the items a reward service scores and what it answers, as plain records."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from rlyard.domain.trajectory import Trajectory
from rlyard.errors import InvalidArgument


@dataclass(frozen=True)
class RewardTerm:
    """One reward of a spec: its name, weight and parameters."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RewardSpec:
    """A weighted sum of rewards, e.g. ``{sql_execution: 1.0, format: 0.1}``.

    Accepted forms (JSON or YAML, from the CLI, a config or protobuf)::

        {"sql_execution": 1.0, "format": 0.1}
        {"sql_execution": {"weight": 1.0, "semantics": "bird"}, "format": 0.1}
        [{"name": "qa_f1", "weight": 1.0, "params": {}}]
    """

    terms: tuple[RewardTerm, ...]

    def __post_init__(self) -> None:
        check_terms(self.terms)

    def to_jsonable(self) -> list[dict[str, Any]]:
        """The list form (round-trips through ``parse_spec``)."""
        return [{"name": t.name, "weight": t.weight, "params": t.params} for t in self.terms]


def check_terms(terms: tuple[RewardTerm, ...]) -> None:
    """Refuse a reward named twice, NaN or infinite numbers in weights and params, and weights
    whose magnitudes add up past the largest float: a non-finite total would poison the
    advantages of every trajectory it touches.

    Raises:
        InvalidArgument: naming the reward and the weight.
    """
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"the reward spec names a reward twice: {names}")
    for t in terms:
        if not math.isfinite(t.weight):
            raise InvalidArgument(f"reward {t.name!r}: weight {t.weight} is not a finite number")
        bad = _non_finite(t.params)
        if bad is not None:
            raise InvalidArgument(f"reward {t.name!r}: params.{bad} is not a finite number")
    if not math.isfinite(sum(abs(t.weight) for t in terms)):
        raise InvalidArgument(f"the reward spec's weights {[t.weight for t in terms]} add up past the largest float; "
                              "use weights of a sensible size")


def _non_finite(params: Any) -> str | None:
    """The path of the first NaN or infinite float in ``params`` (YAML can hold them), or None."""
    stack: list[tuple[Any, str]] = [(params, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return where or "(value)"
        if isinstance(node, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in node.items())
        elif isinstance(node, list | tuple):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(node))
    return None


def _term(name: str, value: Any) -> RewardTerm:
    if isinstance(value, bool) or not isinstance(value, int | float | dict):
        raise InvalidArgument(f"reward {name!r}: give a weight (number) or {{\"weight\": w, ...params}}")
    params: dict[str, Any] = {}
    weight: Any = value
    if isinstance(value, dict):
        params = dict(value)
        weight = params.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise InvalidArgument(f"reward {name!r}: weight must be a number")
    try:
        return RewardTerm(name, float(weight), params)
    except OverflowError:  # an integer past the largest float
        raise InvalidArgument(f"reward {name!r}: weight is not a finite number") from None


def parse_spec(obj: Any) -> RewardSpec:
    """A ``RewardSpec`` from the mapping or list form; InvalidArgument says what is wrong."""
    if isinstance(obj, RewardSpec):
        return obj
    if isinstance(obj, dict):
        terms = [_term(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, list):
        terms = []
        for entry in obj:
            if not isinstance(entry, dict) or "name" not in entry:
                raise InvalidArgument(f"spec entry {entry!r} needs a 'name'")
            params = entry.get("params") or {}
            if not isinstance(params, dict):
                raise InvalidArgument(f"reward {entry['name']!r}: params must be an object")
            terms.append(_term(str(entry["name"]), {"weight": entry.get("weight", 1.0), **params}))
    else:
        raise InvalidArgument("a reward spec is a mapping {name: weight} or a list of {name, weight, params}")
    if not terms:
        raise InvalidArgument("the reward spec names no reward")
    return RewardSpec(tuple(terms))


def load_spec(text_or_path: str) -> RewardSpec:
    """A spec from inline JSON/YAML text or from a file holding it."""
    path = Path(text_or_path)
    text = path.read_text() if len(text_or_path) < 4096 and path.is_file() else text_or_path
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidArgument(f"the reward spec is neither JSON nor YAML: {exc}") from None
    return parse_spec(obj)


@dataclass(frozen=True)
class ScoringItem:
    """One thing to score: a prediction and/or a trajectory, with its ground truth."""

    item_id: str = ""
    prediction: str = ""
    trajectory: Trajectory | None = None
    ground_truth: Any = None
    training_step: int = 0

    @property
    def text(self) -> str:
        """What text rewards read: the prediction, else the trajectory's final answer,
        else everything the policy generated."""
        if self.prediction:
            return self.prediction
        if self.trajectory is not None:
            return self.trajectory.final_answer or self.trajectory.response_text
        return ""

    @property
    def response_text(self) -> str:
        """The whole generated response (for format rewards): the trajectory's assistant
        text when there is one, else the prediction."""
        if self.trajectory is not None and self.trajectory.assistant_turns:
            return self.trajectory.response_text
        return self.prediction


class ScoreStatus(StrEnum):
    """Whether an item (or one reward of it) could be scored."""

    OK = "OK"
    SYSTEM_ERROR = "SYSTEM_ERROR"      # a dependency failed: the trainer drops the trajectory
    INVALID_INPUT = "INVALID_INPUT"    # the item lacks what a reward needs: a bug of the caller's data


@dataclass
class ComponentScore:
    """One reward's result for one item (``value`` unweighted)."""

    name: str
    value: float
    weight: float
    explanation: str = ""
    status: ScoreStatus = ScoreStatus.OK


@dataclass
class StepScore:
    """A weighted per-turn reward of one component."""

    turn_index: int
    value: float
    component: str


@dataclass
class ScoreResult:
    """The result for one item: the weighted total and its parts."""

    item_id: str
    total: float
    components: list[ComponentScore] = field(default_factory=list)
    step_rewards: list[StepScore] = field(default_factory=list)
    explanation: str = ""
    status: ScoreStatus = ScoreStatus.OK
    error: str = ""

    @property
    def values(self) -> dict[str, float]:
        """Each component's unweighted value by name."""
        return {c.name: c.value for c in self.components}

    def to_jsonable(self) -> dict[str, Any]:
        """The CLI's output form."""
        out: dict[str, Any] = {"total": self.total, "components": self.values, "status": str(self.status)}
        if self.step_rewards:
            out["step_rewards"] = [
                {"turn_index": s.turn_index, "value": s.value, "component": s.component} for s in self.step_rewards
            ]
        if self.explanation:
            out["explanation"] = self.explanation
        if self.error:
            out["error"] = self.error
        return out
