"""The judge-model versions of the LocalSearchBench metrics: ``judge`` reward specs with the
benchmark's rubrics, reading the same question, reference, response and retrieved context as the
rule-based metrics (``reward_service.local_life.metrics``)."""

from __future__ import annotations

from typing import Any

from reward_service.local_life.metrics import METRICS

JUDGE_TEMPLATE = (
    "{rubric}\n\n"
    "User question:\n{question}\n\n"
    "Reference (the POIs that satisfy every requirement, and the requirements):\n{reference}\n\n"
    "Retrieved context (everything the tools returned to the assistant):\n{context}\n\n"
    "Assistant's answer:\n{response}\n\n"
    "Give a score from {score_min} to {score_max}. Answer in exactly this format:\n"
    "Score: <number>\n"
    "Reason: <one sentence>"
)

JUDGE_RUBRICS = {
    "correctness": (
        "You grade the CORRECTNESS of a local-life assistant's recommendation against a checklist.\n"
        "Score 1 only if ALL hold, else 0:\n"
        "- count: it recommends at least one merchant and no more than the user asked for;\n"
        "- type: every recommended merchant is of the requested category;\n"
        "- location: every one is in the requested city/area, or within the requested distance;\n"
        "- price: every one is within the requested price limits;\n"
        "- special needs: every one meets the remaining requirements (rating, opening time, tags, "
        "facilities, products);\n"
        "- every recommended merchant, identified by its poi_id, appears in the retrieved context. "
        "A recommended merchant absent from the retrieved context makes the score 0.\n"
        "Use the reference to decide whether a merchant meets the requirements."
    ),
    "completeness": (
        "You grade the COMPLETENESS of a local-life assistant's answer from 0 to 10: does it address every "
        "part of the request?\n"
        "- 10: it gives as many suitable merchants as asked (or all that exist), each with its poi_id, and "
        "covers every requirement (type, location, price, rating, time, special needs).\n"
        "- 5: it gives some suitable merchants or leaves some requirements unaddressed.\n"
        "- 0: it recommends nothing suitable or ignores the request."
    ),
    "faithfulness": (
        "You grade the FAITHFULNESS of a local-life assistant's answer from 0 to 10: is everything it says "
        "supported by the retrieved context?\n"
        "- 10: every merchant, poi_id, rating, price and other fact in the answer appears in the retrieved "
        "context.\n"
        "- 5: some claims are unsupported or misquoted.\n"
        "- 0: the answer is invented: merchants or facts that the context does not contain."
    ),
}


def judge_spec(metric: str, **overrides: Any) -> dict[str, Any]:
    """The ``judge`` reward spec of one metric with the benchmark's rubric (correctness 0–1, the
    others 0–10, normalised to [0, 1]); ``overrides`` set other judge params (backend, model, …)."""
    if metric not in JUDGE_RUBRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    params = {"rubric": JUDGE_RUBRICS[metric], "template": JUDGE_TEMPLATE, "score_min": 0.0,
              "score_max": 1.0 if metric == "correctness" else 10.0}
    return {"judge": {"weight": 1.0, **params, **overrides}}
