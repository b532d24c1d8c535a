"""The mlflow_lite flavor: save/log -> load -> predict on the stub server, warm semantic cache,
settings file, secrets, corrupted artifacts, registry aliases and gated promotion."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException

import mlflow_lite_plugin as ml

from tests.helpers import KEY

PROMPT = "Answer the customer: {question}"
KNOWN = pd.DataFrame(
    {
        "question": ["How do I reset my password?", "How can I cancel my subscription?"],
        "answer": ["Use the 'Forgot password' link on the sign-in page.", "Go to Settings > Billing > Cancel."],
    }
)


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return KEY


def save(path, stub, **settings):
    options = dict(
        model="gpt-4o", prompt=PROMPT, system="You are helpful.",
        params={"temperature": 0, "api_base": stub.openai_base}, fallbacks=["gpt-4o-mini"],
        cache={"ttl": 3600}, validate={"max_length": 500},
        input_example=pd.DataFrame({"question": ["How do I reset my password?"]}),
    )
    options.update(settings)
    ml.save_model(str(path), **options)
    return str(path)


def test_log_load_predict_through_mlflow(stub, api_key):
    with mlflow.start_run():
        info = ml.log_model(
            name="support_bot", model="gpt-4o", prompt=PROMPT, system="You are helpful.",
            params={"temperature": 0, "api_base": stub.openai_base}, fallbacks=["gpt-4o-mini"],
            cache={"ttl": 3600}, validate={"max_length": 500},
            input_example=pd.DataFrame({"question": ["How do I reset my password?"]}),
        )
    bot = mlflow.pyfunc.load_model(info.model_uri)
    assert set(bot.metadata.flavors) == {"mlflow_lite", "python_function"}
    assert bot.metadata.signature.inputs.input_names() == ["question"]
    assert {p.name for p in bot.metadata.signature.params} >= {"temperature", "max_tokens", "return_details"}
    out = bot.predict(pd.DataFrame({"question": ["Where is my order?", "Do you ship abroad?"], "extra": [1, 2]}))
    assert out == [
        "Stub answer from gpt-4o: Answer the customer: Where is my order?",
        "Stub answer from gpt-4o: Answer the customer: Do you ship abroad?",
    ]
    body = stub.requests[-1].body
    assert body["messages"][0] == {"role": "system", "content": "You are helpful."}
    assert body["temperature"] == 0
    # predict-time params override the saved ones; the exact cache keys on them
    bot.predict(pd.DataFrame({"question": ["Where is my order?"]}), params={"temperature": 0.7})
    assert stub.requests[-1].body["temperature"] == 0.7 and len(stub.requests) == 3


def test_settings_file_and_mlmodel_are_readable(tmp_path, stub, api_key):
    path = Path(save(tmp_path / "bot", stub, cache_data=KNOWN, semantic_cache={"threshold": 0.7}))
    config = yaml.safe_load((path / "mlflow_lite.yaml").read_text())
    assert config["model"] == "gpt-4o" and config["prompt"] == PROMPT and config["variables"] == ["question"]
    assert config["fallbacks"] == ["gpt-4o-mini"] and config["cache"] == {"ttl": 3600}
    assert config["semantic_cache"] == {"threshold": 0.7} and config["validate"] == {"max_length": 500}
    assert sorted(os.listdir(path / "semantic_cache")) == ["entries.json", "index.faiss"]
    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    assert mlmodel["flavors"]["mlflow_lite"]["config"] == "mlflow_lite.yaml"
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "mlflow_lite_plugin.flavor"
    assert mlmodel["flavors"]["python_function"]["streamable"] is True
    requirements = (path / "requirements.txt").read_text()
    assert "mlflow_lite_plugin" in requirements.replace("-", "_") and "litellm" in requirements
    assert "faiss" in requirements  # the semantic cache ships, so its libraries are required


def test_warm_cache_answers_known_questions_without_the_provider(tmp_path, stub, api_key):
    bot = mlflow.pyfunc.load_model(save(tmp_path / "bot", stub, cache_data=KNOWN))
    answers = bot.predict(pd.DataFrame({"question": ["What's the process to reset my password?"]}))
    assert answers == ["Use the 'Forgot password' link on the sign-in page."]
    assert stub.requests == []  # zero provider calls
    details = bot.predict(pd.DataFrame({"question": ["How do I reset my password?"]}), params={"return_details": True})
    assert details.loc[0, "cached"] == "semantic" and details.loc[0, "cost"] == 0
    # a near miss (a different question) still goes to the provider
    assert bot.predict(pd.DataFrame({"question": ["How do I not reset my password?"]}))[0].startswith("Stub answer")
    assert len(stub.requests) == 1


def test_live_semantic_cache_ships_with_the_model(tmp_path, stub, api_key):
    client = ml.Client()
    client.set_semantic_cache()
    question = "Answer the customer: Which payment methods do you accept?"
    first = client.query(question, model="gpt-4o", system="You are helpful.", temperature=0, api_base=stub.openai_base)
    path = save(tmp_path / "bot", stub, cache_data=client.semantic_cache())
    stub.reset()
    bot = mlflow.pyfunc.load_model(path)
    assert bot.predict({"question": "Which payment methods do you accept?"}) == [first.text]
    assert stub.requests == []


def test_structured_details_and_streaming(tmp_path, stub, api_key):
    bot = mlflow.pyfunc.load_model(save(tmp_path / "bot", stub))
    details = bot.predict(pd.DataFrame({"question": ["a?", "b?"]}), params={"return_details": True})
    assert list(details.columns[:3]) == ["text", "model", "cost"]
    assert details["model"].tolist() == ["openai/gpt-4o"] * 2 and (details["cost"] > 0).all()
    assert details["validation_passed"].tolist() == [True, True]
    assert details["trace_id"].str.startswith("tr-").all() and details["error"].isna().all()
    chunks = list(bot.predict_stream({"question": "stream this"}))
    assert len(chunks) > 3 and "".join(chunks) == "Stub answer from gpt-4o: Answer the customer: stream this"


def test_predictions_are_traced_to_the_logged_model(stub, api_key):
    """MLflow links a pyfunc's traces to its LoggedModel (the model page's Traces tab): one row,
    several rows (answered concurrently), and from a notebook cell (an event loop is running)."""
    with mlflow.start_run():
        info = ml.log_model(name="traced_bot", model="gpt-4o", prompt=PROMPT,
                            params={"api_base": stub.openai_base})
    bot = mlflow.pyfunc.load_model(info.model_uri)

    def predict(questions):
        return bot.predict(pd.DataFrame({"question": questions}), params={"return_details": True})

    async def in_a_notebook_cell(questions):
        return predict(questions)

    frames = [predict(["one row?"]), predict(["row a?", "row b?"]),
              asyncio.run(in_a_notebook_cell(["cell a?", "cell b?"]))]
    trace_ids = {t for frame in frames for t in frame["trace_id"]}
    assert len(trace_ids) == 5 and None not in trace_ids
    ml.flush_traces()
    linked = mlflow.search_traces(model_id=info.model_id, return_type="list")
    assert {t.info.trace_id for t in linked} == trace_ids


def test_row_errors_raise_or_are_reported_in_details(tmp_path, stub, api_key):
    bot = mlflow.pyfunc.load_model(save(tmp_path / "bot", stub, validate={"max_length": 10}))
    with pytest.raises(MlflowException, match="ValidationError") as info:
        bot.predict(pd.DataFrame({"question": ["too long an answer"]}))
    assert isinstance(info.value.__cause__, ml.ValidationError) and info.value.get_http_status_code() == 500
    details = bot.predict(pd.DataFrame({"question": ["x", "y"]}), params={"return_details": True})
    assert details["error"].str.startswith("ValidationError").all()
    assert details["validation_passed"].tolist() == [False, False]  # the answers are still reported


def test_python_api_of_the_native_flavor(tmp_path, stub, api_key):
    app = ml.load_model(save(tmp_path / "bot", stub))
    r = app.query(question="Hello?")
    assert isinstance(r, ml.Response) and r.text.endswith("Answer the customer: Hello?") and r.cost > 0


def test_missing_column_and_empty_values_name_the_problem(tmp_path, stub, api_key):
    app = ml.load_model(save(tmp_path / "bot", stub))
    with pytest.raises(MlflowException, match=r"missing column.*'question'") as info:
        app.predict(pd.DataFrame({"q": ["x"]}))
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException, match="row 1: column 'question' is empty"):
        app.predict(pd.DataFrame({"question": ["x", None]}))
    with pytest.raises(MlflowException, match="row 0: column 'question' is empty"):
        app.predict(pd.DataFrame({"question": ["  "]}))
    bot = mlflow.pyfunc.load_model(save(tmp_path / "bot2", stub))
    with pytest.raises(MlflowException, match="question"):
        bot.predict(pd.DataFrame({"q": ["x"]}))
    assert stub.requests == []


def test_no_secret_is_ever_written(tmp_path, stub, monkeypatch):
    secret = "sk-live-" + uuid.uuid4().hex
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    path = save(tmp_path / "bot", stub, cache_data=KNOWN)
    mlflow.pyfunc.load_model(path).predict({"question": "new question"})
    for file in Path(path).rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), file
    with pytest.raises(MlflowException, match="api_key"):
        save(tmp_path / "leaky", stub, params={"api_key": secret})
    with pytest.raises(MlflowException, match=r"params\.provider_params\.api_key"):
        save(tmp_path / "leaky3", stub, params={"provider_params": {"api_key": secret}})
    with pytest.raises(MlflowException, match=r"params\.api_base"):
        save(tmp_path / "leaky4", stub, params={"api_base": f"http://user:{secret}@localhost:9/v1"})
    with pytest.raises(MlflowException, match=r"cache\.url holds a credential"):
        save(tmp_path / "leaky2", stub, cache={"backend": "redis", "url": "redis://:hunter2@localhost:6379/0"})
    assert not (tmp_path / "leaky").exists() and not (tmp_path / "leaky2").exists()


def test_bad_settings_fail_at_save(tmp_path, stub):
    with pytest.raises(MlflowException, match="max_lenght"):
        save(tmp_path / "a", stub, validate={"max_lenght": 3})
    with pytest.raises(MlflowException, match="callables"):
        save(tmp_path / "b", stub, validate=lambda text: True)
    with pytest.raises(MlflowException, match="placeholder"):
        save(tmp_path / "c", stub, prompt="No variables here")
    with pytest.raises(MlflowException, match="answer"):
        save(tmp_path / "d", stub, cache_data=pd.DataFrame({"question": ["x"]}))
    assert not any((tmp_path / name).exists() for name in "abcd")


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda p: (p / "semantic_cache" / "entries.json").write_text("{not json"), "entries.json"),
        (lambda p: (p / "semantic_cache" / "index.faiss").write_bytes(b"garbage"), "index.faiss"),
        (lambda p: (p / "mlflow_lite.yaml").unlink(), "mlflow_lite.yaml"),
        (lambda p: (p / "mlflow_lite.yaml").write_text("model: [unclosed"), "mlflow_lite.yaml"),
    ],
)
def test_corrupted_or_missing_artifact_fails_at_load_naming_the_file(tmp_path, stub, api_key, damage, named):
    path = Path(save(tmp_path / "bot", stub, cache_data=KNOWN))
    damage(path)
    with pytest.raises(MlflowException, match=named.replace(".", r"\.")):
        mlflow.pyfunc.load_model(str(path))


def test_registry_alias_and_gated_promotion(stub, api_key):
    name = f"support_bot_{uuid.uuid4().hex[:6]}"
    with mlflow.start_run():
        info = ml.log_model(
            name="bot", model="gpt-4o", prompt=PROMPT, params={"api_base": stub.openai_base},
            registered_model_name=name,
        )
        mlflow.log_metric("mlflow_lite/validation_pass_rate", 0.90)
        mlflow.log_metric("mlflow_lite/cost_per_row", 0.0004)
    version = info.registered_model_version
    gates = {"validation_pass_rate": 0.95, "cost_per_row": 0.001, "latency_p95": "<= 3"}
    with pytest.raises(ml.PromotionRefusedError) as refused:
        ml.promote(name, version, alias="champion", require=gates)
    assert set(refused.value.failures) == {"validation_pass_rate", "latency_p95"}  # cost passes
    assert "validation_pass_rate = 0.9, needs >= 0.95" in str(refused.value)
    assert "latency_p95 = missing" in str(refused.value)
    client = mlflow.MlflowClient()
    assert client.get_registered_model(name).aliases == {}  # nothing moved
    with mlflow.start_run(run_id=info.run_id):
        mlflow.log_metric("mlflow_lite/validation_pass_rate", 0.97)
        mlflow.log_metric("mlflow_lite/latency_p95", 1.2)
    figures = ml.promote(name, version, alias="champion", require=gates)
    assert figures == {"validation_pass_rate": 0.97, "cost_per_row": 0.0004, "latency_p95": 1.2}
    assert {k: str(v) for k, v in client.get_registered_model(name).aliases.items()} == {"champion": str(version)}
    record = json.loads(client.get_model_version(name, str(version)).tags["mlflow_lite.promotion.champion"])
    assert record["figures"]["validation_pass_rate"] == 0.97
    bot = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert bot.predict({"question": "Hi"})[0].startswith("Stub answer")
    with pytest.raises(ml.ArgumentError, match="gate"):
        ml.promote(name, version, require={"validation_pass_rate": "about 0.9"})


def test_promote_evaluates_on_data_with_the_mlflow_lite_evaluator(stub, api_key):
    name = f"gated_{uuid.uuid4().hex[:6]}"
    with mlflow.start_run():
        info = ml.log_model(
            name="bot", model="gpt-4o", prompt=PROMPT, params={"api_base": stub.openai_base},
            validate={"max_length": 60}, on_fail="return", registered_model_name=name,
        )
    data = pd.DataFrame({"question": ["Hi?", "A question long enough to push the answer past sixty characters?"]})
    with pytest.raises(ml.PromotionRefusedError, match=r"validation_pass_rate = 0.5, needs >= 0.9"):
        ml.promote(name, info.registered_model_version, require={"validation_pass_rate": 0.9}, data=data,
                   model_type="text")
    figures = ml.promote(
        name, info.registered_model_version, alias="staging", data=data.iloc[:1], model_type="text",
        require={"validation_pass_rate": 0.9, "cost_per_row": 0.01, "error_rate": 0},
    )
    assert figures["validation_pass_rate"] == 1.0 and 0 < figures["cost_per_row"] < 0.01
    staged = mlflow.MlflowClient().get_model_version_by_alias(name, "staging")
    assert str(staged.version) == str(info.registered_model_version)


@pytest.mark.parametrize(
    "fault, status",
    [({"status": 503}, 503), ({"status": 429}, 429), ({"status": 401}, 500)],
)
def test_provider_failures_map_to_http_statuses(tmp_path, stub, api_key, fault, status):
    bot = mlflow.pyfunc.load_model(save(tmp_path / "bot", stub, num_retries=0, fallbacks=[]))
    stub.inject(**fault, times=5)
    with pytest.raises(MlflowException) as info:
        bot.predict({"question": "anything new"})
    assert info.value.get_http_status_code() == status
    assert isinstance(info.value.__cause__, ml.ProviderError)


def test_log_model_refuses_credentials_before_logging_anything(stub):
    secret = "sk-pw-" + uuid.uuid4().hex
    with mlflow.start_run() as run, pytest.raises(MlflowException, match=r"params\.api_base"):
        ml.log_model(name="leaky", model="gpt-4o", prompt=PROMPT, params={"api_base": f"http://u:{secret}@h/v1"})
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert all(secret not in json.dumps(m.params) for m in logged)


# -- control settings: one owner, the same constructor as set_cache & co. --


def test_semantic_ttl_saved_with_a_model_is_the_caches_and_in_the_run_tag(tmp_path, stub, api_key, default_client):
    """Regression: the ttl lived in both the SemanticCache and its stage; a model saved with
    semantic_cache={"ttl": 60} loaded with the stage's ttl unset, and its run tag left it out."""
    bot = ml.load_model(save(tmp_path / "bot", stub, semantic_cache={"ttl": 60}))
    assert bot.client.semantic_cache().ttl == 60
    ml.set_default_client(bot.client)
    with mlflow.start_run() as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["mlflow_lite.cache"] == "exact(memory, ttl=3600); semantic(threshold=0.725, ttl=60)"


