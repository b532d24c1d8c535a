"""Approvals that hold: the MANAGE check whatever the URI's case, separation of duties, and signed
records that a forger with EDIT cannot fake (against a real ``mlflow server --app-name basic-auth``,
and on the tests' local sqlite store where no server is needed)."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import mlflow
import pytest
from mlflow import MlflowClient

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.prompts.approvals import approve_prompt, propose_prompt
from mlflow_lite_plugin.prompts.auth import Identity, current_user
from mlflow_lite_plugin.prompts.registry import register_template

from tests.prompts.test_collaboration import (  # noqa: F401  (fixtures, used by name)
    TEXT_V1,
    TEXT_V2,
    _tracing_follows_the_tracking_uri,
    act_as,
    auth_server,
    production_version,
    prompt,
    team,
    unique,
    version_tags,
)

KEY = "hardening-approval-key-0123456789abcdef"
TEXT_V3 = "Answer in one friendly sentence: {{question}}"


@pytest.fixture(autouse=True)
def approval_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_LITE_APPROVAL_KEY", KEY)


def alias_target(name: str, alias: str) -> int | None:
    try:
        return int(MlflowClient().get_prompt_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


# -- the MANAGE check, however the URI is spelled --


@pytest.mark.slow
def test_an_uppercase_scheme_still_needs_manage(team, prompt, act_as, monkeypatch):
    act_as("editor")
    propose_prompt(prompt, TEXT_V2)
    # MLflow reads the scheme case-insensitively and talks to the same auth server.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team.url.replace("http://", "HTTP://", 1))
    assert current_user() == Identity("editor", is_admin=False, authenticated=True)
    with pytest.raises(ml.PermissionDeniedError) as exc:
        approve_prompt(prompt, 2)
    assert (exc.value.user, exc.value.permission) == ("editor", "MANAGE")
    assert "has EDIT" in str(exc.value)
    assert production_version(prompt) == 1
    assert version_tags(prompt, 2)["mlflow_lite_status"] == "pending"

    act_as("owner")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team.url.replace("http://", "HTTP://", 1))
    assert approve_prompt(prompt, 2).permission_checked is True
    assert production_version(prompt) == 2


@pytest.mark.parametrize(
    "uri, scheme",
    [
        ("HTTP://127.0.0.1:5000", "http"),
        ("hTTpS://mlflow.example.com", "https"),
        ("sqlite:///tmp/mlflow.db", "sqlite"),
        ("SQLITE:///tmp/mlflow.db", "sqlite"),
        ("FILE:///tmp/mlruns", "file"),
        ("Databricks://profile", "databricks"),
        ("databricks-uc", ""),  # MLflow's bare profile form: no scheme
        ("/tmp/mlruns", ""),
        ("mlruns", ""),
    ],
)
def test_schemes_are_read_case_insensitively(uri, scheme):
    from mlflow_lite_plugin.core import uris

    assert uris.uri_scheme(uri) == scheme
    assert uris.is_http_uri(uri) == (scheme in ("http", "https"))


def test_a_malformed_uri_is_refused_not_read_as_a_path():
    from mlflow_lite_plugin.core import uris

    with pytest.raises(ml.ArgumentError) as exc:
        uris.uri_scheme("HTTP://[::1", "registry_uri")
    assert exc.value.argument == "registry_uri"
    assert "not a valid URI" in str(exc.value)


# -- separation of duties --


@pytest.mark.slow
def test_a_manager_may_not_approve_their_own_proposal(prompt, act_as):
    act_as("owner")
    propose_prompt(prompt, TEXT_V2)
    with pytest.raises(ml.SelfApprovalError) as exc:
        approve_prompt(prompt, 2)
    assert isinstance(exc.value, ml.PermissionDeniedError)
    assert (exc.value.user, exc.value.prompt, exc.value.proposed_by) == ("owner", prompt, "owner")
    assert "separation of duties" in str(exc.value) and "allow_self_approval=True" in str(exc.value)
    assert production_version(prompt) == 1
    assert version_tags(prompt, 2)["mlflow_lite_status"] == "pending"

    act_as("admin")  # an admin counts as MANAGE, and the rule binds admins as well
    propose_prompt(prompt, TEXT_V3)
    with pytest.raises(ml.SelfApprovalError):
        approve_prompt(prompt, 3)

    act_as("owner")  # the explicit opt-out
    record = approve_prompt(prompt, 2, allow_self_approval=True)
    assert (record.approved_by, record.proposed_by) == ("owner", "owner")
    assert production_version(prompt) == 2
    assert ml.verify_approval(prompt, 2) == record  # signed as a self-approval, for all to see


def test_without_auth_the_same_local_user_may_not_approve_their_own_proposal(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    name = unique()
    register_template(name, TEXT_V1, alias="production")
    propose_prompt(name, TEXT_V2)
    with pytest.raises(ml.SelfApprovalError, match="separation of duties"):
        approve_prompt(name, 2)
    # A version tagged pending without a proposer cannot be checked: refused the same way.
    register_template(name, TEXT_V3, tags={"mlflow_lite_status": "pending"})
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    with pytest.raises(ml.SelfApprovalError, match="records no proposer"):
        approve_prompt(name, 3)
    assert production_version(name) == 1

    record = approve_prompt(name, 2)
    assert (record.approved_by, record.proposed_by, record.permission_checked) == ("bob", "alice", False)
    assert ml.verify_approval(name, alias="production") == record


# -- signed records --


def _forge(name: str, version: int, tags: dict[str, str]) -> None:
    """What an EDIT user can do with MLflow's own API: write any version tag, move any alias."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_prompt_version_tag(name, str(version), key, value)
    client.set_prompt_alias(name, "production", version)


