"""The LocalSearchBench metrics of a local-life answer: correctness (0/1), completeness and
faithfulness (0–10), computed by rules against the corpus and the trajectory's retrieved context.

What the rules read:

- the **answer** (the final ``<answer>`` text): every ``poi_id`` it cites (two capitals and six
  digits, e.g. ``SH000123``), in order, each once; the text from one cited id to the next is that
  recommendation's *segment*, and the claims in it are checked: a rating (``rated 4.6``,
  ``rating: 4.6``, ``4.6 stars``) and prices (``¥120``);
- the **retrieved context**: every ``poi_id`` the tools showed the agent in this trajectory (the
  observations of calls that did not fail, as the agent saw them, after any cap);
- the **records** of the cited POIs and of the task's anchor, as ``poi_detail`` returns them
  (``None`` for an id the corpus does not have);
- the task's **ground truth**: the checklist (``reward_service.local_life.checklist``), the number of answers
  asked for (the ``count`` item) and the gold answer set (every POI that meets the checklist).

The metrics:

- **correctness** is 1 when the answer cites at least one POI and at most as many as asked, every
  cited POI exists, was retrieved in this trajectory, and meets every checklist item; else 0.
  A recommended merchant absent from the retrieved context makes it 0, as in the benchmark, even
  when the merchant happens to fit: the agent cannot know that without having looked.
- **completeness** is ``10 × Σ met(p) / target`` over the first ``count`` cited POIs, where
  ``met(p)`` is the fraction of the POI-level checklist items that POI meets (0 when it does not
  exist) and ``target = min(count, |gold|)``: a full list of fitting POIs scores 10, one fitting
  POI of three asked for 3.3, a POI that breaks one of four conditions 7.5 / target.
- **faithfulness** is ``10 × grounded / claims``: each cited POI is a claim, grounded when it exists
  and was retrieved; each rating or price stated in its segment is a claim, grounded when that POI was
  retrieved and its record agrees (rating within 0.05; a price equal to the average price or one
  product's price, within 0.5): a true fact about a POI the agent never looked at is a guess.
  An answer that makes no claim scores 0: there is nothing to trust.

The judge-model versions of the three metrics are ``judge`` reward specs with the benchmark's
rubrics (``envs.local_life.judge``); they read the same question, reference, response and
retrieved context.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reward_service.local_life.checklist import check_poi

POI_ID = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2}\d{6})(?![0-9])")
# One whitespace run per gap (not ``\s*(?:of|:|=)?\s*``, whose two runs split a long blank run in
# quadratically many ways when no digit follows).
RATING = re.compile(r"(?:\brated|\brating)\s*(?:(?:of|:|=)\s*)?(\d(?:\.\d+)?)\b|\b(\d\.\d)\s*(?:stars?|★|/\s*5)",
                    re.IGNORECASE)
PRICE = re.compile(r"(?:¥|RMB\s*|CNY\s*)(\d+(?:\.\d+)?)", re.IGNORECASE)
RATING_TOLERANCE = 0.05
PRICE_TOLERANCE = 0.5
METRICS = ("correctness", "completeness", "faithfulness")


@dataclass(frozen=True)
class Recommendation:
    """One cited POI and the claims its segment makes."""

    poi_id: str
    segment: str
    ratings: tuple[float, ...] = ()
    prices: tuple[float, ...] = ()


@dataclass
class Scores:
    """The three metrics of one answer and why."""

    correctness: int
    completeness: float          # 0–10
    faithfulness: float          # 0–10
    cited: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def explain(self) -> str:
        """One line: the scores, then what lowered them."""
        head = (f"correctness {self.correctness}, completeness {self.completeness:.1f}/10, "
                f"faithfulness {self.faithfulness:.1f}/10; cited {', '.join(self.cited) or 'nothing'}")
        return head + ("; " + "; ".join(self.notes) if self.notes else "")


def parse_answer(text: str) -> list[Recommendation]:
    """The POIs an answer cites, in order, each once, with the rating and price claims of its segment."""
    matches = list(POI_ID.finditer(text))
    out: list[Recommendation] = []
    seen: set[str] = set()
    for i, m in enumerate(matches):
        if m.group(1) in seen:
            continue
        seen.add(m.group(1))
        end = next((n.start() for n in matches[i + 1:] if n.group(1) not in seen), len(text))
        segment = text[m.start():end]
        ratings = tuple(float(a or b) for a, b in RATING.findall(segment))
        prices = tuple(float(p) for p in PRICE.findall(segment))
        out.append(Recommendation(m.group(1), segment, ratings, prices))
    return out


def ids_in(texts: Iterable[str]) -> set[str]:
    """Every poi_id in ``texts``."""
    return {m.group(1) for text in texts for m in POI_ID.finditer(text)}


def request_count(checklist: Sequence[Mapping[str, Any]], default: int = 1) -> int:
    """How many answers the checklist's ``count`` item allows."""
    return next((int(item["max"]) for item in checklist if item.get("kind") == "count"), default)


