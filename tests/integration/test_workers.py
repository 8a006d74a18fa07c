"""``fastws --workers N``: a master process and N workers, with real processes and signals.

Every process is started by the test and stopped by its pid (the master, which
takes its workers with it; a finalizer kills anything left).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time

import pytest
import websockets

from fastws.arbiter import tcp_migrate_req

from .conftest import free_port, run
from .flow_master import children, serving, sockets_of, stderr_of, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def test_two_workers_both_serve(master):
    proc, port = master("--workers", "2")
    workers = wait_for(lambda: len(children(proc.pid)) == 2 and children(proc.pid), what="two workers")
    # Both listening (each has opened its listener and its echo upstream) before counting sockets.
    wait_for(lambda: stderr_of(proc).count("listening on") == 2, what="both workers listening")
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
    err = stderr_of(proc)
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
    err = stderr_of(proc).strip()
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
    assert "has not answered" in stderr_of(proc)
    wait_for(lambda: serving(port), what="the proxy to serve after the replacement")
    blocked_conn.close()


# -- reload (SIGHUP) ------------------------------------------------------------------------------

TAGGER = textwrap.dedent("""
    class Tagger:
        '''Answers each client message itself, tagged with the config's tag.'''
        name = "tagger"

        def __init__(self, conf):
            self.tag = conf["tag"]

        def ws_client_frame(self, ws):
            data, kind, _ = ws.client.get_frame()
            if kind != "text":
                return
            ws.client.drop_frame()
            ws.client.send(self.tag + ":" + data.decode())
