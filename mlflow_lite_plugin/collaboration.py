"""Shared prompts with an approval workflow, on MLflow's Prompt Registry and MLflow's own auth.

Templates live in MLflow's Prompt Registry (see ``templates.py``), so a team shares them through
one MLflow server. Who may do what is MLflow's business: start the server with
``mlflow server --app-name basic-auth`` (which needs ``pip install mlflow[auth]``), give each person
a user, and grant each user a permission on each prompt (an admin, with
``mlflow.server.get_app_client("basic-auth", tracking_uri).grant_user_permission(user, "prompt",
name, "READ")``). Clients authenticate with ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``; MLflow reads them on every request.

The workflow:

- ``propose_prompt(name, template)`` registers a new version that nobody uses yet, tagged
  ``mlflow_lite_status=pending`` with who proposed it and when.
- ``approve_prompt(name, version)`` moves the ``production`` alias to it, so
  ``query_with_template(template="name@production")`` uses it, and tags it ``approved`` with who
  approved it, when, and the version the alias pointed to before (the one to roll back to).
- ``reject_prompt(name, version, reason)`` tags it ``rejected`` with who, when and why.
- ``pending_prompts(name=None)`` lists the proposals waiting for a review.

Only a pending version can be approved or rejected. Statuses record review decisions, so an
approved version stays ``approved`` after a later one is promoted; where an alias points is
MLflow's alias itself.

What each permission on a prompt allows, against an MLflow 3.17 basic-auth server:

============================================  ==================  =============================
Action                                        Needs               Enforced by
============================================  ==================  =============================
load and run it (``"name@production"``),      READ                the server
``pending_prompts``
log the traces of those calls                 EDIT on the         the server
                                              experiment
search and read those traces                  READ on the         the server
                                              experiment
``propose_prompt`` (a new version)            EDIT                the server
``approve_prompt``, ``reject_prompt``         MANAGE, or admin    this module, before any write
move an alias with MLflow's own               EDIT                the server
``mlflow.genai.set_prompt_alias``
delete a version or an alias                  MANAGE              the server
============================================  ==================  =============================

So the roles are: a READ user runs prompts and reads traces and cannot change anything (the
server answers 403); an EDIT user also proposes; a MANAGE user (or an admin) also approves and
rejects. Any authenticated user may create a new prompt (with workspaces on, a member of the
workspace), and MLflow gives its creator MANAGE on it: whoever proposes a new prompt can approve
its first version.

Two limits of MLflow 3.17 shape this:

- **The server lets EDIT move aliases.** ``SetRegisteredModelAlias`` needs only EDIT on the prompt
  (deleting an alias needs MANAGE), and an EDIT user can also tag versions. The MANAGE rule for
  approvals is therefore checked here, by asking the server for the caller's grants, not by the
  server: it keeps honest editors on the workflow, but an editor who calls MLflow's API directly
  can still move ``production``. Only READ users are kept out by the server itself.
- **The server cannot tell a user their permission on a prompt.** Its per-user check
  (``/api/3.0/mlflow/users/permissions/get``) refuses ``resource_type="prompt"``. So the check
  reads the caller's own grants (``/api/3.0/mlflow/users/current/permissions``) and folds them as
  the server does: an admin, or a workspace-admin grant, is MANAGE; otherwise an explicit DENY on
  the prompt wins, else the highest grant on the prompt or on all prompts (``*``). A user with no
  grant on the prompt gets the server's ``default_permission``, which the server does not
  report: approvals then need an explicit MANAGE grant.

Whenever the server itself refuses a call (403, or 401 for bad credentials), the error is a
:class:`PermissionDeniedError` naming the user, the prompt and the permission needed.

With no auth server (a local sqlite or file store, or a server started without
``--app-name basic-auth``) there are no permissions to check: anyone who can reach the store can
approve, and the record names the local user (``MLFLOW_TRACKING_USERNAME``, else the OS user),
unverified; ``ApprovalRecord.permission_checked`` is then False. An auth server too old to have
``/api/2.0/mlflow/users/current`` is refused rather than treated as no auth. Registries that are
not an MLflow server (``databricks-uc``) enforce their own permissions, which this module does
not check.

The identity is process-wide (environment variables): switch users only after a client's traces
are flushed, since they are written in the background with the credentials of the moment. MLflow
caches loaded prompts per registry URI, not per user, so in one process a prompt one user loaded
can be served to another from the cache (``MLFLOW_ALIAS_PROMPT_CACHE_TTL_SECONDS`` and
``MLFLOW_VERSION_PROMPT_CACHE_TTL_SECONDS`` set to 0 turn the cache off). Another process sees a
moved alias after ``MLFLOW_ALIAS_PROMPT_CACHE_TTL_SECONDS`` (60 s by default); the process that
approved sees it at once.
"""

