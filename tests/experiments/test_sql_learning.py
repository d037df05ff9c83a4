"""The compact learning environment (experiments.sql_learning) and the copying warm-up, on real files."""

from __future__ import annotations

import json
import random
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from envs.local_services.database import database_path, load_pool, place_names, place_neutral, place_pattern
from envs.local_services.questions import HELDOUT_ONLY, HeldoutSizes, generate_split, sql_literals
from experiments.copy_warmup import copy_batch
from experiments.sql_learning import (
    PREPARE_VERSION,
    Prepared,
    StaleWorldError,
    demo_candidates,
    pick_demos,
    prepare,
    quote_values,
    system_prompt,
    task_cities,
)
from trainer.sft import load_sft_examples


def test_quote_values_writes_sql_literals_of_used_values_only() -> None:
    slots = {"city": "Xi'an", "category": "Hair Salon", "weekday": "Tuesday"}
    query = ("SELECT m.name FROM merchant AS m WHERE ci.name = 'Xi''an' AND c.name = 'Hair Salon' "
             "AND m.merchant_id NOT IN (SELECT merchant_id FROM opening_hours WHERE weekday = 1)")
    question = "Which Hair Salon merchants in Xi'an are closed on Tuesday?"
    assert quote_values(question, query, slots) == "Which 'Hair Salon' merchants in 'Xi''an' are closed on Tuesday?"
    # a value the SQL does not use as a literal (the city of a merchant question) stays as it is
    assert quote_values("How many merchants are there in the Jianye district of Nanjing?",
                        "SELECT COUNT(*) FROM merchant AS m JOIN district AS d ON m.district_id = d.district_id "
                        "WHERE d.name = 'Jianye'", {"district": "Jianye", "city": "Nanjing"}) == \
        "How many merchants are there in the 'Jianye' district of Nanjing?"
    # every occurrence, the longest value first, never inside a longer word
    assert quote_values("Which Gym merchants in Gymtown cost more than the average Gym merchant?",
                        "… c.name = 'Gym' …", {"category": "Gym"}) == \
        "Which 'Gym' merchants in Gymtown cost more than the average 'Gym' merchant?"
    assert quote_values("What is the phone number of Zen (Xihu)?", "name = 'Zen (Xihu)'",
                        {"merchant": "Zen (Xihu)", "district": "Xihu"}) == "What is the phone number of 'Zen (Xihu)'?"


def test_quoted_values_tokenize_identically_in_question_and_sql(prepared: Prepared) -> None:
    tok = AutoTokenizer.from_pretrained(prepared.policy)
    line = json.loads(prepared.heldout_tasks.read_text().splitlines()[3])
    question = line["messages"][1]["content"]
    literal = question[question.index("'"): question.rindex("'") + 1]
    assert f" {literal}" in line["ground_truth"]["query"]
    q_ids = tok.encode(question, add_special_tokens=False)
    lit_ids = tok.encode(f" {literal}", add_special_tokens=False)[:-1]   # the closing quote merges with what follows
    assert any(q_ids[i:i + len(lit_ids)] == lit_ids for i in range(len(q_ids))), (question, literal)


def test_pick_demos_round_robin_over_templates() -> None:
    train = [{"task_id": f"{t}{i}", "template": t} for t in "abc" for i in range(5 if t != "c" else 1)]
    picked = pick_demos(train, 7, seed=0)
    assert len(picked) == len({p["task_id"] for p in picked}) == 7
    counts = {t: sum(p["template"] == t for p in picked) for t in "abc"}
    assert counts == {"a": 3, "b": 3, "c": 1}
    assert len(pick_demos(train, 50, seed=0)) == len(train)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return prepare(tmp_path_factory.mktemp("learn"), seed=3, n_train=60, n_heldout_a=10, n_heldout_b=6, n_heldout_c=4,
                   n_demos=12, error_every=4, copy_steps=2)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_prepare_writes_world_tasks_demos_and_policy(prepared: Prepared) -> None:
    train, heldout, demos = _lines(prepared.train_tasks), _lines(prepared.heldout_tasks), _lines(prepared.demos)
    assert (len(train), len(heldout), len(demos)) == (48, 20, 12) == (prepared.n_train, prepared.n_heldout,
                                                                     prepared.n_demos)
    # RL tasks are the train questions that were not demonstrated
    assert not {d["task_id"] for d in demos} & {t["task_id"] for t in train}
    assert all("_train_" in d["task_id"] for d in demos)
    assert not {t["messages"][1]["content"] for t in train} & {t["messages"][1]["content"] for t in heldout}
    for task in train + heldout:
        assert task["tools"] == [] and task["messages"][0]["content"] == system_prompt(3)
        assert task["context"] == {"db_id": "local_services"} and task["ground_truth"]["query"].startswith("SELECT")
    # observations are the real rows of the gold query on the generated database
    db = prepared.db_dir / "local_services" / "local_services.sqlite"
    with sqlite3.connect(db) as conn:
        for demo in demos:
            answer = demo["messages"][-1]["content"]
            gold = answer.removeprefix("<answer>").removesuffix("</answer>")
            first_row = conn.execute(gold).fetchone()
            observation = demo["messages"][-2]["content"]
            assert demo["messages"][-2]["role"] == "tool" and str(first_row[0]) in observation
    fixes = [d for d in demos if sum(m["role"] == "tool" for m in d["messages"]) == 2]
    assert len(fixes) == 3 and all("no such table" in f["messages"][3]["content"] for f in fixes)
    assert (prepared.policy / "config.json").is_file() and len(prepared.copy_losses) == 2


