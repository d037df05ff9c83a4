"""Distillation rules on hand-made decision paths."""

from __future__ import annotations

from memory_service.distill import Rules, answer_shape, candidates
from memory_service.store import StoredPath

DESCRIBE_FIRST = ("START", "TOOL_CALL:describe_table", "TOOL_OK", "TOOL_CALL:sql_query", "TOOL_OK", "ANSWER")
QUERY_ONLY = ("START", "TOOL_CALL:sql_query", "TOOL_ERROR", "ANSWER")
RULES = Rules(success_threshold=0.5, min_support=2, min_gap=0.25)


def _paths(*spec: tuple[tuple[str, ...], float, int]) -> list[StoredPath]:
    out = []
    for states, reward, n in spec:
        out += [StoredPath(f"p{len(out)}", states, reward, f"question {len(out) % 2}") for _ in range(n)]
    return [StoredPath(f"p{i}", p.states, p.reward, p.task_text) for i, p in enumerate(out)]


def test_paths_that_skipped_the_schema_and_failed_give_the_describe_first_advice() -> None:
    # 3 of 4 describe-first paths succeed; 1 of 5 query-only paths does
    paths = _paths((DESCRIBE_FIRST, 1.0, 3), (DESCRIBE_FIRST, 0.0, 1), (QUERY_ONLY, 0.0, 4), (QUERY_ONLY, 1.0, 1))
    found = {c.rule_key: c for c in candidates("sql", paths, RULES)}
    before = found["before:describe_table:sql_query"]
    assert before.text == ("For sql tasks, call describe_table before sql_query: paths that called sql_query "
                           "without it failed 4/5 times, against 1/4 with it.")
    assert before.source_path_ids == tuple(f"p{i}" for i in range(9))
    assert before.task_texts == ("question 0", "question 1")
    assert found["first:describe_table"].text.startswith("For sql tasks, begin by calling describe_table: 3/4")
    # the strongest evidence comes first: gap 0.75 - 0.2 = 0.55 on groups of 4 and 5 → 0.55 * 2 = 1.1
    assert candidates("sql", paths, RULES)[0].strength == max(c.strength for c in found.values())
    assert before.strength == (0.75 - 0.2) * 2
    # sql_query is in every path: no "avoid" advice can be told apart
    assert "avoid:sql_query" not in found


def test_nothing_fires_below_the_support_or_the_gap() -> None:
    few = _paths((DESCRIBE_FIRST, 1.0, 1), (QUERY_ONLY, 0.0, 3))
    assert not [c for c in candidates("sql", few, RULES) if c.rule_key.startswith("before:")]
    # 2/3 vs 1/2: a gap of 0.17 < 0.25
    close = _paths((DESCRIBE_FIRST, 1.0, 2), (DESCRIBE_FIRST, 0.0, 1), (QUERY_ONLY, 1.0, 1), (QUERY_ONLY, 0.0, 1))
    assert not [c for c in candidates("sql", close, RULES) if c.rule_key == "before:describe_table:sql_query"]


def test_retrying_after_an_error_and_answering_at_all_are_rules_too() -> None:
    retried = ("START", "TOOL_CALL:sql_query", "TOOL_ERROR", "TOOL_CALL:sql_query", "TOOL_OK", "ANSWER")
    gave_up = ("START", "TOOL_CALL:sql_query", "TOOL_ERROR", "TRUNCATED")
    infra = ("START", "TOOL_CALL:sql_query", "TOOL_FAILED", "INFRA_FAILED")
    paths = _paths((retried, 1.0, 3), (gave_up, 0.0, 3), (infra, 0.0, 5))
    found = {c.rule_key: c for c in candidates("", paths, RULES)}
    assert found["retry:sql_query"].text.endswith("3/3 paths that did succeeded, against 0/3 that stopped.")
    assert found["answer"].text == ("For these tasks, always finish with a final answer in the required format "
                                    "within the turn budget: 3/3 paths that did not failed.")
    # system failures are not the model's: the infra paths are in no group
    assert all(not {f"p{i}" for i in range(6, 11)} & set(c.source_path_ids) for c in found.values())


def test_an_answer_shape_blanks_the_values_and_keeps_the_query_skeleton() -> None:
    query = ("SELECT m.name, p.price FROM product AS p JOIN merchant AS m2 ON p.merchant_id = m2.merchant_id\n"
             "WHERE m.name = 'Xi''an Noodles' AND p.price < 35 AND r.rating >= 4.5 AND r.created_at LIKE '2023-%' "
             "ORDER BY p.price LIMIT 1")
    assert answer_shape(query) == ("SELECT m.name, p.price FROM product AS p JOIN merchant AS m2 ON p.merchant_id = "
                                   "m2.merchant_id WHERE m.name = '?' AND p.price < ? AND r.rating >= ? AND "
                                   "r.created_at LIKE '?' ORDER BY p.price LIMIT 1")
    assert answer_shape("  ") == "" and answer_shape("SELECT 1 " * 200) == ""


def test_the_most_frequent_successful_answer_shape_becomes_advice_with_the_skeleton() -> None:
    ok = ("START", "TOOL_CALL:sql_query", "TOOL_OK", "ANSWER")
    answers = ["SELECT phone FROM merchant WHERE name = 'A'", "SELECT phone FROM merchant WHERE name = 'B'",
               "SELECT phone FROM merchant WHERE name = 'C'", "SELECT phone FROM merchant_tbl WHERE name = 'D'",
               "SELECT phone FROM merchant_tbl WHERE name = 'E'", "SELECT phone FROM merchant WHERE name = 'F'"]
    rewards = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    paths = [StoredPath(f"p{i}", ok, r, f"question {i}", a)
             for i, (a, r) in enumerate(zip(answers, rewards, strict=True))]
    (shape,) = [c for c in candidates("merchant_phone", paths, RULES) if c.rule_key.startswith("shape:")]
    assert shape.text == ("For merchant_phone tasks, an answer of this shape succeeded (3/4 paths, against 0/2 of "
                          "the others); put in the task's own values for ?: SELECT phone FROM merchant WHERE name "
                          "= '?'")
    # 0.75 - 0 on groups of 4 and 2
    assert shape.strength == 0.75 * 2 ** 0.5 and shape.source_path_ids == ("p0", "p1", "p2", "p5", "p3", "p4")
    # without answers (or with one shape for everyone) there is nothing to tell apart
    blank = [StoredPath(p.id, p.states, p.reward, p.task_text) for p in paths]
    assert not [c for c in candidates("merchant_phone", blank, RULES) if c.rule_key.startswith("shape:")]
