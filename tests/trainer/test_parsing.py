"""Tool-call parsing, observation formatting and per-token region labels."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from transformers import PreTrainedTokenizerFast

from trainer.parsing import (
    TRUNCATION_MARKER,
    ParsedCall,
    ParseResult,
    Region,
    char_regions,
    format_observation,
    label_regions,
    parse_tool_calls,
    token_spans,
)

SQL_CALL = '<tool_call>{"name": "sql_query", "arguments": {"query": "SELECT 1"}}</tool_call>'


def test_region_values_are_the_shared_ones() -> None:
    assert [(r.name, r.value) for r in Region] == [
        ("PROMPT", 0), ("OBSERVATION", 1), ("FORMAT_TAG", 2), ("REASONING", 3),
        ("TOOL_NAME", 4), ("TOOL_ARGS", 5), ("ANSWER", 6), ("OTHER", 7),
    ]


def test_one_good_call() -> None:
    result = parse_tool_calls(f"<think>look it up</think>\n{SQL_CALL}")
    assert result.calls == [
        ParsedCall("sql_query", {"query": "SELECT 1"}, '{"name": "sql_query", "arguments": {"query": "SELECT 1"}}')
    ]
    assert result.errors == [] and result.answer is None


def test_several_calls_in_one_turn_keep_their_order() -> None:
    text = (
        '<tool_call>\n{"name": "search", "arguments": {"q": "a"}}\n</tool_call>\n'
        '<tool_call>{"name": "zoom", "arguments": {"box": [1, 2, 3, 4]}}</tool_call>'
        '<tool_call>{"name": "now"}</tool_call>'
    )
    result = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in result.calls] == [
        ("search", {"q": "a"}), ("zoom", {"box": [1, 2, 3, 4]}), ("now", {}),
    ]
    assert result.errors == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"name": "sql_query", "arguments": {"query": "x"}', "tool call 1: invalid JSON"),
        ('{"arguments": {"query": "x"}}', 'tool call 1: missing "name"'),
        ('{"name": 3, "arguments": {}}', 'tool call 1: missing "name"'),
        ('{"name": "sql_query", "arguments": "SELECT 1"}', '"arguments" must be a JSON object, got str'),
        ('["sql_query"]', "expected a JSON object, got list"),
        ("", "tool call 1: invalid JSON"),
        ("[" * 100_000, "tool call 1: invalid JSON (nested too deeply)"),
        ('{"name": "a", "arguments": {"n": ' + "9" * 5000 + "}}", "tool call 1: invalid JSON (a number with too many"),
    ],
)
def test_malformed_call_becomes_an_error_the_model_can_act_on(body: str, message: str) -> None:
    result = parse_tool_calls(f"<tool_call>{body}</tool_call>")
    assert result.calls == []
    assert len(result.errors) == 1 and message in result.errors[0]
    assert '{"name": "<tool name>", "arguments": {...}}' in result.errors[0]


def test_bad_call_does_not_hide_the_good_ones() -> None:
    result = parse_tool_calls(f'<tool_call>{{"name": }}</tool_call>{SQL_CALL}')
    assert [c.name for c in result.calls] == ["sql_query"]
    assert len(result.errors) == 1 and result.errors[0].startswith("tool call 1: invalid JSON")


def test_unclosed_and_unopened_tags() -> None:
    unclosed = parse_tool_calls('<tool_call>{"name": "sql_query", "arguments": {}}')
    assert unclosed.calls == []
    assert unclosed.errors == ["tool call 1: <tool_call> is never closed; end the call with </tool_call>"]
    reopened = parse_tool_calls(f"<tool_call>{{'name'{SQL_CALL}")
    assert [c.name for c in reopened.calls] == ["sql_query"]
    assert reopened.errors[0].startswith("tool call 1: <tool_call> opened again")
    stray = parse_tool_calls("done</tool_call>")
    assert stray.errors == ["</tool_call> without a matching <tool_call>; open each call first"]


def _fuzz_inputs() -> list[str]:
    """Model output as it goes wrong: every prefix of a good turn (generation cut anywhere), seeded
    random splices of tags and JSON pieces, and pathological JSON (deep nesting, huge numbers,
    NaN, lone surrogates, NUL bytes)."""
    good = (f'<think>look</think>\n{SQL_CALL}\n<tool_call>{{"name": "now"}}</tool_call>'
            '<answer> 3 singers </answer>')
    texts = ["", "<tool_call>", "</tool_call></tool_call>", "<tool_call>{{{{", "<answer>", "</answer><answer>"]
    texts += [good[:i] for i in range(len(good) + 1)]
    pieces = ["<tool_call>", "</tool_call>", "<answer>", "</answer>", "<think>", "</think>", "{", "}", "[", "]",
              '"name"', '"arguments"', ":", ",", '"sql_query"', '""', "null", "1", "-0.5e3", "true", " ", "\n",
              "\\", '"', "ü✓", "\x00", "<tool_call >", "</tool_call", SQL_CALL]
    rng = random.Random(0)
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 25))) for _ in range(400)]
    for body in ["[" * 100_000, '{"a":' * 50_000, "1" * 5000, '{"name": "a", "arguments": {"x": ' + "9" * 5000 + "}}",
                 '{"name": "a", "arguments": {"x": NaN, "y": -Infinity}}', '{"name": "\\ud800", "arguments": {}}',
                 '{"name": "a\x00b", "arguments": {"\x00": 1}}', '{"name": " ", "arguments": {}}',
                 '{"name": "a", "arguments": null}', '{"name": "a", "name": "b"}', "\ud800", "x" * 100_000]:
        texts += [f"<tool_call>{body}</tool_call>", f"<tool_call>{body}", f"<answer>{body}</answer>"]
    return texts


def test_never_raises_and_every_result_is_well_formed() -> None:
    """Over the fuzz inputs: no exception; each call has a name and dict arguments that its raw JSON
    (a slice of the text) says; each error names the call or tag it is about and what to write; every
    <tool_call> and every </tool_call> is accounted for by a call or an error; the answer is None
    or a stripped string that sat between answer tags."""
    for text in _fuzz_inputs():
        where = repr(text[:80])
        result = parse_tool_calls(text)
        assert isinstance(result, ParseResult), where
        for call in result.calls:
            assert isinstance(call, ParsedCall) and isinstance(call.name, str) and call.name.strip(), where
            assert isinstance(call.arguments, dict) and isinstance(call.raw, str) and call.raw in text, where
            payload = json.loads(call.raw)
            assert payload["name"] == call.name and payload.get("arguments", {}) == call.arguments, where
        for error in result.errors:
            assert isinstance(error, str) and error.startswith(("tool call ", "</tool_call> ")), where
            assert "tool_call>" in error or '{"name": "<tool name>"' in error, where   # says what to write
        opened, closed = text.count("<tool_call>"), text.count("</tool_call>")
        outcomes = len(result.calls) + len(result.errors)
        assert max(opened, closed) <= outcomes <= opened + closed, where
        if result.answer is not None:
            assert isinstance(result.answer, str) and result.answer == result.answer.strip(), where
            assert "<answer>" in text and "</answer>" in text and result.answer in text, where
        assert parse_tool_calls(text) == result, where    # deterministic


def test_the_last_answer_wins() -> None:
    result = parse_tool_calls("<answer>first</answer> on reflection <answer>\n  42 singers\n</answer><answer>cut")
    assert result.answer == "42 singers"
    assert parse_tool_calls("no answer here").answer is None


def test_observation_without_a_cap() -> None:
    assert format_observation(["3 rows", "error: no such table"]) == (
        "<tool_response>\n3 rows\n</tool_response>\n<tool_response>\nerror: no such table\n</tool_response>"
    )


def test_observation_within_the_cap_is_untouched(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    assert format_observation(["3 rows"], tiny_tokenizer, 100) == format_observation(["3 rows"])


def test_long_observation_is_cut_to_the_cap(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    long = " ".join(f"singer {i} age {i % 50}" for i in range(200))
    text = format_observation(["ok", long], tiny_tokenizer, 60)
    assert len(tiny_tokenizer.encode(text, add_special_tokens=False)) <= 60
    assert text.startswith("<tool_response>\nok\n</tool_response>\n<tool_response>\nsinger 0 age 0")
    assert text.endswith(f"{TRUNCATION_MARKER}\n</tool_response>")
    # Nearly all of the budget went to the long output: the short one needed little.
    assert len(tiny_tokenizer.encode(text, add_special_tokens=False)) >= 55


def test_two_long_observations_share_the_cap(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    long = "Ünïcödé ✓ " * 100
    text = format_observation([long, long], tiny_tokenizer, 50)
    assert len(tiny_tokenizer.encode(text, add_special_tokens=False)) <= 50
    assert text.count(TRUNCATION_MARKER) == 2 and "\ufffd" not in text


# The hand-built sequence: each piece is encoded on its own and every token of a piece carries the
# piece's label. The reasoning holds multi-byte characters that the BPE splits mid-character.
PIECES: list[tuple[str, Region]] = [
    ("<think>", Region.FORMAT_TAG),
    ("Let me count Ünï ✓", Region.REASONING),
    ("</think>", Region.FORMAT_TAG),
    ("\nok ", Region.OTHER),
    ("<tool_call>", Region.FORMAT_TAG),
    ('{"name": "', Region.TOOL_ARGS),
    ("sql_query", Region.TOOL_NAME),
    ('", "arguments": {"name": "singer", "query": "SELECT 1"}}', Region.TOOL_ARGS),
    ("</tool_call>", Region.FORMAT_TAG),
    ("<tool_response>", Region.FORMAT_TAG),
    ("3 rows", Region.OBSERVATION),
    ("</tool_response>", Region.FORMAT_TAG),
    ("<answer>", Region.FORMAT_TAG),
    ("42 singers", Region.ANSWER),
    ("</answer>", Region.FORMAT_TAG),
    ("<|im_end|>", Region.FORMAT_TAG),
]


def test_label_regions_on_a_hand_built_sequence(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    ids: list[int] = []
    expected: list[int] = []
    for text, region in PIECES:
        piece = tiny_tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        expected += [int(region)] * len(piece)
    assert "n\ufffd" in [tiny_tokenizer.decode([i]) for i in ids]  # a token ends mid-character
    assert label_regions(ids, tiny_tokenizer) == expected


def test_token_spans_tile_the_decoded_text(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    ids = tiny_tokenizer.encode("a Ünï ✓ b<think>", add_special_tokens=False)
    text, spans = token_spans(ids, tiny_tokenizer)
    assert text == tiny_tokenizer.decode(ids, skip_special_tokens=False)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] <= b[0] or a == b for a, b in itertools.pairwise(spans))


def test_char_regions_find_the_top_level_name_only() -> None:
    text = '<tool_call>{"arguments": {"name": "x"}, "name" : "f"}</tool_call>'
    regions = char_regions(text)
    name_at = text.rindex('"f"') + 1
    assert [i for i, r in enumerate(regions) if r is Region.TOOL_NAME] == [name_at]
    assert regions[text.index("x")] is Region.TOOL_ARGS


def test_unclosed_regions_run_to_the_end() -> None:
    text = '<think>hmm <tool_call>{"name": "sea'
    regions = char_regions(text)
    assert regions[text.index("hmm")] is Region.REASONING
    assert regions[text.index("sea")] is Region.TOOL_NAME
    assert regions[text.index("{")] is Region.TOOL_ARGS
