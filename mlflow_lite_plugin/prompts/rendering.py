"""A prompt template and how it renders: ``{{variable}}`` placeholders filled into messages.

The placeholder syntax is MLflow's Prompt Registry's (``{{ name }}`` works too). A template's
variables may not be named like ``query`` keywords (``model``, ``temperature``, ...), which a call
could not tell apart from them. The built-ins are in ``builtins.py``, registry prompts in
``registry.py``, and ``templates.py`` finds the one a call names.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow_lite_plugin.core.errors import ArgumentError, did_you_mean
from mlflow_lite_plugin.core.request import PIPELINE_KEYWORDS, known_keywords
from mlflow_lite_plugin.tracing import schema

# MLflow's PROMPT_TEMPLATE_VARIABLE_PATTERN, copied so that importing this module does not import
# mlflow.
_PLACEHOLDER = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*(?:\.[a-zA-Z_][a-zA-Z0-9_]*)*)\s*\}\}")

# Parameters of query_with_template itself: a variable of that name could never be passed.
_METHOD_PARAMETERS = frozenset({"template", "version"})


@dataclass(frozen=True)
class PreparedPrompt:
    """A template rendered with its variables: what ``query`` is called with."""

    messages: list[dict[str, str]]
    validate: dict | None
    trace_attributes: dict[str, str]


@dataclass(frozen=True)
class Template:
    """A prompt template: a user message with ``{{variable}}`` placeholders, an optional system
    message, and the validation its answers get by default."""

    name: str
    template: str
    system: str | None = None
    version: str = "1"
    validate: dict | None = None
    source: str = "builtin"
    uri: str | None = None

    @functools.cached_property
    def variables(self) -> tuple[str, ...]:
        """Placeholder names in order of first appearance, system message first."""
        return placeholders(self.system, self.template)

    def render(self, variables: Mapping[str, Any]) -> PreparedPrompt:
        """Fill in the placeholders; raises ArgumentError for a missing or unknown variable."""
        values, validate = self._prepare(variables)
        messages = [{"role": "user", "content": _substitute(self.template, values)}]
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": _substitute(self.system, values)})
        return PreparedPrompt(messages=messages, validate=validate, trace_attributes=self._trace_attributes())

    def _prepare(self, variables: Mapping[str, Any]) -> tuple[dict[str, str], dict | None]:
        given = self._check_given(variables)
        # A copy, so a caller merging its own rules into it never changes the template.
        return {name: str(value) for name, value in given.items()}, copy.deepcopy(self.validate)

    def _check_given(self, variables: Mapping[str, Any]) -> dict[str, Any]:
        """The given variables, None meaning not given; every variable present, no others."""
        given = {name: value for name, value in variables.items() if value is not None}
        for name in given:
            if name not in self.variables:
                raise ArgumentError(name, f"is not a variable of template {self.name!r} ({_listed(self)})")
        missing = [name for name in self.variables if name not in given]
        if missing:
            needed = ", ".join(f"{name}=..." for name in missing)
            raise ArgumentError(", ".join(missing), f"template {self.name!r} needs {needed}")
        return given

    def _trace_attributes(self) -> dict[str, str]:
        attributes = {
            schema.TEMPLATE: self.name,
            schema.TEMPLATE_VERSION: self.version,
            schema.TEMPLATE_SOURCE: self.source,
        }
        if self.uri is not None:
            attributes[schema.TEMPLATE_URI] = self.uri
        return attributes


def placeholders(system: str | None, template: str) -> tuple[str, ...]:
    """The placeholder names of a system and a user message, in order of first appearance."""
    found = _PLACEHOLDER.findall(system or "") + _PLACEHOLDER.findall(template)
    return tuple(dict.fromkeys(found))


def _listed(template: Template) -> str:
    return "variables: " + ", ".join(template.variables) if template.variables else "it has no variables"


def _substitute(text: str, values: Mapping[str, str]) -> str:
    # One pass: a value is never scanned again, so braces in user input stay literal.
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


# -- variables and query keywords --


@functools.cache
def _query_keywords() -> frozenset[str]:
    """Every keyword ``query`` takes besides prompt/messages (imports LiteLLM the first time)."""
    return known_keywords() | PIPELINE_KEYWORDS | {"model", "system", "validate", "on_fail", "max_attempts"}


def check_variable_names(names: Sequence[str], where: str) -> None:
    """A variable named like a query keyword (model, temperature) could not be told apart from it."""
    clashes = [name for name in names if name in _query_keywords() or name in _METHOD_PARAMETERS]
    if clashes:
        listed = ", ".join(repr(name) for name in clashes)
        raise ArgumentError(
            "template",
            f"{where} has variable(s) {listed}, also query keyword(s); rename them, e.g. {{{{my_{clashes[0]}}}}}",
        )


def split_kwargs(template: Template, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split the keywords of a call into the template's variables and ``query`` keywords."""
    variables: dict[str, Any] = {}
    query_kwargs: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in template.variables:
            variables[name] = value
        elif name in _query_keywords():
            query_kwargs[name] = value
        else:
            hint = did_you_mean(name, template.variables, cutoff=0.75)
            raise ArgumentError(
                name,
                f"is neither a variable of template {template.name!r} ({_listed(template)}) "
                f"nor a query argument.{hint}",
            )
    return variables, query_kwargs
