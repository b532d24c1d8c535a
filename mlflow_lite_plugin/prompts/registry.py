"""Templates in MLflow's Prompt Registry: load a version, register a new one.

A reference names a prompt in MLflow's Prompt Registry (at MLflow's registry URI, by default the
tracking URI):

- ``"name"``: the latest version; ``"name@alias"``: the version the alias points to;
  ``"name/3"`` or ``version=3``: version 3; ``"prompts:/name/3"``, ``"prompts:/name@alias"`` and
  ``"prompts:/name"`` (latest) as well.
- Built-ins win over a registry prompt of the same name, which is reached with ``"name/3"``,
  ``"name@alias"`` or a ``prompts:/`` URI. ``register_template`` refuses built-in names.
- A registry template is a text prompt, or a chat prompt of a system and a user message. Its
  variables may not be named like ``query`` keywords, and its default validation is the JSON in
  its version tag ``mlflow_lite_validate``.

Caching follows MLflow's own prompt cache (``mlflow.genai.load_prompt``): a numbered version is
immutable and cached for the life of the process (its validation tag too, read once), so repeated
calls do not query the registry; an alias or "latest" is re-read after
``MLFLOW_ALIAS_PROMPT_CACHE_TTL_SECONDS`` (MLflow's default: 60 seconds), so promoting an alias
takes effect within a minute everywhere, and at once in the process that moved it (MLflow drops
the cached entry when an alias is set or a version registered). As with ``load_prompt``, a prompt
read inside an active MLflow run is linked to that run.

MLflow is imported on first use, so that importing this module stays fast.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.prompts.builtins import BUILTIN_TEMPLATES, list_templates
from mlflow_lite_plugin.prompts.rendering import Template, check_variable_names
from mlflow_lite_plugin.tracing.schema import VALIDATE_TAG

logger = logging.getLogger(__name__)

# Where a registry template keeps its default validation: a prompt version tag holding JSON. A tag
# of our own, not MLflow's response_format (a JSON Schema only, meant for the provider's structured
# output) nor model_config (inference settings, checked against MLflow's own fields): the rules
# cover lengths, words and choices too: VALIDATE_TAG (no dots in the key: Unity Catalog tags forbid them).

# The roles a chat prompt from the registry may have, in order: an optional system message, then
# the user message; few-shot or multi-turn prompts do not fit Template.
_CHAT_SHAPES = (("user",), ("system", "user"))

# What the registry says when a prompt, version or alias does not exist (sql and REST stores differ).
MISSING = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


def prompt_uri(reference: str, version: str | int | None) -> str:
    """The ``prompts:/`` URI of "name", "name@alias", "name/3" (each also as a URI) and ``version``."""
    name = reference.removeprefix("prompts:/")
    if "@" in name or "/" in name:
        if version is not None:
            raise ArgumentError("version", f"give the version either in {reference!r} or as version=, not both")
        base, slash, number = name.rpartition("/")
        return f"prompts:/{base}/{version_number(number)}" if slash else f"prompts:/{name}"
    # "@latest" is MLflow's own reference to the newest version (what load_prompt(name) uses).
    return f"prompts:/{name}/{version_number(version)}" if version is not None else f"prompts:/{name}@latest"


def version_number(version: Any) -> int:
    """A version number >= 1, from an int or its digits (True is not a version)."""
    text = str(version).strip()
    if not text.isdigit() or int(text) < 1:
        raise ArgumentError("version", f"must be a version number >= 1, got {version!r}")
    return int(text)


def load(uri: str, asked: str) -> Template:
    """The registry prompt at ``uri`` as a Template (``asked``: the name the caller gave)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        prompt = mlflow.genai.load_prompt(uri)
    except MlflowException as exc:
        if exc.error_code not in MISSING:
            raise
        raise ArgumentError(
            "template",
            f"cannot load {asked!r} from MLflow's Prompt Registry: {exc.message} "
            f"(built-in templates: {', '.join(list_templates())})",
        ) from exc
    logger.debug("Resolved %s to %s", uri, prompt.uri)
    return _from_prompt_version(prompt)


def _from_prompt_version(prompt: Any) -> Template:
    """A Template from an MLflow PromptVersion: a text prompt, or a chat prompt [system?, user]."""
    where = f"prompt {prompt.uri}"
    if prompt.is_text_prompt:
        system, text = None, prompt.template
    else:
        messages = prompt.template
        roles = tuple(message.get("role") for message in messages)
        if roles not in _CHAT_SHAPES:
            raise ArgumentError(
                "template",
                f"{where} has messages {list(roles)}; supported: a text prompt, or a system and a user message",
            )
        system = messages[0]["content"] if len(messages) == 2 else None
        text = messages[-1]["content"]
    if not all(isinstance(part, str) for part in (text, system or "")):
        raise ArgumentError("template", f"{where}: message contents must be text")
    _check_plain(system, text, where)
    template = Template(
        name=prompt.name,
        template=text,
        system=system,
        version=str(prompt.version),
        validate=_stored_rules(prompt.tags.get(VALIDATE_TAG), where),
        source="registry",
        uri=prompt.uri,
    )
    check_variable_names(template.variables, where)
    return template


def _check_plain(system: str | None, text: str, where: str) -> None:
    if any("{%" in part and "%}" in part for part in (system or "", text)):
        raise ArgumentError(
            "template", f"{where} uses Jinja2 blocks ({{% %}}); only {{{{variable}}}} placeholders are supported"
        )


