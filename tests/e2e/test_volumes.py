"""Volumes through the official SDK (`VolumeService`, `VolumeMount`) and the
raw API: shared between sandboxes with the same owners in each, read-only
mounts, subpaths that cannot be escaped, quotas, delete while in use, and
data that outlives sandboxes and server restarts."""

from __future__ import annotations

import secrets

import pytest
from daytona import CreateSandboxFromSnapshotParams, VolumeMount
from daytona.common.errors import DaytonaError

from oci_images import api


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def run(sb, cmd: str) -> tuple[int, str]:
    r = sb.process.exec(cmd)
    return r.exit_code, r.result


def test_a_volume_is_shared_with_the_same_owners_and_outlives_its_sandboxes(daytona, server):
    name = unique("shared")
    vol = daytona.volume.get(name, create=True)
    assert vol.state == "ready" and vol.name == name
    assert daytona.volume.get(name).id == vol.id
    mount = [VolumeMount(volume_id=vol.id, mount_path="/home/daytona/data")]
    a = daytona.create(CreateSandboxFromSnapshotParams(volumes=mount))
    b = daytona.create(CreateSandboxFromSnapshotParams(
        volumes=[VolumeMount(volume_id=name, mount_path="/mnt/shared")]))
    try:
        # Written by daytona (uid 1000) in one sandbox...
        code, out = run(a, "echo from-a > /home/daytona/data/note && mkdir /home/daytona/data/dir && id -u")
        assert code == 0 and out.strip() == "1000", out
        # ...is daytona's in the other, which sees it at once and may write it.
        code, out = run(b, "cat /mnt/shared/note; stat -c '%U %u' /mnt/shared/note /mnt/shared/dir; "
                           "echo from-b >> /mnt/shared/note && echo ok")
        assert code == 0, out
        assert out.split() == ["from-a", "daytona", "1000", "daytona", "1000", "ok"], out
        assert run(a, "cat /home/daytona/data/note")[1].split() == ["from-a", "from-b"]
        # The SDK's file calls work through the mount too.
        a.fs.upload_file(b"uploaded", "/home/daytona/data/up.bin")
        assert b.fs.download_file("/mnt/shared/up.bin") == b"uploaded"
        assert b.volumes[0].volume_id == vol.id and b.volumes[0].mount_path == "/mnt/shared"
    finally:
        a.delete()
        b.delete()
    # The volume outlives both.
    c = daytona.create(CreateSandboxFromSnapshotParams(volumes=mount))
    try:
        assert run(c, "cat /home/daytona/data/note")[1].split() == ["from-a", "from-b"]
        # A volume in use cannot be deleted.
        with pytest.raises(DaytonaError, match="in use"):
            daytona.volume.delete(vol)
    finally:
        c.delete()
    daytona.volume.delete(vol)
    with pytest.raises(DaytonaError):
        daytona.volume.get(name)
    assert all(v.id != vol.id for v in daytona.volume.list())


def create_sandbox(server, daytona, volumes: list[dict]):
    """A sandbox whose mounts carry fields the Python SDK drops (readOnly)."""
    status, body = api(server, "POST", "/sandbox", {"volumes": volumes})
    assert status == 200, body
    return daytona.get(body["id"])


def test_read_only_mounts_refuse_writes_while_another_sandbox_writes(daytona, server):
    vol = daytona.volume.create(unique("dataset"))
    writer = daytona.create(CreateSandboxFromSnapshotParams(
        volumes=[VolumeMount(volume_id=vol.id, mount_path="/data")]))
    reader = create_sandbox(server, daytona, [{"volumeId": vol.id, "mountPath": "/data", "readOnly": True}])
    try:
        status, body = api(server, "GET", f"/sandbox/{reader.id}")
        assert body["volumes"] == [{"volumeId": vol.id, "mountPath": "/data", "readOnly": True}], body
        assert run(writer, "echo v1 > /data/file && echo ok")[1].strip() == "ok"
        code, out = run(reader, "cat /data/file; echo x > /data/other 2>&1; echo rc=$?")
        assert "v1" in out and "Read-only file system" in out and "rc=0" not in out, out
        # Root inside cannot make it writable again.
        code, out = run(reader, "sudo -n mount -o remount,rw /data 2>&1 || mount -o remount,rw /data 2>&1; "
                                "touch /data/again 2>&1; echo rc=$?")
        assert "rc=0" not in out and "rc=" in out, out
        # It sees the writer's changes as they happen.
        run(writer, "echo v2 > /data/file")
        assert run(reader, "cat /data/file")[1].strip() == "v2"
    finally:
        writer.delete()
        reader.delete()
        daytona.volume.delete(vol)


