"""Complexity routing: the estimate, tier choice, upgrades on failure, the decision on the trace,
and the cost saved on a mixed workload (against the stub server)."""

from __future__ import annotations

import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.controls.routing import Complexity, Router, RoutingDecision, estimate_complexity, smart_query

from tests.helpers import get_trace

SIMPLE = [
    "Hi there!",
    "What's the capital of France?",
    "How do I reset my password?",
    "What is 2+2?",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",  # one reasoning cue alone stays cheap
    "Answer in one word: is water wet?",
]

HARD = [
    ("Explain in detail how TCP congestion control works.", "asks for a detailed/long answer"),
    ("Write a Python function that merges two sorted lists.", "coding task"),
    ("Why does this fail?\n```python\ndef f(x):\n    return x +\n```", "code block"),
    ("Solve x^2 + 3x - 10 = 0.", "math expression"),
    ("Compute the integral of sin(x) from 0 to pi.", "math terms (integral)"),
    ("What is a monad? How is it used in Haskell? When should I avoid it?", "3 questions"),
    ("Compare PostgreSQL and MySQL and explain the trade-offs.", "reasoning cues (compare, explain, trade-offs)"),
]


@pytest.mark.parametrize("prompt", SIMPLE)
def test_simple_prompts_score_low(prompt):
    complexity = estimate_complexity(prompt)
    assert complexity.level == "low" and complexity.score < 0.35, complexity


@pytest.mark.parametrize("prompt, reason", HARD)
def test_hard_prompts_score_high_with_reasons(prompt, reason):
    complexity = estimate_complexity(prompt)
    assert complexity.level == "high" and complexity.score >= 0.35, complexity
    assert any(reason in listed for listed in complexity.reasons), complexity.reasons


def test_greeting_has_no_reasons_and_explain_in_detail_lists_both():
    assert estimate_complexity("Hello!") == Complexity(0.0, "low", [])
    detail = estimate_complexity("Explain in detail how DNS works.")
    assert detail.score == 0.45
    assert detail.reasons == ["reasoning cue (explain)", "asks for a detailed/long answer (in detail)"]


def test_length_messages_and_params_count():
    long_prompt = "Summarize this report. " + "The plant output rose again this quarter. " * 80
    assert estimate_complexity(long_prompt).reasons == [f"long prompt (~{len(long_prompt) // 4} tokens)"]
    huge = estimate_complexity("word " * 2000)
    assert huge.score == 0.4 and huge.reasons[0].startswith("very long prompt")
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}] * 3
    assert estimate_complexity(chat).reasons == ["long conversation (6 messages)"]
    assert estimate_complexity(messages=chat, tools=[{"type": "function"}] * 2, max_tokens=2000).reasons == [
        "asks for a detailed/long answer (max_tokens=2000)",
        "long conversation (6 messages)",
        "tool use (2 tools)",
    ]
    assert estimate_complexity("Define entropy.", max_tokens=20).reasons == ["asks for a short answer (max_tokens=20)"]


def test_score_is_deterministic_and_bounded():
    everything = (
        "Explain in detail, step by step, why this fails and compare fixes. What is wrong? Why? How?\n"
        "```python\nx = integral(f)\n```\nSolve x^2 = 4. " + "context " * 3000
    )
    first, second = estimate_complexity(everything), estimate_complexity(everything)
    assert first == second and first.score == 1.0


def test_router_tiers_thresholds_and_choice():
    router = Router(tiers={"small": "gpt-4o-mini", "medium": "gpt-4o", "large": "o1"})
    assert router.thresholds == [0.35, 0.7]
    assert [router.choose(Complexity(s, "low")) for s in (0.0, 0.35, 0.69, 0.7, 1.0)] == [
        "small", "medium", "medium", "large", "large",
    ]
    assert (router.choose("low"), router.choose("high"), router.choose("medium")) == ("small", "large", "medium")
    assert router.upgrade_tier("small", "quality") == "large"  # "quality": the best tier
    assert router.upgrade_tier("small", "medium") == "medium"
    assert router.upgrade_tier("large", "quality") is None and router.upgrade_tier("small", None) is None
    custom = Router(thresholds=[0.5])
    assert custom.estimate("Why is the sky blue? Explain.").level == "low"  # 0.35 < its own cut-off


@pytest.mark.parametrize(
    "options, argument",
    [
        ({"tiers": {}}, "tiers"),
        ({"tiers": {"fast": ""}}, "tiers"),
        ({"tiers": {"low": "gpt-4o-mini", "quality": "gpt-4o"}}, "tiers"),
        ({"thresholds": [0.2, 0.5]}, "thresholds"),  # two tiers take one cut-off
        ({"tiers": {"a": "x", "b": "y", "c": "z"}, "thresholds": [0.6, 0.3]}, "thresholds"),
        ({"thresholds": [1.5]}, "thresholds"),
        ({"fallback": "premium"}, "fallback"),
    ],
)
def test_bad_router_settings_raise(options, argument):
    with pytest.raises(ml.ArgumentError) as info:
        Router(**options)
    assert info.value.argument == argument


