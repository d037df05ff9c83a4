"""Answers of the SSL4RL tasks: their grammar, the parsers, the gold readers and the chance levels.

The text read is ``<answer>…</answer>``'s content (the last closed block) when the text holds one,
else the whole text (the rollout engine's final answer comes with its tags already removed). The
content is matched as a whole, case-insensitively, after trimming whitespace, quotes, backticks and
one trailing full stop: prose around the answer makes it malformed, and the parse error says what
was expected. Every parser runs in time linear in its input.

=============  =============================================  ============================  ==========
task           the answer                                     examples                      chance
=============  =============================================  ============================  ==========
rotation       the clockwise angle the image was rotated by:  ``90``, ``270°``,             1/4
               0, 90, 180 or 270 (any integer ≡ one of them   ``-90`` (= 270),
               mod 360; ``ccw``/``counterclockwise`` negate)  ``90 degrees clockwise``
jigsaw (k×k)   for each position of the original image in     ``2 0 3 1``,                  1/(k²)!
               reading order, the number of the shuffled      ``[2, 0, 3, 1]``              (mean share
               tile that belongs there (tiles numbered 0 …                                   in place:
               k²−1 in reading order): a permutation                                         1/k²)
position       where the second patch lies relative to the    ``top-left``, ``right``,      1/8
               first (centre) one: one of the 8 neighbours    ``upper left``, ``Bottom``
masked_patch   the number of the candidate that fills the     ``2``, ``candidate 2``,       1/N
               hole, 0 … N−1                                  ``#2``
=============  =============================================  ============================  ==========
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from reward_service.answers import answer_block, shown

T = TypeVar("T")

TASKS = ("rotation", "jigsaw", "position", "masked_patch")
ROTATIONS = (0, 90, 180, 270)
# The 8 neighbours of a grid cell, named as the prompt names them, with their (row, column) offsets.
POSITIONS: dict[str, tuple[int, int]] = {
    "top-left": (-1, -1), "top": (-1, 0), "top-right": (-1, 1),
    "left": (0, -1), "right": (0, 1),
    "bottom-left": (1, -1), "bottom": (1, 0), "bottom-right": (1, 1),
}
MAX_JIGSAW_GRID = 5        # 25 tiles; a longer answer is not read number by number
MAX_CANDIDATES = 26

_TRIM = " \t\r\n\"'`"
_VERTICAL = {"top": "top", "upper": "top", "up": "top", "above": "top",
             "bottom": "bottom", "lower": "bottom", "down": "bottom", "below": "bottom"}
_HORIZONTAL = {"left": "left", "right": "right"}
_FILLER = {"center", "centre", "middle", "of", "the"}
_ROTATION = re.compile(
    r"([+-]?\d{1,7})\s*(?:°|º|deg|degs|degree|degrees)?\s*"
    r"(clockwise|cw|counterclockwise|counter-clockwise|anticlockwise|anti-clockwise|ccw)?", re.IGNORECASE)
_CANDIDATE = re.compile(r"(?:candidate|option|patch|image)?[\s_]*(?:#|no\.?|number)?\s*(\d{1,4})", re.IGNORECASE)
_INT = re.compile(r"[+-]?\d{1,4}")


@dataclass(frozen=True)
class Parsed(Generic[T]):
    """An answer read from text: ``value`` when it parsed, else ``error`` says why not."""

    value: T | None
    error: str = ""
    raw: str = ""

    @property
    def ok(self) -> bool:
        """Whether the text held a well-formed answer."""
        return self.value is not None


def answer_text(text: str, tag: str = "answer") -> tuple[str | None, str]:
    """The answer's text: the content of the last closed ``<tag>…</tag>`` block, else the whole
    text, without quotes or a final full stop; ``(None, why)`` for an opening tag that is never
    closed or an empty answer."""
    content, why = answer_block(text, tag, _TRIM)
    if content is None:
        return None, why
    content = content.removesuffix(".").strip(_TRIM)
    return (content, "") if content else (None, "the answer is empty")


def _read(text: str, tag: str, what: str) -> tuple[str | None, str]:
    """``answer_text`` with the parse error a reward explains itself with."""
    content, why = answer_text(text, tag)
    if content is None:
        return None, f"malformed: {why}; expected {what} in <{tag}>…</{tag}>"
    return content, ""


def parse_rotation(text: str, tag: str = "answer") -> Parsed[int]:
    """The clockwise rotation in degrees, normalised to 0, 90, 180 or 270."""
    what = "one of 0, 90, 180, 270 (degrees, clockwise)"
    content, error = _read(text, tag, what)
    if content is None:
        return Parsed(None, error)
    # Bounded before the regex: its two whitespace runs would backtrack quadratically on a long one.
    m = _ROTATION.fullmatch(content) if len(content) <= 40 else None
    if m is None:
        return Parsed(None, f"malformed: {shown(content)} is not an angle; expected {what}", content)
    angle = int(m.group(1))
    if m.group(2) and m.group(2).lower() not in ("clockwise", "cw"):
        angle = -angle
    angle %= 360
    if angle not in ROTATIONS:
        return Parsed(None, f"malformed: {m.group(1)}° is not a multiple of 90; expected {what}", content)
    return Parsed(angle, raw=content)


def parse_jigsaw(text: str, tiles: int, tag: str = "answer") -> Parsed[tuple[int, ...]]:
    """A permutation of ``0 … tiles−1``: for each position of the original, the shuffled tile there."""
    what = f"{tiles} distinct tile numbers 0–{tiles - 1} (e.g. {' '.join(map(str, range(tiles)))})"
    content, error = _read(text, tag, what)
    if content is None:
        return Parsed(None, error)
    if len(content) > 16 * tiles:
        return Parsed(None, f"malformed: the answer is {len(content)} characters long; expected {what}", content)
    body = content.strip("[](){} ")
    tokens = [t for t in re.split(r"[\s,;]+", body) if t]
    bad = [t for t in tokens if not _INT.fullmatch(t)]
    if bad:
        return Parsed(None, f"malformed: {shown(bad[0], 20)} is not a tile number; expected {what}", content)
    numbers = tuple(int(t) for t in tokens)
    if len(numbers) != tiles:
        return Parsed(None, f"malformed: {len(numbers)} numbers given; expected {what}", content)
    out_of_range = sorted({n for n in numbers if not 0 <= n < tiles})
    if out_of_range:
        return Parsed(None, f"malformed: tile number(s) {out_of_range[:5]} out of range; expected {what}", content)
    repeated = sorted({n for n in numbers if numbers.count(n) > 1})
    if repeated:
        return Parsed(None, f"malformed: tile number(s) {repeated} given twice (not a permutation); "
                            f"expected {what}", content)
    return Parsed(numbers, raw=content)


def parse_position(text: str, tag: str = "answer") -> Parsed[str]:
    """One of the 8 neighbour names (``top-left`` …), read from e.g. ``Upper Left`` or ``left_top``."""
    what = f"one of {', '.join(POSITIONS)}"
    content, error = _read(text, tag, what)
    if content is None:
        return Parsed(None, error)
    if len(content) > 40:
        return Parsed(None, f"malformed: {shown(content)} is not a position; expected {what}", content)
    vertical: set[str] = set()
    horizontal: set[str] = set()
    for word in re.split(r"[\s_\-/]+", content.lower()):
        if word in _VERTICAL:
            vertical.add(_VERTICAL[word])
        elif word in _HORIZONTAL:
            horizontal.add(_HORIZONTAL[word])
        elif word and word not in _FILLER:
            return Parsed(None, f"malformed: {shown(content)} is not a position; expected {what}", content)
    if len(vertical) > 1 or len(horizontal) > 1 or not (vertical or horizontal):
        return Parsed(None, f"malformed: {shown(content)} is not one position; expected {what}", content)
    name = "-".join([*vertical, *horizontal])
    return Parsed(name, raw=content)


def parse_candidate(text: str, candidates: int, tag: str = "answer") -> Parsed[int]:
    """The number of a candidate, ``0 … candidates−1``."""
    what = f"one candidate number 0–{candidates - 1}"
    content, error = _read(text, tag, what)
    if content is None:
        return Parsed(None, error)
    m = _CANDIDATE.fullmatch(content) if len(content) <= 40 else None
    if m is None:
        return Parsed(None, f"malformed: {shown(content)} is not a candidate number; expected {what}", content)
    number = int(m.group(1))
    if number >= candidates:
        return Parsed(None, f"malformed: candidate {number} does not exist; expected {what}", content)
    return Parsed(number, raw=content)


# ---------------------------------------------------------------------------- gold answers
class GoldError(ValueError):
    """A ground truth that does not hold a valid answer of its task (the caller's data, not the model)."""


def gold_of(ground_truth: Any, task: str) -> Mapping[str, Any]:
    """The ground-truth mapping of an SSL task: ``{"task": task, "answer": …, …}`` (``task`` may be
    left out).

    Raises:
        GoldError: no mapping, no ``answer``, or the ground truth of another task.
    """
    if not isinstance(ground_truth, Mapping):
        raise GoldError(f'the ground truth must be an object {{"task": "{task}", "answer": …}}, '
                        f"got {type(ground_truth).__name__}")
    named = ground_truth.get("task", task)
    if named != task:
        raise GoldError(f"the ground truth is of task {str(named)[:40]!r}, not {task!r}")
    if "answer" not in ground_truth:
        raise GoldError(f'the ground truth has no "answer" (keys: {sorted(map(str, ground_truth))[:10]})')
    return ground_truth


def gold_rotation(ground_truth: Any) -> int:
    """The gold angle of a rotation task."""
    answer = gold_of(ground_truth, "rotation")["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int) or answer not in ROTATIONS:
        raise GoldError(f"the gold rotation {answer!r} is not one of {ROTATIONS}")
    return answer


def gold_jigsaw(ground_truth: Any) -> tuple[int, ...]:
    """The gold permutation of a jigsaw task (its length k² gives the grid)."""
    answer = gold_of(ground_truth, "jigsaw")["answer"]
    if not isinstance(answer, Sequence) or isinstance(answer, str) or not answer:
        raise GoldError(f"the gold jigsaw answer must be a list of tile numbers, got {type(answer).__name__}")
    perm = tuple(answer)
    k = math.isqrt(len(perm))
    if k * k != len(perm) or k > MAX_JIGSAW_GRID:
        raise GoldError(f"the gold jigsaw answer has {len(perm)} tiles: not k² for k ≤ {MAX_JIGSAW_GRID}")
    if any(isinstance(n, bool) or not isinstance(n, int) for n in perm) or sorted(perm) != list(range(len(perm))):
        raise GoldError(f"the gold jigsaw answer {list(perm)[:25]} is not a permutation of 0–{len(perm) - 1}")
    return perm


def gold_position(ground_truth: Any) -> str:
    """The gold neighbour name of a position task."""
    answer = gold_of(ground_truth, "position")["answer"]
    if not isinstance(answer, str) or answer not in POSITIONS:
        raise GoldError(f"the gold position {str(answer)[:40]!r} is not one of {', '.join(POSITIONS)}")
    return str(answer)


def gold_candidate(ground_truth: Any) -> tuple[int, int]:
    """The gold candidate of a masked-patch task and the number of candidates."""
    gold = gold_of(ground_truth, "masked_patch")
    answer, n = gold["answer"], gold.get("candidates")
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_CANDIDATES:
        raise GoldError(f'the ground truth needs "candidates", the number of candidates (2–{MAX_CANDIDATES}), '
                        f"got {n!r}")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < n:
        raise GoldError(f"the gold candidate {answer!r} is not one of 0–{n - 1}")
    return answer, n


# ---------------------------------------------------------------------------- chance levels
def chance_level(task: str, *, grid: int = 2, candidates: int = 4, partial_credit: bool = False) -> float:
    """The expected reward of a uniformly random well-formed answer."""
    if task == "rotation":
        return 1 / len(ROTATIONS)
    if task == "position":
        return 1 / len(POSITIONS)
    if task == "masked_patch":
        return 1 / candidates
    if task == "jigsaw":
        # A random permutation keeps one tile in place on average, out of k².
        return 1 / grid**2 if partial_credit else 1 / math.factorial(grid**2)
    raise ValueError(f"unknown SSL task {task!r}; expected one of {TASKS}")


def format_answer(task: str, answer: Any, tag: str = "answer") -> str:
    """A well-formed answer as the prompt asks for it (demonstrations, tests)."""
    if task == "jigsaw":
        body = " ".join(str(n) for n in answer)
    else:
        body = str(answer)
    return f"<{tag}>{body}</{tag}>"
