"""SQuAD normalisation, exact match and F1: hand-computed examples of the official
evaluators' semantics (evaluate-v2.0.py by default, v1.1 and HotpotQA's yes/no rule
as options), called as pure functions and through the ``qa_em``/``qa_f1`` rewards."""

from __future__ import annotations

import pytest

from reward_service.registry import RewardContext, load_reward
from reward_service.rewards._text import gold_answers, normalize_answer, squad_golds
from reward_service.rewards.qa_em import exact_match, max_exact_match
from reward_service.rewards.qa_f1 import f1_score, max_f1
from reward_service.settings import RewardSettings
from reward_service.types import RewardInputError, RewardOutcome
from rlyard.domain import ScoringItem, Trajectory


async def _score(name: str, item: ScoringItem, **params: object) -> RewardOutcome:
    cls = load_reward(name)
    return await cls(RewardContext(RewardSettings())).score(item, cls.Params.model_validate(params))


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("The Quick, Brown Fox!", "quick brown fox"),
        ("  Paris\t\n France ", "paris france"),
        ("The the THE", ""),                       # only articles: nothing left
        ("theatre and anthem", "theatre and anthem"),  # articles only as whole words
        # Punctuation goes before articles: "a.b." -> "ab" (no article left), "a-team" -> "ateam".
        ("A.B.", "ab"),
        ("a-team", "ateam"),
        # "an" is a word, NBSP is whitespace (str.split) and not a word character (\b).
        ("an\u00a0apple", "apple"),
        # ASCII apostrophe and comma are string.punctuation; the typographic ’ and – are not.
        ("Ça, c'est l'été", "ça cest lété"),
        ("l’été – Ünïcode", "l’été – ünïcode"),
        # é is a word character, so "ané" is not the article "an".
        ("ané", "ané"),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def test_exact_match_after_normalisation() -> None:
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    assert exact_match("PARIS", "paris") == 1.0              # case
    assert exact_match("l’été", "l'été") == 0.0              # ’ is not string.punctuation
    # Max over golds.
    assert max_exact_match("NYC", ["New York City", "NYC"]) == 1.0
    assert max_exact_match("nyc!", ["New York City", "N.Y.C."]) == 1.0  # "n.y.c." -> "nyc"


def test_exact_match_empty_strings_v2_and_v1() -> None:
    # v2.0: no gold answer -> unanswerable, only an empty prediction is right.
    assert max_exact_match("", []) == 1.0
    assert max_exact_match("the", []) == 1.0     # "the" normalises to ""
    assert max_exact_match("Paris", []) == 0.0
    # v2.0 drops golds that normalise to "": ["", "Paris"] -> ["Paris"].
    assert squad_golds(["", "a", "Paris"]) == ["Paris"]
    assert max_exact_match("", ["", "Paris"]) == 0.0
    # v1.1 keeps them: "" == "".
    assert max_exact_match("", ["", "Paris"], "v1.1") == 1.0
    with pytest.raises(RewardInputError):
        max_exact_match("", [], "v1.1")


