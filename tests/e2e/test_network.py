"""Per-sandbox networking through the official SDK (SECURITY.md items 12
and 28).

The test builds its own "internet" on the host: a network namespace joined
to the host by a veth pair, holding HTTP servers on 198.51.100.2 and
203.0.113.2 (two documentation networks), on one address in each private
range (10/8, 172.16/12, 192.168/16, 100.64/10) and a fake metadata service
on 169.254.169.254. Nothing leaves the machine. Sandboxes reach the public
part through their routed veth and the host's NAT unless their policy says
otherwise: `networkBlockAll` leaves loopback only, `networkAllowList` only
the listed CIDRs, both changeable live through `update_network_settings`.
Private ranges stay closed unless the operator opens them
(`ATOLL_EGRESS_ALLOW_PRIVATE`). Whatever the policy, a sandbox never
reaches the host's own ports (nor one the host DNATs elsewhere), the
metadata address or another sandbox, and its tracked connections are
capped (`ATOLL_SANDBOX_MAX_CONNECTIONS`). A server whose network block is
full refuses a create at once, leaving no row behind."""
import concurrent.futures
import json
import os
import random
import socket
import subprocess
import threading
import time
import uuid

import pytest
from daytona import CreateSandboxFromSnapshotParams, SessionExecuteRequest

from conftest import running_server

NET_A = "198.51.100"
NET_B = "203.0.113"
METADATA = "169.254.169.254"
PORT = 8080
# One server address per private range (third octet varied per run, so
# concurrent runs on one host do not fight over routes). Outside
# 10.208.0.0/12, where servers take their sandbox blocks.
_O = random.randrange(1, 250)
PRIVATE = [f"10.254.{_O}.2", f"172.31.{_O}.2", f"192.168.{_O}.2", f"100.100.{_O}.2"]