""")


def tagger_config(path, tag: str, drain_timeout: float = 2.0, workers: int = 2) -> None:
    path.write_text(f"workers: {workers}\ndrain_timeout: {drain_timeout}\n"
                    f'plugins:\n  - {{name: "tagger:Tagger", config: {{tag: "{tag}"}}}}\n')


@pytest.fixture
def tagged(master, tmp_path):
    """A master with two workers whose plugin tags every answer with the config's tag."""
    (tmp_path / "tagger.py").write_text(TAGGER)
    config = tmp_path / "fastws.yaml"
    tagger_config(config, "v1")

    def start(**kwargs):
        proc, port = master("--config", str(config), **kwargs,
                            env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
        workers = wait_for(lambda: len(children(proc.pid)) == 2 and children(proc.pid), what="two workers")
        wait_for(lambda: tag_of(port) == "v1", what="the proxy to serve")
        return proc, port, config, workers
    return start


def tag_of(port: int) -> str | None:
    async def probe():
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/", open_timeout=2) as ws:
                await ws.send("probe")
                return (await asyncio.wait_for(ws.recv(), 2)).split(":")[0]
        except (OSError, websockets.WebSocketException, asyncio.TimeoutError):
            return None
    return run(probe(), 10)


async def connect_loop(port: int, stop: asyncio.Event, *, parallel: int = 48, limit: int = 20000,
                       seconds: float = 30.0) -> dict:
    """Open, use and close connections back to back (``parallel`` at a time) until ``stop`` is set,
    ``limit`` attempts were made or ``seconds`` passed; count every attempt, failure and tag."""
    counts = {"attempted": 0, "failed": 0, "tags": {}, "errors": []}
    deadline = asyncio.get_running_loop().time() + seconds

    async def one_loop(n: int) -> None:
        while not stop.is_set() and counts["attempted"] < limit \
                and asyncio.get_running_loop().time() < deadline:
            counts["attempted"] += 1
            try:
                async with websockets.connect(f"ws://127.0.0.1:{port}/", open_timeout=5,
                                              close_timeout=5) as ws:
                    await ws.send(f"c{n}")
                    tag = (await asyncio.wait_for(ws.recv(), 5)).split(":")[0]
                counts["tags"][tag] = counts["tags"].get(tag, 0) + 1
            except Exception as exc:        # every kind of failure counts: refused, reset, timeout
                counts["failed"] += 1
                if len(counts["errors"]) < 5:
                    counts["errors"].append(repr(exc))

    await asyncio.gather(*(one_loop(n) for n in range(parallel)))
    return counts


RELOADS = 4


def reload_under_load(proc, port: int, config) -> tuple[dict, list[float]]:
    """``RELOADS`` SIGHUPs (to configs v2, v3, ...) while a connect loop runs; each waits until
    the generation before it has exited; the loop goes on one more second after the last."""
    async def scenario():
        stop = asyncio.Event()
        loop_task = asyncio.ensure_future(connect_loop(port, stop))
        await asyncio.sleep(1.0)
        swaps = []
        for n in range(2, RELOADS + 2):
            old = children(proc.pid)
            tagger_config(config, f"v{n}", drain_timeout=1.0)
            proc.send_signal(signal.SIGHUP)
            started = time.monotonic()
            while any(pid in children(proc.pid) for pid in old):
                await asyncio.sleep(0.05)
                assert time.monotonic() - started < 30, "old workers did not exit"
            swaps.append(time.monotonic() - started)
            await asyncio.sleep(0.3)
        await asyncio.sleep(1.0)
        stop.set()
        return await loop_task, swaps

    return run(scenario(), 90)


@pytest.mark.skipif(tcp_migrate_req() != "1",
                    reason="needs net.ipv4.tcp_migrate_req=1 (.ci/run sets it; see README, Reload)")
def test_reload_under_load_refuses_no_connection(tagged):
    proc, port, config, workers = tagged()
    counts, swaps = reload_under_load(proc, port, config)
    print(f"\nreload under load: {RELOADS} reloads, {counts['attempted']} connections attempted, "
          f"{counts['failed']} failed, tags {counts['tags']}, old workers gone "
          f"{', '.join(f'{s:.2f}' for s in swaps)} s after each SIGHUP")
    assert counts["failed"] == 0, counts
    tags = [f"v{n}" for n in range(1, RELOADS + 2)]
    assert set(counts["tags"]) == set(tags) and all(counts["tags"][t] > 0 for t in tags), counts
    assert counts["attempted"] > 1000, counts         # the loop really was tight
    now_workers = children(proc.pid)
    assert len(now_workers) == 2 and not set(now_workers) & set(workers)
    assert tag_of(port) == f"v{RELOADS + 1}"
    assert proc.poll() is None


def test_reload_drains_old_sessions_then_closes_them_with_1012(tagged):
    proc, port, config, workers = tagged()

    async def scenario():
        old = [await websockets.connect(f"ws://127.0.0.1:{port}/") for _ in range(6)]
        for ws in old:
            await ws.send("before")
            assert await ws.recv() == "v1:before"
        tagger_config(config, "v2", drain_timeout=1.0)      # the old workers keep drain_timeout 2
        proc.send_signal(signal.SIGHUP)
        reloaded = time.monotonic()
        # The new generation is listening and the old one stopped accepting (it still holds
        # its sessions).
        await asyncio.to_thread(wait_for, lambda: "generation 2 serving" in stderr_of(proc), 10,
                                "the new generation")
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as new:
            await new.send("new")
            assert await new.recv() == "v2:new"         # new connections: the new config
        # Old sessions keep working, on the old config, during the drain.
        for i, ws in enumerate(old):
            await ws.send(f"during {i}")
            assert await ws.recv() == f"v1:during {i}"
        codes = []
        for ws in old:
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as exc:
                codes.append((exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else None)
        return codes, time.monotonic() - reloaded

    codes, elapsed = run(scenario(), 40)
    assert codes == [(1012, "Service Restart")] * 6
    assert 1.5 < elapsed < 6, elapsed                   # drain_timeout 2 s (the old config's)
    wait_for(lambda: not set(children(proc.pid)) & set(workers), what="the old workers to exit")
    assert len(children(proc.pid)) == 2
    assert tag_of(port) == "v2"


@pytest.mark.parametrize("broken", [
    ("drain_timeout: -1\n", "drain_timeout"),
    ('plugins:\n  - {name: "no_such_module:Plugin"}\n', "no_such_module"),
    ("workers: [\n", "yaml"),
])
def test_reload_with_a_broken_config_keeps_the_old_one(tagged, broken):
    text, named = broken
    proc, port, config, workers = tagged()

    async def hold():
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/")
        await ws.send("a")
        assert await ws.recv() == "v1:a"
        return ws

    async def scenario():
        ws = await hold()
        config.write_text(text)
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.5)
        await ws.send("b")                              # the session was not touched
        reply = await ws.recv()
        await ws.close()
        return reply

    assert run(scenario(), 20) == "v1:b"
    assert sorted(children(proc.pid)) == sorted(workers)     # no worker was started or stopped
    assert tag_of(port) == "v1"
    err = stderr_of(proc)
    assert "reload" in err and "still serving generation 1" in err, err
    assert named in err.lower(), err
    # A good config afterwards reloads as usual.
    tagger_config(config, "v3")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: tag_of(port) == "v3", what="the next reload to take effect")


def test_reload_whose_new_workers_fail_to_boot_rolls_back(tagged, tmp_path):
    """The new config passes the master's check but its workers cannot start: the old ones go on."""
    proc, port, config, workers = tagged()
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
    config.write_text('plugins:\n  - {name: "bootfail:BootFail"}\n')
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in stderr_of(proc), what="the reload to fail")
    err = stderr_of(proc)
    assert "cannot start in a worker" in err and "still serving generation 1" in err, err
    wait_for(lambda: sorted(children(proc.pid)) == sorted(workers), what="the failed workers to go")
    assert tag_of(port) == "v1"
    assert proc.poll() is None


def test_reload_whose_plugin_import_hangs_fails_and_keeps_the_old_config(tagged, tmp_path):
    """The master checks the new plugins in a child process with a time limit (worker_timeout):
    an import that never returns fails the reload; the master never stops answering."""
    proc, port, config, workers = tagged()
    (tmp_path / "hangs.py").write_text("import time\ntime.sleep(3600)\n")
    config.write_text('worker_timeout: 1\nplugins:\n  - {name: "hangs:Plugin"}\n')
    started = time.monotonic()
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "loading the plugins took more than 1s" in stderr_of(proc), what="the reload to fail")
    assert time.monotonic() - started < 5
    assert sorted(children(proc.pid)) == sorted(workers)
    assert tag_of(port) == "v1"
    proc.send_signal(signal.SIGTERM)                # and the master still takes signals
    assert proc.wait(15) == 0
