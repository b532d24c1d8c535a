"""Prompt templates: the built-ins, and templates in MLflow's Prompt Registry (the tests' sqlite store)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid

import jsonschema
import mlflow
import pytest
from mlflow.tracking.client import MlflowClient

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.core.request import PIPELINE_KEYWORDS, known_keywords
from mlflow_lite_plugin.prompts.templates import (
    BUILTIN_TEMPLATES,
    PreparedPrompt,
    Template,
    list_templates,
    register_template,
    resolve_template,
    split_kwargs,
)

from tests.helpers import REPO

BUILTIN_NAMES = ["classify", "extract", "qa", "rewrite", "sentiment", "summarize", "translate"]

# The fewest variables each built-in renders with.
MINIMAL = {
    "summarize": {"input": "The quarterly report shows revenue up 12%."},
    "classify": {"input": "Win a free cruise now!", "labels": ["spam", "not spam"]},
    "extract": {"input": "Ada Lovelace, born 1815.", "fields": ["name", "birth_year"]},
    "translate": {"input": "Good morning", "language": "French"},
    "qa": {"question": "When was she born?", "context": "Ada Lovelace was born in 1815."},
    "sentiment": {"input": "I love it."},
    "rewrite": {"input": "pls fix asap the thing is broke"},
}


def unique(prefix: str = "tpl") -> str:
    """A prompt name no other test uses: the registry is shared by the whole run."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def user_text(prepared: PreparedPrompt) -> str:
    return prepared.messages[-1]["content"]


# -- built-ins --


def test_list_templates_names_the_builtins():
    assert list_templates() == BUILTIN_NAMES
    assert sorted(BUILTIN_TEMPLATES) == BUILTIN_NAMES
    assert ml.list_templates() == BUILTIN_NAMES


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_every_builtin_renders(name):
    template = resolve_template(name)
    assert template is BUILTIN_TEMPLATES[name]
    prepared = template.render(MINIMAL[name])
    assert [m["role"] for m in prepared.messages] == ["system", "user"]
    assert all(isinstance(m["content"], str) and m["content"].strip() for m in prepared.messages)
    text = "\n".join(m["content"] for m in prepared.messages)
    assert "{{" not in text and "}}" not in text
    for value in MINIMAL[name].values():
        if isinstance(value, str):
            assert value in text
    assert prepared.trace_attributes == {
        "mlflow_lite.template": name,
        "mlflow_lite.template_version": "1",
        "mlflow_lite.template_source": "builtin",
    }


def test_builtin_variables_include_options_and_never_clash_with_query_keywords():
    assert BUILTIN_TEMPLATES["summarize"].variables == ("max_words", "input")
    assert BUILTIN_TEMPLATES["classify"].variables == ("labels", "input")
    assert BUILTIN_TEMPLATES["qa"].variables == ("context", "question")
    vocabulary = known_keywords() | PIPELINE_KEYWORDS | {"model", "system", "validate", "template", "version"}
    for template in BUILTIN_TEMPLATES.values():
        assert not set(template.variables) & vocabulary, template.name


def test_summarize_limits_words_with_a_margin():
    default = resolve_template("summarize").render({"input": "text"})
    assert "at most 100 words" in user_text(default)
    assert default.validate == {"max_length": 120, "length_unit": "words"}
    short = resolve_template("summarize").render({"input": "text", "max_words": 30})
    assert "at most 30 words" in user_text(short)
    assert short.validate == {"max_length": 40, "length_unit": "words"}
    for bad in (0, -5, 2.5, "50", True):
        with pytest.raises(ml.ArgumentError) as info:
            resolve_template("summarize").render({"input": "text", "max_words": bad})
        assert info.value.argument == "max_words"


def test_classify_lists_labels_and_validates_the_choice():
    prepared = resolve_template("classify").render({"input": "hello", "labels": ["billing", "bug", "other"]})
    assert "billing, bug, other" in user_text(prepared)
    assert "exactly one" in prepared.messages[0]["content"]
    assert prepared.validate == {"choices": ["billing", "bug", "other"]}
    for bad in ("billing", ["only-one"], ["a", "a"], ["a", ""], ["a", 3], []):
        with pytest.raises(ml.ArgumentError) as info:
            resolve_template("classify").render({"input": "hello", "labels": bad})
        assert info.value.argument == "labels"


