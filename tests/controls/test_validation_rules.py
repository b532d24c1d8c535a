"""validation.Validator on its own: every rule passing and failing, length units, parsing, custom
callables, spec errors raised before any call, describe() and repair_prompt()."""

from __future__ import annotations

import json
import re

import pytest

from mlflow_lite_plugin.controls.validation.rules import StreamViolation, ValidationResult, Validator
from mlflow_lite_plugin.core.errors import ArgumentError

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def check(spec, text, **kwargs):
    return Validator(spec).check(text, **kwargs)


def assert_fails(result: ValidationResult, rule: str, *fragments: str) -> None:
    assert not result.passed and not result
    assert rule in result.failed_rules
    (error,) = [e for e, r in zip(result.errors, result.failed_rules, strict=True) if r == rule]
    assert error.startswith(f"{rule}: ")
    for fragment in fragments:
        assert fragment in error


# -- lengths --


def test_max_and_min_length_in_characters_of_the_stripped_answer():
    assert check({"max_length": 5}, "  hello \n").passed
    result = check({"max_length": 5}, "hello!")
    assert result.errors == ["max_length: 6 characters, more than 5"]
    assert_fails(check({"min_length": 10}, "  short  "), "min_length", "5 characters, fewer than 10")
    assert check({"min_length": 3, "max_length": 3}, "abc")


def test_length_in_words():
    rules = {"max_length": 3, "length_unit": "words"}
    assert check(rules, "one two\nthree")
    assert_fails(check(rules, "one two three four"), "max_length", "4 words, more than 3")
    assert_fails(check({"min_length": 2, "length_unit": "words"}, "one"), "min_length", "1 word, fewer than 2")


def test_length_in_tokens_uses_the_given_counter():
    rules = {"max_length": 4, "length_unit": "tokens"}
    seen = []

    def count(text):
        seen.append(text)
        return len(text) // 2

    assert check(rules, " abcdefgh ", count_tokens=count)
    assert seen == ["abcdefgh"]
    assert_fails(check(rules, "abcdefghij", count_tokens=count), "max_length", "5 tokens, more than 4")


def test_tokens_without_a_counter_is_a_clear_error():
    with pytest.raises(ArgumentError, match="count_tokens"):
        check({"max_length": 4, "length_unit": "tokens"}, "text")


# -- words --


def test_required_words_whole_word_case_insensitive():
    rules = {"required_words": ["step", "process", "top secret"]}
    assert check(rules, "The PROCESS has one Step; it is Top\n  Secret.")
    result = check(rules, "Steps of the processes are top secret")
    assert_fails(result, "required_words", "'step'", "'process'")
    assert "top secret" not in result.errors[0]


def test_required_words_accepts_one_string():
    assert check({"required_words": "step"}, "one step")
    assert_fails(check({"required_words": "step"}, "one stage"), "required_words", "missing 'step'")


def test_forbidden_words():
    rules = {"forbidden_words": ["secret", "c++"]}
    assert check(rules, "Secrets and secretive things, in C or c#")
    result = check(rules, "This is a SECRET about C++.")
    assert result.errors == ["forbidden_words: contains 'secret', 'c++'"]


# -- formats --


def test_json_format_parses_and_sets_value():
    result = check({"format": "json"}, ' {"a": [1, 2]} ')
    assert result.passed and result.value == {"a": [1, 2]}


@pytest.mark.parametrize("text", ['```json\n{"a": 1}\n```', '\n```\n{"a": 1}```\n', '```JSON  \r\n{"a": 1}\n```'])
def test_json_in_a_single_fence_is_accepted(text):
    result = check({"format": "json"}, text)
    assert result.passed and result.value == {"a": 1}


@pytest.mark.parametrize(
    "text",
    [
        'Here you go: {"a": 1}',
        'Sure!\n```json\n{"a": 1}\n```',
        '```json\n{"a": 1}\n```\nHope this helps.',
        '{"a": 1} and more',
        "{'a': 1}",
        '{"a": NaN}',
        '{"a": 1, "a": 2}',
        "",
    ],
)
def test_json_with_prose_or_broken_syntax_is_rejected(text):
    result = check({"format": "json"}, text)
    assert_fails(result, "format", "not valid JSON")
    assert result.value is None


