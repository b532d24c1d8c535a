"""A/B tests: sticky assignment, config errors, the decision rule on synthetic observations, and
end to end on the stub server (cost and quality winners, ratings from traces, the MLflow run,
promotion of a registered flavor model, observations shared through SQLite)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections import Counter

import mlflow
import numpy as np
import pytest
from mlflow.entities import AssessmentSource

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.workflows.ab_stats import holm
from mlflow_lite_plugin.workflows.abtest import ABTest, ABTestError, Observation, ab_test, build_report

from tests.helpers import KEY, get_trace

SIMPLE = {"A": {"model": "gpt-4o", "prompt": "Answer: {input}"}, "B": {"model": "gpt-4o-mini"}}


def slower_big_model(stub) -> None:
    """gpt-4o answers 10 ms later, as a bigger model would. Without a real difference, latency
    would be judged significantly different in about 1 run in 40 (the test's alpha), and a
    trade-off against cost would make the winner flaky."""
    stub.inject(delay=0.01, model="gpt-4o", times=10_000)


def two_models(openai_kw, **extra):
    """gpt-4o (A) against gpt-4o-mini (B, about 16x cheaper per token) on the stub server."""
    return {
        "A": {"model": "gpt-4o", "prompt": "Answer: {input}", "params": openai_kw, **extra},
        "B": {"model": "gpt-4o-mini", "prompt": "Answer: {input}", "params": openai_kw, **extra},
    }


def traffic(test: ABTest, per_variant: int, **kwargs) -> list:
    """Query with fresh user ids until every variant has ``per_variant`` calls; returns what
    each call returned or raised."""
    counts: Counter[str] = Counter()
    results = []
    i = 0
    while min(counts[v] for v in test.variants) < per_variant:
        user = f"user-{i}"
        i += 1
        variant = test.assign(user)
        if counts[variant] >= per_variant:  # keeps the arms balanced and the test short
            continue
        try:
            results.append(test.query(user_id=user, input=f"question {i}", **kwargs))
        except ml.ValidationError as error:
            results.append(error)
        counts[variant] += 1
    test.flush()
    return results


# -- assignment --


def test_assignment_is_sticky_across_instances_and_follows_the_split():
    first = ab_test({**SIMPLE, "C": {"model": "gpt-4o", "prompt": "{input}?"}}, split=[0.2, 0.3, 0.5])
    second = ABTest({**SIMPLE, "C": {"model": "gpt-4o", "prompt": "{input}?"}}, split=[0.2, 0.3, 0.5])
    assert first.name == second.name and first.name.startswith("ab-")
    ids = [f"user-{i}" for i in range(10_000)]
    assigned = [first.assign(u) for u in ids]
    assert assigned == [second.assign(u) for u in ids]
    shares = Counter(assigned)
    for variant, weight in first.weights.items():
        assert abs(shares[variant] / len(ids) - weight) < 0.02
    # another test splits the same users independently
    other = ABTest({**SIMPLE, "C": {"model": "gpt-4o", "prompt": "{input}?"}}, split=[0.2, 0.3, 0.5], name="other")
    agreement = sum(a == other.assign(u) for a, u in zip(assigned, ids, strict=True)) / len(ids)
    assert abs(agreement - (0.2**2 + 0.3**2 + 0.5**2)) < 0.03
    # without a user id the variant is random, and a zero weight gets no traffic
    assert {first.assign() for _ in range(200)} == {"A", "B", "C"}
    holdout = ABTest({**SIMPLE, "C": {"model": "x"}}, split={"A": 0.5, "B": 0.5, "C": 0.0})
    assert "C" not in {holdout.assign(u) for u in ids[:2000]}


def test_default_name_is_stable_ignores_secrets_and_the_split():
    with_key = {v: {**spec, "params": {"api_key": "sk-1"}} for v, spec in SIMPLE.items()}
    rotated = {v: {**spec, "params": {"api_key": "sk-2"}} for v, spec in SIMPLE.items()}
    assert ABTest(with_key).name == ABTest(rotated, split=[0.9, 0.1]).name
    assert ABTest(SIMPLE).name != ABTest({**SIMPLE, "B": {"model": "gpt-4o-mini", "prompt": "Hi {input}"}}).name
    assert ABTest(SIMPLE, name="pricing").name == "pricing"


@pytest.mark.parametrize(
    "split, message",
    [
        ([0.5, 0.3, 0.2], "3 weights for 2 variants"),
        ([1.2, -0.2], "non-negative"),
        ([0.5, 0.6], "sum to 1"),
        ([50, 50], "sum to 1"),
        ({"A": 0.5, "X": 0.5}, "unknown variant"),
        ({"A": 1.0}, "no weight for"),
        ([1.0, 0.0], "at least two variants"),
        ("0.5,0.5", "list of weights"),
        ([0.5, float("nan")], "non-negative"),
    ],
)
def test_bad_split_is_refused(split, message):
    with pytest.raises(ArgumentError, match=message) as error:
        ABTest(SIMPLE, split=split)
    assert error.value.argument == "split"


def test_split_within_tolerance_is_accepted():
    assert ABTest(SIMPLE, split=[0.1 + 0.2, 0.7]).weights == {"A": pytest.approx(0.3), "B": 0.7}


@pytest.mark.parametrize(
    "variants, message",
    [
        ({"A": {"model": "gpt-4o"}}, "at least two"),
        ({"A": {"modle": "gpt-4o"}, "B": {"model": "x"}}, "unknown key 'modle'.* Did you mean 'model'"),
        ({"A": "gpt-4o", "B": {"model": "x"}}, "variant 'A' must be a dict"),
        ({"A": {}, "B": {"model": "x"}}, "variant 'A' is empty"),
        ({"A": {"model_uri": "models:/m/1", "prompt": "{input}"}, "B": {"model": "x"}}, "only params"),
        ({"A": {"template": "summarize", "prompt": "{input}"}, "B": {"model": "x"}}, "both template and prompt"),
        ({"A": {"model": "x", "prompt": "Q: {input!r:>}{0}"}, "B": {"model": "x"}}, "plain name"),
        ({"A": {"model": "x", "prompt": "Q: {input"}, "B": {"model": "x"}}, "not a valid template"),
        ({"A": {"model": "x", "params": {"model": "y"}}, "B": {"model": "x"}}, "give model as the variant's own key"),
        ({"A": {"model": ""}, "B": {"model": "x"}}, "model must be a non-empty string"),
        ({"": {"model": "x"}, "B": {"model": "x"}}, "non-empty strings"),
    ],
)
def test_bad_variant_config_is_refused_naming_the_problem(variants, message):
    with pytest.raises(ArgumentError, match=message) as error:
        ABTest(variants)
    assert error.value.argument == "variants"


@pytest.mark.parametrize(
    "options, argument",
    [({"min_samples": 1}, "min_samples"), ({"confidence": 95}, "confidence"),
     ({"goals": {"brand_voice": "high"}}, "goals"), ({"name": ""}, "name")],
)
def test_bad_options_are_refused(options, argument):
    with pytest.raises(ArgumentError) as error:
        ABTest(SIMPLE, **options)
    assert error.value.argument == argument


def test_bad_call_arguments_are_refused_before_any_call(client, stub, openai_kw):
    test = ABTest(two_models(openai_kw, params={**openai_kw, "temprature": 0}), client=client)
    with pytest.raises(ArgumentError, match=r"variant 'A'.*temprature"):  # every variant is checked on first use
        test.query(input="hi")
    test = ABTest(two_models(openai_kw), client=client)
    with pytest.raises(ArgumentError, match="set by each variant") as error:
        test.query(input="hi", model="gpt-4o")
    assert error.value.argument == "model"
    with pytest.raises(ArgumentError, match="Did you mean 'input'") as error:
        test.query(inptu="hi")
    with pytest.raises(ArgumentError, match="needs it for its prompt"):
        test.query(temperature=0)
    assert stub.requests == []


def test_prompt_template_and_plain_variants_fill_their_own_variables(client, stub, openai_kw):
    stub.reply = lambda model, messages: "positive"
    test = ABTest(
        {
            "prompt": {"model": "gpt-4o", "prompt": "Sentiment of {input} for {product}?", "system": "Be terse.",
                       "params": {**openai_kw, "temperature": 0.5}},
            "template": {"template": "sentiment", "model": "gpt-4o-mini", "params": openai_kw},
            "plain": {"model": "gpt-4o-mini", "prompt": "Classify this review:", "params": openai_kw},
        },
        client=client,
    )
    users = {}
    for i in range(100):
        users.setdefault(test.assign(f"u{i}"), f"u{i}")
    bodies = {}
    for variant, user in users.items():
        r = test.query(user_id=user, input="I love it", product="the kettle", temperature=0)
        assert r.variant == variant and r.text == "positive"
        bodies[variant] = stub.requests[-1].body
    assert bodies["prompt"]["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Sentiment of I love it for the kettle?"},
    ]
    assert bodies["prompt"]["temperature"] == 0.5  # the variant's setting is what is under test
    assert bodies["template"]["temperature"] == 0 and "I love it" in bodies["template"]["messages"][-1]["content"]
    assert bodies["plain"]["messages"][-1]["content"] == "Classify this review:\n\nI love it"
    test.flush()
    assert [o.user_id for o in test.store.observations(test.name)] == list(users.values())


# -- the decision rule on synthetic observations --


def observations(variant: str, n: int, rng, *, cost=1.0, latency=1.0, passed=None, **metrics) -> list[Observation]:
    """Synthetic answers: normal cost and latency around the given means, validation passing
    with probability ``passed``; a custom metric given below 1 is a boolean with that chance of
    True, else a number drawn around it."""
    return [
        Observation(
            variant, cost=float(rng.normal(cost, 0.1)), latency=float(rng.normal(latency, 0.1)),
            validation=None if passed is None else bool(rng.random() < passed),
            metrics={name: bool(rng.random() < p) if isinstance(p, float) and p < 1 else float(rng.normal(p, 1))
                     for name, p in metrics.items()},
        )
        for _ in range(n)
    ]


def report_of(obs, weights=None, **options):
    options = {"min_samples": 30, "confidence": 0.95, "goals": {}, **options}
    return build_report("t", weights or {"A": 0.5, "B": 0.5}, obs, {}, **options)


def test_rule_quality_beats_cost_and_conflicts_are_a_trade_off():
    rng = np.random.default_rng(1)
    quality = report_of(observations("A", 60, rng, cost=2.0, passed=0.95) + observations("B", 60, rng, passed=0.5))
    assert quality.winner == "A" and quality.status == "winner"
    assert "A beats B on validation pass rate" in quality.reason and "not significantly worse" in quality.reason
    trade = report_of(observations("A", 60, rng, cost=2.0, latency=1.0) + observations("B", 60, rng, latency=2.0))
    assert trade.winner is None and trade.status == "trade-off"
    assert "better than" in trade.reason and "cost" in trade.reason and "latency" in trade.reason
    same = report_of(observations("A", 60, rng) + observations("B", 60, rng))
    assert same.status == "no significant difference" and same.winner is None


def test_rule_goals_and_custom_metric_tests():
    rng = np.random.default_rng(2)
    obs = (observations("A", 50, rng, toxicity=5.0, on_brand=0.9)
           + observations("B", 50, rng, toxicity=1.0, on_brand=0.9))
    tests = {c.metric: c.test for c in report_of(obs).comparisons}
    assert tests["toxicity"] == "welch_t" and tests["on_brand"] == "two_proportion_z"
    assert report_of(obs).winner == "A"  # custom metrics are "higher is better" by default
    assert report_of(obs, goals={"toxicity": "min"}).winner == "B"
    ignored = report_of(obs, goals={"toxicity": "ignore"})
    assert "toxicity" not in {c.metric for c in ignored.comparisons} and ignored.winner is None


def test_rule_collecting_and_untested_metrics():
    rng = np.random.default_rng(3)
    collecting = report_of(observations("A", 12, rng) + observations("B", 40, rng))
    assert collecting.status == "collecting" and collecting.winner is None
    assert "A has 12/30 samples" in collecting.reason
    # a variant with zero weight and no traffic does not hold the test up
    three = report_of(observations("A", 40, rng, cost=2.0) + observations("B", 40, rng),
                      weights={"A": 0.5, "B": 0.5, "C": 0.0})
    assert three.winner == "B" and three.variants["C"].n == 0
    # ratings below the minimum are reported as not tested yet
    obs = observations("A", 40, rng) + observations("B", 40, rng, cost=0.5)
    for i, o in enumerate(obs):
        o.trace_id = f"t{i}"
    rated = build_report("t", {"A": 0.5, "B": 0.5}, obs, {"t0": [5.0], "t1": [4.0], "t45": [1.0, 2.0]},
                         min_samples=30, confidence=0.95, goals={})
    assert rated.winner == "B" and "Not tested yet (too few values): rating" in rated.reason
    assert rated.variants["A"].rating_n == 2 and rated.variants["B"].rating_mean == 1.5


def test_rule_uses_holm_over_every_comparison_of_three_variants():
    rng = np.random.default_rng(4)
    obs = (observations("A", 40, rng, cost=1.0) + observations("B", 40, rng, cost=1.05)
           + observations("C", 40, rng, cost=1.5))
    report = report_of(obs, weights={"A": 0.4, "B": 0.3, "C": 0.3})
    tested = [c for c in report.comparisons if c.p_value is not None]
    assert len(tested) == 3 * 3  # error rate, cost, latency for each of 3 pairs
    assert [c.adjusted_p for c in tested] == pytest.approx(holm([c.p_value for c in tested]))
    assert report.winner == "A"  # cheaper than each of the others: a winner must beat every one
    assert "A beats B on cost" in report.reason and "A beats C on cost" in report.reason


def test_rule_false_winner_rate_under_the_null_stays_below_alpha():
    rng = np.random.default_rng(5)
    winners = 0
    for _ in range(150):
        obs = (observations("A", 30, rng, passed=0.8, brand=3.0) + observations("B", 30, rng, passed=0.8, brand=3.0))
        winners += report_of(obs).winner is not None
    assert winners / 150 <= 0.06  # Holm over the family keeps it at about alpha or less


# -- end to end on the stub server --


def test_the_cheaper_variant_wins_when_quality_is_equal_and_the_report_is_logged(client, stub, openai_kw):
    slower_big_model(stub)
    client.query("warm up", model="gpt-4o", **openai_kw)  # first-call costs are not the variants' fault
    client.query("warm up", model="gpt-4o-mini", **openai_kw)
    test = ABTest(two_models(openai_kw), client=client, name=f"cost-{uuid.uuid4().hex[:6]}")
    responses = traffic(test, 32)
    assert {r.variant for r in responses} == {"A", "B"}
    assert all(r.text.startswith(f"Stub answer from {'gpt-4o' if r.variant == 'A' else 'gpt-4o-mini'}")
               for r in responses)
    tags = get_trace(responses[0].trace_id).info.tags
    assert tags["ab_test"] == test.name and tags["ab_variant"] == responses[0].variant

    report = test.report()
    assert report.status == "winner" and report.winner == "B", str(report)
    assert report.reason.startswith("B beats A on cost") and "no significant difference in quality" in report.reason
    a, b = report.variants["A"], report.variants["B"]
    assert a.n == b.n == 32 and a.errors == 0 and a.validation_pass_rate is None
    assert b.cost_mean < a.cost_mean / 10
    assert a.cost_total == pytest.approx(sum(r.cost for r in responses if r.variant == "A"))
    assert 0 < a.latency_p50 <= a.latency_p95
    cost = next(c for c in report.comparisons if c.metric == "cost")
    assert cost.test == "welch_t" and cost.better == "B" and cost.adjusted_p < 0.05
    text = str(report)
    assert f"A/B test {test.name!r}: winner B" in text and "cost mean" in text and "adjusted p" in text

    run = mlflow.MlflowClient().get_run(report.run_id)
    assert run.data.params["test"] == test.name and json.loads(run.data.params["split"]) == {"A": 0.5, "B": 0.5}
    assert json.loads(run.data.params["variant.B"])["model"] == "gpt-4o-mini"
    assert KEY not in json.dumps(run.data.params)  # secrets are never logged
    assert run.data.metrics["A.n"] == 32 and run.data.metrics["B.cost_mean"] == pytest.approx(b.cost_mean)
    assert run.data.metrics["p_adjusted.cost.A_vs_B"] == pytest.approx(cost.adjusted_p)
    assert run.data.tags["mlflow_lite.ab_test.winner"] == "B"
    logged = mlflow.artifacts.load_dict(f"runs:/{report.run_id}/ab_test_report.json")
    assert logged["winner"] == "B" and logged["variants"]["A"]["n"] == 32

    with pytest.raises(ABTestError, match="not a registered model version"):
        test.promote_winner(registered_model="anything")


def test_a_variant_failing_validation_loses_despite_being_cheaper(stub, openai_kw):
    answers = Counter()

    def reply(model, messages):
        answers[model] += 1
        if model == "gpt-4o-mini" and answers[model] % 2:  # half of the cheap model's answers are bad
            return "Sorry, I cannot help with that."
        return "Go to settings and press reset."

    stub.reply = reply
    untraced = ml.Client(tracing=False)  # nothing here needs the traces: keeps the test fast
    test = ABTest(two_models(openai_kw, validate={"forbidden_words": ["sorry"]}), client=untraced, min_samples=20)
    results = traffic(test, 21)
    failures = [r for r in results if isinstance(r, ml.ValidationError)]
    assert failures and {e.variant for e in failures} == {"B"}  # on_fail="raise": recorded, then raised
    report = test.report(log=False)
    assert report.variants["A"].validation_pass_rate == 1.0
    assert report.variants["B"].validation_pass_rate == pytest.approx(10 / 21)
    assert report.winner == "A", str(report)
    assert report.reason.startswith("A beats B on validation pass rate (1 vs 0.476")
    assert report.run_id is None


def test_too_few_samples_means_no_winner_yet(stub, openai_kw):
    test = ABTest(two_models(openai_kw), client=ml.Client(tracing=False))
    traffic(test, 5)
    report = test.report(log=False)
    assert report.status == "collecting" and report.winner is None
    assert "A has 5/30 samples" in report.reason and "B has 5/30 samples" in report.reason
    assert "collecting" in str(report)


def test_human_ratings_on_traces_decide_over_cost(client, stub, openai_kw):
    test = ABTest(two_models(openai_kw), client=client, min_samples=20)
    responses = traffic(test, 20)
    rng = np.random.default_rng(0)
    human = AssessmentSource(source_type="HUMAN", source_id="tester")
    for r in responses[:-1]:
        rating = int(rng.choice([4, 5])) if r.variant == "A" else int(rng.choice([1, 2, 3]))
        mlflow.log_feedback(trace_id=r.trace_id, name="rating", value=rating, source=human)
    last = responses[-1]
    test.add_rating(last, 5 if last.variant == "A" else 1)  # collected elsewhere
    code = AssessmentSource(source_type="CODE", source_id="judge")
    mlflow.log_feedback(trace_id=responses[0].trace_id, name="rating", value=100, source=code)  # not human: ignored
    report = test.report(log=False)
    assert report.variants["A"].rating_n == report.variants["B"].rating_n == 20
    assert 4 <= report.variants["A"].rating_mean <= 5 and 1 <= report.variants["B"].rating_mean <= 3
    assert report.winner == "A" and report.reason.startswith("A beats B on rating"), str(report)
    # without the traces' feedback only the one rating given directly remains: cost decides
    assert test.report(log=False, feedback=False).winner == "B"


def test_promote_winner_moves_the_alias_to_the_winning_model_version(stub, monkeypatch, default_client):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    slower_big_model(stub)
    name = f"ab_bot_{uuid.uuid4().hex[:6]}"
    with mlflow.start_run():
        big = ml.log_model(name="big", model="gpt-4o", prompt="Q: {input}", params={"api_base": stub.openai_base},
                           registered_model_name=name)
        small = ml.log_model(name="small", model="gpt-4o-mini", prompt="Q: {input}",
                             params={"api_base": stub.openai_base}, registered_model_name=name)
    test = ab_test({"A": {"model_uri": small.model_uri},  # a logged-model URI, looked up in the registry
                    "B": {"model_uri": f"models:/{name}/{big.registered_model_version}"}}, min_samples=20)
    registry = mlflow.MlflowClient()
    traffic(test, 3)
    with pytest.raises(ABTestError, match=r"no winner yet.*A has 3/20 samples"):
        test.promote_winner()
    assert registry.get_registered_model(name).aliases == {}

    default_client.add_metric("short", lambda text: len(text) < 200)  # shared with the flavor models' clients
    responses = traffic(test, 20)
    assert {r.variant for r in responses} == {"A", "B"} and all("short" in r.metrics for r in responses)
    promotion = test.promote_winner(registered_model=name)
    assert promotion.variant == "A" and promotion.version == str(small.registered_model_version)
    assert promotion.report.winner == "A" and promotion.report.variants["A"].metrics["short"] == 1.0
    assert {k: str(v) for k, v in registry.get_registered_model(name).aliases.items()} == {
        "champion": str(small.registered_model_version)
    }
    tag = json.loads(registry.get_model_version(name, promotion.version).tags["mlflow_lite.ab_test.champion"])
    assert tag["variant"] == "A" and tag["test"] == test.name and tag["run_id"] == promotion.report.run_id
    assert test.promote_winner(alias="cheapest").version == promotion.version  # the registered name is found


def test_sqlite_observations_are_shared_by_tests_with_the_same_path(client, stub, openai_kw, tmp_path):
    path = tmp_path / "ab.db"
    first = ABTest(two_models(openai_kw), client=client, path=path)
    second = ABTest(two_models(openai_kw), client=client, path=path)
    responses = traffic(first, 3) + traffic(second, 2)
    first.add_rating(responses[0].trace_id, 4)
    stream = client.stream("streamed question", model="gpt-4o", **openai_kw)
    "".join(stream)
    second.record("A", stream.response, user_id="streamer")
    second.flush()
    report = second.report(log=False, feedback=False)
    assert report.variants["A"].n == 6 and report.variants["B"].n == 5
    assert report.variants[responses[0].variant].rating_n == 1
    assert first.report(log=False, feedback=False).variants["A"].n == 6
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        users = {u for (u,) in db.execute("SELECT user_id FROM ab_observations")}
    assert "streamer" in users and "user-0" in users
    with pytest.raises(ArgumentError, match="not a variant"):
        second.record("Z", stream.response)


def test_ab_test_one_liner_as_written(default_client, stub):
    test = ml.ab_test(
        variants={"A": {"model": "claude-3-5-sonnet", "prompt": "Answer: {input}",
                        "params": {"api_base": stub.url, "api_key": "sk-stub-not-a-real-key"}},
                  "B": {"model": "gpt-4o", "prompt": "Reply: {input}",
                        "params": {"api_base": stub.openai_base, "api_key": "sk-stub-not-a-real-key"}}},
        split=[0.5, 0.5])
    r = test.query(input="Where is my order?", user_id="u1")
    assert r.variant == test.assign("u1")
    assert r.text.endswith(("Answer: Where is my order?", "Reply: Where is my order?"))
    report = test.report(log=False)
    assert report.winner is None and report.status == "collecting"


def test_sequential_reports_need_stronger_evidence_and_say_so():
    """The same observations: a fixed-sample report finds a small quality gain, an always-valid
    one (safe to read after every answer) does not yet."""
    rng = np.random.default_rng(3)
    obs = observations("A", 80, rng, passed=0.85) + observations("B", 80, rng, passed=0.6)
    fixed, sequential = report_of(obs), report_of(obs, sequential=True)
    assert fixed.winner == "A"
    assert sequential.winner is None and sequential.sequential and "sequential" in str(sequential)
    tested = [c for c in sequential.comparisons if c.p_value is not None]
    assert tested and all(c.test.endswith("_msprt") for c in tested)
    by_metric = {c.metric: c for c in fixed.comparisons}
    for c in tested:
        assert c.p_value >= by_metric[c.metric].p_value
    with pytest.raises(ArgumentError, match="sequential"):
        ab_test({"A": {"model": "gpt-4o"}, "B": {"model": "gpt-4o-mini"}}, sequential="yes")
    sequential = ab_test({"A": {"model": "gpt-4o"}, "B": {"model": "gpt-4o-mini"}}, sequential=True)
    assert sequential._params()["sequential"] == "True"
