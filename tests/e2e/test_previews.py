"""Previews through the path form `{public-url}/preview/{sandboxId}/{port}/…`
(works on localhost with no DNS), with the official SDK's preview calls:
a Python http.server and a WebSocket echo server started in a sandbox are
reachable with the token (header or query), refused without it (401) or
with a wrong one (403); signed URLs work until they expire or are revoked;
public sandboxes need no token; a port nobody listens on is a clear 502;
a stopped sandbox a clear 409; a 100 MiB download streams with bounded
server memory.

With `ATOLL_PREVIEW_DOMAIN` set, the host form `{port}-{sandboxId}.{domain}`
works the same way (tested by connecting to the server with that Host
header, so no DNS is needed), and signed URLs carry their token in place of
the sandbox id, as Daytona's do."""
import base64
import hashlib
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from daytona import SessionExecuteRequest

from conftest import running_server

WS_ECHO = r'''
import base64, hashlib, socket, struct
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8765)); s.listen(5)
while True:
    c, _ = s.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        more = c.recv(4096)
        if not more:
            break
        head += more
    if b"\r\n\r\n" not in head:
        c.close()
        continue
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")][0]
    acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
    while True:
        h = c.recv(2)
        if len(h) < 2: break
        n = h[1] & 0x7F
        mask = c.recv(4)
        data = bytearray(c.recv(n))
        for i in range(len(data)): data[i] ^= mask[i % 4]
        c.sendall(bytes([0x81, len(data)]) + bytes(data))
    c.close()
'''


def fetch(url, headers=None, timeout=30):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def start(sb, name, command):
    sb.process.create_session(name)
    sb.process.execute_session_command(name, SessionExecuteRequest(command=command, run_async=True))


def wait_listening(sb, port):
    for _ in range(100):
        r = sb.process.exec(f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 1)\"")
        if r.exit_code == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
def web(sandbox):
    sandbox.process.exec("mkdir -p /home/daytona/www && echo hello-preview > /home/daytona/www/index.html")
    start(sandbox, "web", "cd /home/daytona/www && python3 -m http.server 8000 --bind 127.0.0.1")
    wait_listening(sandbox, 8000)
    return sandbox


def test_preview_link_needs_the_token(server, web):
    link = web.get_preview_link(8000)
    assert link.url == f"{server.url}/preview/{web.id}/8000"
    assert len(link.token) == 32
    status, body = fetch(link.url + "/index.html", {"X-Daytona-Preview-Token": link.token})
    assert (status, body) == (200, b"hello-preview\n")
    status, body = fetch(link.url + "/index.html?DAYTONA_SANDBOX_AUTH_KEY=" + link.token)
    assert (status, body) == (200, b"hello-preview\n")
    assert fetch(link.url + "/index.html")[0] == 401
    assert fetch(link.url + "/index.html", {"X-Daytona-Preview-Token": "0" * 32})[0] == 403
    # the same token is stable
    assert web.get_preview_link(8000).token == link.token


def test_signed_preview_url_expires_and_can_be_revoked(server, web):
    signed = web.create_signed_preview_url(8000, expires_in_seconds=2)
    assert signed.port == 8000 and signed.token
    status, body = fetch(signed.url.replace("/?", "/index.html?"))
    assert (status, body) == (200, b"hello-preview\n")
    # bound to its port
    base = f"{server.url}/preview/{web.id}/8001/?DAYTONA_SANDBOX_AUTH_KEY={signed.token}"
    assert fetch(base)[0] == 403
    time.sleep(2.5)
    assert fetch(signed.url)[0] == 403, "an expired signed URL is refused"
    other = web.create_signed_preview_url(8000, expires_in_seconds=120)
    assert fetch(other.url)[0] == 200
    web.expire_signed_preview_url(8000, other.token)
    assert fetch(other.url)[0] == 403, "a revoked signed URL is refused"