def test_json_prose_error_says_to_send_the_document_alone():
    assert "JSON document alone" in check({"format": "json"}, 'Sure! {"a": 1}').errors[0]


def test_yaml_format():
    result = check({"format": "yaml"}, "```yaml\nname: Ada\ntags: [a, b]\n```")
    assert result.passed and result.value == {"name": "Ada", "tags": ["a", "b"]}
    assert check({"format": "yaml"}, "- 1\n- 2").value == [1, 2]
    assert_fails(check({"format": "yaml"}, "just a sentence"), "format", "not a YAML document")
    assert_fails(check({"format": "yaml"}, "a: [1, 2"), "format", "not valid YAML")


def test_xml_format():
    assert check({"format": "xml"}, "<person><name>Ada</name></person>")
    assert check({"format": "xml"}, "```xml\n<a/>\n```")
    assert_fails(check({"format": "xml"}, "<a><b></a>"), "format", "not valid XML")
    assert_fails(check({"format": "xml"}, "Here: <a/>"), "format", "not valid XML")


@pytest.mark.parametrize(
    "text",
    ["# Title\ntext", "Intro:\n- one\n- two", "1. first", "Some **bold** words", "an *emphasised* word",
     "> quoted", "see [docs](https://example.com)", "| a | b |\n|---|---|\n| 1 | 2 |", "```\ncode\n```"],
)
def test_markdown_structure(text):
    assert check({"format": "markdown"}, text).passed


def test_markdown_without_structure_or_with_an_open_fence_fails():
    assert_fails(check({"format": "markdown"}, "Just a plain sentence, 2 * 3 = 6."), "format", "no markdown structure")
    assert_fails(check({"format": "markdown"}, "# Code\n```python\nx = 1\n"), "format", "unbalanced")


def test_format_is_case_insensitive():
    assert check({"format": "JSON"}, "[1]")


# -- schema --


def test_schema_passes_and_sets_value():
    result = check({"schema": PERSON}, '{"name": "Ada", "age": 36}')
    assert result.passed and result.value == {"name": "Ada", "age": 36}
    assert Validator({"schema": PERSON}).expects_json


def test_schema_errors_have_paths():
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": PERSON}}}
    result = check({"schema": schema}, '{"items": [{"name": "A", "age": 1}, {"name": "B", "age": "old"}]}')
    assert result.errors == ["schema: $.items[1].age: 'old' is not of type 'integer'"]
    missing = check({"schema": PERSON}, '{"name": "Ada"}')
    assert missing.errors == ["schema: $: 'age' is a required property"]


def test_schema_without_json_reports_under_schema_once():
    result = check({"schema": PERSON}, "Ada is 36")
    assert result.failed_rules == ["schema"] and "not valid JSON" in result.errors[0]
    both = check({"format": "json", "schema": PERSON}, "Ada is 36")
    assert both.failed_rules == ["format"]


def test_schema_errors_are_capped():
    schema = {"type": "array", "items": {"type": "string"}}
    result = check({"schema": schema}, json.dumps(list(range(30))))
    assert len(result.errors) == 11 and "more errors" in result.errors[-1]


def test_schema_with_local_refs_and_draft7():
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": {"age": {"type": "integer", "minimum": 0}},
        "properties": {"age": {"$ref": "#/definitions/age"}},
    }
    assert check({"schema": schema}, '{"age": 3}')
    assert_fails(check({"schema": schema}, '{"age": -3}'), "schema", "$.age", "minimum")


def test_schema_with_yaml_format_validates_the_yaml_document():
    v = Validator({"format": "yaml", "schema": PERSON})
    assert not v.expects_json
    assert v.check("name: Ada\nage: 36").passed
    assert_fails(v.check("name: Ada\nage: old"), "schema", "$.age")


def test_schema_format_keyword_is_not_checked():
    assert check({"schema": {"type": "string", "format": "email"}}, '"not an email"')


# -- regex and choices --


