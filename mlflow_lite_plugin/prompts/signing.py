"""Signed approval records: the key, and the HMAC-SHA256 signature of an approval.

Since EDIT users can write version tags, tags alone prove nothing: anyone with EDIT can write
``mlflow_lite_status=approved`` and an approver's name. So ``approve_prompt`` signs its record with
HMAC-SHA256 under the key in ``MLFLOW_LITE_APPROVAL_KEY`` (at least 32 bytes, e.g. ``python -c
'import secrets; print(secrets.token_hex(32))'``; when it is not set, the key file
``~/.mlflow-lite/approval.key`` or ``$MLFLOW_LITE_APPROVAL_KEY_FILE``, created with a random key
readable by its owner only on first use), over the prompt name, version, alias, approver, time,
proposer, previous version, comment, whether the server checked the permission, and a SHA-256 of
the approved content (the template and its ``mlflow_lite_validate`` rules). The key lives only
in the environment of the approvers and of the services that verify approvals (never in MLflow,
never with editors); HMAC is symmetric, so whoever holds the key can sign, and a record signed on
one host verifies elsewhere only where the same key is configured. A key shorter than 32 bytes
approves nothing: ``approve_prompt``, ``verify_approval`` and ``promote_prompt`` raise
:class:`ApprovalKeyError` before any change, so no approval exists that could not be told from a
forgery. ``verify_approval`` raises
:class:`UnverifiedApprovalError` for a record that is missing, unsigned, altered or signed with
another key, and for a version whose template or rules changed after approval. The proposer
named in a pending version is its ``mlflow_lite_proposed_by`` tag, which an editor could rewrite
before the review; the signed record then keeps the name the approver saw.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow_lite_plugin.core.errors import MlflowLiteError
from mlflow_lite_plugin.prompts.registry import VALIDATE_TAG

if TYPE_CHECKING:
    from mlflow.entities.model_registry import PromptVersion

logger = logging.getLogger(__name__)

APPROVAL_KEY_ENV = "MLFLOW_LITE_APPROVAL_KEY"
APPROVAL_KEY_FILE_ENV = "MLFLOW_LITE_APPROVAL_KEY_FILE"
_MIN_KEY_BYTES = 32  # HMAC-SHA256's own output size: a shorter key is weaker than the MAC
# Names the algorithm and the layout of the signed fields, so either can change without old
# records verifying under new rules.
_SIGNATURE_SCHEME = "hmac-sha256-v1"


class ApprovalKeyError(MlflowLiteError):
    """The approval key (``MLFLOW_LITE_APPROVAL_KEY`` or the key file) is too short: approvals are
    neither signed nor verified with it."""


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


def approval_key() -> bytes:
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


def content_digest(prompt: PromptVersion) -> str:
    """SHA-256 of what an approval approves: the template and its validation rules (a tag, which
    an editor could change after the approval), and MLflow's response format and model config."""
    content = {
        "template": prompt.template,
        "validate": prompt.tags.get(VALIDATE_TAG),
        "response_format": prompt.response_format,
        "model_config": prompt.model_config,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sign(key: bytes, record: ApprovalRecord, content: str) -> str:
    """The signature of ``record`` and its ``content_digest``, prefixed with the scheme."""
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
