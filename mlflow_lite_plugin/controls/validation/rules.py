"""Response validation rules: the ``validate=`` argument of ``query`` and ``stream``.

``validate`` is a dict of rules, a callable (a custom rule), or a list mixing both; later dicts in
a list override earlier ones for the same rule, custom callables all apply, and a rule set to
``None`` is off (so a call can switch off one of a template's default rules). A dict may also hold
``on_fail`` and ``max_attempts``. Every problem with the rules raises :class:`ArgumentError` when
the :class:`Validator` is built, before any model call.

Rules (every answer is first stripped of surrounding whitespace):

- ``max_length`` / ``min_length``: the answer's length, in the unit of ``length_unit``:
  ``"characters"`` (the default), ``"words"`` (whitespace-separated) or ``"tokens"`` (counted with
  the answering model's tokenizer, through the ``count_tokens`` callable the pipeline passes).
- ``required_words``: every word or phrase must appear; ``forbidden_words``: none may. Matching
  is case-insensitive and on whole words: ``"step"`` does not match ``"steps"`` (list both forms
  to accept either), and the spaces inside a phrase match any run of whitespace.
- ``format``: ``"json"``, ``"yaml"`` (a mapping or a list, not a lone scalar) and ``"xml"`` must
  parse; an answer that is exactly one ``` fence (any tag, e.g. ```json) is accepted and its
  content parsed, but text around a fence is not. JSON must be strict: no ``NaN``/``Infinity``,
  no duplicate keys. ``"markdown"`` means the answer uses markdown structure (at least one
  heading, list item, code fence, table, emphasis, blockquote or link) and its ``` fences are
  balanced. A parsed JSON/YAML document is ``result.value``.
- ``schema``: a JSON Schema (dict) the parsed answer must satisfy; it implies JSON unless
  ``format`` is ``"yaml"``. The validator class is chosen by ``$schema`` (Draft 2020-12 by
  default), ``format`` keywords are not checked, and at most 10 errors are listed, each with its
  path (``schema: $.age: 'old' is not of type 'integer'``).
- ``regex``: a pattern (str or compiled) or a list of them; each must be found by ``re.search``
  anywhere in the answer (anchor with ``^...$`` to match the whole answer). Patterns run on the
  ``regex`` package with a time bound (:data:`REGEX_TIMEOUT` per pattern): a pattern that
  backtracks catastrophically (``(a|a)+$``) fails the rule instead of hanging the call.
- ``choices``: the answer must equal one of these, case-insensitive, ignoring a trailing period.
- custom callables (``validate=fn``, in a list, or ``"custom": fn | [fn, ...]``) are called as
  ``fn(text)``: ``True``/``None`` pass; ``False`` fails; a string fails with that message; a tuple
  ``(passed, message)`` says both. An exception fails the rule rather than the call.

``check`` runs every rule and reports every error, each prefixed with its rule (a custom rule is
named after its function). ``incremental`` checks a streaming answer and raises
:class:`StreamViolation` only for what is already certain: ``max_length`` in characters or words
(tokens are counted only at the end), a complete forbidden word, and JSON syntax or schema
violations (see :mod:`mlflow_lite_plugin.controls.validation.json_stream`); the rest is ``check``-ed at the end.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow_lite_plugin.controls.validation.json_stream import JsonStreamChecker, json_path
from mlflow_lite_plugin.core.errors import ArgumentError, did_you_mean
from mlflow_lite_plugin.core.jsonsafe import json_safe
from mlflow_lite_plugin.core.results import StreamViolation, ValidationResult  # re-exported: defined with the response

RULES = (
    "max_length", "min_length", "length_unit", "required_words", "forbidden_words",
    "format", "schema", "regex", "choices", "custom",
)
OPTIONS = ("on_fail", "max_attempts")
FORMATS = ("json", "yaml", "markdown", "xml")
LENGTH_UNITS = ("characters", "words", "tokens")
ON_FAIL = ("raise", "retry", "return")
MAX_SCHEMA_ERRORS = 10
# Seconds one regex rule may search one answer. Rules come from callers and the playground UI, and
# a backtracking pattern can take minutes on a short answer; a linear one takes milliseconds.
REGEX_TIMEOUT = 0.5

_FENCED = re.compile(r"```[\w+.-]*[ \t]*\r?\n(.*)```", re.S)  # applied to the stripped answer
_WHITESPACE = re.compile(r"\s+")
_MARKDOWN = re.compile(
    r"""
      ^[ ]{0,3}\#{1,6}[ \t]+\S                         # heading
    | ^[ ]{0,3}(?:[-*+]|\d{1,9}[.)])[ \t]+\S           # list item
    | ^[ ]{0,3}```                                     # code fence
    | ^[ ]{0,3}\|?[ \t]*:?-{3,}:?[ \t]*\|              # table separator row
    | ^[ ]{0,3}>                                       # blockquote
    | \*\*\S(?:[^\n]*?\S)?\*\* | __\S(?:[^\n]*?\S)?__  # strong emphasis
    | (?<![*\w])\*[^*\s](?:[^*\n]*?[^*\s])?\*(?![*\w]) # emphasis
    | (?<![_\w])_[^_\s](?:[^_\n]*?[^_\s])?_(?![_\w])
    | \[[^\]\n]+\]\([^)\s]+\)                          # link
    """,
    re.M | re.X,
)
_FENCE_LINE = re.compile(r"^[ ]{0,3}```", re.M)