def test_compact_prompts_are_short(prepared: Prepared) -> None:
    tok = AutoTokenizer.from_pretrained(prepared.policy)
    examples = load_sft_examples(prepared.demos, tok)
    prompt_lengths = [e.loss_mask.index(1) for e in examples]
    assert max(prompt_lengths) < 140, prompt_lengths   # the full SQL environment's prompt is ~640 tokens


def test_copy_batch_masks_exactly_the_repeated_span() -> None:
    ids = list(range(100, 400))
    rng = random.Random(0)
    input_ids, attention, loss_mask = copy_batch(ids, rng, 16, sep=2, pad=0)
    for row, att, mask in zip(input_ids.tolist(), attention.tolist(), loss_mask.tolist(), strict=True):
        n = sum(att)
        sep = row.index(2)
        text, copy = row[:sep], row[sep + 1: n]
        start = text.index(copy[0])
        assert text[start:start + len(copy)] == copy                   # the tail repeats a span of the window
        trained = [i for i, m in enumerate(mask) if m]
        assert trained == list(range(sep + 2, n))                       # all of it but its first token
    assert torch.equal(loss_mask[attention == 0], torch.zeros(int((attention == 0).sum())))


def test_prepared_record_is_reused_only_for_the_same_arguments(prepared: Prepared) -> None:
    from experiments.sql_learning import load_prepared

    args = {"seed": 3, "n_train": 60, "n_heldout_a": 10, "n_heldout_b": 6, "n_heldout_c": 4, "n_demos": 12,
            "max_tool_calls": 3, "error_every": 4, "size": "tiny", "copy_steps": 2, "demo_city_share": 1.0,
            "renamed_worlds": 0}
    loaded = load_prepared(prepared.root, **args)
    assert loaded == prepared and loaded is not None
    assert loaded.slices == prepared.slices == {"a": 10, "b": 6, "c": 4} and loaded.n_heldout == 20
    assert load_prepared(prepared.root, **{**args, "seed": 4}) is None
    assert load_prepared(prepared.root, **{**args, "n_heldout_b": 7}) is None
    assert load_prepared(prepared.root, **{**args, "renamed_worlds": 2}) is None
    assert load_prepared(prepared.root / "nowhere", **args) is None
    # a world of an older version (its held-out set has no slices) is refused, not silently re-prepared
    saved = json.loads((prepared.root / "prepared.json").read_text())
    assert saved["args"]["version"] == PREPARE_VERSION == 3
    assert saved["prepared"]["split_info"]["slices"] == {"a": 10, "b": 6, "c": 4}
    saved["args"] = {**saved["args"], "version": 2, "n_heldout": 20}
    (prepared.root / "older").mkdir(exist_ok=True)
    (prepared.root / "older" / "prepared.json").write_text(json.dumps(saved))
    with pytest.raises(StaleWorldError, match=r"version 2 .* version 3 .*slices.*new run"):
        load_prepared(prepared.root / "older", **args)


def test_copy_warmup_corpus_chunks_cover_the_text_at_line_ends() -> None:
    from experiments.copy_warmup import _chunks

    text = "".join(f"line {i} " + "x" * (i % 50) + "\n" for i in range(2000)) + "no newline at the end"
    chunks = _chunks(text, size=1000)
    assert "".join(chunks) == text and len(chunks) > 10
    assert all(c.endswith("\n") for c in chunks[:-1]) and max(map(len, chunks)) < 1100


