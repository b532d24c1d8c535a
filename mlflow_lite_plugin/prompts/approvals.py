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
  approved it, when, and the version the alias pointed to before (the one to roll back to). The
  proposer may not approve their own proposal (separation of duties; ``allow_self_approval=True``
  opts out), and the record is signed (below).
- ``verify_approval(name, version)`` (or ``alias="production"``) checks that signature: it refuses
  a record written any other way. ``promote_prompt(name, version, alias)`` moves an alias to a
  version only if its approval verifies (a canary promoted to production, or a rollback).
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
``approve_prompt``, ``reject_prompt``,        MANAGE, or admin    this module, before any write
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
  approvals is therefore checked here, by asking the server for the caller's grants, not by the
  server: it keeps honest editors on the workflow, but an editor who calls MLflow's API directly
  can still move ``production``, though not sign the approval that ``verify_approval(name,
  alias="production")`` asks for. Only READ users are kept out by the server itself.
- **The server cannot tell a user their permission on a prompt.** Its per-user check
  (``/api/3.0/mlflow/users/permissions/get``) refuses ``resource_type="prompt"``. So the check
  reads the caller's own grants (``/api/3.0/mlflow/users/current/permissions``) and folds them as
  the server does: an admin, or a workspace-admin grant, is MANAGE; otherwise an explicit DENY on
  the prompt wins, else the highest grant on the prompt or on all prompts (``*``). A user with no
  grant on the prompt gets the server's ``default_permission``, which the server does not
  report: approvals then need an explicit MANAGE grant.

Whenever the server itself refuses a call (403, or 401 for bad credentials), the error is a
:class:`PermissionDeniedError` naming the user, the prompt and the permission needed.

**Signed approvals.** Since EDIT users can write version tags, tags alone prove nothing: anyone
with EDIT can write ``mlflow_lite_status=approved`` and an approver's name. So ``approve_prompt``
signs its record with HMAC-SHA256 under the key in ``MLFLOW_LITE_APPROVAL_KEY`` (at least 32
bytes, e.g. ``python -c 'import secrets; print(secrets.token_hex(32))'``; when it is not set, the key
file ``~/.mlflow-lite/approval.key`` or ``$MLFLOW_LITE_APPROVAL_KEY_FILE``, created with a random key
readable by its owner only on first use), over the prompt name,
version, alias, approver, time, proposer, previous version, comment, whether the server checked
the permission, and a SHA-256 of the approved content (the template and its
``mlflow_lite_validate`` rules). The key lives only in the environment of the approvers and of
the services that verify approvals (never in MLflow, never with editors); HMAC is symmetric, so
whoever holds the key can sign, and a record signed on one host verifies elsewhere only where the
same key is configured. A key shorter than 32 bytes approves nothing: ``approve_prompt``,
``verify_approval`` and ``promote_prompt`` raise :class:`ApprovalKeyError` before any change, so
no approval exists that could not be told from a forgery. ``verify_approval`` raises
:class:`UnverifiedApprovalError` for a record that is missing, unsigned, altered or signed with
another key, and for a version whose template or rules changed after approval. The proposer
named in a pending version is its ``mlflow_lite_proposed_by`` tag, which an editor could rewrite
before the review; the signed record then keeps the name the approver saw.

With no auth server (a local sqlite or file store, or a server started without
``--app-name basic-auth``) there are no permissions to check: anyone who can reach the store and
holds the approval key can approve, and the record names the local user
(``MLFLOW_TRACKING_USERNAME``, else the OS user), unverified; ``ApprovalRecord.permission_checked``
is then False (and signed as such). An auth server too old to have
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
import hashlib
import hmac
import json
import logging
import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from mlflow_lite_plugin.core.errors import ArgumentError, MlflowLiteError
from mlflow_lite_plugin.prompts.templates import VALIDATE_TAG, Template, _candidate, _check_alias, register_template
from mlflow_lite_plugin.core.uris import is_http_uri

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
APPROVAL_CHECKED_TAG = "mlflow_lite_approval_checked"  # "true" when an auth server vouched for the approver
APPROVED_CONTENT_TAG = "mlflow_lite_approved_content"  # SHA-256 of the template and rules approved
APPROVAL_SIGNATURE_TAG = "mlflow_lite_approval_signature"
_WORKFLOW_TAGS = frozenset({
    STATUS_TAG, PROPOSED_BY_TAG, PROPOSED_AT_TAG, APPROVED_BY_TAG, APPROVED_AT_TAG, APPROVED_ALIAS_TAG,
    APPROVAL_COMMENT_TAG, PREVIOUS_VERSION_TAG, REJECTED_BY_TAG, REJECTED_AT_TAG, REJECTION_REASON_TAG,
    APPROVAL_CHECKED_TAG, APPROVED_CONTENT_TAG, APPROVAL_SIGNATURE_TAG,
})