from __future__ import annotations

import functools
import getpass
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from .errors import ArgumentError, MlflowLiteError
from .templates import Template, _candidate, _check_alias, register_template

if TYPE_CHECKING:
    from mlflow.entities.model_registry import PromptVersion

logger = logging.getLogger(__name__)

# Version tags. No dots in the keys: Unity Catalog tags forbid them (as for mlflow_lite_validate).
STATUS_TAG = "mlflow_lite_status"
PROPOSED_BY_TAG = "mlflow_lite_proposed_by"
PROPOSED_AT_TAG = "mlflow_lite_proposed_at"
APPROVED_BY_TAG = "mlflow_lite_approved_by"
APPROVED_AT_TAG = "mlflow_lite_approved_at"
APPROVED_ALIAS_TAG = "mlflow_lite_approved_alias"
APPROVAL_COMMENT_TAG = "mlflow_lite_approval_comment"
PREVIOUS_VERSION_TAG = "mlflow_lite_previous_version"
REJECTED_BY_TAG = "mlflow_lite_rejected_by"
REJECTED_AT_TAG = "mlflow_lite_rejected_at"
REJECTION_REASON_TAG = "mlflow_lite_rejection_reason"
_WORKFLOW_TAGS = frozenset({
    STATUS_TAG, PROPOSED_BY_TAG, PROPOSED_AT_TAG, APPROVED_BY_TAG, APPROVED_AT_TAG, APPROVED_ALIAS_TAG,
    APPROVAL_COMMENT_TAG, PREVIOUS_VERSION_TAG, REJECTED_BY_TAG, REJECTED_AT_TAG, REJECTION_REASON_TAG,
})

PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"

# The auth app's routes (mlflow.server.auth.routes), spelled out: importing that module imports
# the whole server (Flask, Flask-WTF).
_CURRENT_USER = "/api/2.0/mlflow/users/current"
_CURRENT_PERMISSIONS = "/api/3.0/mlflow/users/current/permissions"
_GET_USER = "/api/2.0/mlflow/users/get"  # older auth servers have this, without users/current

_PRIORITY = {"NO_PERMISSIONS": 0, "READ": 1, "USE": 2, "EDIT": 3, "MANAGE": 4}

# What an MLflow REST error says when the auth app refused a call.
_REFUSED = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED"})
# What the registry says when a version or alias does not exist (sql vs REST stores differ).
_MISSING = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


class PermissionDeniedError(MlflowLiteError):
    """The caller may not do this to the prompt: ``user``, ``prompt`` and the ``permission`` it
    needs name who, what and why (``prompt`` and ``permission`` are None when the server refused
    the credentials themselves)."""

    def __init__(self, message: str, *, user: str, prompt: str | None = None, permission: str | None = None):
        super().__init__(message)
        self.user = user
        self.prompt = prompt
        self.permission = permission


class ProposalStateError(MlflowLiteError, ValueError):
    """The version is not a pending proposal (already approved or rejected, or never proposed)."""

    def __init__(self, name: str, version: int, status: str | None):
        state = f"is {status}" if status else "was not proposed with propose_prompt"
        super().__init__(
            f"Prompt {name!r} version {version} {state}; only a pending proposal can be approved or rejected"
        )
        self.name = name
        self.version = version
        self.status = status


@dataclass(frozen=True)
class Identity:
    """Who the registry calls are made as. ``authenticated``: an MLflow auth server vouched for
    ``username``; otherwise it is the local user and nothing was checked."""

    username: str
    is_admin: bool = False
    authenticated: bool = False


@dataclass(frozen=True)
class Proposal:
    """A prompt version waiting for review."""

    name: str
    version: int
    uri: str
    proposed_by: str | None
    proposed_at: datetime | None
    commit_message: str | None


