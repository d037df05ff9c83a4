"""Embedded services of a run serving the local-life POI tools: a real tool server over a real
generated corpus, started by ``ServiceConnections`` from the experiment config's ``services:``,
ready (SERVING, index built) when entered, and wired to the embedded reward service."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from envs.local_services.poi_corpus import build_corpus
from rlyard.launcher import check_health
from rlyard.server import WarmUpError
from trainer.config import parse_config
from trainer.connections import ServiceConnections
from trainer.wiring import RLServices

POI_TOOLS = ("search", "poi_detail", "nearby")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("poi")
    build_corpus(folder, seed=0, merchants=600)
    return folder


def test_embedded_poi_tools_are_served_ready_and_reach_the_reward_service(corpus_dir: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    with ServiceConnections(tool_names=POI_TOOLS, poi_dir=corpus_dir, poi_index_dir=index_dir, timeout_s=10) as conn:
        assert conn.thread is not None and conn.tool_client is not None and conn.embedded is not None
        assert check_health(conn.tools_target) == "SERVING"      # entered only after the warm-up
        assert any(index_dir.iterdir())                          # search built its BM25 index there
        assert sorted(t["function"]["name"] for t in conn.tools) == sorted(POI_TOOLS)

        conn_db = sqlite3.connect(corpus_dir / "poi.sqlite")
        try:
            (poi_id, name, address), = conn_db.execute(
                "SELECT poi_id, name, address FROM poi ORDER BY rowid LIMIT 1 OFFSET 5").fetchall()
        finally:
            conn_db.close()
        result = conn.thread.run(conn.tool_client.call_tool("poi_detail", {"poi_id": poi_id}))
        assert not result.is_error, result.content[0].text
        record = json.loads(result.structured_json)
        assert (record["poi_id"], record["name"], record["address"]) == (poi_id, name, address)

        # The embedded reward service reads POI (and SQL) data through this tool server.
        settings = conn.embedded.reward_settings
        assert settings is not None
        assert settings.poi_tools_target == settings.sql_tools_target == conn.tools_target
        assert conn.embedded.tool_settings is not None and conn.embedded.tool_settings.tools == POI_TOOLS


def test_warm_up_failure_and_timeout_are_clear_errors(corpus_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(WarmUpError, match=r"embedded tool server \(search\) did not start.*poi_dir="):
        with ServiceConnections(tool_names=["search"], poi_dir=tmp_path / "no-corpus"):
            pass
    with pytest.raises(TimeoutError, match=r"not SERVING after 0 s of warm-up.*python -m tool_servers.poi"):
        with ServiceConnections(tool_names=["search"], poi_dir=corpus_dir, poi_index_dir=tmp_path / "cold",
                                ready_timeout_s=0):
            pass


def test_the_experiment_config_carries_the_embedded_tool_server_settings(tmp_path: Path) -> None:
    config = parse_config({
        "name": "local-life",
        "services": {"tool_names": list(POI_TOOLS), "poi_dir": str(tmp_path / "poi")},
        "stages": [{"kind": "sft", "data": "demos.jsonl", "steps": 1}],
    })
    assert config.services.tool_names == POI_TOOLS
    rl = RLServices(config)          # not entered: nothing starts
    assert (rl.tool_names, rl.poi_dir, rl.poi_index_dir) == (POI_TOOLS, tmp_path / "poi", tmp_path / "poi" / "index")
