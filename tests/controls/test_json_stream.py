"""json_stream.JsonStreamChecker: valid documents never raise however they are chunked; each
certain violation is raised at the earliest chunk that makes it certain; no false positives
against jsonschema on random documents; linear time."""

from __future__ import annotations

import json
import random
import time

import pytest

from mlflow_lite_plugin.controls.validation.json_stream import JsonStreamChecker, json_path
from mlflow_lite_plugin.controls.validation.rules import StreamViolation, Validator

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "bio": {"type": "string"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
ORDER = {
    "$defs": {
        "item": {
            "type": "object",
            "properties": {
                "sku": {"type": "string", "maxLength": 8},
                "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                "price": {"type": "number", "exclusiveMinimum": 0},
            },
            "required": ["sku", "qty"],
        }
    },
    "type": "object",
    "properties": {
        "id": {"type": ["integer", "string"]},
        "status": {"enum": ["open", "paid", None, 3]},
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1, "maxItems": 3},
        "point": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}], "items": False},
        "paid": {"type": "boolean"},
        "note": {"const": "fragile"},
    },
    "patternProperties": {"^x-": {"type": "string"}},
    "additionalProperties": {"type": ["string", "null"]},
    "required": ["id", "items"],
}
TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "value": {"type": "integer"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
            "required": ["value"],
            "additionalProperties": False,
        }
    },
    "$ref": "#/$defs/node",
}
LOOSE = {  # keywords the stream does not check must never cause a violation
    "type": "object",
    "properties": {
        "a": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        "b": {"not": {"type": "string"}},
        "c": {"type": "string", "pattern": "^x", "minLength": 3},
        "d": {"oneOf": [{"type": "array"}, {"type": "object"}]},
        "e": {"type": "array", "uniqueItems": True, "contains": {"type": "integer"}},
    },
    "if": {"required": ["a"]},
    "then": {"required": ["b"]},
}
DRAFT7 = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "definitions": {"n": {"type": "number", "maximum": 10}},
    "type": "object",
    "properties": {
        "pair": {"type": "array", "items": [{"type": "string"}, {"type": "integer"}], "additionalItems": False},
        "n": {"$ref": "#/definitions/n", "type": "string"},  # draft 7 ignores $ref's siblings
    },
}
SCHEMAS = {"person": PERSON, "order": ORDER, "tree": TREE, "loose": LOOSE, "draft7": DRAFT7, "none": None}

VALID = [
    ("person", '{"name": "Ada", "age": 36}'),
    ("person", '  {"name":"A\\u00e9\\"\\\\\\/\\b\\f\\n\\r\\t\\ud83d\\ude00","age":-0,"bio":""}  \n'),
    ("person", '```json\n{"name": "Ada", "age": 36}\n```'),
    ("person", '\n```\r\n {"name": "Ada", "age": 1.0e2}```  '),
    ("order", '{"id": "A-1", "items": [{"sku": "abc", "qty": 2, "price": 0.5}], "status": null, "x-tag": "t"}'),
    ("order", '{"id": 7, "items": [{"sku": "\\u0041\\u0042", "qty": 99}, {"sku": "z", "qty": 1}], '
              '"point": [1, -2.5e-3]}'),
    ("order", '{"id": 7, "items": [{"sku": "12345678", "qty": 1}], "status": 3.0, "paid": false, "other": null}'),
    ("order", '{"note": "fragile", "id": 1, "items": [{"sku": "a", "qty": 5, "extra": [1, {"k": true}]}]}'),
    ("tree", '{"value": 1, "children": [{"value": 2}, {"value": 3, "children": [{"value": 4, "children": []}]}]}'),
    ("loose", '{"a": 1, "b": 2, "c": "xyz", "d": [], "e": [1, 2]}'),
    ("loose", '{}'),
    ("draft7", '{"pair": ["a", 1], "n": 3}'),
    ("none", '[1, 2.5, -3e10, "x", true, false, null, {"a": {"b": []}}, [], {}]'),
    ("none", '"just a string"'),
    ("none", "  -12.5E+3  "),
    ("none", "null"),
    ("none", "```\n0\n```"),
    ("none", '"\\uD834\\uDD1E \\u00e9 \\t"'),
]