def test_public_sandbox_needs_no_token_and_errors_are_clear(server, web):
    link = web.get_preview_link(8000)
    web.set_public(True)
    assert fetch(link.url + "/index.html") == (200, b"hello-preview\n")
    status, body = fetch(f"{server.url}/preview/{web.id}/8999/")
    assert status == 502 and b"8999" in body, body
    web.set_public(False)
    assert fetch(link.url + "/index.html")[0] == 401
    web.stop()
    status, body = fetch(link.url + "/", {"X-Daytona-Preview-Token": link.token}, timeout=10)
    assert status == 409 and b"not started" in body, body
    web.start()


def ws_echo_round_trip(server, path, host):
    """Opens a WebSocket to `path` on the server with this Host header and
    checks two messages come back from the echo server."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\n"
               f"Host: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        more = s.recv(4096)
        assert more, f"closed before answering the upgrade: {head!r}"
        head += more
    assert head.startswith(b"HTTP/1.1 101"), head
    want = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert want in head
    for msg in (b"ping", b"through the preview"):
        mask = os.urandom(4)
        s.sendall(bytes([0x81, 0x80 | len(msg)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(msg)))
        frame = s.recv(2 + len(msg))
        assert frame == bytes([0x81, len(msg)]) + msg
    s.close()


def start_ws_echo(sb):
    sb.fs.upload_file(WS_ECHO.encode(), "/home/daytona/ws_echo.py")
    start(sb, "ws", "python3 /home/daytona/ws_echo.py")
    wait_listening(sb, 8765)


def test_preview_reaches_the_sandboxs_localhost_never_the_hosts(server, web):
    """The proxy connects to 127.0.0.1:{port} inside the sandbox's network
    namespace: a server on the host's own loopback at that port is never
    reached (502)."""
    host = socket.socket()
    host.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    host.bind(("127.0.0.1", 0))
    host.listen(4)
    host.settimeout(0.5)
    port = host.getsockname()[1]
    try:
        link = web.get_preview_link(port)
        status, body = fetch(link.url + "/", {"X-Daytona-Preview-Token": link.token})
        assert status == 502 and str(port).encode() in body, (status, body)
        with pytest.raises(socket.timeout):
            host.accept()
    finally:
        host.close()


def test_websocket_passes_through_the_preview(server, sandbox):
    start_ws_echo(sandbox)
    link = sandbox.get_preview_link(8765)
    u = urllib.parse.urlsplit(server.url)
    ws_echo_round_trip(server, f"/preview/{sandbox.id}/8765/?DAYTONA_SANDBOX_AUTH_KEY={link.token}",
                       f"{u.hostname}:{u.port}")


def test_hundred_mib_download_streams(server, web):
    web.process.exec("head -c 104857600 /dev/urandom > /home/daytona/www/big.bin")
    want = web.process.exec("sha256sum /home/daytona/www/big.bin").result.split()[0]
    link = web.get_preview_link(8000)
    req = urllib.request.Request(link.url + "/big.bin", headers={"X-Daytona-Preview-Token": link.token})
    # The server's peak memory from here on (earlier tests' peaks are
    # theirs): "5" resets VmHWM to the current resident size.
    with open(f"/proc/{server.proc.pid}/clear_refs", "w") as f:
        f.write("5")
    with open(f"/proc/{server.proc.pid}/status") as f:
        before = [int(l.split()[1]) for l in f if l.startswith("VmRSS:")][0] / 1024
    h = hashlib.sha256()
    n = 0
    with urllib.request.urlopen(req, timeout=120) as r:
        for chunk in iter(lambda: r.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    assert n == 104857600 and h.hexdigest() == want
    with open(f"/proc/{server.proc.pid}/status") as f:
        hwm = [int(l.split()[1]) for l in f if l.startswith("VmHWM:")][0] / 1024
    # Streamed, not held: far less than the 100 MiB it passed on.
    assert hwm - before < 48, f"server grew from {before:.0f} to {hwm:.0f} MiB during the download"


def test_bad_preview_and_settings_requests_are_4xx_and_change_nothing(server, sandbox):
    import json as _json

    def err(status_body, code):
        status, _, body = status_body
        assert status == code, body
        e = _json.loads(body)
        assert e["statusCode"] == code and e["message"], e

    sid = sandbox.id
    for port in ("0", "65536", "abc"):
        err(server.http("GET", f"/api/sandbox/{sid}/ports/{port}/preview-url"), 400)
        err(server.http("GET", f"/preview/{sid}/{port}/"), 400)
    for secs in ("0", "86401", "x"):
        err(server.http("GET", f"/api/sandbox/{sid}/ports/8000/signed-preview-url?expiresInSeconds={secs}"), 400)
    err(server.http("POST", f"/api/sandbox/{sid}/ports/8000/signed-preview-url/nonexistent/expire"), 404)
    err(server.http("POST", f"/api/sandbox/{sid}/public/maybe"), 400)
    err(server.http("POST", f"/api/sandbox/{sid}/resize", json={"cpu": "x"}), 400)
    err(server.http("POST", f"/api/sandbox/{sid}/resize", json={"memory": 0}), 400)
    err(server.http("GET", "/api/sandbox/no-such-sandbox/ports/8000/preview-url"), 404)
    err(server.http("GET", "/preview/no-such-sandbox/8000/"), 404)
    sandbox.refresh_data()
    assert (sandbox.state, sandbox.public, sandbox.cpu, sandbox.memory) == ("started", False, 1, 1)


# -- host form: {port}-{sandboxId}.{domain} -------------------------------------

DOMAIN = "preview.test"

# Answers every GET with what it was asked: path, Host, X-Forwarded-*.
HEADER_ECHO = r"""
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "host": self.headers.get("Host"),
                           "prefix": self.headers.get("X-Forwarded-Prefix"),
                           "fwdHost": self.headers.get("X-Forwarded-Host"),
                           "token": self.headers.get("X-Daytona-Preview-Token"),
                           "auth": self.headers.get("Authorization")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", 8001), H).serve_forever()
