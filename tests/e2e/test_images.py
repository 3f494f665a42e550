"""Your own images: snapshots pulled from an OCI registry (a real
`docker-registry` on loopback, seeded with images the test builds), private
registries with credentials, hostile layers, snapshots of running
sandboxes, through the official SDK and the raw API."""

from __future__ import annotations

import os
import secrets
import time
import uuid
from pathlib import Path

import pytest
from daytona import CreateSandboxFromImageParams, CreateSandboxFromSnapshotParams, CreateSnapshotParams
from daytona.common.errors import DaytonaError

from oci_images import (END_OF_TAR, Layer, Registry, api, busybox_base, gzip_bomb_layer, push_image,
                        raw_tar_entry, wait_snapshot)


# What cannot differ between stores (pulls, unpacking, builds) runs once,
# on SQLite; the snapshot API's own rows run on both.
store_independent = pytest.mark.skipif(os.environ.get("ATOLL_E2E_DATABASE") == "postgres",
                                       reason="runner-side image work does not depend on the store")


@pytest.fixture(scope="module")
def registry():
    reg = Registry()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def base_layer():
    return busybox_base().raw()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def test_snapshot_from_a_registry_image_runs_its_layers_env_and_whiteouts(daytona, server, registry,
                                                                          base_layer):
    repo = unique("test/app")
    top = (Layer()
           .file("etc/greeting", "hello from layer two\n")
           .whiteout("etc/os-release")
           .dir("data", 0o755)
           .file("data/kept", "new\n")
           .opaque("data")
           .file("home/daytona/owned", "mine\n", uid=1000)
           .raw())
    lower_data = Layer().dir("data").file("data/old", "old\n").raw()
    push_image(registry, repo, "v1", [base_layer, lower_data, top], env=[
        "PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hi-from-image"], compression=["gzip", "zstd", "none"])
    name = unique("snap")
    logs: list[str] = []
    snap = daytona.snapshot.create(CreateSnapshotParams(name=name, image=f"{registry.host}/{repo}:v1"),
                                   on_logs=logs.append)
    assert snap.state == "active"
    assert snap.size is not None and snap.size > 0
    assert any("Creating snapshot" in line for line in logs)
    status, log_text = api(server, "GET", f"/snapshots/{snap.id}/build-logs")
    assert status == 200 and "Pulling" in log_text and "[3/3]" in log_text, log_text

    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot=name))
    try:
        assert sb.snapshot == name
        r = sb.process.exec("cat /etc/greeting; echo $GREETING; ls /data; test -e /etc/os-release || echo gone")
        assert r.exit_code == 0, r.result
        assert r.result.split() == ["hello", "from", "layer", "two", "hi-from-image", "kept", "gone"]
        # Ownership maps into the sandbox's user namespace, and daytona can
        # write over a file of the lower layers (copy-up).
        r = sb.process.exec("stat -c %u:%g /home/daytona/owned /bin/busybox; echo x >> /home/daytona/owned && cat /home/daytona/owned")
        assert r.result.split() == ["1000:1000", "0:0", "mine", "x"], r.result
        files = sb.fs.list_files("/data")
        assert [f.name for f in files] == ["kept"]
    finally:
        sb.delete()


@store_independent
def test_an_image_shared_base_is_stored_once_and_a_second_pull_reuses_it(daytona, server, registry,
                                                                         base_layer):
    repo = unique("test/two")
    push_image(registry, repo, "a", [base_layer, Layer().file("a", "a").raw()])
    push_image(registry, repo, "b", [base_layer, Layer().file("b", "b").raw()], as_index=True)
    for tag in ["a", "b"]:
        status, snap = api(server, "POST", "/snapshots", {"name": unique("shared"), "imageName": f"{registry.host}/{repo}:{tag}"})
        assert status == 200, snap
        assert snap["state"] == "pending" and snap["general"] is False
        done = wait_snapshot(server, snap["id"])
        assert done["state"] == "active", done
    status, text = api(server, "GET", f"/snapshots/{done['id']}/build-logs")
    # The index picked linux/amd64, and the base layer was already present.
    assert "linux/amd64" in text and "already present" in text, text
    # The runner reports what its images take on disk (at least the busybox
    # base layer), on its next health check.
    deadline = time.time() + 30
    while True:
        status, runners = api(server, "GET", "/runners")
        assert status == 200, runners
        used = max(r.get("currentImageDiskBytes", 0) for r in runners)
        if used >= len(base_layer) // 2 or time.time() > deadline:
            break
        time.sleep(1)
    assert used >= len(base_layer) // 2, runners