def test_copy_batch_random_rows_repeat_a_third_or_more_of_random_ids() -> None:
    rng = random.Random(1)
    input_ids, attention, loss_mask = copy_batch(list(range(100, 400)), rng, 32, sep=2, pad=0, random_share=1.0,
                                                 random_ids=(3, 50), random_window=(16, 48))
    for row, att, mask in zip(input_ids.tolist(), attention.tolist(), loss_mask.tolist(), strict=True):
        n = sum(att)
        sep = row.index(2)
        text, copy = row[:sep], row[sep + 1: n]
        assert 16 <= len(text) <= 48 and all(3 <= t < 50 for t in text)    # random ids, not the corpus (100+)
        assert len(copy) >= max(4, len(text) // 3)
        assert any(text[i:i + len(copy)] == copy for i in range(len(text)))
        assert sum(mask) == len(copy) - 1


def test_copy_warmup_ends_once_its_loss_is_low(prepared: Prepared) -> None:
    from transformers import AutoModelForCausalLM

    from experiments.copy_warmup import copy_warmup

    tok = AutoTokenizer.from_pretrained(prepared.policy)
    corpus = (prepared.root / "corpus.txt").read_text()
    model = AutoModelForCausalLM.from_pretrained(prepared.policy)
    before = [p.detach().clone() for p in model.parameters()]
    # a fresh policy's copy loss is ~7.6 (uniform): a target of 100 is met by the first 10 steps,
    # None never ends early, 0.15 not within 12 steps
    assert len(copy_warmup(model, tok, corpus, steps=14, batch_size=2, target_loss=100.0)) == 10
    assert len(copy_warmup(model, tok, corpus, steps=12, batch_size=2, target_loss=None)) == 12
    assert len(copy_warmup(model, tok, corpus, steps=12, batch_size=2, target_loss=0.15)) == 12
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_copy_warmup_loss_is_the_masked_nll_of_the_repeated_span(prepared: Prepared) -> None:
    """The warm-up trains with SFT's step on its copy rows: its first loss is the mean NLL of the
    repeated span's tokens (copy_batch's mask) under the full forward of the starting weights."""
    from transformers import AutoModelForCausalLM

    from experiments.copy_warmup import _chunks, _ordinary_range, copy_warmup

    tok = AutoTokenizer.from_pretrained(prepared.policy)
    corpus = (prepared.root / "corpus.txt").read_text()
    model = AutoModelForCausalLM.from_pretrained(prepared.policy)
    ids = [i for chunk in _chunks(corpus) for i in tok.encode(chunk, add_special_tokens=False)]
    input_ids, attention, loss_mask = copy_batch(ids, random.Random(5), 8, tok.convert_tokens_to_ids("<|im_end|>"),
                                                 tok.pad_token_id, random_share=1.0,
                                                 random_ids=_ordinary_range(tok))
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=input_ids, attention_mask=attention).logits[:, :-1], -1)
    token_lp = logprobs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    expected = float(-(token_lp * loss_mask[:, 1:]).sum() / loss_mask[:, 1:].sum())
    (first,) = copy_warmup(model, tok, corpus, steps=1, batch_size=8, seed=5, target_loss=None)
    assert first == pytest.approx(expected, rel=1e-5)


def test_heldout_lines_carry_their_slice_as_the_world_decided_it(prepared: Prepared) -> None:
    from experiments.learning import heldout_slices

    heldout = _lines(prepared.heldout_tasks)
    again = generate_split(database_path(prepared.db_dir), seed=3, n_train=60, heldout=HeldoutSizes(10, 6, 4))
    assert [(t["task_id"], t["slice"]) for t in heldout] == [(t["task_id"], t["slice"]) for t in again.heldout]
    assert heldout_slices(prepared) == {t["task_id"]: t["slice"] for t in heldout}
    assert [t["slice"] for t in heldout] == ["a"] * 10 + ["b"] * 6 + ["c"] * 4
    assert all("slice" not in t for t in _lines(prepared.train_tasks))