@pytest.mark.slow
def test_records_forged_by_an_editor_do_not_verify_nor_promote(prompt, act_as):
    act_as("editor")
    propose_prompt(prompt, TEXT_V2)
    propose_prompt(prompt, TEXT_V3)
    act_as("owner")
    genuine = approve_prompt(prompt, 3, alias="canary")
    assert ml.verify_approval(prompt, 3) == genuine

    act_as("editor")
    # The record approve_prompt wrote before records were signed, naming the owner.
    _forge(prompt, 2, {
        "mlflow_lite_approved_by": "owner",
        "mlflow_lite_approved_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "mlflow_lite_approved_alias": "production",
        "mlflow_lite_status": "approved",
    })
    assert production_version(prompt) == 2  # MLflow lets EDIT do this; verifying is what catches it
    with pytest.raises(ml.UnverifiedApprovalError, match="it is unsigned") as exc:
        ml.verify_approval(prompt, alias="production")
    assert (exc.value.name, exc.value.version) == (prompt, 2)
    # The owner's genuine signature, replayed onto another version.
    _forge(prompt, 2, {k: v for k, v in version_tags(prompt, 3).items() if k.startswith("mlflow_lite_approv")})
    with pytest.raises(ml.UnverifiedApprovalError, match="signature does not match"):
        ml.verify_approval(prompt, 2)

    act_as("reader")  # verifying needs READ only
    with pytest.raises(ml.UnverifiedApprovalError):
        ml.verify_approval(prompt, 2)

    act_as("owner")  # the promotion path refuses the forged record and moves nothing
    with pytest.raises(ml.UnverifiedApprovalError):
        ml.promote_prompt(prompt, 2, alias="stable")
    assert alias_target(prompt, "stable") is None


