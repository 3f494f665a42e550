"""Fair share between tenants, and data at rest.

- Per-organization quotas (`--max-…-per-org`, overridden per organization
  with `PUT /api/admin/organizations/{id}/quota`): past one, create and
  start get 403 with Daytona's error body and a message naming the quota,
  and nothing changes (no row, no state change); an admin override admits
  the create; a non-admin key cannot read or change quotas; racing creates
  at the last slot never both win, within one server or across two API
  processes on one PostgreSQL.
- Per-key rate limit on `/api`: 429 with `Retry-After` and Daytona's error
  body, other keys and the toolbox unaffected, and the key works again
  after the wait.
- Expired signed preview tokens are deleted by the lifecycle scheduler
  (counted in the database itself).
- The data dir is 0700 and the SQLite database 0600, fixed at start even
  when an older server left them open.
"""
import json
import os
import sqlite3
import stat
import subprocess
import threading
import time

import pytest
from daytona import DaytonaForbiddenError, DaytonaRateLimitError

from conftest import AtollServer, postgres, running_server

ERROR_KEYS = {"statusCode", "message", "code", "timestamp", "path", "method"}


def ids(srv, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else None
    status, _, body = srv.http("GET", "/api/sandbox?limit=200", headers=headers)
    assert status == 200, body
    return sorted(item["id"] for item in json.loads(body)["items"])


def create_raw(srv, key=None, **fields):
    headers = {"Authorization": f"Bearer {key}"} if key else None
    status, _, body = srv.http("POST", "/api/sandbox", json={"autoStopInterval": 0, **fields},
                               headers=headers, timeout=120)
    return status, json.loads(body)


def new_org(srv, name):
    status, _, body = srv.http("POST", "/api/admin/organizations", json={"name": name})
    assert status == 200, body
    created = json.loads(body)
    return created["organization"]["id"], created["apiKey"]


def assert_quota_error(status, body, quota, prefix):
    assert status == 403, body
    assert ERROR_KEYS <= set(body), body
    assert body["statusCode"] == 403 and body["code"] == "FORBIDDEN", body
    assert body["message"].startswith(prefix) and quota in body["message"], body


def test_sandbox_quota_refuses_creates_and_an_admin_override_admits_them(atoll_bin, images_dir):
    with running_server(atoll_bin, images_dir, {"ATOLL_MAX_SANDBOXES_PER_ORG": "2"}) as srv:
        d = srv.client()
        a = d.create()
        b = d.create()
        before = ids(srv)
        assert before == sorted([a.id, b.id])

        with pytest.raises(DaytonaForbiddenError) as refused:
            d.create()
        assert "maxSandboxes" in str(refused.value), refused.value
        status, body = create_raw(srv, name="one-too-many")
        assert_quota_error(status, body, "maxSandboxes", "Sandbox limit exceeded. Maximum allowed: 2")
        assert body["path"] == "/api/sandbox" and body["method"] == "POST", body
        assert ids(srv) == before, "a refused create leaves no row"

        # Quotas are per organization: another tenant is not held back.
        _, other_key = new_org(srv, "other-team")
        status, body = create_raw(srv, key=other_key)
        assert status == 200, body
        assert ids(srv, other_key) == [body["id"]]
        status, _, _ = srv.http("DELETE", f"/api/sandbox/{body['id']}",
                                headers={"Authorization": f"Bearer {other_key}"}, timeout=60)
        assert status == 200

        # Only the admin key reads or changes quotas.
        for method, kw in (("GET", {}), ("PUT", {"json": {"maxSandboxes": 100}})):
            status, _, body = srv.http(method, "/api/admin/organizations/default/quota",
                                       headers={"Authorization": f"Bearer {other_key}"}, **kw)
            assert status == 403, body
            assert json.loads(body)["statusCode"] == 403
            status, _, _ = srv.http(method, "/api/admin/organizations/default/quota", auth=False, **kw)
            assert status == 401

        status, _, body = srv.http("GET", "/api/admin/organizations/default/quota")
        assert status == 200, body
        q = json.loads(body)
        assert q["maxSandboxes"] == 2 and q["totalCpuQuota"] is None, q
        assert q["overrides"] == {}, q
        assert q["usage"] == {"sandboxes": 2, "cpu": 2, "memory": 2, "disk": 6}, q

        # Bad input is a 400 that changes nothing; an unknown organization a 404.
        for bad in ({"maxSandboxes": -2}, {"maxSandboxes": 1.5}, {"maxSandbox": 3},
                    {"totalCpuQuota": "4"}, {"totalDiskQuota": 10**12}):
            status, _, body = srv.http("PUT", "/api/admin/organizations/default/quota", json=bad)
            assert status == 400, (bad, body)
            assert json.loads(body)["message"], body
        status, _, _ = srv.http("PUT", "/api/admin/organizations/no-such-org/quota", json={"maxSandboxes": 3})
        assert status == 404
        assert json.loads(srv.http("GET", "/api/admin/organizations/default/quota")[2])["maxSandboxes"] == 2

        # The admin raises the quota (by organization id), and the create goes through.
        org_id = a.organization_id
        status, _, body = srv.http("PUT", f"/api/admin/organizations/{org_id}/quota", json={"maxSandboxes": 3})
        assert status == 200, body
        q = json.loads(body)
        assert q["maxSandboxes"] == 3 and q["overrides"] == {"maxSandboxes": 3}, q
        d.create()
        with pytest.raises(DaytonaForbiddenError):
            d.create()
        # -1 is unlimited; null goes back to the server's default.
        assert srv.http("PUT", f"/api/admin/organizations/{org_id}/quota", json={"maxSandboxes": -1})[0] == 200
        d.create()
        status, _, body = srv.http("PUT", f"/api/admin/organizations/{org_id}/quota", json={"maxSandboxes": None})
        assert status == 200 and json.loads(body)["maxSandboxes"] == 2, body
        assert len(ids(srv)) == 4
        with pytest.raises(DaytonaForbiddenError):
            d.create()


def test_start_past_the_cpu_quota_is_refused_and_the_sandbox_stays_stopped(atoll_bin, images_dir):
    env = {"ATOLL_MAX_CPU_PER_ORG": "2", "ATOLL_MAX_MEMORY_GIB_PER_ORG": "8"}
    with running_server(atoll_bin, images_dir, env) as srv:
        status, a = create_raw(srv, cpu=1)
        assert status == 200, a
        status, _, body = srv.http("POST", f"/api/sandbox/{a['id']}/stop", timeout=60)
        assert status == 200 and json.loads(body)["state"] == "stopped", body
        # A stopped sandbox holds no cpu: the whole quota is free.
        status, b = create_raw(srv, cpu=2)
        assert status == 200, b
        status, body = create_raw(srv, cpu=1)
        assert_quota_error(status, body, "totalCpuQuota", "Total CPU limit exceeded. Maximum allowed: 2")

        status, _, body = srv.http("POST", f"/api/sandbox/{a['id']}/start", timeout=60)
        assert_quota_error(status, json.loads(body), "totalCpuQuota", "Total CPU limit exceeded. Maximum allowed: 2")
        status, _, body = srv.http("GET", f"/api/sandbox/{a['id']}")
        got = json.loads(body)
        assert got["state"] == "stopped" and got["desiredState"] == "stopped", got

        # The SDK sees the same refusal.
        sb = srv.client().get(a["id"])
        with pytest.raises(DaytonaForbiddenError) as refused:
            sb.start()
        assert "totalCpuQuota" in str(refused.value)

        # Growing a running sandbox past the quota is refused too.
        status, _, body = srv.http("POST", f"/api/sandbox/{b['id']}/resize", json={"cpu": 3})
        assert_quota_error(status, json.loads(body), "totalCpuQuota", "Total CPU limit exceeded")
        assert json.loads(srv.http("GET", f"/api/sandbox/{b['id']}")[2])["cpu"] == 2

        # Once the other sandbox stops, the start fits.
        assert srv.http("POST", f"/api/sandbox/{b['id']}/stop", timeout=60)[0] == 200
        status, _, body = srv.http("POST", f"/api/sandbox/{a['id']}/start", timeout=60)
        assert status == 200 and json.loads(body)["state"] == "started", body
        q = json.loads(srv.http("GET", "/api/admin/organizations/default/quota")[2])
        assert q["usage"]["cpu"] == 1 and q["usage"]["disk"] == 6, q


def race(servers, n, path="/api/sandbox"):
    """`n` concurrent creates spread over `servers`; their statuses."""
    results = []
    lock = threading.Lock()
    gate = threading.Barrier(n)

    def go(srv):
        gate.wait()
        status, _, body = srv.http("POST", path, json={"autoStopInterval": 0}, timeout=120)
        with lock:
            results.append((status, json.loads(body)))

    threads = [threading.Thread(target=go, args=(servers[i % len(servers)],)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_racing_creates_never_both_take_the_last_slot(atoll_bin, images_dir):
    with running_server(atoll_bin, images_dir, {"ATOLL_MAX_SANDBOXES_PER_ORG": "3"}) as srv:
        results = race([srv], 8)
        codes = sorted(s for s, _ in results)
        print("one server:", codes)
        assert codes == [200] * 3 + [403] * 5, results
        for status, body in results:
            if status == 403:
                assert "maxSandboxes" in body["message"], body
        assert len(ids(srv)) == 3


def test_racing_creates_across_two_api_processes_on_one_postgres(atoll_bin, images_dir):
    url = postgres().new_database()
    a = AtollServer(atoll_bin, images_dir)
    b = AtollServer(atoll_bin, images_dir)
    b.data_dir = a.data_dir
    b.log_path = a.data_dir / "atoll-b.log"
    b.api_key = a.api_key
    a.database_url = b.database_url = url
    for srv in (a, b):
        srv.extra_env = {"ATOLL_MAX_SANDBOXES_PER_ORG": "3"}
    try:
        a.start()
        b.start()
        results = race([a, b], 10)
        codes = sorted(s for s, _ in results)
        print("two servers:", codes)
        assert codes == [200] * 3 + [403] * 7, results
        assert len(ids(a)) == 3 and ids(a) == ids(b)
    finally:
        b.stop()
        a.cleanup()


def test_rate_limit_answers_429_with_retry_after_and_recovers(atoll_bin, images_dir):
    env = {"ATOLL_RATE_LIMIT_PER_MINUTE": "60", "ATOLL_RATE_LIMIT_BURST": "5"}
    with running_server(atoll_bin, images_dir, env) as srv:
        # Unauthenticated and bad-key requests get no bucket and no 429.
        for _ in range(10):
            assert srv.http("GET", "/api/health", auth=False)[0] == 200
            assert srv.http("GET", "/api/sandbox", headers={"Authorization": "Bearer atl_nope"})[0] == 401
        _, other_key = new_org(srv, "neighbour")
        status, sb = create_raw(srv)
        assert status == 200, sb
        time.sleep(6)  # the two requests above refill

        statuses = []
        for _ in range(30):
            status, headers, body = srv.http("GET", "/api/sandbox")
            statuses.append(status)
            if status == 429:
                break
        assert statuses[:5] == [200] * 5, statuses
        assert statuses[-1] == 429, statuses
        err = json.loads(body)
        assert ERROR_KEYS <= set(err), err
        assert err["statusCode"] == 429 and err["code"] == "TOO_MANY_REQUESTS", err
        assert err["path"] == "/api/sandbox" and err["method"] == "GET", err
        assert "60 requests a minute" in err["message"], err
        retry_after = int(headers["retry-after"])
        assert 1 <= retry_after <= 2, headers

        # The SDK maps it to its rate-limit error (on a POST: its GETs are
        # retried by urllib3, which honours Retry-After). Nothing is created.
        d = srv.client()
        with pytest.raises(DaytonaRateLimitError):
            d.create()
        # Another key has its own bucket; the toolbox is not limited.
        assert srv.http("GET", "/api/sandbox", headers={"Authorization": f"Bearer {other_key}"})[0] == 200
        for _ in range(10):
            status, _, body = srv.http("POST", f"/toolbox/{sb['id']}/process/execute", json={"command": "true"})
            assert status == 200, body

        time.sleep(retry_after + 0.2)
        status, _, body = srv.http("GET", "/api/sandbox")
        assert status == 200, body
        assert [item["id"] for item in json.loads(body)["items"]] == [sb["id"]]
        assert d.get(sb["id"]).id == sb["id"]


def count_signed_tokens(srv):
    sql = "SELECT COUNT(*) FROM signed_preview_tokens"
    if srv.database_url:
        psql = str(postgres().bin / "psql")
        out = subprocess.run([psql, srv.database_url, "-tAc", sql], check=True,
                             capture_output=True, text=True).stdout
        return int(out.strip())
    db = sqlite3.connect(f"file:{srv.data_dir / 'atoll.db'}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchone()[0]
    finally:
        db.close()


def test_expired_signed_preview_tokens_are_swept(atoll_bin, images_dir):
    with running_server(atoll_bin, images_dir, {"ATOLL_LIFECYCLE_TICK_SECS": "0.5"}) as srv:
        sb = srv.client().create()
        short = sb.create_signed_preview_url(8080, expires_in_seconds=2)
        sb.create_signed_preview_url(8080, expires_in_seconds=3600)
        assert count_signed_tokens(srv) == 2
        deadline = time.monotonic() + 30
        while count_signed_tokens(srv) != 1:
            assert time.monotonic() < deadline, "the expired token's row was never deleted"
            time.sleep(0.5)
        # The swept token opens nothing (it expired before it was swept).
        status, _, _ = srv.http("GET", f"/preview/{sb.id}/8080/?DAYTONA_SANDBOX_AUTH_KEY={short.token}", auth=False)
        assert status == 403


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_data_dir_is_0700_and_the_database_0600(atoll_bin, images_dir):
    with running_server(atoll_bin, images_dir) as srv:
        db = srv.data_dir / "atoll.db"
        sqlite = srv.database_url is None

        def check():
            assert mode(srv.data_dir) == 0o700, oct(mode(srv.data_dir))
            if sqlite:
                for f in (db, db.with_name("atoll.db-wal"), db.with_name("atoll.db-shm")):
                    if f.exists() or f == db:
                        assert mode(f) == 0o600, (f, oct(mode(f)))

        check()
        # Sandboxes still work below a private data dir.
        sb = srv.client().create()
        assert sb.process.exec("id -un").result.strip() == "daytona"
        sb.delete()

        # An older server left them open: the next start closes them again.
        srv.stop()
        os.chmod(srv.data_dir, 0o755)
        if sqlite:
            for f in db.parent.glob("atoll.db*"):
                os.chmod(f, 0o644)
        srv.start()
        check()