PROBE = (
    "python3 -c \"import socket,sys\n"
    "try:\n"
    " s=socket.create_connection(('{host}',{port}),2); s.sendall(b'GET /ok.txt HTTP/1.0\\r\\n\\r\\n');"
    " d=s.recv(4096); print('OPEN' if b'200' in d.split(b'\\r\\n')[0] else 'BAD')\n"
    "except Exception as e:\n"
    " print('CLOSED', type(e).__name__)\""
)


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@pytest.fixture(scope="module")
def internet():
    """A namespace standing in for the internet, with web servers on two
    networks and on the metadata address. Yields the host-side address."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, peer_if = f"atoll-inet-{tag}", f"tin{tag}", f"tip{tag}"
    ip("netns", "add", ns)
    procs = []
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        ip("link", "set", peer_if, "netns", ns)
        ip("addr", "add", f"{NET_A}.1/24", "dev", host_if)
        ip("link", "set", host_if, "up")
        inside = ["netns", "exec", ns, "ip"]
        ip(*inside, "addr", "add", f"{NET_A}.2/24", "dev", peer_if)
        ip(*inside, "addr", "add", f"{NET_B}.2/24", "dev", "lo")
        ip(*inside, "addr", "add", f"{METADATA}/32", "dev", "lo")
        for a in PRIVATE:
            ip(*inside, "addr", "add", f"{a}/32", "dev", "lo")
        ip(*inside, "link", "set", "lo", "up")
        ip(*inside, "link", "set", peer_if, "up")
        ip(*inside, "route", "add", "default", "via", f"{NET_A}.1")
        ip("route", "add", f"{NET_B}.0/24", "via", f"{NET_A}.2")
        ip("route", "add", f"{METADATA}/32", "via", f"{NET_A}.2")
        for a in PRIVATE:
            ip("route", "add", f"{a}/32", "via", f"{NET_A}.2")
        www = f"/tmp/atoll-inet-{tag}"
        os.makedirs(www, exist_ok=True)
        with open(f"{www}/ok.txt", "w") as f:
            f.write("hello from the internet\n")
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, "/usr/bin/python3", "-m", "http.server", str(PORT),
             "--bind", "0.0.0.0", "--directory", www],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for host in (f"{NET_A}.2", f"{NET_B}.2", METADATA, *PRIVATE):
            deadline = time.time() + 10
            while True:
                try:
                    socket.create_connection((host, PORT), 1).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.1)
        yield f"{NET_A}.1"
    finally:
        for p in procs:
            p.kill()
        ip("route", "del", f"{NET_B}.0/24", check=False)
        ip("route", "del", f"{METADATA}/32", check=False)
        for a in PRIVATE:
            ip("route", "del", f"{a}/32", check=False)
        ip("link", "del", host_if, check=False)
        ip("netns", "del", ns, check=False)


def probe(sb, host, port=PORT):
    out = sb.process.exec(PROBE.format(host=host, port=port), timeout=20).result.strip()
    assert out.startswith(("OPEN", "CLOSED")), out
    return out.startswith("OPEN")


def reach(sb):
    return probe(sb, f"{NET_A}.2"), probe(sb, f"{NET_B}.2")


def address_of(sb):
    return sb.process.exec(
        "python3 -c \"import socket;s=socket.socket(2,2);s.connect(('192.0.2.123',9));print(s.getsockname()[0])\""
    ).result.strip()


def test_a_default_sandbox_has_egress(internet, sandbox):
    assert reach(sandbox) == (True, True)
    # NAT: the internet sees the host, not the sandbox's private address.
    assert address_of(sandbox).startswith("10.")
    # the host's resolvers, minus loopback ones the sandbox could not reach
    host = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")]
    want = [a for a in host if not a.startswith("127.") and a != "::1"]
    got = [l.split()[1] for l in sandbox.fs.download_file("/etc/resolv.conf").decode().splitlines()
           if l.startswith("nameserver")]
    if want:
        assert got == want


def test_block_all_leaves_only_loopback(internet, make_sandbox):
    sb = make_sandbox(CreateSandboxFromSnapshotParams(network_block_all=True))
    assert sb.network_block_all is True
    assert reach(sb) == (False, False)
    sb.process.create_session("lo")
    sb.process.execute_session_command(
        "lo", SessionExecuteRequest(command="python3 -m http.server 8123 --bind 127.0.0.1", run_async=True))
    for _ in range(100):
        if sb.process.exec("python3 -c \"import socket;socket.create_connection(('127.0.0.1',8123),1)\"").exit_code == 0:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("loopback server never came up")


def test_allow_list_admits_only_its_networks(internet, make_sandbox):
    sb = make_sandbox(CreateSandboxFromSnapshotParams(network_allow_list=f"{NET_A}.0/24"))
    assert sb.network_allow_list == f"{NET_A}.0/24"
    assert reach(sb) == (True, False)


def test_policy_changes_live(internet, sandbox):
    assert reach(sandbox) == (True, True)
    sandbox.update_network_settings(network_block_all=True)
    assert sandbox.network_block_all is True
    assert reach(sandbox) == (False, False)
    sandbox.update_network_settings(network_allow_list=f"{NET_B}.0/24")
    assert sandbox.network_block_all is False
    assert reach(sandbox) == (False, True)
    sandbox.update_network_settings(network_block_all=False)
    assert sandbox.network_allow_list is None
    assert reach(sandbox) == (True, True)


def test_block_all_cuts_an_open_connection(internet, sandbox):
    """A connection opened before the change stops carrying traffic at once."""
    script = (
        "import socket,time\n"
        f"s=socket.create_connection(('{NET_A}.2',{PORT}),2)\n"
        "open('/tmp/ready','w').close()\n"
        "while not __import__('os').path.exists('/tmp/go'): time.sleep(0.05)\n"
        "s.settimeout(3)\n"
        "try:\n"
        " s.sendall(b'GET /ok.txt HTTP/1.0\\r\\n\\r\\n'); d=s.recv(100); print('OPEN' if d else 'CLOSED')\n"
        "except Exception as e: print('CLOSED', type(e).__name__)\n"
    )
    sandbox.fs.upload_file(script.encode(), "/tmp/hold.py")
    sandbox.process.create_session("hold")
    cmd = sandbox.process.execute_session_command(
        "hold", SessionExecuteRequest(command="python3 /tmp/hold.py", run_async=True))
    for _ in range(100):
        if sandbox.process.exec("test -e /tmp/ready").exit_code == 0:
            break
        time.sleep(0.1)
    sandbox.update_network_settings(network_block_all=True)
    sandbox.process.exec("touch /tmp/go")
    for _ in range(100):
        done = sandbox.process.get_session_command("hold", cmd.cmd_id)
        if done.exit_code is not None:
            break
        time.sleep(0.1)
    logs = sandbox.process.get_session_command_logs("hold", cmd.cmd_id)
    assert "CLOSED" in (logs.stdout or logs.output), logs


def test_the_host_itself_is_unreachable(internet, server, sandbox):
    """Neither the gateway, nor the host's other addresses, nor the API's
    port answer a sandbox; a listener on every host address proves the path
    would otherwise work from the host."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = listener.accept()
                c.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
                c.close()
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        me = address_of(sandbox)
        for host in [internet, server_address(), *gateway_candidates(me)]:
            assert not probe(sandbox, host, port), host
            assert not probe(sandbox, host, server.port), host
        # the host itself reaches the same listener
        socket.create_connection((internet, port), 2).close()
        # the metadata service answers the host, never the sandbox
        socket.create_connection((METADATA, PORT), 2).close()
        assert not probe(sandbox, METADATA)
    finally:
        stop.set()
        t.join()
        listener.close()