def test_subpath_mounts_are_confined_to_the_subpath(daytona, server):
    vol = daytona.volume.create(unique("homes"))
    owner = daytona.create(CreateSandboxFromSnapshotParams(
        volumes=[VolumeMount(volume_id=vol.id, mount_path="/vol")]))
    try:
        code, out = run(owner, "mkdir -p /vol/users/alice && echo alice > /vol/users/alice/mine && "
                               "echo secret > /vol/top-secret && ln -s /etc /vol/users/evil && "
                               "ln -s ../../ /vol/users/alice/up && echo ok")
        assert out.strip() == "ok", out
        alice = daytona.create(CreateSandboxFromSnapshotParams(
            volumes=[VolumeMount(volume_id=vol.id, mount_path="/home/daytona/me", subpath="users/alice")]))
        try:
            code, out = run(alice, "ls /home/daytona/me; cat /home/daytona/me/mine; "
                                   "cat /home/daytona/me/up/top-secret 2>&1; ls /home/daytona/me/up/")
            assert "mine" in out and "alice" in out
            # `up` resolves in the sandbox's own tree, never to the volume's root.
            assert "secret" not in out.replace("top-secret", ""), out
            # A new subpath is made on first use, inside the volume.
            new = daytona.create(CreateSandboxFromSnapshotParams(
                volumes=[VolumeMount(volume_id=vol.id, mount_path="/w", subpath="users/bob/work")]))
            try:
                run(new, "echo bob > /w/b")
            finally:
                new.delete()
            assert run(owner, "cat /vol/users/bob/work/b")[1].strip() == "bob"
        finally:
            alice.delete()
        # A subpath through a symlink the sandbox planted does not start.
        status, body = api(server, "POST", "/sandbox", {"volumes": [
            {"volumeId": vol.id, "mountPath": "/x", "subpath": "users/evil"}]})
        if status == 200:
            import time
            deadline = time.time() + 60
            while body["state"] not in ("error", "started") and time.time() < deadline:
                time.sleep(0.3)
                body = api(server, "GET", f"/sandbox/{body['id']}")[1]
            assert body["state"] == "error" and "symlink" in (body.get("errorReason") or ""), body
            api(server, "DELETE", f"/sandbox/{body['id']}")
        else:
            assert status in (400, 500) and "symlink" in str(body), body
        # `..` never reaches the runner.
        status, body = api(server, "POST", "/sandbox", {"volumes": [
            {"volumeId": vol.id, "mountPath": "/x", "subpath": "users/../../etc"}]})
        assert status == 400, body
    finally:
        owner.delete()
        daytona.volume.delete(vol)


def test_a_volume_quota_is_enforced_and_usage_shown(daytona, server):
    status, vol = api(server, "POST", "/volumes", {"name": unique("small"), "size": 1})
    assert status == 200 and vol["state"] == "ready" and vol["size"] == 1, vol
    sb = create_sandbox(server, daytona, [{"volumeId": vol["id"], "mountPath": "/q"}])
    try:
        code, out = run(sb, "dd if=/dev/zero of=/q/fill bs=1M count=1200 2>&1; echo rc=$?")
        assert "No space left on device" in out and "rc=0" not in out, out[-500:]
        status, got = api(server, "GET", f"/volumes/{vol['id']}")
        assert got["usedBytes"] > 800 << 20, got
        # The sandbox's own disk is untouched by the volume's fill.
        assert run(sb, "echo fine > /tmp/ok && cat /tmp/ok")[1].strip() == "fine"
    finally:
        sb.delete()
        assert api(server, "DELETE", f"/volumes/{vol['id']}")[0] == 200


def test_bad_volume_requests_get_clear_errors(server):
    name = unique("dup")
    status, vol = api(server, "POST", "/volumes", {"name": name})
    assert status == 200, vol
    assert api(server, "POST", "/volumes", {"name": name})[0] == 400
    assert api(server, "POST", "/volumes", {"name": "bad/name"})[0] == 400
    assert api(server, "POST", "/volumes", {"name": unique("big"), "size": 100000})[0] == 400
    assert api(server, "POST", "/volumes", {"name": 5})[0] == 400
    assert api(server, "GET", "/volumes/00000000-0000-0000-0000-000000000000")[0] == 404
    assert api(server, "GET", "/volumes/by-name/nope-none")[0] == 404
    assert api(server, "DELETE", "/volumes/../../etc")[0] in (400, 404)
    status, body = api(server, "POST", "/sandbox", {"volumes": [{"volumeId": "no-such-volume", "mountPath": "/m"}]})
    assert status == 404 and "not found" in body["message"], body
    status, body = api(server, "POST", "/sandbox", {"volumes": [
        {"volumeId": vol["id"], "mountPath": "/m"}, {"volumeId": vol["id"], "mountPath": "/m/"}]})
    assert status == 400, body
    # One volume inside another's mount path.
    status, body = api(server, "POST", "/sandbox", {"volumes": [
        {"volumeId": vol["id"], "mountPath": "/m"}, {"volumeId": vol["id"], "mountPath": "/m/inner"}]})
    assert status == 400 and "inside" in body["message"], body
    assert api(server, "DELETE", f"/volumes/{vol['id']}")[0] == 200


