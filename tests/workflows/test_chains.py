"""Chains against the stub server: steps feeding each other, one trace with a span per step,
costs, named outputs, failures that stop the chain, and the client's controls on every step."""

from __future__ import annotations

import uuid

import mlflow
import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.workflows.chains import STEP_ALIASES, Chain, ChainStepError, Step

from tests.helpers import KEY, get_trace

ARTICLE = (
    "Acme Corp announced on Monday that it will open a battery factory in Berlin, creating 2,000 jobs. "
    "Chief executive Jane Doe said production starts next year."
)
SUMMARY = "Acme Corp will open a Berlin battery factory with 2,000 jobs."
ENTITIES = '{"entities": ["Acme Corp", "Berlin", "Jane Doe"]}'
LABELS = ["business", "sports", "politics"]


def text_of(message: dict) -> str:
    """A message's text: a string, or Anthropic's list of content blocks."""
    content = message["content"]
    return content if isinstance(content, str) else " ".join(part.get("text", "") for part in content)


def newsroom(model: str, messages: list[dict]) -> str:
    """A valid answer for each template, told apart by its user message (the stub does not pass
    Anthropic's system blocks on)."""
    user = text_of(messages[-1])
    if user.startswith("Summarize the text below"):
        return SUMMARY
    if user.startswith("Extract these fields"):
        return ENTITIES
    if user.startswith("Allowed labels:"):
        return "business"
    return f"{model} says: {user}"


@pytest.fixture
def news(stub):
    stub.reply = newsroom
    return stub


def issue_example(stub, **extract_kwargs) -> Chain:
    openai_kw = {"api_base": stub.openai_base, "api_key": KEY}
    return Chain(
        [
            Step("summarize", model="gpt-3.5-turbo", **openai_kw),
            Step("extract_entities", model="claude-3-haiku", api_base=stub.url, api_key=KEY, **extract_kwargs),
            Step("classify", model="gpt-4o", labels=LABELS, **openai_kw),
        ],
        name="newsroom",
    )


def _spans_by_name(trace) -> dict:
    return {span.name: span for span in trace.data.spans}


def test_issue_example_runs_every_step_on_the_previous_output(client, news):
    workflow = issue_example(news)
    workflow.client = client
    result = workflow.run(ARTICLE)

    assert result.output == str(result) == "business"
    assert result.outputs == {"summarize": SUMMARY, "extract_entities": ENTITIES, "classify": "business"}
    assert [s.name for s in result.steps] == ["summarize", "extract_entities", "classify"]
    sent = news.requests
    assert [(q.path, q.body["model"]) for q in sent] == [
        ("/v1/chat/completions", "gpt-3.5-turbo"),
        ("/v1/messages", "claude-haiku-4-5"),  # the claude-3-haiku alias, on Anthropic's wire format
        ("/v1/chat/completions", "gpt-4o"),
    ]
    prompts = [text_of(q.body["messages"][-1]) for q in sent]
    assert ARTICLE in prompts[0]
    assert SUMMARY in prompts[1] and "- entities: a list of the named entities" in prompts[1]
    assert ENTITIES in prompts[2] and "Allowed labels: business, sports, politics" in prompts[2]
    assert result.steps[1].response.validation.value == {"entities": ["Acme Corp", "Berlin", "Jane Doe"]}

    costs = [s.cost for s in result.steps]
    assert all(c is not None and c > 0 for c in costs)
    assert result.cost == pytest.approx(sum(costs))
    assert result.latency >= sum(s.latency for s in result.steps)


def test_one_trace_with_a_child_span_per_step(client, news):
    workflow = issue_example(news)
    workflow.client = client
    result = workflow.run(ARTICLE)
    assert result.trace_id is not None
    assert all(s.response.trace_id == result.trace_id for s in result.steps)  # the steps' calls are in it

    trace = get_trace(result.trace_id)
    spans = _spans_by_name(trace)
    root = spans["newsroom"]
    assert root.parent_id is None and root.span_type == "CHAIN"
    assert root.inputs == {"input": ARTICLE}
    assert root.outputs["output"] == "business"
    assert root.attributes["mlflow_lite.cost_usd"] == pytest.approx(result.cost)
    assert root.attributes["mlflow_lite.chain.steps"] == ["summarize", "extract_entities", "classify"]
    step_spans = [s for s in trace.data.spans if s.parent_id == root.span_id]
    assert [s.name for s in step_spans] == ["summarize", "extract_entities", "classify"]
    for index, (span, step) in enumerate(zip(step_spans, result.steps, strict=True)):
        # MLflow reads a JSON-looking string output back as the JSON value
        assert span.span_type == "CHAIN" and span.outputs == (step.response.validation.value or step.text)
        assert span.attributes["mlflow_lite.step.index"] == index
        assert span.attributes["mlflow_lite.cost_usd"] == pytest.approx(step.cost)
        calls = [s for s in trace.data.spans if s.parent_id == span.span_id]
        assert [c.name for c in calls] == ["mlflow_lite.query"]
    assert spans["extract_entities"].attributes["mlflow_lite.step.template"] == "extract"
    assert trace.info.tags["mlflow_lite.chain"] == "newsroom"
    # MLflow adds up the tokens of every step's attempt span for the trace
    assert trace.info.token_usage["total_tokens"] == sum(s.response.total_tokens for s in result.steps)