APPROVAL_KEY_ENV = "MLFLOW_LITE_APPROVAL_KEY"
APPROVAL_KEY_FILE_ENV = "MLFLOW_LITE_APPROVAL_KEY_FILE"
_MIN_KEY_BYTES = 32  # HMAC-SHA256's own output size: a shorter key is weaker than the MAC
# Names the algorithm and the layout of the signed fields, so either can change without old
# records verifying under new rules.
_SIGNATURE_SCHEME = "hmac-sha256-v1"

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
    the credentials themselves; ``permission`` is None when a rule, not a grant, refused: see
    :class:`SelfApprovalError`)."""

    def __init__(self, message: str, *, user: str, prompt: str | None = None, permission: str | None = None):
        super().__init__(message)
        self.user = user
        self.prompt = prompt
        self.permission = permission


class SelfApprovalError(PermissionDeniedError):
    """Separation of duties: the proposer of a version may not approve it (``rule`` names it);
    ``approve_prompt(..., allow_self_approval=True)`` opts out."""

    rule = "separation of duties"

    def __init__(self, user: str, name: str, version: int, proposed_by: str | None):
        why = (
            f"user {user!r} proposed it" if proposed_by is not None
            else "it records no proposer (mlflow_lite_proposed_by), so it cannot be told apart from one"
        )
        super().__init__(
            f"User {user!r} may not approve prompt {name!r} version {version}: {why}, and separation of "
            "duties needs a reviewer other than the proposer (approve_prompt(..., allow_self_approval=True) "
            "opts out)",
            user=user,
            prompt=name,
        )
        self.version = version
        self.proposed_by = proposed_by


class ApprovalKeyError(MlflowLiteError):
    """The approval key (``MLFLOW_LITE_APPROVAL_KEY`` or the key file) is too short: approvals are
    neither signed nor verified with it."""


class UnverifiedApprovalError(MlflowLiteError):
    """The version has no approval record that verifies: ``reason`` says what is wrong (no
    record, an unsigned or altered one, another key, or content changed since the approval)."""

    def __init__(self, name: str, version: int, reason: str):
        super().__init__(f"Prompt {name!r} version {version} has no verifiable approval: {reason}")
        self.name = name
        self.version = version
        self.reason = reason


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
    proposed_by: str | None = None


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
    name: str,
    version: int | str,
    *,
    alias: str = "production",
    comment: str | None = None,
    allow_self_approval: bool = False,
) -> ApprovalRecord:
    """Approve a pending proposal: point ``alias`` at it and record, signed, who approved it and when.

    Needs MANAGE on the prompt (or admin), checked with the auth server before anything moves;
    raises PermissionDeniedError otherwise, SelfApprovalError if the caller proposed it (unless
    ``allow_self_approval``), ApprovalKeyError without ``MLFLOW_LITE_APPROVAL_KEY``, and
    ProposalStateError unless the version is pending. Order: the alias, then the record, status
    last, so a failure half-way leaves the version pending and approving it again completes the
    approval."""
    import mlflow

    number = _version_number(version)
    _check_alias(alias)
    _check_note("comment", comment, required=False)
    if not isinstance(allow_self_approval, bool):
        raise ArgumentError("allow_self_approval", f"must be True or False, got {allow_self_approval!r}")
    key = _approval_key()
    user = _require_manage(name, "approve")
    with _refusals_mapped(user.username, name, "MANAGE", "approve"):
        prompt = _require_pending(name, number)
        proposed_by = prompt.tags.get(PROPOSED_BY_TAG)
        if not allow_self_approval and proposed_by in (None, user.username):
            raise SelfApprovalError(user.username, name, number, proposed_by)
        previous = _alias_target(name, alias)
        if previous == number:  # the alias was moved there without the workflow
            previous = None
        mlflow.genai.set_prompt_alias(name=name, alias=alias, version=number)
        record = ApprovalRecord(
            name=name,
            version=number,
            alias=alias,
            approved_by=user.username,
            approved_at=_now(),
            previous_version=previous,
            comment=comment,
            permission_checked=user.authenticated,
            proposed_by=proposed_by,
        )
        content = _content_digest(prompt)
        tags = _record_tags(record, content, _sign(key, record, content))
        # A half-finished earlier approval may have left a comment or previous version this record
        # does not have: verifying reads them back, so they go.
        for stale in (APPROVAL_COMMENT_TAG, PREVIOUS_VERSION_TAG):
            if stale in prompt.tags and stale not in tags:
                mlflow.genai.delete_prompt_version_tag(name=name, version=number, key=stale)
        _set_tags(name, number, {**tags, STATUS_TAG: APPROVED})
    logger.info("%s approved prompt %r version %s as @%s (was %s)", user.username, name, number, alias, previous)
    return record


def verify_approval(name: str, version: int | str | None = None, *, alias: str | None = None) -> ApprovalRecord:
    """The approval record of prompt ``name`` at ``version`` (or at the version ``alias`` points to,
    e.g. ``alias="production"``), after checking its signature with ``MLFLOW_LITE_APPROVAL_KEY``
    and that the template and rules are the ones approved. Raises UnverifiedApprovalError if it does
    not verify (no record, unsigned, altered, another key, changed content), ApprovalKeyError
    without a key. Needs READ."""
    from mlflow import MlflowClient

    if (version is None) == (alias is None):
        raise ArgumentError("version", "give either a version or alias=, not both nor neither")
    number = None if version is None else _version_number(version)
    if alias is not None:
        _check_alias(alias)
    key = _approval_key()
    client = MlflowClient()
    with _refusals_mapped(_local_user(), name, "READ", "verify an approval of"):
        if number is None:
            with _missing("alias", f"prompt {name!r} has no alias {alias!r}"):
                prompt = client.get_prompt_version_by_alias(name, alias)
        else:
            with _missing("version", f"prompt {name!r} has no version {number}"):
                prompt = client.get_prompt_version(name, number)
    return _verified(prompt, key)


def promote_prompt(name: str, version: int | str, *, alias: str = "production") -> ApprovalRecord:
    """Point ``alias`` at an approved version of prompt ``name`` (a version approved as a canary,
    or the previous production version to roll back to): the promotion path for approved prompts.
    Needs MANAGE (or admin), like ``approve_prompt``; the version's approval must verify
    (``verify_approval``), else UnverifiedApprovalError and nothing moves. Returns that approval."""
    import mlflow
    from mlflow import MlflowClient

    number = _version_number(version)
    _check_alias(alias)
    key = _approval_key()
    user = _require_manage(name, "promote")
    with _refusals_mapped(user.username, name, "MANAGE", "promote"):
        with _missing("version", f"prompt {name!r} has no version {number}"):
            prompt = MlflowClient().get_prompt_version(name, number)
        record = _verified(prompt, key)
        mlflow.genai.set_prompt_alias(name=name, alias=alias, version=number)
    logger.info("%s promoted prompt %r version %s (approved by %s) to @%s",
                user.username, name, number, record.approved_by, alias)
    return record


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


def _require_pending(name: str, version: int) -> PromptVersion:
    from mlflow import MlflowClient

    with _missing("version", f"prompt {name!r} has no version {version}"):
        prompt = MlflowClient().get_prompt_version(name, version)
    status = prompt.tags.get(STATUS_TAG)
    if status != PENDING:
        raise ProposalStateError(name, version, status)
    return prompt


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


# -- signed approval records --


def _approval_key() -> bytes:
    """The HMAC key: ``MLFLOW_LITE_APPROVAL_KEY``, else the key file (created on first use, so
    approvals work out of the box on one host). ApprovalKeyError, saying how to set it, for a short
    key: approving unsigned would leave records no one can tell from forgeries."""
    key = os.environ.get(APPROVAL_KEY_ENV, "").strip().encode()
    source = APPROVAL_KEY_ENV
    if not key:
        path = approval_key_path()
        key, source = _key_from_file(path), str(path)
    if len(key) < _MIN_KEY_BYTES:
        raise ApprovalKeyError(
            f"The approval key in {source} holds {len(key)} bytes, fewer than {_MIN_KEY_BYTES}: approvals are "
            f"signed with it and verified against it. Set {APPROVAL_KEY_ENV} to a random secret of at least "
            f"{_MIN_KEY_BYTES} bytes (python -c 'import secrets; print(secrets.token_hex(32))') in the "
            "environment of the approvers and of the services that verify approvals only, never in MLflow "
            "nor for editors"
        )
    return key


def approval_key_path() -> Path:
    """``$MLFLOW_LITE_APPROVAL_KEY_FILE``, else ``~/.mlflow-lite/approval.key`` (beside the budget
    ledger): the key used when ``MLFLOW_LITE_APPROVAL_KEY`` is not set."""
    configured = os.environ.get(APPROVAL_KEY_FILE_ENV)
    return Path(configured) if configured else Path.home() / ".mlflow-lite" / "approval.key"


def _key_from_file(path: Path) -> bytes:
    """Read the key file, creating it with a random key, readable by its owner only, if missing."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    try:
        # O_EXCL: of two processes creating it at once, one writes and both use its key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    logger.warning(
        "Created the approval key %s (%s is not set). Approvals signed here verify only where the same key "
        "is configured: set %s to its content for other hosts and services.",
        path, APPROVAL_KEY_ENV, APPROVAL_KEY_ENV,
    )
    return key