@store_independent
def test_create_from_an_image_reference_builds_a_snapshot_first(daytona, server, registry, base_layer):
    repo = unique("test/img")
    push_image(registry, repo, "1", [base_layer, Layer().file("marker", "from-image\n").raw()],
               docker_media=True, workdir="/tmp", cmd=["sleep", "3600"])
    sb = daytona.create(CreateSandboxFromImageParams(image=f"{registry.host}/{repo}:1"), timeout=120)
    try:
        r = sb.process.exec("cat /marker; pwd")
        assert r.result.split() == ["from-image", "/tmp"], r.result
        # The image's CMD runs as the entrypoint session.
        r = sb.process.exec("ps -o args | grep -c '^sleep 3600'")
        assert r.result.strip() == "1", r.result
    finally:
        sb.delete()
    # The same Dockerfile reuses the snapshot it made.
    sb2 = daytona.create(CreateSandboxFromImageParams(image=f"{registry.host}/{repo}:1"), timeout=120)
    try:
        assert sb2.snapshot == sb.snapshot and sb.snapshot.startswith("build-")
    finally:
        sb2.delete()


def test_a_private_registry_needs_its_credentials_which_are_never_returned(daytona, server, base_layer):
    private = Registry(user="robot", password="s3cret-pw")
    try:
        repo = unique("private/app")
        push_image(private, repo, "1", [base_layer])
        ref = f"{private.host}/{repo}:1"
        with pytest.raises(DaytonaError, match="credentials|denied|unauthorized"):
            daytona.snapshot.create(CreateSnapshotParams(name=unique("denied"), image=ref))
        status, reg = api(server, "POST", "/docker-registry", {
            "name": unique("robot"), "url": f"http://{private.host}/", "username": "robot", "password": "s3cret-pw"})
        assert status == 201, reg
        assert "password" not in reg and reg["url"] == private.host
        status, listed = api(server, "GET", "/docker-registry")
        assert status == 200 and all("password" not in r for r in listed)
        assert "s3cret-pw" not in str(listed)
        snap = daytona.snapshot.create(CreateSnapshotParams(name=unique("allowed"), image=ref))
        assert snap.state == "active"
        # A wrong password, set by PATCH, is refused again.
        status, _ = api(server, "PATCH", f"/docker-registry/{reg['id']}", {
            "name": reg["name"], "url": private.host, "username": "robot", "password": "wrong"})
        assert status == 200
        status, s2 = api(server, "POST", "/snapshots", {"name": unique("wrongpw"), "imageName": ref.replace(":1", ":2")})
        assert status == 200
        assert wait_snapshot(server, s2["id"])["state"] == "error"
        status, _ = api(server, "DELETE", f"/docker-registry/{reg['id']}")
        assert status == 204
        status, _ = api(server, "GET", f"/docker-registry/{reg['id']}")
        assert status == 404
    finally:
        private.stop()


def _pull(server, registry, repo, layers, **kw) -> dict:
    push_image(registry, repo, "1", layers, **kw)
    status, snap = api(server, "POST", "/snapshots", {"name": unique("hostile"), "imageName": f"{registry.host}/{repo}:1"})
    assert status == 200, snap
    return wait_snapshot(server, snap["id"])


