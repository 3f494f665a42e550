"""`atoll mcp start` driven by the official MCP Python SDK (a real client
over stdio): every tool, clear tool errors, and `atoll mcp config/init`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

EXPECTED_TOOLS = {
    "create_sandbox", "destroy_sandbox", "list_sandboxes", "execute_command", "run_code",
    "file_upload", "file_download", "read_file_range", "list_files", "file_info", "create_folder",
    "move_file", "delete_file", "search_files", "git_clone", "preview_link", "start_process",
    "process_logs",
}


def text_of(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def test_every_tool_through_a_real_mcp_client(atoll_bin, server):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAYTONA_", "ATOLL_API_"))}
    env.update({"ATOLL_API_URL": server.api_url, "ATOLL_API_KEY": server.api_key,
                "ATOLL_CONFIG": "/nonexistent/atoll.json"})
    params = StdioServerParameters(command=str(atoll_bin), args=["mcp", "start"], env=env)

    async def scenario():
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                tools = {t.name: t for t in (await s.list_tools()).tools}
                assert EXPECTED_TOOLS <= set(tools), set(tools)
                assert tools["execute_command"].input_schema["required"] == ["sandbox", "command"]

                async def call(tool, **args):
                    r = await s.call_tool(tool, args)
                    assert not r.is_error, (tool, text_of(r))
                    return r

                created = text_of(await call("create_sandbox", name="mcp-box"))
                assert "mcp-box" in created and "started" in created
                try:
                    assert "mcp-box" in text_of(await call("list_sandboxes"))
                    out = text_of(await call("execute_command", sandbox="mcp-box",
                                             command="echo hello; exit 4"))
                    assert "exit code 4" in out and "hello" in out
                    await call("create_folder", sandbox="mcp-box", path="/home/daytona/proj")
                    await call("file_upload", sandbox="mcp-box", path="/home/daytona/proj/a.txt",
                               content="one\ntwo needle\nthree\nfour\n")
                    assert text_of(await call("file_download", sandbox="mcp-box",
                                              path="/home/daytona/proj/a.txt")).startswith("one\ntwo")
                    assert text_of(await call("read_file_range", sandbox="mcp-box",
                                              path="/home/daytona/proj/a.txt", start=2, end=3)) == \
                        "2: two needle\n3: three"
                    found = text_of(await call("search_files", sandbox="mcp-box", path="/home/daytona/proj",
                                               pattern="needle"))
                    assert "a.txt" in found and "two needle" in found
                    listing = json.loads(text_of(await call("list_files", sandbox="mcp-box",
                                                            path="/home/daytona/proj")))
                    assert [f["name"] for f in listing] == ["a.txt"]
                    info = json.loads(text_of(await call("file_info", sandbox="mcp-box",
                                                         path="/home/daytona/proj/a.txt")))
                    assert info["size"] == 26
                    await call("move_file", sandbox="mcp-box", source="/home/daytona/proj/a.txt",
                               destination="/home/daytona/proj/b.txt")
                    await call("delete_file", sandbox="mcp-box", path="/home/daytona/proj")
                    out = text_of(await call("execute_command", sandbox="mcp-box",
                                             command="ls /home/daytona/proj 2>&1 || echo gone"))
                    assert "gone" in out
                    # Rich output: a matplotlib chart comes back as an image.
                    r = await call("run_code", sandbox="mcp-box", code=(
                        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.title('t')\nplt.show()\n"
                        "print('drawn')"))
                    assert "drawn" in text_of(r)
                    assert any(getattr(c, "type", "") == "image" and c.mime_type == "image/png" for c in r.content)
                    # A long-running process and its logs.
                    pid = text_of(await call("start_process", sandbox="mcp-box",
                                             command="for i in 1 2 3; do echo tick $i; done; sleep 0.2"))
                    for _ in range(50):
                        logs = text_of(await call("process_logs", sandbox="mcp-box", process=pid))
                        if "exited with 0" in logs:
                            break
                        await asyncio.sleep(0.2)
                    assert "exited with 0" in logs and "tick 3" in logs, logs
                    link = json.loads(text_of(await call("preview_link", sandbox="mcp-box", port=3000)))
                    assert "3000" in link["url"]
                    # git_clone of a repository made inside the sandbox.
                    await call("execute_command", sandbox="mcp-box", command=(
                        "cd /tmp && git init -q src && cd src && git -c user.email=a@b -c user.name=a "
                        "commit -q --allow-empty -m init"))
                    await call("git_clone", sandbox="mcp-box", url="/tmp/src", path="/home/daytona/clone")
                    out = text_of(await call("execute_command", sandbox="mcp-box",
                                             command="git -C /home/daytona/clone log --oneline"))
                    assert "init" in out
                    # Errors are tool results the agent can read.
                    r = await s.call_tool("file_download", {"sandbox": "mcp-box", "path": "/nope"})
                    assert r.is_error and "404" in text_of(r)
                    r = await s.call_tool("execute_command", {"sandbox": "mcp-box"})
                    assert r.is_error and "command" in text_of(r)
                    r = await s.call_tool("execute_command", {"sandbox": "no-such-box", "command": "true"})
                    assert r.is_error and "not found" in text_of(r).lower()
                finally:
                    await call("destroy_sandbox", sandbox="mcp-box")

    asyncio.run(scenario())


def test_mcp_config_and_init(atoll_bin, server, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "ATOLL_API_URL": server.api_url,
           "ATOLL_API_KEY": server.api_key}
    out = subprocess.run([str(atoll_bin), "mcp", "config"], env=env, capture_output=True, text=True, check=True)
    entry = json.loads(out.stdout)["mcpServers"]["atoll"]
    assert entry["args"] == ["mcp", "start"] and entry["env"]["ATOLL_API_URL"] == server.api_url
    cursor = tmp_path / ".cursor" / "mcp.json"
    cursor.parent.mkdir()
    cursor.write_text(json.dumps({"mcpServers": {"other": {"command": "x"}}}))
    subprocess.run([str(atoll_bin), "mcp", "init", "cursor"], env=env, capture_output=True, check=True)
    merged = json.loads(cursor.read_text())
    assert set(merged["mcpServers"]) == {"other", "atoll"}
    p = subprocess.run([str(atoll_bin), "mcp", "init", "vim"], env=env, capture_output=True, text=True)
    assert p.returncode == 1 and "unknown client" in p.stderr


def test_mcp_over_streamable_http(atoll_bin, server):
    """`atoll mcp start --http`: the same tools through the official SDK's
    streamable HTTP client; a foreign Host (DNS rebinding) is refused."""
    import socket
    import time
    import urllib.error
    import urllib.request

    from mcp.client.streamable_http import streamable_http_client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAYTONA_", "ATOLL_API_"))}
    env.update({"ATOLL_API_URL": server.api_url, "ATOLL_API_KEY": server.api_key,
                "ATOLL_CONFIG": "/nonexistent/atoll.json"})
    proc = subprocess.Popen([str(atoll_bin), "mcp", "start", "--http", f"127.0.0.1:{port}"],
                            env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)

        async def scenario():
            async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write, *_):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    names = {t.name for t in (await s.list_tools()).tools}
                    assert EXPECTED_TOOLS <= names, names
                    r = await s.call_tool("list_sandboxes", {})
                    assert not r.is_error, text_of(r)
                    r = await s.call_tool("execute_command", {"sandbox": "no-such-box", "command": "true"})
                    assert r.is_error and "404" in text_of(r), text_of(r)

        asyncio.run(scenario())
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/mcp", method="POST",
            data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode(),
            headers={"Host": "evil.example", "Content-Type": "application/json",
                     "Accept": "application/json, text/event-stream"})
        try:
            status = urllib.request.urlopen(req, timeout=10).status
        except urllib.error.HTTPError as e:
            status = e.code
        assert status in (400, 403, 421), status
    finally:
        proc.terminate()
        proc.wait(10)