@dataclass(frozen=True)
class ApprovalRecord:
    """An approval: ``alias`` now points at ``version``; it pointed at ``previous_version``."""

    name: str
    version: int
    alias: str
    approved_by: str
    approved_at: datetime
    previous_version: int | None
    comment: str | None
    permission_checked: bool


@dataclass(frozen=True)
class RejectionRecord:
    """A rejection of a proposal."""

    name: str
    version: int
    rejected_by: str
    rejected_at: datetime
    reason: str
    permission_checked: bool


# -- the workflow --


def propose_prompt(
    name: str,
    template: str,
    system: str | None = None,
    *,
    validate: dict | None = None,
    commit_message: str | None = None,
    tags: dict[str, str] | None = None,
) -> Template:
    """Register a new version of prompt ``name`` as a pending proposal: no alias moves, so nothing
    uses it until ``approve_prompt``. Needs EDIT on the prompt (creating a new prompt needs the
    right to create one). Arguments as for ``register_template``."""
    _candidate(name, template, system)  # bad arguments fail before any network call
    if tags is not None and not isinstance(tags, Mapping):
        raise ArgumentError("tags", f"must be a dict of str to str, got {tags!r}")
    reserved = sorted(_WORKFLOW_TAGS.intersection(tags or {}))
    if reserved:
        raise ArgumentError("tags", f"{', '.join(reserved)} are set by the approval workflow")
    user = current_user()
    proposed_at = _now().isoformat()
    proposal_tags = {**(tags or {}), STATUS_TAG: PENDING, PROPOSED_BY_TAG: user.username, PROPOSED_AT_TAG: proposed_at}
    # In the create call itself, so the version is never visible without its pending status.
    with _refusals_mapped(user.username, name, "EDIT", "propose a version of"):
        proposed = register_template(
            name, template, system, validate=validate, tags=proposal_tags, commit_message=commit_message
        )
    logger.info("%s proposed prompt %r version %s", user.username, name, proposed.version)
    return proposed


def approve_prompt(
    name: str, version: int | str, *, alias: str = "production", comment: str | None = None
) -> ApprovalRecord:
    """Approve a pending proposal: point ``alias`` at it and record who approved it and when.

    Needs MANAGE on the prompt (or admin), checked with the auth server before anything moves;
    raises PermissionDeniedError otherwise, and ProposalStateError unless the version is pending.
    Order: the alias, then the record, status last, so a failure half-way leaves the version
    pending and approving it again completes the approval."""
    import mlflow

    number = _version_number(version)
    _check_alias(alias)
    _check_note("comment", comment, required=False)
    user = _require_manage(name, "approve")
    with _refusals_mapped(user.username, name, "MANAGE", "approve"):
        _require_pending(name, number)
        previous = _alias_target(name, alias)
        if previous == number:  # the alias was moved there without the workflow
            previous = None
        mlflow.genai.set_prompt_alias(name=name, alias=alias, version=number)
        approved_at = _now()
        record = {APPROVED_BY_TAG: user.username, APPROVED_AT_TAG: approved_at.isoformat(), APPROVED_ALIAS_TAG: alias}
        if comment is not None:
            record[APPROVAL_COMMENT_TAG] = comment
        if previous is not None:
            record[PREVIOUS_VERSION_TAG] = str(previous)
        _set_tags(name, number, {**record, STATUS_TAG: APPROVED})
    logger.info("%s approved prompt %r version %s as @%s (was %s)", user.username, name, number, alias, previous)
    return ApprovalRecord(
        name=name,
        version=number,
        alias=alias,
        approved_by=user.username,
        approved_at=approved_at,
        previous_version=previous,
        comment=comment,
        permission_checked=user.authenticated,
    )


def reject_prompt(name: str, version: int | str, reason: str) -> RejectionRecord:
    """Reject a pending proposal, recording who, when and why; no alias moves. Needs MANAGE on
    the prompt (or admin), like ``approve_prompt``."""
    number = _version_number(version)
    _check_note("reason", reason, required=True)
    user = _require_manage(name, "reject")
    with _refusals_mapped(user.username, name, "MANAGE", "reject"):
        _require_pending(name, number)
        rejected_at = _now()
        _set_tags(
            name,
            number,
            {
                REJECTED_BY_TAG: user.username,
                REJECTED_AT_TAG: rejected_at.isoformat(),
                REJECTION_REASON_TAG: reason,
                STATUS_TAG: REJECTED,
            },
        )
    logger.info("%s rejected prompt %r version %s: %s", user.username, name, number, reason)
    return RejectionRecord(
        name=name,
        version=number,
        rejected_by=user.username,
        rejected_at=rejected_at,
        reason=reason,
        permission_checked=user.authenticated,
    )


