"""Hermes/Qwen-style tool-call parsing, observation formatting, and per-token region labels.

``parse_tool_calls`` never raises: what the model got wrong comes back as ``errors``, messages it
can act on, which the rollout engine sends back as an observation. ``label_regions`` maps each
generated token to a ``Region`` from the token's decoded span, without re-tokenizing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TRUNCATION_MARKER = "… (truncated)"
DEFAULT_MARKERS: tuple[str, ...] = (
    TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE,
    THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE, "<|im_start|>", "<|im_end|>", "<|endoftext|>",
)
_CALL_FORMAT = '{"name": "<tool name>", "arguments": {...}}'


class Region(IntEnum):
    """What a token is; the values are shared with the loss weighting (ResT) and the masks."""

    PROMPT = 0
    OBSERVATION = 1
    FORMAT_TAG = 2
    REASONING = 3
    TOOL_NAME = 4
    TOOL_ARGS = 5
    ANSWER = 6
    OTHER = 7


class TokenizerLike(Protocol):
    """The slice of a Hugging Face tokenizer that this module uses."""

    def encode(self, text: str, *, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(
        self, token_ids: list[int], *, skip_special_tokens: bool = ..., clean_up_tokenization_spaces: bool = ...
    ) -> Any: ...


@dataclass(frozen=True)
class ParsedCall:
    """One well-formed tool call; ``raw`` is the text between its tags, stripped."""

    name: str
    arguments: dict[str, Any]
    raw: str


@dataclass
class ParseResult:
    """The calls of one assistant turn, what was wrong with the rest, and the final answer."""

    calls: list[ParsedCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    answer: str | None = None


_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + "|" + re.escape(TOOL_CALL_CLOSE))
_ANSWER = re.compile(re.escape(ANSWER_OPEN) + r"(.*?)" + re.escape(ANSWER_CLOSE), re.DOTALL)


def parse_tool_calls(text: str) -> ParseResult:
    """Parse every ``<tool_call>{"name": .., "arguments": {..}}</tool_call>`` and the last
    ``<answer>…</answer>`` of ``text``. A call without "arguments" gets ``{}``."""
    result = ParseResult()
    answers = _ANSWER.findall(text)
    if answers:
        result.answer = answers[-1].strip()
    open_at: int | None = None
    index = 0
    for match in _BLOCK.finditer(text):
        if match.group() == TOOL_CALL_OPEN:
            if open_at is not None:
                index += 1
                result.errors.append(
                    f"tool call {index}: {TOOL_CALL_OPEN} opened again before {TOOL_CALL_CLOSE}; "
                    f"close each call with {TOOL_CALL_CLOSE}"
                )
            open_at = match.end()
        elif open_at is None:
            result.errors.append(f"{TOOL_CALL_CLOSE} without a matching {TOOL_CALL_OPEN}; open each call first")
        else:
            index += 1
            _parse_one(text[open_at:match.start()].strip(), index, result)
            open_at = None
    if open_at is not None:
        index += 1
        result.errors.append(
            f"tool call {index}: {TOOL_CALL_OPEN} is never closed; end the call with {TOOL_CALL_CLOSE}"
        )
    return result


def _parse_one(raw: str, index: int, result: ParseResult) -> None:
    """Append the call in ``raw`` to ``result.calls``, or say what is wrong with it."""
    where = f"tool call {index}"
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as exc:
        result.errors.append(f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); write {_CALL_FORMAT}")
        return
    except RecursionError:      # the C decoder recurses once per level of nesting
        result.errors.append(f"{where}: invalid JSON (nested too deeply); write {_CALL_FORMAT}")
        return
    except ValueError:          # an integer longer than int's digit limit (sys.set_int_max_str_digits)
        result.errors.append(f"{where}: invalid JSON (a number with too many digits); write {_CALL_FORMAT}")
        return
    if not isinstance(payload, dict):
        result.errors.append(f"{where}: expected a JSON object, got {type(payload).__name__}; write {_CALL_FORMAT}")
        return
    name = payload.get("name")
    if not isinstance(name, str) or not name.strip():
        result.errors.append(f'{where}: missing "name" (a non-empty string); write {_CALL_FORMAT}')
        return
    arguments = payload.get("arguments", {})
    if not isinstance(arguments, dict):
        result.errors.append(
            f'{where} ({name}): "arguments" must be a JSON object, got {type(arguments).__name__}; '
            f"write {_CALL_FORMAT}"
        )
        return
    result.calls.append(ParsedCall(name=name, arguments=arguments, raw=raw))


# ---------------------------------------------------------------------- observations
def format_observation(
    results: Sequence[str], tokenizer: TokenizerLike | None = None, max_tokens: int | None = None
) -> str:
    """Wrap each tool output in ``<tool_response>\\n…\\n</tool_response>`` (joined by newlines).

    With ``tokenizer`` and ``max_tokens`` the whole string encodes to at most ``max_tokens``
    tokens: the budget is shared among the outputs (what a short one leaves goes to the others)
    and a cut output ends with ``TRUNCATION_MARKER``.
    """
    if tokenizer is None or max_tokens is None:
        return _wrap(list(results))
    texts = list(results)
    lengths = [len(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    overhead = len(tokenizer.encode(_wrap([""] * len(texts)), add_special_tokens=False))
    marker = len(tokenizer.encode(TRUNCATION_MARKER, add_special_tokens=False))
    budget = max_tokens - overhead
    while True:
        caps = _share(lengths, budget)
        pieces = [
            t if cap >= n else _truncate(t, tokenizer, max(cap - marker, 0))
            for t, n, cap in zip(texts, lengths, caps, strict=True)
        ]
        text = _wrap(pieces)
        excess = len(tokenizer.encode(text, add_special_tokens=False)) - max_tokens
        # Merges across piece boundaries can make the whole a token or two longer than its parts.
        if excess <= 0 or budget <= 0:
            return text
        budget -= excess


def _wrap(texts: list[str]) -> str:
    return "\n".join(f"{TOOL_RESPONSE_OPEN}\n{t}\n{TOOL_RESPONSE_CLOSE}" for t in texts)


def _share(lengths: list[int], budget: int) -> list[int]:
    """Water-filling: each output gets min(its length, an equal share of what is left)."""
    caps = [0] * len(lengths)
    left = max(budget, 0)
    pending = sorted(range(len(lengths)), key=lambda i: lengths[i])
    while pending:
        share = left // len(pending)
        i = pending.pop(0)
        caps[i] = min(lengths[i], share)
        left -= caps[i]
    return caps


def _truncate(text: str, tokenizer: TokenizerLike, keep: int) -> str:
    ids = tokenizer.encode(text, add_special_tokens=False)[:keep]
    head = str(tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))
    return head.rstrip("\ufffd") + TRUNCATION_MARKER  # drop a half-cut UTF-8 character


# ---------------------------------------------------------------------- regions
_OPENS = {THINK_OPEN: Region.REASONING, ANSWER_OPEN: Region.ANSWER,
          TOOL_CALL_OPEN: Region.TOOL_ARGS, TOOL_RESPONSE_OPEN: Region.OBSERVATION}
_CLOSES = {THINK_CLOSE: THINK_OPEN, ANSWER_CLOSE: ANSWER_OPEN,
           TOOL_CALL_CLOSE: TOOL_CALL_OPEN, TOOL_RESPONSE_CLOSE: TOOL_RESPONSE_OPEN}
# When a token spans several character regions, the most specific one wins.
_PRIORITY = [Region.TOOL_NAME, Region.FORMAT_TAG, Region.TOOL_ARGS, Region.ANSWER,
             Region.REASONING, Region.OBSERVATION, Region.OTHER]


def label_regions(
    token_ids: Sequence[int], tokenizer: TokenizerLike, markers: Sequence[str] = DEFAULT_MARKERS
) -> list[int]:
    """One ``Region`` per token of generated text.

    Markers → FORMAT_TAG; inside ``<think>`` → REASONING; inside ``<answer>`` → ANSWER; inside
    ``<tool_call>`` the characters of the top-level "name" value → TOOL_NAME and the rest →
    TOOL_ARGS; inside ``<tool_response>`` → OBSERVATION; elsewhere OTHER. An unclosed region runs
    to the end. A token whose text covers several regions takes the first in ``_PRIORITY``.
    """
    text, spans = token_spans(token_ids, tokenizer)
    chars = char_regions(text, markers)
    labels: list[int] = []
    for start, end in spans:
        present = set(chars[start:end])
        labels.append(int(next((r for r in _PRIORITY if r in present), Region.OTHER)))
    return labels


def token_spans(token_ids: Sequence[int], tokenizer: TokenizerLike) -> tuple[str, list[tuple[int, int]]]:
    """Decode incrementally: the text and each token's [start, end) character span in it.

    Tokens that end inside a multi-byte character are held back until the character completes,
    and all of them share its span (as in vLLM's incremental detokenizer).
    """
    ids = list(token_ids)

    def decode(part: list[int]) -> str:
        return str(tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False))

    text = ""
    spans: list[tuple[int, int]] = []
    prefix_at = read_at = 0  # ids[prefix_at:read_at] is decoded context; ids[read_at:] is pending
    prefix_text = ""
    for i in range(len(ids)):
        new_text = decode(ids[prefix_at:i + 1])
        last = i + 1 == len(ids)
        if (len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd")) or last:
            start = len(text)
            text += new_text[len(prefix_text):]
            spans.extend([(start, len(text))] * (i + 1 - read_at))
            prefix_at, read_at = read_at, i + 1
            prefix_text = decode(ids[prefix_at:read_at])
    return text, spans


def char_regions(text: str, markers: Sequence[str] = DEFAULT_MARKERS) -> list[Region]:
    """The ``Region`` of every character of ``text`` (see ``label_regions``)."""
    regions = [Region.OTHER] * len(text)
    pattern = re.compile("|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True)))
    stack: list[str] = []
    pos = 0

    def fill(start: int, end: int) -> None:
        if not stack:
            return
        region = _OPENS[stack[-1]]
        regions[start:end] = [region] * (end - start)
        if region is Region.TOOL_ARGS:
            name_span = _name_value_span(text, start, end)
            if name_span is not None:
                regions[name_span[0]:name_span[1]] = [Region.TOOL_NAME] * (name_span[1] - name_span[0])

    for match in pattern.finditer(text):
        fill(pos, match.start())
        regions[match.start():match.end()] = [Region.FORMAT_TAG] * (match.end() - match.start())
        tag = match.group()
        if tag in _OPENS:
            stack.append(tag)
        elif tag in _CLOSES and _CLOSES[tag] in stack:
            while stack.pop() != _CLOSES[tag]:  # a close tag also ends regions left open inside it
                pass
        pos = match.end()
    fill(pos, len(text))
    return regions


def _name_value_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The characters of the top-level "name" string value in ``text[start:end]``, quotes excluded.

    A small scanner rather than ``json.loads``: it must also work on malformed or cut-off JSON.
    """
    depth = 0
    i = start
    expect_value = False
    while i < end:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while j < end and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            value_end = min(j, end)
            if depth == 1 and expect_value:
                return (i + 1, value_end)
            if depth == 1 and text[i + 1:value_end] == "name":
                k = value_end + 1
                while k < end and text[k].isspace():
                    k += 1
                expect_value = k < end and text[k] == ":"
                i = k + 1 if expect_value else value_end + 1
                continue
            i = value_end + 1
            continue
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if expect_value and not ch.isspace():
            expect_value = False  # "name" followed by something other than a string
        i += 1
    return None
