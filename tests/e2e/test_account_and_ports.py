"""Routes older SDKs and integrations ask for first (`GET /api/users/me`,
`/api/regions`, `/api/shared-regions`), driven through the official SDK's
generated API client, and the toolbox's port routes (`GET /port`,
`GET /port/{port}/in-use`) through the toolbox proxy."""

import json
import time

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