def test_f1_hand_computed() -> None:
    # pred "cat sat on mat" (4 tokens), gold "cat on mat" (3): same = 3,
    # P = 3/4, R = 3/3, F1 = 2·0.75·1 / 1.75 = 6/7.
    assert f1_score("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    # Multiset overlap: pred [paris×3], gold [paris, france]: same = min(3, 1) = 1,
    # P = 1/3, R = 1/2, F1 = 2·(1/6) / (5/6) = 2/5.
    assert f1_score("paris paris paris", "paris france") == pytest.approx(0.4)
    assert f1_score("Paris, France!", "paris france") == 1.0   # punctuation and case
    assert f1_score("Lyon", "Paris") == 0.0
    # Max over golds: "new york" vs "new york city": P = 2/2, R = 2/3, F1 = (4/3)/(5/3) = 0.8; vs "NYC": 0.
    assert max_f1("new york", ["New York City", "NYC"]) == pytest.approx(0.8)


def test_f1_empty_strings_v2_and_v1() -> None:
    # v2.0 compute_f1: either side empty -> 1 if both are, else 0.
    assert f1_score("", "") == 1.0
    assert f1_score("the", "a") == 1.0          # both normalise to no tokens
    assert f1_score("", "Paris") == 0.0
    assert f1_score("Paris", "") == 0.0
    assert max_f1("", []) == 1.0                # unanswerable
    assert max_f1("Paris", []) == 0.0
    # v1.1 f1_score: no common token is 0, even for two empty answers.
    assert f1_score("", "", "v1.1") == 0.0
    assert f1_score("the cat sat on the mat", "a cat on a mat", "v1.1") == pytest.approx(6 / 7)


def test_f1_hotpot_yes_no() -> None:
    # Plain F1: [no] vs [no, way]: P = 1, R = 1/2, F1 = 2/3; HotpotQA: "no" differs from "no way" -> 0.
    assert f1_score("no", "no way") == pytest.approx(2 / 3)
    assert f1_score("no", "no way", hotpot_yes_no=True) == 0.0
    # The gold is "yes" and the prediction differs: plain P = 1/3, R = 1, F1 = 0.5; HotpotQA 0.
    assert f1_score("yes it is", "yes") == pytest.approx(0.5)
    assert f1_score("yes it is", "yes", hotpot_yes_no=True) == 0.0
    assert f1_score("Yes.", "yes", hotpot_yes_no=True) == 1.0
    # Neither side special: unchanged.
    assert f1_score("paris paris paris", "paris france", hotpot_yes_no=True) == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("ground_truth", "golds"),
    [
        ({"answers": ["Paris", "City of Light"]}, ["Paris", "City of Light"]),
        ({"answers": {"text": ["Paris"], "answer_start": [3]}}, ["Paris"]),
        ({"target": ["Paris"]}, ["Paris"]),
        ({"answer": "Paris"}, ["Paris"]),
        ("Paris", ["Paris"]),
        (["Paris", 1889], ["Paris", "1889"]),
        ({"answers": []}, []),
    ],
)
def test_gold_answers_shapes(ground_truth: object, golds: list[str]) -> None:
    assert gold_answers(ground_truth) == golds


@pytest.mark.parametrize("ground_truth", [None, {"question": "?"}, {"answers": [{"x": 1}]}])
def test_gold_answers_missing(ground_truth: object) -> None:
    with pytest.raises(RewardInputError):
        gold_answers(ground_truth)


async def test_qa_em_reward() -> None:
    out = await _score("qa_em", ScoringItem(prediction="The Eiffel Tower!", ground_truth={"answers": ["Eiffel Tower"]}))
    assert out.value == 1.0 and out.step_rewards == []
    out = await _score("qa_em", ScoringItem(prediction="Louvre", ground_truth="Eiffel Tower"))
    assert out.value == 0.0
    # The trajectory's final answer is the text when there is no prediction.
    traj = Trajectory(final_answer="eiffel tower")
    assert (await _score("qa_em", ScoringItem(trajectory=traj, ground_truth=["Eiffel Tower"]))).value == 1.0
    # Empty answers: v2.0 (default) unanswerable vs v1.1 needs a gold.
    assert (await _score("qa_em", ScoringItem(prediction="", ground_truth={"answers": []}))).value == 1.0
    with pytest.raises(RewardInputError):
        await _score("qa_em", ScoringItem(prediction="", ground_truth={"answers": []}), squad_version="v1.1")
    with pytest.raises(RewardInputError):
        await _score("qa_em", ScoringItem(prediction="Paris"))


async def test_qa_f1_reward() -> None:
    item = ScoringItem(prediction="the cat sat on the mat", ground_truth={"answers": ["dog", "a cat on a mat"]})
    out = await _score("qa_f1", item)
    assert out.value == pytest.approx(6 / 7)
    assert "a cat on a mat" in out.explanation
    yes_no = ScoringItem(prediction="no", ground_truth={"answer": "no way"})
    assert (await _score("qa_f1", yes_no)).value == pytest.approx(2 / 3)
    assert (await _score("qa_f1", yes_no, hotpot_yes_no=True)).value == 0.0
    empty = ScoringItem(prediction="", ground_truth={"answers": [""]})
    assert (await _score("qa_f1", empty)).value == 1.0
    assert (await _score("qa_f1", empty, squad_version="v1.1")).value == 0.0
