"""Incremental JSON checking for streamed answers.

:class:`JsonStreamChecker` is fed an answer chunk by chunk and raises
:class:`~mlflow_lite_plugin.controls.validation.rules.StreamViolation` as soon as the answer can no longer be
valid: broken syntax, text before or after the document, or (given a JSON Schema) a value the
schema forbids. It is a single-pass state machine with a stack of open containers, so checking is
O(total length) however the answer is chunked; a chunk may split anything (a string, an escape, a
number, a literal, the fence).

The document is what :class:`~mlflow_lite_plugin.controls.validation.rules.Validator` accepts at the end: the
answer, stripped of surrounding whitespace, is one JSON value, or one ``` fence (any tag, e.g.
```json) holding one JSON value. As there, ``NaN``/``Infinity`` and duplicate keys are errors.

Violations carry ``rule="json"`` (syntax) or ``rule="schema"``, ``read`` (characters fed so far,
the violating chunk included) and ``path`` (e.g. ``$.items[2].name``).

Schema checks are a conservative subset, each reported only once it is certain: ``type`` (from a
value's first character; integer vs number when the number ends), ``properties`` /
``patternProperties`` / ``additionalProperties`` (when a key is complete), ``required`` (when the
object closes), ``prefixItems`` / ``items`` (and the older array form with ``additionalItems``),
``maxItems`` (as soon as exceeded), ``minItems`` (on close), ``enum`` / ``const`` (when a scalar
ends; a container only if no allowed value has its type), ``maxLength`` (as soon as exceeded),
``minimum`` / ``maximum`` / numeric ``exclusiveMinimum`` / ``exclusiveMaximum`` (when a number ends),
and local ``$ref`` (``#``, ``#/$defs/x``, ``#/definitions/x``). JSON Schema keywords constrain
independently, so every other keyword (``anyOf``, ``not``, ``pattern``, ...) is simply not checked
here: that can only miss a violation, never invent one, and the final full check catches the rest.
A subtree under a nested ``$id`` or a non-local ``$ref``, and draft-3 schemas, are not checked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from mlflow_lite_plugin.core.results import StreamViolation

_JSON_WS_RUN = re.compile(r"[ \t\n\r]*")
_ANY_WS_RUN = re.compile(r"\s*")  # around the document, where the validator strips (str.strip)
_STRING_RUN = re.compile(r'[^"\\\x00-\x1f]*')
_DIGIT_RUN = re.compile(r"[0-9]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HEX = frozenset("0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = frozenset('"\\/bfnrt')
_KIND_OF_FIRST = {"{": "object", "[": "array", '"': "string", "t": "boolean", "f": "boolean", "n": "null"}
_KIND_OF_FIRST.update(dict.fromkeys("-0123456789", "number"))
_LITERALS: dict[str, tuple[str, bool | None]] = {"t": ("true", True), "f": ("false", False), "n": ("null", None)}


def _run_end(run: re.Pattern[str], chunk: str, i: int) -> int:
    """Where ``run`` (one of the starred runs above, which match the empty string too) stops from ``i``."""
    found = run.match(chunk, i)
    assert found is not None  # a starred pattern always matches
    return found.end()
_A = {"object": "an object", "array": "an array", "string": "a string", "number": "a number",
      "integer": "an integer", "boolean": "a boolean", "null": "null"}

# parser states
(_START, _FENCE, _VALUE, _OBJ_FIRST, _OBJ_KEY, _COLON, _ARR_FIRST, _AFTER, _STRING, _NUMBER,
 _LITERAL, _TRAILER, _CLOSE_FENCE, _DONE) = range(14)
# number states: after "-", "0", 1-9 digits, ".", fraction digits, "e", exponent sign, exponent digits
_N_SIGN, _N_ZERO, _N_INT, _N_DOT, _N_FRAC, _N_E, _N_ESIGN, _N_EXP = range(8)
_N_COMPLETE = frozenset({_N_ZERO, _N_INT, _N_FRAC, _N_EXP})
_ABSENT = object()


def json_path(parts: Iterable[str | int]) -> str:
    """``$.items[2].name``; keys that are not identifiers are quoted: ``$["a key"]``."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _IDENTIFIER.match(part):
            path += "." + part
        else:
            path += "[" + json.dumps(part, ensure_ascii=False) + "]"
    return path


