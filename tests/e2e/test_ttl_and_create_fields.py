"""TTL (`set_ttl`, `ttlMinutes`): a sandbox is deleted when its time to
live passes, whatever its state; `autoDestroyAt` shows when. Every
`CreateSandbox` field the SDK sends is honoured or refused with a 400 that
says why. Interval "minutes" are shortened with
`ATOLL_LIFECYCLE_MINUTE_SECS`."""

import time

import pytest
from conftest import running_server
from daytona import CreateSandboxFromSnapshotParams
from daytona.common.errors import DaytonaError

MINUTE_S = 2


@pytest.fixture(scope="module")
def quick(atoll_bin, images_dir):
    env = {"ATOLL_LIFECYCLE_MINUTE_SECS": str(MINUTE_S), "ATOLL_LIFECYCLE_TICK_SECS": "0.25"}
    with running_server(atoll_bin, images_dir, env) as srv:
        yield srv


def wait_gone(client, sid, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            client.get(sid)
        except DaytonaError:
            return True
        time.sleep(0.25)
    return False


def test_ttl_deletes_started_and_stopped_sandboxes(quick):
    d = quick.client()
    running = d.create(CreateSandboxFromSnapshotParams(ttl_minutes=2))
    assert running.auto_destroy_at
    stopped = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
    stopped.set_ttl(3)
    d.stop(stopped)
    kept = d.create(CreateSandboxFromSnapshotParams(ttl_minutes=1))
    kept.set_ttl(0)  # disables it
    assert d.get(kept.id).auto_destroy_at is None
    assert wait_gone(d, running.id, 4 * MINUTE_S + 5)
    assert wait_gone(d, stopped.id, 3 * MINUTE_S + 5)
    assert d.get(kept.id).state.value == "started"
    kept.delete()


def test_set_ttl_moves_the_deadline_from_now(quick):
    d = quick.client()
    sb = d.create(CreateSandboxFromSnapshotParams(ttl_minutes=1000))
    first = d.get(sb.id).auto_destroy_at
    sb.set_ttl(1)
    assert d.get(sb.id).auto_destroy_at < first
    assert wait_gone(d, sb.id, 2 * MINUTE_S + 5)


def test_bad_ttl_is_refused(server, sandbox):
    for bad in ("-1", "abc", "1.5"):
        status, _, body = server.http("POST", f"/api/sandbox/{sandbox.id}/ttl/{bad}")
        assert status == 400, (bad, body)
    status, _, _ = server.http("POST", "/api/sandbox", json={"ttlMinutes": -5})
    assert status == 400


@pytest.mark.parametrize(
    "field,value,says",
    [
        ("kvm", True, "kvm"),
        ("spot", True, "spot"),
        ("gpuType", ["H100"], "gpu"),
        ("otelEndpointOverride", "http://otel:4318", "otel"),
        ("linkedSandbox", "other", "linkedSandbox"),
        ("target", "eu", "target"),
        ("queueTimeout", 0, "queueTimeout"),
        ("outboundProxyUrl", "ftp://proxy:21", "outboundProxyUrl"),
        ("volumes", [{"volumeId": "v", "mountPath": "relative/path"}], "mountPath"),
        ("volumes", [{"volumeId": "v", "mountPath": "/proc/x"}], "reserved"),
        ("volumes", [{"volumeId": "v", "mountPath": "/m", "subpath": "../up"}], "subpath"),
        # buildInfo is supported (test_images.py); contexts must be uploaded.
        ("buildInfo", {"dockerfileContent": "FROM x\nCOPY a /a\n", "contextHashes": ["0a1b"]}, "context"),
        ("domainAllowList", "example.com", "domain"),
    ],
)
def test_unsupported_create_fields_get_a_400_and_create_nothing(server, field, value, says):
    status, _, before = server.http("GET", "/api/sandbox")
    status, _, body = server.http("POST", "/api/sandbox", json={field: value})
    assert status == 400, body
    assert says.lower() in body.decode().lower()
    _, _, after = server.http("GET", "/api/sandbox")
    assert before == after


def test_supported_create_fields_are_honoured(daytona, make_sandbox, server):
    sb = make_sandbox(
        CreateSandboxFromSnapshotParams(
            target="local",
            ttl_minutes=60,
        )
    )
    status, _, body = server.http(
        "POST",
        "/api/sandbox",
        json={"queueTimeout": 5, "outboundProxyUrl": "http://user:pw@proxy.internal:3128", "kvm": False, "spot": False},
    )
    assert status == 200, body
    import json

    made = json.loads(body)
    try:
        assert made["queueTimeout"] == 5
        assert made["outboundProxyUrl"] == "http://user:pw@proxy.internal:3128"
        proxied = daytona.get(made["id"])
        out = proxied.process.exec('echo "$HTTP_PROXY|$https_proxy|$NO_PROXY"').result.strip()
        assert out == "http://user:pw@proxy.internal:3128|http://user:pw@proxy.internal:3128|localhost,127.0.0.1,::1"
    finally:
        server.http("DELETE", f"/api/sandbox/{made['id']}")
    assert sb.target == "local" and sb.auto_destroy_at
