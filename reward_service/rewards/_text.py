"""Text helpers shared by the rule rewards: SQuAD answer normalisation, gold answers
read from a ground truth, and tag blocks (``<answer>…</answer>``) found in a response.

``normalize_answer`` is the function of the official SQuAD evaluators
(rajpurkar, ``evaluate-v1.1.py`` and ``evaluate-v2.0.py``), which HotpotQA's
``hotpot_evaluate_v1.py``, Search-R1's ``verl/utils/reward_score/qa_em.py`` and
RL-Factory's ``envs/search.py`` copy unchanged. Its four steps run in this order:
lower-case, drop every character of ``string.punctuation`` (ASCII only: "’" or "–"
stay), replace the whole words a/an/the by a space (``\\b`` is Unicode-aware),
split on whitespace and join with one space.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

from reward_service.types import RewardInputError

# What a configurable tag name may be: it goes into regexes (escaped) and into messages.
TAG_NAME_PATTERN = r"^[A-Za-z_][\w\-]*$"

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)

# Keys under which a ground-truth mapping may hold its gold answers: SQuAD-style
# ``answers`` first, then Search-R1's ``target``, then HotpotQA's single ``answer``.
_ANSWER_KEYS = ("answers", "target", "answer")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower-case, strip punctuation, drop articles, collapse spaces."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(s: str) -> list[str]:
    """The tokens F1 counts: the normalised answer split on whitespace."""
    return normalize_answer(s).split() if s else []


def _as_answer(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise RewardInputError(f"a gold answer must be a string or a number, got {type(value).__name__}")


def _answer_list(value: Any) -> list[str]:
    if isinstance(value, Mapping) and "text" in value:  # HF SQuAD: {"text": [...], "answer_start": [...]}
        value = value["text"]
    if isinstance(value, list | tuple):
        return [_as_answer(v) for v in value]
    return [_as_answer(value)]


def gold_answers(ground_truth: Any) -> list[str]:
    """The gold answers of a ground truth, in order (possibly an empty list).

    Accepts ``{"answers": [...]}`` (also ``{"answers": {"text": [...]}}``, ``{"target": [...]}``,
    ``{"answer": "..."}``), a plain string, or a list of strings.

    Raises:
        RewardInputError: the ground truth is missing or holds no answers field.
    """
    if ground_truth is None:
        raise RewardInputError('the ground truth is missing; give {"answers": ["..."]}')
    if isinstance(ground_truth, Mapping):
        for key in _ANSWER_KEYS:
            if key in ground_truth:
                return _answer_list(ground_truth[key])
        raise RewardInputError(
            f'the ground truth has no gold answers; expected one of the keys {", ".join(_ANSWER_KEYS)} '
            f'(e.g. {{"answers": ["..."]}}), got keys {sorted(map(str, ground_truth))}'
        )
    return _answer_list(ground_truth)


def _blocks(text: str, tag: str) -> list[tuple[int, int, int, int]]:
    """``(start, content_start, content_end, end)`` of every closed ``<tag>…</tag>`` block, as
    ``re.findall(r"<tag>(.*?)</tag>", re.DOTALL)`` finds them (an opening tag pairs with the next
    closing one; the search goes on after it), in one pass: linear time even on a text of
    unclosed tags, where that regex is quadratic (it rescans to the end from every ``<tag>``)."""
    opening, closing = f"<{tag}>", f"</{tag}>"
    found: list[tuple[int, int, int, int]] = []
    pos = 0
    while True:
        start = text.find(opening, pos)
        if start < 0:
            return found
        content = start + len(opening)
        close = text.find(closing, content)
        if close < 0:
            return found  # no closing tag after this opening one, so none after any later one either
        pos = close + len(closing)
        found.append((start, content, close, pos))


def strip_blocks(text: str, tag: str) -> str:
    """Remove every closed ``<tag>…</tag>`` block (non-greedy, across lines)."""
    parts = []
    pos = 0
    for start, _, _, end in _blocks(text, tag):
        parts.append(text[pos:start])
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def tag_blocks(text: str, tag: str) -> list[str]:
    """The raw contents of every closed ``<tag>…</tag>`` block, in order."""
    return [text[content:close] for _, content, close, _ in _blocks(text, tag)]


def last_block(text: str, tag: str) -> str | None:
    """The stripped content of the last ``<tag>…</tag>`` block, or None when there is none."""
    blocks = _blocks(text, tag)
    if not blocks:
        return None
    _, content, close, _ = blocks[-1]
    return text[content:close].strip()


def tags_alternate(text: str, tag: str) -> bool:
    """True when ``<tag>`` and ``</tag>`` occur at least once and strictly alternate,
    opening first and closing last (RL-Factory's ``check_alternate_tags``)."""
    t = re.escape(tag)
    found = re.findall(rf"</?{t}>", text)
    if not found:
        return False
    expected_open = True
    for marker in found:
        is_open = not marker.startswith("</")
        if is_open != expected_open:
            return False
        expected_open = not expected_open
    return expected_open  # the last marker closed a block


SQUAD_VERSIONS = ("v2.0", "v1.1")


def squad_golds(golds: list[str], squad_version: str = "v2.0") -> list[str]:
    """The gold answers an official SQuAD script takes the max over.

    v2.0 (``get_raw_scores``) drops golds that normalise to "" and, when none is left,
    scores against ``[""]`` (an unanswerable question: only an empty prediction is right).
    v1.1 keeps the golds as given and needs at least one.

    Raises:
        RewardInputError: v1.1 with no gold answer at all.
    """
    if squad_version == "v2.0":
        kept = [g for g in golds if normalize_answer(g)]
        return kept or [""]
    if squad_version == "v1.1":
        if not golds:
            raise RewardInputError('the ground truth lists no gold answer (squad_version "v1.1" needs one)')
        return list(golds)
    raise ValueError(f"unknown squad_version {squad_version!r}; expected one of {SQUAD_VERSIONS}")
