"""API keys and organizations: `/api/api-keys` and `/api/organizations` as
Daytona's API has them, driven through `atoll key …` and `atoll org …`.
A key has the permissions it was given and no more, on the REST API and
on the toolbox; a key cannot grant what it lacks; a revoked or expired
key stops working at once; owner keys are not revoked through the API;
one organization never sees another's."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time

import pytest

from oci_images import api


@pytest.fixture
def org(server):
    status, body = api(server, "POST", "/admin/organizations", {"name": f"keys-{secrets.token_hex(3)}"})
    assert status == 200, body
    return body


@pytest.fixture
def atoll(atoll_bin, server, tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DAYTONA_", "ATOLL_API_"))}
    base.update({"ATOLL_API_URL": server.api_url, "ATOLL_CONFIG": str(tmp_path / "none.json")})

    def run(key: str, *args, check=True):
        p = subprocess.run([str(atoll_bin), *args], capture_output=True, text=True,
                           env={**base, "ATOLL_API_KEY": key}, timeout=300)
        assert not check or p.returncode == 0, p
        return p
    return run


def test_keys_have_their_permissions_and_no_more(atoll, org, server):
    owner = org["apiKey"]
    # No permissions: reads only.
    ro = atoll(owner, "key", "create", "reader").stdout.strip()
    assert ro.startswith("atl_") and len(ro) > 40
    assert atoll(ro, "sandbox", "list").returncode == 0
    p = atoll(ro, "sandbox", "create", check=False)
    assert p.returncode == 1 and "403" in p.stderr and "write:sandboxes" in p.stderr, p
    p = atoll(ro, "volume", "list", check=False)
    assert p.returncode == 1 and "read:volumes" in p.stderr, p

    ci = atoll(owner, "key", "create", "ci", "--permission", "write:sandboxes").stdout.strip()
    sb = json.loads(atoll(ci, "sandbox", "create", "-o", "json").stdout)
    try:
        # The toolbox too: write:sandboxes runs commands; a read-only key
        # cannot.
        assert atoll(ci, "exec", sb["id"], "--", "echo", "hi").stdout == "hi\n"
        p = atoll(ro, "exec", sb["id"], "--", "echo", "hi", check=False)
        assert p.returncode == 1 and "403" in p.stderr, p
        p = atoll(ci, "sandbox", "delete", sb["id"], check=False)
        assert p.returncode == 1 and "delete:sandboxes" in p.stderr, p
        # Preview tokens open apps and the web terminal: not for a
        # read-only key, nor is the sandbox's app with its key.
        assert api_as(server, ro, "GET", f"/sandbox/{sb['id']}/ports/3000/preview-url")[0] == 403
        assert api_as(server, ci, "GET", f"/sandbox/{sb['id']}/ports/3000/preview-url")[0] == 200
        # What a body brings in needs its own permission: secrets' values
        # and volumes' files become readable inside.
        status, body = api_as(server, ci, "POST", "/sandbox", {"secrets": [{"name": "x"}]})
        assert status == 403 and "manage:secrets" in body["message"], body
        status, body = api_as(server, ci, "POST", "/sandbox",
                              {"volumes": [{"volumeId": "v", "mountPath": "/v"}]})
        assert status == 403 and "read:volumes" in body["message"], body
        status, body = api_as(server, ci, "PUT", f"/sandbox/{sb['id']}/secrets", {"secrets": []})
        assert status == 403 and "manage:secrets" in body["message"], body
        # No manage:api_keys: no keys made or listed.
        p = atoll(ci, "key", "create", "more", check=False)
        assert p.returncode == 1 and "manage:api_keys" in p.stderr, p
        # A key that may manage keys cannot grant what it lacks.
        mgr = atoll(owner, "key", "create", "mgr", "--permission", "manage:api_keys").stdout.strip()
        p = atoll(mgr, "key", "create", "sneaky", "--permission", "delete:sandboxes", check=False)
        assert p.returncode == 1 and "403" in p.stderr and "does not hold" in p.stderr, p
        assert atoll(mgr, "key", "create", "peer", "--permission", "manage:api_keys").returncode == 0
        # Listings show names, never keys.
        listed = json.loads(atoll(owner, "key", "list", "-o", "json").stdout)
        assert {k["name"] for k in listed} == {"owner", "reader", "ci", "mgr", "peer"}
        assert all(k["value"].endswith("…") and len(k["value"]) < 12 for k in listed)
        assert ci not in atoll(owner, "key", "list").stdout
        current = json.loads(atoll(ci, "key", "current", "-o", "json").stdout)
        assert current["name"] == "ci" and current["permissions"] == ["write:sandboxes"]
        # Revoked: refused at once, everywhere.
        atoll(owner, "key", "delete", "ci")
        p = atoll(ci, "exec", sb["id"], "--", "true", check=False)
        assert p.returncode == 1 and "401" in p.stderr and "revoked" in p.stderr, p
        p = atoll(ci, "sandbox", "list", check=False)
        assert p.returncode == 1 and "401" in p.stderr, p
    finally:
        atoll(owner, "sandbox", "delete", sb["id"])
    # The owner key is not revoked through the API; names are unique;
    # unknown permissions and past expiries are refused.
    p = atoll(owner, "key", "delete", "owner", check=False)
    assert p.returncode == 1 and "409" in p.stderr, p
    assert atoll(owner, "sandbox", "list").returncode == 0
    p = atoll(owner, "key", "create", "reader", check=False)
    assert p.returncode == 1 and "409" in p.stderr, p
    p = atoll(owner, "key", "create", "x", "--permission", "root:everything", check=False)
    assert p.returncode == 1 and "400" in p.stderr, p
    past = {"name": "old", "permissions": [], "expiresAt": "2020-01-01T00:00:00Z"}
    assert api_as(server, owner, "POST", "/api-keys", past)[0] == 400


def api_as(server, key: str, method: str, path: str, body=None):
    import urllib.error
    import urllib.request
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{server.url}/api{path}", data=data, method=method,
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    return status, json.loads(raw) if raw else None


def test_an_expiring_key_stops_at_its_time(org, server):
    owner = org["apiKey"]
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3))
    status, made = api_as(server, owner, "POST", "/api-keys",
                          {"name": "brief", "permissions": [], "expiresAt": at})
    assert status == 201 and made["expiresAt"].startswith(at[:19]), made
    assert api_as(server, made["value"], "GET", "/sandbox")[0] == 200
    # A key that expires makes keys that expire no later than itself.
    status, mgr = api_as(server, owner, "POST", "/api-keys",
                         {"name": "mgr-brief", "permissions": ["manage:api_keys"], "expiresAt": at})
    assert status == 201, mgr
    status, child = api_as(server, mgr["value"], "POST", "/api-keys",
                           {"name": "child", "permissions": []})
    assert status == 201 and child["expiresAt"] == mgr["expiresAt"], child
    time.sleep(4.5)
    assert api_as(server, child["value"], "GET", "/sandbox")[0] == 401
    status, body = api_as(server, made["value"], "GET", "/sandbox")
    assert status == 401 and "expired" in body["message"], body


def test_organizations_are_seen_only_by_their_keys(atoll, org, server):
    owner = org["apiKey"]
    mine = json.loads(atoll(owner, "org", "list", "-o", "json").stdout)
    assert [o["id"] for o in mine] == [org["organization"]["id"]]
    assert json.loads(atoll(owner, "org", "get", org["organization"]["name"], "-o", "json").stdout)[
        "id"] == org["organization"]["id"]
    # The admin key sees every organization; an owner key no other.
    everyone = json.loads(atoll(server.api_key, "org", "list", "-o", "json").stdout)
    assert org["organization"]["id"] in {o["id"] for o in everyone} and len(everyone) >= 2
    other = [o for o in everyone if o["id"] != org["organization"]["id"]][0]
    p = atoll(owner, "org", "get", other["id"], check=False)
    assert p.returncode == 1 and "404" in p.stderr, p
    # Only the admin key makes organizations; their owner key is printed.
    p = atoll(owner, "org", "create", "nope", check=False)
    assert p.returncode == 1 and "403" in p.stderr, p
    new_key = atoll(server.api_key, "org", "create", f"made-{secrets.token_hex(3)}").stdout.strip()
    assert new_key.startswith("atl_")
    assert json.loads(atoll(new_key, "key", "current", "-o", "json").stdout)["role"] == "owner"
    # Keys of one organization are invisible to another.
    names = {k["name"] for k in json.loads(atoll(new_key, "key", "list", "-o", "json").stdout)}
    assert names == {"owner"}
    p = atoll(new_key, "key", "delete", "reader", check=False)
    assert p.returncode == 1 and "404" in p.stderr, p
