"""End-to-end relay tests: real client libraries -> fastws -> real upstream servers.

Every test runs on both proxy loops (uvloop and asyncio, the ``proxy_loop``
parameter of ``start_proxy``).  Peers: websockets, aiohttp, picows and
websocket-client as clients; websockets, aiohttp, the built-in echo and a raw
recording upstream (``relay_helpers.RawUpstream``) as upstreams.  SPEC sections
3 (lifecycle, subprotocols), 4 (frames, passthrough vs inspect) and 6 (close
codes).
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from websockets.exceptions import ConnectionClosed

from .conftest import run
from .relay_helpers import (
    BINARY, CLIENTS, CLOSE, CONT, PING, PONG, TEXT, Chain, RawClient, RawUpstream,
    async_wait_until, close_payload, encode_frame, open_client, parse_close, reassemble,
    wait_no_connections, wait_until,
)

CLIENT_KINDS = list(CLIENTS)
UPSTREAM_KINDS = ["builtin", "websockets", "aiohttp"]

# Text and binary, empty, every length-encoding boundary (7-bit / 16-bit / 64-bit), non-ASCII.
MESSAGES = [
    "hello",
    b"\x00\x01\xfe\xff",
    "",
    b"",
    "t" * 125, "u" * 126, "v" * 65535, "w" * 65536,
    b"\x01" * 125, b"\x02" * 126, b"\x03" * 65535, b"\x04" * 65536,
    "héllo wörld ✓ 日本語 🎉",
    "é" * 63,                          # 126 bytes of UTF-8: a boundary in bytes, not characters
    bytes(range(256)) * 3,
]

INTERNAL = (1011, "Internal Server Error")


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
def make_upstream(websockets_upstream, aiohttp_upstream):
    """``make_upstream(kind) -> Upstream | None`` (None: the proxy's built-in echo)."""
    def make(kind: str):
        if kind == "builtin":
            return None
        if kind == "websockets":
            return websockets_upstream(max_size=None, compression=None)
        if kind == "aiohttp":
            return aiohttp_upstream(max_msg_size=0)
        raise ValueError(kind)
    return make


@pytest.fixture
def raw_upstream(upstream_thread):
    """``raw_upstream(**options) -> RawUpstream`` running on the upstream thread."""
    started: list[RawUpstream] = []

    def start(**options) -> RawUpstream:
        server = RawUpstream(upstream_thread.loop, **options)
        upstream_thread.run(server.start())
        started.append(server)
        return server

    yield start
    for server in started:
        upstream_thread.run(server.stop())


def identity_chain() -> Chain:
    """Both directions in inspect mode, nothing changed."""
    return Chain(("ws_client_frame", "ws_upstream_frame"))


def chain_factory(chain):
    """``chain_for`` handing the same chain object to every connection."""
    return lambda match: chain


def recording_handler(info: dict, *, close_first: tuple[int, str] | None = None, on_message=None):
    """A websockets upstream handler: echoes (or ``on_message``), then records the close."""
    received = info.setdefault("received", [])

    async def handler(ws):
        info["request_protocols"] = ws.request.headers.get("Sec-WebSocket-Protocol")
        info["subprotocol"] = ws.subprotocol
        try:
            async for message in ws:
                received.append(message)
                if close_first is not None and message == "close please":
                    await ws.close(*close_first)
                    break
                if on_message is not None:
                    await on_message(ws, message)
                else:
                    await ws.send(message)
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        rcvd, sent = ws.protocol.close_rcvd, ws.protocol.close_sent
        info["close_rcvd"] = (rcvd.code, rcvd.reason) if rcvd is not None else None
        info["close_sent"] = (sent.code, sent.reason) if sent is not None else None
        info["done"] = True
    return handler


def closed_info(info: dict, timeout: float = 5.0) -> dict:
    wait_until(lambda: info.get("done"), timeout, "the upstream handler to see the close")
    return info


# -- messages ---------------------------------------------------------------------------------------


async def pipelined_roundtrip(kind: str, url: str, messages) -> list:
    """Send every message, then read every reply (order matters), then close normally."""
    client = await open_client(kind, url)
    try:
        for message in messages:
            await client.send(message)
        return [await client.recv() for _ in messages]
    finally:
        await client.aclose()


@pytest.mark.parametrize("upstream_kind", UPSTREAM_KINDS)
@pytest.mark.parametrize("client_kind", CLIENT_KINDS)
def test_messages_roundtrip(start_proxy, make_upstream, client_kind, upstream_kind):
    upstream = make_upstream(upstream_kind)
    proxy = start_proxy(upstream.url if upstream else None)
    replies = run(pipelined_roundtrip(client_kind, proxy.url + "/", MESSAGES))
    assert replies == MESSAGES
    assert [type(r) for r in replies] == [type(m) for m in MESSAGES]
    if upstream is not None:
        assert upstream.received == MESSAGES
    wait_no_connections(proxy)


@pytest.mark.parametrize("upstream_kind", UPSTREAM_KINDS)
def test_messages_roundtrip_inspect_mode(start_proxy, make_upstream, upstream_kind):
    """The same messages with both directions in inspect mode (an identity chain)."""
    upstream = make_upstream(upstream_kind)
    chain = identity_chain()
    proxy = start_proxy(upstream.url if upstream else None, chain_for=chain_factory(chain))
    replies = run(pipelined_roundtrip("websockets", proxy.url + "/", MESSAGES))
    assert replies == MESSAGES
    if upstream is not None:
        assert upstream.received == MESSAGES
    client_seen = [c[2] for c in chain.calls if c[0] == "ws_client_frame" and c[1] in (TEXT, BINARY)]
    upstream_seen = [c[2] for c in chain.calls if c[0] == "ws_upstream_frame" and c[1] in (TEXT, BINARY)]
    encoded = [m.encode() if isinstance(m, str) else m for m in MESSAGES]
    assert client_seen == encoded
    assert upstream_seen == encoded
    wait_no_connections(proxy)


BIG = 10 << 20


@pytest.mark.parametrize("client_kind,upstream_kind", [
    ("websockets", "builtin"), ("websockets", "websockets"), ("websockets", "aiohttp"),
    ("aiohttp", "builtin"), ("picows", "builtin"), ("websocket-client", "builtin"),
])
def test_ten_mib_binary(start_proxy, make_upstream, client_kind, upstream_kind):
    upstream = make_upstream(upstream_kind)
    proxy = start_proxy(upstream.url if upstream else None, client_max_payload=16 << 20)
    payload = os.urandom(BIG)
    replies = run(pipelined_roundtrip(client_kind, proxy.url + "/", [payload, "after"]), timeout=60)
    assert len(replies[0]) == BIG and replies[0] == payload
    assert replies[1] == "after"
    if upstream is not None:
        assert len(upstream.received) == 2 and upstream.received[0] == payload
    wait_no_connections(proxy)


# -- fragmentation and pings -------------------------------------------------------------------------

# Client frames with fixed mask keys: a text message in three fragments with pings between
# them, a binary message with an empty first fragment, an unfragmented text message.
CLIENT_SCRIPT = [
    (TEXT, "frag-".encode(), False, b"\x01\x02\x03\x04"),
    (PING, b"p1", True, b"\x05\x06\x07\x08"),
    (CONT, "ment-".encode(), False, b"\x09\x0a\x0b\x0c"),
    (PING, b"p2", True, b"\x0d\x0e\x0f\x10"),
    (CONT, "ed ✓".encode(), True, b"\x11\x12\x13\x14"),
    (BINARY, b"", False, b"\x15\x16\x17\x18"),
    (CONT, b"\x00\x01" * 100, True, b"\x19\x1a\x1b\x1c"),
    (TEXT, b"whole", True, b"\x1d\x1e\x1f\x20"),
]
FRAGMENTED_TEXT = "frag-ment-ed ✓".encode()


async def send_client_script(client: RawClient) -> None:
    """The script, in several writes; one frame split across two writes."""
    for i, (opcode, payload, fin, key) in enumerate(CLIENT_SCRIPT):
        data = encode_frame(opcode, payload, fin, key)
        if i == 4:
            client.send(data[:5])
            await client.writer.drain()
            await asyncio.sleep(0.02)
            client.send(data[5:])
        else:
            client.send(data)
        await client.writer.drain()
        await asyncio.sleep(0.005)


# Upstream frames: a fragmented text message with a ping in the middle.
UPSTREAM_SCRIPT = [
    encode_frame(TEXT, b"down-", fin=False),
    encode_frame(PING, b"up-ping"),
    encode_frame(CONT, b"stream", fin=True),
]


@pytest.mark.parametrize("mode", ["passthrough", "inspect"])
def test_fragments_and_pings_on_the_wire(start_proxy, raw_upstream, mode):
    """Passthrough forwards the client's bytes as they are (fragments, masks); inspect mode
    aggregates a message into one freshly masked frame and still forwards pings one by one.
    The upstream->client direction is passthrough in both runs (the chain only has
    ws_client_frame), so the upstream's fragmentation reaches the client byte for byte."""
    upstream = raw_upstream()
    chain = Chain(("ws_client_frame",),
                  lambda phase, frame: setattr(frame, "data", frame.data.upper())
                  if frame.opcode == TEXT else None)
    proxy = start_proxy(upstream.url, chain_for=chain_factory(chain) if mode == "inspect" else None)

    async def scenario():
        client = await RawClient.connect(proxy.port, "/")
        await send_client_script(client)
        # The client gets both pongs (the upstream answered each ping as it came), then the
        # echoes of the three messages, each as the one frame the upstream wrote.
        frames = await client.recv_frames(5)
        assert [(f.opcode, f.payload) for f in frames[:2]] == [(PONG, b"p1"), (PONG, b"p2")]
        upper = (lambda b: b.upper()) if mode == "inspect" else (lambda b: b)
        assert [(f.opcode, f.fin, f.payload) for f in frames[2:]] == [
            (TEXT, True, upper(FRAGMENTED_TEXT)), (BINARY, True, b"\x00\x01" * 100),
            (TEXT, True, upper(b"whole")),
        ]
        assert all(f.mask_key is None for f in frames)
        await async_wait_until(lambda: len(upstream.conns[0].messages) == 3, what="3 messages upstream")
        conn = upstream.conns[0]

        # Upstream -> client: fragmented, ping in the middle, byte for byte (passthrough).
        for data in UPSTREAM_SCRIPT:
            conn.send(data)
        frames = await client.recv_frames(3)
        assert [f.raw for f in frames] == UPSTREAM_SCRIPT
        client.send_frame(PONG, b"up-ping")
        await async_wait_until(lambda: any(f.opcode == PONG for f in conn.frames), what="the pong upstream")

        # Closing handshake, client first.
        client.send_frame(CLOSE, close_payload(4000, "custom"))
        reply = await client.recv_frame()
        assert (reply.opcode, parse_close(reply.payload)) == (CLOSE, (4000, "custom"))
        await client.at_eof()
        client.close()
        await async_wait_until(lambda: conn.eof, what="the upstream connection to end")
        return client, conn

    client, conn = run(scenario())
    assert conn.close_received == (4000, "custom")
    data_frames = [(f.opcode, f.fin, f.payload) for f in conn.frames if f.opcode not in (PING, PONG, CLOSE)]
    upper = (lambda b: b.upper()) if mode == "inspect" else (lambda b: b)
    assert reassemble(conn.frames) == [
        (TEXT, upper(FRAGMENTED_TEXT)), (BINARY, b"\x00\x01" * 100), (TEXT, upper(b"whole")),
    ]
    assert conn.messages == reassemble(conn.frames)
    pings = [f.payload for f in conn.frames if f.opcode == PING]
    assert pings == [b"p1", b"p2"]
    assert [f.payload for f in conn.frames if f.opcode == PONG] == [b"up-ping"]
    assert all(f.mask_key is not None for f in conn.frames), "frames to the upstream must be masked"
    if mode == "passthrough":
        # Every byte the client wrote reached the upstream unchanged: same frames, same masks.
        assert bytes(conn.raw) == bytes(client.sent)
        assert data_frames == [(op, fin, payload) for op, payload, fin, _ in CLIENT_SCRIPT
                               if op not in (PING, PONG)]
    else:
        # One frame per message, uppercased by the chain, fresh masks.
        assert data_frames == [
            (TEXT, True, FRAGMENTED_TEXT.upper()), (BINARY, True, b"\x00\x01" * 100), (TEXT, True, b"WHOLE"),
        ]
        client_keys = {key for *_, key in CLIENT_SCRIPT}
        assert not any(f.mask_key in client_keys for f in conn.frames if f.opcode in (TEXT, BINARY))
        assert [c[:3] for c in chain.calls] == [
            ("ws_client_frame", PING, b"p1"), ("ws_client_frame", PING, b"p2"),
            ("ws_client_frame", TEXT, FRAGMENTED_TEXT), ("ws_client_frame", BINARY, b"\x00\x01" * 100),
            ("ws_client_frame", TEXT, b"whole"), ("ws_client_frame", PONG, b"up-ping"),
            ("ws_client_frame", CLOSE, b"custom"),
        ]
        assert chain.calls[-1][3] == 4000
    wait_no_connections(proxy)


@pytest.mark.parametrize("upstream_kind", ["websockets", "aiohttp", "builtin"])
@pytest.mark.parametrize("mode", ["passthrough", "inspect"])
def test_fragmented_send_with_pings_websockets(start_proxy, make_upstream, upstream_kind, mode):
    """websockets sends a message in fragments with pings in between: the pongs come back
    while the message is still open, and the upstream gets the message whole."""
    upstream = make_upstream(upstream_kind)
    chain = identity_chain()
    proxy = start_proxy(upstream.url if upstream else None,
                        chain_for=chain_factory(chain) if mode == "inspect" else None)
    pieces = ["alpha-", "βeta-", "", "gamma" * 30000]

    async def scenario():
        from websockets.asyncio.client import connect
        async with connect(proxy.url + "/", max_size=None, ping_interval=None, compression=None) as ws:
            waiters = []

            async def fragments():
                for i, piece in enumerate(pieces):
                    yield piece
                    waiter = await ws.ping(f"mid-{i}")
                    waiters.append(waiter)
                    await asyncio.wait_for(asyncio.shield(waiter), 5)   # pong before the next piece
            await ws.send(fragments())
            await asyncio.wait_for(asyncio.gather(*waiters), 5)
            text = await ws.recv()
            await ws.send([b"bin-", b"ary"])
            binary = await ws.recv()
            return text, binary

    text, binary = run(scenario())
    assert text == "".join(pieces)
    assert binary == b"bin-ary"
    if upstream is not None:
        assert upstream.received == ["".join(pieces), b"bin-ary"]
    wait_no_connections(proxy)


@pytest.mark.parametrize("upstream_kind", UPSTREAM_KINDS)
@pytest.mark.parametrize("client_kind", CLIENT_KINDS)
def test_client_ping_gets_pong(start_proxy, make_upstream, client_kind, upstream_kind):
    upstream = make_upstream(upstream_kind)
    proxy = start_proxy(upstream.url if upstream else None)

    async def scenario():
        client = await open_client(client_kind, proxy.url + "/")
        try:
            await client.send("before")
            assert await client.recv() == "before"
            pong = await client.ping(b"are you there")
            await client.send("after")
            assert await client.recv() == "after"
            return pong
        finally:
            await client.aclose()

    assert run(scenario()) == b"are you there"
    wait_no_connections(proxy)


@pytest.mark.parametrize("mode", ["passthrough", "inspect"])
@pytest.mark.parametrize("client_kind", CLIENT_KINDS)
def test_upstream_ping_answered_by_client(start_proxy, websockets_upstream, client_kind, mode):
    info: dict = {}

    async def on_message(ws, message):
        if message == "ping me":
            waiter = await ws.ping(b"from upstream")
            latency = await asyncio.wait_for(waiter, 5)
            info["latency"] = latency
            await ws.send("pong received")
        else:
            await ws.send(message)

    upstream = websockets_upstream(recording_handler(info, on_message=on_message))
    chain = identity_chain()
    proxy = start_proxy(upstream.url, chain_for=chain_factory(chain) if mode == "inspect" else None)

    async def scenario():
        client = await open_client(client_kind, proxy.url + "/")
        try:
            await client.send("ping me")
            return await client.recv()
        finally:
            await client.aclose()

    assert run(scenario()) == "pong received"
    assert info["latency"] >= 0
    if mode == "inspect":
        assert ("ws_upstream_frame", PING, b"from upstream", None) in chain.calls
        assert ("ws_client_frame", PONG, b"from upstream", None) in chain.calls
    wait_no_connections(proxy)


# -- subprotocols ------------------------------------------------------------------------------------


@pytest.mark.parametrize("selected", ["chat", None])
@pytest.mark.parametrize("client_kind", CLIENT_KINDS)
def test_subprotocol_passes_through(start_proxy, websockets_upstream, client_kind, selected):
    info: dict = {}
    kwargs = {"subprotocols": ["chat"]} if selected else {}
    upstream = websockets_upstream(recording_handler(info), **kwargs)
    proxy = start_proxy(upstream.url)

    async def scenario():
        client = await open_client(client_kind, proxy.url + "/", subprotocols=["chat", "superchat"])
        try:
            await client.send("hi")
            assert await client.recv() == "hi"
            return client.subprotocol
        finally:
            await client.aclose()

    if client_kind == "websocket-client" and selected is None:
        # websocket-client refuses a 101 without one of the offered subprotocols and drops the
        # TCP connection: the proxy must then close the upstream side too (1001).
        import websocket
        with pytest.raises(websocket.WebSocketException, match="Invalid WebSocket Header"):
            run(scenario())
        closed_info(info)
        assert info["close_rcvd"] == (1001, "")
    else:
        assert run(scenario()) == selected
    assert [p.strip() for p in info["request_protocols"].split(",")] == ["chat", "superchat"]
    assert info["subprotocol"] == selected
    wait_no_connections(proxy)


# -- closing -------------------------------------------------------------------------------------------

CLOSES = [(1000, "bye"), (4000, "custom"), (3001, "x")]


@pytest.mark.parametrize("mode", ["passthrough", "inspect"])
@pytest.mark.parametrize("code,reason", CLOSES)
def test_client_closes_first_websockets(start_proxy, websockets_upstream, code, reason, mode):
    info: dict = {}
    upstream = websockets_upstream(recording_handler(info))
    chain = identity_chain()
    proxy = start_proxy(upstream.url, chain_for=chain_factory(chain) if mode == "inspect" else None)

    async def scenario():
        from websockets.asyncio.client import connect
        ws = await connect(proxy.url + "/", ping_interval=None, close_timeout=5)
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.close(code, reason)
        sent, rcvd = ws.protocol.close_sent, ws.protocol.close_rcvd
        return (sent.code, sent.reason), (rcvd.code, rcvd.reason), ws.close_code, ws.close_reason

    sent, rcvd, close_code, close_reason = run(scenario())
    assert sent == (code, reason)
    assert rcvd == (code, reason)                  # websockets' upstream echoes the close
    assert (close_code, close_reason) == (code, reason)
    closed_info(info)
    assert info["close_rcvd"] == (code, reason)
    assert info["close_sent"] == (code, reason)
    assert info["received"] == ["hello"]
    wait_no_connections(proxy)


@pytest.mark.parametrize("client_kind", CLIENT_KINDS)
def test_client_closes_first_and_gets_the_upstreams_reply(start_proxy, raw_upstream, client_kind):
    """The upstream answers with a close of its own (1000 "ack"): that reply reaches the client."""
    upstream = raw_upstream(close_reply=(1000, "ack"))
    proxy = start_proxy(upstream.url)

    async def scenario():
        client = await open_client(client_kind, proxy.url + "/")
        await client.send("hello")
        assert await client.recv() == "hello"
        return await client.close(4000, "custom")

    assert run(scenario()) == (1000, "ack")
    wait_until(lambda: upstream.conns and upstream.conns[0].eof, what="the upstream connection to end")
    assert upstream.conns[0].close_received == (4000, "custom")
    wait_no_connections(proxy)


@pytest.mark.parametrize("mode", ["passthrough", "inspect"])
@pytest.mark.parametrize("client_kind", CLIENT_KINDS)
def test_upstream_closes_first(start_proxy, websockets_upstream, client_kind, mode):
    info: dict = {}
    upstream = websockets_upstream(recording_handler(info, close_first=(4001, "server says")))
    chain = identity_chain()
    proxy = start_proxy(upstream.url, chain_for=chain_factory(chain) if mode == "inspect" else None)

    async def scenario():
        client = await open_client(client_kind, proxy.url + "/")
        await client.send("hello")
        assert await client.recv() == "hello"
        await client.send("close please")
        return await client.wait_closed_by_peer()

    assert run(scenario()) == (4001, "server says")
    closed_info(info)
    assert info["close_sent"] == (4001, "server says")
    assert info["close_rcvd"] == (4001, "server says")      # every client echoes the close
    wait_no_connections(proxy)


def test_upstream_closes_right_after_the_handshake(start_proxy, websockets_upstream):
    """A close that arrives together with the upstream's 101 still reaches the client."""
    info: dict = {}

    async def handler(ws):
        await ws.close(4002, "go away now")
        rcvd = ws.protocol.close_rcvd
        info["close_rcvd"] = (rcvd.code, rcvd.reason) if rcvd is not None else None
        info["done"] = True

    upstream = websockets_upstream(handler)
    proxy = start_proxy(upstream.url)

    async def scenario():
        client = await open_client("websockets", proxy.url + "/")
        return await client.wait_closed_by_peer()

    assert run(scenario()) == (4002, "go away now")
    closed_info(info)
    assert info["close_rcvd"] == (4002, "go away now")
    wait_no_connections(proxy)


# -- inspect mode with trivial chains -------------------------------------------------------------


def _uppercase_text(phase, frame):
    if frame.opcode == TEXT:
        frame.data = frame.data.upper()


def test_inspect_uppercases_client_text_only(start_proxy, websockets_upstream):
    info: dict = {}

    async def on_message(ws, message):
        await ws.send(message)
        await ws.send("MiXeD from upstream")

    upstream = websockets_upstream(recording_handler(info, on_message=on_message))
    chain = Chain(("ws_client_frame",), _uppercase_text)
    proxy = start_proxy(upstream.url, chain_for=chain_factory(chain))
    sent = ["hello", b"binary stays", "ünïcode ok", ""]

    async def scenario():
        client = await open_client("websockets", proxy.url + "/")
        try:
            replies = []
            for message in sent:
                await client.send(message)
                replies.append(await client.recv())
                replies.append(await client.recv())
            return replies
        finally:
            await client.aclose()

    replies = run(scenario())
    expected_up = ["HELLO", b"binary stays", "üNïCODE OK", ""]
    assert info["received"] == expected_up
    # Upstream -> client is passthrough: the echo is what the upstream got, its own text unchanged.
    assert replies == [x for m in expected_up for x in (m, "MiXeD from upstream")]
    assert {c[0] for c in chain.calls} == {"ws_client_frame"}
    wait_no_connections(proxy)


@pytest.mark.parametrize("client_kind", CLIENT_KINDS)
def test_inspect_drops_messages(start_proxy, websockets_upstream, client_kind):
    def drop(phase, frame):
        if frame.opcode in (TEXT, BINARY) and b"drop" in frame.data:
            frame.dropped = True

    upstream = websockets_upstream()
    chain = Chain(("ws_client_frame",), drop)
    proxy = start_proxy(upstream.url, chain_for=chain_factory(chain))

    async def scenario():
        client = await open_client(client_kind, proxy.url + "/")
        try:
            for message in ["keep 1", "please drop me", b"binary drop", "keep 2", "drop"]:
                await client.send(message)
            await client.send("final")
            return [await client.recv() for _ in range(3)]
        finally:
            await client.aclose()

    assert run(scenario()) == ["keep 1", "keep 2", "final"]
    assert upstream.received == ["keep 1", "keep 2", "final"]
    wait_no_connections(proxy)


@pytest.mark.parametrize("direction", ["ws_client_frame", "ws_upstream_frame"])
@pytest.mark.parametrize("client_kind", CLIENT_KINDS)
def test_inspect_handler_raises(start_proxy, websockets_upstream, client_kind, direction):
    """SPEC section 6: a handler that raises closes both sides with 1011 "Internal Server Error"."""
    info: dict = {}

    async def on_message(ws, message):
        await ws.send("boom" if message == "trigger" else message)

    def explode(phase, frame):
        if frame.opcode == TEXT and frame.data == b"boom":
            raise RuntimeError("plugin bug")

    upstream = websockets_upstream(recording_handler(info, on_message=on_message))
    chain = Chain((direction,), explode)
    proxy = start_proxy(upstream.url, chain_for=chain_factory(chain))

    async def scenario():
        client = await open_client(client_kind, proxy.url + "/")
        await client.send("ok")
        assert await client.recv() == "ok"
        await client.send("boom" if direction == "ws_client_frame" else "trigger")
        return await client.wait_closed_by_peer()

    assert run(scenario()) == INTERNAL
    closed_info(info)
    assert info["close_rcvd"] == INTERNAL
    expected = ["ok"] if direction == "ws_client_frame" else ["ok", "trigger"]
    assert info["received"] == expected
    wait_no_connections(proxy)
    assert proxy.thread.call(lambda: proxy.server.handler_errors) == 1


# -- many connections ---------------------------------------------------------------------------------


@pytest.mark.parametrize("upstream_kind", ["builtin", "websockets"])
def test_many_concurrent_connections(start_proxy, make_upstream, upstream_kind):
    upstream = make_upstream(upstream_kind)
    proxy = start_proxy(upstream.url if upstream else None)
    clients, per_client = 50, 20

    async def one(i: int) -> list:
        from websockets.asyncio.client import connect
        async with connect(proxy.url + f"/c{i}", ping_interval=None, compression=None) as ws:
            replies = []
            for j in range(per_client):
                message = f"client {i} message {j}" if j % 2 else f"{i}:{j}".encode() * (j + 1)
                await ws.send(message)
                replies.append((message, await ws.recv()))
            return replies

    async def scenario():
        return await asyncio.gather(*(one(i) for i in range(clients)))

    results = run(scenario(), timeout=30)
    assert len(results) == clients
    for replies in results:
        assert len(replies) == per_client
        for message, reply in replies:
            assert reply == message
    if upstream is not None:
        assert len(upstream.received) == clients * per_client
        assert sorted(map(repr, upstream.received)) == sorted(repr(m) for r in results for m, _ in r)
    wait_no_connections(proxy)


# -- backpressure --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["passthrough", "inspect"])
def test_slow_client_gets_everything_in_order(start_proxy, websockets_upstream, mode):
    """The upstream floods a client that does not read for a while: the proxy pauses and
    resumes reading (small write-buffer limits), nothing is lost or reordered."""
    count, size = 200, 64 << 10

    async def on_message(ws, message):
        for i in range(count):
            await ws.send(i.to_bytes(4, "big") * (size // 4))
        await ws.send("done")

    info: dict = {}
    upstream = websockets_upstream(recording_handler(info, on_message=on_message), max_size=None)
    chain = identity_chain()
    proxy = start_proxy(upstream.url, chain_for=chain_factory(chain) if mode == "inspect" else None,
                        write_buffer_high=32 << 10, write_buffer_low=8 << 10)

    async def scenario():
        from websockets.asyncio.client import connect
        async with connect(proxy.url + "/", max_size=None, ping_interval=None, compression=None,
                           max_queue=4) as ws:
            await ws.send("flood")
            await asyncio.sleep(0.3)            # let every buffer on the way fill up
            got = [await ws.recv() for _ in range(count + 1)]
        return got

    got = run(scenario())
    assert got[-1] == "done"
    for i, message in enumerate(got[:-1]):
        assert len(message) == size and message == i.to_bytes(4, "big") * (size // 4), i
    wait_no_connections(proxy)


# -- TCP drops (SPEC section 6: "TCP drop without close" -> 1001 to the other side) -------------------


def test_client_tcp_drop_gives_upstream_1001(start_proxy, websockets_upstream):
    info: dict = {}
    upstream = websockets_upstream(recording_handler(info))
    proxy = start_proxy(upstream.url)

    async def scenario():
        client = await RawClient.connect(proxy.port)
        client.send_frame(TEXT, b"hello")
        frame = await client.recv_frame()
        assert (frame.opcode, frame.payload) == (TEXT, b"hello")
        client.writer.transport.abort()

    run(scenario())
    closed_info(info)
    assert info["close_rcvd"] == (1001, "")
    wait_no_connections(proxy)


def test_upstream_tcp_drop_gives_client_1001(start_proxy, websockets_upstream):
    async def on_message(ws, message):
        if message == "drop":
            ws.transport.abort()
        else:
            await ws.send(message)

    upstream = websockets_upstream(recording_handler({}, on_message=on_message))
    proxy = start_proxy(upstream.url)

    async def scenario():
        client = await open_client("websockets", proxy.url + "/")
        await client.send("hello")
        assert await client.recv() == "hello"
        await client.send("drop")
        return await client.wait_closed_by_peer()

    assert run(scenario()) == (1001, "")
    wait_no_connections(proxy)


def test_proxy_close_waits_for_the_frame_boundary(start_proxy, raw_upstream):
    """Shutdown while a client frame is half relayed: the upstream's 1001 goes out only after
    the rest of that frame (a close cannot be put in the middle of a frame)."""
    upstream = raw_upstream(echo=False)
    proxy = start_proxy(upstream.url)
    data = encode_frame(BINARY, b"x" * 100_000, True, b"abcd")

    async def scenario():
        client = await RawClient.connect(proxy.port)
        client.send(data[:50_000])
        await async_wait_until(lambda: upstream.conns and len(upstream.conns[0].raw) >= 50_000,
                               what="the first half upstream")
        stopping = asyncio.run_coroutine_threadsafe(proxy.worker.shutdown(5), proxy.thread.loop)
        frame = await client.recv_frame()
        assert (frame.opcode, parse_close(frame.payload)) == (CLOSE, (1001, "Going Away"))
        client.send(data[50_000:])
        client.send_frame(CLOSE, close_payload(1001))
        await client.at_eof()
        await asyncio.wrap_future(stopping)

    run(scenario())
    conn = upstream.conns[0]
    wait_until(lambda: conn.eof, what="the upstream connection to end")
    assert [(f.opcode, f.payload if f.opcode == CLOSE else len(f.payload)) for f in conn.frames] == [
        (BINARY, 100_000), (CLOSE, close_payload(1001, "Going Away")),
    ]
    assert conn.frames[0].raw == data
    wait_no_connections(proxy)


@pytest.mark.parametrize("dropper", ["client", "upstream"])
def test_tcp_drop_mid_frame(start_proxy, raw_upstream, dropper):
    """One side's TCP connection ends in the middle of a frame being relayed in passthrough.

    The frame towards the other side can never be finished, so no close frame can follow it:
    anything written now would be read as payload.  The other side must get exactly the
    bytes that were sent and then lose its connection at once (not after close_timeout)."""
    upstream = raw_upstream(echo=False)
    proxy = start_proxy(upstream.url, close_timeout=2.0)
    masked = dropper == "client"
    data = encode_frame(BINARY, b"x" * 100_000, True, b"abcd" if masked else None)
    half = data[:50_000]

    async def scenario():
        client = await RawClient.connect(proxy.port)
        await async_wait_until(lambda: upstream.conns, what="the upstream connection")
        conn = upstream.conns[0]
        if dropper == "client":
            client.send(half)
            await async_wait_until(lambda: len(conn.raw) >= len(half), what="the first half upstream")
            client.writer.transport.abort()
            started = asyncio.get_running_loop().time()
            await async_wait_until(lambda: conn.eof, what="the upstream connection to end")
            return bytes(conn.raw), asyncio.get_running_loop().time() - started
        conn.send(half)
        got = b""
        while len(got) < len(half):
            got += await asyncio.wait_for(client.reader.read(1 << 16), 5)
        conn.abort()
        started = asyncio.get_running_loop().time()
        got += await client.at_eof()
        return got, asyncio.get_running_loop().time() - started

    got, elapsed = run(scenario())
    assert got == half, (
        f"the {'upstream' if masked else 'client'} got {len(got) - len(half)} byte(s) after the "
        f"partial frame: {got[len(half):]!r}")
    assert elapsed < 1.0, f"the connection lingered {elapsed:.1f}s (close_timeout is 2s)"
    wait_no_connections(proxy)


def test_invalid_utf8_mid_frame_with_validate_utf8(start_proxy, raw_upstream):
    """validate_utf8 in passthrough fails fast inside a text frame: the client gets 1007.
    The upstream is then in the middle of that frame, where no close frame can go: it must
    get only bytes of the client's frame, and lose its connection at once."""
    upstream = raw_upstream(echo=False)
    proxy = start_proxy(upstream.url, close_timeout=2.0, validate_utf8=True)
    data = encode_frame(TEXT, b"a" * 50_000 + b"\xff" + b"b" * 49_999, True, b"abcd")

    async def scenario():
        client = await RawClient.connect(proxy.port)
        client.send(data[:40_000])
        await async_wait_until(lambda: upstream.conns and len(upstream.conns[0].raw) >= 40_000,
                               what="the first part upstream")
        client.send(data[40_000:])
        frame = await client.recv_frame()
        assert (frame.opcode, parse_close(frame.payload)) == (CLOSE, (1007, "Invalid Frame Payload Data"))
        await client.at_eof()

    run(scenario())
    conn = upstream.conns[0]
    started = time.monotonic()
    wait_until(lambda: conn.eof, what="the upstream connection to end")
    elapsed = time.monotonic() - started
    assert data.startswith(bytes(conn.raw)), (
        f"the upstream got bytes that are not the client's: {bytes(conn.raw[-16:])!r} at the end")
    assert elapsed < 1.0, f"the upstream connection lingered {elapsed:.1f}s (close_timeout is 2s)"
    wait_no_connections(proxy)


# -- closes without a status code ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["passthrough", "inspect"])
def test_close_without_status(start_proxy, raw_upstream, mode):
    """An empty close frame (1005 locally) goes through as an empty close frame, both ways."""
    upstream = raw_upstream()
    chain = identity_chain()
    proxy = start_proxy(upstream.url, chain_for=chain_factory(chain) if mode == "inspect" else None)

    async def scenario():
        client = await RawClient.connect(proxy.port)
        client.send_frame(CLOSE, b"")
        frame = await client.recv_frame()
        await client.at_eof()
        return frame

    frame = run(scenario())
    assert (frame.opcode, frame.payload) == (CLOSE, b"")
    conn = upstream.conns[0]
    wait_until(lambda: conn.eof, what="the upstream connection to end")
    assert [(f.opcode, f.payload) for f in conn.frames] == [(CLOSE, b"")]
    wait_no_connections(proxy)