def _met(record: Mapping[str, Any] | None, items: Sequence[Mapping[str, Any]],
         anchor: Mapping[str, Any] | None) -> tuple[float, list[str]]:
    if record is None:
        return 0.0, ["not in the corpus"]
    problems = check_poi(record, [dict(i) for i in items], anchor)
    return (1.0 - len(problems) / len(items) if items else 1.0), problems


def _grounded_claims(rec: Recommendation, record: Mapping[str, Any] | None,
                     retrieved: bool) -> tuple[int, int, list[str]]:
    claims, grounded, notes = 1, 0, []
    if record is None:
        notes.append(f"{rec.poi_id} does not exist")
    elif not retrieved:
        notes.append(f"{rec.poi_id} was never retrieved")
    else:
        grounded += 1
    for rating in rec.ratings:
        claims += 1
        if record is not None and retrieved and abs(float(record["rating"]) - rating) <= RATING_TOLERANCE:
            grounded += 1
        elif retrieved:
            notes.append(f"{rec.poi_id} rating {rating:g} is not the record's"
                         + (f" {record['rating']:.1f}" if record is not None else ""))
    for price in rec.prices:
        claims += 1
        known = [] if record is None else [float(record["avg_price"])] + [float(p["price"]) for p in record["products"]]
        if retrieved and any(abs(k - price) <= PRICE_TOLERANCE for k in known):
            grounded += 1
        elif retrieved:
            notes.append(f"{rec.poi_id} price ¥{price:g} is neither its average price nor a product's")
    return claims, grounded, notes


def score_answer(answer: str, retrieved: set[str], records: Mapping[str, Mapping[str, Any] | None],
                 checklist: Sequence[Mapping[str, Any]], *, n_gold: int,
                 anchor_record: Mapping[str, Any] | None = None) -> Scores:
    """The three metrics of ``answer`` (see the module docstring).

    ``records`` maps every cited poi_id to its record, or to None when the corpus lacks it;
    ``n_gold`` is the size of the gold answer set (at least 1).

    Raises:
        ValueError: a cited id missing from ``records``, ``n_gold < 1``, or a checklist item the
            checker does not know or that needs the anchor's record when none is given.
    """
    if n_gold < 1:
        raise ValueError(f"n_gold={n_gold}: a task has at least one gold answer")
    recs = parse_answer(answer)
    missing = [r.poi_id for r in recs if r.poi_id not in records]
    if missing:
        raise ValueError(f"no record (or None) given for cited poi_id(s) {missing}")
    count = request_count(checklist)
    items = [i for i in checklist if i.get("kind") != "count"]
    notes: list[str] = []
    if not recs:
        return Scores(0, 0.0, 0.0, [], ["the answer cites no poi_id"])

    fits, met_sum = True, 0.0
    for i, rec in enumerate(recs):
        met, problems = _met(records[rec.poi_id], items, anchor_record)
        if i < count:
            met_sum += met
        if problems:
            fits = False
            notes.append(f"{rec.poi_id}: {'; '.join(problems)}")
    absent = [r.poi_id for r in recs if r.poi_id not in retrieved]
    if len(recs) > count:
        notes.append(f"cites {len(recs)} POIs, {count} asked for at most")
    correct = int(fits and not absent and len(recs) <= count)
    if absent:
        notes.append(f"not in the retrieved context: {', '.join(absent)}")
    completeness = min(10.0, 10.0 * met_sum / min(count, n_gold))

    claims = grounded = 0
    for rec in recs:
        c, g, why = _grounded_claims(rec, records[rec.poi_id], rec.poi_id in retrieved)
        claims, grounded = claims + c, grounded + g
        notes.extend(w for w in why if "never retrieved" not in w)      # said once above
    faithfulness = 10.0 * grounded / claims
    return Scores(correct, round(completeness, 4), round(faithfulness, 4), [r.poi_id for r in recs], notes)