def test_simple_goes_fast_and_complex_goes_quality(client, stub, openai_kw):
    r = smart_query(client, "What's the capital of France?", **openai_kw)
    assert stub.requests[-1].body["model"] == "gpt-4o-mini" and r.model == "openai/gpt-4o-mini"
    assert r.routing == RoutingDecision(0.0, "low", [], "fast", "gpt-4o-mini")
    r = smart_query(client, "Explain in detail how TCP congestion control works.", **openai_kw)
    assert stub.requests[-1].body["model"] == "gpt-4o" and r.routing.tier == "quality"
    assert r.routing.to_dict() == {
        "score": 0.45, "level": "high", "tier": "quality", "model": "gpt-4o",
        "reasons": ["reasoning cue (explain)", "asks for a detailed/long answer (in detail)"],
        "upgraded_from": None, "upgrade_reason": None,
    }


def test_decision_is_on_the_trace_tags(client, stub, openai_kw):
    r = smart_query(client, "Solve x^2 + 3x - 10 = 0.", tags={"team": "maths"}, **openai_kw)
    tags = get_trace(r.trace_id).info.tags
    assert tags["mlflow_lite.route_tier"] == "quality"
    assert tags["mlflow_lite.route_model"] == "gpt-4o"
    assert tags["mlflow_lite.route_score"] == "0.350"
    assert tags["mlflow_lite.route_level"] == "high"
    assert tags["mlflow_lite.route_reasons"] == "math expression"
    assert tags["team"] == "maths"  # the caller's own tags are kept
    assert "mlflow_lite.route_upgraded_from" not in tags


def test_decision_of_a_call_nested_in_a_user_span_is_on_its_span(client, stub, openai_kw):
    import mlflow

    with mlflow.start_span("my_app") as app:
        r = smart_query(client, "Solve x^2 + 3x - 10 = 0.", **openai_kw)
    spans = {s.name: s for s in get_trace(app.trace_id).data.spans}
    tags = spans["mlflow_lite.query"].attributes["mlflow_lite.trace_tags"]
    assert r.trace_id == app.trace_id
    assert tags["mlflow_lite.route_tier"] == "quality" and tags["mlflow_lite.route_reasons"] == "math expression"


def test_forced_complexity(client, stub, openai_kw):
    r = smart_query(client, "Hi!", complexity="high", **openai_kw)
    assert r.routing.tier == "quality" and r.routing.level == "high"
    assert r.routing.reasons[0] == "complexity forced to 'high'"
    r = smart_query(client, "Explain in detail how DNS works.", complexity="low", **openai_kw)
    assert r.routing.tier == "fast" and stub.requests[-1].body["model"] == "gpt-4o-mini"
    r = smart_query(client, "Hi!", complexity="quality", **openai_kw)  # a tier name
    assert r.routing.tier == "quality" and r.routing.score == 0.0
    sent = len(stub.requests)
    with pytest.raises(ml.ArgumentError, match="'auto', 'low', 'high', 'fast', 'quality'"):
        smart_query(client, "Hi!", complexity="medium", **openai_kw)
    with pytest.raises(ml.ArgumentError, match="picks the model"):
        smart_query(client, "Hi!", model="gpt-4o", **openai_kw)
    assert len(stub.requests) == sent


def _per_model(cheap: str, good: str):
    return lambda model, messages: cheap if model == "gpt-4o-mini" else good


def test_upgrade_when_the_cheap_answer_fails_validation(client, stub, openai_kw):
    stub.reply = _per_model("It might be yes, hard to say.", "yes")
    r = smart_query(client, "Is Paris in France? Answer yes or no.", validate={"choices": ["yes", "no"]}, **openai_kw)
    assert [q.body["model"] for q in stub.requests] == ["gpt-4o-mini", "gpt-4o"]
    assert r.text == "yes" and r.validation.passed
    assert r.routing.tier == "quality" and r.routing.model == "gpt-4o"
    assert r.routing.upgraded_from == "fast"
    assert r.routing.upgrade_reason.startswith("validation failed: choices")
    tags = get_trace(r.trace_id).info.tags
    assert tags["mlflow_lite.route_tier"] == "quality"
    assert tags["mlflow_lite.route_upgraded_from"] == "fast"
    assert tags["mlflow_lite.route_upgrade_reason"].startswith("validation failed")
    # the paid cheap answer is counted in r.cost and r.usage, as validation re-asks are
    assert r.usage["completion_tokens"] == len(["It", "might", "be", "yes,", "hard", "to", "say."]) + 1
    upgraded_alone = client.query(
        "Is Paris in France? Answer yes or no.", model="gpt-4o", validate={"choices": ["yes", "no"]}, **openai_kw
    )
    assert r.cost > upgraded_alone.cost


def test_upgrade_when_invalid_answer_is_returned(client, stub, openai_kw):
    stub.reply = _per_model("maybe", "no")
    r = smart_query(client, "Is 7 even?", validate={"choices": ["yes", "no"]}, on_fail="return", **openai_kw)
    assert r.text == "no" and r.routing.upgraded_from == "fast" and len(stub.requests) == 2