def server_address():
    """The host's address on its main interface."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.123", 9))
        return s.getsockname()[0]
    finally:
        s.close()


def gateway_candidates(sandbox_ip):
    """The sandbox block's gateway is its first address: the /20 a server
    picks by default, and the /24 in case it was configured smaller."""
    a, b, c, d = (int(x) for x in sandbox_ip.split("."))
    return {f"{a}.{b}.{c & ~15}.1", f"{a}.{b}.{c}.1"}


def test_sandboxes_cannot_reach_each_other(internet, make_sandbox):
    a = make_sandbox()
    b = make_sandbox()
    b.process.create_session("web")
    b.process.execute_session_command(
        "web", SessionExecuteRequest(command="python3 -m http.server 8000 --bind 0.0.0.0", run_async=True))
    b_ip = address_of(b)
    deadline = time.time() + 10
    while True:  # the host can reach b's server: the path exists
        try:
            socket.create_connection((b_ip, 8000), 1).close()
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    assert not probe(a, b_ip, 8000)
    assert probe(a, f"{NET_A}.2")


def test_policies_survive_a_server_restart(internet, fresh_server):
    client = fresh_server.client()
    blocked = client.create(CreateSandboxFromSnapshotParams(network_block_all=True))
    limited = client.create(CreateSandboxFromSnapshotParams(network_allow_list=f"{NET_B}.0/24"))
    fresh_server.kill()
    fresh_server.start()
    client = fresh_server.client()
    blocked = client.get(blocked.id)
    limited = client.get(limited.id)
    assert reach(blocked) == (False, False)
    assert reach(limited) == (False, True)
    fresh = client.create()
    assert reach(fresh) == (True, True)
    assert address_of(fresh) not in {address_of(blocked), address_of(limited)}
    # stop/start gives the policy back from the database
    blocked.stop()
    blocked.start()
    assert reach(blocked) == (False, False)


def test_bad_network_settings_are_refused(server, sandbox):
    for body in ({}, {"networkAllowList": "10.0.0.0/33"}, {"networkAllowList": "nope"},
                 {"domainAllowList": "example.com"}, {"networkBlockAll": "yes"}):
        status, _, data = server.http("POST", f"/api/sandbox/{sandbox.id}/network-settings", json=body)
        assert status == 400, (body, status, data)
    status, _, _ = server.http("POST", "/api/sandbox/nope/network-settings", json={"networkBlockAll": True})
    assert status == 404
    status, _, data = server.http("POST", "/api/sandbox", json={"networkAllowList": "1.2.3.4/99"})
    assert status == 400, data
    # nothing changed
    status, _, data = server.http("GET", f"/api/sandbox/{sandbox.id}")
    assert b'"networkBlockAll":false' in data


SEND_RAW = r'''
import socket, struct, sys
src, dst, port, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                  socket.inet_aton(src), socket.inet_aton(dst))
hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(hdr + udp, (dst, 0))
print("sent")
'''


def test_spoofed_sources_are_dropped(internet, server, make_sandbox):
    """Root in a sandbox cannot forge a packet's source: its network
    namespace belongs to the host's user namespace, so it gets no raw
    socket at all. And should a forged packet ever leave a sandbox's
    namespace (here sent from inside it by the host's root, standing in for
    a kernel bug), the host drops it: a blocked sandbox cannot borrow an
    open one's address and no sandbox can impersonate anyone else. Genuine
    packets from the open sandbox arrive."""
    tag = uuid.uuid4().hex[:6]
    seen = f"/tmp/atoll-udp-{tag}"
    ns = next(n.split()[0] for n in ip("netns", "list").stdout.splitlines()
              if n.startswith("atoll-inet-"))
    listener = subprocess.Popen(
        ["ip", "netns", "exec", ns, "/usr/bin/python3", "-c",
         "import socket,sys\n"
         "s=socket.socket(2,2); s.bind(('0.0.0.0',9999))\n"
         "f=open(sys.argv[1],'a')\n"
         "while True:\n d,a=s.recvfrom(100); f.write(a[0]+' '+d.decode()+'\\n'); f.flush()\n",
         seen])
    script = f"/tmp/atoll-send-raw-{tag}.py"
    with open(script, "w") as f:
        f.write(SEND_RAW)
    try:
        time.sleep(0.3)
        blocked = make_sandbox(CreateSandboxFromSnapshotParams(network_block_all=True))
        open_ = make_sandbox()
        open_ip = address_of(open_)
        dst = f"{NET_A}.2"
        for sb in (blocked, open_):
            sb.fs.upload_file(SEND_RAW.encode(), "/tmp/send_raw.py")
            r = sb.process.exec(f"sudo python3 /tmp/send_raw.py {open_ip} {dst} 9999 from-inside")
            assert "Operation not permitted" in r.result, r.result

        def send_from(sb, src, payload):
            with open(os.path.join(str(server.data_dir), "runner", "journal", f"{sb.id}.json")) as f:
                pid = json.load(f)["pid"]
            out = subprocess.run(
                ["nsenter", "-t", str(pid), "-n", "/usr/bin/python3", script, src, dst, "9999", payload],
                capture_output=True, text=True, timeout=30,
            )
            assert out.stdout.strip() == "sent", out

        send_from(blocked, open_ip, "from-blocked")
        send_from(open_, "192.0.2.77", "forged")
        r = open_.process.exec(f"python3 -c \"import socket; socket.socket(2,2).sendto(b'genuine', ('{dst}', 9999))\"")
        assert r.exit_code == 0, r.result
        deadline = time.time() + 5
        got = ""
        while time.time() < deadline and "genuine" not in got:
            time.sleep(0.1)
            got = open(seen).read() if os.path.exists(seen) else ""
        assert "genuine" in got, got
        time.sleep(0.5)
        got = open(seen).read()
        assert "from-blocked" not in got and "forged" not in got and "from-inside" not in got, got
    finally:
        listener.kill()
        for p in (seen, script):
            if os.path.exists(p):
                os.remove(p)


def test_private_ranges_are_closed_by_default(internet, server, sandbox):
    """RFC 1918 and CGNAT addresses answer the host but no sandbox; an
    allow list cannot open them (the request is refused, naming the
    operator's flag), and the sandbox's resolvers stay reachable on port 53
    even when private."""
    for a in PRIVATE:
        socket.create_connection((a, PORT), 2).close()  # the path exists
        assert not probe(sandbox, a), a
    assert probe(sandbox, f"{NET_A}.2")
    for entry in ("10.0.0.0/8", f"192.168.{_O}.0/24", "172.31.0.1", "100.64.0.0/10"):
        status, _, data = server.http("POST", f"/api/sandbox/{sandbox.id}/network-settings",
                                      json={"networkAllowList": entry})
        assert status == 400, (entry, status, data)
        assert b"--egress-allow-private" in data, data
        status, _, data = server.http("POST", "/api/sandbox", json={"networkAllowList": entry})
        assert status == 400, (entry, status, data)
    for entry in ("169.254.169.254", "127.0.0.1/8", "224.0.0.0/4"):
        status, _, data = server.http("POST", "/api/sandbox", json={"networkAllowList": entry})
        assert status == 400 and b"never reach" in data, (entry, status, data)
    # The resolvers the sandbox was given answer it on port 53, private or not.
    for r in resolvers_of(sandbox):
        if dns_answers(r):
            assert sandbox.process.exec(DNS_QUERY.format(server=r)).result.strip() == "ANSWER", r
    # A list that merely overlaps a closed range is fine; the closed part stays closed.
    sandbox.update_network_settings(network_allow_list="0.0.0.0/0")
    assert probe(sandbox, f"{NET_A}.2")
    assert not probe(sandbox, PRIVATE[0])
    assert not probe(sandbox, METADATA)


DNS_QUERY = (
    "python3 -c \"import socket,struct\n"
    "q=struct.pack('!HHHHHH',0x1234,0x0100,1,0,0,0)+b'\\x07example\\x03com\\x00'+struct.pack('!HH',1,1)\n"
    "s=socket.socket(2,2); s.settimeout(3)\n"
    "try:\n"
    " s.sendto(q,('{server}',53)); s.recv(512); print('ANSWER')\n"
    "except Exception as e:\n"
    " print('NONE', type(e).__name__)\""
)


def resolvers_of(sb):
    conf = sb.fs.download_file("/etc/resolv.conf").decode()
    return [l.split()[1] for l in conf.splitlines()
            if l.startswith("nameserver") and l.split()[1].count(".") == 3]


def dns_answers(server_ip):
    """Does the resolver answer the host (it may be unreachable from here)?"""
    out = subprocess.run(["sh", "-c", DNS_QUERY.format(server=server_ip)],
                         capture_output=True, text=True).stdout.strip()
    return out == "ANSWER"


def test_a_port_the_host_dnats_elsewhere_is_closed(internet, sandbox):
    """A connection to one of the host's addresses is dropped before the
    host's own DNAT rules see it: a port the host forwards to a server
    elsewhere (here a public one, which the sandbox may reach directly)
    does not answer the sandbox, though it answers any other client."""
    host = server_address()
    port = random.randrange(20000, 30000)
    table = f"atoll_test_dnat_{uuid.uuid4().hex[:6]}"
    rules = f"""table ip {table} {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {host} tcp dport {port} dnat to {NET_B}.2:{PORT}
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat ip daddr {NET_B}.2 tcp dport {PORT} masquerade
  }}
}}
"""
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
    try:
        ns = next(n.split()[0] for n in ip("netns", "list").stdout.splitlines()
                  if n.startswith("atoll-inet-"))
        # Another client (the "internet" namespace) goes through the DNAT.
        other = subprocess.run(
            ["ip", "netns", "exec", ns, "sh", "-c", PROBE.format(host=host, port=port)],
            capture_output=True, text=True, check=True).stdout.strip()
        assert other == "OPEN", other
        assert probe(sandbox, f"{NET_B}.2")
        assert not probe(sandbox, host, port)
    finally:
        subprocess.run(["nft", "delete", "table", "ip", table], check=False)


def test_the_operator_can_open_private_ranges(internet, atoll_bin, images_dir):
    """`ATOLL_EGRESS_ALLOW_PRIVATE` opens private ranges, and allow lists may
    name them; the host, the metadata address and other sandboxes stay
    closed."""
    with running_server(atoll_bin, images_dir, {"ATOLL_EGRESS_ALLOW_PRIVATE": "1"}) as srv:
        d = srv.client()
        sb = d.create()
        other = d.create()
        for a in PRIVATE:
            assert probe(sb, a), a
        assert not probe(sb, METADATA)
        me = address_of(sb)
        for host in [server_address(), *gateway_candidates(me)]:
            assert not probe(sb, host, srv.port), host
        other.process.create_session("web")
        other.process.execute_session_command(
            "web", SessionExecuteRequest(command="python3 -m http.server 8000 --bind 0.0.0.0", run_async=True))
        other_ip = address_of(other)
        wait_listening(other_ip, 8000)
        assert not probe(sb, other_ip, 8000)
        limited = d.create(CreateSandboxFromSnapshotParams(network_allow_list=f"{PRIVATE[1]}/32"))
        assert probe(limited, PRIVATE[1])
        assert not probe(limited, PRIVATE[0])
        assert not probe(limited, f"{NET_A}.2")
        status, _, data = srv.http("POST", "/api/sandbox", json={"networkAllowList": "169.254.0.0/16"})
        assert status == 400, data


def wait_listening(host, port):
    deadline = time.time() + 10
    while True:  # the host reaches it: the path exists
        try:
            socket.create_connection((host, port), 1).close()
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


# Holds up to {n} connections open at once and says how many it got.
HOLD = (
    "python3 -c \"import socket\n"
    "held=[]\n"
    "try:\n"
    " for i in range({n}): held.append(socket.create_connection(('{host}',{port}),3))\n"
    " print(len(held), 'all')\n"
    "except Exception as e:\n"
    " print(len(held), type(e).__name__)\""
)


def test_connections_per_sandbox_are_capped(internet, atoll_bin, images_dir):
    """Past `ATOLL_SANDBOX_MAX_CONNECTIONS` open connections a sandbox's next
    connect is refused; the cap is per sandbox, and closed connections stop
    counting."""
    cap = 8
    with running_server(atoll_bin, images_dir, {"ATOLL_SANDBOX_MAX_CONNECTIONS": str(cap)}) as srv:
        d = srv.client()
        sb = d.create()
        neighbour = d.create()
        script = (
            "import socket,os,time,sys\n"
            "held=[]\n"
            "try:\n"
            f" for i in range({cap + 4}): held.append(socket.create_connection(('{NET_A}.2',{PORT}),3))\n"
            "except Exception as e: print(len(held), type(e).__name__, flush=True)\n"
            "open('/tmp/holding','w').close()\n"
            "while not os.path.exists('/tmp/release'): time.sleep(0.05)\n"
        )
        sb.fs.upload_file(script.encode(), "/tmp/hold.py")
        sb.process.create_session("hold")
        cmd = sb.process.execute_session_command(
            "hold", SessionExecuteRequest(command="python3 /tmp/hold.py", run_async=True))
        for _ in range(200):
            if sb.process.exec("test -e /tmp/holding").exit_code == 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the holder never got going")
        logs = sb.process.get_session_command_logs("hold", cmd.cmd_id)
        out = (logs.stdout or logs.output or "").strip()
        assert out == f"{cap} ConnectionRefusedError", out
        # While it holds its cap, another sandbox connects freely.
        assert neighbour.process.exec(HOLD.format(n=cap, host=f"{NET_A}.2", port=PORT)).result.strip() \
            == f"{cap} all"
        sb.process.exec("touch /tmp/release")
        for _ in range(200):
            if sb.process.get_session_command("hold", cmd.cmd_id).exit_code is not None:
                break
            time.sleep(0.1)
        # Closed connections leave the count (once their close completes).
        for _ in range(100):
            if probe(sb, f"{NET_A}.2"):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("closed connections still count against the cap")


def test_a_full_network_refuses_a_create_at_once(atoll_bin, images_dir):
    """With every address of the block taken, a create fails with 503 and
    a message saying the sandbox network is full; it leaves no row behind.
    Freeing an address makes room again."""
    from daytona import DaytonaError

    block = f"10.199.{random.randrange(0, 256)}.{16 * random.randrange(0, 16)}/28"
    with running_server(atoll_bin, images_dir, {"ATOLL_NETWORK": block}) as srv:
        d = srv.client()
        # A /28 holds 13 sandboxes (network, gateway and broadcast aside).
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            made = list(pool.map(lambda _: d.create(), range(13)))
        status, _, data = srv.http("POST", "/api/sandbox", json={})
        assert status == 503, (status, data)
        body = json.loads(data)
        assert body["statusCode"] == 503 and "sandbox network is full" in body["message"], body
        with pytest.raises(DaytonaError, match="sandbox network is full"):
            d.create()
        status, _, data = srv.http("GET", "/api/sandbox?limit=200")
        items = json.loads(data)["items"]
        assert sorted(i["state"] for i in items) == ["started"] * 13, items
        # A stopped sandbox gives its address back; starting it again
        # while the network is full fails the same way and leaves it stopped.
        made[0].stop()
        extra = d.create()
        with pytest.raises(DaytonaError, match="sandbox network is full"):
            made[0].start()
        made[0].refresh_data()
        assert made[0].state == "stopped", made[0].state
        extra.delete()
        made[0].start()
        assert made[0].process.exec("echo ok").result.strip() == "ok"
