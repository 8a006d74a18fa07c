"""The admin endpoint (``--admin HOST:PORT``): /metrics summed over workers, /status, /healthz.

Real processes: a ``python -m fastws`` master with two workers, websockets clients,
HTTP requests with ``http.client``; every process is stopped by its pid.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import sys
import textwrap
import time

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from .conftest import free_port, run
from .flow_master import children, sockets_of, stderr_of, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def metrics(port: int) -> dict[tuple, float]:
    """``/metrics`` as ``{(sample name, (label, value), ...): value}``."""
    status, body, headers = get(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return out


def healthz(port: int) -> int:
    try:
        return get(port, "/healthz")[0]
    except OSError:
        return 0


def ready_workers(admin_port: int) -> list[int]:
    return [w["pid"] for w in json.loads(get(admin_port, "/status")[1])["workers"] if w["state"] == "ready"]


@pytest.fixture
def admin(master):
    """``admin(*args) -> (proc, port, admin_port, workers)``: two workers, the endpoint up."""
    def start(*args, env=None):
        admin_port = free_port()
        proc, port = master("--workers", "2", "--admin", f"127.0.0.1:{admin_port}", *args, env=env)
        wait_for(lambda: healthz(admin_port) == 200, what="/healthz 200")
        # Both workers listening (and done opening their own sockets), as the master saw them.
        workers = wait_for(lambda: len(ready := ready_workers(admin_port)) == 2 and ready,
                           what="two ready workers")
        assert sorted(workers) == sorted(children(proc.pid))
        return proc, port, admin_port, workers
    return start


def test_metrics_count_what_was_sent_across_both_workers(admin):
    proc, port, admin_port, workers = admin()
    idle = {pid: sockets_of(pid) for pid in workers}
    connections, messages, size = 24, 5, 100

    async def scenario():
        conns = [await websockets.connect(f"ws://127.0.0.1:{port}/") for _ in range(connections)]
        spread = {pid: sockets_of(pid) - idle[pid] for pid in workers}
        for ws in conns:
            for i in range(messages):
                await ws.send(b"x" * size)
                assert await ws.recv() == b"x" * size
        # Open connections show once the workers have reported (once a second).
        await asyncio.to_thread(wait_for, lambda: metrics(admin_port).get(("fastws_connections_open",))
                                == connections, 5, "connections_open")
        for ws in conns:
            await ws.close()
        return spread

    spread = run(scenario(), 30)
    assert all(extra > 0 for extra in spread.values()), spread     # both workers had connections
    wait_for(lambda: metrics(admin_port).get(("fastws_closes_total", ("by", "client"), ("code", "1000")))
             == connections, what="the closes to be reported")
    m = metrics(admin_port)
    expected = {
        ("fastws_connections_total",): connections,
        ("fastws_handshakes_total", ("status", "101")): connections,
        ("fastws_messages_total", ("direction", "client_to_upstream")): connections * messages,
        ("fastws_messages_total", ("direction", "upstream_to_client")): connections * messages,
        ("fastws_payload_bytes_total", ("direction", "client_to_upstream")): connections * messages * size,
        ("fastws_payload_bytes_total", ("direction", "upstream_to_client")): connections * messages * size,
        ("fastws_closes_total", ("by", "client"), ("code", "1000")): connections,
        ("fastws_connections_open",): 0,
        ("fastws_workers", ("state", "ready")): 2,
        ("fastws_config_generation",): 1,
    }
    assert {key: m.get(key) for key in expected} == expected
    # Handshake failures are counted by status too.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")           # not an upgrade: 426
        assert sock.recv(100).startswith(b"HTTP/1.1 426")
    wait_for(lambda: metrics(admin_port).get(("fastws_handshakes_total", ("status", "426"))) == 1,
             what="the 426 to be counted")


def test_metrics_of_a_killed_worker_stay_in_the_totals(admin):
    proc, port, admin_port, workers = admin()

    async def traffic(n):
        for _ in range(n):
            async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send("a")
                await ws.recv()

    run(traffic(10), 20)
    wait_for(lambda: metrics(admin_port).get(("fastws_connections_total",)) == 10, what="10 reported")
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: len(set(children(proc.pid)) - set(workers)) == 2, what="two new workers")
    wait_for(lambda: healthz(admin_port) == 200, what="/healthz 200 again")
    run(traffic(5), 20)
    wait_for(lambda: metrics(admin_port).get(("fastws_connections_total",)) == 15, what="15 reported")


PLUGIN = textwrap.dedent("""
    class Judge:
        name = "judge"

        def __init__(self, conf):
            pass

        def ws_client_frame(self, ws):
            data, kind, _ = ws.client.get_frame()
            if data == b"drop":
                ws.client.drop_frame()
            elif data == b"boom":
                raise ValueError("boom")