def pending_prompts(name: str | None = None) -> list[Proposal]:
    """The pending proposals of prompt ``name``, or of every prompt the caller can read, by name
    and version. Needs READ. Without a name this reads each prompt's versions in turn."""
    from mlflow import MlflowClient

    client = MlflowClient()
    names = [name] if name is not None else [p.name for p in _pages(client.search_prompts)]
    user = _local_user()  # only named if the server refuses
    proposals: list[Proposal] = []
    for prompt_name in names:
        refused = _refusals_mapped(user, prompt_name, "READ", "list the versions of")
        with refused, _missing("name", f"no prompt {prompt_name!r}"):
            versions = _pages(functools.partial(client.search_prompt_versions, prompt_name))
            proposals.extend(_proposal(v) for v in versions if v.tags.get(STATUS_TAG) == PENDING)
    return sorted(proposals, key=lambda p: (p.name, p.version))


def _proposal(version: PromptVersion) -> Proposal:
    proposed_at = version.tags.get(PROPOSED_AT_TAG)
    return Proposal(
        name=version.name,
        version=int(version.version),
        uri=f"prompts:/{version.name}/{version.version}",
        proposed_by=version.tags.get(PROPOSED_BY_TAG),
        proposed_at=datetime.fromisoformat(proposed_at) if proposed_at else None,
        commit_message=version.commit_message,
    )


def _pages(search: Callable[..., Any]) -> Iterator[Any]:
    """Every item of an MLflow paged search, following its page tokens."""
    token = None
    while True:
        page = search(page_token=token)
        yield from page
        token = page.token
        if not token:
            return


# -- versions and tags --


def _version_number(version: Any) -> int:
    text = str(version).strip()
    if isinstance(version, bool) or not text.isdigit() or int(text) < 1:
        raise ArgumentError("version", f"must be a version number >= 1, got {version!r}")
    return int(text)


def _check_note(argument: str, text: Any, *, required: bool) -> None:
    if text is None and not required:
        return
    if not isinstance(text, str) or not text.strip():
        raise ArgumentError(argument, f"must be a non-empty string, got {text!r}")


def _require_pending(name: str, version: int) -> None:
    from mlflow import MlflowClient

    with _missing("version", f"prompt {name!r} has no version {version}"):
        prompt = MlflowClient().get_prompt_version(name, version)
    status = prompt.tags.get(STATUS_TAG)
    if status != PENDING:
        raise ProposalStateError(name, version, status)


def _alias_target(name: str, alias: str) -> int | None:
    """The version ``alias`` points at now, None if it points nowhere yet."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return int(MlflowClient().get_prompt_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code not in _MISSING:
            raise
        return None


def _set_tags(name: str, version: int, tags: Mapping[str, str]) -> None:
    import mlflow

    for key, value in tags.items():
        mlflow.genai.set_prompt_version_tag(name=name, version=version, key=key, value=value)


@contextmanager
def _missing(argument: str, what: str) -> Iterator[None]:
    """The registry's "no such prompt / version" as an ArgumentError saying ``what``."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code not in _MISSING:
            raise
        raise ArgumentError(argument, f"{what}: {exc.message}") from exc


def _now() -> datetime:
    # Whole seconds: the time in a record is then exactly the time in its tag.
    return datetime.now(timezone.utc).replace(microsecond=0)


# -- identity and permissions --


def current_user() -> Identity:
    """Who registry calls are made as: the user an MLflow auth server authenticated (with its
    admin flag), or, with no auth server, the local user, unverified."""
    uri = _registry_uri()
    if not uri.startswith(("http://", "https://")):
        return Identity(_local_user())
    response = _get(uri, _CURRENT_USER)
    if response.status_code in (401, 403):
        raise PermissionDeniedError(
            f"The MLflow server at {uri} did not accept the credentials of user {_local_user()!r} "
            "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)",
            user=_local_user(),
        )
    if _route_missing(response):
        _refuse_old_auth_server(uri)
        return Identity(_local_user())
    user = _json(response, _CURRENT_USER)["user"]
    return Identity(user["username"], is_admin=bool(user["is_admin"]), authenticated=True)


