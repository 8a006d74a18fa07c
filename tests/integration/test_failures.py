"""Failure paths over real sockets: handshake errors, bad upstreams, protocol errors, drops, timeouts.

Every test checks the exact answer the failing side gets (HTTP status, headers and
body, or close code and reason) and that a second, healthy connection opened
before the failure through the same proxy still echoes afterwards: one broken
connection never disturbs another (SPEC §3, §4, §6).

The misbehaving peers are raw sockets (``raw.py``); the healthy connection is a
``websockets`` client, to the built-in echo upstream or, when the proxy needs a
config file, to a ``websockets`` echo server on a ``/healthy`` route.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import time

import pytest
import websockets
import yaml

from fastws.config import load_config
from fastws.handshake import accept_key

from . import raw
from .conftest import free_port, run
from .raw import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawUpstream, close_frame, frame

PREFIX = "Cannot complete WebSocket handshake: "
REASONS = {1002: b"Protocol Error", 1007: b"Invalid Frame Payload Data", 1009: b"Payload Too Large"}
GOING_AWAY = struct.pack("!H", 1001)     # 1001 with no reason: what the innocent side gets


# ---------------------------------------------------------------------------
# Helpers


@contextlib.asynccontextmanager
async def healthy_connection(url: str):
    """A websockets client that always ends with a clean 1000, even when the test failed.

    (``async with websockets.connect()`` closes with 1011 on an exception, and the
    upstream's echo handler then logs a traceback in its thread while pytest renders
    the failure: on CPython 3.11 (3.11.7 here) concurrent ``ast.parse`` calls, which
    3.11 tracebacks make for their carets, can crash pytest with "INTERNALERROR ...
    AST constructor recursion depth mismatch", CPython gh-106905.)
    """
    ws = await websockets.connect(url)
    try:
        yield ws
    finally:
        await ws.close()


async def roundtrip(ws) -> None:
    """The healthy connection still echoes."""
    message = "still alive " + os.urandom(4).hex()
    await ws.send(message)
    assert await asyncio.wait_for(ws.recv(), 5) == message


@pytest.fixture
def config_proxy(start_proxy, websockets_upstream, tmp_path):
    """``config_proxy(target_url, service={...}, **settings)``: a proxy from a config file.

    Two services: ``healthy`` (a websockets echo server) on ``/healthy`` and
    ``target`` (``target_url``, with the extra service fields in ``service``) on ``/``.
    """
    def make(target_url: str, *, service: dict | None = None, **settings):
        healthy = websockets_upstream()
        services = [
            {"name": "healthy", "url": healthy.url, "routes": [{"paths": ["/healthy"]}]},
            {"name": "target", "url": target_url, "routes": [{"paths": ["/"]}], **(service or {})},
        ]
        path = tmp_path / "fastws.yaml"
        path.write_text(yaml.safe_dump({"services": services}))
        # A short close_timeout bounds how long a broken test waits for the proxy to give up.
        settings.setdefault("close_timeout", 1.0)
        config = load_config(str(path), {"listen": [f"127.0.0.1:{free_port()}"], **settings})
        return start_proxy(config=config)
    return make


async def open_pair(proxy, up: RawUpstream, path: str = "/", **request_kwargs):
    """A raw client and the raw upstream connection the proxy opened for it, both past the 101."""
    client = await raw.connect(proxy.port)
    client.key = raw.new_key()
    await client.send(raw.upgrade_request(path, key=client.key, **request_kwargs))
    peer, _ = await up.accept_upgrade()
    response = await client.read_response()
    assert response.status == 101, (response.start_line, response.headers, response.body)
    assert response.get("Sec-WebSocket-Accept") == accept_key(client.key)
    return client, peer


async def assert_rejected(client: raw.RawPeer, status: int, body: bytes | None, **headers) -> raw.HttpHead:
    """The proxy answers ``status`` with ``body`` and the headers, then closes the connection."""
    response = await client.read_response()
    assert response.status == status, (response.start_line, response.headers, response.body)
    if body is not None:
        assert response.body == body
    for name, value in headers.items():
        assert value in response.get_all(name.replace("_", "-")), (name, response.headers)
    assert "close" in response.tokens("Connection"), response.headers
    assert await client.read_until_eof() == b"", "the proxy must close after an HTTP error"
    return response


# ---------------------------------------------------------------------------
# Handshake failures (SPEC §3 step 3, §2)


def _b64(n: int) -> str:
    return base64.b64encode(os.urandom(n)).decode()


# Host and the 4 other default headers + 96: 101 header lines, over the default max_headers=100.
TOO_MANY_HEADERS = raw.upgrade_request(extra=[(f"X-H{i}", "v") for i in range(96)])

HANDSHAKE_CASES = [
    pytest.param(raw.upgrade_request(method="POST"), 400, PREFIX + "method must be GET", {}, id="method-POST"),
    pytest.param(raw.upgrade_request(replace={"Connection": "keep-alive"}), 400,
                 PREFIX + 'no "upgrade" in Connection', {}, id="no-upgrade-in-Connection"),
    pytest.param(raw.upgrade_request(replace={"Upgrade": "h2c"}), 400,
                 PREFIX + 'no "websocket" in Upgrade', {}, id="no-websocket-in-Upgrade"),
    pytest.param(raw.upgrade_request(replace={"Sec-WebSocket-Key": None}), 400,
                 PREFIX + "Sec-WebSocket-Key missing", {}, id="key-missing"),
    pytest.param(raw.upgrade_request(extra=[("Sec-WebSocket-Key", _b64(16))]), 400,
                 PREFIX + "Sec-WebSocket-Key repeated", {}, id="key-repeated"),
    pytest.param(raw.upgrade_request(key=_b64(15)), 400,
                 PREFIX + "Sec-WebSocket-Key is not 16 bytes in base64", {}, id="key-15-bytes"),
    pytest.param(raw.upgrade_request(key=_b64(17)), 400,
                 PREFIX + "Sec-WebSocket-Key is not 16 bytes in base64", {}, id="key-17-bytes"),
    pytest.param(raw.upgrade_request(key="not*base64*at*all*here=="), 400,
                 PREFIX + "Sec-WebSocket-Key is not 16 bytes in base64", {}, id="key-not-base64"),
    pytest.param(raw.upgrade_request(replace={"Sec-WebSocket-Version": "8"}), 426,
                 PREFIX + "Sec-WebSocket-Version is not 13", {"Sec-WebSocket-Version": "13"}, id="version-8"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 426,
                 PREFIX + "not a WebSocket request, use a WebSocket client", {"Upgrade": "websocket"},
                 id="plain-GET"),
    pytest.param(TOO_MANY_HEADERS, 431,
                 "Request Header Fields Too Large", {}, id="101-headers"),
    pytest.param(raw.upgrade_request(extra=[("X-Big", "b" * 17000)]), 431,
                 "Request Header Fields Too Large", {}, id="header-block-over-16KiB"),
]


def test_header_count_case_is_over_the_limit():
    """The 101-headers case really has 101 header lines (request line and final CRLF aside)."""
    assert TOO_MANY_HEADERS.count(b"\r\n") - 2 == 101


@pytest.mark.parametrize("request_bytes, status, reason, headers", HANDSHAKE_CASES)
def test_handshake_rejected(start_proxy, request_bytes, status, reason, headers):
    proxy = start_proxy()

    async def go():
        async with healthy_connection(proxy.url + "/") as healthy:
            await roundtrip(healthy)
            client = await raw.connect(proxy.port)
            await client.send(request_bytes)
            await assert_rejected(client, status, (reason + "\n").encode(), **headers)
            await roundtrip(healthy)

    run(go(), 15)


def test_handshake_timeout_slow_client(start_proxy):
    """Half a request, then silence: 408 after handshake_timeout, connection closed."""
    proxy = start_proxy(handshake_timeout=0.5)

    async def go():
        async with healthy_connection(proxy.url + "/") as healthy:
            client = await raw.connect(proxy.port)
            started = time.monotonic()
            await client.send(raw.upgrade_request()[:40])
            await assert_rejected(client, 408, b"Request Timeout: no complete handshake in time\n")
            elapsed = time.monotonic() - started
            assert 0.4 <= elapsed < 3, elapsed
            await roundtrip(healthy)     # its own handshake timer was cancelled: still open

    run(go(), 15)


def test_no_route_404(start_proxy, websockets_upstream, tmp_path):
    upstream = websockets_upstream()
    path = tmp_path / "fastws.yaml"
    path.write_text(yaml.safe_dump({"services": [
        {"name": "chat", "url": upstream.url, "routes": [{"paths": ["/chat"]}]},
    ]}))
    proxy = start_proxy(config=load_config(str(path), {"listen": [f"127.0.0.1:{free_port()}"]}))

    async def go():
        async with healthy_connection(proxy.url + "/chat") as healthy:
            await roundtrip(healthy)
            for target in ("/other", "/chatroom"):
                client = await raw.connect(proxy.port)
                await client.send(raw.upgrade_request(target))
                await assert_rejected(client, 404, b"Not Found: no route matches\n")
            await roundtrip(healthy)

    run(go(), 15)


# ---------------------------------------------------------------------------
# Upstream failures (SPEC §3 step 4)


def test_upstream_connect_refused_502(config_proxy):
    proxy = config_proxy(f"ws://127.0.0.1:{free_port()}/")

    async def go():
        async with healthy_connection(proxy.url + "/healthy") as healthy:
            client = await raw.connect(proxy.port)
            await client.send(raw.upgrade_request("/"))
            response = await assert_rejected(client, 502, None)
            assert response.body.startswith(b"Bad Gateway: upstream connect failed"), response.body
            await roundtrip(healthy)

    run(go(), 15)


def test_upstream_connect_timeout_504(config_proxy):
    """The upstream's accept queue is full, so its SYNs are dropped: 504 after connect_timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):      # backlog 0 holds one; the others wait in SYN retransmission
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            fillers.append(sock)
        time.sleep(0.05)
        proxy = config_proxy(f"ws://127.0.0.1:{port}/", service={"connect_timeout": 0.5})

        async def go():
            async with healthy_connection(proxy.url + "/healthy") as healthy:
                client = await raw.connect(proxy.port)
                started = time.monotonic()
                await client.send(raw.upgrade_request("/"))
                await assert_rejected(client, 504, b"Gateway Timeout: upstream connect timed out\n")
                assert 0.4 <= time.monotonic() - started < 3
                await roundtrip(healthy)

        run(go(), 15)
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


def test_upstream_never_answers_504(config_proxy):
    """TCP accepted, upgrade request read, no answer: 504 within the service's connect_timeout.

    The config documents connect_timeout as covering "TCP, TLS and the WebSocket
    handshake; on expiry the client gets HTTP 504".
    """
    up = RawUpstream()
    proxy = config_proxy(up.url, service={"connect_timeout": 0.5})

    async def go():
        async with up, healthy_connection(proxy.url + "/healthy") as healthy:
            client = await raw.connect(proxy.port)
            started = time.monotonic()
            await client.send(raw.upgrade_request("/"))
            peer = await up.accept()
            request = await peer.read_request()
            assert request.method == "GET"
            try:
                response = await client.read_response(timeout=3)
            except asyncio.TimeoutError:
                pytest.fail("no answer 3 s after the request although connect_timeout is 0.5 s "
                            "(fastws waits max(connect_timeout, MAX_RESPONSE_WAIT=30 s) for the 101)")
            assert response.status == 504, (response.start_line, response.body)
            assert response.body == b"Gateway Timeout: upstream did not answer the upgrade\n"
            assert time.monotonic() - started < 3
            assert await client.read_until_eof() == b""
            assert await peer.read_until_eof() == b"", "the upstream connection must be dropped"
            await roundtrip(healthy)

    run(go(), 20)


def test_upstream_non_101_relayed(config_proxy):
    up = RawUpstream()
    proxy = config_proxy(up.url)

    async def go():
        async with up, healthy_connection(proxy.url + "/healthy") as healthy:
            client = await raw.connect(proxy.port)
            await client.send(raw.upgrade_request("/"))
            peer = await up.accept()
            await peer.read_request()
            await peer.send(b"HTTP/1.1 403 Forbidden\r\nX-Custom: yes\r\nContent-Type: text/plain\r\n"
                            b"Content-Length: 9\r\n\r\nno entry\n")
            response = await assert_rejected(client, 403, b"no entry\n", X_Custom="yes")
            assert response.start_line == "HTTP/1.1 403 Forbidden"
            assert response.get("Content-Type") == "text/plain"
            assert await peer.read_until_eof() == b""
            await roundtrip(healthy)

    run(go(), 15)


@pytest.mark.parametrize("offer, answer", [
    pytest.param(None, {"protocol": "superchat"}, id="subprotocol-none-offered"),
    pytest.param("chat, v2.chat", {"protocol": "superchat"}, id="subprotocol-not-offered"),
    pytest.param("chat", {"protocol": "chat, v2.chat"}, id="two-subprotocols"),
    pytest.param(None, {"extensions": "permessage-deflate"}, id="extension"),
])
def test_upstream_101_unoffered_502_and_1002(config_proxy, offer, answer):
    up = RawUpstream()
    proxy = config_proxy(up.url)

    async def go():
        async with up, healthy_connection(proxy.url + "/healthy") as healthy:
            client = await raw.connect(proxy.port)
            extra = [("Sec-WebSocket-Protocol", offer)] if offer else []
            await client.send(raw.upgrade_request("/", extra=extra))
            peer, request = await up.accept_upgrade(**answer)
            assert request.get_all("Sec-WebSocket-Protocol") == ([offer] if offer else [])
            assert request.get("Sec-WebSocket-Extensions") is None
            response = await assert_rejected(client, 502, None)
            assert response.body.startswith(b"Bad Gateway: upstream chose"), response.body
            close = await peer.recv_frame()
            assert close.opcode == OP_CLOSE and close.masked, close
            assert close.close_code == 1002, close
            assert await peer.read_until_eof() == b""
            await roundtrip(healthy)

    run(go(), 15)


def test_upstream_wrong_accept_502(config_proxy):
    up = RawUpstream()
    proxy = config_proxy(up.url)

    async def go():
        async with up, healthy_connection(proxy.url + "/healthy") as healthy:
            client = await raw.connect(proxy.port)
            await client.send(raw.upgrade_request("/"))
            peer, _ = await up.accept_upgrade(accept=accept_key(raw.new_key()))
            await assert_rejected(client, 502, b"Bad Gateway: upstream sent a wrong Sec-WebSocket-Accept\n")
            assert await peer.read_until_eof() == b"", "no close frame: the TCP connection is dropped"
            await roundtrip(healthy)

    run(go(), 15)


def test_upstream_closes_during_handshake_502(config_proxy):
    up = RawUpstream()
    proxy = config_proxy(up.url)

    async def go():
        async with up, healthy_connection(proxy.url + "/healthy") as healthy:
            client = await raw.connect(proxy.port)
            await client.send(raw.upgrade_request("/"))
            peer = await up.accept()
            await peer.read_request()
            await peer.send(b"HTTP/1.1 101 Switching Pro")
            peer.close_transport()
            response = await assert_rejected(client, 502, None)
            assert response.body.startswith(b"Bad Gateway"), response.body
            await roundtrip(healthy)

    run(go(), 15)


# ---------------------------------------------------------------------------
# Protocol errors from the client (SPEC §4, §6): offender 1002/1007/1009, upstream 1001


def _frag(n: int, opcode: int, fin: bool) -> bytes:
    return frame(opcode, b"f" * n, fin=fin)


CLIENT_ERRORS = [
    # id, bytes, code, settings, data frames the upstream receives before its 1001 (or allowed counts)
    ("rsv1", frame(OP_TEXT, b"hi", rsv=4), 1002, {}, 0),
    ("rsv2", frame(OP_TEXT, b"hi", rsv=2), 1002, {}, 0),
    ("rsv3", frame(OP_BINARY, b"hi", rsv=1), 1002, {}, 0),
    ("opcode-3", frame(3, b"x"), 1002, {}, 0),
    ("opcode-11", frame(0xB, b"x"), 1002, {}, 0),
    ("unmasked", frame(OP_TEXT, b"hi", mask=False), 1002, {}, 0),
    ("fragmented-ping", frame(OP_PING, b"p", fin=False), 1002, {}, 0),
    ("ping-126-bytes", frame(OP_PING, b"p" * 126), 1002, {}, 0),
    ("continuation-without-message", frame(OP_CONT, b"x"), 1002, {}, 0),
    ("text-inside-fragmented-message", frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"), 1002, {}, 1),
    ("non-minimal-16-bit-length", frame(OP_TEXT, b"hi", length_form="16"), 1002, {}, 0),
    ("non-minimal-64-bit-length", frame(OP_BINARY, b"x" * 200, length_form="64"), 1002, {}, 0),
    ("64-bit-length-msb", frame(OP_BINARY, b"", length=1 << 63, length_form="64"), 1002, {}, 0),
    ("close-1-byte-payload", frame(OP_CLOSE, b"\x03"), 1002, {}, 0),
    ("close-code-1005", close_frame(1005), 1002, {}, 0),
    ("close-code-1006", close_frame(1006), 1002, {}, 0),
    ("close-code-999", close_frame(999), 1002, {}, 0),
    ("close-code-2000", close_frame(2000), 1002, {}, 0),
    ("close-code-5000", close_frame(5000), 1002, {}, 0),
    ("close-reason-bad-utf8", close_frame(1000, b"bye \xff\xfe"), 1007, {"validate_utf8": True}, 0),
    ("text-bad-utf8", frame(OP_TEXT, b"ok \xff\xfe"), 1007, {"validate_utf8": True}, 0),
    ("text-bad-utf8-second-fragment",
     frame(OP_TEXT, b"fine", fin=False) + frame(OP_CONT, b"\xc3\x28"), 1007, {"validate_utf8": True}, 1),
    # Only the FIN shows the last character is cut: the frame may have been relayed whole
    # already (streaming), as long as the 1001 that follows is a frame of its own.
    ("text-truncated-utf8-at-fin", frame(OP_TEXT, b"caf\xc3"), 1007, {"validate_utf8": True}, (0, 1)),
    # Judged from the header: only the header is sent.
    ("over-client-max-payload", frame(OP_BINARY, b"", length=2048), 1009, {"client_max_payload": 1024}, 0),
    ("over-client-max-payload-64-bit", frame(OP_BINARY, b"", length=1 << 40), 1009,
     {"client_max_payload": 1024}, 0),
    ("running-total-over-limit",
     _frag(500, OP_BINARY, False) + _frag(500, OP_CONT, False) + _frag(500, OP_CONT, True), 1009,
     {"client_max_payload": 1024}, 2),
]


@pytest.mark.parametrize("data, code, settings, forwarded",
                         [pytest.param(*case[1:], id=case[0]) for case in CLIENT_ERRORS])
def test_client_protocol_error(config_proxy, data, code, settings, forwarded):
    up = RawUpstream()
    proxy = config_proxy(up.url, **settings)

    async def go():
        async with up, healthy_connection(proxy.url + "/healthy") as healthy:
            await roundtrip(healthy)
            client, peer = await open_pair(proxy, up)
            await client.send(data)

            close = await client.recv_frame()
            assert close.opcode == OP_CLOSE, f"expected a close frame, got {close}"
            assert (close.close_code, close.close_reason) == (code, REASONS[code])
            assert not close.masked
            assert await client.read_until_eof() == b"", "the offender's TCP connection closes after the close"

            frames = []
            while True:
                try:
                    got = await peer.recv_frame()
                except EOFError as exc:
                    pytest.fail(f"the upstream's stream is not a sequence of well-formed frames "
                                f"(a close written inside an unfinished frame?): {exc}")
                if got.opcode == OP_CLOSE:
                    break
                frames.append(got)
            allowed = forwarded if isinstance(forwarded, tuple) else (forwarded,)
            assert len(frames) in allowed, f"before the close the upstream got {frames}"
            assert got.masked and got.payload == GOING_AWAY, f"upstream expected 1001 without reason, got {got}"
            await peer.send_close(1001)
            assert await peer.read_until_eof() == b""
            await roundtrip(healthy)

    run(go(), 15)


def test_running_total_fragments_forwarded_before_limit(config_proxy):
    """The first two 500-byte fragments pass (1000 <= 1024); the third's header trips 1009."""
    up = RawUpstream()
    proxy = config_proxy(up.url, client_max_payload=1024)

    async def go():
        async with up, healthy_connection(proxy.url + "/healthy") as healthy:
            client, peer = await open_pair(proxy, up)
            await client.send(_frag(500, OP_BINARY, False) + _frag(500, OP_CONT, False))
            first = await peer.recv_frame()
            second = await peer.recv_frame()
            assert (first.opcode, first.fin, len(first.payload)) == (OP_BINARY, False, 500)
            assert (second.opcode, second.fin, len(second.payload)) == (OP_CONT, False, 500)
            await client.send(frame(OP_CONT, b"", length=500))      # header only: judged from it
            close = await client.recv_frame()
            assert (close.close_code, close.close_reason) == (1009, b"Payload Too Large")
            up_close = await peer.recv_frame()
            assert up_close.opcode == OP_CLOSE and up_close.payload == GOING_AWAY
            await roundtrip(healthy)

    run(go(), 15)


def test_bad_utf8_passes_through_without_validate_utf8(config_proxy):
    """validate_utf8 off (default) and passthrough: invalid UTF-8 text and close reasons go as they are."""
    up = RawUpstream()
    proxy = config_proxy(up.url)

    async def go():
        async with up, healthy_connection(proxy.url + "/healthy") as healthy:
            client, peer = await open_pair(proxy, up)
            data = frame(OP_TEXT, b"ok \xff\xfe", mask_key=b"\x01\x02\x03\x04")
            await client.send(data)
            got = await peer.recv_frame()
            assert (got.opcode, got.payload, got.masked) == (OP_TEXT, b"ok \xff\xfe", True)
            # Upstream to client, unmasked, the same.
            await peer.send_frame(OP_TEXT, b"\xed\xa0\x80 surrogate")
            back = await client.recv_frame()
            assert (back.opcode, back.payload, back.masked) == (OP_TEXT, b"\xed\xa0\x80 surrogate", False)
            # A close reason that is not UTF-8 is relayed too (only checked with validate_utf8).
            await client.send(close_frame(1000, b"bye \xff"))
            up_close = await peer.recv_frame()
            assert (up_close.close_code, up_close.close_reason) == (1000, b"bye \xff")
            await peer.send_close(1000, b"bye \xff")
            answer = await client.recv_frame()
            assert (answer.close_code, answer.close_reason) == (1000, b"bye \xff")
            assert await client.read_until_eof() == b""
            assert await peer.read_until_eof() == b""
            await roundtrip(healthy)

    run(go(), 15)


def test_passthrough_forwards_client_bytes_unchanged(config_proxy):
    """Sanity for the raw harness: a valid fragmented message arrives byte for byte, masks kept."""
    up = RawUpstream()
    proxy = config_proxy(up.url)

    async def go():
        async with up:
            client, peer = await open_pair(proxy, up)
            data = (frame(OP_TEXT, b"hel", fin=False) + frame(OP_PING, b"in between")
                    + frame(OP_CONT, b"lo", fin=True))
            await client.send(data)
            assert await peer.read_exact(len(data)) == data
            await peer.send_frame(OP_PONG, b"in between")
            pong = await client.recv_frame()
            assert (pong.opcode, pong.payload, pong.masked) == (OP_PONG, b"in between", False)

    run(go(), 15)


# ---------------------------------------------------------------------------
# Protocol errors from the upstream: offender (upstream) 1002/1009, client 1001


@pytest.mark.parametrize("data, code, settings", [
    pytest.param(frame(OP_TEXT, b"masked!", mask=True), 1002, {}, id="masked-frame"),
    pytest.param(frame(OP_BINARY, b"", length=2048, mask=False), 1009, {"upstream_max_payload": 1024},
                 id="over-upstream-max-payload"),
    pytest.param(frame(OP_BINARY, b"u" * 600, fin=False, mask=False)
                 + frame(OP_CONT, b"u" * 600, mask=False), 1009, {"upstream_max_payload": 1024},
                 id="running-total-over-upstream-max-payload"),
    pytest.param(frame(OP_TEXT, b"x", rsv=4, mask=False), 1002, {}, id="rsv1"),
    pytest.param(close_frame(1005, mask=False), 1002, {}, id="close-code-1005"),
])
def test_upstream_protocol_error(config_proxy, data, code, settings):
    up = RawUpstream()
    proxy = config_proxy(up.url, **settings)

    async def go():
        async with up, healthy_connection(proxy.url + "/healthy") as healthy:
            client, peer = await open_pair(proxy, up)
            await peer.send(data)
            close = await peer.recv_close()
            assert close.masked
            assert (close.close_code, close.close_reason) == (code, REASONS[code])
            assert await peer.read_until_eof() == b"", "the offender's TCP connection closes after the close"
            client_close = await client.recv_close()
            assert client_close.payload == GOING_AWAY and not client_close.masked, client_close
            await client.send_close(1001)
            assert await client.read_until_eof() == b""
            await roundtrip(healthy)

    run(go(), 15)


# ---------------------------------------------------------------------------
# TCP drops (SPEC §6): the other side gets 1001


def test_client_tcp_drop_upstream_gets_1001(config_proxy):
    up = RawUpstream()
    proxy = config_proxy(up.url)

    async def go():
        async with up, healthy_connection(proxy.url + "/healthy") as healthy:
            client, peer = await open_pair(proxy, up)
            await client.send(frame(OP_TEXT, b"last words"))
            got = await peer.recv_frame()
            assert got.payload == b"last words"
            client.abort()
            close = await peer.recv_frame()
            assert close.opcode == OP_CLOSE and close.payload == GOING_AWAY and close.masked, close
            await peer.send_close(1001)
            assert await peer.read_until_eof() == b""
            await roundtrip(healthy)

    run(go(), 15)


@pytest.mark.parametrize("how", ["abort", "fin"])
def test_upstream_tcp_drop_client_gets_1001(config_proxy, how):
    up = RawUpstream()
    proxy = config_proxy(up.url)

    async def go():
        async with up, healthy_connection(proxy.url + "/healthy") as healthy:
            client, peer = await open_pair(proxy, up)
            if how == "abort":
                peer.abort()
            else:
                peer.close_transport()
            close = await client.recv_frame()
            assert close.opcode == OP_CLOSE and close.payload == GOING_AWAY and not close.masked, close
            await client.send_close(1001)
            assert await client.read_until_eof() == b""
            await roundtrip(healthy)

    run(go(), 15)


def test_client_drop_during_upstream_handshake(config_proxy):
    """The client leaves while the upstream has not answered: the upstream attempt is dropped."""
    up = RawUpstream()
    proxy = config_proxy(up.url)

    async def go():
        async with up, healthy_connection(proxy.url + "/healthy") as healthy:
            client = await raw.connect(proxy.port)
            await client.send(raw.upgrade_request("/"))
            peer = await up.accept()
            await peer.read_request()
            client.abort()
            try:
                assert await peer.read_until_eof(timeout=3) == b""
            except asyncio.TimeoutError:
                pytest.fail("the client left 3 s ago and the upstream connection is still open")
            await roundtrip(healthy)

    run(go(), 15)


@pytest.mark.parametrize("dropper", ["client", "upstream"])
def test_tcp_drop_mid_frame_does_not_inject_a_close(config_proxy, dropper):
    """A side drops in the middle of a frame relayed in passthrough.

    The other side has received part of that frame; a close frame written now
    would be read as the frame's payload.  Its stream must end as a prefix of
    well-formed frames: no bytes after the partial frame, only the end of TCP.
    """
    up = RawUpstream()
    proxy = config_proxy(up.url, close_timeout=0.5)

    async def go():
        async with up, healthy_connection(proxy.url + "/healthy") as healthy:
            client, peer = await open_pair(proxy, up)
            sender, receiver = (client, peer) if dropper == "client" else (peer, client)
            whole = frame(OP_BINARY, b"z" * 1000, mask=sender.mask)
            part = whole[:len(whole) - 900]            # header and the first 100 payload bytes
            await sender.send(part)
            assert await receiver.read_exact(len(part)) == part
            sender.abort()
            rest = await receiver.read_until_eof(timeout=3)
            assert rest == b"", f"{len(rest)} bytes injected into the unfinished frame: {rest!r}"
            await roundtrip(healthy)

    run(go(), 15)


# ---------------------------------------------------------------------------
# Closing handshake and close_timeout (SPEC §6)


def test_normal_close_relayed(config_proxy):
    up = RawUpstream()
    proxy = config_proxy(up.url)

    async def go():
        async with up:
            client, peer = await open_pair(proxy, up)
            await client.send_close(4000, "done here")
            close = await peer.recv_frame()
            assert (close.close_code, close.close_reason) == (4000, b"done here")
            await peer.send_close(4000, "ok")
            answer = await client.recv_frame()
            assert (answer.close_code, answer.close_reason, answer.masked) == (4000, b"ok", False)
            assert await client.read_until_eof() == b""
            assert await peer.read_until_eof() == b""

    run(go(), 15)


def test_close_timeout_upstream_never_answers(config_proxy):
    """Client closes, upstream stays silent: after close_timeout the upstream is dropped and
    the client's close is answered (its own code echoed)."""
    up = RawUpstream()
    proxy = config_proxy(up.url, close_timeout=0.5)

    async def go():
        async with up, healthy_connection(proxy.url + "/healthy") as healthy:
            client, peer = await open_pair(proxy, up)
            started = time.monotonic()
            await client.send_close(1000, "bye")
            forwarded = await peer.recv_frame()
            assert (forwarded.close_code, forwarded.close_reason) == (1000, b"bye")
            answer = await client.recv_frame(timeout=5)
            elapsed = time.monotonic() - started
            assert answer.opcode == OP_CLOSE and answer.close_code == 1000, answer
            assert 0.4 <= elapsed < 3, elapsed
            assert await client.read_until_eof() == b""
            assert await peer.read_until_eof() == b"", "the silent upstream is dropped"
            await roundtrip(healthy)

    run(go(), 15)


def test_close_timeout_client_never_answers(config_proxy):
    """The upstream drops; the client gets 1001 and never answers: dropped after close_timeout."""
    up = RawUpstream()
    proxy = config_proxy(up.url, close_timeout=0.5)

    async def go():
        async with up, healthy_connection(proxy.url + "/healthy") as healthy:
            client, peer = await open_pair(proxy, up)
            started = time.monotonic()
            peer.abort()
            close = await client.recv_frame()
            assert close.payload == GOING_AWAY
            assert await client.read_until_eof(timeout=5) == b""
            assert 0.4 <= time.monotonic() - started < 3
            await roundtrip(healthy)

    run(go(), 15)