""")


def test_handler_metrics(admin, tmp_path):
    (tmp_path / "judge.py").write_text(PLUGIN)
    config = tmp_path / "fastws.yaml"
    config.write_text('plugins:\n  - {name: "judge:Judge"}\n')
    proc, port, admin_port, _ = admin("--config", str(config),
                                      env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})

    async def scenario():
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send("one")
            assert await ws.recv() == "one"
            await ws.send("drop")
            await ws.send("two")
            assert await ws.recv() == "two"         # "drop" never came back
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send("boom")
            with pytest.raises(websockets.ConnectionClosedError) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1011

    run(scenario(), 20)
    key = ("fastws_handler_errors_total", ("plugin", "judge"))
    wait_for(lambda: metrics(admin_port).get(key) == 1, what="the handler error to be reported")
    wait_for(lambda: metrics(admin_port).get(("fastws_closes_total", ("by", "proxy"), ("code", "1011"))) == 1,
             what="the 1011 close")
    m = metrics(admin_port)
    assert m[("fastws_dropped_frames_total", ("direction", "client_to_upstream"))] == 1
    assert m.get(("fastws_dropped_frames_total", ("direction", "upstream_to_client")), 0) == 0
    # one, drop, two, the first close frame, boom: at least those five calls.
    assert m[("fastws_handler_calls_total", ("plugin", "judge"))] >= 5
    assert m[("fastws_handler_seconds_total", ("plugin", "judge"))] > 0


def test_status(admin):
    proc, port, admin_port, workers = admin()

    async def hold():
        conns = [await websockets.connect(f"ws://127.0.0.1:{port}/") for _ in range(3)]
        await asyncio.to_thread(wait_for, lambda: json.loads(get(admin_port, "/status")[1])["connections"] == 3,
                                5, "3 connections in /status")
        for ws in conns:
            await ws.close()

    run(hold(), 20)
    status, body, headers = get(admin_port, "/status")
    doc = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert doc["master"]["pid"] == proc.pid and doc["master"]["uptime"] > 0
    assert sorted(w["pid"] for w in doc["workers"]) == sorted(workers)
    assert {w["state"] for w in doc["workers"]} == {"ready"} and {w["generation"] for w in doc["workers"]} == {1}
    assert doc["generation"] == 1 and doc["healthy"] is True and doc["workers_wanted"] == 2
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: json.loads(get(admin_port, "/status")[1])["generation"] == 2, what="generation 2")
    wait_for(lambda: {w["generation"] for w in json.loads(get(admin_port, "/status")[1])["workers"]} == {2},
             what="only generation-2 workers")
    assert json.loads(get(admin_port, "/status")[1])["reloads"] == {"ok": 1, "failed": 0}


def test_healthz_stays_200_through_a_reload_and_is_503_while_stopping(admin, tmp_path):
    config = tmp_path / "fastws.yaml"
    config.write_text("graceful_timeout: 4\nclose_timeout: 3\n")
    proc, port, admin_port, _ = admin("--config", str(config))
    # A reload: the new workers are up before the old ones stop, so the answer stays 200.
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 2.0
    seen = set()
    while time.monotonic() < deadline:
        seen.add(healthz(admin_port))
    assert seen == {200}
    # A client that never answers the close frame holds the graceful stop open for close_timeout.
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert sock.recv(1000).startswith(b"HTTP/1.1 101")
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: healthz(admin_port) == 503, timeout=2, what="/healthz 503 while stopping")
    status, body, _ = get(admin_port, "/healthz")
    assert status == 503 and body.startswith(b"draining")
    assert sock.recv(100) == b"\x88\x0c\x03\xe9Going Away"      # the 1001 close frame, unanswered
    assert proc.wait(15) == 0
    sock.close()


def test_requests_it_does_not_serve(admin):
    proc, port, admin_port, _ = admin()
    assert get(admin_port, "/nope")[0] == 404
    status, _, headers = get(admin_port, "/metrics", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, body, headers = get(admin_port, "/healthz", method="HEAD")
    assert status == 200 and body == b"" and headers["Content-Length"] == "3"
    # Garbage and a silent client get nothing from the master but a closed socket, and it serves on.
    with socket.create_connection(("127.0.0.1", admin_port)) as sock:
        sock.sendall(b"\x00\x01 not http\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    silent = socket.create_connection(("127.0.0.1", admin_port))
    assert healthz(admin_port) == 200
    silent.close()
    # Request targets llhttp accepts but whose URL is odd or broken.
    for target in (b"http://host", b"http://[::1", b"*"):
        with socket.create_connection(("127.0.0.1", admin_port)) as sock:
            sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100).split(b" ")[1] in (b"400", b"404"), target
    # An Upgrade request is answered as a plain GET (the endpoint speaks no WebSocket).
    with socket.create_connection(("127.0.0.1", admin_port)) as sock:
        sock.settimeout(3)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    assert healthz(admin_port) == 200 and proc.poll() is None


def test_idle_clients_cannot_lock_out_a_probe(admin):
    """More silent connections than the endpoint keeps: the oldest give way to new ones."""
    proc, port, admin_port, _ = admin()
    idle = [socket.create_connection(("127.0.0.1", admin_port)) for _ in range(100)]
    try:
        assert healthz(admin_port) == 200
        assert get(admin_port, "/metrics")[0] == 200
    finally:
        for sock in idle:
            sock.close()



def test_admin_port_in_use_is_one_line(master):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        proc, _ = master("--workers", "2", "--admin", f"127.0.0.1:{taken}")
        assert proc.wait(15) != 0
    err = stderr_of(proc).strip()
    assert err == f"fastws: cannot serve the admin endpoint on 127.0.0.1:{taken}: Address already in use", err
    assert children(proc.pid) == []
