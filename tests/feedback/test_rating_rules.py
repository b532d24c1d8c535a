"""The HUMAN ratings on a trace, read by one rule everywhere (issue 14: ``human_ratings`` existed
twice, one copy taking NaN and infinity, the other refusing them; the A/B test counted thumbs as
1 or 0 on a 1-5 scale). A rating is a thumb (True/False) or a finite number; a mean is taken of
the numbers only."""

from __future__ import annotations

from uuid import uuid4

import mlflow
from mlflow.entities import AssessmentSource

import mlflow_lite_plugin as ml

HUMAN = AssessmentSource(source_type="HUMAN", source_id="tester")


def test_an_infinite_rating_does_not_pass_min_rating(client, openai_kw, tmp_path):
    client.set_experiment(f"exp-{uuid4().hex}")
    rated = client.query(model="gpt-4o", prompt="How do I export my data?", **openai_kw).trace_id
    client.flush_traces()
    # another tool logged it (ml.record_feedback refuses a rating off its scale): no rating at all
    mlflow.log_feedback(trace_id=rated, name="rating", value=float("inf"), source=HUMAN)
    summary = client.export_dataset(str(tmp_path / "train.jsonl"), min_rating=4)
    assert summary.kept == 0, summary

    mlflow.log_feedback(trace_id=rated, name="rating", value=float("nan"), source=HUMAN)
    ml.record_feedback(rated, rating=5, user="alice")  # the one real rating decides alone
    summary = client.export_dataset(str(tmp_path / "again.jsonl"), min_rating=4)
    assert summary.kept == 1, summary