def test_semantic_cache_takes_the_keywords_of_set_semantic_cache(tmp_path, stub, api_key, default_client):
    """Regression: the flavor passed semantic_cache= to SemanticCache(**options), so the documented
    set_semantic_cache keyword max_temperature raised a raw TypeError."""
    path = Path(save(tmp_path / "bot", stub, semantic_cache={"max_temperature": 0, "threshold": 0.8}))
    config = yaml.safe_load((path / "mlflow_lite.yaml").read_text())
    assert config["semantic_cache"] == {"max_temperature": 0, "threshold": 0.8}
    ml.set_default_client(ml.load_model(str(path)).client)
    with mlflow.start_run() as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["mlflow_lite.cache"].endswith("semantic(threshold=0.8, max_temperature=0)")


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        (
            "semantic_cache", {"max_temprature": 0},
            "semantic_cache.max_temprature: unknown setting. Did you mean 'max_temperature'?",
        ),
        ("cache", {"tll": 60}, "cache.tll: unknown setting. Did you mean 'ttl'?"),
        ("rate_limit", {"requests_per_minute": -1}, "requests_per_minute: must be a positive number"),
        ("budget", {"daily_limt": 5}, "budget.daily_limt: unknown setting. Did you mean 'daily_limit'?"),
        ("semantic_cache", {"threshold": 1.5}, "threshold: must be a cosine similarity in (0, 1]"),
    ],
)
def test_a_bad_control_setting_is_named_at_save(tmp_path, stub, setting, value, message):
    with pytest.raises(MlflowException) as raised:
        save(tmp_path / "bot", stub, **{setting: value})
    assert message in raised.value.message
    assert not (tmp_path / "bot").exists()


