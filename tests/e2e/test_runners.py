"""Runners through Daytona's own API client (`RunnersApi`, whose pydantic
models check every field of the answers): the embedded runner of `atoll
serve` is registered with the host's capacity and holds the sandboxes it
runs; an admin registers a remote runner and gets its key once; draining
the embedded runner refuses new sandboxes (the SDK's create fails with the
reason) while the ones it runs keep working; the flag survives a restart."""

import json

import pytest
from conftest import running_server
from daytona import CreateSandboxFromSnapshotParams
from daytona.common.errors import DaytonaError
from daytona_api_client import CreateRunner, RunnersApi


@pytest.fixture
def srv(atoll_bin, images_dir):
    with running_server(atoll_bin, images_dir) as s:
        yield s


def runners_api(d):
    return RunnersApi(d._api_client)


def test_embedded_runner_is_listed_with_capacity_and_holds_its_sandboxes(srv):
    d = srv.client()
    api = runners_api(d)
    runners = api.list_runners()
    assert len(runners) == 1, runners
    local = runners[0]
    assert local.state.value == "ready", local
    assert local.runner_class.value == "container"
    assert local.cpu >= 1 and local.memory >= 1 and local.disk >= 1, local
    sb = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
    try:
        assert sb.runner_id == local.id
        held = api.get_runner_by_sandbox_id(sb.id)
        assert held.id == local.id
        assert held.current_started_sandboxes >= 1 and held.current_allocated_cpu >= 1, held
        assert not held.api_key.startswith("atl_"), "the key is stored hashed, never shown again"
    finally:
        sb.delete()


def test_registered_runner_gets_its_key_once_and_authenticates_with_it(srv):
    d = srv.client()
    api = runners_api(d)
    created = api.create_runner(CreateRunner(name="edge-1", region_id="eu", tags=["ssd"]))
    assert created.api_key.startswith("atl_")
    status, _, body = srv.http("GET", "/api/runners/me",
                               headers={"Authorization": f"Bearer {created.api_key}"})
    assert status == 200, body
    me = json.loads(body)
    assert me["id"] == created.id and me["state"] == "initializing" and me["tags"] == ["ssd"]
    status, _, _ = srv.http("POST", "/api/runners/healthcheck",
                            headers={"Authorization": f"Bearer {created.api_key}"},
                            json={"appVersion": "test", "metrics": None})
    assert status == 200
    got = api.get_runner_by_id(created.id)
    assert got.state.value == "ready" and got.region == "eu", got
    assert [r.name for r in api.list_runners(region_id="eu")] == ["edge-1"]
    api.delete_runner(created.id)
    status, _, _ = srv.http("GET", "/api/runners/me",
                            headers={"Authorization": f"Bearer {created.api_key}"})
    assert status == 401


def test_draining_refuses_new_sandboxes_keeps_running_ones_and_survives_restart(srv):
    d = srv.client()
    local = runners_api(d).list_runners()[0]
    kept = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
    status, _, body = srv.http("PATCH", f"/api/runners/{local.id}/draining", json={"draining": True})
    assert status == 200 and json.loads(body)["draining"] is True, body
    with pytest.raises(DaytonaError) as e:
        d.create(CreateSandboxFromSnapshotParams())
    assert "draining" in str(e.value), e.value
    assert kept.process.exec("echo alive").result.strip() == "alive"

    srv.restart()
    d = srv.client()
    assert runners_api(d).get_runner_by_id(local.id).state.value == "ready"
    status, _, body = srv.http("GET", f"/api/runners/{local.id}")
    assert json.loads(body)["draining"] is True, "draining is kept across restarts"
    with pytest.raises(DaytonaError):
        d.create(CreateSandboxFromSnapshotParams())

    status, _, body = srv.http("PATCH", f"/api/runners/{local.id}/draining", json={"draining": False})
    assert status == 200, body
    sb = d.create(CreateSandboxFromSnapshotParams())
    assert sb.state.value == "started"
    sb.delete()
    d.get(kept.id).delete()