def test_no_training_text_shows_a_heldout_slice_its_novelty(prepared: Prepared) -> None:
    """(a) tuples and gold queries are not trained on, its values are; (b)'s places appear in no
    demonstration, RL task or tokenizer text; (c)'s templates in no demonstration or RL task."""
    heldout, rl, demos = _lines(prepared.heldout_tasks), _lines(prepared.train_tasks), _lines(prepared.demos)
    train = generate_split(database_path(prepared.db_dir), seed=3, n_train=60, heldout=HeldoutSizes(10, 6, 4)).train
    by_id = {t["task_id"]: t for t in train}
    assert {d["task_id"] for d in demos} | {t["task_id"] for t in rl} == set(by_id)       # training is train
    trained_sql = [d["messages"][-1]["content"].removeprefix("<answer>").removesuffix("</answer>") for d in demos]
    trained_sql += [t["ground_truth"]["query"] for t in rl]
    trained_questions = {d["messages"][1]["content"] for d in demos} | {t["messages"][1]["content"] for t in rl}
    literals = {v for sql in trained_sql for v in sql_literals(sql)}
    for task in (t for t in heldout if t["slice"] == "a"):
        assert task["ground_truth"]["query"] not in trained_sql
        assert task["messages"][1]["content"] not in trained_questions
        assert set(sql_literals(task["ground_truth"]["query"])) <= literals, task
    places = place_pattern(prepared.split_info["heldout_places"])
    assert all(places.search(t["messages"][1]["content"]) for t in heldout if t["slice"] == "b")
    for path in (prepared.demos, prepared.train_tasks, prepared.root / "corpus.txt"):
        found = places.search(path.read_text())
        assert found is None, (path.name, found)
    assert {t["template"] for t in heldout if t["slice"] == "c"} <= set(HELDOUT_ONLY)
    assert not {t["template"] for t in rl} & set(HELDOUT_ONLY)
    assert not {by_id[d["task_id"]]["template"] for d in demos} & set(HELDOUT_ONLY)


def test_by_slice_counts_each_slice_with_its_standard_error() -> None:
    from experiments.learning import by_slice, slice_gain
    from trainer.evaluate import EvalReport, TaskResult

    slices = {"a1": "a", "a2": "a", "a3": "a", "a4": "a", "b1": "b", "b2": "b", "c1": "c"}
    right = {"a1", "a2", "a3", "b1"}
    results = [TaskResult(t, "local_services", "COMPLETED", t in right, float(t in right), {}, 1, 2, False, "")
               for t in slices]
    report = EvalReport(n=7, execution_accuracy=4 / 7, scored_accuracy=4 / 7, mean_tool_calls=1, mean_turns=2,
                        format_errors=0, infra_failures=0, truncated=0, seconds=1.0, results=results)
    got = by_slice(report, slices)
    assert got == {"a": {"n": 4, "correct": 3, "accuracy": 0.75, "stderr": 0.2165},     # sqrt(.75 * .25 / 4)
                   "b": {"n": 2, "correct": 1, "accuracy": 0.5, "stderr": 0.3536},      # sqrt(.5 * .5 / 2)
                   "c": {"n": 1, "correct": 0, "accuracy": 0.0, "stderr": 0.0}}
    assert sum(v["n"] for v in got.values()) == report.n and sum(v["correct"] for v in got.values()) == 4
    before = by_slice(EvalReport(**{**vars(report), "results": results[:4]}), slices)  # a only: b and c empty
    assert before["b"] == {"n": 0, "correct": 0, "accuracy": None, "stderr": None}
    assert slice_gain(got, got) == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert slice_gain(before, got) == {"a": 0.0, "b": None, "c": None}
    with pytest.raises(ValueError, match="not a held-out task"):
        by_slice(report, {"a1": "a"})


def test_error_kind_tells_miscopied_values_from_other_mistakes() -> None:
    from experiments.learning import error_kind

    gold = ("SELECT COUNT(*) FROM merchant AS m JOIN district AS d ON m.district_id = d.district_id "
            "WHERE d.name = 'Jiang''an'")

    def kind(answer: str, correct: bool = False, unseen_template: bool = False, infra_error: str = "") -> str:
        return error_kind(answer, gold, correct=correct, unseen_template=unseen_template, infra_error=infra_error)

    assert kind(gold, correct=True) == "correct"
    assert kind("", unseen_template=True) == "unseen_template"
    assert kind("", infra_error="tool server unreachable") == "infra_failure"
    assert kind("  ") == "no_answer"
    assert kind(gold.replace("'Jiang''an'", "'Jiang'")) == "value_miscopied"              # cut off mid-name
    assert kind(gold.replace("'Jiang''an'", "'Jiang'an'")) == "value_miscopied"           # quote not escaped
    assert kind(gold.replace("d.name", "ci.name")) == "other"                            # right value, wrong slot
    assert kind("SELECT COUNT(*) FROM merchant") == "value_miscopied"                    # the value left out
    # a gold query without literals: any wrong answer is "other"
    assert error_kind("SELECT 1", "SELECT COUNT(*) FROM city", correct=False, unseen_template=False) == "other"


