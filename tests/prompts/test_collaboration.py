"""Shared prompts and their approval workflow, against a real ``mlflow server --app-name basic-auth``
(and, without auth, on the tests' local sqlite store)."""

from __future__ import annotations

import getpass
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.core.errors import ArgumentError, MlflowLiteError
from mlflow_lite_plugin.prompts import auth
from mlflow_lite_plugin.prompts.approvals import (
    ProposalStateError,
    approve_prompt,
    pending_prompts,
    propose_prompt,
    reject_prompt,
)
from mlflow_lite_plugin.prompts.auth import Identity, PermissionDeniedError, current_user
from mlflow_lite_plugin.prompts.registry import register_template
from mlflow_lite_plugin.prompts.signing import ApprovalRecord

from tests.helpers import running_mlflow_server

ADMIN_PASSWORD = "admin-password-for-tests"
# Each user's permission on every prompt the tests create; "outsider" has none (the server's
# default_permission is NO_PERMISSIONS, so every right below is an explicit grant).
ROLES = {"reader": "READ", "editor": "EDIT", "owner": "MANAGE", "outsider": None}
TEXT_V1 = "Answer the customer: {{question}}"
TEXT_V2 = "Answer briefly and kindly: {{question}}"
APPROVAL_KEY = "approval-key-for-tests-0123456789abcdef"  # 32+ bytes, as approve_prompt requires


def password(user: str) -> str:
    return ADMIN_PASSWORD if user == "admin" else f"{user}-password-for-tests"


def unique(prefix: str = "collab") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- the auth server --


def _server_env(config: Path) -> dict[str, str]:
    return dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_FLASK_SERVER_SECRET_KEY=uuid.uuid4().hex)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> str:
    """``mlflow server --app-name basic-auth`` on a free port, with its own stores; its URL."""
    workdir = tmp_path_factory.mktemp("mlflow-auth")
    config = workdir / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{workdir / 'auth.db'}\n"
        "admin_username = admin\n"
        f"admin_password = {ADMIN_PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Remember checked passwords: hashing one on every request makes each call ~0.3 s.
        "auth_cache_ttl_seconds = 600\n"
    )
    with running_mlflow_server(workdir, _server_env(config), "--app-name", "basic-auth") as url:
        yield url


@pytest.fixture(autouse=True)
def _approval_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Approvals are signed: every test here has the key its approvers and verifiers share."""
    monkeypatch.setenv("MLFLOW_LITE_APPROVAL_KEY", APPROVAL_KEY)


@pytest.fixture(autouse=True)
def _tracing_follows_the_tracking_uri():
    """MLflow's tracer provider keeps the tracking URI it started with, and these tests switch the
    URI with the environment: start it afresh before and after each test, so no trace goes to the
    wrong store (here or in later test modules)."""
    mlflow.tracing.reset()
    yield
    mlflow.tracing.reset()


def _act_as(mp: pytest.MonkeyPatch, url: str, user: str) -> None:
    mp.setenv("MLFLOW_TRACKING_URI", url)
    mp.setenv("MLFLOW_TRACKING_USERNAME", user)
    mp.setenv("MLFLOW_TRACKING_PASSWORD", password(user))


@dataclass(frozen=True)
class Team:
    url: str
    experiment: str  # the reader may log traces here (EDIT on it), and read them
    experiment_id: str


@pytest.fixture(scope="module")
def team(auth_server: str) -> Team:
    """The users of ROLES, and an experiment for the reader's traces, created by the admin."""
    from mlflow.server import get_app_client

    with pytest.MonkeyPatch.context() as mp:
        _act_as(mp, auth_server, "admin")
        admin = get_app_client("basic-auth", tracking_uri=auth_server)
        for user in ROLES:
            admin.create_user(user, password(user))
        experiment = unique("collab-traces")
        experiment_id = MlflowClient().create_experiment(experiment)
        admin.grant_user_permission("reader", "experiment", experiment_id, "EDIT")
    return Team(auth_server, experiment, experiment_id)


