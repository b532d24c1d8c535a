"""Shared prompts with an approval workflow, on MLflow's Prompt Registry and MLflow's own auth.

Templates live in MLflow's Prompt Registry (``registry.py``), so a team shares them through one
MLflow server; who may do what is the server's business (``auth.py``: users, grants, and what
each permission allows).

The workflow:

- ``propose_prompt(name, template)`` registers a new version that nobody uses yet, tagged
  ``mlflow_lite_status=pending`` with who proposed it and when.
- ``approve_prompt(name, version)`` moves the ``production`` alias to it, so
  ``query_with_template(template="name@production")`` uses it, and tags it ``approved`` with who
  approved it, when, and the version the alias pointed to before (the one to roll back to). The
  proposer may not approve their own proposal (separation of duties; ``allow_self_approval=True``
  opts out), and the record is signed (``signing.py``).
- ``verify_approval(name, version)`` (or ``alias="production"``) checks that signature: it refuses
  a record written any other way. ``promote_prompt(name, version, alias)`` moves an alias to a
  version only if its approval verifies (a canary promoted to production, or a rollback).
- ``reject_prompt(name, version, reason)`` tags it ``rejected`` with who, when and why.
- ``pending_prompts(name=None)`` lists the proposals waiting for a review.

Only a pending version can be approved or rejected. Statuses record review decisions, so an
approved version stays ``approved`` after a later one is promoted; where an alias points is
MLflow's alias itself.

With no auth server there are no permissions to check: anyone who can reach the store and holds
the approval key (``signing.py``) can approve, and the record names the local user, unverified;
``ApprovalRecord.permission_checked`` is then False (and signed as such).

MLflow caches loaded prompts per registry URI, not per user, so in one process a prompt one user
loaded can be served to another from the cache (``MLFLOW_ALIAS_PROMPT_CACHE_TTL_SECONDS`` and
``MLFLOW_VERSION_PROMPT_CACHE_TTL_SECONDS`` set to 0 turn the cache off). Another process sees a
moved alias after ``MLFLOW_ALIAS_PROMPT_CACHE_TTL_SECONDS`` (60 s by default); the process that
approved sees it at once.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mlflow_lite_plugin.core.errors import ArgumentError, MlflowLiteError
from mlflow_lite_plugin.prompts.auth import (
    PermissionDeniedError,
    current_user,
    local_user,
    refusals_mapped,
    require_manage,
)
from mlflow_lite_plugin.prompts.registry import (
    MISSING,
    VALIDATE_TAG,
    check_alias,
    checked_candidate,
    register_template,
    version_number,
)
from mlflow_lite_plugin.prompts.rendering import Template
from mlflow_lite_plugin.prompts.signing import APPROVAL_KEY_ENV, ApprovalRecord, approval_key, content_digest, sign
from mlflow_lite_plugin.tracing.schema import (  # the version tags of the approval workflow
    APPROVAL_CHECKED_TAG,
    APPROVAL_COMMENT_TAG,
    APPROVAL_SIGNATURE_TAG,
    APPROVED_ALIAS_TAG,
    APPROVED_AT_TAG,
    APPROVED_BY_TAG,
    APPROVED_CONTENT_TAG,
    PREVIOUS_VERSION_TAG,
    PROPOSED_AT_TAG,
    PROPOSED_BY_TAG,
    REJECTED_AT_TAG,
    REJECTED_BY_TAG,
    REJECTION_REASON_TAG,
    STATUS_TAG,
)

if TYPE_CHECKING:
    from mlflow.entities.model_registry import PromptVersion

logger = logging.getLogger(__name__)

_WORKFLOW_TAGS = frozenset({
    STATUS_TAG, PROPOSED_BY_TAG, PROPOSED_AT_TAG, APPROVED_BY_TAG, APPROVED_AT_TAG, APPROVED_ALIAS_TAG,
    APPROVAL_COMMENT_TAG, PREVIOUS_VERSION_TAG, REJECTED_BY_TAG, REJECTED_AT_TAG, REJECTION_REASON_TAG,
    APPROVAL_CHECKED_TAG, APPROVED_CONTENT_TAG, APPROVAL_SIGNATURE_TAG,
})

PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"


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
class Proposal:
    """A prompt version waiting for review."""

    name: str
    version: int
    uri: str
    proposed_by: str | None
    proposed_at: datetime | None
    commit_message: str | None


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
    checked_candidate(name, template, system)  # bad arguments fail before any network call
    if tags is not None and not isinstance(tags, Mapping):
        raise ArgumentError("tags", f"must be a dict of str to str, got {tags!r}")
    reserved = sorted(_WORKFLOW_TAGS.intersection(tags or {}))
    if reserved:
        raise ArgumentError("tags", f"{', '.join(reserved)} are set by the approval workflow")
    user = current_user()
    proposed_at = _now().isoformat()
    proposal_tags = {**(tags or {}), STATUS_TAG: PENDING, PROPOSED_BY_TAG: user.username, PROPOSED_AT_TAG: proposed_at}
    # In the create call itself, so the version is never visible without its pending status.
    with refusals_mapped(user.username, name, "EDIT", "propose a version of"):
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

    number = version_number(version)
    check_alias(alias)
    _check_note("comment", comment, required=False)
    if not isinstance(allow_self_approval, bool):
        raise ArgumentError("allow_self_approval", f"must be True or False, got {allow_self_approval!r}")
    key = approval_key()
    user = require_manage(name, "approve")
    with refusals_mapped(user.username, name, "MANAGE", "approve"):
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
        content = content_digest(prompt)
        tags = _record_tags(record, content, sign(key, record, content))
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
    number = None if version is None else version_number(version)
    if alias is not None:
        check_alias(alias)
    key = approval_key()
    client = MlflowClient()
    with refusals_mapped(local_user(), name, "READ", "verify an approval of"):
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

    number = version_number(version)
    check_alias(alias)
    key = approval_key()
    user = require_manage(name, "promote")
    with refusals_mapped(user.username, name, "MANAGE", "promote"):
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
    number = version_number(version)
    _check_note("reason", reason, required=True)
    user = require_manage(name, "reject")
    with refusals_mapped(user.username, name, "MANAGE", "reject"):
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
    user = local_user()  # only named if the server refuses
    proposals: list[Proposal] = []
    for prompt_name in names:
        refused = refusals_mapped(user, prompt_name, "READ", "list the versions of")
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
        if exc.error_code not in MISSING:
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
        if exc.error_code not in MISSING:
            raise
        raise ArgumentError(argument, f"{what}: {exc.message}") from exc


def _now() -> datetime:
    # Whole seconds: the time in a record is then exactly the time in its tag.
    return datetime.now(timezone.utc).replace(microsecond=0)


# -- the signed record in a version's tags --


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
    expected = sign(key, record, tags[APPROVED_CONTENT_TAG])
    if not hmac.compare_digest(expected.encode(), tags[APPROVAL_SIGNATURE_TAG].encode()):
        raise refuse(
            f"its signature does not match: the record was forged or altered, or signed with a key other than "
            f"this {APPROVAL_KEY_ENV}"
        )
    if not hmac.compare_digest(tags[APPROVED_CONTENT_TAG].encode(), content_digest(prompt).encode()):
        raise refuse(f"its template or validation rules ({VALIDATE_TAG}) changed after it was approved")
    return record
