"""Fork through the official SDK (`sandbox.fork()`) and the lineage routes:
a child starts with the parent's files at the moment of the fork, both
diverge after, the parent keeps running (its processes too), forks share
the parent's disk blocks (reflink clones on the server's XFS pool), and
deleting the parent never breaks a child."""

from __future__ import annotations

import secrets

import pytest
from daytona.common.errors import DaytonaError

from oci_images import api


def run(sb, cmd: str) -> str:
    r = sb.process.exec(cmd)
    assert r.exit_code == 0, r.result
    return r.result


def test_a_fork_has_the_parents_files_and_diverges_after(daytona, server):
    parent = daytona.create()
    try:
        run(parent, "echo before > /home/daytona/state && mkdir -p /home/daytona/work && "
                    "head -c 1048576 /dev/urandom > /home/daytona/work/blob && rm -f /home/daytona/.bashrc; "
                    "nohup sleep 300 >/dev/null 2>&1 & echo $! > /home/daytona/pid")
        digest = run(parent, "sha256sum /home/daytona/work/blob").split()[0]
        name = f"child-{secrets.token_hex(3)}"
        child = parent.fork(name=name)
        try:
            assert child.state == "started" and child.name == name and child.id != parent.id
            assert run(child, "cat /home/daytona/state").strip() == "before"
            assert run(child, "sha256sum /home/daytona/work/blob").split()[0] == digest
            # A file of the image the parent deleted is deleted in the child.
            gone = "test -e /home/daytona/.bashrc && echo present || echo gone"
            assert run(child, gone).strip() == run(parent, gone).strip() == "gone"
            # The parent kept running: its background process is alive.
            pid = run(parent, "cat /home/daytona/pid").strip()
            assert run(parent, f"kill -0 {pid} && echo alive").strip() == "alive"
            # They diverge.
            run(parent, "echo parent-after > /home/daytona/state")
            run(child, "echo child-after > /home/daytona/state && echo new > /home/daytona/only-child")
            assert run(parent, "cat /home/daytona/state; ls /home/daytona").split()[0] == "parent-after"
            assert "only-child" not in run(parent, "ls /home/daytona")
            assert run(child, "cat /home/daytona/state").strip() == "child-after"
            # Its own identity and network slot.
            assert run(child, "hostname").strip() != run(parent, "hostname").strip()

            # Lineage.
            status, forks = api(server, "GET", f"/sandbox/{parent.id}/forks")
            assert status == 200 and [f["id"] for f in forks] == [child.id], forks
            status, got = api(server, "GET", f"/sandbox/{child.id}/parent")
            assert status == 200 and got["id"] == parent.id
            grandchild = child.fork()
            try:
                status, chain = api(server, "GET", f"/sandbox/{grandchild.id}/ancestors")
                assert [s["id"] for s in chain] == [parent.id, child.id], chain
                assert run(grandchild, "cat /home/daytona/state /home/daytona/only-child").split() == [
                    "child-after", "new"]
            finally:
                grandchild.delete()
            assert api(server, "GET", f"/sandbox/{parent.id}/parent")[0] == 404
        finally:
            # Deleting the parent first never breaks the child.
            parent.delete()
            parent = None
            assert run(child, "cat /home/daytona/state").strip() == "child-after"
            child.stop()
            child.start()
            assert run(child, "sha256sum /home/daytona/work/blob").split()[0] == digest
            child.delete()
    finally:
        if parent is not None:
            parent.delete()