def test_upgrade_on_provider_error(client, stub, openai_kw):
    stub.inject(status=500, model="gpt-4o-mini")
    r = smart_query(client, "What's the capital of Italy?", num_retries=0, **openai_kw)
    assert [q.body["model"] for q in stub.requests] == ["gpt-4o-mini", "gpt-4o"]
    assert r.model == "openai/gpt-4o" and r.routing.upgraded_from == "fast"
    assert r.routing.upgrade_reason.startswith("ProviderUnavailableError")
    assert get_trace(r.trace_id).info.tags["mlflow_lite.route_upgraded_from"] == "fast"


def test_no_upgrade_without_fallback_or_from_the_top_tier(client, stub, openai_kw):
    stub.reply = _per_model("maybe", "maybe")
    with pytest.raises(ml.ValidationError):
        smart_query(client, "Is 7 even?", validate={"choices": ["yes", "no"]}, fallback=None, **openai_kw)
    assert len(stub.requests) == 1
    with pytest.raises(ml.ValidationError):  # already on the best tier: nothing to upgrade to
        smart_query(client, "Is 7 even?", complexity="high", validate={"choices": ["yes", "no"]}, **openai_kw)
    assert len(stub.requests) == 2
    stub.inject(status=500, model="gpt-4o")
    with pytest.raises(ml.ProviderUnavailableError):  # the upgraded call fails too: its error is raised
        stub.reply = _per_model("maybe", "yes")
        smart_query(client, "Is 7 even?", validate={"choices": ["yes", "no"]}, num_retries=0, **openai_kw)
    assert len(stub.requests) == 4


def test_client_router_and_router_argument(client, stub, openai_kw):
    client.router = Router(tiers={"cheap": "gpt-3.5-turbo", "best": "gpt-4o"}, fallback=None)
    r = smart_query(client, "Hi!", **openai_kw)
    assert r.routing.tier == "cheap" and stub.requests[-1].body["model"] == "gpt-3.5-turbo"
    stub.reply = lambda model, messages: "maybe" if model == "gpt-3.5-turbo" else "yes"
    with pytest.raises(ml.ValidationError):  # the client's router has no fallback
        smart_query(client, "Is 7 even?", validate={"choices": ["yes", "no"]}, **openai_kw)
    assert len(stub.requests) == 2  # no upgrade
    r = smart_query(client, "Hi!", router=Router(), **openai_kw)  # an explicit router wins
    assert r.routing.tier == "fast"


def test_routing_saves_cost_on_a_mixed_workload(client, stub, openai_kw):
    simple = [
        "What's the capital of France?", "Hi, how are you?", "Translate 'thank you' into German.",
        "What time zone is Tokyo in?", "Spell 'necessary'.", "Who wrote Hamlet?", "How many days are in a leap year?",
        "What is the boiling point of water?", "Give me a synonym for 'happy'.", "What colour is the sky?",
        "Name a prime number.", "How do I reset my password?", "What does HTTP stand for?", "Is a tomato a fruit?",
    ]
    complex_ = [
        "Explain in detail how garbage collection works in the JVM.",
        "Write a Python function that parses ISO 8601 dates with time zones.",
        "Solve 3x^2 - 12x + 9 = 0 and check the roots.",
        "Compare REST and gRPC and explain the trade-offs for mobile clients.",
        "What is a B-tree? How does it differ from a binary search tree? When is each better?",
        "Debug this:\n```js\nconst x = [1,2,3].map(n => n * 2\n```",
    ]
    workload = simple + complex_  # 20 prompts, 70% simple
    routed = [smart_query(client, prompt, **openai_kw) for prompt in workload]
    always_quality = [client.query(prompt, model="gpt-4o", **openai_kw) for prompt in workload]

    assert [r.routing.tier for r in routed] == ["fast"] * len(simple) + ["quality"] * len(complex_)
    assert all(r.model == "openai/gpt-4o" for r in routed[len(simple):])  # the hard ones still get quality
    routed_cost = sum(r.cost for r in routed)
    quality_cost = sum(r.cost for r in always_quality)
    assert routed_cost < 0.6 * quality_cost, (routed_cost, quality_cost)


def test_one_liners_route_with_the_default_clients_tiers(default_client, stub, openai_kw):
    ml.set_routing(tiers={"cheap": "gpt-4o-mini", "best": "gpt-4o"}, fallback="best")
    easy = ml.smart_query(prompt="Hi there", **openai_kw)
    hard = ml.smart_query(prompt="Prove step by step that sqrt(2) is irrational, then explain in detail.", **openai_kw)
    assert (easy.routing.tier, easy.model) == ("cheap", "openai/gpt-4o-mini")
    assert (hard.routing.tier, hard.model) == ("best", "openai/gpt-4o")
    assert ml.Chain and ml.Step and ml.estimate_complexity("Hi").level == "low"