def test_extract_builds_a_json_schema_from_the_fields():
    fields = {"name": "the person's full name", "birth_year": "year of birth", "email": None}
    prepared = resolve_template("extract").render({"input": "Ada Lovelace, born 1815.", "fields": fields})
    assert "- name: the person's full name\n- birth_year: year of birth\n- email" in user_text(prepared)
    assert "JSON object" in prepared.messages[0]["content"] and "null" in prepared.messages[0]["content"]
    schema = prepared.validate["schema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["name", "birth_year", "email"]
    assert schema["properties"]["name"]["description"] == "the person's full name"
    check = jsonschema.Draft202012Validator(schema)
    assert check.is_valid({"name": "Ada Lovelace", "birth_year": 1815, "email": None})
    assert not check.is_valid({"name": "Ada Lovelace", "birth_year": 1815})  # a key left out
    assert not check.is_valid({"name": "Ada", "birth_year": None, "email": None, "extra": 1})
    assert not check.is_valid(["Ada"])

    from_list = resolve_template("extract").render({"input": "x", "fields": ["a", "b"]})
    assert "- a\n- b" in user_text(from_list)
    assert from_list.validate["schema"]["required"] == ["a", "b"]
    for bad in ("name", [], {"a": 3}):
        with pytest.raises(ml.ArgumentError) as info:
            resolve_template("extract").render({"input": "x", "fields": bad})
        assert info.value.argument == "fields"


def test_translate_qa_sentiment_and_rewrite():
    translate = resolve_template("translate").render({"input": "Hello", "language": "German"})
    assert "into German" in user_text(translate) and translate.validate is None

    qa = resolve_template("qa").render({"question": "Who?", "context": "Nobody."})
    assert "only the context" in qa.messages[0]["content"] and "cannot find the answer" in qa.messages[0]["content"]
    assert "Question: Who?" in user_text(qa)

    sentiment = resolve_template("sentiment").render({"input": "meh"})
    assert sentiment.validate == {"choices": ["positive", "negative", "neutral"]}

    rewrite = resolve_template("rewrite")
    assert "so that it is clear and concise" in user_text(rewrite.render({"input": "x"}))
    assert "so that it is formal" in user_text(rewrite.render({"input": "x", "style": "formal"}))
    assert "clear and concise" in user_text(rewrite.render({"input": "x", "style": None}))  # None: the default


def test_default_validation_is_a_copy():
    prepared = resolve_template("sentiment").render({"input": "x"})
    prepared.validate["choices"].append("mixed")
    again = resolve_template("sentiment").render({"input": "x"})
    assert again.validate["choices"] == ["positive", "negative", "neutral"]


def test_missing_variables_are_named_with_the_template():
    with pytest.raises(ml.ArgumentError) as info:
        resolve_template("translate").render({"input": "Hello"})
    assert info.value.argument == "language"
    assert "'translate'" in str(info.value) and "language=" in str(info.value)

    with pytest.raises(ml.ArgumentError) as info:
        resolve_template("qa").render({})
    assert info.value.argument == "context, question"

    with pytest.raises(ml.ArgumentError) as info:
        resolve_template("classify").render({"input": "x", "labels": None})  # None counts as missing
    assert info.value.argument == "labels"


def test_unknown_variable_is_refused_by_render():
    with pytest.raises(ml.ArgumentError) as info:
        resolve_template("sentiment").render({"input": "x", "tone": "dry"})
    assert info.value.argument == "tone"
    assert "variables: input" in str(info.value)


@pytest.mark.parametrize("text", ["{{x}}", "{{ input }}", "{}", "{{labels}} and {0} and \\1 \\g<0>", "}}{{"])
def test_literal_braces_in_input_survive(text):
    prepared = resolve_template("classify").render({"input": text, "labels": ["a", "b"]})
    assert f"<text>\n{text}\n</text>" in user_text(prepared)
    custom = Template(name="echo", template="<<{{ value }}>>", system="sys {{value}}")
    assert custom.render({"value": text}).messages == [
        {"role": "system", "content": f"sys {text}"},
        {"role": "user", "content": f"<<{text}>>"},
    ]


def test_custom_template_renders_values_with_str():
    template = Template(name="greet", template="Hi {{name}}, you are {{ age }}.", system="Speak {{lang}}.")
    assert template.variables == ("lang", "name", "age")
    prepared = template.render({"name": "Ada", "age": 36, "lang": ["en"]})
    assert prepared.messages == [
        {"role": "system", "content": "Speak ['en']."},
        {"role": "user", "content": "Hi Ada, you are 36."},
    ]
    assert prepared.validate is None
    assert prepared.trace_attributes["mlflow_lite.template"] == "greet"
    assert resolve_template(template) is template
    no_system = Template(name="plain", template="no variables")
    assert no_system.render({}).messages == [{"role": "user", "content": "no variables"}]


def test_custom_template_with_a_query_keyword_variable_is_refused():
    with pytest.raises(ml.ArgumentError) as info:
        resolve_template(Template(name="bad", template="{{model}} says {{input}}"))
    assert "'model'" in str(info.value)


def test_builtin_name_with_version():
    assert resolve_template("summarize", version=1) is BUILTIN_TEMPLATES["summarize"]
    assert resolve_template("summarize", version="1") is BUILTIN_TEMPLATES["summarize"]
    with pytest.raises(ml.ArgumentError) as info:
        resolve_template("summarize", version=2)
    assert info.value.argument == "version" and "prompts:/summarize/2" in str(info.value)


@pytest.mark.parametrize("bad", [None, "", "   ", 3])
def test_bad_template_argument(bad):
    with pytest.raises(ml.ArgumentError) as info:
        resolve_template(bad)
    assert info.value.argument == "template"


# -- split_kwargs --


def test_split_kwargs_routes_variables_and_query_keywords():
    template = resolve_template("classify")
    variables, query_kwargs = split_kwargs(
        template,
        {
            "input": "x",
            "labels": ["a", "b"],
            "model": "gpt-4o",
            "temperature": 0,
            "fallbacks": ["gpt-4o-mini"],
            "validate": {"max_length": 5},
            "on_fail": "retry",
            "max_attempts": 2,
            "system": "s",
            "namespace": "tenant-1",
        },
    )
    assert variables == {"input": "x", "labels": ["a", "b"]}
    assert query_kwargs == {
        "model": "gpt-4o",
        "temperature": 0,
        "fallbacks": ["gpt-4o-mini"],
        "validate": {"max_length": 5},
        "on_fail": "retry",
        "max_attempts": 2,
        "system": "s",
        "namespace": "tenant-1",
    }


def test_split_kwargs_refuses_unknown_keywords():
    with pytest.raises(ml.ArgumentError) as info:
        split_kwargs(resolve_template("summarize"), {"input": "x", "lenght": 3})
    assert info.value.argument == "lenght"
    message = str(info.value)
    assert "neither a variable of template 'summarize'" in message
    assert "variables: max_words, input" in message
    assert "nor a query argument" in message

    with pytest.raises(ml.ArgumentError) as info:
        split_kwargs(resolve_template("classify"), {"lables": ["a", "b"]})
    assert "Did you mean 'labels'?" in str(info.value)


# -- the Prompt Registry --


def test_register_and_resolve_every_way():
    name = unique()
    registered = register_template(
        name,
        "Answer {{ question }} in {{language}}.",
        system="You are {{persona}}.",
        validate={"max_length": 50, "length_unit": "words", "forbidden_words": ("guarantee",)},
        alias="production",
        tags={"team": "search"},
        commit_message="first version",
    )
    assert registered == Template(
        name=name,
        template="Answer {{ question }} in {{language}}.",
        system="You are {{persona}}.",
        version="1",
        validate={"max_length": 50, "length_unit": "words", "forbidden_words": ["guarantee"]},
        source="registry",
        uri=f"prompts:/{name}/1",
    )
    references = [
        (name, None),
        (f"{name}@production", None),
        (f"{name}/1", None),
        (name, 1),
        (name, "1"),
        (f"prompts:/{name}/1", None),
        (f"prompts:/{name}@production", None),
        (f"prompts:/{name}", None),
    ]
    for reference, version in references:
        assert resolve_template(reference, version) == registered, (reference, version)

    prepared = resolve_template(name).render({"question": "why?", "language": "Dutch", "persona": "a {{pirate}}"})
    assert prepared.messages == [
        {"role": "system", "content": "You are a {{pirate}}."},
        {"role": "user", "content": "Answer why? in Dutch."},
    ]
    assert prepared.validate == registered.validate
    assert prepared.trace_attributes == {
        "mlflow_lite.template": name,
        "mlflow_lite.template_version": "1",
        "mlflow_lite.template_source": "registry",
        "mlflow_lite.template_uri": f"prompts:/{name}/1",
    }
    stored = mlflow.genai.load_prompt(f"prompts:/{name}/1")
    assert stored.tags["team"] == "search"
    assert stored.commit_message == "first version"
    assert stored.template == [
        {"role": "system", "content": "You are {{persona}}."},
        {"role": "user", "content": "Answer {{ question }} in {{language}}."},
    ]


def test_text_prompt_without_validation():
    name = unique()
    registered = register_template(name, "Say hi to {{who}}")
    assert mlflow.genai.load_prompt(registered.uri).is_text_prompt
    loaded = resolve_template(name)
    assert loaded.system is None and loaded.validate is None
    assert loaded.render({"who": "Bob"}).messages == [{"role": "user", "content": "Say hi to Bob"}]
    with pytest.raises(ml.ArgumentError) as info:
        loaded.render({})
    assert info.value.argument == "who" and name in str(info.value)


def test_new_versions_and_moving_aliases_change_what_resolves():
    name = unique()
    register_template(name, "v1 {{input}}", alias="production")
    assert resolve_template(name).version == "1"

    register_template(name, "v2 {{input}}", validate={"max_length": 10})
    assert resolve_template(name).template == "v2 {{input}}"  # the newest version
    assert resolve_template(f"{name}@production").version == "1"

    register_template(name, "v3 {{input}}", alias="production")
    assert resolve_template(f"{name}@production").template == "v3 {{input}}"
    assert resolve_template(f"{name}/2").validate == {"max_length": 10}
    assert resolve_template(f"{name}/1").template == "v1 {{input}}"

    mlflow.genai.set_prompt_alias(name, alias="production", version=2)  # a rollback, outside this module
    assert resolve_template(f"{name}@production").version == "2"


def _count_registry_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Registry reads made by this thread (MLflow links prompts to experiments in the background)."""
    reads: list[str] = []
    real = MlflowClient._get_registry_client

    def counting(self):
        if threading.current_thread() is threading.main_thread():
            reads.append("read")
        return real(self)

    monkeypatch.setattr(MlflowClient, "_get_registry_client", counting)
    return reads


def test_loaded_versions_are_cached(monkeypatch):
    name = unique()
    register_template(name, "cached {{input}}", alias="live")
    first = resolve_template(f"{name}/1")
    latest = resolve_template(name)
    live = resolve_template(f"{name}@live")
    reads = _count_registry_reads(monkeypatch)
    for _ in range(3):
        assert resolve_template(f"{name}/1") == first
        assert resolve_template(name, version=1) == first
        assert resolve_template(name) == latest  # within MLflow's alias TTL
        assert resolve_template(f"{name}@live") == live
    assert reads == []


def test_unknown_prompts_are_named():
    name = unique("missing")
    with pytest.raises(ml.ArgumentError) as info:
        resolve_template(name)
    assert info.value.argument == "template"
    assert name in str(info.value) and "summarize" in str(info.value)

    existing = unique()
    register_template(existing, "x {{input}}")
    for reference in (f"{existing}@nope", f"{existing}/7", f"prompts:/{existing}/7"):
        with pytest.raises(ml.ArgumentError) as info:
            resolve_template(reference)
        assert reference in str(info.value)


@pytest.mark.parametrize(
    "reference, version",
    [("x/abc", None), ("prompts:/x/abc", None), ("x", "abc"), ("x", 0), ("x", True), ("x/1", 1), ("x@a", 2)],
)
def test_bad_versions(reference, version):
    with pytest.raises(ml.ArgumentError) as info:
        resolve_template(reference, version)
    assert info.value.argument == "version"


def test_register_refuses_builtin_names():
    with pytest.raises(ml.ArgumentError) as info:
        register_template("summarize", "my own {{input}}")
    assert info.value.argument == "name" and "built-in" in str(info.value)


def test_register_refuses_callables_in_validate():
    name = unique()
    for validate in ({"custom": len}, {"max_length": 5, "custom": [lambda text: True]}):
        with pytest.raises(ml.ArgumentError) as info:
            register_template(name, "x {{input}}", validate=validate)
        assert info.value.argument == "validate" and "callable" in str(info.value)
    with pytest.raises(ml.ArgumentError) as info:
        register_template(name, "x {{input}}", validate={"regex": object()})
    assert info.value.argument == "validate"
    assert mlflow.genai.load_prompt(name, allow_missing=True) is None  # nothing was registered


@pytest.mark.parametrize("variable", ["model", "temperature", "fallbacks", "validate", "template", "version"])
def test_register_refuses_variables_named_like_query_keywords(variable):
    with pytest.raises(ml.ArgumentError) as info:
        register_template(unique(), f"Use {{{{{variable}}}}} for {{{{input}}}}")
    assert info.value.argument == "template"
    assert repr(variable) in str(info.value) and "rename" in str(info.value)


def test_loading_refuses_variables_named_like_query_keywords():
    name = unique()
    mlflow.genai.register_prompt(name, "At {{ temperature }} degrees: {{input}}")
    with pytest.raises(ml.ArgumentError) as info:
        resolve_template(name)
    assert "'temperature'" in str(info.value) and f"prompts:/{name}/1" in str(info.value)


def test_loading_refuses_what_a_template_cannot_hold():
    few_shot = unique()
    mlflow.genai.register_prompt(
        few_shot,
        [
            {"role": "user", "content": "2+2"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "{{input}}"},
        ],
    )
    with pytest.raises(ml.ArgumentError, match="system and a user message"):
        resolve_template(few_shot)

    jinja = unique()
    mlflow.genai.register_prompt(jinja, "{% if input %}{{ input }}{% endif %}")
    with pytest.raises(ml.ArgumentError, match="Jinja2"):
        resolve_template(jinja)

    broken = unique()
    mlflow.genai.register_prompt(broken, "{{input}}", tags={"mlflow_lite_validate": "{not json"})
    with pytest.raises(ml.ArgumentError, match="not valid JSON"):
        resolve_template(broken)


def test_registry_errors_become_argument_errors():
    with pytest.raises(ml.ArgumentError) as info:
        register_template("has spaces", "x")
    assert info.value.argument == "name" and "alphanumeric" in str(info.value)

    name = unique()
    with pytest.raises(ml.ArgumentError) as info:
        register_template(name, "x", alias="latest")
    assert info.value.argument == "alias" and "reserved" in str(info.value)
    assert mlflow.genai.load_prompt(name, allow_missing=True) is None  # checked before registering

    for kwargs, argument in [
        ({"name": "", "template": "x"}, "name"),
        ({"name": name, "template": ""}, "template"),
        ({"name": name, "template": None}, "template"),
        ({"name": name, "template": "x", "system": ""}, "system"),
        ({"name": name, "template": "x", "validate": ["max_length"]}, "validate"),
        ({"name": name, "template": "x", "tags": ["a"]}, "tags"),
        ({"name": name, "template": "x", "tags": {"mlflow_lite_validate": "{}"}}, "tags"),
        ({"name": name, "template": "x" * 100_001}, "template"),
    ]:
        with pytest.raises(ml.ArgumentError) as info:
            register_template(**kwargs)
        assert info.value.argument == argument, kwargs


def test_import_does_not_load_mlflow_or_litellm():
    code = (
        "import sys, mlflow_lite_plugin.prompts.templates\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'litellm')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "[]"