@store_independent
def test_hostile_layers_are_refused_or_neutralised(daytona, server, registry, base_layer, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    # `..` in a name: the layer is refused.
    dotdot = raw_tar_entry(f"../../../../../../..{outside}/pwned".encode(), b"x") + END_OF_TAR
    snap = _pull(server, registry, unique("hostile/dotdot"), [base_layer, dotdot], compression="none")
    assert snap["state"] == "error" and ".." in snap["errorReason"], snap
    # A symlink to a host directory, then a write through it: lands inside
    # the layer. An absolute name, and a hard link through the symlink: too.
    through = (Layer().symlink("evil", str(outside)).file("evil/pwned", "owned")
               .file(f"{outside}/pwned2".lstrip("/"), "x").hardlink("hl", "evil/pwned").raw())
    snap = _pull(server, registry, unique("hostile/symlink"), [base_layer, through])
    assert snap["state"] == "active", snap
    assert list(outside.iterdir()) == []
    # Device nodes are dropped.
    devices = Layer().device("dev/sda-host", 8, 0, block=True).device("mem", 1, 1).file("ok", "ok").raw()
    snap = _pull(server, registry, unique("hostile/dev"), [base_layer, devices])
    assert snap["state"] == "active", snap
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot=snap["name"]))
    try:
        r = sb.process.exec("cat /ok; echo; ls /mem /dev/sda-host 2>/dev/null | wc -l")
        assert r.result.split() == ["ok", "0"], r.result
    finally:
        sb.delete()
    # A manifest that lies about a layer's size; a config whose diff id
    # does not match the layer.
    fresh = Layer().file("fresh", secrets.token_hex(8)).raw()
    snap = _pull(server, registry, unique("hostile/size"), [base_layer, fresh], lie_size=-10)
    assert snap["state"] == "error" and "bytes" in snap["errorReason"], snap
    snap = _pull(server, registry, unique("hostile/diffid"), [base_layer], diff_ids=["sha256:" + "1" * 64])
    assert snap["state"] == "error" and "unpacks to" in snap["errorReason"], snap
    # A decompression bomb: 512 MiB of zeros in about half a MiB.
    bomb = gzip_bomb_layer("zeros", 512 << 20)
    push_bomb = unique("hostile/bomb")
    snap = _pull_blob(server, registry, push_bomb, base_layer, bomb)
    assert snap["state"] == "error" and "bomb" in snap["errorReason"], snap
    # /proc, /dev or /tmp as a symlink (mount targets): a sandbox of that
    # image is refused, and nothing is mounted over the host's directories.
    before = open("/proc/self/mountinfo").read().count("\n")
    for target, to in [("proc", "/"), ("dev", "/dev"), ("tmp", str(outside))]:
        link = Layer().symlink(target, to).raw()
        snap = _pull(server, registry, unique(f"hostile/{target}"), [base_layer, link])
        assert snap["state"] == "active"
        status, body = api(server, "POST", "/sandbox", {"snapshot": snap["name"]})
        assert status >= 400 or body.get("state") == "error", (target, body)
        if status < 400:
            api(server, "DELETE", f"/sandbox/{body['id']}")
    assert list(outside.iterdir()) == []
    assert open("/proc/self/mountinfo").read().count("\n") <= before


def _pull_blob(server, registry, repo, base_layer, gz_layer) -> dict:
    """Pushes an image whose second layer is an already-gzipped blob."""
    import hashlib
    import json
    import zlib
    base_blob, media = __import__("oci_images").compress(base_layer, "gzip")
    d1 = registry.push_blob(repo, base_blob)
    d2 = registry.push_blob(repo, gz_layer)
    # The bomb's diff id: hash its decompressed stream without keeping it.
    h = hashlib.sha256()
    do = zlib.decompressobj(31)
    for i in range(0, len(gz_layer), 1 << 16):
        h.update(do.decompress(gz_layer[i:i + (1 << 16)]))
    h.update(do.flush())
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [
                             "sha256:" + hashlib.sha256(base_layer).hexdigest(), "sha256:" + h.hexdigest()]}}).encode()
    dc = registry.push_blob(repo, config)
    mt = "application/vnd.oci.image.manifest.v1+json"
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mt,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dc, "size": len(config)},
                           "layers": [{"mediaType": media, "digest": d1, "size": len(base_blob)},
                                      {"mediaType": media, "digest": d2, "size": len(gz_layer)}]}).encode()
    registry.push_manifest(repo, "1", manifest, mt)
    status, snap = api(server, "POST", "/snapshots", {"name": unique("bomb"), "imageName": f"{registry.host}/{repo}:1"})
    assert status == 200, snap
    return wait_snapshot(server, snap["id"])