def test_regex_one_or_many_str_or_compiled():
    assert check({"regex": r"\d{3}"}, "call 555 now")
    assert_fails(check({"regex": r"^\d+$"}, "call 555"), "regex", r"'^\\d+$'")
    rules = {"regex": [re.compile("^hello", re.I), r"world\.$"]}
    assert check(rules, "HELLO world.")
    result = check(rules, "bye world")
    assert len(result.errors) == 2 and all(r == "regex" for r in result.failed_rules)


@pytest.mark.parametrize("text", ["positive", "Positive.", "  NEGATIVE \n"])
def test_choices_match_case_insensitive_ignoring_a_trailing_period(text):
    assert check({"choices": ["positive", "negative"]}, text)


def test_choices_fail():
    assert_fails(check({"choices": ["yes", "no"]}, "maybe"), "choices", "'maybe'", "'yes', 'no'")
    assert not check({"choices": ["yes", "no"]}, "yes, I think")


# -- custom callables --


def lowercase(text):
    return text == text.lower()


def no_digits(text):
    return not any(c.isdigit() for c in text) or "the answer has digits"


def short(text):
    return (len(text) < 5, f"{len(text)} is too long")


def broken(text):
    raise KeyError("oops")


def test_custom_callable_results():
    assert check(lowercase, "fine")
    assert check([lowercase, no_digits, short], "ok")
    result = check([lowercase, no_digits, short, broken], "ABC 123")
    assert result.errors == [
        "lowercase: returned False",
        "no_digits: the answer has digits",
        "short: 7 is too long",
        "broken: raised KeyError: 'oops'",
    ]
    assert result.failed_rules == ["lowercase", "no_digits", "short", "broken"]


def test_custom_returning_none_passes_and_odd_values_fail():
    assert check(lambda text: None, "x")
    result = check(lambda text: 42, "x")
    assert result.failed_rules == ["<lambda>"] and "returned 42" in result.errors[0]


def test_custom_under_the_custom_key_and_mixed_with_dicts():
    v = Validator([{"max_length": 10}, lowercase, {"custom": [no_digits], "forbidden_words": ["x"]}])
    assert v.rules == ("max_length", "lowercase", "no_digits", "forbidden_words")
    result = v.check("HELLO 12 x and more")
    assert result.failed_rules == ["max_length", "lowercase", "no_digits", "forbidden_words"]


def test_custom_rule_gets_the_raw_answer():
    seen = []
    check(lambda text: seen.append(text), "  spaced  ")
    assert seen == ["  spaced  "]


# -- combining rules --


def test_every_rule_is_checked_and_every_error_reported():
    rules = {"max_length": 10, "required_words": ["step"], "forbidden_words": ["bad"], "regex": "^[A-Z]"}
    result = check(rules, "a bad answer without it")
    assert result.failed_rules == ["max_length", "required_words", "forbidden_words", "regex"]
    assert len(result.errors) == 4


def test_later_dicts_override_earlier_ones_and_none_turns_a_rule_off():
    v = Validator([{"max_length": 5, "min_length": 1}, {"max_length": 50, "min_length": None}])
    assert v.rules == ("max_length",)
    assert v.check("a" * 40)


def test_result_to_dict_is_json_safe():
    result = check({"format": "yaml"}, "when: 2024-01-02\nn: .nan\nxs: [1]")
    data = result.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["passed"] is True and data["value"]["when"] == "2024-01-02" and data["attempts"] == 1


# -- options --


def test_options_defaults_and_sources():
    v = Validator({"format": "json"})
    assert (v.on_fail, v.max_attempts) == ("raise", 3)
    v = Validator({"format": "json", "on_fail": "retry", "max_attempts": 2})
    assert (v.on_fail, v.max_attempts) == ("retry", 2)
    v = Validator({"format": "json"}, on_fail="return", max_attempts=5)
    assert (v.on_fail, v.max_attempts) == ("return", 5)
    v = Validator({"format": "json", "on_fail": "retry"}, on_fail="retry")
    assert v.on_fail == "retry"


def test_option_given_twice_differently_is_refused():
    with pytest.raises(ArgumentError, match=r"on_fail .*'retry'.*'return'"):
        Validator({"format": "json", "on_fail": "retry"}, on_fail="return")