"""


def via_host(server, host, path="/", headers=None):
    """GET `path` from the server with this Host header: what a client that
    resolves *.preview.test to the server sends. Returns (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def domain_server(atoll_bin, images_dir):
    with running_server(atoll_bin, images_dir, {"ATOLL_PREVIEW_DOMAIN": DOMAIN}) as srv:
        yield srv


@pytest.fixture(scope="module")
def host_sb(domain_server):
    """One sandbox on the domain server running a static site on 8000, a
    header echo on 8001 and a WebSocket echo on 8765."""
    sb = domain_server.client().create()
    sb.process.exec("mkdir -p /home/daytona/www && echo hello-preview > /home/daytona/www/index.html")
    start(sb, "web", "cd /home/daytona/www && python3 -m http.server 8000 --bind 127.0.0.1")
    sb.fs.upload_file(HEADER_ECHO.encode(), "/home/daytona/header_echo.py")
    start(sb, "echo", "python3 /home/daytona/header_echo.py")
    start_ws_echo(sb)
    for port in (8000, 8001):
        wait_listening(sb, port)
    yield sb
    sb.delete()


def test_host_form_preview_needs_the_token(domain_server, host_sb):
    link = host_sb.get_preview_link(8000)
    host = f"8000-{host_sb.id}.{DOMAIN}:{domain_server.port}"
    assert link.url == f"http://{host}"
    assert via_host(domain_server, host, "/index.html", {"X-Daytona-Preview-Token": link.token}) == \
        (200, b"hello-preview\n")
    assert via_host(domain_server, host, f"/index.html?DAYTONA_SANDBOX_AUTH_KEY={link.token}") == \
        (200, b"hello-preview\n")
    # the Host is matched case-insensitively, with or without the port
    loud = f"8000-{host_sb.id.upper()}.PREVIEW.Test"
    assert via_host(domain_server, loud, "/index.html", {"X-Daytona-Preview-Token": link.token}) == \
        (200, b"hello-preview\n")
    assert via_host(domain_server, host, "/index.html")[0] == 401
    assert via_host(domain_server, host, "/index.html", {"X-Daytona-Preview-Token": "0" * 32})[0] == 403
    # the organization's API key opens it too
    status, _ = via_host(domain_server, host, "/index.html",
                         {"Authorization": f"Bearer {domain_server.api_key}"})
    assert status == 200


def test_host_form_gives_the_app_the_whole_path_and_the_clients_host(domain_server, host_sb):
    token = host_sb.get_preview_link(8001).token
    host = f"8001-{host_sb.id}.{DOMAIN}:{domain_server.port}"
    # /api/… and /preview/… are the app's own paths on a preview host
    for path in ("/api/health?x=1", f"/preview/{host_sb.id}/8000/", "/"):
        status, body = via_host(domain_server, host, path, {"X-Daytona-Preview-Token": token})
        assert status == 200, body
        seen = json.loads(body)
        assert seen == {"path": path, "host": host, "prefix": None, "fwdHost": host, "token": None,
                        "auth": None}, seen
    # an API key that opened the preview is not passed on to the app
    key = {"Authorization": f"Bearer {domain_server.api_key}"}
    assert json.loads(via_host(domain_server, host, "/", key)[1])["auth"] is None
    # the app's own credentials (not an Atoll key) do reach it
    basic = {"X-Daytona-Preview-Token": token, "Authorization": "Basic dXNlcjpwdw=="}
    assert json.loads(via_host(domain_server, host, "/", basic)[1])["auth"] == "Basic dXNlcjpwdw=="


def test_host_form_websocket(domain_server, host_sb):
    token = host_sb.get_preview_link(8765).token
    ws_echo_round_trip(domain_server, f"/?DAYTONA_SANDBOX_AUTH_KEY={token}",
                       f"8765-{host_sb.id}.{DOMAIN}:{domain_server.port}")


def test_host_form_signed_url_carries_its_token_in_the_host(domain_server, host_sb):
    signed = host_sb.create_signed_preview_url(8000, expires_in_seconds=60)
    host = f"8000-{signed.token}.{DOMAIN}:{domain_server.port}"
    assert signed.url == f"http://{host}"
    assert via_host(domain_server, host, "/index.html") == (200, b"hello-preview\n")
    # bound to its port
    assert via_host(domain_server, f"8001-{signed.token}.{DOMAIN}", "/")[0] == 403
    host_sb.expire_signed_preview_url(8000, signed.token)
    assert via_host(domain_server, host, "/index.html")[0] == 403, "a revoked signed URL is refused"


def test_host_form_errors_and_the_api_beside_it(domain_server, host_sb):
    def err(status_body, code):
        status, body = status_body
        assert status == code, body
        e = json.loads(body)
        assert e["statusCode"] == code and e["message"], e
        return e["message"]

    missing = "0b9e7a3c-1f2d-4e5f-8a9b-0c1d2e3f4a5b"
    assert missing in err(via_host(domain_server, f"8000-{missing}.{DOMAIN}", "/"), 404)
    for port in ("0", "65536", "abc"):
        err(via_host(domain_server, f"{port}-{host_sb.id}.{DOMAIN}", "/"), 400)
    # the bare domain, other hosts and other names under the domain are the API
    auth = {"Authorization": f"Bearer {domain_server.api_key}"}
    for host in (DOMAIN, f"{DOMAIN}:{domain_server.port}", f"127.0.0.1:{domain_server.port}",
                 f"www.{DOMAIN}", f"8000-{host_sb.id}.elsewhere.test"):
        status, body = via_host(domain_server, host, f"/api/sandbox/{host_sb.id}", auth)
        assert status == 200 and json.loads(body)["id"] == host_sb.id, (host, body)
    # and the path form still works on this server
    token = host_sb.get_preview_link(8000).token
    status, body = fetch(f"{domain_server.url}/preview/{host_sb.id}/8000/index.html",
                         {"X-Daytona-Preview-Token": token})
    assert (status, body) == (200, b"hello-preview\n")
