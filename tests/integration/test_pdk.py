"""The plugin layer end to end: Kong's WebSocket PDK (SPEC sections 3, 5 and 6) over real sockets.

Plugins (``pdk_plugins.py``) run in a real proxy (uvloop and asyncio, the
``proxy_loop`` parameter of ``start_proxy``) between real peers: websockets and
aiohttp as clients and upstreams (``peers``: each library on each side), and the
raw peers of ``raw.py`` where a test needs exact frames (fragments, pings, masks,
bytes on the wire).  Each test asserts what each peer receives, in order, and the
close code and reason on both sides.

Errors a handler is meant to provoke are caught inside it and recorded in a list
the test owns (``pdk_plugins.attempt``), then the frame goes on: the test reads
the message after the peers are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from websockets.exceptions import ConnectionClosed

from fastws.config import load_config
from fastws.errors import ConfigError, PDKError
from fastws.pdk import MAX_PAYLOAD_LIMIT, websocket
from fastws.plugins.chain import Chain

from . import raw
from .conftest import free_port, run
from .pdk_plugins import (
    Append, AsyncHold, Boom, Closer, Counter, Dropper, Hooks, KongStyle, Limit, Recorder,
    StatsRecorder, UpstreamOnly, attempt,
)
from .raw import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT
from .relay_helpers import async_wait_until, open_client, wait_no_connections, wait_until

INTERNAL = (1011, "Internal Server Error")
TOO_BIG = (1009, "Payload Too Large")
GOING_AWAY = (1001, "")
SIDES = ["client", "upstream"]


# -- peers --------------------------------------------------------------------------------------------


@dataclass
class UpConn:
    """One connection as the upstream saw it; ``send``/``ping``/``close`` run on the upstream loop."""

    kind: str
    ws: object
    received: list = field(default_factory=list)       # data messages, in order
    close_rcvd: tuple | None = None                     # (code, reason) of the close it got
    done: threading.Event = field(default_factory=threading.Event)
    closing: bool = False

    async def send(self, message) -> None:
        if self.kind == "websockets":
            await self.ws.send(message)
        elif isinstance(message, str):
            await self.ws.send_str(message)
        else:
            await self.ws.send_bytes(message)

    async def ping(self, payload: bytes) -> None:
        await self.ws.ping(payload)

    async def close(self, code: int, reason: str) -> None:
        """Close first; ``close_rcvd`` then holds the answer."""
        if self.kind == "websockets":
            await self.ws.close(code, reason)
        else:
            # aiohttp's close() would swallow the answer's reason: send the frame by hand
            # and let the receive loop record the answer.
            self.closing = True
            await self.ws._writer.close(code, reason.encode())


@dataclass
class Upstream:
    kind: str
    url: str
    loop: asyncio.AbstractEventLoop
    conns: list

    def conn(self, index: int = 0, timeout: float = 5.0) -> UpConn:
        wait_until(lambda: len(self.conns) > index, timeout, f"upstream connection {index}")
        return self.conns[index]

    def finished(self, index: int = 0, timeout: float = 5.0) -> UpConn:
        conn = self.conn(index, timeout)
        wait_until(conn.done.is_set, timeout, f"upstream connection {index} to end")
        return conn

    async def call(self, coro):
        """Run ``coro`` on the upstream's loop (from the test's loop)."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))


async def echo(conn: UpConn, message) -> None:
    await conn.send(message)


async def sink(conn: UpConn, message) -> None:
    """Record only."""


@pytest.fixture
def make_upstream(upstream_thread):
    """``make_upstream(kind, on_message=echo) -> Upstream``: a websockets or aiohttp server
    calling ``on_message(conn, message)`` for each data message, recording everything."""
    from aiohttp import WSMsgType, web
    from websockets.asyncio.server import serve

    cleanups = []

    def make(kind: str, on_message=echo) -> Upstream:
        conns: list[UpConn] = []

        async def websockets_handler(ws):
            conn = UpConn("websockets", ws)
            conns.append(conn)
            try:
                async for message in ws:
                    conn.received.append(message)
                    await on_message(conn, message)
            except ConnectionClosed:
                pass
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.wait_closed(), 5)
                rcvd = ws.protocol.close_rcvd
                conn.close_rcvd = (rcvd.code, rcvd.reason) if rcvd is not None else None
                conn.done.set()

        async def aiohttp_handler(request):
            ws = web.WebSocketResponse(autoclose=False, max_msg_size=0)
            await ws.prepare(request)
            conn = UpConn("aiohttp", ws)
            conns.append(conn)
            try:
                while True:
                    msg = await ws.receive(timeout=10)
                    if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                        conn.received.append(msg.data)
                        await on_message(conn, msg.data)
                    elif msg.type == WSMsgType.CLOSE:
                        # aiohttp reports a close with no status as code 0: say 1005, as websockets.
                        conn.close_rcvd = (msg.data or 1005, msg.extra or "")
                        if not conn.closing:
                            with contextlib.suppress(Exception):
                                await ws.close(code=msg.data or 1000, message=(msg.extra or "").encode())
                        break
                    else:               # CLOSING, CLOSED, ERROR: the connection is gone
                        break
            except (ConnectionError, asyncio.TimeoutError):
                pass
            finally:
                conn.done.set()
            return ws

        async def start():
            if kind == "websockets":
                server = await serve(websockets_handler, "127.0.0.1", 0, max_size=None,
                                     compression=None, ping_interval=None, close_timeout=2)

                async def stop():
                    server.close()
                    await server.wait_closed()
                cleanups.append(stop)
                return server.sockets[0].getsockname()[1]
            app = web.Application()
            app.router.add_get("/{tail:.*}", aiohttp_handler)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            cleanups.append(runner.cleanup)
            return site._server.sockets[0].getsockname()[1]

        port = upstream_thread.run(start())
        return Upstream(kind, f"ws://127.0.0.1:{port}/", upstream_thread.loop, conns)

    yield make

    async def cleanup():
        for stop in cleanups:
            await stop()
    upstream_thread.run(cleanup())


@pytest.fixture(params=[("websockets", "aiohttp"), ("aiohttp", "websockets")],
                ids=["websockets-aiohttp", "aiohttp-websockets"])
def peers(request) -> tuple[str, str]:
    """(client library, upstream library): each library on each side."""
    return request.param