@pytest.mark.parametrize(
    "kwargs, rules, argument, fragment",
    [
        ({"on_fail": "ignore"}, {}, "on_fail", "on_fail must be one of"),
        ({}, {"on_fail": "skip"}, "validate", "on_fail must be one of"),
        ({"max_attempts": 0}, {}, "max_attempts", "max_attempts"),
        ({}, {"max_attempts": "3"}, "validate", "max_attempts"),
        ({"max_attempts": True}, {}, "max_attempts", "max_attempts"),
    ],
)
def test_bad_options(kwargs, rules, argument, fragment):
    with pytest.raises(ArgumentError, match=fragment) as info:
        Validator({"format": "json", **rules}, **kwargs)
    assert info.value.argument == argument


# -- spec errors --


def test_unknown_rule_suggests_the_closest_and_lists_known_rules():
    with pytest.raises(ArgumentError) as info:
        Validator({"max_lenght": 10})
    message = str(info.value)
    assert info.value.argument == "validate"
    assert "unknown rule 'max_lenght'" in message and "Did you mean 'max_length'?" in message
    assert "Known rules:" in message and "forbidden_words" in message


@pytest.mark.parametrize(
    "spec, fragments",
    [
        ({"max_length": "100"}, ["max_length", "'100'"]),
        ({"max_length": 10.5}, ["max_length"]),
        ({"min_length": -1}, ["min_length"]),
        ({"max_length": True}, ["max_length"]),
        ({"min_length": 20, "max_length": 10}, ["min_length (20) is more than max_length (10)"]),
        ({"max_length": 5, "length_unit": "bytes"}, ["length_unit", "'characters'"]),
        ({"required_words": ["ok", ""]}, ["required_words", "non-empty strings"]),
        ({"required_words": [1]}, ["required_words"]),
        ({"forbidden_words": {"a": 1}}, ["forbidden_words"]),
        ({"format": "jsonn"}, ["format 'jsonn'", "json, yaml, markdown, xml"]),
        ({"format": 1}, ["format"]),
        ({"regex": "([a-z"}, ["regex '([a-z' does not compile"]),
        ({"regex": []}, ["regex"]),
        ({"regex": [3]}, ["regex"]),
        ({"regex": re.compile(b"x")}, ["regex"]),
        ({"schema": {"type": "objekt"}}, ["schema is not a valid JSON Schema", "$.type", "'objekt'"]),
        ({"schema": {"properties": {"a": {"minimum": "x"}}}}, ["schema", "$.properties.a.minimum"]),
        ({"schema": "object"}, ["schema must be a JSON Schema"]),
        ({"schema": PERSON, "format": "markdown"}, ["schema needs a JSON"]),
        ({"choices": []}, ["choices"]),
        ({"choices": "yes"}, ["choices"]),
        ({"custom": "not callable"}, ["custom"]),
        ({1: 2}, ["rule names must be strings"]),
        ({}, ["no rules"]),
        ({"length_unit": "words"}, ["no rules"]),
        ([], ["no rules"]),
        ("json", ["rules must be a dict, a callable or a list"]),
        ([{"format": "json"}, 3], ["rules must be a dict"]),
    ],
)
def test_spec_errors_raise_argument_error_naming_the_rule(spec, fragments):
    with pytest.raises(ArgumentError) as info:
        Validator(spec)
    assert info.value.argument == "validate"
    for fragment in fragments:
        assert fragment in str(info.value)


# -- describe and repair --


def test_describe_is_json_serialisable():
    rules = {
        "max_length": 100,
        "length_unit": "words",
        "required_words": "step",
        "forbidden_words": ["x"],
        "schema": PERSON,
        "regex": [re.compile("^a", re.I), "b$"],
        "choices": ["a", "b"],
        "custom": [lowercase],
    }
    v = Validator([rules, lambda t: True], on_fail="retry")
    described = json.loads(json.dumps(v.describe()))
    assert described["max_length"] == 100 and described["length_unit"] == "words"
    assert described["required_words"] == ["step"]
    assert described["schema"] == PERSON
    assert described["regex"] == ["(?i)^a", "b$"]
    assert described["custom"] == ["lowercase", "test_describe_is_json_serialisable.<locals>.<lambda>"]
    assert described["on_fail"] == "retry" and described["max_attempts"] == 3