def test_a_model_saved_in_the_earlier_format_still_loads(tmp_path, stub, api_key, default_client):
    """The settings file and MLmodel as save_model wrote them before the settings classes: the
    keyword dicts as given (``enabled`` included), read back through the same settings."""
    path = tmp_path / "old_bot"
    path.mkdir()
    (path / "mlflow_lite.yaml").write_text(textwrap.dedent(f"""\
        model: gpt-4o
        prompt: 'Answer the customer: {{question}}'
        variables: [question]
        system: You are helpful.
        params: {{temperature: 0, api_base: '{stub.openai_base}'}}
        fallbacks: [gpt-4o-mini]
        aliases: {{}}
        validate: {{max_length: 500}}
        cache: {{enabled: true, ttl: 3600, backend: memory, max_entries: 100}}
        semantic_cache: {{threshold: 0.8, verify: true}}
        rate_limit: {{requests_per_minute: 600, max_wait: 5}}
        budget: {{daily_limit: 5.0, path: '{tmp_path / "budget.db"}', on_unknown_price: allow}}
        """))
    (path / "MLmodel").write_text(textwrap.dedent("""\
        flavors:
          mlflow_lite:
            config: mlflow_lite.yaml
            llm: gpt-4o
            mlflow_lite_version: 0.1.0
          python_function:
            conda: conda.yaml
            env:
              conda: conda.yaml
              virtualenv: python_env.yaml
            loader_module: mlflow_lite_plugin.flavor
            python_version: 3.11.7
            streamable: true
        mlflow_version: 3.1.0
        """))
    bot = mlflow.pyfunc.load_model(str(path))
    assert bot.predict(pd.DataFrame({"question": ["Where is my order?"]})) == [
        "Stub answer from gpt-4o: Answer the customer: Where is my order?"
    ]
    ml.set_default_client(ml.load_model(str(path)).client)
    with mlflow.start_run() as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["mlflow_lite.cache"] == "exact(memory, ttl=3600); semantic(threshold=0.8)"
    assert tags["mlflow_lite.rate_limit"] == "600 rpm"
    assert tags["mlflow_lite.budget"] == "daily=5.0 USD, scope=global"
    assert ml.budget_status()["limit"] == 5.0
