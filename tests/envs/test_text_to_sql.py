"""The text-to-SQL environment: loading, the schema from the real tools, tasks, task files,
demonstrations with real observations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envs.text_to_sql import (
    BIRD_REWARD_SPEC,
    REWARD_SPEC,
    SPIDER_DB_DIR,
    SQL_TOOLS,
    SqlItem,
    demonstrations,
    load_bird,
    load_spider,
    make_task,
    schema_text,
    write_task_jsonl,
)
from reward_service.catalog import REWARD_MODULES
from rlyard.domain import parse_spec
from rlyard.errors import ConfigError
from tool_servers.local import tool_schemas
from trainer.tasks import load_tasks


def test_load_spider_dev() -> None:
    items = load_spider()
    assert len(items) == 1026
    assert items[0] == SqlItem("concert_singer", "How many singers do we have?", "SELECT count(*) FROM singer")


def test_load_spider_refuses_a_missing_database(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    path.write_text(json.dumps([{"db_id": "no_such_db", "question": "q", "query": "SELECT 1"}]))
    with pytest.raises(ConfigError, match="no_such_db"):
        load_spider(path, SPIDER_DB_DIR)
    assert load_spider(path, None)[0].db_id == "no_such_db"


def test_load_bird(tmp_path: Path) -> None:
    path = tmp_path / "bird_dev.json"
    path.write_text(json.dumps([
        {"question_id": 0, "db_id": "concert_singer", "question": "How many French singers?",
         "evidence": "French refers to Country = 'France'",
         "SQL": "SELECT count(*) FROM singer WHERE Country = 'France'", "difficulty": "simple"},
        {"question_id": 1, "db_id": "concert_singer", "question": "Oldest singer?", "evidence": "",
         "SQL": "SELECT Name FROM singer ORDER BY Age DESC LIMIT 1"},
    ]))
    items = load_bird(path, SPIDER_DB_DIR)
    assert items[0] == SqlItem("concert_singer", "How many French singers?",
                               "SELECT count(*) FROM singer WHERE Country = 'France'",
                               "French refers to Country = 'France'")
    assert items[1].evidence == ""
    task = make_task(items[0], tool_schemas(SQL_TOOLS))
    assert "Evidence: French refers to Country = 'France'" in task.messages[1]["content"]
    assert task.ground_truth == {"db_id": "concert_singer", "query": items[0].query}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"db_id": "x", "question": "q"}]))
    with pytest.raises(ConfigError, match=r"SQL|query"):
        load_bird(bad)


def test_schema_text_of_concert_singer() -> None:
    text = schema_text(SPIDER_DB_DIR, "concert_singer")
    for table in ("stadium", "singer", "concert", "singer_in_concert"):
        assert f"CREATE TABLE {table} (" in text
    assert "Stadium_ID INTEGER PRIMARY KEY" in text
    assert "Song_release_year TEXT" in text
    assert "FOREIGN KEY (Stadium_ID) REFERENCES stadium(Stadium_ID)" in text
    assert "FOREIGN KEY (Singer_ID) REFERENCES singer(Singer_ID)" in text
    assert "PRIMARY KEY (concert_ID, Singer_ID)" in text
    assert "-- 6 rows" in text          # singer has 6 rows


def test_reward_spec_names_registered_rewards() -> None:
    for spec in (REWARD_SPEC, BIRD_REWARD_SPEC):
        names = {t.name for t in parse_spec(spec).terms}
        assert names == {"sql_execution", "format"} and names <= set(REWARD_MODULES)


def test_make_task() -> None:
    item = load_spider()[0]
    task = make_task(item, tool_schemas(SQL_TOOLS), task_id="t0", max_tool_calls=4)
    system, user = task.messages
    assert system["role"] == "system" and user["role"] == "user"
    for word in ("sql_query", "list_tables", "describe_table", "<think>", "<tool_call>", "<answer>",
                 "at most 4 tool calls", "concert_singer"):
        assert word in system["content"]
    assert user["content"].startswith("Question: How many singers do we have?")
    assert "CREATE TABLE singer (" in user["content"]
    assert task.context == {"db_id": "concert_singer"}
    assert task.ground_truth == {"db_id": "concert_singer", "query": "SELECT count(*) FROM singer"}
    assert [t["function"]["name"] for t in task.tools] == ["sql_query", "list_tables", "describe_table"]
    bare = make_task(item, tool_schemas(SQL_TOOLS), include_schema=False)
    assert "CREATE TABLE" not in bare.messages[1]["content"]
    assert bare.task_id == make_task(item, tool_schemas(SQL_TOOLS), include_schema=False).task_id  # stable ids


def test_task_jsonl_round_trip(tmp_path: Path) -> None:
    items = load_spider()[:5]
    path = write_task_jsonl(items, tmp_path / "tasks.jsonl", max_tool_calls=6)
    tools = tool_schemas(SQL_TOOLS)
    tasks = load_tasks(path, tools)
    assert [t.task_id for t in tasks] == [f"spider-{i}" for i in range(5)]
    direct = make_task(items[3], tools, task_id="spider-3")
    assert tasks[3].messages == direct.messages
    assert tasks[3].context == {"db_id": items[3].db_id}
    assert tasks[3].ground_truth == {"db_id": items[3].db_id, "query": items[3].query}
    assert tasks[3].tools == tools


def test_demonstrations_have_real_observations() -> None:
    items = load_spider()[:4]
    demos = demonstrations(items, SPIDER_DB_DIR, error_every=2)
    assert len(demos) == 4
    first = demos[0]["messages"]
    roles = [m["role"] for m in first]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert "no such table" in first[3]["content"]                   # the failing query's real error
    assert first[4]["tool_calls"][0]["function"]["arguments"] == {"query": items[0].query}
    assert first[5]["content"].splitlines() == ["count(*)", "6"]    # the gold query's real rows
    assert first[-1]["content"].endswith(f"<answer>{items[0].query}</answer>")
    second = demos[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool", "assistant"]
    assert "6" in second[3]["content"]
    assert {t["function"]["name"] for t in demos[0]["tools"]} == {"sql_query", "list_tables", "describe_table"}
