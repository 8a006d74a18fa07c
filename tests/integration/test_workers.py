"""``fastws --workers N``: a master process and N workers, with real processes and signals.

Every process is started by the test and stopped by its pid (the master, which
takes its workers with it; a finalizer kills anything left).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import websockets

from .conftest import free_port, run

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def sockets_of(pid: int) -> int:
    """How many socket descriptors a process holds."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def master(tmp_path):
    """``master(*args, env=None) -> (Popen, port)``: ``python -m fastws --workers ...``."""
    started = []

    def start(*args, env=None, port=None):
        port = port or free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "fastws", "--listen", f"127.0.0.1:{port}", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        started.append(proc)
        return proc, port

    yield start
    for proc in started:
        if proc.poll() is None:
            for pid in children(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


def serving(port: int) -> bool:
    async def probe():
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/", open_timeout=1) as ws:
                await ws.send("probe")
                return await ws.recv() == "probe"
        except (OSError, websockets.WebSocketException, asyncio.TimeoutError):
            return False
    return run(probe(), 5)


def test_two_workers_both_serve(master):
    proc, port = master("--workers", "2")
    workers = wait_for(lambda: len(children(proc.pid)) == 2 and children(proc.pid), what="two workers")
    wait_for(lambda: serving(port), what="the proxy to serve")
    idle = {pid: sockets_of(pid) for pid in workers}

    async def hold(n: int):
        conns = [await websockets.connect(f"ws://127.0.0.1:{port}/") for _ in range(n)]
        try:
            for i, ws in enumerate(conns):
                await ws.send(f"m{i}")
                assert await ws.recv() == f"m{i}"
            # Each worker that accepted connections holds more sockets than when idle.
            return {pid: sockets_of(pid) - idle[pid] for pid in workers}
        finally:
            for ws in conns:
                await ws.close()

    grown = run(hold(40), 20)
    # SO_REUSEPORT spreads 40 connections over both workers (each has its own listener).
    assert all(extra > 0 for extra in grown.values()), grown


def test_killed_worker_is_replaced_and_the_other_keeps_its_connections(master):
    proc, port = master("--workers", "2")
    workers = wait_for(lambda: len(children(proc.pid)) == 2 and children(proc.pid), what="two workers")
    wait_for(lambda: serving(port), what="the proxy to serve")

    async def scenario():
        conns = [await websockets.connect(f"ws://127.0.0.1:{port}/") for _ in range(30)]
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(0.5)
        alive = 0
        for i, ws in enumerate(conns):
            try:
                await ws.send(f"after {i}")
                if await asyncio.wait_for(ws.recv(), 2) == f"after {i}":
                    alive += 1
            except (websockets.ConnectionClosed, asyncio.TimeoutError):
                pass
        for ws in conns:
            await ws.close()
        return victim, alive

    victim, alive = run(scenario(), 30)
    # The surviving worker's connections are untouched (some of the 30 were on it).
    assert 0 < alive < 30, alive
    replaced = wait_for(lambda: len(children(proc.pid)) == 2 and victim not in children(proc.pid)
                        and children(proc.pid), what="a replacement worker")
    assert workers[1] in replaced
    assert serving(port)
    assert proc.poll() is None


def test_worker_boot_failure_stops_the_master(master, tmp_path):
    """A worker that cannot start makes the master stop with the error: no respawn loop."""
    (tmp_path / "bootfail.py").write_text(textwrap.dedent("""
        import os

        class BootFail:
            name = "bootfail"

            def __init__(self, conf):
                if os.environ.get("FASTWS_WORKER_ID"):      # fine in the master's check
                    raise RuntimeError("cannot start in a worker")

            def ws_client_frame(self, ws):
                pass
    """))
    config = tmp_path / "fastws.yaml"
    config.write_text('plugins:\n  - {name: "bootfail:BootFail"}\n')
    proc, _ = master("--workers", "2", "--config", str(config),
                     env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    code = proc.wait(20)
    err = proc.stderr.read()
    assert code == 3, err
    assert "cannot start in a worker" in err
    assert err.count("failed to boot") <= 2         # at most once a worker, not a loop


def test_sigterm_closes_sessions_with_1001_and_exits_0(master):
    proc, port = master("--workers", "2")
    wait_for(lambda: len(children(proc.pid)) == 2, what="two workers")
    wait_for(lambda: serving(port), what="the proxy to serve")

    async def scenario():
        conns = [await websockets.connect(f"ws://127.0.0.1:{port}/") for _ in range(10)]
        for ws in conns:
            await ws.send("x")
            assert await ws.recv() == "x"
        proc.send_signal(signal.SIGTERM)
        codes = []
        for ws in conns:
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as exc:
                codes.append((exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else None)
        return codes

    codes = run(scenario(), 30)
    assert codes == [(1001, "Going Away")] * 10
    assert proc.wait(15) == 0


def test_port_in_use_is_one_line(master):
    port = free_port()
    import socket
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        proc, _ = master("--workers", "2", port=port)
        code = proc.wait(15)
    err = proc.stderr.read().strip()
    assert code != 0
    assert err.count("\n") == 0 and "cannot listen on 127.0.0.1" in err, err
    assert "Traceback" not in err


def test_worker_with_a_blocked_loop_is_replaced(master, tmp_path):
    """A worker whose event loop is stuck (here a plugin that blocks) stops its heartbeat:
    the master replaces it within worker_timeout, and the proxy goes on serving."""
    (tmp_path / "blocker.py").write_text(textwrap.dedent("""
        import time

        class Blocker:
            name = "blocker"

            def __init__(self, conf):
                self.conf = conf

            def ws_client_frame(self, ws):
                data, typ, _ = ws.client.get_frame()
                if data == b"block":
                    time.sleep(120)             # the whole worker stops: no heartbeat
    """))
    config = tmp_path / "fastws.yaml"
    config.write_text('worker_timeout: 1.5\nplugins:\n  - {name: "blocker:Blocker"}\n')
    proc, port = master("--workers", "2", "--config", str(config),
                        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    workers = wait_for(lambda: len(children(proc.pid)) == 2 and children(proc.pid), what="two workers")
    wait_for(lambda: serving(port), what="the proxy to serve")

    import websocket                            # websocket-client: synchronous, no event loop

    blocked_conn = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=10)
    blocked_conn.send("block")
    started = time.monotonic()
    replaced = wait_for(lambda: len(set(children(proc.pid)) - set(workers)) == 1 and children(proc.pid),
                        timeout=15, what="the stuck worker to be replaced")
    elapsed = time.monotonic() - started
    assert len(replaced) == 2
    assert 1.0 < elapsed < 12, elapsed          # worker_timeout 1.5 s, checked every 0.5 s
    assert "has not answered" in "".join(iter_stderr_nonblocking(proc))
    wait_for(lambda: serving(port), what="the proxy to serve after the replacement")
    blocked_conn.close()


def iter_stderr_nonblocking(proc):
    """What the master has written to stderr so far, without waiting for more."""
    import fcntl
    fd = proc.stderr.fileno()
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        chunk = proc.stderr.read()
        if chunk:
            yield chunk
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