def test_a_snapshot_in_use_cannot_be_deleted(daytona, server, registry, base_layer):
    repo = unique("test/inuse")
    push_image(registry, repo, "1", [base_layer])
    name = unique("inuse")
    daytona.snapshot.create(CreateSnapshotParams(name=name, image=f"{registry.host}/{repo}:1"))
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot=name))
    status, body = api(server, "DELETE", f"/snapshots/{name}")
    assert status == 409 and "in use" in body["message"], body
    assert api(server, "GET", f"/snapshots/{name}")[1]["state"] == "active"
    # Deactivated: no new sandbox; activated again: sandboxes again.
    assert api(server, "POST", f"/snapshots/{name}/deactivate")[0] == 204
    status, body = api(server, "POST", "/sandbox", {"snapshot": name})
    assert status == 400 and "inactive" in body["message"], body
    assert api(server, "POST", f"/snapshots/{name}/activate")[1]["state"] == "active"
    sb.delete()
    snap = daytona.snapshot.get(name)
    daytona.snapshot.delete(snap)
    assert api(server, "GET", f"/snapshots/{name}")[0] == 404


def test_snapshot_of_a_running_sandbox_starts_new_sandboxes_with_its_files(daytona, server):
    sb = daytona.create()
    try:
        sb.fs.upload_file(b"captured state\n", "/home/daytona/state.txt")
        sb.process.exec("sudo rm -f /etc/motd; mkdir -p /home/daytona/dir && echo 1 > /home/daytona/dir/f")
        # Hostile content for the host-side walk: a symlink to a host file
        # (captured as a link, never followed), a FIFO (never opened: the
        # capture must not hang), a socket (left out), deep nesting.
        r = sb.process.exec("ln -s /etc/shadow /home/daytona/host-link && mkfifo /home/daytona/fifo && "
                            "python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.bind('/home/daytona/sock')\" && "
                            "mkdir -p /home/daytona/deep/$(printf 'd/%.0s' $(seq 1 100))")
        assert r.exit_code == 0, r.result
        # Bad names get a 400 and leave the sandbox as it was.
        status, body = api(server, "POST", f"/sandbox/{sb.id}/snapshot", {"name": "bad name"})
        assert status == 400, body
        assert api(server, "GET", f"/sandbox/{sb.id}")[1]["state"] == "started"
        assert api(server, "POST", f"/sandbox/{sb.id}/snapshot", {"nome": "x"})[0] == 400
        name = unique("capture")
        sb.create_snapshot(name)
        sb.refresh_data()
        assert sb.state == "started"
        # Still running, and the files are still there.
        assert sb.process.exec("cat /home/daytona/state.txt").result.strip() == "captured state"
    finally:
        sb.delete()
    snap = daytona.snapshot.get(name)
    assert snap.state == "active" and snap.source_sandbox_id == sb.id
    child = daytona.create(CreateSandboxFromSnapshotParams(snapshot=name))
    try:
        r = child.process.exec("cat /home/daytona/state.txt /home/daytona/dir/f; test -e /etc/motd || echo nomotd; python3 -c 'print(6*7)'")
        assert r.result.split() == ["captured", "state", "1", "nomotd", "42"], r.result
        r = child.process.exec("readlink /home/daytona/host-link; test -p /home/daytona/fifo && echo fifo; "
                               "test -e /home/daytona/sock || echo nosock; test -d /home/daytona/deep/d/d/d && echo deep")
        assert r.result.split() == ["/etc/shadow", "fifo", "nosock", "deep"], r.result
    finally:
        child.delete()


