"""An A/B test's rating mean is taken of the numeric HUMAN ratings on its answers' traces: a thumb
is no point on the scale (issue 14: counted as 1.0, a thumbs-up pulled a 1-5 mean down), and
neither is NaN or infinity."""

from __future__ import annotations

import mlflow
from mlflow.entities import AssessmentSource

import mlflow_lite_plugin as ml

HUMAN = AssessmentSource(source_type="HUMAN", source_id="tester")


def test_thumbs_and_non_finite_values_are_not_in_the_rating_mean(client, openai_kw):
    test = ml.ABTest(
        {"A": {"model": "gpt-4o", "params": openai_kw}, "B": {"model": "gpt-4o-mini", "params": openai_kw}},
        client=client, min_samples=2,
    )
    answers = {}
    i = 0
    while len(answers) < 2:  # one answer of each variant
        r = test.query(user_id=f"user-{i}", input=f"question {i}")
        answers.setdefault(r.variant, r)
        i += 1
    test.flush()
    client.flush_traces()
    a, b = answers["A"].trace_id, answers["B"].trace_id
    for trace_id, value in [(a, 5), (a, True), (a, float("inf")), (b, 2), (b, False)]:
        mlflow.log_feedback(trace_id=trace_id, name="rating", value=value, source=HUMAN)

    report = test.report(log=False)
    assert (report.variants["A"].rating_n, report.variants["A"].rating_mean) == (1, 5.0)
    assert (report.variants["B"].rating_n, report.variants["B"].rating_mean) == (1, 2.0)