def layer_bytes(images_dir: str) -> int:
    import subprocess
    out = subprocess.run(["du", "-s", "-B1", f"{images_dir}/layers"], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def pool_used(data_dir) -> int:
    """Bytes in use on the sandbox disks' filesystem."""
    import os
    st = os.statvfs(os.path.join(str(data_dir), "sandboxes"))
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_ten_forks_of_one_parent_share_its_blocks(daytona, server, images_dir):
    import subprocess
    # The server made its loop-backed XFS pool (this host's /tmp is ext4):
    # sandbox disks are cloned, not copied.
    kind = subprocess.run(["stat", "-f", "-c", "%T", f"{server.data_dir}/sandboxes"],
                          capture_output=True, text=True).stdout.strip()
    assert kind == "xfs", kind
    parent = daytona.create()
    children = []
    try:
        run(parent, "head -c 62914560 /dev/urandom > /home/daytona/big && sync")
        layers_before = layer_bytes(images_dir)
        used_before = pool_used(server.data_dir)
        for _ in range(10):
            children.append(parent.fork())
        sums = {run(c, "sha256sum /home/daytona/big").split()[0] for c in children}
        sums.add(run(parent, "sha256sum /home/daytona/big").split()[0])
        assert len(sums) == 1
        # Ten children of a parent with 60 MiB written take less than one
        # more copy of it: their disks share the parent's blocks.
        grown = pool_used(server.data_dir) - used_before
        assert grown < 60 << 20, f"ten forks took {grown} bytes of disk"
        # No layer was captured for them either.
        assert layer_bytes(images_dir) - layers_before < 1 << 20
        # Each child writes to its own disk: its blocks are its own after.
        run(children[0], "echo mine > /home/daytona/big")
        assert run(children[1], "sha256sum /home/daytona/big").split()[0] in sums
        assert run(parent, "sha256sum /home/daytona/big").split()[0] in sums
    finally:
        for c in children:
            c.delete()
        parent.delete()


def test_bad_forks_are_refused(daytona, server):
    sb = daytona.create()
    try:
        sb.stop()
        with pytest.raises(DaytonaError, match="started state"):
            sb.fork()
        sb.start()
        status, body = api(server, "POST", f"/sandbox/{sb.id}/fork", {"name": "bad name!"})
        assert status == 400, body
        status, body = api(server, "POST", f"/sandbox/{sb.id}/fork", {"name": sb.name})
        assert status == 409, body
        status, body = api(server, "POST", f"/sandbox/{sb.id}/fork", {"unknown": 1})
        assert status == 400, body
        assert api(server, "POST", "/sandbox/no-such-sandbox/fork", {})[0] == 404
        assert api(server, "GET", f"/sandbox/{sb.id}/forks")[1] == []
        assert api(server, "GET", f"/sandbox/{sb.id}/ancestors")[1] == []
        # A fork's store image is not a snapshot anyone can name.
        status, body = api(server, "POST", "/sandbox", {"snapshot": "atoll/forks/x"})
        assert status in (400, 404), body
    finally:
        sb.delete()


def test_a_fork_the_quota_refuses_copies_nothing(server):
    """The child's row is admitted against the organization's quota before
    any disk is copied: a refused fork leaves no row, no directory."""
    import json
    import os
    d = server.client()
    parent = d.create()
    try:
        status, body = api(server, "GET", "/sandbox")
        count = len(body["items"])
        status, _, _ = server.http("PUT", "/api/admin/organizations/default/quota",
                                   json={"maxSandboxes": count})
        assert status == 200
        try:
            before = sorted(e for e in os.listdir(os.path.join(str(server.data_dir), "sandboxes"))
                            if not e.startswith("."))
            status, body = api(server, "POST", f"/sandbox/{parent.id}/fork", {})
            assert status == 403 and "maxSandboxes" in body["message"], (status, body)
            after = sorted(e for e in os.listdir(os.path.join(str(server.data_dir), "sandboxes"))
                           if not e.startswith("."))
            assert after == before
            assert api(server, "GET", f"/sandbox/{parent.id}/forks")[1] == []
            assert len(api(server, "GET", "/sandbox")[1]["items"]) == count
        finally:
            status, _, b = server.http("PUT", "/api/admin/organizations/default/quota",
                                       json={"maxSandboxes": None})
            assert status == 200, b
        # With room again the fork goes through.
        child = parent.fork()
        assert child.state == "started"
        child.delete()
    finally:
        parent.delete()