def _require_manage(name: str, action: str) -> Identity:
    """The caller; PermissionDeniedError unless the auth server gives them MANAGE on prompt
    ``name``. With no auth server (``authenticated`` False) there is nothing to check."""
    user = current_user()
    if not user.authenticated:
        logger.info("No MLflow auth server: %s of prompt %r is recorded for local user %r, unchecked",
                    action, name, user.username)
        return user
    if user.is_admin:
        return user
    held = _prompt_permission(name)
    if held != "MANAGE":
        raise PermissionDeniedError(
            f"User {user.username!r} may not {action} prompt {name!r}: that needs MANAGE permission on "
            f"the prompt, and the user has {held or 'no grant on it'}",
            user=user.username,
            prompt=name,
            permission="MANAGE",
        )
    return user


def _prompt_permission(name: str) -> str | None:
    """The caller's permission on prompt ``name`` from their grants: None without a grant (the
    server's unreported default applies)."""
    from mlflow.utils.workspace_context import get_request_workspace
    from mlflow.utils.workspace_utils import DEFAULT_WORKSPACE_NAME

    grants = _json(_get(_registry_uri(), _CURRENT_PERMISSIONS), _CURRENT_PERMISSIONS)["permissions"]
    workspace = get_request_workspace() or DEFAULT_WORKSPACE_NAME
    return _fold_prompt_grants((g for g in grants if g.get("workspace", workspace) == workspace), name)


def _fold_prompt_grants(grants: Iterable[Mapping[str, str]], name: str) -> str | None:
    """Fold grant rows (``resource_type``, ``resource_pattern``, ``permission``) of one workspace
    into the permission on prompt ``name``, as MLflow 3.17's server does: a workspace-admin grant
    is MANAGE; else a DENY on the prompt wins; else the highest grant; None if none applies."""
    levels = []
    for grant in grants:
        kind, pattern, permission = grant["resource_type"], grant["resource_pattern"], grant["permission"]
        if kind == "workspace" and pattern == "*" and permission == "MANAGE":
            return "MANAGE"
        if kind == "prompt" and pattern in ("*", name):
            levels.append(permission)
    if "DENY" in levels:
        return "DENY"
    return max(levels, key=lambda level: _PRIORITY.get(level, 0), default=None)


@contextmanager
def _refusals_mapped(user: str, name: str, permission: str, action: str) -> Iterator[None]:
    """The server's own 401/403 as a PermissionDeniedError."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code not in _REFUSED:
            raise
        raise PermissionDeniedError(
            f"The MLflow server refused to let user {user!r} {action} prompt {name!r}: "
            f"that needs {permission} permission on the prompt",
            user=user,
            prompt=name,
            permission=permission,
        ) from exc


def _registry_uri() -> str:
    import mlflow

    return mlflow.get_registry_uri()


def _local_user() -> str:
    """The configured MLflow user (environment or ~/.mlflow/credentials), else the OS user."""
    from mlflow.utils.credentials import read_mlflow_creds

    configured = read_mlflow_creds().username
    if configured:
        return configured
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment nor the password database
        return "unknown"


def _get(uri: str, path: str, **params: str) -> Any:
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    return http_request(get_default_host_creds(uri), path, "GET", params=params or None)


def _route_missing(response: Any) -> bool:
    # A server without the auth app has no such route: a plain 404 page, not an MLflow JSON error.
    return response.status_code == 404 and "json" not in response.headers.get("Content-Type", "")


def _refuse_old_auth_server(uri: str) -> None:
    """A server with no users/current route may still run an older auth app: refuse, rather than
    approve without the check it would need."""
    if not _route_missing(_get(uri, _GET_USER, username=_local_user())):
        raise MlflowLiteError(
            f"The MLflow server at {uri} runs an auth app that cannot report the caller's permissions "
            f"(no {_CURRENT_USER}); upgrade it to MLflow 3.17 or later to use the approval workflow"
        )


def _json(response: Any, path: str) -> dict:
    from mlflow.utils.rest_utils import verify_rest_response

    return verify_rest_response(response, path).json()
