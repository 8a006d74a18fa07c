"""The ``fastws`` command line, run as a real process (SPEC sections 1, 6 and 7).

Each test starts ``python -m fastws ...`` (the same entry point as the ``fastws``
script, ``fastws.cli:main``) with ``flow_proc``, talks to it over 127.0.0.1, and
stops it by its pid.  Checked: ``--version``; the built-in echo upstream with no
configuration; one-line start-up errors without tracebacks; ``fastws check``;
the access log (text and JSON lines); graceful shutdown on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import time

import pytest
import websockets
import yaml
from websockets.exceptions import ConnectionClosed

import fastws
from fastws.config import load_config

from .conftest import free_port, run
from .flow_proc import FastwsProcess, run_fastws
from .flow_ws import CLOSE, RawServer, TEXT, connect


def one_line_error(stderr: str) -> str:
    """The error output must be exactly one non-empty line and no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def fastws_proc(tmp_path):
    """``fastws_proc(*args, port=None) -> (FastwsProcess, port)``: listening on 127.0.0.1:port.

    Readiness is read from the start-up line on stderr, not probed with a connection, so
    that the access log sees only the tests' own connections."""
    started: list[FastwsProcess] = []

    def start(*args: str, port: int | None = None, wait: bool = True) -> tuple[FastwsProcess, int]:
        port = port or free_port()
        proc = FastwsProcess(["--listen", f"127.0.0.1:{port}", *args], tmp_path, name=f"fastws{len(started)}")
        started.append(proc)
        if wait:
            proc.wait_listening()
        return proc, port

    yield start
    for proc in started:
        proc.stop(timeout=5)


async def echo_session(port: int, messages, path: str = "/", close_code: int = 1000) -> list:
    async with websockets.connect(f"ws://127.0.0.1:{port}{path}", ping_interval=None) as ws:
        replies = []
        for message in messages:
            await ws.send(message)
            replies.append(await asyncio.wait_for(ws.recv(), 5))
        await ws.close(close_code)
    return replies


# -- version --------------------------------------------------------------------------------------

def test_version():
    result = run_fastws(["--version"])
    assert result.returncode == 0, result.stderr
    out = result.stdout.strip()
    assert out.startswith(f"fastws {fastws.__version__} "), out
    assert "compiled codec" in out, out
    assert len(out.splitlines()) == 1


# -- the built-in echo upstream ------------------------------------------------------------------------

def test_no_config_proxies_to_builtin_echo(fastws_proc):
    """Neither --config nor --upstream: the built-in echo upstream, announced on stderr; SIGTERM
    ends the process quickly with status 0."""
    proc, port = fastws_proc()
    banner = proc.wait_output(lambda text: "echo" in text, stream="stderr")
    assert "built-in echo upstream" in banner, banner
    assert f"127.0.0.1:{port}" in banner, banner
    messages = ["hello", b"\x00\x01\x02", "x" * 70000]
    assert run(echo_session(port, messages, path="/any/path")) == messages
    start = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.wait(5) == 0, proc.stderr
    assert time.monotonic() - start < 2.0
    assert "Traceback" not in proc.stderr


# -- start-up errors ---------------------------------------------------------------------------------

def test_port_in_use(tmp_path):
    """A port another program listens on: non-zero exit, one line on stderr, no traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_fastws(["--listen", f"127.0.0.1:{port}"], timeout=15)
    assert result.returncode != 0
    line = one_line_error(result.stderr)
    assert "in use" in line.lower() or "listen" in line.lower(), line


@pytest.mark.parametrize("args, expected", [
    (["--listen", "nonsense"], "--listen"),
    (["--listen", "127.0.0.1:99999"], "--listen"),
    (["--upstream", "http://127.0.0.1:1/"], "--upstream"),
    (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], "--tls-cert"),
    (["--config", "/nonexistent/fastws.yaml"], "/nonexistent/fastws.yaml"),
])
def test_user_errors_are_one_line(args, expected):
    result = run_fastws(args, timeout=15)
    assert result.returncode != 0
    line = one_line_error(result.stderr)
    assert expected in line, line


# -- fastws check ------------------------------------------------------------------------------------

GOOD_CONFIG = """\
listen:
  - 127.0.0.1:9000
workers: 2
idle_timeout: 30
services:
  - name: chat
    url: ws://127.0.0.1:9001/ws
    routes:
      - {name: chat, paths: [/chat]}