def test_bad_snapshot_requests_get_clear_4xx(server, registry):
    for body, want in [
        ({"name": "bad name", "imageName": "alpine"}, 400),
        ({"name": unique("x"), "imageName": "Not/A:Valid:Ref"}, 400),
        ({"name": unique("x")}, 400),
        ({"name": unique("x"), "imageName": "alpine", "buildInfo": {"dockerfileContent": "FROM alpine"}}, 400),
        ({"name": unique("x"), "buildInfo": {"dockerfileContent": "FROM alpine\nCOPY a /a\n",
                                             "contextHashes": ["0123abcd"]}}, 400),
        ({"name": unique("x"), "buildInfo": {"dockerfileContent": "RUN echo no from\n"}}, 400),
        ({"name": unique("x"), "buildInfo": {"dockerfileContent": "FROM a\nHEALTHCHECK CMD x\n"}}, 400),
        ({"name": unique("x"), "imageName": "alpine", "cpu": "two"}, 400),
        ({"name": "atoll/default:bookworm", "imageName": "alpine"}, 409),
    ]:
        status, got = api(server, "POST", "/snapshots", body)
        assert status == want, (body, status, got)
        assert "message" in got
    assert api(server, "GET", f"/snapshots/{uuid.uuid4()}")[0] == 404
    assert api(server, "DELETE", f"/snapshots/{uuid.uuid4()}")[0] == 404
    assert api(server, "GET", "/snapshots?sort=bogus")[0] == 400
    assert api(server, "GET", "/snapshots/atoll%2Fdefault:bookworm/build-logs?follow=maybe")[0] in (400, 404)
    status, any_snap = api(server, "POST", "/snapshots", {"name": unique("logs"), "imageName": f"{registry.host}/no/such:2"})
    assert api(server, "GET", f"/snapshots/{any_snap['id']}/build-logs?follow=maybe")[0] == 400
    assert api(server, "GET", f"/sandbox/{uuid.uuid4()}/build-logs")[0] == 404
    assert api(server, "POST", f"/sandbox/{uuid.uuid4()}/snapshot", {"name": "x"})[0] == 404
    assert api(server, "POST", "/docker-registry", {"name": "r", "url": "not a url", "username": "u", "password": "p"})[0] == 400
    # A reference the registry does not have: the snapshot says so.
    status, snap = api(server, "POST", "/snapshots", {"name": unique("missing"), "imageName": f"{registry.host}/no/such:1"})
    assert status == 200
    done = wait_snapshot(server, snap["id"])
    assert done["state"] == "error" and "not found" in done["errorReason"], done
    # A name taken in the organization: 409.
    status, again = api(server, "POST", "/snapshots", {"name": snap["name"], "imageName": "alpine"})
    assert status == 409, again


def test_builtin_snapshot_is_listed_and_cannot_be_deleted(server, daytona, registry, base_layer):
    # Store names of snapshots and build steps are not snapshots of the API:
    # no other organization reaches them (this one neither).
    repo = unique("test/internal")
    push_image(registry, repo, "1", [base_layer])
    snap = daytona.snapshot.create(CreateSnapshotParams(name=unique("own"), image=f"{registry.host}/{repo}:1"))
    for internal in [snap.ref, f"atoll/build-base/{registry.host}/{repo}:1"]:
        status, body = api(server, "POST", "/sandbox", {"snapshot": internal})
        assert status == 404, (internal, body)
        assert api(server, "POST", "/warm-pools", {"snapshot": internal, "pool": 1})[0] == 404
    status, page = api(server, "GET", "/snapshots?limit=200")
    assert status == 200
    builtin = [s for s in page["items"] if s["general"]]
    assert [s["name"] for s in builtin] == ["atoll/default:bookworm"]
    assert api(server, "DELETE", "/snapshots/atoll%2Fdefault:bookworm")[0] in (403, 404)