def test_error_kinds_count_every_heldout_answer(prepared: Prepared) -> None:
    from experiments.learning import ERROR_KINDS, error_kinds
    from trainer.evaluate import EvalReport, TaskResult

    heldout = _lines(prepared.heldout_tasks)
    seen = next(t for t in heldout if t["slice"] != "c" and "'" in t["ground_truth"]["query"])
    unseen = next(t for t in heldout if t["slice"] == "c")
    gold = seen["ground_truth"]["query"]

    def result(task: dict[str, Any], answer: str, correct: bool = False) -> TaskResult:
        return TaskResult(task["task_id"], "local_services", "COMPLETED", correct, float(correct), {}, 1, 2, False,
                          answer)

    report = EvalReport(n=4, execution_accuracy=0.25, scored_accuracy=0.25, mean_tool_calls=1, mean_turns=2,
                        format_errors=0, infra_failures=0, truncated=0, seconds=1.0,
                        results=[result(seen, gold, True), result(seen, gold.split("'")[0] + "'x'"),
                                 result(unseen, gold), result(seen, "")])
    counts = error_kinds(report, prepared)
    assert list(counts) == list(ERROR_KINDS)
    assert counts == {"correct": 1, "unseen_template": 1, "infra_failure": 0, "no_answer": 1,
                      "value_miscopied": 1, "other": 0}


def test_demo_candidates_name_only_the_demonstration_cities(prepared: Prepared) -> None:
    db = database_path(prepared.db_dir)
    conn = sqlite3.connect(db)
    try:
        pool = load_pool(conn, None)
    finally:
        conn.close()
    train_cities = list(prepared.split_info["train_cities"])
    district, city = next(iter(pool.districts.items()))
    merchant = pool.merchants[0]
    assert task_cities({"slots": {"a": district, "b": "Hotpot"}}, pool) == {city}
    assert task_cities({"slots": {"m": merchant.name}}, pool) >= {merchant.city}
    assert task_cities({"slots": {"c": "Hotpot"}}, pool) == set()
    train = generate_split(db, seed=3, n_train=60, heldout=HeldoutSizes(10, 6, 4)).train   # the fixture's, with slots
    candidates, demo_cities = demo_candidates(train, pool, train_cities, 0.5, seed=0)
    assert len(demo_cities) == max(1, round(len(train_cities) / 2)) and set(demo_cities) <= set(train_cities)
    assert candidates and len(candidates) < len(train)
    assert all(task_cities(t, pool) <= set(demo_cities) for t in candidates)
    assert demo_candidates(train, pool, train_cities, 0.5, seed=0) == (candidates, demo_cities)   # deterministic
    with pytest.raises(ValueError, match="demo_city_share"):
        prepare(prepared.root / "bad", demo_city_share=0.0)


def test_place_neutral_cuts_whole_place_names_only() -> None:
    text = "WHERE ci.name = 'Chengdu' AND m.name = 'Boba Garden (Xuanwu)' AND d.name = 'Jiang'an' -- Chengdus"
    assert place_neutral(text) == "WHERE ci.name = '' AND m.name = 'Boba Garden ()' AND d.name = '' -- Chengdus"
    assert {"Chengdu", "Nanjing", "Xuanwu", "Xi'an", "Jiang'an"} <= set(place_names())


def test_tokenizer_learns_no_place_name_so_train_and_heldout_places_tokenize_alike(prepared: Prepared) -> None:
    from trainer.model.corpus import DEFAULT_CORPUS_FILE

    corpus = (prepared.root / "corpus.txt").read_text()
    project = place_neutral(DEFAULT_CORPUS_FILE.read_text())   # general text (with Wuhan cut), then this world's
    assert corpus.startswith(project) and "Wuhan" in DEFAULT_CORPUS_FILE.read_text()
    assert not re.search(r"\bWuhan\b", corpus)
    corpus = corpus[len(project):]
    demos = prepared.demos.read_text()
    named = [n for n in place_names() if re.search(rf"\b{re.escape(n)}\b", demos)]
    assert named, "the demonstrations name places"
    assert not place_pattern(place_names()).search(corpus)           # nor in SQL form ('Xi''an')
    tok = AutoTokenizer.from_pretrained(prepared.policy)
    pieces = {n: len(tok.encode(n, add_special_tokens=False)) for n in place_names()}
    assert min(pieces.values()) >= 2, pieces          # no place is one familiar token, train or held-out