def chunkings(text: str, seed: int = 0):
    yield [text]
    yield list(text)
    rng = random.Random(seed)
    for _ in range(5):
        chunks, i = [], 0
        while i < len(text):
            n = rng.randint(1, 7)
            chunks.append(text[i : i + n])
            i += n
        yield chunks


def run(schema, chunks) -> JsonStreamChecker:
    checker = JsonStreamChecker(schema)
    for chunk in chunks:
        checker.feed(chunk)
    checker.finish()
    return checker


def first_violation(schema, text: str) -> StreamViolation:
    """Feeds ``text`` one character at a time; the violation must come from feed, not finish."""
    checker = JsonStreamChecker(schema)
    with pytest.raises(StreamViolation) as info:
        for c in text:
            checker.feed(c)
    return info.value


# -- valid documents --


@pytest.mark.parametrize("name, doc", VALID)
def test_valid_documents_never_raise_in_any_chunking(name, doc):
    schema = SCHEMAS[name]
    assert Validator({"schema": schema} if schema else {"format": "json"}).check(doc).passed  # the corpus is valid
    for seed, chunks in enumerate(chunkings(doc)):
        checker = run(schema, chunks)
        assert checker.read == len(doc), seed


def test_empty_chunks_are_fine():
    run(PERSON, ["", '{"name"', "", ': "A", "age": 1}', ""])


# -- earliest violation --


@pytest.mark.parametrize(
    "schema, text, rule, path",
    [
        # syntax
        (None, '{"a" 1', "json", "$.a"),
        (None, "[1,,", "json", "$[1]"),
        (None, "{'", "json", "$"),
        (None, "tru3", "json", "$"),
        (None, "nulL", "json", "$"),
        (None, '{"a": 1,}', "json", "$"),
        (None, "[1 2", "json", "$"),
        (None, "[01", "json", "$"),
        (None, "[-a", "json", "$[0]"),
        (None, "[1.e", "json", "$[0]"),
        (None, "[1e+]", "json", "$[0]"),
        (None, '["a\\x', "json", "$[0]"),
        (None, '["\\u12G', "json", "$[0]"),
        (None, '["tab\t', "json", "$[0]"),
        (None, "[N", "json", "$[0]"),
        (None, '{"a": 1, "a"', "json", "$.a"),
        (None, "{} x", "json", "$"),
        (None, "[1]]", "json", "$"),
        (None, '"done" "', "json", "$"),
        (None, "1 2", "json", "$"),
        # leading prose and fences
        (None, "S", "json", "$"),
        (None, "  H", "json", "$"),
        (None, "``j", "json", "$"),
        (None, "````", "json", "$"),
        (None, "```json {", "json", "$"),
        (None, "```json\n[1]\n``` x", "json", "$"),
        (None, "```json\n[1]\n`x", "json", "$"),
        (None, "[1] `", "json", "$"),
        (None, "```json\n[1]\n````", "json", "$"),
        # schema: types known from the first character
        (PERSON, "[", "schema", "$"),
        (PERSON, '{"name": 1', "schema", "$.name"),
        (PERSON, '{"name": "A", "age": "', "schema", "$.age"),
        (PERSON, '{"name": "A", "age": t', "schema", "$.age"),
        (PERSON, '{"name": "A", "age": 1.5,', "schema", "$.age"),
        (PERSON, '{"name": "A", "age": 2e-1}', "schema", "$.age"),
        (PERSON, '{"name": "A", "salary"', "schema", "$.salary"),
        (PERSON, '{"name": "A"}', "schema", "$"),
        (ORDER, '{"id": t', "schema", "$.id"),
        (ORDER, '{"id": 1, "status": "closed"', "schema", "$.status"),
        (ORDER, '{"id": 1, "status": {', "schema", "$.status"),
        (ORDER, '{"id": 1, "status": f', "schema", "$.status"),
        (ORDER, '{"id": 1, "status": 3.5,', "schema", "$.status"),
        (ORDER, '{"note": "fragil"', "schema", "$.note"),
        (ORDER, '{"items": []', "schema", "$.items"),
        (ORDER, '{"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 1}, {"sku": "c", "qty": 1},', "schema",
         "$.items"),
        (ORDER, '{"items": [{"sku": "123456789', "schema", "$.items[0].sku"),
        (ORDER, '{"items": [{"sku": "a", "qty": 0,', "schema", "$.items[0].qty"),
        (ORDER, '{"items": [{"sku": "a", "qty": 100}', "schema", "$.items[0].qty"),
        (ORDER, '{"items": [{"sku": "a", "qty": 1, "price": 0]', "schema", "$.items[0].price"),
        (ORDER, '{"items": [{"qty": 1}', "schema", "$.items[0]"),
        (ORDER, '{"point": [1, 2,', "schema", "$.point[2]"),
        (ORDER, '{"point": ["', "schema", "$.point[0]"),
        (ORDER, '{"x-a": 1', "schema", '$["x-a"]'),
        (ORDER, '{"other": 1', "schema", "$.other"),
        (TREE, '{"value": 1, "children": [{"value": 2, "children": [{"value": "', "schema",
         "$.children[0].children[0].value"),
        (TREE, '{"value": 1, "children": [{"label"', "schema", "$.children[0].label"),
        (DRAFT7, '{"pair": [1', "schema", "$.pair[0]"),
        (DRAFT7, '{"pair": ["a", 1,', "schema", "$.pair[2]"),
        (DRAFT7, '{"n": 11}', "schema", "$.n"),
    ],
)
def test_violation_is_raised_at_the_earliest_certain_chunk(schema, text, rule, path):
    violation = first_violation(schema, text)
    assert violation.read == len(text), f"raised after {violation.read} of {len(text)}: {violation}"
    assert violation.rule == rule and violation.path == path
    assert str(violation) == f"{rule}: {violation.message} (after {len(text)} characters)"
    checker = JsonStreamChecker(schema)
    checker.feed(text[:-1])  # one character less is not certain yet
    whole = JsonStreamChecker(schema)
    with pytest.raises(StreamViolation) as info:
        whole.feed(text + " more")
    assert info.value.read == len(text) + 5  # read counts the whole violating chunk