@store_independent
def test_dockerfile_builds_run_each_step_in_a_build_sandbox_and_cache_layers(daytona, server, registry,
                                                                             base_layer):
    from daytona import Image
    repo = unique("test/buildbase")
    push_image(registry, repo, "1", [base_layer])
    base = f"{registry.host}/{repo}:1"
    salt = secrets.token_hex(4)
    image = (Image.base(base)
             .env({"GREETING": "hey", "SALT": salt})
             .run_commands("echo built-$SALT > /built", "mkdir -p /opt/app && echo $GREETING > /opt/app/g && id -u > /opt/app/uid")
             .workdir("/srv/work")
             .cmd(["sleep", "infinity"]))
    name = unique("built")
    logs: list[str] = []
    snap = daytona.snapshot.create(CreateSnapshotParams(name=name, image=image), on_logs=logs.append)
    assert snap.state == "active"
    status, text = api(server, "GET", f"/snapshots/{snap.id}/build-logs")
    assert "Step 4/7 : RUN echo built-$SALT > /built" in text, text
    assert "Successfully built" in text, text
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot=name))
    try:
        r = sb.process.exec("cat /built /opt/app/g /opt/app/uid; pwd; echo $GREETING")
        assert r.result.split() == [f"built-{salt}", "hey", "0", "/srv/work", "hey"], r.result
    finally:
        sb.delete()

    # The same steps and one more: the cached steps are not run again.
    name2 = unique("built2")
    again = daytona.snapshot.create(CreateSnapshotParams(name=name2, image=image.run_commands("echo more > /more")))
    assert again.state == "active"
    status, text = api(server, "GET", f"/snapshots/{again.id}/build-logs")
    assert text.count("Using cache") >= 3 and "Step 8/8" in text, text

    # ARG before FROM picks the base.
    status, argsnap = api(server, "POST", "/snapshots", {"name": unique("argfrom"), "buildInfo": {
        "dockerfileContent": f"ARG TAG=1\nFROM {registry.host}/{repo}:$TAG\nRUN echo from-arg > /a\n"}})
    assert status == 200, argsnap
    assert wait_snapshot(server, argsnap["id"])["state"] == "active"

    # FROM another snapshot of the organization.
    child = daytona.snapshot.create(CreateSnapshotParams(
        name=unique("child"), image=Image.base(name).run_commands("echo child > /child")))
    assert child.state == "active"
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot=child.name))
    try:
        assert sb.process.exec("cat /built /child").result.split() == [f"built-{salt}", "child"]
    finally:
        sb.delete()

    # A failing step: build_failed, the step and its output named.
    with pytest.raises(DaytonaError, match="exit code 3"):
        daytona.snapshot.create(CreateSnapshotParams(
            name=unique("fails"), image=Image.base(base).run_commands("echo about-to-fail; exit 3")))
    status, page = api(server, "GET", "/snapshots?limit=200&sort=createdAt&order=desc")
    failed = next(s for s in page["items"] if s["state"] == "build_failed")
    assert "about-to-fail" in failed["errorReason"] and "RUN echo about-to-fail" in failed["errorReason"]


def test_create_from_a_declarative_image_waits_in_pending_build(daytona, server, registry, base_layer):
    from daytona import Image
    repo = unique("test/decl")
    push_image(registry, repo, "1", [base_layer])
    token = secrets.token_hex(6)
    image = Image.base(f"{registry.host}/{repo}:1").run_commands(f"echo {token} > /token")
    logs: list[str] = []
    sb = daytona.create(CreateSandboxFromImageParams(image=image), on_snapshot_create_logs=logs.append, timeout=180)
    try:
        assert sb.process.exec("cat /token").result.strip() == token
        assert any(token in line for line in logs), logs
    finally:
        sb.delete()
    # A build that fails leaves the sandbox in build_failed with the reason.
    status, body = api(server, "POST", "/sandbox", {"buildInfo": {
        "dockerfileContent": f"FROM {registry.host}/{repo}:1\nRUN exit 7\n"}})
    assert status == 200 and body["state"] == "pending_build", body
    deadline = time.time() + 120
    while body["state"] == "pending_build" and time.time() < deadline:
        time.sleep(0.2)
        body = api(server, "GET", f"/sandbox/{body['id']}")[1]
    assert body["state"] == "build_failed" and "exit code 7" in body["errorReason"], body
    assert api(server, "DELETE", f"/sandbox/{body['id']}")[0] == 200


