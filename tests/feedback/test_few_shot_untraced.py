"""Few-shot scoping does not depend on tracing: a template call finds its template's examples
with tracing off (issue 14: the template name was read from the root span's attributes, which a
call without a trace does not have, so an untraced template call fell into another scope)."""

from __future__ import annotations

from uuid import uuid4

import mlflow_lite_plugin as ml

CORRECTED = "The cat sat on the mat."


def rewrite(client: ml.Client, text: str, openai_kw: dict) -> ml.Response:
    return client.query_with_template(template="rewrite", input=text, model="gpt-4o", validate=False, **openai_kw)


def sent_messages(stub) -> list[dict]:
    return stub.requests_to("/chat/completions")[-1].body["messages"]


def corrected_client(stub, openai_kw: dict) -> tuple[ml.Client, list[dict]]:
    """A traced client with feedback learning whose first template call was corrected; and the
    messages that call sent."""
    client = ml.Client(experiment=f"exp-{uuid4().hex}")
    client.set_feedback_learning(registry=False)
    first = rewrite(client, "teh cat sat on teh mat", openai_kw)
    client.flush_traces()
    asked = sent_messages(stub)
    client.record_feedback(first.trace_id, correction=CORRECTED)
    return client, asked


def test_an_untraced_template_call_gets_its_templates_examples(stub, openai_kw):
    client, asked = corrected_client(stub, openai_kw)
    client.set_tracing(False)
    untraced = rewrite(client, "teh dog sat on teh mat", openai_kw)
    assert untraced.trace_id is None  # no trace, no span attributes to read the template from
    assert sent_messages(stub)[1:3] == [asked[1], {"role": "assistant", "content": CORRECTED}]

    # the same system prompt without the template is still another scope, tracing off too
    client.query(model="gpt-4o", prompt=asked[1]["content"], system=asked[0]["content"], **openai_kw)
    assert len(sent_messages(stub)) == 2


def test_a_client_created_untraced_scopes_by_template(stub, openai_kw):
    """Client(tracing=False) from the start: what it learned is given back to the same template."""
    traced, asked = corrected_client(stub, openai_kw)
    untraced = ml.Client(tracing=False)
    untraced.add_stage(traced.pipeline.get("few_shot"))  # the same learner, on an untraced client
    rewrite(untraced, "teh dog sat on teh mat", openai_kw)
    assert sent_messages(stub)[1:3] == [asked[1], {"role": "assistant", "content": CORRECTED}]