@dataclass
class _Answer:
    """One answer being checked; its length and parsed document are computed once."""

    raw: str
    count_tokens: Callable[[str], int] | None
    text: str = field(init=False)
    length: int | None = None
    parsed: bool = False
    value: Any = None
    parse_error: str | None = None

    def __post_init__(self) -> None:
        self.text = self.raw.strip()


class Validator:
    """Compiled ``validate=`` rules; see the module docstring for the rules."""

    def __init__(self, spec: Any, *, on_fail: str | None = None, max_attempts: int | None = None):
        named, order = _flatten(spec)
        self.on_fail: str = _on_fail(named.pop("on_fail", None), on_fail)
        self.max_attempts: int = _max_attempts(named.pop("max_attempts", None), max_attempts)
        order = [o for o in order if callable(o) or named.get(o) is not None]
        self._unit: str = _length_unit(named.get("length_unit"))
        self._max_length = _length("max_length", named.get("max_length"), self._unit)
        self._min_length = _length("min_length", named.get("min_length"), self._unit)
        if self._max_length is not None and self._min_length is not None and self._min_length > self._max_length:
            raise _bad(f"min_length ({self._min_length}) is more than max_length ({self._max_length})")
        self._required = _phrases("required_words", named.get("required_words"))
        self._forbidden = _phrases("forbidden_words", named.get("forbidden_words"))
        self._format: str | None = _format(named.get("format"))
        self._schema: Mapping[str, Any] | None = named.get("schema")
        self._schema_validator = _schema_validator(self._schema, self._format)
        self._regexes = _regexes(named.get("regex"))  # (source, compiled) pairs
        self._choices = _choices(named.get("choices"))
        self._document_kind = self._format if self._format in ("json", "yaml", "xml") else None
        if self._schema is not None and self._document_kind is None:
            self._document_kind = "json"
        self._checks = [(_rule_name(o), self._check_for(o)) for o in order if o != "length_unit"]
        if not self._checks:
            raise _bad(f"no rules given; known rules: {', '.join(RULES)}")
        self._order = order
        self.rules: tuple[str, ...] = tuple(name for name, _ in self._checks)

    @property
    def expects_json(self) -> bool:
        return self._document_kind == "json"

    def check(self, text: str, count_tokens: Callable[[str], int] | None = None) -> ValidationResult:
        answer = _Answer(text, count_tokens)
        errors: list[str] = []
        failed: list[str] = []
        for name, rule in self._checks:
            for message in rule(answer):
                errors.append(f"{name}: {message}")
                failed.append(name)
        return ValidationResult(not errors, errors, failed, answer.value)

    def incremental(self, count_tokens: Callable[[str], int] | None = None) -> IncrementalValidator:
        """A checker for a streaming answer. ``count_tokens`` is accepted for symmetry with
        :meth:`check`; token lengths are only checked at the end."""
        streamed_unit = self._unit in ("characters", "words")
        return IncrementalValidator(
            max_length=self._max_length if streamed_unit else None,
            in_words=self._unit == "words",
            forbidden=self._forbidden,
            json_schema=self._schema if self.expects_json else None,
            expects_json=self.expects_json,
        )

    def describe(self) -> dict[str, Any]:
        """The rules as JSON-safe data (callables by name), for traces and saved configuration."""
        described: dict[str, Any] = {}
        for entry in self._order:
            if callable(entry):
                described.setdefault("custom", []).append(_qualified_name(entry))
            elif entry != "length_unit":
                described[entry] = self._describe_rule(entry)
            if entry in ("max_length", "min_length"):
                described["length_unit"] = self._unit
        described["on_fail"] = self.on_fail
        described["max_attempts"] = self.max_attempts
        return described

    def repair_prompt(self, result: ValidationResult) -> str:
        """The message that re-asks the model after ``result`` failed."""
        lines = ["Your previous answer did not pass validation:"]
        lines += [f"- {error}" for error in result.errors]
        lines += ["", self._reply_instruction()]
        return "\n".join(lines)

    # -- construction --

    def _check_for(self, entry: str | Callable[[str], Any]) -> Callable[[_Answer], list[str]]:
        if callable(entry):
            return functools.partial(_check_custom, entry)
        return {
            "max_length": self._check_max_length,
            "min_length": self._check_min_length,
            "required_words": self._check_required,
            "forbidden_words": self._check_forbidden,
            "format": self._check_format,
            "schema": self._check_schema,
            "regex": self._check_regex,
            "choices": self._check_choices,
        }[entry]

    def _describe_rule(self, name: str) -> Any:
        values: dict[str, Any] = {
            "max_length": self._max_length,
            "min_length": self._min_length,
            "required_words": list(self._required),
            "forbidden_words": list(self._forbidden),
            "format": self._format,
            "schema": json_safe(self._schema),
            "regex": [source for source, _ in self._regexes],
            "choices": list(self._choices),
        }
        return values[name]

    def _reply_instruction(self) -> str:
        kind = {"json": "JSON", "yaml": "YAML", "xml": "XML"}.get(self._document_kind or "")
        if kind is not None:
            instruction = (
                f"Reply with the corrected, complete answer: the {kind} document only, "
                "with no text or commentary before or after it."
            )
            if self._schema is not None:
                instruction += "\nIt must conform to this JSON Schema:\n" + json.dumps(json_safe(self._schema))
            return instruction
        if self._choices:
            return "Reply with exactly one of: " + ", ".join(self._choices) + " - and nothing else."
        return "Reply with the corrected, complete answer only, with no commentary about what changed."

    # -- the rules --

    def _length_of(self, answer: _Answer) -> int:
        if answer.length is None:
            if self._unit == "characters":
                answer.length = len(answer.text)
            elif self._unit == "words":
                answer.length = len(answer.text.split())
            elif answer.count_tokens is None:
                message = "length_unit='tokens' needs a count_tokens callable to check lengths"
                raise ArgumentError("count_tokens", message)
            else:
                answer.length = answer.count_tokens(answer.text)
        return answer.length

    def _check_max_length(self, answer: _Answer) -> list[str]:
        assert self._max_length is not None
        length = self._length_of(answer)
        if length <= self._max_length:
            return []
        return [f"{_amount(length, self._unit)}, more than {self._max_length}"]

    def _check_min_length(self, answer: _Answer) -> list[str]:
        assert self._min_length is not None
        length = self._length_of(answer)
        if length >= self._min_length:
            return []
        return [f"{_amount(length, self._unit)}, fewer than {self._min_length}"]

    def _check_required(self, answer: _Answer) -> list[str]:
        missing = [p for p in self._required if not _phrase_pattern(p).search(answer.text)]
        return ["missing " + ", ".join(map(repr, missing))] if missing else []

    def _check_forbidden(self, answer: _Answer) -> list[str]:
        present = [p for p in self._forbidden if _phrase_pattern(p).search(answer.text)]
        return ["contains " + ", ".join(map(repr, present))] if present else []

    def _check_format(self, answer: _Answer) -> list[str]:
        if self._format == "markdown":
            return _markdown_errors(answer.text)
        self._parse(answer)
        return [answer.parse_error] if answer.parse_error else []

    def _check_schema(self, answer: _Answer) -> list[str]:
        self._parse(answer)
        if answer.parse_error is not None:
            # with a format rule the parse error is already reported once, under "format"
            return [] if self._format is not None else [answer.parse_error]
        try:
            found = list(itertools.islice(self._schema_validator.iter_errors(answer.value), MAX_SCHEMA_ERRORS + 1))
        except Exception as exc:  # e.g. an unresolvable remote $ref: report it, do not crash the call
            return [f"could not be checked: {type(exc).__name__}: {exc}"]
        errors = [f"{json_path(e.absolute_path)}: {e.message}" for e in found[:MAX_SCHEMA_ERRORS]]
        if len(found) > MAX_SCHEMA_ERRORS:
            errors.append(f"more errors not listed (only the first {MAX_SCHEMA_ERRORS} are)")
        return errors

    def _check_regex(self, answer: _Answer) -> list[str]:
        errors = []
        for source, pattern in self._regexes:
            try:
                found = pattern.search(answer.text, timeout=REGEX_TIMEOUT)
            except TimeoutError:
                errors.append(f"{source!r} gave up after {REGEX_TIMEOUT:g} s (the pattern backtracks too much)")
                continue
            if not found:
                errors.append(f"no match for {source!r}")
        return errors

    def _check_choices(self, answer: _Answer) -> list[str]:
        if _choice_key(answer.text) in {_choice_key(c) for c in self._choices}:
            return []
        return [f"{_short(answer.text)} is not one of " + ", ".join(map(repr, self._choices))]

    def _parse(self, answer: _Answer) -> None:
        if answer.parsed:
            return
        answer.parsed = True
        kind = self._document_kind
        assert kind is not None
        fenced = _FENCED.fullmatch(answer.text)
        source = fenced.group(1).strip() if fenced else answer.text
        try:
            answer.value = {"json": _parse_json, "yaml": _parse_yaml, "xml": _parse_xml}[kind](source)
        except _Invalid as exc:
            answer.parse_error = str(exc)