@pytest.mark.slow
def test_an_altered_record_or_rules_do_not_verify(prompt, act_as):
    act_as("editor")
    propose_prompt(prompt, TEXT_V2, validate={"max_length": 400})
    act_as("owner")
    approve_prompt(prompt, 2, comment="ok")
    assert ml.verify_approval(prompt, 2).comment == "ok"

    act_as("editor")
    client = MlflowClient()
    client.set_prompt_version_tag(prompt, "2", "mlflow_lite_validate", '{"max_length": 100000}')
    with pytest.raises(ml.UnverifiedApprovalError, match=r"validation rules .* changed after it was approved"):
        ml.verify_approval(prompt, 2)
    client.set_prompt_version_tag(prompt, "2", "mlflow_lite_validate", '{"max_length": 400}')
    assert ml.verify_approval(prompt, 2).approved_by == "owner"  # the approved rules again
    client.set_prompt_version_tag(prompt, "2", "mlflow_lite_approved_by", "admin")
    with pytest.raises(ml.UnverifiedApprovalError, match="signature does not match"):
        ml.verify_approval(prompt, 2)


@pytest.mark.slow
def test_promote_prompt_moves_an_alias_to_a_verified_approval_only(prompt, act_as, monkeypatch):
    act_as("editor")
    propose_prompt(prompt, TEXT_V2)
    act_as("owner")
    canary = approve_prompt(prompt, 2, alias="canary")
    assert production_version(prompt) == 1

    act_as("editor")
    with pytest.raises(ml.PermissionDeniedError) as exc:
        ml.promote_prompt(prompt, 2)
    assert (exc.value.user, exc.value.permission) == ("editor", "MANAGE")

    act_as("owner")
    monkeypatch.setenv("MLFLOW_LITE_APPROVAL_KEY", "another-deployment-key-0123456789abcdef")
    with pytest.raises(ml.UnverifiedApprovalError, match="signed with a key other than"):
        ml.promote_prompt(prompt, 2)
    assert production_version(prompt) == 1
    monkeypatch.setenv("MLFLOW_LITE_APPROVAL_KEY", KEY)
    assert ml.promote_prompt(prompt, 2) == canary
    assert production_version(prompt) == 2
    with pytest.raises(ml.UnverifiedApprovalError, match="status is not set"):
        ml.promote_prompt(prompt, 1)  # registered directly, never approved
    assert production_version(prompt) == 2


# -- the key --