"""


def test_check_good_config(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD_CONFIG)
    result = run_fastws(["check", str(path)])
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["listen"] == ["127.0.0.1:9000"]
    assert effective["workers"] == 2
    assert effective["idle_timeout"] == 30
    assert effective["services"][0]["url"] == "ws://127.0.0.1:9001/ws"
    # every setting is there, defaults included
    assert effective["close_timeout"] == 5
    assert effective["client_max_payload"] == 1 << 20
    # and the printed config is the same configuration when loaded back
    again = tmp_path / "again.yaml"
    again.write_text(result.stdout)
    assert load_config(str(again)) == load_config(str(path))


@pytest.mark.parametrize("content, field", [
    ("workers: 0\n", "workers"),
    ("services:\n  - {name: x, url: 'http://x', routes: [{paths: [/]}]}\n", "services[0].url"),
    ("idle_timeout: -1\n", "idle_timeout"),
    ("listen: [localhost]\n", "listen"),
    ("wokers: 2\n", "wokers"),
])
def test_check_bad_config(tmp_path, content, field):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = run_fastws(["check", str(path)])
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = one_line_error(result.stderr)
    assert "bad.yaml" in line and field in line, line
    assert result.stdout == ""


# -- access log --------------------------------------------------------------------------------------

TEXT_LINE = re.compile(
    r'^(?P<client>127\.0\.0\.1:\d+) "(?P<path>[^"]*)" (?P<status>\d+) route=(?P<route>\S+) '
    r'upstream=(?P<upstream>\S+) duration=(?P<duration>[\d.]+)s in=(?P<in_m>\d+)/(?P<in_b>\d+)B '
    r'out=(?P<out_m>\d+)/(?P<out_b>\d+)B close=client:(?P<cc>\w+),upstream:(?P<uc>\w+) '
    r'closed_by=(?P<by>\w+)'
)


def test_access_log_text(fastws_proc):
    """One line per connection at close, with route, messages and bytes each way, close codes."""
    proc, port = fastws_proc("--access-log", "-")
    messages = ["hello", b"\x00" * 10]
    assert run(echo_session(port, messages, path="/room/1", close_code=1000)) == messages
    out = proc.wait_output(lambda text: text.count("\n") >= 1)
    lines = out.splitlines()
    assert len(lines) == 1, out
    m = TEXT_LINE.match(lines[0])
    assert m is not None, lines[0]
    assert m["path"] == "/room/1" and m["status"] == "101"
    assert m["route"] != "None"
    assert (m["in_m"], m["in_b"], m["out_m"], m["out_b"]) == ("2", "15", "2", "15")
    assert (m["cc"], m["uc"], m["by"]) == ("1000", "1000", "client")
    # a second connection gives a second line
    assert run(echo_session(port, ["again"], close_code=1001)) == ["again"]
    out = proc.wait_output(lambda text: text.count("\n") >= 2)
    second = TEXT_LINE.match(out.splitlines()[1])
    assert second is not None and (second["in_m"], second["in_b"], second["cc"]) == ("1", "5", "1001")


def test_access_log_json(fastws_proc):
    async def go():
        async with RawServer() as server:
            proc, port = await asyncio.get_running_loop().run_in_executor(
                None, lambda: fastws_proc("--upstream", server.url, "--access-log", "-",
                                          "--access-log-format", "json"))
            client = await connect(port, "/chat?room=1")
            upstream = await server.accept()
            try:
                await client.send(TEXT, "abc")
                await upstream.recv()
                await upstream.send(0x2, b"\x01" * 100)
                await upstream.send(0x2, b"\x02" * 200)
                await client.recv()
                await client.recv()
                await upstream.send_close(4001, "bye")
                await client.expect_close()
                await client.send_close(4001)
                await upstream.expect_close()
                await client.expect_eof(3)
            finally:
                client.abort()
                upstream.abort()
            return proc, server.url
    proc, upstream_url = run(go())
    out = proc.wait_output(lambda text: text.count("\n") >= 1)
    record = json.loads(out.splitlines()[0])
    assert record["path"] == "/chat?room=1"
    assert record["status"] == 101
    assert record["route"] is not None and record["service"] == "default"
    assert record["upstream"] == upstream_url
    assert record["client"].startswith("127.0.0.1:")
    assert (record["client_messages"], record["client_bytes"]) == (1, 3)
    assert (record["upstream_messages"], record["upstream_bytes"]) == (2, 300)
    assert (record["upstream_close_code"], record["client_close_code"]) == (4001, 4001)
    assert record["closed_by"] == "upstream"
    assert 0 < record["duration"] < 10


def test_access_log_to_file(fastws_proc, tmp_path):
    log = tmp_path / "access.log"
    proc, port = fastws_proc("--access-log", str(log), "--access-log-format", "json")
    assert run(echo_session(port, ["x"])) == ["x"]
    deadline = time.monotonic() + 5
    while not (log.exists() and log.read_text().endswith("\n")) and time.monotonic() < deadline:
        time.sleep(0.02)
    record = json.loads(log.read_text().splitlines()[0])
    assert (record["client_messages"], record["client_close_code"]) == (1, 1000)


# -- signals -----------------------------------------------------------------------------------------

def test_sigterm_closes_sessions_with_1001(fastws_proc):
    """SIGTERM with a session open: both sides get 1001 "Going Away", the process exits 0."""
    async def go():
        async with RawServer() as server:
            proc, port = await asyncio.get_running_loop().run_in_executor(
                None, lambda: fastws_proc("--upstream", server.url))
            async with websockets.connect(f"ws://127.0.0.1:{port}/", ping_interval=None) as ws:
                upstream = await server.accept()
                await ws.send("hi")
                assert (await upstream.recv()).payload == b"hi"
                start = time.monotonic()
                proc.signal(signal.SIGTERM)
                close = await upstream.expect_close(5)
                assert (close.close_code, close.close_reason) == (1001, "Going Away")
                await upstream.send_close(1001)
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(ws.recv(), 5)
                assert info.value.rcvd is not None
                assert (info.value.rcvd.code, info.value.rcvd.reason) == (1001, "Going Away")
            code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 5)
            elapsed = time.monotonic() - start
            upstream.abort()
            return code, elapsed, proc
    code, elapsed, proc = run(go())
    assert code == 0, proc.stderr
    assert elapsed < 3, elapsed
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("signum, graceful, limit", [(signal.SIGTERM, 1, 1.0), (signal.SIGINT, 5, 2.0)])
def test_shutdown_bounded_by_graceful_timeout(fastws_proc, tmp_path, signum, graceful, limit):
    """A client that never answers the close: the process still exits 0 within graceful_timeout
    (SIGTERM, 1 s here) or the quicker SIGINT limit (2 s at most), well before close_timeout
    (30 s here) would drop the client."""
    config = tmp_path / "graceful.yaml"
    config.write_text(f"graceful_timeout: {graceful}\nclose_timeout: 30\n")

    async def go():
        proc, port = await asyncio.get_running_loop().run_in_executor(
            None, lambda: fastws_proc("--config", str(config)))
        client = await connect(port)
        try:
            await client.send(TEXT, "ping?")
            assert (await client.recv()).payload == b"ping?"
            start = time.monotonic()
            proc.signal(signum)
            close = await client.recv(5)                # read it, never answer it
            assert (close.opcode, close.close_code, close.close_reason) == (CLOSE, 1001, "Going Away")
            code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, limit + 5)
            return code, time.monotonic() - start, proc
        finally:
            client.abort()
    code, elapsed, proc = run(go(), timeout=30)
    assert code == 0, proc.stderr
    assert limit - 0.1 <= elapsed <= limit + 1.5, elapsed


def test_sigterm_with_handshakes_in_progress(fastws_proc):
    """SIGTERM while one client has sent half a request and another waits for an upstream that
    never answers the upgrade: neither holds the process up; it exits 0 at once."""
    async def go():
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)   # accepts, says nothing
        silent_port = silent.sockets[0].getsockname()[1]
        writers = []
        try:
            proc, port = await asyncio.get_running_loop().run_in_executor(
                None, lambda: fastws_proc("--upstream", f"ws://127.0.0.1:{silent_port}/"))
            half_r, half_w = await asyncio.open_connection("127.0.0.1", port)
            half_w.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            waiting = await connect_no_wait(port)
            writers += [half_w, waiting[1]]
            await asyncio.sleep(0.2)
            start = time.monotonic()
            proc.signal(signal.SIGTERM)
            code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 5)
            elapsed = time.monotonic() - start
            for reader in (half_r, waiting[0]):
                rest = await asyncio.wait_for(reader.read(), 2)     # the connection ended
                assert rest == b"" or rest.startswith(b"HTTP/1.1 "), rest
            return code, elapsed, proc
        finally:
            for w in writers:
                w.transport.abort()
            silent.close()
    code, elapsed, proc = run(go())
    assert code == 0, proc.stderr
    assert elapsed < 1.5, elapsed


async def connect_no_wait(port: int):
    """A complete upgrade request whose answer is not awaited: (reader, writer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await writer.drain()
    return reader, writer
