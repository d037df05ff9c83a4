"""The composition root: embedded services of a run serving the local-life POI tools (a real
tool server over a real generated corpus, ready when the stack opens, wired to the embedded reward
service), its clear errors, the config's embedded settings, and the sampler backends it refuses."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from envs.local_services.poi_corpus import build_corpus
from rlyard.errors import ConfigError
from rlyard.server import WarmUpError
from rlyard_app.launcher import check_health
from trainer import compose
from trainer.config import parse_config
from trainer.sampler import BACKENDS, check_backend

POI_TOOLS = ("search", "poi_detail", "nearby")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("poi")
    build_corpus(folder, seed=0, merchants=600)
    return folder


def _config(services: dict[str, Any], stages: list[dict[str, Any]] | None = None) -> Any:
    return parse_config({"name": "compose", "services": services,
                         "stages": stages or [{"kind": "sft", "data": "demos.jsonl", "steps": 1}]})


def test_embedded_poi_tools_are_served_ready_and_reach_the_reward_service(corpus_dir: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    config = _config({"timeout_s": 10, "embedded": {
        "tools": list(POI_TOOLS), "families": {"poi": {"dir": str(corpus_dir), "index_dir": str(index_dir)}}}})
    with compose.open_stack(config) as stack:
        services = stack.services
        assert check_health(services.tools) == "SERVING"      # opened only after the warm-up
        assert any(index_dir.iterdir())                       # search built its BM25 index there
        assert sorted(t["function"]["name"] for t in stack.tools) == sorted(POI_TOOLS)

        conn_db = sqlite3.connect(corpus_dir / "poi.sqlite")
        try:
            (poi_id, name, address), = conn_db.execute(
                "SELECT poi_id, name, address FROM poi ORDER BY rowid LIMIT 1 OFFSET 5").fetchall()
        finally:
            conn_db.close()
        result = stack.run(stack.tool_client.call_tool("poi_detail", {"poi_id": poi_id}))
        assert not result.is_error, result.text
        record = result.structured
        assert (record["poi_id"], record["name"], record["address"]) == (poi_id, name, address)

        # The embedded reward service reads POI (and SQL) data through this tool server.
        settings = services.reward_settings
        assert settings is not None
        assert settings.poi_tools_target == settings.sql_tools_target == services.tools
        assert services.tool_settings is not None and services.tool_settings.tools == POI_TOOLS
        [poi] = services.families
        assert (poi.dir, poi.index_dir) == (corpus_dir, index_dir)


def test_warm_up_failure_and_timeout_are_clear_errors(corpus_dir: Path, tmp_path: Path) -> None:
    missing = _config({"embedded": {"tools": ["search"], "families": {"poi": {"dir": str(tmp_path / "none")}}}})
    with pytest.raises(WarmUpError, match=r"embedded tool server \(search\) did not start.*no POI corpus"):
        with compose.open_stack(missing):
            pass
    cold = _config({"embedded": {"tools": ["search"], "ready_timeout_s": 0.001, "families": {
        "poi": {"dir": str(corpus_dir), "index_dir": str(tmp_path / "cold")}}}})
    with pytest.raises(TimeoutError, match=r"not SERVING after 0 s of warm-up.*python -m tool_servers.poi"):
        with compose.open_stack(cold):
            pass


@pytest.mark.parametrize(("services", "message"), [
    ({"embedded": {"tools": ["sql_querry"]}}, "unknown tool(s) sql_querry; available: "),
    ({"embedded": {"families": {"vision": {}}}}, "unknown tool family 'vision'; families: image, poi, sql"),
    ({"embedded": {"families": {"sql": {"db_dri": "x"}}}}, "tool family sql: unknown setting(s) db_dri; valid: "),
    ({"embedded": {"families": {"sql": {"max_rows": 0}}}}, "RLYARD_TOOLS_SQL_MAX_ROWS must be >= 1"),
    ({"embedded": {"reward": {"batch_concurrency": "many"}}}, "batch_concurrency='many': expected int"),
])
def test_embedded_settings_are_checked_before_anything_starts(services: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose.check(_config(services))
    assert message in str(info.value)


def test_settings_of_a_given_service_are_refused_not_ignored() -> None:
    with pytest.raises(ConfigError, match=r"configures the embedded tool server, but services\.tools is"):
        _config({"tools": "127.0.0.1:50051", "embedded": {"tools": ["search"]}})
    with pytest.raises(ConfigError, match="unknown key\\(s\\) tool_names"):
        _config({"tool_names": ["search"]})


def test_an_rl_stage_needs_an_existing_task_file(tmp_path: Path) -> None:
    rl = {"kind": "rl", "steps": 1, "reward": {"qa_em": 1.0}}
    with pytest.raises(ConfigError, match=re.escape("an rl stage needs `tasks: {path: FILE}`")):
        _config({}, [rl])
    config = _config({}, [{**rl, "tasks": {"path": str(tmp_path / "nope.jsonl")}}])
    with pytest.raises(ConfigError, match=r"nope\.jsonl does not exist"):
        compose.check(config)


def test_the_embedded_memory_services_settings_are_checked_before_anything_starts(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"task_id": "a", "question": "q"}\n')
    rl = {"kind": "rl", "steps": 1, "reward": {"qa_em": 1.0}, "tasks": {"path": str(tasks)}}
    config = parse_config({"name": "compose", "stages": [rl],
                           "memory": {"enabled": True, "embedded": {"db_urll": "sqlite:///m.db"}}})
    with pytest.raises(ConfigError, match=r"memory.embedded: unknown setting\(s\) db_urll; valid: db_url"):
        compose.check(config)
    config = parse_config({"name": "compose", "stages": [rl],
                           "memory": {"enabled": True, "embedded": {"max_top_k": 0}}})
    with pytest.raises(ConfigError, match="RLYARD_MEMORY_MAX_TOP_K must be >= 1"):
        compose.check(config)
    # a given memory service is not configured here: nothing to check, nothing refused
    compose.check(parse_config({"name": "compose", "stages": [rl], "memory": {"enabled": True,
                                                                               "target": "127.0.0.1:1"}}))


def test_an_unknown_or_unavailable_sampler_backend_is_refused_when_the_config_loads() -> None:
    stage = [{"kind": "sft", "data": "d.jsonl", "steps": 1}]
    with pytest.raises(ConfigError, match=r"model\.backend 'vllm2' is not a sampler backend; known: hf, remote, vllm"):
        parse_config({"name": "b", "model": {"backend": "vllm2"}, "stages": stage})
    import importlib.util

    with pytest.raises(ConfigError) as info:
        parse_config({"name": "b", "model": {"backend": "vllm"}, "stages": stage})
    if importlib.util.find_spec("vllm") is None:    # this machine: says what to install
        assert "model.backend 'vllm' needs vllm, which is not installed here: pip install 'rlyard[gpu]'" in str(
            info.value)
    else:                                           # a GPU machine: not silently replaced by hf either
        assert "is not available in this version" in str(info.value)
    assert check_backend("hf") is BACKENDS["hf"]


def test_an_embedded_reward_service_may_call_what_the_runs_specs_name() -> None:
    """The reward service refuses tool servers and judges it is not configured with (issue 19); the
    one a run embeds allows those the run's own reward specs name, composites included."""
    from rlyard.domain import parse_spec
    from trainer import embedded

    specs = [{"qa_em": 1.0, "judge": {"weight": 0.1, "endpoint": "http://127.0.0.1:9/v1", "model": "grader"}},
             parse_spec({"composite": {"terms": {"sql_execution": {"weight": 1, "tool_server": "db-tools:50051"}}}})]
    assert embedded.named_targets(specs) == {"allowed_tool_targets": ("db-tools:50051",),
                                             "allowed_judge_endpoints": ("http://127.0.0.1:9/v1",),
                                             "allowed_judge_checkpoints": ("grader",)}
    from trainer.config import ServicesConfig

    settings = embedded._reward_settings(ServicesConfig(), "127.0.0.1:5", specs)
    assert "db-tools:50051" in settings.tool_targets and "127.0.0.1:5" in settings.tool_targets
    assert "http://127.0.0.1:9/v1" in settings.judge_endpoints