def _stored_rules(value: str | None, where: str) -> dict | None:
    if value is None:
        return None
    try:
        rules = json.loads(value)
    except ValueError as exc:
        raise ArgumentError("template", f"{where}: tag {VALIDATE_TAG} is not valid JSON ({exc})") from exc
    if not isinstance(rules, dict):
        raise ArgumentError("template", f"{where}: tag {VALIDATE_TAG} must hold a JSON object, got {value!r}")
    return rules


def register_template(
    name: str,
    template: str,
    system: str | None = None,
    *,
    validate: dict | None = None,
    alias: str | None = None,
    tags: dict[str, str] | None = None,
    commit_message: str | None = None,
) -> Template:
    """Register a new version of a template in MLflow's Prompt Registry: a text prompt, or a chat
    prompt (system and user messages) when ``system`` is given. ``validate`` is stored with it and
    becomes the default validation of the loaded template; ``alias`` is pointed at the new version."""
    candidate = checked_candidate(name, template, system)
    version_tags = _version_tags(tags, validate)
    if alias is not None:
        check_alias(alias)
    version = _register(candidate, version_tags, commit_message)
    if alias is not None:
        import mlflow

        mlflow.genai.set_prompt_alias(name=name, alias=alias, version=version)
    logger.info("Registered template %r version %s%s", name, version, f" as @{alias}" if alias else "")
    return replace(
        candidate,
        version=str(version),
        # As loading it will give them back (JSON turns tuples into lists).
        validate=_stored_rules(version_tags.get(VALIDATE_TAG), f"template {name!r}"),
        source="registry",
        uri=f"prompts:/{name}/{version}",
    )


def checked_candidate(name: Any, template: Any, system: Any) -> Template:
    """The template to register, checked: a free name, text, no query keywords as variables."""
    if not isinstance(name, str) or not name.strip():
        raise ArgumentError("name", f"must be a non-empty string, got {name!r}")
    if name in BUILTIN_TEMPLATES:
        raise ArgumentError(
            "name", f"{name!r} is a built-in template, which a registry prompt could not override; pick another name"
        )
    if not isinstance(template, str) or not template.strip():
        raise ArgumentError("template", f"must be a non-empty string, got {template!r}")
    if system is not None and (not isinstance(system, str) or not system.strip()):
        raise ArgumentError("system", f"must be None or a non-empty string, got {system!r}")
    candidate = Template(name=name, template=template, system=system, source="registry")
    _check_plain(system, template, f"template {name!r}")
    check_variable_names(candidate.variables, f"template {name!r}")
    return candidate


def _version_tags(tags: Mapping[str, str] | None, validate: Mapping[str, Any] | None) -> dict[str, str]:
    if tags is not None and not isinstance(tags, Mapping):
        raise ArgumentError("tags", f"must be a dict of str to str, got {tags!r}")
    version_tags = {str(key): str(value) for key, value in (tags or {}).items()}
    if VALIDATE_TAG in version_tags:
        raise ArgumentError("tags", f"{VALIDATE_TAG!r} is set from validate=; pass the rules there")
    if validate is not None:
        version_tags[VALIDATE_TAG] = _rules_json(validate)
    return version_tags


def _rules_json(validate: Any) -> str:
    """The rules as JSON; they are checked by the validator first, so bad rules fail now, not on
    every later call."""
    if not isinstance(validate, Mapping):
        raise ArgumentError("validate", f"must be a dict of validation rules, got {type(validate).__name__}")
    if _has_callable(validate):
        raise ArgumentError(
            "validate",
            "a callable (such as custom=) cannot be stored in the registry; pass it as validate= on each call instead",
        )
    try:
        text = json.dumps(validate)
    except (TypeError, ValueError) as exc:
        raise ArgumentError("validate", f"must be JSON-serialisable to be stored in the registry: {exc}") from exc
    from mlflow_lite_plugin.controls.validation.rules import Validator

    Validator(dict(validate), on_fail=None, max_attempts=None)
    return text


def _has_callable(value: Any) -> bool:
    if callable(value):
        return True
    if isinstance(value, Mapping):
        return any(_has_callable(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_callable(item) for item in value)
    return False


def _register(template: Template, tags: dict[str, str], commit_message: str | None) -> int:
    """Store ``template`` as a new prompt version: text, or [system, user] messages."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.prompt.registry_utils import validate_prompt_name

    try:
        validate_prompt_name(template.name)
    except MlflowException as exc:
        raise ArgumentError("name", exc.message) from exc
    content: str | list[dict[str, str]] = template.template
    if template.system is not None:
        content = [{"role": "system", "content": template.system}, {"role": "user", "content": template.template}]
    try:
        prompt = mlflow.genai.register_prompt(
            name=template.name, template=content, commit_message=commit_message, tags=tags
        )
    except MlflowException as exc:
        # Name taken by a registered model, text too long, ...: MLflow's message says which.
        if exc.error_code == "RESOURCE_ALREADY_EXISTS":
            raise ArgumentError("name", exc.message) from exc
        if exc.error_code == "INVALID_PARAMETER_VALUE":
            raise ArgumentError("template", exc.message) from exc
        raise
    return int(prompt.version)


def check_alias(alias: Any) -> None:
    """MLflow's own alias rules ("latest" and "v3" are reserved), checked before registering so a
    bad alias does not leave a new version behind, which "latest" would then point at."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_alias_name, _validate_model_alias_name_reserved

    if not isinstance(alias, str):
        raise ArgumentError("alias", f"must be a string, got {alias!r}")
    try:
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)
    except MlflowException as exc:
        raise ArgumentError("alias", exc.message) from exc