def test_volumes_survive_a_server_restart(fresh_server):
    srv = fresh_server
    client = srv.client()
    vol = client.volume.create(unique("durable"))
    sb = client.create(CreateSandboxFromSnapshotParams(
        volumes=[VolumeMount(volume_id=vol.id, mount_path="/keep")]))
    run(sb, "echo kept > /keep/f")
    sb.delete()
    srv.stop()
    srv.start()
    client = srv.client()
    assert client.volume.get(vol.name).state == "ready"
    sb = client.create(CreateSandboxFromSnapshotParams(
        volumes=[VolumeMount(volume_id=vol.id, mount_path="/keep")]))
    try:
        assert run(sb, "cat /keep/f")[1].strip() == "kept"
    finally:
        sb.delete()
    client.volume.delete(vol)


def test_a_server_killed_mid_volume_create_or_delete_leaves_no_half_state(atoll_bin, images_dir):
    """Killed after a volume's row is written, or after it is marked
    `deleting`: the next server finishes the work (the volume becomes
    ready, or goes), and nothing is left half made."""
    import time
    from functools import partial
    from conftest import AtollServer, die_on as die, failpoint_binary, restart_with
    fp_bin = failpoint_binary()
    fast = {"ATOLL_SNAPSHOT_STALE_SECS": "1", "ATOLL_SNAPSHOT_KEEPER_SECS": "0.3"}
    srv = AtollServer(atoll_bin, images_dir)
    restart = partial(restart_with, srv)
    die_on = partial(die, srv)

    def wait_volume(name, want, timeout=30):
        deadline = time.time() + timeout
        while True:
            status, v = api(srv, "GET", f"/volumes/by-name/{name}")
            if (want is None and status == 404) or (status == 200 and v["state"] == want):
                return v
            assert time.time() < deadline, (status, v)
            time.sleep(0.2)

    volumes_dir = srv.data_dir / "volumes"
    try:
        restart(fp_bin, {"ATOLL_FAILPOINT": "volume.create.after_insert"})
        die_on("POST", "/api/volumes", {"name": "crashed-create"})
        restart(atoll_bin, fast)
        v = wait_volume("crashed-create", "ready")
        sb = srv.client().create(CreateSandboxFromSnapshotParams(
            volumes=[VolumeMount(volume_id=v["id"], mount_path="/v")]))
        try:
            assert run(sb, "echo works > /v/f && cat /v/f")[1].strip() == "works"
        finally:
            sb.delete()

        restart(fp_bin, {"ATOLL_FAILPOINT": "volume.delete.after_transition"})
        die_on("DELETE", f"/api/volumes/{v['id']}")
        restart(atoll_bin, fast)
        wait_volume("crashed-create", None)
        deadline = time.time() + 10
        while (volumes_dir / v["id"]).exists() and time.time() < deadline:
            time.sleep(0.2)
        assert not (volumes_dir / v["id"]).exists(), "the volume's files are gone"
        mounts = open("/proc/self/mountinfo").read()
        assert v["id"] not in mounts, "nothing of it stays mounted"
    finally:
        srv.stop()