@store_independent
def test_a_server_killed_mid_pull_or_mid_capture_leaves_nothing_stuck(atoll_bin, images_dir, registry, base_layer):
    """A pull taken up by a server that dies is started over by the next;
    a capture killed with the sandbox frozen leaves it started and running
    (thawed), the snapshot in `error`."""
    import json as jsonlib
    from functools import partial
    from conftest import AtollServer, die_on as die, failpoint_binary, restart_with
    fp_bin = failpoint_binary()
    repo = unique("test/crash")
    push_image(registry, repo, "1", [base_layer, Layer().file("crash-marker", "pulled\n").raw()])
    fast = {"ATOLL_SNAPSHOT_STALE_SECS": "1", "ATOLL_SNAPSHOT_KEEPER_SECS": "0.3"}
    srv = AtollServer(atoll_bin, images_dir)
    restart = partial(restart_with, srv)
    die_on = partial(die, srv)

    try:
        restart(fp_bin, {"ATOLL_FAILPOINT": "snapshot.pull.after_transition"})
        die_on("POST", "/api/snapshots", {"name": "crashed-pull", "imageName": f"{registry.host}/{repo}:1"})
        restart(atoll_bin, fast)
        snap = wait_snapshot(srv, "crashed-pull", timeout=60)
        assert snap["state"] == "active", snap
        status, text = api(srv, "GET", f"/snapshots/{snap['id']}/build-logs")
        assert "starting the pulling over" in text, text

        status, _, body = srv.http("POST", "/api/sandbox", json={"autoStopInterval": 0})
        sid = jsonlib.loads(body)["id"]
        restart(fp_bin, {"ATOLL_FAILPOINT": "runtime.commit.frozen"})
        die_on("POST", f"/api/sandbox/{sid}/snapshot", {"name": "crashed-capture"})
        restart(atoll_bin, fast)
        status, sb = api(srv, "GET", f"/sandbox/{sid}")
        assert sb["state"] == "started", sb
        status, _, body = srv.http("POST", f"/toolbox/{sid}/process/execute",
                                   json={"command": "echo thawed", "timeout": 10}, timeout=20)
        assert status == 200 and jsonlib.loads(body)["result"].strip() == "thawed", body
        snap = wait_snapshot(srv, "crashed-capture", timeout=30)
        assert snap["state"] == "error" and "capturing" in snap["errorReason"], snap
    finally:
        restart(atoll_bin, {})
        srv.cleanup()


@store_independent
def test_the_cli_creates_sandboxes_from_an_image_and_a_dockerfile(atoll_bin, server, registry, base_layer,
                                                                  tmp_path):
    import json
    import subprocess
    repo = unique("test/clibase")
    push_image(registry, repo, "1", [base_layer])
    base = f"{registry.host}/{repo}:1"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAYTONA_", "ATOLL_API_"))}
    env.update({"ATOLL_API_URL": server.api_url, "ATOLL_API_KEY": server.api_key,
                "ATOLL_CONFIG": str(tmp_path / "none.json")})

    def atoll(*args, check=True):
        p = subprocess.run([str(atoll_bin), *args], capture_output=True, text=True, env=env, timeout=600)
        assert not check or p.returncode == 0, p
        return p

    made = []
    try:
        sb = json.loads(atoll("sandbox", "create", "--image", base, "-o", "json").stdout)
        made.append(sb["id"])
        assert sb["state"] == "started", sb
        # It runs the image's own files (a busybox base, not the default image).
        assert atoll("exec", sb["id"], "--", "test", "-x", "/bin/busybox", check=False).returncode == 0
        assert atoll("exec", sb["id"], "--", "test", "-e", "/usr/bin/python3", check=False).returncode == 1
        dockerfile = tmp_path / "Dockerfile"
        dockerfile.write_text(f"FROM {base}\nRUN echo from-cli > /made\n")
        sb = json.loads(atoll("sandbox", "create", "--dockerfile", str(dockerfile), "-o", "json").stdout)
        made.append(sb["id"])
        assert atoll("exec", sb["id"], "--", "cat", "/made").stdout == "from-cli\n"
        # A failing build is an error with its reason, exit code 1.
        dockerfile.write_text(f"FROM {base}\nRUN exit 3\n")
        p = atoll("sandbox", "create", "--dockerfile", str(dockerfile), check=False)
        assert p.returncode == 1 and "build" in p.stderr.lower(), p
        # COPY and ADD: the files are uploaded (signed S3 requests to the
        # server's object store) and copied in, modes kept; a 20 MiB file
        # goes in parts.
        ctx = tmp_path / "ctx"
        (ctx / "lib" / "sub").mkdir(parents=True)
        (ctx / "lib" / "sub" / "run.sh").write_text("#!/bin/sh\necho ran\n")
        (ctx / "lib" / "sub" / "run.sh").chmod(0o755)
        (ctx / "main.txt").write_text("main\n")
        big = os.urandom(20 << 20)
        (ctx / "big.bin").write_bytes(big)
        (ctx / "Dockerfile").write_text(
            f"FROM {base}\nCOPY ./lib/ /app/lib\nADD main.txt big.bin /app/\n")
        env["ATOLL_TLS_CA_FILE"] = str(Path(server.data_dir) / "tls" / "ca.pem")
        sb = json.loads(atoll("sandbox", "create", "--dockerfile", str(ctx / "Dockerfile"),
                              "-o", "json").stdout)
        made.append(sb["id"])
        assert atoll("exec", sb["id"], "--", "/app/lib/sub/run.sh").stdout == "ran\n"
        assert atoll("exec", sb["id"], "--", "cat", "/app/main.txt").stdout == "main\n"
        digest = atoll("exec", sb["id"], "--", "sha256sum", "/app/big.bin").stdout.split()[0]
        assert digest == __import__("hashlib").sha256(big).hexdigest()
        # A second create with the same files uploads nothing new (the
        # objects are content-addressed) and builds from the cache.
        sb = json.loads(atoll("sandbox", "create", "--dockerfile", str(ctx / "Dockerfile"),
                              "-o", "json").stdout)
        made.append(sb["id"])
        assert atoll("exec", sb["id"], "--", "cat", "/app/main.txt").stdout == "main\n"
        # Sources the builder would refuse are refused before any upload.
        (ctx / "Dockerfile").write_text(f"FROM {base}\nCOPY *.txt /app/\n")
        p = atoll("sandbox", "create", "--dockerfile", str(ctx / "Dockerfile"), check=False)
        assert p.returncode == 1 and "wildcards" in p.stderr, p
        (ctx / "Dockerfile").write_text(f"FROM {base}\nCOPY missing.txt /app/\n")
        p = atoll("sandbox", "create", "--dockerfile", str(ctx / "Dockerfile"), check=False)
        assert p.returncode == 1 and "missing.txt" in p.stderr, p
    finally:
        for sid in made:
            atoll("sandbox", "delete", sid, check=False)