def _content_digest(prompt: PromptVersion) -> str:
    """SHA-256 of what an approval approves: the template and its validation rules (a tag, which
    an editor could change after the approval), and MLflow's response format and model config."""
    content = {
        "template": prompt.template,
        "validate": prompt.tags.get(VALIDATE_TAG),
        "response_format": prompt.response_format,
        "model_config": prompt.model_config,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _sign(key: bytes, record: ApprovalRecord, content: str) -> str:
    fields = {
        "scheme": _SIGNATURE_SCHEME,
        "name": record.name,
        "version": record.version,
        "alias": record.alias,
        "approved_by": record.approved_by,
        "approved_at": record.approved_at.isoformat(),
        "proposed_by": record.proposed_by,
        "previous_version": record.previous_version,
        "comment": record.comment,
        "permission_checked": record.permission_checked,
        "content": content,
    }
    # Canonical JSON: each field is delimited, so no two records sign the same bytes.
    message = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return f"{_SIGNATURE_SCHEME}:{hmac.new(key, message, hashlib.sha256).hexdigest()}"


def _record_tags(record: ApprovalRecord, content: str, signature: str) -> dict[str, str]:
    tags = {
        APPROVED_BY_TAG: record.approved_by,
        APPROVED_AT_TAG: record.approved_at.isoformat(),
        APPROVED_ALIAS_TAG: record.alias,
        APPROVAL_CHECKED_TAG: "true" if record.permission_checked else "false",
        APPROVED_CONTENT_TAG: content,
    }
    if record.comment is not None:
        tags[APPROVAL_COMMENT_TAG] = record.comment
    if record.previous_version is not None:
        tags[PREVIOUS_VERSION_TAG] = str(record.previous_version)
    return {**tags, APPROVAL_SIGNATURE_TAG: signature}


def _verified(prompt: PromptVersion, key: bytes) -> ApprovalRecord:
    """The approval record in ``prompt``'s tags, if its signature and content check out."""
    name, number, tags = prompt.name, int(prompt.version), prompt.tags

    def refuse(reason: str) -> UnverifiedApprovalError:
        return UnverifiedApprovalError(name, number, reason)

    status = tags.get(STATUS_TAG)
    if status != APPROVED:
        raise refuse(f"its status is {status or 'not set'}, not {APPROVED}")
    required = (APPROVED_BY_TAG, APPROVED_AT_TAG, APPROVED_ALIAS_TAG, APPROVAL_CHECKED_TAG, APPROVED_CONTENT_TAG,
                APPROVAL_SIGNATURE_TAG)
    absent = [tag for tag in required if tag not in tags]
    if absent:
        raise refuse(
            f"the record has no {', '.join(absent)}: it is unsigned (written through MLflow's API, or by an "
            "approve_prompt from before approvals were signed)"
        )
    try:
        previous = tags.get(PREVIOUS_VERSION_TAG)
        record = ApprovalRecord(
            name=name,
            version=number,
            alias=tags[APPROVED_ALIAS_TAG],
            approved_by=tags[APPROVED_BY_TAG],
            approved_at=datetime.fromisoformat(tags[APPROVED_AT_TAG]),
            previous_version=None if previous is None else int(previous),
            comment=tags.get(APPROVAL_COMMENT_TAG),
            permission_checked=tags[APPROVAL_CHECKED_TAG] == "true",
            proposed_by=tags.get(PROPOSED_BY_TAG),
        )
    except ValueError as exc:
        raise refuse(f"the record is malformed ({exc})") from exc
    expected = _sign(key, record, tags[APPROVED_CONTENT_TAG])
    if not hmac.compare_digest(expected.encode(), tags[APPROVAL_SIGNATURE_TAG].encode()):
        raise refuse(
            f"its signature does not match: the record was forged or altered, or signed with a key other than "
            f"this {APPROVAL_KEY_ENV}"
        )
    if not hmac.compare_digest(tags[APPROVED_CONTENT_TAG].encode(), _content_digest(prompt).encode()):
        raise refuse(f"its template or validation rules ({VALIDATE_TAG}) changed after it was approved")
    return record


# -- identity and permissions --


def current_user() -> Identity:
    """Who registry calls are made as: the user an MLflow auth server authenticated (with its
    admin flag), or, with no auth server, the local user, unverified."""
    uri = _registry_uri()
    if not is_http_uri(uri, "registry_uri"):
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
