"""Warm pools (`WarmPoolService`): N started sandboxes of a snapshot kept
ready; a matching create takes one (its name, labels, env and network
policy applied) and the pool refills in the background; members are not
listed; resizing and deleting the pool removes the members nobody took."""

import json
import time

import pytest
from conftest import running_server
from daytona import CreateSandboxFromSnapshotParams
from daytona.common.errors import DaytonaError
from daytona_api_client.exceptions import ApiException


@pytest.fixture
def srv(atoll_bin, images_dir):
    with running_server(atoll_bin, images_dir) as s:
        yield s


def members(server):
    status, _, body = server.http("GET", "/api/sandbox?includeWarm=true&limit=200")
    assert status == 200
    return [s for s in json.loads(body)["items"] if s.get("warmPoolId")]


def wait_ready(d, pool_id, size, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        pool = next(p for p in d.warm_pool.list() if p.id == pool_id)
        if pool.current_size == size:
            return pool
        time.sleep(0.2)
    raise AssertionError(f"pool {pool_id} did not reach {size}: {pool}")


def test_create_takes_a_warm_sandbox_and_the_pool_refills(srv):
    d = srv.client()
    snapshot = next(s.name for s in d.snapshot.list().items if s.general)
    pool = d.warm_pool.create(snapshot, 2)
    assert pool.pool == 2 and pool.target == "local"
    wait_ready(d, pool.id, 2)
    warm_ids = {m["id"] for m in members(srv)}
    assert len(warm_ids) == 2
    # Members are not in the normal list.
    assert not warm_ids & {s.id for s in d.list()}

    sb = d.create(
        CreateSandboxFromSnapshotParams(
            name="from-pool", labels={"team": "a"}, env_vars={"GREETING": "hi there"}, network_block_all=True
        )
    )
    assert sb.id in warm_ids, "the create did not take a warm sandbox"
    assert sb.name == "from-pool" and sb.labels.get("team") == "a"
    assert sb.env.get("GREETING") == "hi there" and sb.network_block_all
    assert sb.process.exec('echo "$GREETING"').result.strip() == "hi there"
    blocked = sb.process.exec("timeout 3 bash -c 'echo > /dev/tcp/1.1.1.1/53' && echo open || echo blocked")
    assert blocked.result.strip().endswith("blocked")
    assert sb.id in {s.id for s in d.list()}
    # Refilled in the background.
    wait_ready(d, pool.id, 2)
    assert len({m["id"] for m in members(srv)} - warm_ids) == 1

    # A create the pool cannot serve (another user) starts cold.
    before = {m["id"] for m in members(srv)}
    status, _, body = srv.http("POST", "/api/sandbox", json={"name": "cold-one", "user": "root"})
    assert status == 200, body
    cold = json.loads(body)
    assert cold["id"] not in before and cold["user"] == "root"
    assert {m["id"] for m in members(srv)} == before
    srv.http("DELETE", f"/api/sandbox/{cold['id']}")
    sb.delete()

    # Shrinking and deleting the pool removes unclaimed members.
    d.warm_pool.update(pool.id, 1)
    deadline = time.time() + 30
    while len(members(srv)) != 1 and time.time() < deadline:
        time.sleep(0.2)
    assert len(members(srv)) == 1
    wait_ready(d, pool.id, 1)
    d.warm_pool.delete(pool.id)
    deadline = time.time() + 30
    while members(srv) and time.time() < deadline:
        time.sleep(0.2)
    assert members(srv) == []
    assert [p for p in d.warm_pool.list() if p.id == pool.id] == []


def test_bad_pools_are_refused(srv):
    d = srv.client()
    with pytest.raises((DaytonaError, ApiException)):
        d.warm_pool.create("no-such-snapshot", 1)
    status, _, body = srv.http("POST", "/api/warm-pools", json={"snapshot": "x", "pool": 0})
    assert status == 400, body
    status, _, _ = srv.http("PATCH", "/api/warm-pools/nope", json={"pool": 1})
    assert status == 404
    snapshot = next(s.name for s in d.snapshot.list().items if s.general)
    pool = d.warm_pool.create(snapshot, 1)
    with pytest.raises((DaytonaError, ApiException)):
        d.warm_pool.create(snapshot, 1)  # one pool per snapshot and region
    status, _, _ = srv.http("PATCH", f"/api/warm-pools/{pool.id}", json={"pool": -1})
    assert status == 400
    d.warm_pool.delete(pool.id)