def test_named_outputs_variables_and_prompt_steps(client, news, openai_kw):
    chain = Chain(
        [
            Step("summarize", model="gpt-4o-mini", output="context", **openai_kw),
            Step("headline", prompt="Headline for: {context}\nSection: {section}", model="gpt-4o-mini", **openai_kw),
            Step("qa", model="gpt-4o-mini", **openai_kw),  # context: the summary; question: from run()
            Step("recap", prompt="Recap {headline} / {input}", model="gpt-4o-mini", **openai_kw),
        ],
        client=client,
    )
    result = chain.run(ARTICLE, section="Economy", question="Where is the factory?")
    assert list(result.outputs) == ["context", "headline", "qa", "recap"]
    assert news.requests[1].body["messages"][-1]["content"] == f"Headline for: {SUMMARY}\nSection: Economy"
    qa_prompt = news.requests[2].body["messages"][-1]["content"]
    assert SUMMARY in qa_prompt and "Question: Where is the factory?" in qa_prompt
    # {input} is the previous step's output
    recap = news.requests[3].body["messages"][-1]["content"]
    assert recap == f"Recap {result.outputs['headline']} / {result.outputs['qa']}"
    assert result.output == result.outputs["recap"]


def test_a_failing_step_stops_the_chain_and_is_named(client, news):
    news.inject(status=500, model="claude-haiku-4-5")
    workflow = issue_example(news, num_retries=0)
    workflow.client = client
    with pytest.raises(ChainStepError, match="step 2 'extract_entities'") as info:
        workflow.run(ARTICLE)
    error = info.value
    assert (error.step, error.index) == ("extract_entities", 1)
    assert isinstance(error.cause, ml.ProviderUnavailableError) and error.__cause__ is error.cause
    assert [r.name for r in error.results] == ["summarize"]
    assert isinstance(error, ml.MlflowLiteError)
    assert len(news.requests) == 2  # classify never ran

    trace = get_trace(error.trace_id)
    assert trace.info.state == "ERROR"
    root = _spans_by_name(trace)["newsroom"]
    assert root.attributes["mlflow_lite.chain.failed_step"] == "extract_entities"
    assert root.attributes["mlflow_lite.cost_usd"] == pytest.approx(error.results[0].cost)
    assert error.cause.cost == 0.0 and error.cost == pytest.approx(error.results[0].cost)  # a 500 is not billed
    assert _spans_by_name(trace)["extract_entities"].status.status_code == "ERROR"
    assert "classify" not in _spans_by_name(trace)


def test_a_step_failing_validation_stops_the_chain(client, news):
    news.reply = lambda model, messages: "It is about money." if model == "gpt-4o" else newsroom(model, messages)
    workflow = issue_example(news)
    workflow.client = client
    with pytest.raises(ChainStepError, match=r"'classify'.*ValidationError") as info:
        workflow.run(ARTICLE)
    assert isinstance(info.value.cause, ml.ValidationError) and len(info.value.results) == 2

    # The rejected answer was paid for: the chain's cost counts it, on the error and on the trace.
    error = info.value
    paid = error.cause.response.cost
    assert paid > 0 and error.cause.cost == paid
    assert error.cost == pytest.approx(sum(r.cost for r in error.results) + paid)
    root = _spans_by_name(get_trace(error.trace_id))["newsroom"]
    assert root.attributes["mlflow_lite.cost_usd"] == pytest.approx(error.cost)


def test_second_run_is_served_from_the_cache(client, news):
    client.set_cache()
    workflow = issue_example(news)
    workflow.client = client
    first = workflow.run(ARTICLE)
    assert len(news.requests) == 3
    second = workflow.run(ARTICLE)
    assert len(news.requests) == 3  # zero provider calls
    assert second.outputs == first.outputs
    assert [s.response.cached for s in second.steps] == ["exact"] * 3
    assert second.cost == 0.0 and first.cost > 0


