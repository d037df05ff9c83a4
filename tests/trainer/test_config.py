"""Experiment configs: typed, checked, and every error says how to fix it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rlyard.errors import ConfigError
from trainer.algorithms import FilterConfig
from trainer.config import ExperimentConfig, load_config, parse_config

GOOD: dict[str, Any] = {
    "name": "sql-grpo",
    "seed": 3,
    "model": {"path": "runs/policy"},
    "stages": [
        {"kind": "sft", "name": "warm", "data": "data/sft.jsonl", "steps": 100},
        {"kind": "rl", "steps": 300, "reward": {"sql_execution": 1.0}, "tasks": {"path": "data/tasks.jsonl"},
         "rollout": {"group_size": 8, "prompts_per_step": 8, "max_turns": 6},
         "algorithm": {"kl_coef": 0, "clip_high": 0.28, "filters": {"drop_truncated": True}},
         "optim": {"lr": 1e-4}},
    ],
}


def test_a_good_config_builds_nested_typed_dataclasses(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    config = load_config(path)
    assert isinstance(config, ExperimentConfig)
    sft, rl = config.stages
    assert (sft.kind, sft.name, sft.steps) == ("sft", "warm", 100)
    assert rl.rollout.batch_size == 64
    assert rl.algorithm.kl_coef == 0.0 and isinstance(rl.algorithm.kl_coef, float)
    assert rl.algorithm.clip_high == 0.28 and rl.algorithm.filters.drop_truncated is True
    assert rl.algorithm.filters.drop_equal_reward_groups is True  # default kept
    # the YAML section is the trajectory filter's own settings, not a copy mapped by hand
    assert isinstance(rl.algorithm.filters, FilterConfig) and rl.algorithm.filters.uniform_atol == 1e-6
    assert config.seed == 3 and config.checkpoint.every_steps == 50
    assert rl.rollout.max_calls_per_tool_per_turn == 0                      # no limit
    assert config.services.embedded.tools == () and config.services.embedded.families == {}  # the default SQL tools
    assert config.model.backend == "hf"


def test_services_name_the_embedded_tools_in_a_yaml_list(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(
        "name: local-life\n"
        "services:\n"
        "  timeout_s: 60\n"
        "  embedded: {tools: [search, poi_detail, nearby], families: {poi: {dir: data/generated/poi}}}\n"
        "stages:\n"
        "  - {kind: rl, steps: 1, reward: {sql_execution: 1.0}, tasks: {path: t.jsonl},\n"
        "     rollout: {group_size: 2, prompts_per_step: 4, max_calls_per_tool_per_turn: 1},\n"
        "     algorithm: {micro_batch_size: 4}}\n"
    )
    config = load_config(path)
    assert config.services.embedded.tools == ("search", "poi_detail", "nearby")
    assert config.services.embedded.families == {"poi": {"dir": "data/generated/poi"}}
    assert config.stages[0].rollout.max_calls_per_tool_per_turn == 1


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    import copy

    raw = copy.deepcopy(GOOD)
    node: Any = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    "path, value, message",
    [
        (["stages", 1, "rollout", "group_size"], 1, "group_size: GRPO compares samples within a group; use >= 2"),
        (["stages", 1, "algorithm", "micro_batch_size"], 7, "not divisible by algorithm.micro_batch_size 7"),
        (["stages", 1, "optim", "lr"], 3.0, "typical values are 1e-5 to 3e-4"),
        (["stages", 1, "reward"], {}, "needs `reward:`"),
        (["stages", 0, "data"], "", "needs `data:`"),
        (["stages", 1, "algorithm", "loss_agg"], "mean", "is not one of"),
        (["stages", 1, "algorithm", "token_weighting"], "rest-schedule", "needs loss_agg 'weighted-token-mean'"),
        (["stages", 1, "algorithm", "filters"], {"uniform_atol": -1},
         "stages[1].algorithm.filters: uniform_atol=-1.0: must be ≥ 0"),
        (["stages", 1, "algorithm", "filters"], {"drop_uniform_groups": False},
         "unknown key(s) drop_uniform_groups; valid keys: drop_equal_reward_groups, drop_format_errors"),
        (["stages", 1, "rollout", "temperature"], 0, "must be > 0"),
        (["stages", 1, "rollout", "max_new_tokens_per_turn"], 5000, "exceeds max_total_tokens"),
        (["stages", 1, "rollout", "grup_size"], 8, "unknown key(s) grup_size; valid keys:"),
        (["stages", 1, "rollout", "max_calls_per_tool_per_turn"], -1, "must be >= 0 (0 = no limit"),
        (["services"], {"embedded": {"tools": "search,nearby"}}, "services.embedded.tools: expected a list"),
        (["services"], {"embedded": {"tools": ["search", "search"]}}, "names a tool twice"),
        (["services"], {"embedded": {"families": ["poi"]}}, "services.embedded.families: expected a mapping"),
        (["services"], {"tools": "10.0.0.5:50055", "embedded": {"families": {"poi": {"dir": "data/poi"}}}},
         "services.embedded: configures the embedded tool server"),
        (["services"], {"tool_names": ["search"]},
         "unknown key(s) tool_names; valid keys: embedded, max_failed_steps, retry_window_s, reward"),
        (["services"], {"retry_window_s": -1}, "services.retry_window_s: must be >= 0 seconds"),
        (["services"], {"max_failed_steps": 0}, "services.max_failed_steps: must be >= 1"),
        (["stages", 1, "tasks"], {"env": "text_to_sql"}, "unknown key(s) env; valid keys: limit, path"),
        (["model", "backend"], "vllm2", "is not a sampler backend; known: hf, remote, vllm"),
        (["model", "backend"], "remote", "model.sampler: backend remote needs the sampler service's address"),
        (["model", "sampler"], "127.0.0.1:50057", "model.sampler: only backend remote reads it"),
        (["stages", 1, "steps"], "many", "expected int"),
        (["stages"], [], "list at least one stage"),
        (["name"], "", "give the experiment a name"),
    ],
)
def test_bad_values_say_how_to_fix_them(path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_with(path, value))
    assert message in str(err.value)


def test_duplicate_stage_names_and_bad_yaml(tmp_path: Path) -> None:
    raw = _with(["stages", 1, "name"], "warm")
    raw["stages"][1]["kind"] = "rl"
    with pytest.raises(ConfigError, match="stage names must be unique"):
        parse_config(raw)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_the_memory_section_is_typed_and_off_by_default() -> None:
    assert parse_config(GOOD).memory.enabled is False
    memory = parse_config({**GOOD, "memory": {"enabled": True, "top_k": 4, "token_budget": 96,
                                              "task_type": "label:template", "learning_rate": 0.5,
                                              "distill": {"every": 3, "max_new": 2}}}).memory
    assert (memory.top_k, memory.token_budget, memory.task_type, memory.learning_rate) == (4, 96, "label:template", 0.5)
    assert memory.record and memory.ablation and memory.target == "" and memory.embedded == {}
    assert (memory.distill.every, memory.distill.min_paths, memory.distill.max_new) == (3, 0, 2)


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        ({"top_k": 0}, "memory.top_k: must be in [1, 64]"),
        ({"token_budget": 0}, "memory.token_budget: must be >= 1"),
        ({"task_type": "template"}, "memory.task_type: 'template': use label:<field>"),
        ({"task_type": "label:"}, "memory.task_type: 'label:': use label:<field>"),
        ({"learning_rate": -0.1}, "memory.learning_rate: must be >= 0"),
        ({"ablation": False, "learning_rate": 0.1}, "turn memory.ablation on or leave learning_rate at 0"),
        ({"target": "10.0.0.7:50053", "embedded": {"db_url": "sqlite:///m.db"}},
         "memory.embedded: configures the embedded memory service, but memory.target is '10.0.0.7:50053'"),
        ({"distill": {"every": -1}}, "memory.distill.every: must be >= 0 (0 = never"),
        ({"timeout_s": 0}, "memory.timeout_s: must be > 0 seconds"),
        ({"explore": -1.0}, "memory.explore: must be a finite number >= 0"),
        ({"explore": float("nan")}, "memory.explore: must be a finite number >= 0"),
        ({"explore": 0.5, "top_k": 2, "candidates": 1}, "memory.candidates: must be 0 (4 x top_k) or in [top_k, 256]"),
        ({"candidates": 8}, "memory.candidates: sets how many meta-cognitions the exploration chooses among"),
        ({"topk": 3}, "memory: unknown key(s) topk; valid keys: ablation, candidates, distill, embedded, enabled"),
    ],
)
def test_bad_memory_values_say_how_to_fix_them(memory: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**GOOD, "memory": {"enabled": True, **memory}})
    assert message in str(err.value)


def test_memory_needs_an_rl_stage() -> None:
    with pytest.raises(ConfigError, match="the memory serves RL stages and this config has none"):
        parse_config({**GOOD, "stages": GOOD["stages"][:1], "memory": {"enabled": True}})


def test_services_tools_may_name_replicas_and_a_malformed_list_is_refused() -> None:
    from trainer.config import ServicesConfig

    assert ServicesConfig(tools="10.0.0.1:50051,10.0.0.2:50051").tools.count(",") == 1
    assert ServicesConfig(tools="routed:///sql-tools-headless:50051").tools
    with pytest.raises(ConfigError, match=r"services.tools: .*'10.0.0.2' is not host:port"):
        ServicesConfig(tools="10.0.0.1:50051,10.0.0.2")
