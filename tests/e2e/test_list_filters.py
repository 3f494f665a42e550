"""Every `ListSandboxesQuery` field is honoured server-side through the
official SDK, and an unknown or malformed filter gets 400 (never a filter
silently ignored)."""

import datetime as dt
import json
from urllib.parse import quote

import pytest
from daytona import CreateSandboxFromSnapshotParams, ListSandboxesQuery


@pytest.fixture(scope="module")
def trio(daytona):
    tag = {"suite": "filters"}
    a = daytona.create(CreateSandboxFromSnapshotParams(name="flt-alpha", labels=tag, public=True))
    b = daytona.create(CreateSandboxFromSnapshotParams(name="flt-beta", labels=tag, ttl_minutes=600))
    c = daytona.create(CreateSandboxFromSnapshotParams(name="flt-gamma", labels=tag))
    daytona.stop(c)
    yield a, b, c
    for sb in (a, b, c):
        sb.delete()


def names(daytona, **kw):
    q = ListSandboxesQuery(labels={"suite": "filters"}, **kw)
    return sorted(s.name for s in daytona.list(q))


def test_boolean_state_and_name_filters(daytona, trio):
    assert names(daytona) == ["flt-alpha", "flt-beta", "flt-gamma"]
    assert names(daytona, is_public=True) == ["flt-alpha"]
    assert names(daytona, is_public=False) == ["flt-beta", "flt-gamma"]
    assert names(daytona, is_recoverable=False) == ["flt-alpha", "flt-beta", "flt-gamma"]
    assert names(daytona, is_recoverable=True) == []
    assert names(daytona, states=["stopped"]) == ["flt-gamma"]
    assert names(daytona, name="FLT-B") == ["flt-beta"]  # prefix, any case
    assert names(daytona, name="beta") == []
    a = trio[0]
    assert names(daytona, id=a.id[:8].upper()) == ["flt-alpha"]


def test_time_ranges(daytona, trio):
    a, b, c = trio
    now = dt.datetime.now(dt.timezone.utc)
    hour = dt.timedelta(hours=1)
    assert names(daytona, created_at_after=now - hour) == ["flt-alpha", "flt-beta", "flt-gamma"]
    assert names(daytona, created_at_before=now - hour) == []
    assert names(daytona, created_at_after=now + hour) == []
    # Only b has a TTL (auto-destroy in ~600 minutes).
    assert names(daytona, auto_destroy_at_after=now) == ["flt-beta"]
    assert names(daytona, auto_destroy_at_before=now + hour) == []
    assert names(daytona, last_activity_after=now - hour) == ["flt-alpha", "flt-beta", "flt-gamma"]
    assert names(daytona, last_activity_before=now - hour) == []
    # A naive datetime (no offset) is taken as UTC.
    naive = (now - hour).replace(tzinfo=None)
    assert names(daytona, created_at_after=naive) == ["flt-alpha", "flt-beta", "flt-gamma"]


def test_resource_ranges_sort_and_order(daytona, trio):
    assert names(daytona, min_cpu=1, max_cpu=1) == ["flt-alpha", "flt-beta", "flt-gamma"]
    assert names(daytona, min_cpu=2) == []
    assert names(daytona, min_memory_gib=2) == []
    assert names(daytona, min_disk_gib=1, max_disk_gib=3) == ["flt-alpha", "flt-beta", "flt-gamma"]
    q = ListSandboxesQuery(labels={"suite": "filters"}, sort="name", order="desc")
    assert [s.name for s in daytona.list(q)] == ["flt-gamma", "flt-beta", "flt-alpha"]
    q = ListSandboxesQuery(labels={"suite": "filters"}, sort="name", order="asc", limit=2)
    assert [s.name for s in daytona.list(q)] == ["flt-alpha", "flt-beta", "flt-gamma"]  # pages of 2


@pytest.mark.parametrize(
    "query",
    [
        "bogus=1",
        "isPublic=yes",
        "minCpu=abc",
        "createdAtAfter=yesterday",
        "states=sleeping",
        "sort=color",
        "order=up",
        "sandboxClasses=mainframe",
        "labels=" + quote("[1,2]"),
    ],
)
def test_unknown_or_malformed_filters_get_400(server, query):
    status, _, body = server.http("GET", "/api/sandbox?" + query)
    assert status == 400, body
    assert json.loads(body)["statusCode"] == 400


def test_paginated_list_takes_the_old_sdks_filters(server, trio):
    # Older Python SDKs send labels=null when none are given.
    status, _, body = server.http("GET", "/api/sandbox/paginated?labels=null&page=1&limit=100")
    assert status == 200, body
    label = quote(json.dumps({"suite": "filters"}))
    status, _, body = server.http(
        "GET", f"/api/sandbox/paginated?labels={label}&sort=name&order=asc&states=started&limit=1&page=2"
    )
    assert status == 200, body
    page = json.loads(body)
    assert page["total"] == 2 and page["totalPages"] == 2
    assert [s["name"] for s in page["items"]] == ["flt-beta"]
    status, _, _ = server.http("GET", "/api/sandbox/paginated?cursor=1")
    assert status == 400