def test_a_short_key_approves_nothing_and_verifies_nothing(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    name = unique()
    register_template(name, TEXT_V1, alias="production")
    propose_prompt(name, TEXT_V2)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_LITE_APPROVAL_KEY", "short-key")
    for call in (lambda: approve_prompt(name, 2), lambda: ml.verify_approval(name, 1),
                 lambda: ml.promote_prompt(name, 1)):
        with pytest.raises(ml.ApprovalKeyError) as exc:
            call()
        assert "fewer than 32" in str(exc.value)
        assert "MLFLOW_LITE_APPROVAL_KEY" in str(exc.value) and "secrets.token_hex(32)" in str(exc.value)
    assert production_version(name) == 1
    assert version_tags(name, 2)["mlflow_lite_status"] == "pending"


def test_without_a_configured_key_a_private_key_file_is_made_and_used(monkeypatch, tmp_path):
    """The README's approve_prompt works as written with no key set: a random key is created once,
    readable by its owner only, and a record verifies only against that key."""
    key_file = tmp_path / "keys" / "approval.key"
    monkeypatch.delenv("MLFLOW_LITE_APPROVAL_KEY")
    monkeypatch.setenv("MLFLOW_LITE_APPROVAL_KEY_FILE", str(key_file))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    name = unique()
    propose_prompt(name, TEXT_V1)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    approve_prompt(name, 1)
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text()
    assert len(key) >= 32 and not any(key in value for value in version_tags(name, 1).values())
    assert ml.verify_approval(name, 1).approved_by == "bob"
    monkeypatch.setenv("MLFLOW_LITE_APPROVAL_KEY_FILE", str(tmp_path / "other.key"))  # another host's key
    with pytest.raises(ml.UnverifiedApprovalError, match="signed with a key other than"):
        ml.verify_approval(name, 1)
    monkeypatch.setenv("MLFLOW_LITE_APPROVAL_KEY", key)  # the same key, shared through the environment
    assert ml.verify_approval(name, 1).approved_by == "bob"


def test_no_key_is_written_to_mlflow(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    name = unique()
    propose_prompt(name, TEXT_V1)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    approve_prompt(name, 1)
    tags = version_tags(name, 1)
    assert tags["mlflow_lite_approval_signature"].startswith("hmac-sha256-v1:")
    assert not any(KEY in value for value in tags.values())


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: ml.verify_approval(unique()), "version"),
        (lambda: ml.verify_approval(unique(), 1, alias="production"), "version"),
        (lambda: ml.verify_approval(unique(), 0), "version"),
        (lambda: ml.verify_approval(unique(), alias="latest"), "alias"),
        (lambda: ml.promote_prompt(unique(), "x"), "version"),
        (lambda: approve_prompt(unique(), 1, allow_self_approval="yes"), "allow_self_approval"),
    ],
)
def test_bad_arguments_are_refused_before_any_call(call, argument, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens: no call may be made
    with pytest.raises(ml.ArgumentError) as exc:
        call()
    assert exc.value.argument == argument


def test_missing_versions_and_aliases_are_argument_errors():
    name = unique()
    register_template(name, TEXT_V1)
    with pytest.raises(ml.ArgumentError, match="has no version 5"):
        ml.verify_approval(name, 5)
    with pytest.raises(ml.ArgumentError, match="has no alias 'production'"):
        ml.verify_approval(name, alias="production")


def test_ml_promote_points_a_prompt_at_the_approval_workflow():
    name = unique()
    register_template(name, TEXT_V1)
    with pytest.raises(ml.ArgumentError, match=r"is a prompt: .*ml\.promote_prompt") as exc:
        ml.promote(name, 1, alias="production")
    assert exc.value.argument == "name"
    assert alias_target(name, "production") is None


# -- the other scheme tests in the package: image URLs --


def test_image_urls_are_recognised_whatever_the_case_of_their_scheme():
    from mlflow_lite_plugin.core.attachments import load_images, redact

    from tests.core.test_images import png

    [remote] = load_images("HTTPS://example.com/cat.png")  # a URL, not a file path
    assert (remote.url, remote.media_type) == ("HTTPS://example.com/cat.png", "image/*")
    inline = "DATA:IMAGE/PNG;BASE64," + base64.b64encode(png(4, 3)).decode()
    [image] = load_images(inline)
    assert (image.media_type, image.width, image.height) == ("image/png", 4, 3)
    assert image.url.startswith("data:image/png;base64,")  # sent to providers in the usual spelling
    with pytest.raises(ml.ArgumentError) as exc:
        load_images("https://[::1/cat.png")
    assert exc.value.argument == "image"

    # Inline data that did not come through image= is still kept out of a trace.
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": inline}}]}
    [redacted] = redact([message], [])
    assert redacted["content"][0]["image_url"]["url"].startswith("[inline image, ")


def test_approving_again_after_a_half_finished_approval_verifies(monkeypatch):
    """approve_prompt moves the alias, then writes the record: a retry after a failure in between
    completes it, and the leftovers of the first try do not spoil the signature."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    name = unique()
    register_template(name, TEXT_V1, alias="production")
    propose_prompt(name, TEXT_V2)
    # What the first try left: the alias moved, two tags written, the version still pending.
    mlflow.genai.set_prompt_alias(name=name, alias="production", version=2)
    for key, value in (("mlflow_lite_approval_comment", "first try"), ("mlflow_lite_previous_version", "1")):
        mlflow.genai.set_prompt_version_tag(name=name, version=2, key=key, value=value)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    record = approve_prompt(name, 2)
    assert (record.comment, record.previous_version) == (None, None)
    assert ml.verify_approval(name, alias="production") == record
    assert "mlflow_lite_approval_comment" not in version_tags(name, 2)