async def collect(client) -> tuple[list, tuple | None]:
    """Every message until the peer closes, and its (code, reason) (answered in kind)."""
    got: list = []
    if client.kind == "websockets":
        try:
            while True:
                got.append(await client.ws.recv())
        except ConnectionClosed as exc:
            return got, (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else None
    from aiohttp import WSMsgType
    while True:
        msg = await client._receive()
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            got.append(msg.data)
        elif msg.type == WSMsgType.CLOSE:
            with contextlib.suppress(Exception):
                await client.ws.close(code=msg.data or 1000, message=(msg.extra or "").encode())
            await client.session.close()
            return got, (msg.data or 1005, msg.extra or "")     # aiohttp: 0 for no status
        else:
            await client.session.close()
            return got, None


def proxy_with(start_proxy, upstream_url, *plugins, **settings):
    """A proxy whose every connection runs ``plugins`` (one Chain, bound per connection)."""
    chain = Chain(list(plugins))
    return start_proxy(upstream_url, chain_for=lambda match: chain, **settings)


def go_and_send(messages, close: tuple | None = None):
    """Upstream behaviour: on "go", send ``messages`` (then close with ``close``); record the rest."""
    async def on_message(conn: UpConn, message) -> None:
        if message != "go":
            return
        for item in messages:
            try:
                await conn.send(item)
            except Exception:       # the proxy closed meanwhile (a test about close())
                return
        if close is not None:
            await conn.close(*close)
    return on_message


async def http_answer(port: int, path: str = "/") -> raw.HttpHead:
    """A raw upgrade request; the proxy's whole HTTP answer (head and body)."""
    peer = await raw.connect(port)
    try:
        await peer.send(raw.upgrade_request(path, extra=[("X-Test", "yes")]))
        return await peer.read_response()
    finally:
        await peer.aclose()


async def raw_pair(proxy, up: raw.RawUpstream) -> tuple[raw.RawPeer, raw.RawPeer]:
    """A raw client through the proxy to the raw upstream ``up`` (served: ``async with up``)."""
    client = await raw.connect(proxy.port)
    handshake = asyncio.ensure_future(client.handshake())
    peer, _ = await up.accept_upgrade()
    await handshake
    return client, peer


def by_side(log: list, side: str) -> list:
    return [entry[1:] for entry in log if entry[0] == side]


# -- get_frame ------------------------------------------------------------------------------------------


def test_get_frame_sees_every_frame_type(start_proxy, make_upstream, peers):
    """SPEC section 5, get_frame(): (data, type, status) for text, binary, ping, pong and close,
    in both directions; status only on close frames."""
    client_kind, upstream_kind = peers

    async def on_message(conn, message):
        if message == "ping me":
            await conn.ping(b"up-ping")
            await conn.send("pinged")
        else:
            await conn.send(message)

    upstream = make_upstream(upstream_kind, on_message)
    log: list = []
    proxy = proxy_with(start_proxy, upstream.url, Recorder({"log": log}))

    async def scenario():
        client = await open_client(client_kind, proxy.url + "/")
        await client.send("héllo ✓")
        assert await client.recv() == "héllo ✓"
        await client.send(b"\x00\xff")
        assert await client.recv() == b"\x00\xff"
        assert await client.ping(b"cl-ping") == b"cl-ping"
        await client.send("ping me")
        assert await client.recv() == "pinged"     # the client answered the ping meanwhile
        return await client.close(4000, "bye")

    assert run(scenario()) == (4000, "bye")
    conn = upstream.finished()
    assert conn.received == ["héllo ✓", b"\x00\xff", "ping me"]
    assert conn.close_rcvd == (4000, "bye")
    assert by_side(log, "client") == [
        ("héllo ✓".encode(), "text", None), (b"\x00\xff", "binary", None), (b"cl-ping", "ping", None),
        (b"ping me", "text", None), (b"up-ping", "pong", None), (b"bye", "close", 4000),
    ]
    assert by_side(log, "upstream") == [
        ("héllo ✓".encode(), "text", None), (b"\x00\xff", "binary", None), (b"cl-ping", "pong", None),
        (b"up-ping", "ping", None), (b"pinged", "text", None), (b"bye", "close", 4000),
    ]
    assert all(type(entry[1]) is bytes for entry in log)
    wait_no_connections(proxy)


# -- set_frame_data / set_status ----------------------------------------------------------------------


def rewrite_frames(side: str):
    """A handler on ``side``: text -> bytes rewrite, binary -> str rewrite, close -> new reason."""
    def handler(ws):
        direction = ws.client if side == "client" else ws.upstream
        data, typ, status = direction.get_frame()
        if typ == "text":
            direction.set_frame_data(b"[" + data + b"]")
        elif typ == "binary":
            direction.set_frame_data(data.hex())         # a str goes out as its UTF-8 bytes
        elif typ == "close":
            direction.set_frame_data("rewritten ✓")
    return handler


async def sender_sends_then_closes(side, client, upstream, messages, close):
    """The ``side`` peer sends ``messages`` then closes with ``close``; the other one records.

    Returns (what the receiver got, the close it got, the answer the sender got).
    """
    if side == "client":
        for message in messages:
            await client.send(message)
        answer = await client.close(*close)
        conn = await asyncio.to_thread(upstream.finished)
        return conn.received, conn.close_rcvd, answer
    await client.send("go")
    got, close_at_client = await collect(client)
    conn = await asyncio.to_thread(upstream.finished)
    return got, close_at_client, conn.close_rcvd


@pytest.mark.parametrize("side", SIDES)
def test_set_frame_data(start_proxy, make_upstream, peers, side):
    """set_frame_data with bytes and with str; later handlers see the new payload; on a close
    frame it becomes the reason and the status is kept (SPEC section 5)."""
    client_kind, upstream_kind = peers
    sent = ["abc", b"\x01\x02", "ünï"]
    upstream = make_upstream(upstream_kind, sink if side == "client" else go_and_send(sent, (4000, "orig")))
    log: list = []
    proxy = proxy_with(start_proxy, upstream.url,
                       Recorder({"log": log, "priority": 100}),
                       Hooks(name="rewrite", priority=900, **{f"ws_{side}_frame": rewrite_frames(side)}))

    async def scenario():
        client = await open_client(client_kind, proxy.url + "/")
        return await sender_sends_then_closes(side, client, upstream, sent, (4000, "orig"))

    got, close_at_receiver, answer_to_sender = run(scenario())
    expected = ["[abc]", b"0102", "[ünï]"]
    assert got == expected
    assert close_at_receiver == (4000, "rewritten ✓")
    assert answer_to_sender == (4000, "rewritten ✓")   # the receiver echoed the close it got
    assert by_side(log, side) == [
        (b"[abc]", "text", None), (b"0102", "binary", None), ("[ünï]".encode(), "text", None),
        ("rewritten ✓".encode(), "close", 4000),
    ]
    wait_no_connections(proxy)


def status_setter(side: str, errors: list):
    def handler(ws):
        direction = ws.client if side == "client" else ws.upstream
        data, typ, status = direction.get_frame()
        if typ == "close":
            attempt(errors, "1005 on close", lambda: direction.set_status(1005))
            attempt(errors, "str on close", lambda: direction.set_status("4000"))
            direction.set_status(4999)
        elif typ == "text":
            attempt(errors, "on text", lambda: direction.set_status(4001))
    return handler


@pytest.mark.parametrize("side", SIDES)
def test_set_status(start_proxy, make_upstream, peers, side):
    """set_status replaces a close frame's code (the reason is kept, later handlers see it);
    on any other frame, or with a code that may not be sent, it raises PDKError."""
    client_kind, upstream_kind = peers
    behaviour = sink if side == "client" else go_and_send(["text"], (4000, "why"))
    upstream = make_upstream(upstream_kind, behaviour)
    log: list = []
    errors: list = []
    proxy = proxy_with(start_proxy, upstream.url,
                       Recorder({"log": log, "priority": 100}),
                       Hooks(name="status", priority=900,
                             **{f"ws_{side}_frame": status_setter(side, errors)}))

    async def scenario():
        client = await open_client(client_kind, proxy.url + "/")
        return await sender_sends_then_closes(side, client, upstream, ["text"], (4000, "why"))

    got, close_at_receiver, answer_to_sender = run(scenario())
    assert got == ["text"]
    assert close_at_receiver == (4999, "why")
    assert answer_to_sender == (4999, "why")
    assert by_side(log, side) == [(b"text", "text", None), (b"why", "close", 4999)]
    assert [label for label, _ in errors] == ["on text", "1005 on close", "str on close"]
    assert errors[0][1] == f"ws.{side}.set_status: only a close frame has a status (this is a text frame)"
    assert errors[1][1] == f"ws.{side}.set_status: 1005 is not a close code that may be sent"
    assert errors[2][1] == f"ws.{side}.set_status: '4000' is not a close code that may be sent"
    wait_no_connections(proxy)


@pytest.mark.parametrize("status_first", [False, True], ids=["reason-only", "status-then-reason"])
def test_close_frame_without_status(start_proxy, status_first):
    """A close frame with no status: get_frame() gives status 1005 and no reason.  A reason
    alone cannot be put on it (PDKError, the close goes on with no status); after
    set_status() it can."""
    up = raw.RawUpstream()
    log: list = []
    errors: list = []

    def handler(ws):
        frame = ws.client.get_frame()
        log.append(frame)
        if frame[1] == "close":
            if status_first:
                ws.client.set_status(4000)
            attempt(errors, "reason", lambda: ws.client.set_frame_data("why"))

    proxy = proxy_with(start_proxy, up.url, Hooks(name="reason", ws_client_frame=handler))

    async def scenario():
        async with up:
            client, peer = await raw_pair(proxy, up)
            await client.send(raw.frame(OP_CLOSE, b""))
            at_upstream = await peer.recv_close()
            await peer.send(raw.frame(OP_CLOSE, at_upstream.payload, mask=False))
            at_client = await client.recv_close()
            await client.aclose()
            return at_upstream.payload, at_client.payload

    at_upstream, at_client = run(scenario())
    assert log == [(b"", "close", 1005)]
    if status_first:
        assert errors == [("reason", None)]
        assert at_upstream == at_client == b"\x0f\xa0why"          # 4000 "why"
    else:
        assert errors == [("reason", "ws.client.set_frame_data: this close frame has no status, so it "
                                     "cannot carry a reason; call set_status() first")]
        assert at_upstream == at_client == b""
    wait_no_connections(proxy)


# -- drop_frame ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
def test_drop_frame(start_proxy, make_upstream, peers, side):
    """Dropped messages are not forwarded and later handlers do not see them; a close frame
    cannot be dropped (PDKError) and goes on."""
    client_kind, upstream_kind = peers
    sent = ["keep 1", "drop me", b"drop binary", "keep 2"]
    upstream = make_upstream(upstream_kind, sink if side == "client" else go_and_send(sent, (4000, "end")))
    log: list = []
    errors: list = []
    proxy = proxy_with(start_proxy, upstream.url, Recorder({"log": log, "priority": 100}),
                       Dropper({"side": side, "errors": errors}))

    async def scenario():
        client = await open_client(client_kind, proxy.url + "/")
        return await sender_sends_then_closes(side, client, upstream, sent, (4000, "end"))

    got, close_at_receiver, answer_to_sender = run(scenario())
    assert got == ["keep 1", "keep 2"]
    assert close_at_receiver == answer_to_sender == (4000, "end")
    assert by_side(log, side) == [(b"keep 1", "text", None), (b"keep 2", "text", None),
                                  (b"end", "close", 4000)]
    assert errors == [("drop close", f"ws.{side}.drop_frame: a close frame cannot be dropped; use close()")]
    wait_no_connections(proxy)


def test_dropped_ping_gets_no_pong(start_proxy, make_upstream):
    """A ping dropped by ws_client_frame never reaches the upstream, so no pong comes back;
    the one kept is answered (by the upstream: the proxy does not answer pings itself)."""
    upstream = make_upstream("websockets")
    proxy = proxy_with(start_proxy, upstream.url, Dropper({"side": "client", "errors": []}))

    async def scenario():
        client = await raw.connect(proxy.port)
        await client.handshake()
        await client.send(raw.frame(OP_PING, b"drop this ping") + raw.frame(OP_PING, b"keep")
                          + raw.frame(OP_TEXT, b"after"))
        frames = [await client.recv_frame() for _ in range(2)]
        await client.send_close(1000)
        close = await client.recv_close()
        await client.aclose()
        return frames, close

    frames, close = run(scenario())
    assert [(f.opcode, f.payload) for f in frames] == [(OP_PONG, b"keep"), (OP_TEXT, b"after")]
    assert close.close_code == 1000
    assert upstream.finished().received == ["after"]
    wait_no_connections(proxy)


def test_dropped_upstream_ping_gets_no_pong(start_proxy):
    """The same towards the client: a dropped upstream ping never reaches the client."""
    proxy_up = raw.RawUpstream()
    proxy = proxy_with(start_proxy, proxy_up.url, Dropper({"side": "upstream", "errors": []}))

    async def scenario():
        from websockets.asyncio.client import connect
        async with proxy_up:
            connecting = asyncio.ensure_future(connect(proxy.url + "/", ping_interval=None, compression=None))
            peer, _ = await proxy_up.accept_upgrade()
            ws = await connecting
            await peer.send(raw.frame(OP_PING, b"drop it", mask=False)
                            + raw.frame(OP_PING, b"keep", mask=False)
                            + raw.frame(OP_TEXT, b"after", mask=False))
            assert await ws.recv() == "after"
            await ws.send("bye")
            frames = [await peer.recv_frame() for _ in range(2)]
            closing = asyncio.ensure_future(ws.close(1000, "done"))
            assert (await peer.recv_close()).close_code == 1000
            await peer.send(raw.close_frame(1000, "done", mask=False))
            await closing
            assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (1000, "done")
            return frames

    frames = run(scenario())
    assert [(f.opcode, f.payload) for f in frames] == [(OP_PONG, b"keep"), (OP_TEXT, b"bye")]
    wait_no_connections(proxy)


# -- close() -------------------------------------------------------------------------------------------


CLOSE_ARGS = {
    "all four": ((4001, "to sender", 4002, "to peer ✓"), {}, (4001, "to sender"), (4002, "to peer ✓")),
    # No status: a close frame with no code (1005 at the peer), as in Kong.
    "defaults": ((), {}, (1005, ""), (1005, "")),
    "peer only": ((), {"peer_status": 4003, "peer_message": b"bytes ok"}, (1005, ""), (4003, "bytes ok")),
}


@pytest.mark.parametrize("args", list(CLOSE_ARGS))
@pytest.mark.parametrize("side", SIDES)
def test_close(start_proxy, make_upstream, peers, side, args):
    """close(status, message, peer_status, peer_message): the side whose frame is in flight
    gets the first pair, its peer the second; the frame is not forwarded, later handlers
    are skipped, and nothing the sender sends afterwards is forwarded."""
    positional, keywords, to_sender, to_peer = CLOSE_ARGS[args]
    client_kind, upstream_kind = peers
    sent = ["first", "close me", "after"]
    upstream = make_upstream(upstream_kind, sink if side == "client" else go_and_send(sent))
    log: list = []
    proxy = proxy_with(start_proxy, upstream.url, Recorder({"log": log, "priority": 100}),
                       Closer({"side": side, "args": positional, "kwargs": keywords}))

    async def scenario():
        client = await open_client(client_kind, proxy.url + "/")
        if side == "client":
            for message in sent:
                with contextlib.suppress(ConnectionClosed, ConnectionError):
                    await client.send(message)      # "after" may meet the proxy's close
        else:
            await client.send("go")
        got, close_at_client = await collect(client)
        conn = await asyncio.to_thread(upstream.finished)
        return got, close_at_client, conn

    got, close_at_client, conn = run(scenario())
    if side == "client":
        assert got == []
        assert close_at_client == to_sender
        assert conn.received == ["first"]
        assert conn.close_rcvd == to_peer
    else:
        assert got == ["first"]
        assert close_at_client == to_peer
        assert conn.received == ["go"]
        assert conn.close_rcvd == to_sender
    seen = [data for data, typ, _ in by_side(log, side) if typ != "close"]
    assert seen[0] == b"first"
    assert b"close me" not in seen                  # the later handler was skipped
    wait_no_connections(proxy)


# -- set_max_payload_size ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["passthrough", "inspect"])
@pytest.mark.parametrize("side", SIDES)
def test_set_max_payload_size(start_proxy, make_upstream, peers, side, mode):
    """A limit of 1024 set in ws_handshake: 1024 bytes pass, 1025 close the sender with 1009
    "Payload Too Large" and the peer with 1001 (SPEC sections 4 and 6)."""
    client_kind, upstream_kind = peers
    sent = [b"x" * 1024, b"y" * 1025, b"never"]
    upstream = make_upstream(upstream_kind, sink if side == "client" else go_and_send(sent))
    plugins = [Limit({side: 1024})]
    if mode == "inspect":
        plugins.append(Hooks(name="identity", **{f"ws_{side}_frame": lambda ws: None}))
    proxy = proxy_with(start_proxy, upstream.url, *plugins)

    async def scenario():
        client = await open_client(client_kind, proxy.url + "/")
        if side == "client":
            for message in sent[:2]:
                await client.send(message)
        else:
            await client.send("go")
        got, close_at_client = await collect(client)
        conn = await asyncio.to_thread(upstream.finished)
        return got, close_at_client, conn

    got, close_at_client, conn = run(scenario())
    if side == "client":
        assert (got, close_at_client) == ([], TOO_BIG)
        assert (conn.received, conn.close_rcvd) == ([b"x" * 1024], GOING_AWAY)
    else:
        assert (got, close_at_client) == ([b"x" * 1024], GOING_AWAY)
        assert (conn.received, conn.close_rcvd) == (["go"], TOO_BIG)
    wait_no_connections(proxy)


@pytest.mark.parametrize("side", SIDES)
def test_set_max_payload_size_zero_restores_the_default(start_proxy, make_upstream, side):
    """A later handler's set_max_payload_size(0) undoes an earlier 100: the configured
    default (here 2048) applies again, not "no limit"."""
    sent = [b"a" * 2048, b"b" * 2049]
    upstream = make_upstream("websockets", sink if side == "client" else go_and_send(sent))
    proxy = proxy_with(start_proxy, upstream.url,
                       Limit({side: 100, "priority": 10, "name": "limit-100"}),
                       Limit({side: 0, "priority": 5, "name": "limit-0"}),
                       **{f"{side}_max_payload": 2048})

    async def scenario():
        client = await open_client("websockets", proxy.url + "/")
        if side == "client":
            for message in sent:
                await client.send(message)
        else:
            await client.send("go")
        got, close_at_client = await collect(client)
        conn = await asyncio.to_thread(upstream.finished)
        return got, close_at_client, conn

    got, close_at_client, conn = run(scenario())
    if side == "client":
        assert (got, close_at_client) == ([], TOO_BIG)
        assert (conn.received, conn.close_rcvd) == ([b"a" * 2048], GOING_AWAY)
    else:
        assert (got, close_at_client) == ([b"a" * 2048], GOING_AWAY)
        assert (conn.received, conn.close_rcvd) == (["go"], TOO_BIG)
    wait_no_connections(proxy)


@pytest.mark.parametrize("size", ["1024", 1024.0, True, None, -1, MAX_PAYLOAD_LIMIT + 1])
def test_set_max_payload_size_invalid_answers_500(start_proxy, size):
    """Not an int, < 0 or > 32 MiB: PDKError in the handler, so the handshake answer is 500
    and the upstream is never contacted."""
    up = raw.RawUpstream()
    errors: list = []
    proxy = proxy_with(start_proxy, up.url, Limit({"client": size, "errors": errors}))

    async def scenario():
        async with up:
            answer = await http_answer(proxy.port)
            await asyncio.sleep(0.05)
            return answer, up.queue.qsize()

    answer, upstream_connections = run(scenario())
    assert answer.status == 500
    assert answer.body == b"Internal Server Error\n"
    assert upstream_connections == 0
    assert errors == [f"ws.client.set_max_payload_size: size must be an int from 0 to {MAX_PAYLOAD_LIMIT}, "
                      f"got {size!r}"]
    assert proxy.thread.call(lambda: proxy.server.handler_errors) == 1
    wait_no_connections(proxy)


def test_set_max_payload_size_32_mib_is_allowed(start_proxy, make_upstream):
    upstream = make_upstream("websockets")
    proxy = proxy_with(start_proxy, upstream.url,
                       Limit({"client": MAX_PAYLOAD_LIMIT, "upstream": MAX_PAYLOAD_LIMIT}))

    async def scenario():
        client = await open_client("websockets", proxy.url + "/")
        big = b"z" * (2 << 20)                  # over the 1 MiB default client limit
        await client.send(big)
        reply = await client.recv()
        await client.aclose()
        return reply == big

    assert run(scenario())
    wait_no_connections(proxy)


# -- send() ---------------------------------------------------------------------------------------------


def sender(side: str):
    """On b"hello" from ``side``: two messages to the peer (before the in-flight one) and two
    back to ``side`` (text and binary each)."""
    def handler(ws):
        this, peer = (ws.client, ws.upstream) if side == "client" else (ws.upstream, ws.client)
        if this.get_frame()[0] == b"hello":
            peer.send("to peer first")
            peer.send(b"\x00peer", "binary")
            this.send("back to sender")
            this.send(b"\x01back", type="binary")
    return handler


@pytest.mark.parametrize("side", SIDES)
def test_send(start_proxy, make_upstream, peers, side):
    """send(data, type): a proxy-originated message to that side, text or binary; messages to
    the peer go out before the in-flight message, which follows unchanged."""
    client_kind, upstream_kind = peers
    upstream = make_upstream(upstream_kind, echo if side == "client" else go_and_send(["hello"]))
    proxy = proxy_with(start_proxy, upstream.url, Hooks(name="sender", **{f"ws_{side}_frame": sender(side)}))

    async def scenario():
        client = await open_client(client_kind, proxy.url + "/")
        await client.send("hello" if side == "client" else "go")
        count = 5 if side == "client" else 3
        got = [await client.recv() for _ in range(count)]
        if side == "upstream":
            conn = await asyncio.to_thread(upstream.conn)
            await async_wait_until(lambda: len(conn.received) == 3, what="the upstream's three messages")
        answer = await client.close(1000, "done")
        return got, answer

    got, answer = run(scenario())
    conn = upstream.finished()
    if side == "client":
        # Straight back to the client, then the upstream's echoes of what it got, in order.
        assert got == ["back to sender", b"\x01back", "to peer first", b"\x00peer", "hello"]
        assert conn.received == ["to peer first", b"\x00peer", "hello"]
    else:
        assert got == ["to peer first", b"\x00peer", "hello"]
        assert conn.received == ["go", "back to sender", b"\x01back"]
    assert answer == (1000, "done")
    wait_no_connections(proxy)


def test_send_inside_a_passthrough_message(start_proxy):
    """The upstream -> client direction is passthrough and in the middle of a fragmented
    message: a data message cannot be put there (PDKError), a ping can."""
    up = raw.RawUpstream()
    errors: list = []

    def handler(ws):
        if ws.client.get_frame()[0] == b"x":
            attempt(errors, "text", lambda: ws.client.send("inject"))
            attempt(errors, "binary", lambda: ws.client.send(b"inject", "binary"))
            attempt(errors, "ping", lambda: ws.client.send(b"between", "ping"))

    proxy = proxy_with(start_proxy, up.url, Hooks(name="inject", ws_client_frame=handler))

    async def scenario():
        async with up:
            client, peer = await raw_pair(proxy, up)
            await peer.send(raw.frame(OP_TEXT, b"part 1 ", fin=False, mask=False))
            first = await client.recv_frame()
            await client.send_frame(OP_TEXT, b"x")
            assert (await peer.recv_frame()).payload == b"x"
            await peer.send(raw.frame(OP_CONT, b"part 2", mask=False))
            rest = [await client.recv_frame() for _ in range(2)]
            await client.send_close(1000)
            assert (await peer.recv_close()).close_code == 1000
            await peer.send(raw.close_frame(1000, mask=False))
            assert (await client.recv_close()).close_code == 1000
            await client.aclose()
            return [first] + rest

    frames = run(scenario())
    assert [(f.opcode, f.fin, f.payload) for f in frames] == [
        (OP_TEXT, False, b"part 1 "), (OP_PING, True, b"between"), (OP_CONT, True, b"part 2")]
    message = ("send: a message is being relayed to the client in passthrough; "
               "nothing can be put inside it")
    assert errors == [("text", message), ("binary", message), ("ping", None)]
    wait_no_connections(proxy)


# -- PDKError conditions ----------------------------------------------------------------------------


def phase_error(function: str, allowed: str, current: str) -> str:
    return f"ws.{function}() may be called in phase {allowed}, not {current}"


def test_pdk_errors(start_proxy, make_upstream):
    """Every PDKError condition of SPEC section 5: wrong phase (the message names the allowed
    phases), wrong direction, bad arguments.  Each is caught in the handler and recorded;
    the frame then goes on unchanged (checked at the peers)."""
    upstream = make_upstream("websockets")
    errors: list = []
    stash: list = []

    def handshake(ws):
        stash.append(ws)
        attempt(errors, "hs client.get_frame", ws.client.get_frame)
        attempt(errors, "hs upstream.set_frame_data", lambda: ws.upstream.set_frame_data(b"x"))
        attempt(errors, "hs client.send", lambda: ws.client.send("x"))
        attempt(errors, "hs upstream.close", ws.upstream.close)

    def client_frame(ws):
        data, typ, _ = ws.client.get_frame()
        c = ws.client
        if data == b"phase":
            attempt(errors, "cf upstream.get_frame", ws.upstream.get_frame)
            attempt(errors, "cf upstream.set_frame_data", lambda: ws.upstream.set_frame_data(b"x"))
            attempt(errors, "cf upstream.set_status", lambda: ws.upstream.set_status(1000))
            attempt(errors, "cf upstream.drop_frame", ws.upstream.drop_frame)
            attempt(errors, "cf upstream.close", ws.upstream.close)
            attempt(errors, "cf client.set_max_payload_size", lambda: c.set_max_payload_size(10))
            attempt(errors, "cf reject", lambda: ws.reject(403))
        elif data == b"args":
            attempt(errors, "set_status on text", lambda: c.set_status(4000))
            attempt(errors, "text not UTF-8", lambda: c.set_frame_data(b"\xff\xfe"))
            attempt(errors, "over the client limit", lambda: c.set_frame_data(b"x" * 4097))
            attempt(errors, "not bytes", lambda: c.set_frame_data(12))
            attempt(errors, "send unknown type", lambda: c.send("x", "nope"))
            attempt(errors, "send text not UTF-8", lambda: c.send(b"\xff", "text"))
            attempt(errors, "send ping over 125", lambda: c.send(b"x" * 126, "ping"))
            attempt(errors, "close 1005", lambda: c.close(1005))
            attempt(errors, "close message over 123", lambda: c.close(4000, "x" * 124))
            attempt(errors, "close message without status", lambda: c.close(None, "why"))
            attempt(errors, "close bad peer status", lambda: c.close(4000, "", 999))
        elif typ == "binary":
            attempt(errors, "binary at the client limit", lambda: c.set_frame_data(b"\xff" * 4096))
        elif typ == "ping":
            attempt(errors, "ping over 125", lambda: c.set_frame_data(b"p" * 126))
        elif typ == "close":
            attempt(errors, "close reason over 123", lambda: c.set_frame_data("r" * 124))
            attempt(errors, "close reason not UTF-8", lambda: c.set_frame_data(b"\xff"))
            attempt(errors, "close reason of 123", lambda: c.set_frame_data("r" * 123))

    def upstream_frame(ws):
        data, typ, _ = ws.upstream.get_frame()
        u = ws.upstream
        if data == b"phase":
            attempt(errors, "uf client.get_frame", ws.client.get_frame)
            attempt(errors, "uf client.set_frame_data", lambda: ws.client.set_frame_data(b"x"))
            attempt(errors, "uf client.set_status", lambda: ws.client.set_status(1000))
            attempt(errors, "uf client.drop_frame", ws.client.drop_frame)
            attempt(errors, "uf client.close", ws.client.close)
            attempt(errors, "uf upstream.set_max_payload_size", lambda: u.set_max_payload_size(0))
        elif data == b"args":
            attempt(errors, "over the upstream limit", lambda: u.set_frame_data(b"u" * 8193))
            attempt(errors, "at the upstream limit", lambda: u.set_frame_data(b"u" * 8192))
        elif typ == "pong":
            attempt(errors, "pong over 125", lambda: u.set_frame_data(b"p" * 126))

    def close(ws):
        attempt(errors, "close client.get_frame", ws.client.get_frame)
        attempt(errors, "close upstream.send", lambda: ws.upstream.send("x"))
        attempt(errors, "close client.set_max_payload_size", lambda: ws.client.set_max_payload_size(1))
        attempt(errors, "close reject", lambda: ws.reject(403))

    probe = Hooks(name="probe", ws_handshake=handshake, ws_client_frame=client_frame,
                  ws_upstream_frame=upstream_frame, ws_close=close)
    proxy = proxy_with(start_proxy, upstream.url, probe, client_max_payload=4096, upstream_max_payload=8192)

    async def scenario():
        client = await open_client("websockets", proxy.url + "/")
        await client.send("phase")
        assert await client.recv() == "phase"
        await client.send("args")
        assert await client.recv() == "u" * 8192      # the upstream's echo, rewritten at its limit
        await client.send(b"\x00")
        assert await client.recv() == b"\xff" * 4096
        assert await client.ping(b"cl-ping") == b"cl-ping"
        return await client.close(4000, "bye")

    assert run(scenario()) == (4000, "r" * 123)
    conn = upstream.finished()
    assert conn.received == ["phase", "args", b"\xff" * 4096]
    assert conn.close_rcvd == (4000, "r" * 123)
    wait_until(lambda: any(label.startswith("close ") for label, _ in errors), what="ws_close")
    got = dict(errors)
    assert len(got) == len(errors), "a label was recorded twice"

    # Wrong phase or wrong direction: the message names the phases allowed.
    assert got["hs client.get_frame"] == phase_error("client.get_frame", "ws_client_frame", "ws_handshake")
    assert got["hs upstream.set_frame_data"] == phase_error("upstream.set_frame_data", "ws_upstream_frame",
                                                            "ws_handshake")
    assert got["hs client.send"] == phase_error("client.send", "ws_client_frame or ws_upstream_frame",
                                                "ws_handshake")
    assert got["hs upstream.close"] == phase_error("upstream.close", "ws_upstream_frame", "ws_handshake")
    for function in ("get_frame", "set_frame_data", "set_status", "drop_frame", "close"):
        assert got[f"cf upstream.{function}"] == phase_error(f"upstream.{function}", "ws_upstream_frame",
                                                             "ws_client_frame")
        assert got[f"uf client.{function}"] == phase_error(f"client.{function}", "ws_client_frame",
                                                           "ws_upstream_frame")
    assert got["cf client.set_max_payload_size"] == phase_error("client.set_max_payload_size", "ws_handshake",
                                                                "ws_client_frame")
    assert got["uf upstream.set_max_payload_size"] == phase_error("upstream.set_max_payload_size",
                                                                  "ws_handshake", "ws_upstream_frame")
    assert got["cf reject"] == "ws.reject() may be called in phase ws_handshake, not ws_client_frame"
    assert got["close client.get_frame"] == phase_error("client.get_frame", "ws_client_frame", "ws_close")
    assert got["close upstream.send"] == phase_error("upstream.send", "ws_client_frame or ws_upstream_frame",
                                                     "ws_close")
    assert got["close client.set_max_payload_size"] == phase_error("client.set_max_payload_size",
                                                                   "ws_handshake", "ws_close")
    assert got["close reject"] == "ws.reject() may be called in phase ws_handshake, not ws_close"

    # Arguments: raised at the call, the frame unchanged.
    expected_fragments = {
        "set_status on text": "only a close frame has a status",
        "text not UTF-8": "a text message must be UTF-8",
        "over the client limit": "4097 bytes is over this direction's limit of 4096 bytes",
        "over the upstream limit": "8193 bytes is over this direction's limit of 8192 bytes",
        "not bytes": "data must be bytes or str, got int",
        "send unknown type": "type must be one of",
        "send text not UTF-8": "a text message must be UTF-8",
        "send ping over 125": "a ping carries at most 125 bytes",
        "close 1005": "1005 is not a close code that may be sent",
        "close message over 123": "at most 123 bytes",
        "close message without status": "a close message needs a status",
        "close bad peer status": "999 is not a close code that may be sent",
        "ping over 125": "a ping carries at most 125 bytes, got 126",
        "pong over 125": "a pong carries at most 125 bytes, got 126",
        "close reason over 123": "a close reason carries at most 123 bytes, got 124",
        "close reason not UTF-8": "a close reason must be UTF-8",
    }
    for label, fragment in expected_fragments.items():
        assert got[label] is not None and fragment in got[label], (label, got[label])
    for label in ("binary at the client limit", "at the upstream limit", "close reason of 123"):
        assert got[label] is None, (label, got[label])

    # After the handler returned, the same ws object refuses everything.
    with pytest.raises(PDKError, match="may be called in phase ws_client_frame, not outside a handler"):
        stash[0].client.get_frame()
    wait_no_connections(proxy)


def test_str_that_cannot_be_utf8_raises_pdkerror(start_proxy, make_upstream):
    """A str with a lone surrogate cannot be sent as UTF-8: a PDKError at the call, like any
    other text that is not UTF-8 (not a UnicodeEncodeError that a plugin catching PDKError
    would not expect); the frame goes on unchanged."""
    upstream = make_upstream("websockets")
    raised: list = []

    def handler(ws):
        if ws.client.get_frame()[1] != "text":
            return
        for label, call in (("set_frame_data", lambda: ws.client.set_frame_data("bad \ud800")),
                            ("send", lambda: ws.client.send("bad \ud800")),
                            ("close", lambda: ws.client.close(4000, "bad \ud800"))):
            try:
                call()
            except Exception as exc:
                raised.append((label, type(exc).__name__))

    proxy = proxy_with(start_proxy, upstream.url, Hooks(name="surrogates", ws_client_frame=handler))

    async def scenario():
        client = await open_client("websockets", proxy.url + "/")
        await client.send("text")
        reply = await client.recv()
        await client.close(1000, "")
        return reply

    assert run(scenario()) == "text"
    assert raised == [("set_frame_data", "PDKError"), ("send", "PDKError"), ("close", "PDKError")]
    wait_no_connections(proxy)


def test_websocket_outside_a_handler_raises():
    """``from fastws.pdk import websocket`` is bound only while a handler runs."""
    with pytest.raises(PDKError, match="only bound inside a plugin handler"):
        websocket.client.get_frame()
    with pytest.raises(PDKError, match="only bound inside a plugin handler"):
        websocket.upstream


def test_kong_style_websocket_import(start_proxy, make_upstream, peers):
    """Kong-style plugin code: ``websocket.client`` / ``websocket.upstream`` bound to the
    connection in flight, in a sync handler and in an async one after an await."""
    client_kind, upstream_kind = peers
    upstream = make_upstream(upstream_kind)
    proxy = proxy_with(start_proxy, upstream.url, KongStyle(None))

    async def scenario():
        clients = [await open_client(client_kind, proxy.url + "/") for _ in range(2)]
        await clients[0].send("rev:abc")
        await clients[1].send("rev:xyz")
        replies = [await client.recv() for client in clients]
        for client in clients:
            await client.close(1000, "")
        return replies

    assert run(scenario()) == ["kong:cba", "kong:zyx"]
    assert sorted(upstream.finished(0).received + upstream.finished(1).received) == ["cba", "zyx"]
    wait_no_connections(proxy)


# -- a handler that raises ----------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["ws_client_frame", "ws_upstream_frame"])
def test_handler_raises(start_proxy, make_upstream, peers, phase):
    """SPEC sections 5 and 6: both sides of that connection get 1011 "Internal Server Error";
    a connection open meanwhile carries on, and new connections are served."""
    client_kind, upstream_kind = peers
    upstream = make_upstream(upstream_kind)
    proxy = proxy_with(start_proxy, upstream.url, Boom({"phase": phase}))

    async def scenario():
        healthy = await open_client(client_kind, proxy.url + "/healthy")
        await healthy.send("ok")
        assert await healthy.recv() == "ok"
        victim = await open_client(client_kind, proxy.url + "/victim")
        await victim.send("boom")
        result = await collect(victim)
        await healthy.send("still ok")
        assert await healthy.recv() == "still ok"
        fresh = await open_client(client_kind, proxy.url + "/fresh")
        await fresh.send("new")
        assert await fresh.recv() == "new"
        assert await fresh.close(1000, "bye") == (1000, "bye")
        assert await healthy.close(1000, "bye") == (1000, "bye")
        return result

    assert run(scenario()) == ([], INTERNAL)
    victim = upstream.finished(1)
    assert victim.received == (["boom"] if phase == "ws_upstream_frame" else [])
    assert victim.close_rcvd == INTERNAL
    assert upstream.finished(0).received == ["ok", "still ok"]
    assert upstream.finished(2).received == ["new"]
    assert proxy.thread.call(lambda: proxy.server.handler_errors) == 1
    wait_no_connections(proxy)


def test_handler_raises_in_handshake_and_close(start_proxy, make_upstream):
    """ws_handshake raising: HTTP 500, no upstream connection.  ws_close raising: logged only,
    the connection had closed normally and the worker serves the next one."""
    upstream = make_upstream("websockets")
    proxy = proxy_with(start_proxy, upstream.url, Boom({"phase": "ws_close"}))
    failing = proxy_with(start_proxy, upstream.url, Boom({"phase": "ws_handshake"}))

    async def scenario():
        answer = await http_answer(failing.port)
        closes = []
        for text in ("one", "two"):
            client = await open_client("websockets", proxy.url + "/")
            await client.send(text)
            assert await client.recv() == text
            closes.append(await client.close(1000, text))
        return answer, closes

    answer, closes = run(scenario())
    assert (answer.status, answer.body) == (500, b"Internal Server Error\n")
    assert closes == [(1000, "one"), (1000, "two")]
    assert len(upstream.conns) == 2
    assert [upstream.finished(i).close_rcvd for i in range(2)] == [(1000, "one"), (1000, "two")]
    assert failing.thread.call(lambda: failing.server.handler_errors) == 1
    wait_no_connections(proxy)
    wait_no_connections(failing)


# -- order, ctx, shared ------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
def test_priority_order(start_proxy, make_upstream, side):
    """Higher priority runs first (equal priorities keep the configured order), and each
    handler sees what the ones before it set."""
    upstream = make_upstream("websockets")
    seen: list = []
    plugins = [Append({"mark": mark, "priority": priority, "side": side, "seen": seen})
               for mark, priority in (("c", 100), ("a", 900), ("b", 500), ("d", 100))]
    proxy = proxy_with(start_proxy, upstream.url, *plugins)

    async def scenario():
        client = await open_client("websockets", proxy.url + "/")
        await client.send("msg")
        reply = await client.recv()
        await client.close(1000, "")
        return reply

    assert run(scenario()) == "msg|a|b|c|d"
    assert upstream.finished().received == (["msg|a|b|c|d"] if side == "client" else ["msg"])
    assert seen == [("a", b"msg"), ("b", b"msg|a"), ("c", b"msg|a|b"), ("d", b"msg|a|b|c")]
    wait_no_connections(proxy)


def test_ctx_per_plugin_and_connection_shared_per_connection(start_proxy, make_upstream):
    """ws.ctx: one dict per plugin and connection, kept from ws_handshake on; ws.shared: one
    dict per connection, seen by every plugin of it."""
    upstream = make_upstream("websockets")
    log: list = []
    closes: list = []
    proxy = proxy_with(start_proxy, upstream.url,
                       Counter({"name": "two", "priority": 10, "log": log, "closes": closes}),
                       Counter({"name": "one", "priority": 20, "log": log, "closes": closes}))

    async def scenario():
        c1 = await open_client("websockets", proxy.url + "/c1")
        c2 = await open_client("websockets", proxy.url + "/c2")
        replies = []
        for client, text in ((c1, "a"), (c2, "b"), (c1, "c")):
            await client.send(text)
            replies.append(await client.recv())
        for client in (c1, c2):
            await client.close(1000, "")
        return replies

    assert run(scenario()) == [
        "a|one:1:/c1:-|two:1:/c1:one",
        "b|one:1:/c2:-|two:1:/c2:one",
        "c|one:2:/c1:two|two:2:/c1:one",
    ]
    assert [entry[2] for entry in log] == [["n", "path"]] * 6
    ctx_ids = [(name, ctx_id) for name, ctx_id, _ in log]
    # (one, c1), (two, c1), (one, c2), (two, c2), (one, c1), (two, c1)
    assert ctx_ids[0] == ctx_ids[4] and ctx_ids[1] == ctx_ids[5]
    assert len({ctx_id for _, ctx_id in ctx_ids[:4]}) == 4
    wait_no_connections(proxy)
    wait_until(lambda: len(closes) == 4, what="ws_close of both connections")
    # ws_close sees the same per-plugin, per-connection ctx.
    assert sorted(closes, key=lambda c: (c[1]["path"], c[0])) == [
        ("one", {"path": "/c1", "n": 2}), ("two", {"path": "/c1", "n": 2}),
        ("one", {"path": "/c2", "n": 1}), ("two", {"path": "/c2", "n": 1}),
    ]


# -- fragments, pings and the running total ----------------------------------------------------------------


async def close_raw(client: raw.RawPeer, peer: raw.RawPeer) -> None:
    """The client closes, the upstream answers; both connections end."""
    await client.send_close(1000, "bye")
    assert (await peer.recv_close()).close_code == 1000
    await peer.send(raw.close_frame(1000, "bye", mask=False))
    assert (await client.recv_close()).close_code == 1000
    await client.aclose()


@pytest.mark.parametrize("side", SIDES)
def test_fragmented_message_with_pings(start_proxy, side):
    """SPEC section 4: pings between fragments reach the handler one by one as they arrive
    (and go on at once); the message reaches it whole, then goes out as one frame."""
    up = raw.RawUpstream()
    log: list = []
    proxy = proxy_with(start_proxy, up.url, Recorder({"log": log}))
    from_client = side == "client"

    async def scenario():
        async with up:
            client, peer = await raw_pair(proxy, up)
            sender, receiver = (client, peer) if from_client else (peer, client)
            def frame(opcode, payload, fin=True):
                return raw.frame(opcode, payload, fin=fin, mask=from_client)

            steps = [
                frame(OP_TEXT, b"frag1-", fin=False) + frame(OP_PING, b"p1"),
                frame(OP_CONT, b"frag2-", fin=False) + frame(OP_PING, b"p2"),
                frame(OP_CONT, "énd".encode()),
            ]
            seen = []
            for step in steps:
                await sender.send(step)
                got = await receiver.recv_frame()
                seen.append(((got.opcode, got.fin, got.payload), by_side(log, side)))
            await close_raw(client, peer)
            return seen

    seen = run(scenario())
    assert seen == [
        ((OP_PING, True, b"p1"), [(b"p1", "ping", None)]),
        ((OP_PING, True, b"p2"), [(b"p1", "ping", None), (b"p2", "ping", None)]),
        ((OP_TEXT, True, "frag1-frag2-énd".encode()),
         [(b"p1", "ping", None), (b"p2", "ping", None), ("frag1-frag2-énd".encode(), "text", None)]),
    ]
    wait_no_connections(proxy)


@pytest.mark.parametrize("mode", ["passthrough", "inspect"])
@pytest.mark.parametrize("side", SIDES)
def test_running_total_over_the_limit(start_proxy, side, mode):
    """A limit of 1024 and three fragments of 500 bytes: the third closes the sender with 1009
    "Payload Too Large" and the peer with 1001 (no reason).  In passthrough the peer got the
    first two fragments; in inspect mode nothing of the message."""
    up = raw.RawUpstream()
    plugins = [Limit({side: 1024})]
    if mode == "inspect":
        plugins.append(Recorder({"log": []}))
    proxy = proxy_with(start_proxy, up.url, *plugins)
    from_client = side == "client"

    async def scenario():
        async with up:
            client, peer = await raw_pair(proxy, up)
            sender, receiver = (client, peer) if from_client else (peer, client)
            await sender.send(raw.frame(OP_TEXT, b"a" * 500, fin=False, mask=from_client)
                              + raw.frame(OP_CONT, b"b" * 500, fin=False, mask=from_client)
                              + raw.frame(OP_CONT, b"c" * 500, mask=from_client))
            to_sender = await sender.recv_close()
            await receiver.recv_close()       # asserted below through receiver.frames
            await receiver.send(raw.close_frame(1001, mask=not from_client))
            await sender.read_until_eof()
            await receiver.read_until_eof()
            return (to_sender.close_code, to_sender.close_reason), [
                (f.opcode, f.fin, f.payload) for f in receiver.frames]

    to_sender, at_receiver = run(scenario())
    assert to_sender == (1009, b"Payload Too Large")
    before = [(OP_TEXT, False, b"a" * 500), (OP_CONT, False, b"b" * 500)] if mode == "passthrough" else []
    assert at_receiver == before + [(OP_CLOSE, True, b"\x03\xe9")]      # 1001, no reason
    wait_no_connections(proxy)


# -- async handlers -----------------------------------------------------------------------------------------


def hold_scenario(start_proxy, make_upstream, peers, *extra_plugins):
    """A client sends "hold" (an async handler sleeps 0.3 s on it) and three more messages at
    once; during the sleep the upstream pushes two messages to the client.

    Returns (pushes the client got, whether the sleep was still on when they came, how many
    messages the upstream had by then, the upstream's connection, what AsyncHold found after
    its await, seconds from the first send to the fourth message upstream).
    """
    client_kind, upstream_kind = peers
    holding, released = threading.Event(), threading.Event()
    arrivals: list = []

    async def on_message(conn, message):
        arrivals.append((message, released.is_set()))

    upstream = make_upstream(upstream_kind, on_message)
    after: list = []
    hold = AsyncHold({"sleep": 0.3, "holding": holding, "released": released, "after": after})
    proxy = proxy_with(start_proxy, upstream.url, hold, *extra_plugins)

    async def scenario():
        client = await open_client(client_kind, proxy.url + "/")
        conn = await asyncio.to_thread(upstream.conn)
        started = time.monotonic()
        for text in ("hold", "m1", "m2", "m3"):
            await client.send(text)
        await async_wait_until(holding.is_set, what="the async handler to start")
        for i in (1, 2):
            await upstream.call(conn.send(f"push-{i}"))
        pushes = [await client.recv(), await client.recv()]
        during_hold = not released.is_set()
        upstream_had = len(conn.received)
        await async_wait_until(lambda: len(conn.received) == 4, what="four messages upstream")
        elapsed = time.monotonic() - started
        assert await client.close(1000, "done") == (1000, "done")
        return pushes, during_hold, upstream_had, conn, elapsed

    pushes, during_hold, upstream_had, conn, elapsed = run(scenario())
    assert all(flag for _, flag in arrivals), f"a message passed the held direction early: {arrivals}"
    wait_no_connections(proxy)
    return pushes, during_hold, upstream_had, conn, after, elapsed


# What AsyncHold finds after its await: its frame, its ctx, and set_frame_data still working.
HOLD_AFTER = [("get_frame", (b"hold", "text", None)), ("ctx", {"mine": True}), ("set_frame_data", None)]


def test_async_handler_holds_only_its_direction(start_proxy, make_upstream, peers):
    """SPEC section 5: the direction waits for an async handler and keeps its order; the other
    direction flows meanwhile (the upstream's pushes reach the client during the sleep)."""
    pushes, during_hold, upstream_had, conn, after, elapsed = hold_scenario(start_proxy, make_upstream, peers)
    assert pushes == ["push-1", "push-2"]
    assert during_hold, "the pushes waited for the client direction's handler"
    assert upstream_had == 0
    assert conn.received == ["held", "m1", "m2", "m3"]
    assert elapsed >= 0.3
    assert after == HOLD_AFTER


def test_async_handler_state_survives_the_other_direction(start_proxy, make_upstream, peers):
    """The same with handlers on the other direction too: while the async client handler
    sleeps, upstream messages run ws_upstream_frame on the same connection.  After its
    await the async handler must still be in its phase, with its frame and its ws.ctx, and
    the handler after it must get the client's frame, not the last upstream one."""
    def upper(ws):
        data, typ, _ = ws.client.get_frame()
        if typ == "text":
            ws.client.set_frame_data(data.upper())

    def bang(ws):
        data, typ, _ = ws.upstream.get_frame()
        if typ == "text":
            ws.upstream.set_frame_data(data + b"!")

    tail = Hooks(name="tail", priority=0, ws_client_frame=upper, ws_upstream_frame=bang)
    pushes, during_hold, upstream_had, conn, after, elapsed = hold_scenario(
        start_proxy, make_upstream, peers, tail)
    assert pushes == ["push-1!", "push-2!"]
    assert during_hold and upstream_had == 0
    assert after == HOLD_AFTER
    assert conn.received == ["HELD", "M1", "M2", "M3"]


def test_async_handler_send_goes_out_while_it_awaits(start_proxy, make_upstream):
    """A message an async handler sends before its await (say, "please wait" before a slow
    lookup) reaches that side during the await, not once the handler has returned."""
    upstream = make_upstream("websockets")
    holding, released = threading.Event(), threading.Event()

    async def slow(ws):
        if ws.client.get_frame()[0] == b"hold":
            ws.client.send("please wait")
            ws.upstream.send("heads-up")
            holding.set()
            await asyncio.sleep(0.3)
            released.set()

    proxy = proxy_with(start_proxy, upstream.url, Hooks(name="slow", ws_client_frame=slow))

    async def scenario():
        client = await open_client("websockets", proxy.url + "/")
        await client.send("hold")
        first = await client.recv()
        early = not released.is_set()
        rest = [await client.recv(), await client.recv()]     # the upstream's echoes
        await client.close(1000, "")
        return first, early, rest

    first, early, rest = run(scenario())
    assert first == "please wait"
    assert early, "the message waited for the handler to return"
    assert rest == ["heads-up", "hold"]
    assert upstream.finished().received == ["heads-up", "hold"]
    wait_no_connections(proxy)


@pytest.mark.parametrize("side", SIDES)
def test_async_handler_raises_after_its_await(start_proxy, make_upstream, side):
    """An async handler that raises after an await: 1011 "Internal Server Error" to both."""
    async def boom(ws):
        direction = ws.client if side == "client" else ws.upstream
        if direction.get_frame()[0] == b"boom":
            await asyncio.sleep(0.01)
            raise RuntimeError("late boom")

    upstream = make_upstream("websockets")
    proxy = proxy_with(start_proxy, upstream.url, Hooks(name="late", **{f"ws_{side}_frame": boom}))

    async def scenario():
        client = await open_client("websockets", proxy.url + "/")
        await client.send("ok")
        assert await client.recv() == "ok"
        await client.send("boom")
        return await collect(client)

    assert run(scenario()) == ([], INTERNAL)
    conn = upstream.finished()
    assert conn.received == (["ok", "boom"] if side == "upstream" else ["ok"])
    assert conn.close_rcvd == INTERNAL
    assert proxy.thread.call(lambda: proxy.server.handler_errors) == 1
    wait_no_connections(proxy)


# -- ws_handshake -------------------------------------------------------------------------------------------


def test_handshake_sees_the_request(start_proxy, make_upstream):
    """ws.request: method, path, query, headers and the client's address (also ws.client_address)."""
    upstream = make_upstream("websockets")
    seen: list = []

    def handshake(ws):
        r = ws.request
        seen.append((r.method, r.path, r.query, r.get("X-Test"), r.get_all("X-Multi"), r.client_address,
                     ws.client_address))

    proxy = proxy_with(start_proxy, upstream.url, Hooks(name="look", ws_handshake=handshake))

    async def scenario():
        from websockets.asyncio.client import connect
        headers = [("X-Test", "yes"), ("X-Multi", "1"), ("X-Multi", "2")]
        async with connect(proxy.url + "/some/path?q=1", additional_headers=headers, compression=None) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            return ws.local_address[:2]

    local = run(scenario())
    assert seen == [("GET", "/some/path", "q=1", "yes", ["1", "2"], local, local)]
    wait_no_connections(proxy)


LIST_HEADERS = [("Retry-After", "5"), ("X-Reason", "a"), ("X-Reason", "b")]
REJECTIONS = {
    "dict headers, str body": ((403, "no entry ✓\n", {"X-Reason": "test"}), [("X-Reason", "test")],
                               "no entry ✓\n".encode()),
    "list headers, bytes body": ((429, b"\x00slow down", LIST_HEADERS), LIST_HEADERS, b"\x00slow down"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_handshake_reject(start_proxy, case):
    """ws.reject(status, body, headers): the client gets exactly that answer, the later
    ws_handshake handlers do not run, and the upstream is never contacted."""
    args, headers, body = REJECTIONS[case]
    up = raw.RawUpstream()
    later: list = []
    proxy = proxy_with(start_proxy, up.url,
                       Hooks(name="gate", priority=10, ws_handshake=lambda ws: ws.reject(*args)),
                       Hooks(name="after-gate", priority=1, ws_handshake=lambda ws: later.append(ws)))

    async def scenario():
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus
        async with up:
            answer = await http_answer(proxy.port)
            with pytest.raises(InvalidStatus) as info:
                await connect(proxy.url + "/", open_timeout=5)
            await asyncio.sleep(0.05)
            return answer, info.value.response, up.queue.qsize()

    answer, response, upstream_connections = run(scenario())
    assert answer.status == args[0]
    for name, _ in headers:
        assert answer.get_all(name) == [value for n, value in headers if n == name]
    assert answer.body == body
    assert answer.get("Content-Length") == str(len(body))
    assert (response.status_code, response.body) == (args[0], body)
    assert later == []
    assert upstream_connections == 0
    wait_no_connections(proxy)


def test_handshake_reject_with_a_bad_status_answers_500(start_proxy):
    """ws.reject(200): PDKError (a status outside 400..599), so the handler raised: 500."""
    up = raw.RawUpstream()
    errors: list = []

    def handshake(ws):
        attempt(errors, "reject 200", lambda: ws.reject(200))
        ws.reject(200)

    proxy = proxy_with(start_proxy, up.url, Hooks(name="gate", ws_handshake=handshake))

    async def scenario():
        async with up:
            answer = await http_answer(proxy.port)
            await asyncio.sleep(0.05)
            return answer, up.queue.qsize()

    answer, upstream_connections = run(scenario())
    assert (answer.status, answer.body, upstream_connections) == (500, b"Internal Server Error\n", 0)
    assert errors == [("reject 200", "ws.reject: status must be an HTTP error status (400..599), got 200")]
    wait_no_connections(proxy)


def test_async_handshake_handler(start_proxy, make_upstream):
    """An async ws_handshake handler: the upgrade waits for it; a limit it sets after an
    await applies; one that rejects after an await answers its rejection."""
    upstream = make_upstream("websockets", sink)

    async def handshake(ws):
        await asyncio.sleep(0.02)
        if ws.request.path == "/deny":
            ws.reject(401, "who are you", {"WWW-Authenticate": "Bearer"})
        ws.client.set_max_payload_size(10)

    proxy = proxy_with(start_proxy, upstream.url, Hooks(name="auth", ws_handshake=handshake))

    async def scenario():
        answer = await http_answer(proxy.port, "/deny")
        client = await open_client("websockets", proxy.url + "/")
        await client.send(b"0123456789")
        await client.send(b"0123456789X")
        return answer, await collect(client)

    answer, (got, close) = run(scenario())
    assert (answer.status, answer.get("WWW-Authenticate"), answer.body) == (401, "Bearer", b"who are you")
    assert (got, close) == ([], TOO_BIG)
    conn = upstream.finished()
    assert (conn.received, conn.close_rcvd) == ([b"0123456789"], GOING_AWAY)
    assert len(upstream.conns) == 1          # /deny never reached it
    wait_no_connections(proxy)


def test_handshake_handler_runs_before_the_upgrade_is_validated(start_proxy):
    """SPEC section 3: ws_handshake (step 2) comes before the validation (step 3): it sees a
    request with a bad Sec-WebSocket-Version, which then gets the 426; its reject wins."""
    up = raw.RawUpstream()
    seen: list = []

    def handshake(ws):
        seen.append(ws.request.get("Sec-WebSocket-Version"))
        if ws.request.path == "/reject":
            ws.reject(403, "no")

    proxy = proxy_with(start_proxy, up.url, Hooks(name="first", ws_handshake=handshake))

    async def scenario():
        answers = []
        async with up:
            for path in ("/validate", "/reject"):
                peer = await raw.connect(proxy.port)
                await peer.send(raw.upgrade_request(path, replace={"Sec-WebSocket-Version": "8"}))
                answers.append(await peer.read_response())
                await peer.aclose()
            await asyncio.sleep(0.05)
            return answers, up.queue.qsize()

    (validate, reject), upstream_connections = run(scenario())
    assert seen == ["8", "8"]
    assert (validate.status, validate.get("Sec-WebSocket-Version")) == (426, "13")
    assert (reject.status, reject.body) == (403, b"no")
    assert upstream_connections == 0
    wait_no_connections(proxy)


def test_async_handshake_handler_over_handshake_timeout(start_proxy):
    """An async ws_handshake handler still running after handshake_timeout: 500."""
    up = raw.RawUpstream()
    proxy = proxy_with(start_proxy, up.url,
                       Hooks(name="stuck", ws_handshake=lambda ws: asyncio.sleep(10)),
                       handshake_timeout=0.3)

    async def scenario():
        async with up:
            started = time.monotonic()
            answer = await http_answer(proxy.port)
            return answer, time.monotonic() - started, up.queue.qsize()

    answer, elapsed, upstream_connections = run(scenario())
    assert (answer.status, answer.body, upstream_connections) == (500, b"Internal Server Error\n", 0)
    assert 0.25 < elapsed < 3
    wait_no_connections(proxy)


# -- ws_close -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("closer", ["client", "upstream", "proxy"])
def test_ws_close_runs_once_with_stats(start_proxy, make_upstream, closer):
    """ws_close runs once per connection, after the close, with ws.stats: messages and bytes
    each way, the close codes each side sent, who closed."""
    async def on_message(conn, message):
        await conn.send(message)
        if closer == "upstream" and isinstance(message, bytes):
            await conn.close(4001, "upstream leaves")

    upstream = make_upstream("websockets", on_message)
    closes: list = []
    plugins = [StatsRecorder({"closes": closes})]
    if closer == "proxy":
        def close_on_binary(ws):
            if ws.client.get_frame()[1] == "binary":
                ws.client.close(4002, "proxy says bye", 4003, "to upstream")
        plugins.append(Hooks(name="closer", ws_client_frame=close_on_binary))
    proxy = proxy_with(start_proxy, upstream.url, *plugins)

    async def scenario():
        client = await open_client("websockets", proxy.url + "/stats")
        await client.send("hello")
        assert await client.recv() == "hello"
        await client.send(b"\x00" * 10)
        if closer == "client":
            assert await client.recv() == b"\x00" * 10
            return await client.close(4000, "client leaves")
        if closer == "upstream":
            assert await client.recv() == b"\x00" * 10
        return (await collect(client))[1]

    close_at_client = run(scenario())
    wait_until(lambda: closes, what="ws_close")
    wait_no_connections(proxy)
    time.sleep(0.05)
    assert len(closes) == 1
    stats, errors = closes[0]
    codes = {"client": (4000, 4000), "upstream": (4001, 4001), "proxy": (4002, 4003)}[closer]
    assert close_at_client == {"client": (4000, "client leaves"), "upstream": (4001, "upstream leaves"),
                               "proxy": (4002, "proxy says bye")}[closer]
    assert (stats["client_messages"], stats["client_bytes"]) == (2, 15)
    echoed = (1, 5) if closer == "proxy" else (2, 15)
    assert (stats["upstream_messages"], stats["upstream_bytes"]) == echoed
    assert (stats["client_close_code"], stats["upstream_close_code"]) == codes
    assert stats["closed_by"] == closer
    assert stats["status"] == 101 and stats["path"] == "/stats" and stats["duration"] > 0
    assert errors == [("get_frame in ws_close",
                       phase_error("client.get_frame", "ws_client_frame", "ws_close"))]


# -- passthrough --------------------------------------------------------------------------------------------


def test_direction_without_a_handler_stays_in_passthrough(start_proxy):
    """A plugin with only ws_upstream_frame: the client's frames reach the upstream byte for
    byte (masks and fragmentation kept); the upstream's go through the handler and out as
    one frame."""
    up = raw.RawUpstream()
    proxy = proxy_with(start_proxy, up.url, UpstreamOnly(None))

    async def scenario():
        async with up:
            client, peer = await raw_pair(proxy, up)
            wire = (raw.frame(OP_TEXT, b"one ", fin=False, mask_key=b"\x01\x02\x03\x04")
                    + raw.frame(OP_PING, b"mid", mask_key=b"\x05\x06\x07\x08")
                    + raw.frame(OP_CONT, b"two ", fin=False, mask_key=b"\x09\x0a\x0b\x0c")
                    + raw.frame(OP_CONT, b"three", mask_key=b"\x0d\x0e\x0f\x10")
                    + raw.frame(OP_BINARY, bytes(range(256)) * 4, mask_key=b"\x11\x12\x13\x14"))
            await client.send(wire[:7])
            await asyncio.sleep(0.01)
            await client.send(wire[7:])
            at_upstream = await peer.read_exact(len(wire))
            await peer.send(raw.frame(OP_TEXT, b"ab", fin=False, mask=False)
                            + raw.frame(OP_PING, b"up", mask=False)
                            + raw.frame(OP_CONT, b"cd", mask=False))
            at_client = [await client.recv_frame() for _ in range(2)]
            await close_raw(client, peer)
            return wire, at_upstream, at_client

    wire, at_upstream, at_client = run(scenario())
    assert at_upstream == wire
    assert [(f.opcode, f.fin, f.payload, f.masked) for f in at_client] == [
        (OP_PING, True, b"up", False), (OP_TEXT, True, b"ABCD", False)]
    wait_no_connections(proxy)


# -- the config file path -----------------------------------------------------------------------------------


def test_plugins_from_a_config_file(start_proxy, make_upstream, tmp_path, monkeypatch):
    """``plugins: [{name: "module:Class", config: {...}}]``, global and per service, loaded by
    the worker (fastws.worker.build_chains): the service's Upper replaces the global one of
    the same name, the global Tag applies too, the disabled one is not loaded."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import pdk_plugins as loaded            # the module the config names, as the worker imports it
    loaded.EVENTS.clear()
    upstream = make_upstream("websockets")
    path = tmp_path / "fastws.yaml"
    path.write_text(yaml.safe_dump({
        "services": [{
            "name": "echo", "url": upstream.url, "routes": [{"paths": ["/"]}],
            "plugins": [{"name": "pdk_plugins:Upper", "config": {"suffix": "!"}}],
        }],
        "plugins": [
            {"name": "pdk_plugins:Upper", "config": {"suffix": "?"}},
            {"name": "pdk_plugins:Tag", "config": {"tag": "g"}},
            {"name": "pdk_plugins:Boom", "enabled": False, "config": {"phase": "ws_client_frame"}},
        ],
    }))
    proxy = start_proxy(config=load_config(str(path), {"listen": ["127.0.0.1:%d" % free_port()]}))

    async def scenario():
        client = await open_client("websockets", proxy.url + "/")
        await client.send("hi")
        await client.send("boom")
        replies = [await client.recv(), await client.recv()]
        await client.close(1000, "")
        return replies

    assert run(scenario()) == ["HI![g]", "BOOM![g]"]
    assert upstream.finished().received == ["HI!", "BOOM!"]
    wait_no_connections(proxy)
    wait_until(lambda: loaded.EVENTS, what="ws_close")
    assert loaded.EVENTS == [("upper", "ws_close", 2)]


@pytest.mark.parametrize("config,message", [
    ({"suffix": 5}, "plugin 'pdk_plugins:Upper': config.suffix: must be a string, got int"),
    ({"suffix": "x" * 11}, "plugin 'pdk_plugins:Upper': config: suffix: at most 10 characters"),
    ({"sufix": "!"}, "plugin 'pdk_plugins:Upper': config.sufix: unknown field (fields: suffix, priority)"),
])
def test_plugin_config_errors_stop_the_worker(start_proxy, tmp_path, monkeypatch, config, message):
    """A config the plugin's schema refuses: no worker starts; the error names the file, the
    entry, the plugin and the field."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    path = tmp_path / "fastws.yaml"
    path.write_text(yaml.safe_dump({"upstream": "ws://127.0.0.1:9/",
                                    "plugins": [{"name": "pdk_plugins:Upper", "config": config}]}))
    with pytest.raises(ConfigError) as info:
        start_proxy(config=load_config(str(path), {"listen": ["127.0.0.1:%d" % free_port()]}))
    assert str(info.value) == f"{path}: plugins[0]: {message}"