@pytest.fixture
def act_as(team: Team, monkeypatch: pytest.MonkeyPatch):
    """``act_as(user)`` makes every later MLflow call in this process as ``user``."""
    return lambda user: _act_as(monkeypatch, team.url, user)


@pytest.fixture
def prompt(team: Team, act_as) -> str:
    """A new prompt registered by the admin, version 1 at @production, with ROLES granted on it."""
    from mlflow.server import get_app_client

    name = unique()
    act_as("admin")
    register_template(name, TEXT_V1, alias="production")
    admin = get_app_client("basic-auth", tracking_uri=team.url)
    for user, permission in ROLES.items():
        if permission is not None:
            admin.grant_user_permission(user, "prompt", name, permission)
    return name


def no_prompt_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow caches prompts per registry, not per user: off, so every load asks the server as the
    current user."""
    monkeypatch.setenv("MLFLOW_ALIAS_PROMPT_CACHE_TTL_SECONDS", "0")
    monkeypatch.setenv("MLFLOW_VERSION_PROMPT_CACHE_TTL_SECONDS", "0")


def ask(name: str, openai_kw: dict, experiment: str | None = None) -> ml.Response:
    client = ml.Client(experiment=experiment)
    response = client.query_with_template(
        template=f"{name}@production", question="How do I reset my password?", model="gpt-4o", **openai_kw
    )
    client.flush_traces()  # written as this user, before the test switches to another
    return response


def production_version(name: str) -> int:
    return int(MlflowClient().get_prompt_version_by_alias(name, "production").version)


def version_tags(name: str, version: int) -> dict[str, str]:
    return MlflowClient().get_prompt_version(name, version).tags


def assert_denied(exc: pytest.ExceptionInfo, user: str, name: str, permission: str) -> None:
    assert (exc.value.user, exc.value.prompt, exc.value.permission) == (user, name, permission)
    for word in (user, name, permission):
        assert word in str(exc.value)


def assert_server_refuses(call, *args, **kwargs) -> None:
    with pytest.raises(MlflowException) as exc:
        call(*args, **kwargs)
    assert exc.value.error_code == "PERMISSION_DENIED"


def assert_recent(moment: datetime | str) -> None:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    assert abs(datetime.now(timezone.utc) - moment) < timedelta(minutes=5)


# -- roles on the auth server --


@pytest.mark.slow
def test_reader_runs_the_production_prompt_and_reads_its_traces(team, prompt, act_as, openai_kw, monkeypatch):
    no_prompt_cache(monkeypatch)
    act_as("reader")
    response = ask(prompt, openai_kw, team.experiment)
    assert response.text == "Stub answer from gpt-4o: Answer the customer: How do I reset my password?"
    trace = mlflow.get_trace(response.trace_id)
    assert trace.info.experiment_id == team.experiment_id
    assert f'"name": "{prompt}", "version": "1"' in trace.info.tags["mlflow.linkedPrompts"]
    found = mlflow.search_traces(locations=[team.experiment_id], return_type="list")
    assert response.trace_id in [t.info.trace_id for t in found]
    assert current_user() == Identity("reader", is_admin=False, authenticated=True)


@pytest.mark.slow
def test_without_read_the_server_refuses_the_prompt(team, prompt, act_as, openai_kw, monkeypatch):
    no_prompt_cache(monkeypatch)
    act_as("outsider")
    assert_server_refuses(ask, prompt, openai_kw)
    assert_server_refuses(mlflow.search_traces, locations=[team.experiment_id])
    with pytest.raises(PermissionDeniedError) as exc:
        pending_prompts(prompt)
    assert_denied(exc, "outsider", prompt, "READ")


@pytest.mark.slow
def test_reader_cannot_change_production(prompt, act_as):
    act_as("reader")
    with pytest.raises(PermissionDeniedError) as exc:
        approve_prompt(prompt, 1)
    assert_denied(exc, "reader", prompt, "MANAGE")
    assert "has READ" in str(exc.value)
    with pytest.raises(PermissionDeniedError) as exc:
        propose_prompt(prompt, TEXT_V2)
    assert_denied(exc, "reader", prompt, "EDIT")
    # MLflow's own API, around the workflow: the server itself refuses a READ user.
    assert_server_refuses(mlflow.genai.set_prompt_alias, name=prompt, alias="production", version=1)
    assert_server_refuses(mlflow.genai.register_prompt, name=prompt, template=TEXT_V2)
    assert_server_refuses(mlflow.genai.set_prompt_version_tag, name=prompt, version=1, key="k", value="v")
    assert production_version(prompt) == 1
    assert pending_prompts(prompt) == []  # READ is enough to list


@pytest.mark.slow
def test_editor_proposes_but_cannot_approve(prompt, act_as):
    act_as("editor")
    proposed = propose_prompt(prompt, TEXT_V2, commit_message="shorter answers")
    assert (proposed.version, proposed.uri, proposed.template) == ("2", f"prompts:/{prompt}/2", TEXT_V2)
    tags = version_tags(prompt, 2)
    assert (tags["mlflow_lite_status"], tags["mlflow_lite_proposed_by"]) == ("pending", "editor")
    assert_recent(tags["mlflow_lite_proposed_at"])
    assert production_version(prompt) == 1  # nothing uses a proposal yet

    [proposal] = pending_prompts(prompt)
    assert (proposal.name, proposal.version, proposal.uri) == (prompt, 2, f"prompts:/{prompt}/2")
    assert (proposal.proposed_by, proposal.commit_message) == ("editor", "shorter answers")
    assert_recent(proposal.proposed_at)

    for review in (lambda: approve_prompt(prompt, 2), lambda: reject_prompt(prompt, 2, "no")):
        with pytest.raises(PermissionDeniedError) as exc:
            review()
        assert_denied(exc, "editor", prompt, "MANAGE")
        assert "has EDIT" in str(exc.value)
    assert version_tags(prompt, 2)["mlflow_lite_status"] == "pending"
    assert production_version(prompt) == 1


@pytest.mark.slow
def test_the_server_lets_an_editor_move_an_alias_but_not_delete_one(prompt, act_as):
    """MLflow 3.17's own rules, which the module docstring documents: setting an alias needs EDIT
    (so approve_prompt's MANAGE rule is ours), deleting one needs MANAGE."""
    act_as("editor")
    mlflow.genai.set_prompt_alias(name=prompt, alias="staging", version=1)
    assert_server_refuses(mlflow.genai.delete_prompt_alias, name=prompt, alias="staging")
    act_as("owner")
    mlflow.genai.delete_prompt_alias(name=prompt, alias="staging")


@pytest.mark.slow
def test_owner_approves_and_production_moves(team, prompt, act_as, openai_kw):
    act_as("editor")
    propose_prompt(prompt, TEXT_V2)
    act_as("reader")
    assert "Answer the customer" in ask(prompt, openai_kw, team.experiment).text  # now cached

    act_as("owner")
    record = approve_prompt(prompt, 2, comment="reviewed with support")
    assert record == ApprovalRecord(
        name=prompt, version=2, alias="production", approved_by="owner", approved_at=record.approved_at,
        previous_version=1, comment="reviewed with support", permission_checked=True, proposed_by="editor",
    )
    assert_recent(record.approved_at)
    tags = version_tags(prompt, 2)
    assert tags["mlflow_lite_status"] == "approved"
    assert tags["mlflow_lite_approved_by"] == "owner"
    assert datetime.fromisoformat(tags["mlflow_lite_approved_at"]) == record.approved_at
    assert tags["mlflow_lite_approved_alias"] == "production"
    assert tags["mlflow_lite_approval_comment"] == "reviewed with support"
    assert tags["mlflow_lite_previous_version"] == "1"
    assert tags["mlflow_lite_proposed_by"] == "editor"
    assert production_version(prompt) == 2
    assert pending_prompts(prompt) == []

    # The alias moved in this process, so MLflow's prompt cache dropped it: the reader gets v2 now.
    act_as("reader")
    answer = ask(prompt, openai_kw, team.experiment).text
    assert answer == "Stub answer from gpt-4o: Answer briefly and kindly: How do I reset my password?"

    act_as("owner")
    with pytest.raises(ProposalStateError, match="is approved") as exc:
        approve_prompt(prompt, 2)
    assert (exc.value.name, exc.value.version, exc.value.status) == (prompt, 2, "approved")


@pytest.mark.slow
def test_reject_pending_and_states(prompt, act_as):
    act_as("editor")
    propose_prompt(prompt, TEXT_V2)
    propose_prompt(prompt, "Answer in one sentence: {{question}}")

    act_as("owner")
    assert [(p.name, p.version) for p in pending_prompts() if p.name == prompt] == [(prompt, 2), (prompt, 3)]
    rejection = reject_prompt(prompt, 2, "too curt for support")
    assert (rejection.rejected_by, rejection.reason, rejection.permission_checked) == (
        "owner", "too curt for support", True
    )
    tags = version_tags(prompt, 2)
    assert (tags["mlflow_lite_status"], tags["mlflow_lite_rejected_by"]) == ("rejected", "owner")
    assert tags["mlflow_lite_rejection_reason"] == "too curt for support"
    assert datetime.fromisoformat(tags["mlflow_lite_rejected_at"]) == rejection.rejected_at
    assert_recent(rejection.rejected_at)
    assert [p.version for p in pending_prompts(prompt)] == [3]

    for review in (lambda: approve_prompt(prompt, 2), lambda: reject_prompt(prompt, 2, "again")):
        with pytest.raises(ProposalStateError, match="is rejected"):
            review()
    with pytest.raises(ProposalStateError, match="was not proposed with propose_prompt"):
        approve_prompt(prompt, 1)  # registered directly, not proposed
    with pytest.raises(ArgumentError, match="has no version 9"):
        approve_prompt(prompt, 9)
    assert production_version(prompt) == 1


@pytest.mark.slow
def test_proposing_a_new_prompt_makes_the_proposer_its_owner(team, act_as):
    """MLflow gives the creator of a prompt MANAGE on it, so whoever proposes a new prompt may
    approve it, though only by opting out of separation of duties; reviews apply to the versions
    after that."""
    name = unique()
    act_as("editor")
    propose_prompt(name, TEXT_V1)
    with pytest.raises(ml.SelfApprovalError):
        approve_prompt(name, 1)
    assert approve_prompt(name, 1, allow_self_approval=True).approved_by == "editor"
    act_as("reader")
    with pytest.raises(PermissionDeniedError):  # no grant on a prompt someone else created
        pending_prompts(name)


@pytest.mark.slow
def test_an_admin_counts_as_manage(prompt, act_as):
    act_as("editor")
    propose_prompt(prompt, TEXT_V2)
    act_as("admin")
    assert current_user() == Identity("admin", is_admin=True, authenticated=True)
    record = approve_prompt(prompt, 2, alias="canary")
    assert (record.approved_by, record.alias, record.previous_version) == ("admin", "canary", None)
    assert int(MlflowClient().get_prompt_version_by_alias(prompt, "canary").version) == 2
    assert production_version(prompt) == 1


@pytest.mark.slow
def test_bad_credentials_are_refused(prompt, act_as, monkeypatch):
    act_as("owner")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(PermissionDeniedError, match="did not accept the credentials of user 'owner'") as exc:
        approve_prompt(prompt, 1)
    assert exc.value.user == "owner"


# -- no auth --


def test_without_auth_the_local_user_proposes_and_approves(monkeypatch, openai_kw):
    """The tests' sqlite store: no permissions to check; the records name the local user."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    name = unique()
    register_template(name, TEXT_V1, alias="production")
    proposed = propose_prompt(name, TEXT_V2, validate={"max_length": 400}, tags={"team": "support"})
    assert proposed.validate == {"max_length": 400}
    tags = version_tags(name, 2)
    assert (tags["mlflow_lite_proposed_by"], tags["team"]) == (getpass.getuser(), "support")

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")  # named, though nobody checks it
    record = approve_prompt(name, "2")
    assert (record.approved_by, record.previous_version, record.permission_checked) == ("alice", 1, False)
    assert version_tags(name, 2)["mlflow_lite_status"] == "approved"
    assert ml.query_with_template(template=f"{name}@production", question="hi?", model="gpt-4o", **openai_kw).text == (
        "Stub answer from gpt-4o: Answer briefly and kindly: hi?"
    )
    assert current_user() == Identity("alice")


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: propose_prompt(unique(), TEXT_V2, tags={"mlflow_lite_status": "approved"}), "tags"),
        (lambda: propose_prompt(unique(), TEXT_V2, tags=["team"]), "tags"),
        (lambda: propose_prompt(unique(), ""), "template"),
        (lambda: propose_prompt("summarize", TEXT_V2), "name"),
        (lambda: pending_prompts(unique()), "name"),
        (lambda: approve_prompt(unique(), 0), "version"),
        (lambda: approve_prompt(unique(), True), "version"),
        (lambda: approve_prompt(unique(), 1, alias="latest"), "alias"),
        (lambda: approve_prompt(unique(), 1, comment=""), "comment"),
        (lambda: reject_prompt(unique(), 1, " "), "reason"),
    ],
)
def test_bad_arguments_are_refused_before_any_change(call, argument):
    with pytest.raises(ArgumentError) as exc:
        call()
    assert exc.value.argument == argument


@pytest.mark.parametrize(
    "grants, permission",
    [
        ([], None),
        ([("prompt", "other", "MANAGE")], None),
        ([("registered_model", "p", "MANAGE")], None),  # another namespace
        ([("prompt", "p", "READ"), ("prompt", "*", "EDIT")], "EDIT"),
        ([("prompt", "*", "MANAGE")], "MANAGE"),
        ([("prompt", "p", "MANAGE"), ("prompt", "*", "DENY")], "DENY"),
        ([("prompt", "p", "DENY"), ("workspace", "*", "MANAGE")], "MANAGE"),  # a workspace admin
        ([("workspace", "*", "USE")], None),
    ],
)
def test_grants_fold_as_the_server_folds_them(grants, permission):
    rows = [{"resource_type": t, "resource_pattern": p, "permission": level} for t, p, level in grants]
    assert auth._fold_prompt_grants(rows, "p") == permission


# -- servers without the auth app --


class _FakeServer(ThreadingHTTPServer):
    """Answers 404 pages for every route, except ``/api/2.0/mlflow/users/get`` when ``old_auth``."""

    def __init__(self, old_auth: bool):
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.old_auth = old_auth


class _FakeHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.server.old_auth and self.path.startswith("/api/2.0/mlflow/users/get"):
            self._answer(200, "application/json", b'{"user": {"username": "owner"}}')
        else:
            self._answer(404, "text/html", b"<title>404 Not Found</title>")

    def _answer(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(params=[False, True], ids=["no-auth", "old-auth"])
def fake_server(request, monkeypatch):
    server = _FakeServer(old_auth=request.param)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "owner")
    yield server
    server.shutdown()
    server.server_close()


def test_a_server_without_auth_means_the_local_user_and_an_old_auth_app_is_refused(fake_server):
    if fake_server.old_auth:
        with pytest.raises(MlflowLiteError, match=r"upgrade it to MLflow 3\.17"):
            current_user()
    else:
        assert current_user() == Identity("owner", is_admin=False, authenticated=False)
