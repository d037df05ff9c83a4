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

from envs.local_services.database import database_path, load_pool, place_names, place_neutral
from envs.local_services.questions import generate_split
from experiments.copy_warmup import copy_batch
from experiments.sql_learning import (
    Prepared,
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
    return prepare(tmp_path_factory.mktemp("learn"), seed=3, n_train=60, n_heldout=20, n_demos=12, error_every=4,
                   copy_steps=2)


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

    args = {"seed": 3, "n_train": 60, "n_heldout": 20, "n_demos": 12, "max_tool_calls": 3, "error_every": 4,
            "size": "tiny", "copy_steps": 2, "demo_city_share": 1.0}
    assert load_prepared(prepared.root, **args) == prepared
    assert load_prepared(prepared.root, **{**args, "seed": 4}) is None
    assert load_prepared(prepared.root, **{**args, "renamed_worlds": 0}) == prepared
    assert load_prepared(prepared.root, **{**args, "renamed_worlds": 2}) is None
    # a record written before the option existed has no renamed_worlds: it was prepared with none
    saved = json.loads((prepared.root / "prepared.json").read_text())
    del saved["args"]["renamed_worlds"]
    (prepared.root / "older").mkdir(exist_ok=True)
    (prepared.root / "older" / "prepared.json").write_text(json.dumps(saved))
    assert load_prepared(prepared.root / "older", **args) == prepared
    assert load_prepared(prepared.root / "older", **{**args, "renamed_worlds": 2}) is None
    assert load_prepared(prepared.root / "nowhere", **args) is None


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


def test_heldout_groups_by_template_and_by_values_seen_in_training(prepared: Prepared) -> None:
    from experiments.learning import heldout_groups

    groups = heldout_groups(prepared)
    heldout = {t["task_id"]: t for t in _lines(prepared.heldout_tasks)}
    assert set(groups) == set(heldout)
    train_text = prepared.train_tasks.read_text() + prepared.demos.read_text()
    only = set(prepared.split_info["heldout_only_templates"])
    for task_id, group in groups.items():
        task = heldout[task_id]
        literals = re.findall(r"'((?:[^']|'')*)'", task["ground_truth"]["query"])   # as written in SQL
        if group == "unseen_template":
            assert task["template"] in only
            continue
        assert task["template"] not in only
        unseen = [v for v in literals if json.dumps(f"'{v}'")[1:-1] not in train_text]   # JSON-escaped, quoted
        assert (group == "new_value") == bool(unseen), (task_id, group, literals)
    assert {"new_value", "familiar"} <= set(groups.values())


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
    only = set(prepared.split_info["heldout_only_templates"])
    seen = next(t for t in heldout if t["template"] not in only and "'" in t["ground_truth"]["query"])
    unseen = next(t for t in heldout if t["template"] in only)
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
    train = generate_split(db, seed=3, n_train=60, n_heldout=20).train        # the fixture's questions, with slots
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
    project = DEFAULT_CORPUS_FILE.read_text()          # general text (it names Wuhan once), then this world's
    assert corpus.startswith(project)
    corpus = corpus[len(project):]
    demos = prepared.demos.read_text()
    named = [n for n in place_names() if re.search(rf"\b{re.escape(n)}\b", demos)]
    assert named, "the demonstrations name places"
    assert not [n for n in place_names() if re.search(rf"\b{re.escape(n)}\b", corpus)]
    tok = AutoTokenizer.from_pretrained(prepared.policy)
    pieces = {n: len(tok.encode(n, add_special_tokens=False)) for n in place_names()}
    assert min(pieces.values()) >= 2, pieces          # no place is one familiar token, train or held-out