def files(server, method: str, vol_id: str, route: str, query: dict, body: bytes | None = None,
          headers: dict | None = None) -> tuple[int, bytes]:
    import urllib.parse
    import urllib.request
    url = f"{server.url}/api/volumes/{vol_id}/files{route}?{urllib.parse.urlencode(query)}"
    req = urllib.request.Request(url, data=body, method=method, headers={
        "Authorization": f"Bearer {server.api_key}", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def multipart(name: str, data: bytes) -> tuple[bytes, dict]:
    boundary = "atoll-" + secrets.token_hex(8)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_files_go_in_and_out_of_a_volume_without_a_sandbox(daytona, server):
    import json
    status, vol = api(server, "POST", "/volumes", {"name": unique("files"), "size": 1})
    assert status == 200, vol
    vid = vol["id"]
    big = secrets.token_bytes(3 << 20)
    body, headers = multipart("model.bin", big)
    assert files(server, "POST", vid, "/upload", {"path": "/datasets/v1/model.bin"}, body, headers)[0] == 200
    # A raw body works too.
    assert files(server, "POST", vid, "/upload", {"path": "notes.txt"}, b"hello\n",
                 {"Content-Type": "application/octet-stream"})[0] == 200
    status, listing = files(server, "GET", vid, "", {"path": "/"})
    assert status == 200
    entries = {e["name"]: e for e in json.loads(listing)}
    assert entries["datasets"]["isDir"] and entries["notes.txt"]["size"] == 6, entries
    assert entries["notes.txt"]["owner"] == "1000" and entries["notes.txt"]["path"] == "/notes.txt"
    status, got = files(server, "GET", vid, "/download", {"path": "datasets/v1/model.bin"})
    assert status == 200 and got == big

    # Inside a sandbox: the files are daytona's, and what it writes comes out.
    sb = daytona.create(CreateSandboxFromSnapshotParams(
        volumes=[VolumeMount(volume_id=vid, mount_path="/home/daytona/v")]))
    try:
        code, out = run(sb, "cat /home/daytona/v/notes.txt; stat -c %U /home/daytona/v/datasets/v1/model.bin; "
                            "echo more >> /home/daytona/v/notes.txt && echo from-sandbox > /home/daytona/v/out.txt && "
                            "ln -s /etc/passwd /home/daytona/v/passwd && ln -s /etc /home/daytona/v/etcdir && echo ok")
        assert out.split() == ["hello", "daytona", "ok"], out
    finally:
        sb.delete()
    assert files(server, "GET", vid, "/download", {"path": "out.txt"}) == (200, b"from-sandbox\n")
    assert files(server, "GET", vid, "/download", {"path": "notes.txt"})[1] == b"hello\nmore\n"
    # Symlinks the sandbox planted never lead to the host: they resolve
    # inside the volume (which has no /etc/passwd), and writes through them
    # are refused.
    status, got = files(server, "GET", vid, "/download", {"path": "passwd"})
    assert status == 404 and b"root:" not in got, got
    status, listing = files(server, "GET", vid, "", {"path": "/"})
    link = next(e for e in json.loads(listing) if e["name"] == "passwd")
    assert link["symlinkTarget"] == "/etc/passwd"
    status, err = files(server, "POST", vid, "/upload", {"path": "etcdir/owned"}, b"x",
                        {"Content-Type": "application/octet-stream"})
    assert status == 400 and b"symlink" in err, err
    import os
    assert not os.path.exists("/etc/owned")

    # Bad paths and unknown things.
    assert files(server, "GET", vid, "/download", {"path": "../../etc/passwd"})[0] == 400
    assert files(server, "GET", vid, "/download", {"path": "datasets"})[0] == 400
    assert files(server, "GET", vid, "/download", {"path": "missing"})[0] == 404
    assert files(server, "GET", vid, "", {})[0] == 400
    assert files(server, "GET", "00000000-0000-0000-0000-000000000000", "", {"path": "/"})[0] == 404
    # Past the quota: 507 (or the connection cut as the server stops
    # reading), and no half file left behind.
    huge = b"\0" * (1100 << 20)
    try:
        status, _ = files(server, "POST", vid, "/upload", {"path": "huge.bin"}, huge,
                          {"Content-Type": "application/octet-stream"})
        assert status == 507, status
    except OSError:
        pass
    del huge
    names = [e["name"] for e in json.loads(files(server, "GET", vid, "", {"path": "/"})[1])]
    assert "huge.bin" not in names and not any(n.startswith(".atoll-upload") for n in names), names

    # Deletes: a non-empty directory only with recursive.
    assert files(server, "DELETE", vid, "", {"path": "datasets"})[0] == 400
    assert files(server, "DELETE", vid, "", {"path": "datasets", "recursive": "true"})[0] == 204
    assert files(server, "DELETE", vid, "", {"path": "passwd"})[0] == 204
    assert files(server, "DELETE", vid, "", {"path": "/"})[0] == 400
    names = [e["name"] for e in json.loads(files(server, "GET", vid, "", {"path": "/"})[1])]
    assert sorted(names) == ["etcdir", "notes.txt", "out.txt"], names
    assert os.path.exists("/etc/passwd")
    assert api(server, "DELETE", f"/volumes/{vid}")[0] == 200