def test_the_pipeline_examples():
    doc = '{"name": "Ada", "age": "thirty-six", "bio": "x"}'
    assert first_violation(PERSON, doc).read == len('{"name": "Ada", "age": "')
    assert first_violation(PERSON, '{"name": "Ada" "age": 1}').read == len('{"name": "Ada" "')
    assert first_violation(PERSON, '["not", "an", "object"]').read == 1


def test_messages_name_what_went_wrong():
    assert "an integer" in first_violation(PERSON, '{"age": "').message
    assert "'salary' is not allowed" in first_violation(PERSON, '{"salary"').message
    assert "missing required 'age'" in first_violation(PERSON, '{"name": "A"}').message
    assert "character 5" in first_violation(None, '{"a" 1').message
    assert "extra data" in first_violation(None, "{} x").message
    assert "duplicate key 'a'" in first_violation(None, '{"a": 1, "a"').message


# -- chunk boundaries --


def test_boundaries_inside_escapes_literals_numbers_and_the_fence():
    pieces = ["```", "js", "on", "\r", "\n", '{"a', "\\", "u0", "0e", "9", "\\", 'n"', ": [tr", "ue, -", "1", ".", "5e"]
    run(None, [*pieces, "+", "3, n", "ull]}", "\n`", "``", "\n"])
    with pytest.raises(StreamViolation) as info:
        run(None, ['["', "\\", "q"])
    assert info.value.read == 4
    with pytest.raises(StreamViolation) as info:
        run(None, ["[fa", "l", "z"])
    assert info.value.read == 5
    with pytest.raises(StreamViolation) as info:
        run(None, ["`", "`", "`json", " ", "{"])
    assert info.value.read == 9


def test_surrogate_pairs_count_as_one_character_for_max_length():
    schema = {"type": "string", "maxLength": 2}
    run(schema, list('"\\ud83d\\ude00\\u00e9"'))
    run(schema, ['"😀é"'])
    with pytest.raises(StreamViolation):
        run(schema, list('"\\ud83d\\ude00\\u00e9x'))


def test_integer_and_number_by_dialect():
    run({"type": "integer"}, ["1.0"])  # 1.0 is an integer from draft 6 on
    run({"type": "integer"}, ["1e3"])
    with pytest.raises(StreamViolation):
        run({"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer"}, ["1.0"])
    run({"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer"}, ["10"])


def test_a_root_number_completes_at_finish():
    run({"type": "integer", "maximum": 5}, ["4"])
    with pytest.raises(StreamViolation, match="maximum"):
        run({"type": "integer", "maximum": 5}, ["1", "2"])