class IncrementalValidator:
    """Checks an answer while it streams; ``feed`` raises :class:`StreamViolation` once a
    violation is certain. Built by :meth:`Validator.incremental`."""

    def __init__(
        self,
        *,
        max_length: int | None,
        in_words: bool,
        forbidden: tuple[str, ...],
        json_schema: Mapping[str, Any] | None,
        expects_json: bool,
    ):
        self.read = 0
        self._max_length = max_length
        self._in_words = in_words
        self._count = 0  # words so far, or characters since the first non-whitespace one
        self._counted = 0  # characters up to the last non-whitespace one (what strip() keeps)
        self._started = False
        self._in_word = False
        self._forbidden = [(p, _phrase_pattern(p, complete=True)) for p in forbidden]
        # the tail kept between chunks: the longest phrase plus one character of look-behind
        self._window = max((len(p) for p in forbidden), default=0) + 1
        self._tail = ""
        self._tail_trimmed = False
        self._json = None
        if expects_json:
            self._json = JsonStreamChecker(dict(json_schema) if json_schema is not None else None)

    def feed(self, chunk: str) -> None:
        if not chunk:
            return
        self.read += len(chunk)
        if self._max_length is not None:
            self._feed_length(chunk)
        if self._forbidden:
            self._feed_forbidden(chunk)
        if self._json is not None:
            self._json.feed(chunk)

    def _feed_length(self, chunk: str) -> None:
        assert self._max_length is not None
        if self._in_words:
            words = len(chunk.split())
            if words and self._in_word and not chunk[0].isspace():
                words -= 1  # the chunk continues the previous chunk's last word
            self._in_word = not chunk[-1].isspace()
            self._count += words
            length = self._count
        else:
            if not self._started:
                chunk = chunk.lstrip()
                if not chunk:
                    return
                self._started = True
            body = chunk.rstrip()
            if body:
                self._counted = self._count + len(body)
            self._count += len(chunk)
            length = self._counted
        if length > self._max_length:
            unit = "words" if self._in_words else "characters"
            message = f"{_amount(length, unit)}, more than {self._max_length}"
            raise StreamViolation("max_length", message, self.read)

    def _feed_forbidden(self, chunk: str) -> None:
        # whitespace runs collapse to one space, so a phrase's length in the tail is bounded
        text = _WHITESPACE.sub(" ", chunk)
        if text.startswith(" ") and self._tail.endswith(" "):
            text = text[1:]
        buffer = self._tail + text
        start = 1 if self._tail_trimmed else 0  # the first kept character is look-behind context only
        for phrase, pattern in self._forbidden:
            if pattern.search(buffer, start):
                raise StreamViolation("forbidden_words", f"contains {phrase!r}", self.read)
        if len(buffer) > self._window:
            buffer, self._tail_trimmed = buffer[-self._window:], True
        self._tail = buffer