@store_independent
def test_a_config_claiming_another_organizations_layer_gets_nothing(server, registry):
    """Layers are shared across organizations by diff id. An image whose
    config names a layer another organization pulled, with other bytes
    behind it, must not get that layer: the bytes are fetched and checked
    first (containerd's isolated content policy)."""
    import hashlib
    import json
    base = busybox_base().raw()
    secret = Layer().file("secret.txt", f"org A's secret {secrets.token_hex(8)}\n").raw()
    repo_a = unique("claims/a")
    push_image(registry, repo_a, "1", [base, secret])
    status, snap = api(server, "POST", "/snapshots", {"name": unique("a"), "imageName": f"{registry.host}/{repo_a}:1"})
    assert status in (200, 201), snap
    assert wait_snapshot(server, snap["id"])["state"] == "active"
    # Organization B's image: its config claims A's layers, its blobs are
    # its own.
    status, org_b = api(server, "POST", "/admin/organizations", {"name": unique("claims-b")})
    assert status == 200, org_b
    as_b = {"Authorization": f"Bearer {org_b['apiKey']}"}
    other = Layer().file("other.txt", "not the secret\n").raw()
    repo_b = unique("claims/b")
    push_image(registry, repo_b, "1", [base, other],
               diff_ids=["sha256:" + hashlib.sha256(x).hexdigest() for x in (base, secret)])
    status, snap_b = api(server, "POST", "/snapshots",
                         {"name": unique("b"), "imageName": f"{registry.host}/{repo_b}:1"}, headers=as_b)
    assert status in (200, 201), snap_b
    got = wait_snapshot(server, snap_b["id"], headers=as_b)
    assert got["state"] == "error", json.dumps(got)
    assert "the config says" in (got.get("errorReason") or ""), got
    # B's honest image of the same shared base still works (the base
    # layer is fetched and checked once for B, then reused).
    repo_c = unique("claims/c")
    push_image(registry, repo_c, "1", [base, other])
    status, snap_c = api(server, "POST", "/snapshots",
                         {"name": unique("c"), "imageName": f"{registry.host}/{repo_c}:1"}, headers=as_b)
    assert status in (200, 201), snap_c
    got = wait_snapshot(server, snap_c["id"], headers=as_b)
    assert got["state"] == "active", got
