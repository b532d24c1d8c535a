"""Who the caller is, and their permission on a prompt, from MLflow's basic-auth server.

Who may do what is MLflow's business: start the server with ``mlflow server --app-name basic-auth``
(which needs ``pip install mlflow[auth]``), give each person a user, and grant each user a
permission on each prompt (an admin, with ``mlflow.server.get_app_client("basic-auth",
tracking_uri).grant_user_permission(user, "prompt", name, "READ")``). Clients authenticate with
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``; MLflow reads them on every request.

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
``approve_prompt``, ``reject_prompt``,        MANAGE, or admin    this package, before any write
``promote_prompt``
``verify_approval``                           READ                the server
move an alias with MLflow's own               EDIT                the server
``mlflow.genai.set_prompt_alias``
delete a version or an alias                  MANAGE              the server
============================================  ==================  =============================

So the roles are: a READ user runs prompts and reads traces and cannot change anything (the
server answers 403); an EDIT user also proposes; a MANAGE user (or an admin) also approves and
rejects. Any authenticated user may create a new prompt (with workspaces on, a member of the
workspace), and MLflow gives its creator MANAGE on it: whoever proposes a new prompt could approve
its first version, but separation of duties needs another reviewer unless the proposer passes
``allow_self_approval=True``.

Two limits of MLflow 3.17 shape this:

- **The server lets EDIT move aliases.** ``SetRegisteredModelAlias`` needs only EDIT on the prompt
  (deleting an alias needs MANAGE), and an EDIT user can also tag versions. The MANAGE rule for
  approvals is therefore checked here (``require_manage``), by asking the server for the caller's
  grants, not by the server: it keeps honest editors on the workflow, but an editor who calls
  MLflow's API directly can still move ``production``, though not sign the approval that
  ``verify_approval(name, alias="production")`` asks for. Only READ users are kept out by the
  server itself.
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
``--app-name basic-auth``) there are no permissions to check, and the caller is the local user
(``MLFLOW_TRACKING_USERNAME``, else the OS user), unverified. An auth server too old to have
``/api/2.0/mlflow/users/current`` is refused rather than treated as no auth. Registries that are
not an MLflow server (``databricks-uc``) enforce their own permissions, which this module does
not check.

The identity is process-wide (environment variables): switch users only after a client's traces
are flushed, since they are written in the background with the credentials of the moment.
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mlflow_lite_plugin.core.errors import MlflowLiteError
from mlflow_lite_plugin.core.uris import is_http_uri

logger = logging.getLogger(__name__)

# The auth app's routes (mlflow.server.auth.routes), spelled out: importing that module imports
# the whole server (Flask, Flask-WTF).
_CURRENT_USER = "/api/2.0/mlflow/users/current"
_CURRENT_PERMISSIONS = "/api/3.0/mlflow/users/current/permissions"
_GET_USER = "/api/2.0/mlflow/users/get"  # older auth servers have this, without users/current

_PRIORITY = {"NO_PERMISSIONS": 0, "READ": 1, "USE": 2, "EDIT": 3, "MANAGE": 4}

# What an MLflow REST error says when the auth app refused a call.
_REFUSED = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED"})


class PermissionDeniedError(MlflowLiteError):
    """The caller may not do this to the prompt: ``user``, ``prompt`` and the ``permission`` it
    needs name who, what and why (``prompt`` and ``permission`` are None when the server refused
    the credentials themselves; ``permission`` is None when a rule, not a grant, refused: see
    :class:`SelfApprovalError`)."""

    def __init__(self, message: str, *, user: str, prompt: str | None = None, permission: str | None = None):
        super().__init__(message)
        self.user = user
        self.prompt = prompt
        self.permission = permission


@dataclass(frozen=True)
class Identity:
    """Who the registry calls are made as. ``authenticated``: an MLflow auth server vouched for
    ``username``; otherwise it is the local user and nothing was checked."""

    username: str
    is_admin: bool = False
    authenticated: bool = False


def current_user() -> Identity:
    """Who registry calls are made as: the user an MLflow auth server authenticated (with its
    admin flag), or, with no auth server, the local user, unverified."""
    uri = _registry_uri()
    if not is_http_uri(uri, "registry_uri"):
        return Identity(local_user())
    response = _get(uri, _CURRENT_USER)
    if response.status_code in (401, 403):
        raise PermissionDeniedError(
            f"The MLflow server at {uri} did not accept the credentials of user {local_user()!r} "
            "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)",
            user=local_user(),
        )
    if _route_missing(response):
        _refuse_old_auth_server(uri)
        return Identity(local_user())
    user = _json(response, _CURRENT_USER)["user"]
    return Identity(user["username"], is_admin=bool(user["is_admin"]), authenticated=True)


def require_manage(name: str, action: str) -> Identity:
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
def refusals_mapped(user: str, name: str, permission: str, action: str) -> Iterator[None]:
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


def local_user() -> str:
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
    if not _route_missing(_get(uri, _GET_USER, username=local_user())):
        raise MlflowLiteError(
            f"The MLflow server at {uri} runs an auth app that cannot report the caller's permissions "
            f"(no {_CURRENT_USER}); upgrade it to MLflow 3.17 or later to use the approval workflow"
        )


def _json(response: Any, path: str) -> dict:
    from mlflow.utils.rest_utils import verify_rest_response

    return verify_rest_response(response, path).json()