# -- parsing the rules --


def _bad(message: str) -> ArgumentError:
    return ArgumentError("validate", message)


def _type(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _flatten(spec: Any) -> tuple[dict[str, Any], list[Any]]:
    """The named rules of ``spec`` and the order of rules and custom callables in it."""
    parts = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    named: dict[str, Any] = {}
    order: list[Any] = []
    for part in parts:
        if isinstance(part, Mapping):
            for key, value in part.items():
                _add_rule(named, order, key, value)
        elif callable(part):
            order.append(part)
        else:
            raise _bad(f"rules must be a dict, a callable or a list of them, got {_type(part)}")
    return named, order


def _add_rule(named: dict[str, Any], order: list[Any], key: Any, value: Any) -> None:
    if not isinstance(key, str):
        raise _bad(f"rule names must be strings, got {_type(key)}")
    if key not in RULES and key not in OPTIONS:
        hint = did_you_mean(key, RULES + OPTIONS)
        raise _bad(f"unknown rule {key!r}.{hint} Known rules: {', '.join(RULES + OPTIONS)}")
    if key == "custom":
        order.extend(_callables(value))
        return
    if key not in named and key not in OPTIONS:
        order.append(key)
    named[key] = value


def _callables(value: Any) -> list[Callable[[str], Any]]:
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not callable(item):
            raise _bad(f"custom must be a callable or a list of callables, got {_type(item)}")
    return items


def _option(name: str, in_rules: Any, given: Any) -> tuple[Any, str]:
    """The value of an option set in the rules and/or as an argument, and where it came from."""
    if in_rules is not None and given is not None and in_rules != given:
        raise _bad(f"{name} is {in_rules!r} in the rules but {given!r} as an argument; give it once")
    return (in_rules, "validate") if in_rules is not None else (given, name)


def _on_fail(in_rules: Any, given: Any) -> str:
    value, source = _option("on_fail", in_rules, given)
    if value is None:
        return "raise"
    if value not in ON_FAIL:
        raise ArgumentError(source, f"on_fail must be one of {', '.join(map(repr, ON_FAIL))}, got {value!r}")
    return value


def _max_attempts(in_rules: Any, given: Any) -> int:
    value, source = _option("max_attempts", in_rules, given)
    if value is None:
        return 3
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ArgumentError(source, f"max_attempts must be a whole number >= 1 (answers in all), got {_type(value)}")
    return value


def _length_unit(value: Any) -> str:
    if value is None:
        return "characters"
    if value not in LENGTH_UNITS:
        raise _bad(f"length_unit must be one of {', '.join(map(repr, LENGTH_UNITS))}, got {_type(value)}")
    return value


def _length(name: str, value: Any, unit: str) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise _bad(f"{name} must be a whole number >= 0 (of {unit}), got {_type(value)}")
    return value


def _phrases(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    words = [value] if isinstance(value, str) else value
    if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) and w.strip() for w in words):
        raise _bad(f"{name} must be a list of non-empty strings (or one string), got {_type(value)}")
    return tuple(" ".join(w.split()) for w in words)


