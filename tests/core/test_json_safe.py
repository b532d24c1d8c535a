"""One rule for writing values JSON has no spelling for: NaN and infinity are written as null,
by the validation result (its parsed document) as by the A/B report (issue 14: two copies of
``_json_safe`` wrote infinity as the string "inf" in one place and null in the other)."""

from __future__ import annotations

import json

import mlflow_lite_plugin as ml


def test_a_validation_result_writes_nan_and_infinity_as_null():
    result = ml.ValidationResult(
        True, [], [], value={"high": float("inf"), "low": [float("-inf"), float("nan"), 1.5], 3: ("a", {"b"})}
    )
    written = result.to_dict()
    assert written["value"] == {"high": None, "low": [None, None, 1.5], "3": ["a", ["b"]]}
    assert json.loads(json.dumps(written, allow_nan=False)) == written


def test_an_answer_parsed_to_infinity_is_written_as_null(client):
    # the offline model answers "Echo: <prompt>"; as YAML that is {"Echo": inf}
    r = client.query(model="lite/echo", prompt=".inf", validate={"format": "yaml"})
    assert r.validation.passed and r.validation.value == {"Echo": float("inf")}
    assert r.validation.to_dict()["value"] == {"Echo": None}