def _kind(value: Any) -> str | None:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    # jsonschema compares any non-string sequence with a JSON array, so a schema's tuple is an array
    return "array" if isinstance(value, (list, tuple)) else None


def _same(a: Any, b: Any) -> bool:
    """Equality as jsonschema sees it for scalars: ``1 == 1.0`` but ``True != 1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return _kind(a) == _kind(b) and a == b


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(eq=False)
class _Node:
    """The part of one subschema checked while streaming; child schemas compile on first use."""

    schema: dict[str, Any] = field(default_factory=dict)
    compiler: _Compiler | None = None
    never: bool = False  # the `false` schema: no value is valid here
    types: frozenset[str] | None = None
    enum: tuple[Any, ...] | None = None
    enum_kinds: frozenset[str] | None = None
    required: tuple[str, ...] = ()
    min_items: int | None = None
    max_items: int | None = None
    max_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    prefix: list[Any] = field(default_factory=list)
    rest_items: Any = _ABSENT
    patterns: list[tuple[re.Pattern[str], Any]] = field(default_factory=list)
    patterns_known: bool = True  # False when a pattern does not compile in Python: keys undecidable

    def key_node(self, key: str) -> _Node | None:
        """The node for the value at ``key``: the `false` node if the key is forbidden, None if unchecked."""
        assert self.compiler is not None
        properties = self.schema.get("properties")
        applicable = [properties[key]] if isinstance(properties, dict) and key in properties else []
        applicable += [sub for pattern, sub in self.patterns if pattern.search(key)]
        if not applicable:
            if not self.patterns_known or "additionalProperties" not in self.schema:
                return None
            applicable = [self.schema["additionalProperties"]]
        nodes = [self.compiler.node(sub) for sub in applicable]
        if _NEVER in nodes:
            return _NEVER
        # every applicable schema must hold; checking one of them is a sound subset
        return next((node for node in nodes if node is not None), None)

    def item_node(self, index: int) -> _Node | None:
        assert self.compiler is not None
        if index < len(self.prefix):
            return self.compiler.node(self.prefix[index])
        return None if self.rest_items is _ABSENT else self.compiler.node(self.rest_items)


_NEVER = _Node(never=True)


class _Compiler:
    """Turns subschemas into :class:`_Node`\\ s, memoised by identity (recursive schemas are fine)."""

    def __init__(self, root: dict[str, Any], dialect: str):
        self.root = root
        self.dialect = dialect  # "4", "6", "7", "2019" or "2020"
        self._memo: dict[int, _Node | None] = {}

    def node(self, schema: Any) -> _Node | None:
        if schema is False:
            return _NEVER
        if not isinstance(schema, dict):
            return None  # `true` (or something jsonschema would have refused)
        key = id(schema)
        if key not in self._memo:
            self._memo[key] = self._build(schema)
        return self._memo[key]

    def _build(self, schema: dict[str, Any]) -> _Node | None:
        if schema is not self.root and ("$id" in schema or (self.dialect == "4" and isinstance(schema.get("id"), str))):
            return None  # a new base URI: local refs below it point elsewhere
        if "$ref" in schema:
            # draft <= 7 ignores $ref's siblings; later drafts add them, and skipping them is sound
            target = self._follow(schema)
            return self.node(target) if target is not schema else None
        types = schema.get("type")
        enum = (schema["const"],) if "const" in schema else schema.get("enum")
        enum = tuple(enum) if isinstance(enum, (list, tuple)) else None
        node = _Node(
            schema=schema,
            compiler=self,
            types=_types(types),
            enum=enum,
            enum_kinds=frozenset(filter(None, map(_kind, enum))) if enum is not None else None,
            required=_strings(schema.get("required")),
            min_items=_count(schema.get("minItems")),
            max_items=_count(schema.get("maxItems")),
            max_length=_count(schema.get("maxLength")),
            minimum=_bound(schema.get("minimum")),
            maximum=_bound(schema.get("maximum")),
            exclusive_minimum=_bound(schema.get("exclusiveMinimum")),  # draft 4's booleans are skipped
            exclusive_maximum=_bound(schema.get("exclusiveMaximum")),
        )
        node.prefix, node.rest_items = self._items(schema)
        self._patterns(node, schema.get("patternProperties"))
        return node

    def _items(self, schema: dict[str, Any]) -> tuple[list[Any], Any]:
        items = schema.get("items", _ABSENT)
        if self.dialect == "2020":
            prefix = schema.get("prefixItems")
            return (prefix if isinstance(prefix, list) else []), (_ABSENT if isinstance(items, list) else items)
        if isinstance(items, list):
            return items, schema.get("additionalItems", _ABSENT)
        return [], items

    @staticmethod
    def _patterns(node: _Node, patterns: Any) -> None:
        if not isinstance(patterns, dict):
            return
        for source, sub in patterns.items():
            try:
                node.patterns.append((re.compile(source), sub))
            except (re.error, TypeError):
                node.patterns_known = False

    def _follow(self, schema: dict[str, Any]) -> Any:
        """The schema a chain of local ``$ref``\\ s ends at; ``schema`` itself if it cannot be resolved."""
        seen: set[int] = set()
        current: Any = schema
        while isinstance(current, dict) and "$ref" in current:
            if id(current) in seen:
                return schema  # a cycle of bare refs
            seen.add(id(current))
            current = self._resolve(current["$ref"])
            if current is _ABSENT:
                return schema
        return current

    def _resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            return _ABSENT
        from urllib.parse import unquote

        target: Any = self.root
        for token in ref[2:].split("/") if ref != "#" else ():
            token = unquote(token).replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and token in target:
                target = target[token]
            elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            else:
                return _ABSENT
        return target


def _types(value: Any) -> frozenset[str] | None:
    if isinstance(value, str):
        return frozenset([value])
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return frozenset(value)
    return None


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bound(value: Any) -> float | None:
    return value if _is_number(value) else None


def _compile_root(schema: Any) -> _Node | None:
    if schema is None or schema is True:
        return None
    if schema is False:
        return _NEVER
    if not isinstance(schema, dict):
        return None
    from jsonschema import validators

    dialects = {
        validators.Draft4Validator: "4",
        validators.Draft6Validator: "6",
        validators.Draft7Validator: "7",
        validators.Draft201909Validator: "2019",
        validators.Draft202012Validator: "2020",
    }
    dialect = dialects.get(validators.validator_for(schema, default=validators.Draft202012Validator))
    return None if dialect is None else _Compiler(schema, dialect).node(schema)


@dataclass
class _Frame:
    """An open object or array."""

    is_object: bool
    node: _Node | None
    where: str | int | None = None  # the current key, or the current item's index
    count: int = 0  # items so far (arrays)
    keys: set[str] = field(default_factory=set)  # keys so far (objects)


class JsonStreamChecker:
    """Checks a JSON answer while it streams; see the module docstring.

    ``feed`` raises :class:`StreamViolation` at the first chunk that makes the answer certainly
    invalid; ``finish`` raises if the document is empty or incomplete.
    """

    def __init__(self, schema: dict[str, Any] | None = None):
        self.read = 0
        self._base = 0  # offset of the current chunk in the answer
        self._state = _START
        self._stack: list[_Frame] = []
        self._pending: _Node | None = _compile_root(schema)  # the node of the next value
        self._fenced = False
        self._ticks = 0  # backticks of the current fence
        self._fence_tail = "tag"  # after the opening ```: "tag", "space", "cr"
        # the scalar being read
        self._node: _Node | None = None
        self._is_key = False
        self._parts: list[str] | None = None  # raw text, kept only when the value is needed
        self._length = 0
        self._max_length: int | None = None
        self._escape = 0  # 0: none, 1: after a backslash, 2: in \uXXXX
        self._hex = ""
        self._number_state = _N_SIGN
        self._literal: tuple[str, bool | None] = ("", None)
        self._literal_pos = 0
        self._handlers = {
            _START: self._on_start, _FENCE: self._on_fence, _VALUE: self._on_value,
            _OBJ_FIRST: self._on_object_first, _OBJ_KEY: self._on_object_key, _COLON: self._on_colon,
            _ARR_FIRST: self._on_array_first, _AFTER: self._on_after, _STRING: self._on_string,
            _NUMBER: self._on_number, _LITERAL: self._on_literal, _TRAILER: self._on_trailer,
            _CLOSE_FENCE: self._on_close_fence, _DONE: self._on_done,
        }

    def feed(self, chunk: str) -> None:
        self._base = self.read
        self.read += len(chunk)
        i, end = 0, len(chunk)
        while i < end:
            i = self._handlers[self._state](chunk, i)

    def finish(self) -> None:
        if self._state == _NUMBER and self._number_state in _N_COMPLETE:
            self._end_number()
        if self._state == _START:
            self._fail("json", "the answer is empty: no JSON document")
        if self._state == _DONE or (self._state == _TRAILER and not self._fenced):
            return
        if self._state in (_TRAILER, _CLOSE_FENCE):
            self._fail("json", "the ``` fence around the JSON document is never closed")
        open_ = len(self._stack)
        detail = f" ({open_} unclosed {'container' if open_ == 1 else 'containers'})" if open_ else ""
        self._fail("json", f"the JSON document is incomplete{detail}", self._path())

    # -- helpers --

    def _fail(self, rule: str, message: str, parts: list[str | int] | None = None) -> NoReturn:
        path = json_path(parts or [])
        raise StreamViolation(rule, f"{path}: {message}", self.read, path)

    def _path(self) -> list[str | int]:
        return [f.where for f in self._stack if f.where is not None]

    def _unexpected(self, chunk: str, i: int, expected: str, parts: list[str | int] | None = None) -> NoReturn:
        where = self._path() if parts is None else parts
        self._fail("json", f"expected {expected} at character {self._base + i}, got {chunk[i]!r}", where)

    def _value_done(self) -> None:
        self._state = _AFTER if self._stack else _TRAILER

    # -- around the document --

    def _on_start(self, chunk: str, i: int) -> int:
        i = _run_end(_ANY_WS_RUN, chunk, i)
        if i < len(chunk):
            if chunk[i] == "`":
                self._state = _FENCE
            elif chunk[i] in _KIND_OF_FIRST:
                self._state = _VALUE
            else:
                self._unexpected(chunk, i, "the JSON document (or a ``` fence around it)")
        return i

    def _on_fence(self, chunk: str, i: int) -> int:
        c = chunk[i]
        if self._ticks < 3:
            if c != "`":
                self._unexpected(chunk, i, "the JSON document (or a ``` fence around it)")
            self._ticks += 1
        elif self._fence_tail == "tag" and (c.isalnum() or c in "_+.-"):
            pass  # the language tag, e.g. json
        elif self._fence_tail != "cr" and c in " \t":
            self._fence_tail = "space"
        elif self._fence_tail != "cr" and c == "\r":
            self._fence_tail = "cr"
        elif c == "\n":
            self._fenced, self._ticks, self._state = True, 0, _VALUE
        else:
            self._unexpected(chunk, i, "a new line after the opening ``` fence")
        return i + 1

    def _on_trailer(self, chunk: str, i: int) -> int:
        i = _run_end(_ANY_WS_RUN, chunk, i)
        if i < len(chunk):
            if chunk[i] != "`" or not self._fenced:
                self._fail("json", f"extra data after the JSON document at character {self._base + i}: {chunk[i]!r}")
            self._state = _CLOSE_FENCE
        return i

    def _on_close_fence(self, chunk: str, i: int) -> int:
        if chunk[i] != "`":
            self._fail("json", f"extra data after the JSON document at character {self._base + i}: {chunk[i]!r}")
        self._ticks += 1
        if self._ticks == 3:
            self._state = _DONE
        return i + 1

    def _on_done(self, chunk: str, i: int) -> int:
        i = _run_end(_ANY_WS_RUN, chunk, i)
        if i < len(chunk):
            self._fail("json", f"extra data after the closing ``` fence at character {self._base + i}: {chunk[i]!r}")
        return i

    # -- structure --

    def _on_value(self, chunk: str, i: int) -> int:
        i = _run_end((_JSON_WS_RUN if self._stack else _ANY_WS_RUN), chunk, i)
        if i == len(chunk):
            return i
        c = chunk[i]
        kind = _KIND_OF_FIRST.get(c)
        if kind is None:
            self._unexpected(chunk, i, "a JSON value")
        node = self._pending
        if node is not None:
            self._check_start(node, kind)
        if kind in ("object", "array"):
            self._stack.append(_Frame(kind == "object", node))
            self._state = _OBJ_FIRST if kind == "object" else _ARR_FIRST
        elif kind == "string":
            self._begin_string(node, is_key=False)
        elif kind == "number":
            self._node, self._parts, self._state = node, [c], _NUMBER
            self._number_state = _N_SIGN if c == "-" else _N_ZERO if c == "0" else _N_INT
        else:
            self._node, self._literal, self._literal_pos, self._state = node, _LITERALS[c], 1, _LITERAL
        return i + 1

    def _on_object_first(self, chunk: str, i: int) -> int:
        i = _run_end(_JSON_WS_RUN, chunk, i)
        if i < len(chunk):
            if chunk[i] == "}":
                self._close()
            elif chunk[i] == '"':
                self._begin_string(None, is_key=True)
            else:
                self._unexpected(chunk, i, "a key in double quotes or '}'")
            i += 1
        return i

    def _on_object_key(self, chunk: str, i: int) -> int:
        i = _run_end(_JSON_WS_RUN, chunk, i)
        if i < len(chunk):
            if chunk[i] != '"':
                self._unexpected(chunk, i, "a key in double quotes", self._path()[:-1])  # the object's path
            self._begin_string(None, is_key=True)
            i += 1
        return i

    def _on_colon(self, chunk: str, i: int) -> int:
        i = _run_end(_JSON_WS_RUN, chunk, i)
        if i < len(chunk):
            if chunk[i] != ":":
                self._unexpected(chunk, i, "':'")
            self._state = _VALUE
            i += 1
        return i

    def _on_array_first(self, chunk: str, i: int) -> int:
        i = _run_end(_JSON_WS_RUN, chunk, i)
        if i < len(chunk):
            if chunk[i] == "]":
                self._close()
                return i + 1
            self._begin_item()
            self._state = _VALUE
        return i

    def _on_after(self, chunk: str, i: int) -> int:
        i = _run_end(_JSON_WS_RUN, chunk, i)
        if i == len(chunk):
            return i
        frame = self._stack[-1]
        closer = "}" if frame.is_object else "]"
        if chunk[i] == ",":
            if frame.is_object:
                self._state = _OBJ_KEY
            else:
                self._begin_item()
                self._state = _VALUE
        elif chunk[i] == closer:
            self._close()
        else:
            self._unexpected(chunk, i, f"',' or '{closer}'", self._path()[:-1])  # the container's path
        return i + 1

    def _begin_item(self) -> None:
        frame = self._stack[-1]
        frame.where, frame.count = frame.count, frame.count + 1
        node = frame.node
        self._pending = None if node is None else node.item_node(frame.count - 1)
        if node is None:
            return
        if node.max_items is not None and frame.count > node.max_items:
            self._fail("schema", f"more than {node.max_items} items (maxItems)", self._path()[:-1])
        if self._pending is _NEVER:
            self._fail("schema", f"no item is allowed at index {frame.count - 1}", self._path())

    def _on_key(self, key: str) -> None:
        frame = self._stack[-1]
        frame.where = key
        if key in frame.keys:
            self._fail("json", f"duplicate key {key!r}", self._path())
        frame.keys.add(key)
        self._pending = None if frame.node is None else frame.node.key_node(key)
        if self._pending is _NEVER:
            self._fail("schema", f"key {key!r} is not allowed by the schema", self._path())
        self._state = _COLON

    def _close(self) -> None:
        frame = self._stack[-1]
        node = frame.node
        if node is not None:
            parts = [f.where for f in self._stack[:-1] if f.where is not None]
            missing = [k for k in node.required if k not in frame.keys] if frame.is_object else []
            if missing:
                self._fail("schema", "missing required " + ", ".join(map(repr, missing)), parts)
            if not frame.is_object and node.min_items is not None and frame.count < node.min_items:
                self._fail("schema", f"{frame.count} items, fewer than {node.min_items} (minItems)", parts)
        self._stack.pop()
        self._value_done()

    def _check_start(self, node: _Node, kind: str) -> None:
        """What a value's first character already decides: its type."""
        if node.never:
            self._fail("schema", "no value is allowed here", self._path())
        types = node.types
        if types is not None and kind not in types and not (kind == "number" and "integer" in types):
            expected = " or ".join(_A.get(t, t) for t in sorted(types))
            self._fail("schema", f"{_A[kind]} where the schema expects {expected}", self._path())
        if node.enum_kinds is not None and kind not in node.enum_kinds:
            self._fail("schema", f"{_A[kind]} cannot be one of {_short(list(node.enum or ()))}", self._path())

    # -- scalars --

    def _begin_string(self, node: _Node | None, *, is_key: bool) -> None:
        self._node, self._is_key, self._state = node, is_key, _STRING
        self._parts = [] if is_key or (node is not None and node.enum is not None) else None
        self._max_length = None if node is None else node.max_length
        self._length = 0
        self._escape = 0

    def _on_string(self, chunk: str, i: int) -> int:
        end = len(chunk)
        while i < end:
            if self._escape == 0:
                j = _run_end(_STRING_RUN, chunk, i)
                if j > i:
                    self._keep(chunk[i:j], j - i)
                    i = j
                    if i == end:
                        break
                c = chunk[i]
                if c == '"':
                    self._end_string()
                    return i + 1
                if c != "\\":
                    where = f"at character {self._base + i}"
                    self._fail("json", f"control character {c!r} in a string {where}", self._path())
                self._escape, self._hex = 1, ""
                self._keep(c, 0)
            elif self._escape == 1:
                c = chunk[i]
                if c == "u":
                    self._escape = 2
                    self._keep(c, 0)
                elif c in _SIMPLE_ESCAPES:
                    self._escape = 0
                    self._keep(c, 1)
                else:
                    self._fail("json", f"invalid escape '\\{c}' at character {self._base + i}", self._path())
            else:
                c = chunk[i]
                if c not in _HEX:
                    self._fail("json", f"invalid \\u escape at character {self._base + i}: {c!r}", self._path())
                self._hex += c
                high_surrogate = len(self._hex) == 4 and 0xD800 <= int(self._hex, 16) <= 0xDBFF
                # a surrogate pair decodes to one character: count the high half as none (never over-counts)
                self._keep(c, 1 if len(self._hex) == 4 and not high_surrogate else 0)
                if len(self._hex) == 4:
                    self._escape = 0
            i += 1
        return i

    def _keep(self, raw: str, characters: int) -> None:
        """Record ``raw`` string text worth ``characters`` decoded characters."""
        if self._parts is not None:
            self._parts.append(raw)
        if self._max_length is not None and characters:
            self._length += characters
            if self._length > self._max_length:
                self._fail("schema", f"a string longer than {self._max_length} characters (maxLength)", self._path())

    def _end_string(self) -> None:
        value = None if self._parts is None else json.loads('"' + "".join(self._parts) + '"')
        if self._is_key:
            self._on_key(value)  # type: ignore[arg-type]  # a key's parts are always collected (see _begin_string)
            return
        if self._parts is not None:
            self._check_scalar(value)
        self._value_done()

    def _on_number(self, chunk: str, i: int) -> int:
        end = len(chunk)
        assert self._parts is not None
        while i < end:
            c, state = chunk[i], self._number_state
            if state in (_N_INT, _N_FRAC, _N_EXP) and "0" <= c <= "9":
                j = _run_end(_DIGIT_RUN, chunk, i)
                self._parts.append(chunk[i:j])
                i = j
                continue
            following = _number_next(state, c)
            if following is None:
                if state not in _N_COMPLETE:
                    self._fail("json", f"malformed number at character {self._base + i}: {c!r}", self._path())
                self._end_number()
                return i  # the character after the number belongs to the structure
            self._number_state = following
            self._parts.append(c)
            i += 1
        return i

    def _end_number(self) -> None:
        assert self._parts is not None
        text = "".join(self._parts)
        node = self._node
        if node is not None:
            self._check_number(node, text)
        self._value_done()

    def _check_number(self, node: _Node, text: str) -> None:
        is_float = any(c in text for c in ".eE")
        try:
            value: int | float = float(text) if is_float else int(text)
        except ValueError:
            return  # beyond Python's int digit limit: leave it to the final check
        types = node.types
        if types is not None and "number" not in types and "integer" in types:
            dialect = node.compiler.dialect if node.compiler else "2020"
            integral = not is_float or (dialect != "4" and float(value).is_integer())
            if not integral:
                self._fail("schema", f"{text} where the schema expects an integer", self._path())
        self._check_scalar(value)
        self._check_bounds(node, value, text)

    def _check_bounds(self, node: _Node, value: float, text: str) -> None:
        checks = (
            (node.minimum, lambda b: value < b, "less than the minimum"),
            (node.maximum, lambda b: value > b, "more than the maximum"),
            (node.exclusive_minimum, lambda b: value <= b, "not more than the exclusive minimum"),
            (node.exclusive_maximum, lambda b: value >= b, "not less than the exclusive maximum"),
        )
        for bound, broken, words in checks:
            if bound is not None and broken(bound):
                self._fail("schema", f"{text} is {words} {bound}", self._path())

    def _on_literal(self, chunk: str, i: int) -> int:
        word, value = self._literal
        end = len(chunk)
        while i < end and self._literal_pos < len(word):
            if chunk[i] != word[self._literal_pos]:
                self._fail("json", f"invalid literal at character {self._base + i} (expected {word!r})", self._path())
            self._literal_pos += 1
            i += 1
        if self._literal_pos == len(word):
            if self._node is not None:
                self._check_scalar(value)
            self._value_done()
        return i

    def _check_scalar(self, value: Any) -> None:
        node = self._node
        if node is not None and node.enum is not None and not any(_same(value, e) for e in node.enum):
            allowed = _short(node.enum[0]) if len(node.enum) == 1 else "one of " + _short(list(node.enum))
            self._fail("schema", f"{_short(value)} is not {allowed}", self._path())


def _number_next(state: int, c: str) -> int | None:
    """The number state after ``c``, or None if ``c`` cannot continue the number."""
    digit = "0" <= c <= "9"
    if state == _N_SIGN:
        return (_N_ZERO if c == "0" else _N_INT) if digit else None
    if state in (_N_ZERO, _N_INT) and c == ".":
        return _N_DOT
    if state in (_N_ZERO, _N_INT, _N_FRAC) and c in "eE":
        return _N_E
    if state == _N_DOT:
        return _N_FRAC if digit else None
    if state == _N_E and c in "+-":
        return _N_ESIGN
    if state in (_N_E, _N_ESIGN):
        return _N_EXP if digit else None
    return None  # after a leading zero a digit ends the number too ("01" then fails as extra data)