@pytest.mark.parametrize(
    "text", ["", "   ", '{"a": 1', "[1, 2", '"abc', "tr", "-", "1.", "```json\n[1]", "```json\n[1]\n``", "```js"]
)
def test_finish_rejects_empty_and_incomplete_documents(text):
    checker = JsonStreamChecker()
    checker.feed(text)
    with pytest.raises(StreamViolation) as info:
        checker.finish()
    assert info.value.rule == "json" and info.value.read == len(text)
    assert not Validator({"format": "json"}).check(text).passed


def test_unchecked_subtrees():
    # a nested $id and a remote $ref are not followed; anyOf/not/... are left to the final check
    schema = {
        "type": "object",
        "properties": {
            "a": {"$id": "https://example.com/a", "$defs": {"x": {"type": "string"}}, "$ref": "#/$defs/x"},
            "b": {"$ref": "https://example.com/b.json"},
        },
    }
    run(schema, ['{"a": 1, "b": 2}'])
    run({"$schema": "http://json-schema.org/draft-03/schema#", "type": "object"}, ["[1]"])
    # a pattern Python cannot compile: whether a key matches is unknown, so additionalProperties is not applied
    run({"type": "object", "patternProperties": {"^\\p{L}": {}}, "additionalProperties": False}, ['{"a": 1}'])


def test_json_path_formatting():
    assert json_path([]) == "$"
    assert json_path(["items", 2, "name"]) == "$.items[2].name"
    assert json_path(["a b", "é", "_x1"]) == '$["a b"]["é"]._x1'


# -- no false positives: random documents cross-checked with the full validator (jsonschema) --

KEYS = ["name", "age", "bio", "id", "items", "status", "point", "paid", "note", "x-tag", "other",
        "sku", "qty", "price", "value", "children", "a", "b", "c", "d", "e", "pair", "n", "a b", "é"]


