"""`SecretService` and secrets mounted into sandboxes through the official
SDK: values are sealed at rest and never returned; mounted secrets reach
the sandbox as environment variables (at create and live through
`update_secrets`); secrets restricted to hosts are refused, since this
server cannot substitute them at egress."""

import sqlite3

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSecretParams, UpdateSecretParams
from daytona.common.errors import DaytonaError
from daytona_api_client.exceptions import ApiException

# SecretService passes the API client's exceptions through.
REFUSED = (DaytonaError, ApiException)


def test_secret_crud_never_returns_the_value(daytona, server):
    s = daytona.secret.create(CreateSecretParams(name="crud-secret", value="v-123456789", description="first"))
    assert s.name == "crud-secret" and s.description == "first"
    assert "v-123456789" not in repr(s.to_dict() if hasattr(s, "to_dict") else vars(s))
    got = daytona.secret.get(s.id)
    assert got.id == s.id and got.name == "crud-secret"
    page = daytona.secret.list(name="crud")
    assert [x.id for x in page.items] == [s.id] and page.total == 1
    updated = daytona.secret.update(s.id, UpdateSecretParams(description="second", value="v-rotated"))
    assert updated.description == "second"
    # Raw API answers never carry the value either.
    for path in ("/api/secret", f"/api/secret/{s.id}", "/api/secret/paginated"):
        status, _, body = server.http("GET", path)
        assert status == 200 and b"v-123456789" not in body and b"v-rotated" not in body
    with pytest.raises(REFUSED):
        daytona.secret.create(CreateSecretParams(name="crud-secret", value="dup"))
    with pytest.raises(REFUSED):
        daytona.secret.create(CreateSecretParams(name="bad name!", value="x"))
    daytona.secret.delete(s.id)
    with pytest.raises(REFUSED):
        daytona.secret.get(s.id)


def test_values_are_sealed_at_rest(daytona, server):
    daytona.secret.create(CreateSecretParams(name="at-rest", value="plaintext-marker-42"))
    db = server.data_dir / "atoll.db"
    if not db.exists():
        pytest.skip("the server runs on PostgreSQL")
    raw = b""
    for f in server.data_dir.glob("atoll.db*"):
        raw += f.read_bytes()
    assert b"plaintext-marker-42" not in raw
    row = sqlite3.connect(db).execute("SELECT sealed_value FROM secrets WHERE name='at-rest'").fetchone()
    assert row and "plaintext-marker-42" not in row[0]


def test_mounted_secrets_reach_the_sandbox_as_env(daytona, make_sandbox):
    daytona.secret.create(CreateSecretParams(name="api-token", value="tok-abc"))
    daytona.secret.create(CreateSecretParams(name="db-pass", value="pw with spaces"))
    sb = make_sandbox(CreateSandboxFromSnapshotParams(secrets={"API_TOKEN": "api-token"}))
    assert sb.process.exec('echo "$API_TOKEN"').result.strip() == "tok-abc"
    # Not shown in the sandbox's env in the API.
    assert "API_TOKEN" not in (daytona.get(sb.id).env or {})
    sb.update_secrets({"DB_PASS": "db-pass"})
    assert sb.process.exec('echo "${API_TOKEN-gone}|$DB_PASS"').result.strip() == "gone|pw with spaces"
    # A mounted secret cannot be deleted; a rotated one reaches new processes.
    secret = next(x for x in daytona.secret.list().items if x.name == "db-pass")
    with pytest.raises(REFUSED):
        daytona.secret.delete(secret.id)
    daytona.secret.update(secret.id, UpdateSecretParams(value="rotated-pw"))
    assert sb.process.exec('echo "$DB_PASS"').result.strip() == "rotated-pw"
    # Kept across stop/start.
    daytona.stop(sb)
    daytona.start(sb)
    assert sb.process.exec('echo "$DB_PASS"').result.strip() == "rotated-pw"
    sb.update_secrets({})
    assert sb.process.exec('echo "${DB_PASS-none}"').result.strip() == "none"
    daytona.secret.delete(secret.id)


def test_unknown_and_host_restricted_secrets_are_refused(daytona, server):
    daytona.secret.create(CreateSecretParams(name="restricted", value="x", hosts=["api.example.com"]))
    before = len(list(daytona.list()))
    with pytest.raises(REFUSED) as e:
        daytona.create(CreateSandboxFromSnapshotParams(secrets={"K": "no-such-secret"}))
    assert "no-such-secret" in str(e.value)
    with pytest.raises(REFUSED) as e:
        daytona.create(CreateSandboxFromSnapshotParams(secrets={"K": "restricted"}))
    assert "hosts" in str(e.value)
    status, _, body = server.http("POST", "/api/sandbox", json={"secrets": [{"1BAD": "restricted"}]})
    assert status == 400, body
    assert len(list(daytona.list())) == before