def _format(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in FORMATS:
        raise _bad(f"format {value!r} is not supported; supported formats: {', '.join(FORMATS)}")
    return value.lower()


def _schema_validator(schema: Any, fmt: str | None) -> Any:
    if schema is None:
        return None
    if not isinstance(schema, Mapping):
        raise _bad(f"schema must be a JSON Schema (a dict), got {_type(schema)}")
    if fmt in ("markdown", "xml"):
        raise _bad(f"schema needs a JSON (or YAML) answer, but format is {fmt!r}")
    from jsonschema import exceptions, validators

    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        raise _bad(f"schema is not a valid JSON Schema: at {json_path(exc.absolute_path)}: {exc.message}") from None
    return cls(schema)


def _regexes(value: Any) -> tuple[tuple[str, Any], ...]:
    if value is None:
        return ()
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise _bad("regex must be a pattern or a non-empty list of patterns")
    return tuple(_regex(item) for item in items)


# re's flags as the regex package spells them (re.ASCII is 256 there, 128 here).
_REGEX_FLAGS = (("IGNORECASE", re.I), ("MULTILINE", re.M), ("DOTALL", re.S), ("VERBOSE", re.X), ("ASCII", re.A))


def _regex(item: Any) -> tuple[str, Any]:
    """``(source, pattern)``: the pattern compiled by the ``regex`` package, whose searches take
    a timeout (``re``'s cannot be interrupted)."""
    import regex  # only rules with patterns pay for its import

    if isinstance(item, re.Pattern) and isinstance(item.pattern, str):
        source, text = _pattern_source(item), item.pattern
        flags = sum(int(getattr(regex, name)) for name, flag in _REGEX_FLAGS if item.flags & flag)
    elif isinstance(item, str):
        source, text, flags = item, item, 0
    else:
        raise _bad(f"regex must be a string or a compiled pattern (or a list of them), got {_type(item)}")
    try:
        return source, regex.compile(text, flags)
    except (regex.error, ValueError) as exc:
        raise _bad(f"regex {item if isinstance(item, str) else source!r} does not compile: {exc}") from None


def _choices(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(c, str) and c.strip() for c in value):
        raise _bad(f"choices must be a non-empty list of non-empty strings, got {_type(value)}")
    return tuple(value)


# -- checking --


class _Invalid(ValueError):
    """The answer does not parse as the expected format."""


def _parse_json(source: str) -> Any:
    try:
        return json.loads(source, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except _Invalid:
        raise
    except json.JSONDecodeError as exc:
        hint = ""
        if exc.msg == "Extra data" or exc.pos == 0:
            hint = "; the answer must be the JSON document alone (one ``` fence around it is fine)"
        raise _Invalid(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}{hint}") from None
    except (ValueError, RecursionError) as exc:  # Python's int digit limit, extreme nesting
        raise _Invalid(f"not valid JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise _Invalid(f"not valid JSON: {name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:  # json.loads would silently keep the last one
            raise _Invalid(f"not valid JSON: duplicate key {key!r}")
        document[key] = value
    return document


def _parse_yaml(source: str) -> Any:
    import yaml

    try:
        value = yaml.safe_load(source)
    except (yaml.YAMLError, RecursionError) as exc:
        raise _Invalid("not valid YAML: " + " ".join(str(exc).split())) from None
    if not isinstance(value, (dict, list)):
        raise _Invalid(f"not a YAML document: expected a mapping or a list, got {type(value).__name__}")
    return value


def _parse_xml(source: str) -> None:
    from xml.etree import ElementTree

    try:
        ElementTree.fromstring(source)
    except (ElementTree.ParseError, ValueError) as exc:
        raise _Invalid(f"not valid XML: {exc}") from None


def _markdown_errors(text: str) -> list[str]:
    errors = []
    if not _MARKDOWN.search(text):
        errors.append("no markdown structure (a heading, list, code block, table, emphasis, blockquote or link)")
    fences = len(_FENCE_LINE.findall(text))
    if fences % 2:
        errors.append(f"unbalanced ``` code fences ({fences} fence lines)")
    return errors


@functools.lru_cache(maxsize=256)
def _phrase_pattern(phrase: str, complete: bool = False) -> re.Pattern[str]:
    """Whole word or phrase, case-insensitive; ``complete`` also needs the character after it
    (while streaming, a word at the very end may still grow: "secret" -> "secrets")."""
    body = r"\s+".join(re.escape(word) for word in phrase.split())
    return re.compile(rf"(?<!\w){body}" + (r"(?=\W)" if complete else r"(?!\w)"), re.IGNORECASE)


def _check_custom(fn: Callable[[str], Any], answer: _Answer) -> list[str]:
    try:
        result = fn(answer.raw)
    except Exception as exc:  # a broken rule fails the answer, not the call
        return [f"raised {type(exc).__name__}: {exc}"]
    if type(result).__name__ == "bool_":  # numpy's bool, from rules like `np.all(...)`
        result = bool(result)
    if result is None or result is True:
        return []
    if result is False:
        return ["returned False"]
    if isinstance(result, str):
        return [result or "failed"]
    if isinstance(result, tuple) and len(result) == 2:
        passed, message = result
        return [] if passed else [str(message) if message else "failed"]
    return [f"returned {_type(result)}; a rule returns True/None, False, a message or (passed, message)"]


def _rule_name(entry: str | Callable[[str], Any]) -> str:
    if isinstance(entry, str):
        return entry
    return getattr(entry, "__name__", None) or type(entry).__name__


def _qualified_name(fn: Callable[[str], Any]) -> str:
    return getattr(fn, "__qualname__", None) or _rule_name(fn)


def _amount(count: int, unit: str) -> str:
    return f"{count} {unit[:-1] if count == 1 else unit}"


def _choice_key(text: str) -> str:
    return text.strip().removesuffix(".").strip().casefold()


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _pattern_source(pattern: re.Pattern[str]) -> str:
    """The pattern's text, with its flags inline so it can be compiled again."""
    inline = ((re.I, "i"), (re.M, "m"), (re.S, "s"), (re.X, "x"))
    flags = "".join(letter for flag, letter in inline if pattern.flags & flag)
    if not flags or pattern.pattern.startswith("(?"):
        return pattern.pattern
    return f"(?{flags}){pattern.pattern}"