def random_value(rng: random.Random, depth: int = 0):
    kinds = ["str", "int", "float", "bool", "null"] + (["dict", "list"] * 2 if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "dict":
        return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {
        "str": lambda: rng.choice(["", "x", "fragile", "open", "paid", "abc", "123456789", "é\n\"\\😀", "\x01"]),
        "int": lambda: rng.choice([0, 1, -1, 3, 5, 10, 11, 99, 100, 2**70]),
        "float": lambda: rng.choice([0.0, 0.5, 1.0, -2.5, 3.0, 1e300, 1e-7]),
        "bool": lambda: rng.random() < 0.5,
        "null": lambda: None,
    }[kind]()


def sample(rng: random.Random, root, schema, depth: int = 0):
    """A value that mostly follows ``schema``, sometimes deliberately not."""
    if isinstance(schema, dict) and "$ref" in schema and schema["$ref"].startswith("#/"):
        target = root
        for token in schema["$ref"][2:].split("/"):
            target = target[token]
        schema = target
    if not isinstance(schema, dict) or rng.random() < 0.06 or depth > 4:
        return random_value(rng, depth)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    types = schema.get("type")
    kind = rng.choice(types) if isinstance(types, list) else types
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties", {})
        keys = list(schema.get("required", [])) + [k for k in props if rng.random() < 0.5]
        if rng.random() < 0.2:
            keys.append(rng.choice(KEYS))
        return {k: sample(rng, root, props.get(k, schema.get("additionalProperties", {})), depth + 1) for k in keys}
    if kind == "array":
        prefix = schema.get("prefixItems") or (schema["items"] if isinstance(schema.get("items"), list) else [])
        rest = schema.get("items") if not isinstance(schema.get("items"), list) else schema.get("additionalItems", {})
        n = rng.randint(schema.get("minItems", 0), schema.get("maxItems", len(prefix) + 3))
        return [sample(rng, root, prefix[i] if i < len(prefix) else rest, depth + 1) for i in range(n)]
    if kind == "string":
        return "x" * rng.randint(0, schema.get("maxLength", 10))
    if kind == "integer":
        return rng.randint(schema.get("minimum", -5), schema.get("maximum", 50))
    if kind == "number":
        return rng.uniform(schema.get("exclusiveMinimum", -5), 10) or 0.1
    return random_value(rng, depth)


def render(rng: random.Random, value) -> str:
    text = json.dumps(value, indent=rng.choice([None, 1, 2]), ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.25:
        text = f"```{rng.choice(['json', '', 'JSON'])}\n{text}\n```"
    return rng.choice(["", " ", "\n"]) + text + rng.choice(["", "\n", "  "])


def mutate(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text) + 1)
    return {
        "delete": lambda: text[:i] + text[i + 1 :],
        "insert": lambda: text[:i] + rng.choice('{}[]",:0e-. atx\\`\n') + text[i:],
        "prose": lambda: rng.choice(["Sure: ", "Here it is\n"]) + text,
        "suffix": lambda: text + rng.choice([" Done.", "\n```", "}", ","]),
    }[rng.choice(["delete", "insert", "prose", "suffix"])]()


def stream_verdict(schema, text: str, rng: random.Random) -> StreamViolation | None:
    checker = JsonStreamChecker(schema)
    try:
        i = 0
        while i < len(text):
            n = rng.randint(1, 6)
            checker.feed(text[i : i + n])
            i += n
        checker.finish()
    except StreamViolation as violation:
        return violation
    return None


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_stream_never_rejects_what_the_full_check_accepts(name):
    schema = SCHEMAS[name]
    validator = Validator({"schema": schema} if schema is not None else {"format": "json"})
    rng = random.Random(f"json-stream-{name}")
    outcomes = {"valid": 0, "caught": 0, "missed": 0}
    for _ in range(600):
        text = render(rng, sample(rng, schema, schema) if schema else random_value(rng))
        if rng.random() < 0.3:
            text = mutate(rng, text)
        violation = stream_verdict(schema, text, rng)
        result = validator.check(text)
        if violation is not None:
            assert not result.passed, f"false positive on {text!r}: {violation}"
            # what was read when it stopped is itself certain: the same verdict on the prefix alone
            prefix = text[: violation.read]
            assert not validator.check(prefix).passed
        outcomes["valid" if result.passed else "caught" if violation else "missed"] += 1
    assert outcomes["valid"] > 50 and outcomes["caught"] > 50, outcomes  # the test is not vacuous
    if name != "loose":  # inside the checked subset, stream + finish catch every invalid document
        assert outcomes["missed"] == 0, outcomes


# -- linear time: measured as growth (time at 2x the input over time at 1x), ~2 when linear and ~4
# when quadratic, whatever the machine's speed or load --


def _growth(work, small, large, runs: int = 3) -> float:
    """Best of ``runs`` timings of ``work(large)`` over best of ``work(small)``, interleaved so load
    changes affect both sizes alike."""
    best = {"small": float("inf"), "large": float("inf")}
    for _ in range(runs):
        for size, data in (("small", small), ("large", large)):
            start = time.perf_counter()
            work(data)
            best[size] = min(best[size], time.perf_counter() - start)
    return best["large"] / best["small"]


def _order_document(items: int) -> str:
    return json.dumps(
        {
            "items": [
                {"sku": f"s{i}", "qty": i % 99 + 1, "price": i + 0.25, "x-note": "é\\\"\n" * 3, "tags": [True, None]}
                for i in range(items)
            ],
            "id": 1,
        }
    )


def test_feeding_200kb_char_by_char_is_linear():
    small, large = _order_document(900), _order_document(1800)
    assert len(large) > 200_000
    schema = {"type": "object", "properties": {"items": {"items": ORDER["$defs"]["item"]}}}
    growth = _growth(lambda doc: run(schema, doc), small, large)  # a str is fed one character at a time
    assert growth < 3, f"2x the input took {growth:.1f}x the time"


def test_long_strings_and_deep_nesting_are_linear():
    schema = {"type": "object", "properties": {"bio": {"type": "string", "maxLength": 300_000}}}
    strings = ['{"bio": "' + "a\\n" * n + '"}' for n in (25_000, 50_000)]
    growth = _growth(lambda text: run(schema, text), *strings)
    assert growth < 3, f"a string 2x as long took {growth:.1f}x the time"
    deep = ["[" * n + "]" * n for n in (12_500, 25_000)]
    chunked = ([text[i : i + 3] for i in range(0, len(text), 3)] for text in deep)
    growth = _growth(lambda chunks: run(None, chunks), *chunked)
    assert growth < 3, f"nesting 2x as deep took {growth:.1f}x the time"