def test_describe_without_callables_builds_the_same_validator():
    v = Validator({"max_length": 10, "regex": re.compile("x", re.I), "format": "json"}, on_fail="return")
    again = Validator(v.describe())
    assert again.describe() == v.describe()
    assert again.check('"X"').passed


def test_repair_prompt_lists_the_errors_and_asks_for_the_answer_only():
    v = Validator({"schema": PERSON})
    result = v.check('Sure: {"name": "Ada"}')
    prompt = v.repair_prompt(result)
    assert result.errors[0] in prompt
    assert "JSON document only" in prompt and "no text or commentary" in prompt
    assert '"required": ["name", "age"]' in prompt
    plain = Validator({"max_length": 5})
    prompt = plain.repair_prompt(plain.check("far too long"))
    assert "max_length: 12 characters, more than 5" in prompt and "answer only" in prompt
    classify = Validator({"choices": ["yes", "no"]})
    assert "exactly one of: yes, no" in classify.repair_prompt(classify.check("maybe"))


# -- incremental (text rules; JSON is in test_json_stream.py) --


def feed_all(incremental, chunks):
    for chunk in chunks:
        incremental.feed(chunk)


def stop_at(incremental, chunks) -> StreamViolation:
    with pytest.raises(StreamViolation) as info:
        feed_all(incremental, chunks)
    return info.value


def test_incremental_max_length_in_characters_ignores_surrounding_whitespace():
    v = Validator({"max_length": 5})
    feed_all(v.incremental(), ["  \n ", " hel", "lo", "   ", "\n"])
    violation = stop_at(v.incremental(), ["  hel", "lo  ", " ", "!", "more"])
    assert violation.rule == "max_length" and violation.read == len("  hello   !")
    assert str(violation) == "max_length: 9 characters, more than 5 (after 11 characters)"


def test_incremental_max_length_in_words_counts_words_split_across_chunks():
    v = Validator({"max_length": 3, "length_unit": "words"})
    feed_all(v.incremental(), ["on", "e tw", "o  thr", "ee  "])
    violation = stop_at(v.incremental(), ["one two", " three", " f", "our"])
    assert violation.read == len("one two three f")


def test_incremental_ignores_token_lengths():
    v = Validator({"max_length": 1, "length_unit": "tokens"})
    feed_all(v.incremental(lambda text: 1000), ["many words here"])


def test_incremental_forbidden_word_once_complete():
    v = Validator({"forbidden_words": ["secret", "top secret plan"]})
    inc = v.incremental()
    feed_all(inc, ["the sec", "ret"])  # "secrets" is still possible
    with pytest.raises(StreamViolation) as info:
        inc.feed(" is out")
    assert info.value.rule == "forbidden_words" and info.value.read == len("the secret is out")
    feed_all(v.incremental(), ["secrets, ", "secretive, ", "unsecret"])


def test_incremental_forbidden_phrase_across_chunks_and_whitespace():
    v = Validator({"forbidden_words": ["top secret plan"]})
    chunks = ["a TOP", "  \n  ", "   secret", "\t", "plan", "."]
    violation = stop_at(v.incremental(), chunks)
    assert violation.read == len("".join(chunks)) and "'top secret plan'" in str(violation)


def test_incremental_forbidden_word_does_not_match_inside_a_longer_word_after_trimming():
    v = Validator({"forbidden_words": ["cret"]})
    inc = v.incremental()
    for c in "a long text about secret things, discreet and so on ":
        inc.feed(c)
    with pytest.raises(StreamViolation):
        inc.feed("cret ")


def test_incremental_checks_json_when_expected():
    v = Validator({"format": "json"})
    violation = stop_at(v.incremental(), ["Sure! ", '{"a": 1}'])
    assert violation.rule == "json" and violation.read == 6
    feed_all(Validator({"format": "yaml"}).incremental(), ["Sure! a: 1"])  # YAML: checked at the end only
