"""Several runners on one machine, driven through the official SDK: an
`atoll serve` (its embedded runner drained, so it takes nothing new) and
`atoll runner` processes with their own data dirs and network blocks,
registered through `POST /api/runners`. Creates spread by room; `target`
pins a region; toolbox, files, code and previews reach the runner that
holds the sandbox; a SIGKILLed runner leaves its sandboxes `unknown` (never
`stopped`), a delete waits for it, and when it returns everything
reconciles, files intact."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import AtollRunner, running_server
from daytona import CreateSandboxFromSnapshotParams
from daytona.common.errors import DaytonaError

FAST = {"ATOLL_RUNNER_HEALTH_SECS": "0.5", "ATOLL_RUNNER_UNRESPONSIVE_SECS": "3",
        "ATOLL_LIFECYCLE_TICK_SECS": "1"}


@pytest.fixture
def deployment(atoll_bin, images_dir):
    with running_server(atoll_bin, images_dir, FAST) as srv:
        runners = []
        try:
            status, _, body = srv.http("GET", "/api/runners")
            local = json.loads(body)[0]["id"]
            assert srv.http("PATCH", f"/api/runners/{local}/draining", json={"draining": True})[0] == 200

            def add(name, region="local"):
                r = AtollRunner(srv, name, region)
                runners.append(r)
                return r.start()

            yield srv, add
        finally:
            srv.delete_all_sandboxes()
            for r in runners:
                r.cleanup()


def runner_of(srv, sandbox_id):
    status, _, body = srv.http("GET", f"/api/runners/by-sandbox/{sandbox_id}")
    assert status == 200, body
    return json.loads(body)["id"]


def wait_for(what, check, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_creates_spread_over_remote_runners_and_the_sdk_works_on_each(deployment):
    srv, add = deployment
    a, b = add("edge-a"), add("edge-b")
    d = srv.client()
    boxes = [d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0)) for _ in range(4)]
    placed = [runner_of(srv, sb.id) for sb in boxes]
    assert sorted(set(placed)) == sorted({a.id, b.id}), placed
    for sb in boxes:
        assert sb.runner_id in (a.id, b.id)
        assert sb.process.exec("echo hi from $(hostname)").result.startswith("hi from")
        sb.fs.upload_file(b"payload-" + sb.id.encode(), "/home/daytona/p.txt")
        assert sb.fs.download_file("/home/daytona/p.txt") == b"payload-" + sb.id.encode()
        assert sb.process.code_run("print(6*7)").result.strip() == "42"

    # A preview reaches a server inside a sandbox on a remote runner.
    sb = boxes[0]
    sb.process.exec("nohup python3 -m http.server 8080 --bind 127.0.0.1 >/dev/null 2>&1 &")
    link = sb.get_preview_link(8080)
    def fetch():
        try:
            req = urllib.request.Request(link.url, headers={"x-daytona-preview-token": link.token})
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False
    wait_for("the preview", fetch)

    # Lifecycle on a remote runner.
    sb.stop()
    assert sb.state.value == "stopped"
    sb.start()
    assert sb.process.exec("cat /home/daytona/p.txt").result == "payload-" + sb.id
    for sb in boxes:
        sb.delete()
    status, _, body = srv.http("GET", "/api/sandbox")
    assert json.loads(body)["items"] == []


def test_target_pins_a_region(deployment):
    srv, add = deployment
    add("edge-us", "us")
    eu = add("edge-eu", "eu")
    d = srv.client()
    regions = sorted(r["id"] for r in json.loads(srv.http("GET", "/api/regions")[2]))
    assert {"eu", "us"} <= set(regions), regions
    for _ in range(2):
        sb = d.create(CreateSandboxFromSnapshotParams(target="eu"))
        assert runner_of(srv, sb.id) == eu.id
        assert sb.target == "eu"
        assert d.get(sb.id).target == "eu"
        sb.delete()
    with pytest.raises(DaytonaError) as e:
        d.create(CreateSandboxFromSnapshotParams(target="mars"))
    assert "unknown target" in str(e.value)


def test_a_killed_runner_leaves_sandboxes_unknown_and_reconciles_when_it_returns(deployment):
    srv, add = deployment
    edge = add("edge-k")
    d = srv.client()
    kept = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
    doomed = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
    kept.process.exec("echo survived > /home/daytona/mark.txt")

    edge.kill()
    wait_for("the runner to be unresponsive", lambda: edge.state() == "unresponsive")
    def state_of(sid):
        status, _, body = srv.http("GET", f"/api/sandbox/{sid}")
        return json.loads(body) if status == 200 else None
    gone = wait_for("unknown", lambda: (s := state_of(kept.id)) and s["state"] == "unknown" and s)
    assert "edge-k stopped responding" in gone["errorReason"], gone
    time.sleep(2)  # scheduler passes meanwhile never take it for stopped
    assert state_of(kept.id)["state"] == "unknown"
    with pytest.raises(DaytonaError):
        kept.process.exec("true", timeout=10)
    status, _, body = srv.http("DELETE", f"/api/sandbox/{doomed.id}")
    assert status == 200 and json.loads(body)["state"] == "destroying", body

    edge.start()
    wait_for("reconciled", lambda: (s := state_of(kept.id)) and s["state"] == "started")
    wait_for("the waiting delete", lambda: state_of(doomed.id) is None)
    assert kept.process.exec("cat /home/daytona/mark.txt").result == "survived\n"
    kept.delete()


def test_an_archived_sandbox_restores_on_another_runner_from_the_shared_store(atoll_bin, images_dir):
    """Runners sharing an S3 archive store (moto on loopback): a sandbox
    archived on a runner that is then drained restores on the other one,
    its files byte-identical."""
    from test_archive_s3 import BUCKET, bucket_keys, free_port
    port = free_port()
    moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s3 = f"http://127.0.0.1:{port}"
    wait_for("moto", lambda: _put_bucket(s3))
    env = dict(FAST, ATOLL_ARCHIVE_URL=f"s3://{BUCKET}/sandboxes", AWS_ACCESS_KEY_ID="test",
               AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1", AWS_ENDPOINT=s3, AWS_ALLOW_HTTP="true")
    runners = []
    try:
        with running_server(atoll_bin, images_dir, env) as srv:
            try:
                local = json.loads(srv.http("GET", "/api/runners")[2])[0]["id"]
                srv.http("PATCH", f"/api/runners/{local}/draining", json={"draining": True})
                for name in ("store-a", "store-b"):
                    r = AtollRunner(srv, name)
                    r.extra_env.update(env)
                    runners.append(r.start())
                a, b = runners
                srv.http("PATCH", f"/api/runners/{b.id}/scheduling", json={"unschedulable": True})
                d = srv.client()
                sb = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
                assert sb.runner_id == a.id
                sb.process.exec("head -c 5000000 /dev/urandom > /home/daytona/blob")
                want = sb.process.exec("sha256sum /home/daytona/blob").result
                sb.stop()
                sb.archive()
                assert bucket_keys(s3) == [f"sandboxes/{sb.id}.tar.zst"]
                srv.http("PATCH", f"/api/runners/{a.id}/draining", json={"draining": True})
                srv.http("PATCH", f"/api/runners/{b.id}/scheduling", json={"unschedulable": False})
                sb.start()
                assert runner_of(srv, sb.id) == b.id
                assert sb.process.exec("sha256sum /home/daytona/blob").result == want
                sb.delete()
            finally:
                srv.delete_all_sandboxes()
                for r in runners:
                    r.cleanup()
    finally:
        proc.terminate()
        proc.wait(10)


def _put_bucket(s3):
    from test_archive_s3 import BUCKET
    try:
        urllib.request.urlopen(urllib.request.Request(f"{s3}/{BUCKET}", method="PUT"), timeout=2).read()
        return True
    except OSError:
        return False


def test_an_api_only_server_runs_sandboxes_on_its_runners(atoll_bin, images_dir):
    env = dict(FAST, ATOLL_NO_LOCAL_RUNNER="true")
    with running_server(atoll_bin, images_dir, env) as srv:
        status, _, body = srv.http("GET", "/api/runners")
        assert json.loads(body) == [], "no embedded runner"
        status, _, body = srv.http("POST", "/api/sandbox", json={})
        assert status == 503 and "none is registered" in json.loads(body)["message"], body
        edge = AtollRunner(srv, "edge-only")
        try:
            edge.start()
            d = srv.client()
            assert [s.name for s in d.snapshot.list().items], "the runner's images are the catalog"
            sb = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
            assert sb.runner_id == edge.id
            assert sb.process.exec("echo api-only").result.strip() == "api-only"
            sb.delete()
        finally:
            srv.delete_all_sandboxes()
            edge.cleanup()


def test_a_runner_serving_tls_is_driven_over_https(atoll_bin, images_dir):
    """`atoll runner --tls-cert/--tls-key`: the control plane reaches it at
    https://, trusting the deployment's CA (ATOLL_TLS_CA_FILE); toolbox
    traffic crosses TLS too."""
    fixtures = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "atoll-remote", "tests", "fixtures")
    cert, key = os.path.join(fixtures, "test-runner.crt"), os.path.join(fixtures, "test-runner.key")
    env = dict(FAST, ATOLL_TLS_CA_FILE=cert)
    with running_server(atoll_bin, images_dir, env) as srv:
        local = json.loads(srv.http("GET", "/api/runners")[2])[0]["id"]
        srv.http("PATCH", f"/api/runners/{local}/draining", json={"draining": True})
        edge = AtollRunner(srv, "edge-tls")
        edge.extra_args = ["--tls-cert", cert, "--tls-key", key]
        try:
            edge.start()
            status, _, body = srv.http("GET", f"/api/runners/{edge.id}")
            assert json.loads(body)["apiUrl"].startswith("https://127.0.0.1:"), body
            d = srv.client()
            sb = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
            assert sb.runner_id == edge.id
            assert sb.process.exec("echo over-tls").result.strip() == "over-tls"
            sb.fs.upload_file(b"x" * 100000, "/tmp/big")
            assert len(sb.fs.download_file("/tmp/big")) == 100000
            sb.delete()
        finally:
            srv.delete_all_sandboxes()
            edge.cleanup()


def test_a_runner_without_a_snapshot_pulls_it_when_a_sandbox_lands_there(deployment, tmp_path):
    """Runners with image stores of their own: a snapshot pulled on one is
    pulled by the other when placement puts a sandbox there
    (`pulling_snapshot`), its log streamed through the runner protocol."""
    import shutil
    from daytona import CreateSnapshotParams
    from oci_images import Layer, Registry, busybox_base, push_image

    srv, add = deployment
    # A private store for runner B holding only the default image, hard
    # linked from the shared one (building it would take minutes).
    store = tmp_path / "images"
    (store / "layers").mkdir(parents=True)
    (store / "refs" / "atoll").mkdir(parents=True)
    ref = json.loads(open(os.path.join(srv.images_dir, "refs/atoll/default:bookworm.json")).read())
    layer = "sha256-" + ref["digest"].split(":", 1)[1]
    subprocess.run(["cp", "-al", os.path.join(srv.images_dir, "layers", layer), str(store / "layers")], check=True)
    shutil.copy(os.path.join(srv.images_dir, "refs/atoll/default:bookworm.json"), store / "refs" / "atoll")

    registry = Registry()
    try:
        push_image(registry, "multi/app", "1", [busybox_base().raw(), Layer().file("marker", "on-b\n").raw()])
        a = add("shared-store")
        b = AtollRunner(srv, "own-store")
        b.images_dir = str(store)
        b.start()
        try:
            d = srv.client()
            # Only A takes sandboxes while the snapshot is pulled: it lands in the shared store.
            assert srv.http("PATCH", f"/api/runners/{b.id}/draining", json={"draining": True})[0] == 200
            d.snapshot.create(CreateSnapshotParams(name="multi-app", image=f"{registry.host}/multi/app:1"))
            assert srv.http("PATCH", f"/api/runners/{b.id}/draining", json={"draining": False})[0] == 200
            assert srv.http("PATCH", f"/api/runners/{a.id}/draining", json={"draining": True})[0] == 200
            sb = d.create(CreateSandboxFromSnapshotParams(snapshot="multi-app"), timeout=120)
            try:
                assert runner_of(srv, sb.id) == b.id
                assert sb.process.exec("cat /marker").result.strip() == "on-b"
                status, _, text = srv.http("GET", f"/api/sandbox/{sb.id}/build-logs")
                assert status == 200 and b"Pulling" in text, text
            finally:
                sb.delete()
        finally:
            b.cleanup()
    finally:
        registry.stop()