def test_steps_use_fallbacks_and_the_budget(client, news, openai_kw, tmp_path):
    news.inject(status=500, model="gpt-3.5-turbo")
    chain = Chain(
        [Step("summarize", model="gpt-3.5-turbo", fallbacks=["gpt-4o-mini"], num_retries=0, **openai_kw)],
        client=client,
    )
    result = chain.run(ARTICLE)
    assert result.steps[0].response.model == "openai/gpt-4o-mini" and result.output == SUMMARY

    client.set_budget(daily_limit=0.000001, path=str(tmp_path / "budget.db"))
    sent = len(news.requests)
    with pytest.raises(ChainStepError, match="'summarize'") as info:
        chain.run(ARTICLE)
    assert isinstance(info.value.cause, ml.BudgetExceededError) and len(news.requests) == sent


def test_bad_steps_fail_before_any_call(client, news, openai_kw):
    with pytest.raises(ml.ArgumentError, match=r"step 'extract_people'.*prompt="):
        Step("extract_people", model="gpt-4o")
    with pytest.raises(ml.ArgumentError, match="either prompt= or template="):
        Step("x", prompt="{input}", template="summarize")
    with pytest.raises(ml.ArgumentError, match="name every placeholder"):
        Step("x", prompt="Say {}")
    with pytest.raises(ml.ArgumentError, match="output as \\['summarize'\\]"):
        Chain([Step("summarize"), Step("summarize")])
    with pytest.raises(ml.ArgumentError, match="non-empty list"):
        Chain([])

    cases = [
        ([Step("summarize", model="gpt-4o", **openai_kw), Step("b", prompt="{summary}", model="gpt-4o")], "summary"),
        ([Step("summarize", model="gpt-4o", **openai_kw), Step("classify", model="gpt-4o")], "labels"),
        ([Step("summarize", model="gpt-4o", temperatur=0, **openai_kw)], "temperatur"),
        ([Step("summarize", **openai_kw)], "model"),  # no model and the client has none
        ([Step("qa", model="gpt-4o")], "question"),
    ]
    for steps, missing in cases:
        with pytest.raises(ml.ArgumentError, match=missing):
            Chain(steps, client=client).run(ARTICLE)
    with pytest.raises(ml.ArgumentError, match="output"):
        Chain([Step("summarize", model="gpt-4o")], client=client).run(ARTICLE, summarize="clash")
    assert news.requests == []


def test_aliases_and_templates_by_name(client, news, openai_kw):
    assert STEP_ALIASES["extract_entities"][0] == "extract"
    step = Step("people", template="extract", fields=["people"], model="gpt-4o", **openai_kw)
    news.reply = lambda model, messages: '{"people": ["Jane Doe"]}'
    result = Chain([step], client=client).run(ARTICLE)
    assert result.steps[0].response.validation.value == {"people": ["Jane Doe"]}
    # an alias's options can be overridden by the step
    news.reply = lambda model, messages: '{"places": ["Berlin"]}'
    places = Step("extract_entities", fields=["places"], model="gpt-4o", **openai_kw)
    result = Chain([places], client=client).run(ARTICLE)
    assert result.output == '{"places": ["Berlin"]}'


def test_nests_under_the_callers_span_and_untraced_when_tracing_is_off(client, news, openai_kw):
    chain = Chain([Step("summarize", model="gpt-4o-mini", **openai_kw)], client=client, name="inner")
    with mlflow.start_span("my_app") as parent:
        result = chain.run(ARTICLE)
    assert result.trace_id == parent.trace_id
    spans = _spans_by_name(get_trace(parent.trace_id))
    assert spans["inner"].parent_id == parent.span_id
    assert spans["summarize"].parent_id == spans["inner"].span_id

    client.set_tracing(False)
    result = chain.run(ARTICLE)
    assert result.trace_id is None and result.output == SUMMARY


def test_chain_trace_goes_to_the_clients_experiment(news, openai_kw):
    name = f"chains-{uuid.uuid4().hex[:8]}"
    client = ml.Client()
    client.set_experiment(name)
    result = Chain([Step("summarize", model="gpt-4o-mini", **openai_kw)], client=client).run(ARTICLE)
    assert get_trace(result.trace_id).info.experiment_id == mlflow.get_experiment_by_name(name).experiment_id


def test_default_client_is_used(default_client, news, openai_kw):
    default_client.set_cache()
    chain = Chain([Step("echo", prompt="Echo {input}", model="gpt-4o-mini", **openai_kw)])
    assert chain.run("this").output == "gpt-4o-mini says: Echo this"
    assert chain.run("this").steps[0].response.cached == "exact"  # the default client's cache answered


def test_step_keywords_and_api_key_stay_out_of_the_trace_and_repr(client, news, openai_kw):
    step = Step("classify", model="gpt-4o", labels=LABELS, **openai_kw)
    assert KEY not in repr(step)
    result = Chain([step], client=client).run(ARTICLE)
    span = _spans_by_name(get_trace(result.trace_id))["classify"]
    assert span.inputs == {"input": ARTICLE, "labels": LABELS}  # what the step worked on, no call keywords
    assert KEY not in str(get_trace(result.trace_id).to_json())
