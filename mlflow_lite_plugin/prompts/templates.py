"""Prompt templates for ``query_with_template``: the template a call names, built-in or from
MLflow's Prompt Registry.

A template is a user message (and optionally a system message) with ``{{variable}}`` placeholders
plus the validation rules its answers get by default (``rendering.py``). A name is a built-in
(``builtins.py``, listed by ``list_templates()``) or, for any other name, a prompt in MLflow's
Prompt Registry (``registry.py``, where ``register_template`` adds versions). This module is what
callers import: it finds the template and re-exports the names they use with it.
"""

from __future__ import annotations

from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.prompts.builtins import BUILTIN_TEMPLATES, list_templates
from mlflow_lite_plugin.prompts.registry import load, prompt_uri, register_template
from mlflow_lite_plugin.prompts.rendering import PreparedPrompt, Template, check_variable_names, split_kwargs

__all__ = [
    "BUILTIN_TEMPLATES",
    "PreparedPrompt",
    "Template",
    "list_templates",
    "register_template",
    "resolve_template",
    "split_kwargs",
]


def resolve_template(template: str | Template, version: str | int | None = None) -> Template:
    """The template a call asks for: a Template as given, a built-in, or a registry prompt.

    A bare built-in name is always the built-in (``version=`` may only repeat the built-in's
    version); a registry prompt of that name is reached with ``"name/3"``, ``"name@alias"`` or a
    ``prompts:/`` URI."""
    if isinstance(template, Template):
        if version is not None:
            raise ArgumentError("version", "give a version with a template name, not with a Template")
        if template is not BUILTIN_TEMPLATES.get(template.name):
            check_variable_names(template.variables, f"template {template.name!r}")
        return template
    if not isinstance(template, str) or not template.strip():
        raise ArgumentError("template", f"must be a template name such as 'summarize', or a Template, got {template!r}")
    name = template.strip()
    builtin = BUILTIN_TEMPLATES.get(name)
    if builtin is not None:
        if version is not None and str(version) != builtin.version:
            raise ArgumentError(
                "version",
                f"built-in template {name!r} has one version, {builtin.version!r}; "
                f"a registry prompt of that name is 'prompts:/{name}/{version}'",
            )
        return builtin
    return load(prompt_uri(name, version), name)
