"""Fixtures for tests over real sockets on 127.0.0.1.

The proxy runs in a thread of its own with its own event loop (uvloop or the
stock asyncio loop: the ``proxy_loop`` parameter), exactly as a worker runs it,
so test clients on the main thread's loop talk to it over loopback TCP.
Upstream servers run in another thread.  Every thread and server a fixture
starts is stopped by it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from fastws.config import load_config
from fastws.worker import Worker


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the config refuses port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self, kind: str = "asyncio") -> None:
        if kind == "uvloop":
            import uvloop

            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=f"{kind}-loop")
        self.thread.start()

    def run(self, coro, timeout: float = 30.0) -> Any:
        """Run ``coro`` on this loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable, *args) -> Any:
        """Call ``fn(*args)`` on the loop's thread and return its result."""
        async def call():
            return fn(*args)
        return self.run(call())

    def stop(self) -> None:
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self.run(cancel_all(), timeout=5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@dataclass
class RunningProxy:
    worker: Worker
    port: int
    thread: LoopThread

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def server(self):
        return self.worker.proxy

    def open_connections(self) -> int:
        return self.thread.call(lambda: len(self.worker.proxy.links))


@dataclass
class Upstream:
    port: int
    url: str
    received: list          # what the upstream's handler recorded, when it records
    extra: dict


@pytest.fixture(params=["uvloop", "asyncio"])
def proxy_loop(request) -> str:
    """The event loop the proxy runs on: both, as uvloop's own tests do."""
    return request.param


@pytest.fixture
def start_proxy(proxy_loop):
    """``start_proxy(upstream_url=None, chain_for=None, **settings) -> RunningProxy``.

    With no upstream_url the built-in echo upstream is used.  Settings are
    config settings by name (``close_timeout=0.5``, ``client_max_payload=1024``).
    """
    started: list[RunningProxy] = []

    def start(upstream_url: str | None = None, chain_for=None, config=None, **settings) -> RunningProxy:
        port = free_port()
        overrides = {"listen": [f"127.0.0.1:{port}"], **settings}
        if upstream_url is not None:
            overrides["upstream"] = upstream_url
        cfg = config if config is not None else load_config(None, overrides)
        thread = LoopThread(proxy_loop)
        worker = Worker(cfg, chain_for=chain_for)
        try:
            thread.run(worker.start())
        except BaseException:
            thread.stop()
            raise
        proxy = RunningProxy(worker, worker.addresses[0][1], thread)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        try:
            proxy.thread.run(proxy.worker.shutdown(1.0), timeout=10)
        finally:
            proxy.thread.stop()


@pytest.fixture
def upstream_thread():
    thread = LoopThread("asyncio")
    yield thread
    thread.stop()


@pytest.fixture
def websockets_upstream(upstream_thread):
    """``websockets_upstream(handler=None, **serve_kwargs) -> Upstream``: a websockets server.

    The default handler echoes every message and records it in ``received``.
    """
    from websockets.asyncio.server import serve

    servers = []

    def start(handler=None, **kwargs) -> Upstream:
        received: list = []

        async def echo(ws):
            async for message in ws:
                received.append(message)
                await ws.send(message)

        async def go():
            server = await serve(handler or echo, "127.0.0.1", 0, **kwargs)
            servers.append(server)
            return server.sockets[0].getsockname()[1]

        port = upstream_thread.run(go())
        return Upstream(port, f"ws://127.0.0.1:{port}/", received, {})

    yield start

    async def close_all():
        for server in servers:
            server.close()
            await server.wait_closed()
    upstream_thread.run(close_all())


@pytest.fixture
def aiohttp_upstream(upstream_thread):
    """``aiohttp_upstream(handler=None) -> Upstream``: an aiohttp server (echo by default)."""
    from aiohttp import WSMsgType, web

    runners = []

    def start(handler=None, **ws_kwargs) -> Upstream:
        received: list = []

        async def echo(request):
            ws = web.WebSocketResponse(**ws_kwargs)
            await ws.prepare(request)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    received.append(msg.data)
                    await ws.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    received.append(msg.data)
                    await ws.send_bytes(msg.data)
            return ws

        async def go():
            app = web.Application()
            app.router.add_get("/{tail:.*}", handler or echo)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            return site._server.sockets[0].getsockname()[1]

        port = upstream_thread.run(go())
        return Upstream(port, f"ws://127.0.0.1:{port}/", received, {})

    yield start

    async def cleanup():
        for runner in runners:
            await runner.cleanup()
    upstream_thread.run(cleanup())


def run(coro, timeout: float = 30.0):
    """Run a client coroutine on a fresh loop in the test's thread, with a time limit."""
    async def limited():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(limited())


# ``master(*args, env=None, port=None) -> (Popen, port)``: a ``python -m fastws`` master process.
from .flow_master import master  # noqa: E402,F401  (a fixture)
