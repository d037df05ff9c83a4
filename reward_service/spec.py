"""Reward specs: which rewards, with which weights and parameters.

Accepted forms (JSON or YAML, from the CLI, a config or ``RewardSpec`` protobuf)::

    {"sql_execution": 1.0, "format": 0.1}
    {"sql_execution": {"weight": 1.0, "semantics": "bird"}, "format": 0.1}
    [{"name": "qa_f1", "weight": 1.0, "params": {}}]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlyard.errors import InvalidArgument


@dataclass(frozen=True)
class Term:
    """One reward of a spec."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Spec:
    """A weighted sum of rewards."""

    terms: tuple[Term, ...]

    def to_jsonable(self) -> list[dict[str, Any]]:
        """The list form (round-trips through ``parse_spec``)."""
        return [{"name": t.name, "weight": t.weight, "params": t.params} for t in self.terms]


def _term(name: str, value: Any) -> Term:
    if isinstance(value, bool) or not isinstance(value, int | float | dict):
        raise InvalidArgument(f"reward {name!r}: give a weight (number) or {{\"weight\": w, ...params}}")
    if isinstance(value, dict):
        params = dict(value)
        weight = params.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise InvalidArgument(f"reward {name!r}: weight must be a number")
        return Term(name, float(weight), params)
    return Term(name, float(value))


def parse_spec(obj: Any) -> Spec:
    """A ``Spec`` from the mapping or list form; InvalidArgument says what is wrong."""
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
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"the reward spec names a reward twice: {names}")
    return Spec(tuple(terms))


def load_spec(text_or_path: str) -> Spec:
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
