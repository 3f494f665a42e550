"""Routes older SDKs and integrations ask for first (`GET /api/users/me`,
`/api/regions`, `/api/shared-regions`), driven through the official SDK's
generated API client, and the toolbox's port routes (`GET /port`,
`GET /port/{port}/in-use`) through the toolbox proxy."""

import json
import time
import urllib.parse

import daytona_api_client as api


def client(server):
    cfg = api.Configuration(host=server.api_url)
    c = api.ApiClient(cfg)
    c.default_headers["Authorization"] = f"Bearer {server.api_key}"
    return c


def test_users_me_names_the_calling_key_and_its_organization(server):
    me = api.UsersApi(client(server)).get_authenticated_user()
    assert me.id and me.created_at
    status, _, body = server.http("GET", "/api/users/me")
    raw = json.loads(body)
    assert status == 200 and raw["id"] == me.id
    assert raw["organizationId"] and raw["role"] == "admin"
    status, _, body = server.http("GET", "/api/users/me", auth=False)
    assert status == 401 and json.loads(body)["statusCode"] == 401


def test_regions_list_the_one_region_sandboxes_run_in(server, sandbox):
    c = client(server)
    available = api.OrganizationsApi(c).list_available_regions()
    shared = api.RegionsApi(c).list_shared_regions()
    for listed in (available, shared):
        assert [r.id for r in listed] == ["local"]
        assert listed[0].region_type == "shared"
    status, _, body = server.http("GET", f"/api/sandbox/{sandbox.id}")
    assert json.loads(body)["target"] == "local"


def test_ports_show_what_listens_inside(server, sandbox):
    sandbox.process.exec("nohup python3 -m http.server 8123 --bind 127.0.0.1 > /tmp/http.log 2>&1 &")
    deadline = time.time() + 20
    ports = []
    while time.time() < deadline:
        status, _, body = server.http("GET", f"/toolbox/{sandbox.id}/port")
        assert status == 200, body
        ports = json.loads(body)["ports"]
        if 8123 in ports:
            break
        time.sleep(0.2)
    assert 8123 in ports, ports
    status, _, body = server.http("GET", f"/toolbox/{sandbox.id}/port/8123/in-use")
    assert (status, json.loads(body)) == (200, {"isInUse": True})
    status, _, body = server.http("GET", f"/toolbox/{sandbox.id}/port/8124/in-use")
    assert (status, json.loads(body)) == (200, {"isInUse": False})
    status, _, body = server.http("GET", f"/toolbox/{sandbox.id}/port/99999/in-use")
    assert status == 400, body


def test_paginated_list_for_older_sdks_pages_and_filters(server, daytona, make_sandbox):
    from daytona import CreateSandboxFromSnapshotParams

    tag = f"pg-{int(time.time() * 1000)}"
    small = [make_sandbox(CreateSandboxFromSnapshotParams(labels={"t": tag})) for _ in range(3)]
    # The SDK sends resources only with an image; a raw create sets cpu.
    status, _, body = server.http("POST", "/api/sandbox", json={"cpu": 2, "labels": {"t": tag}})
    assert status == 200, body
    big = daytona.get(json.loads(body)["id"])
    labels = urllib.parse.quote(json.dumps({"t": tag}))
    status, _, body = server.http("GET", f"/api/sandbox/paginated?labels={labels}&limit=2&page=1&sort=createdAt&order=asc")
    assert status == 200, body
    page1 = json.loads(body)
    assert (page1["total"], page1["page"], page1["totalPages"]) == (4, 1, 2)
    assert [s["id"] for s in page1["items"]] == [s.id for s in small[:2]]
    page2 = json.loads(server.http("GET", f"/api/sandbox/paginated?labels={labels}&limit=2&page=2&order=asc")[2])
    assert [s["id"] for s in page2["items"]] == [small[2].id, big.id]
    # the same filters on both lists: cpu range, snapshot, region
    for path in ("/api/sandbox/paginated", "/api/sandbox"):
        got = json.loads(server.http("GET", f"{path}?labels={labels}&minCpu=2")[2])["items"]
        assert [s["id"] for s in got] == [big.id], path
        got = json.loads(server.http("GET", f"{path}?labels={labels}&snapshots=no-such-snapshot")[2])["items"]
        assert got == [], path
    for bad in ("page=0", "limit=500", "minCpu=x", "order=sideways"):
        status, _, body = server.http("GET", f"/api/sandbox/paginated?{bad}")
        assert status == 400 and json.loads(body)["statusCode"] == 400, (bad, body)
    big.delete()
