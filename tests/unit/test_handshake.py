"""fastws.handshake against RFC 6455 §4 and RFC 7230, with real peers and no sockets.

Handshakes are produced and checked by the sans-I/O halves of real libraries:
``websockets`` (ClientProtocol / ServerProtocol), ``wsproto`` (WSConnection) and,
upstream side only, aiohttp's server handshake logic.  aiohttp's *client* builds
its request inside ``ClientSession.ws_connect`` on a live connection, so it is
not covered here; tests/integration drives it over loopback.

Test classes carry the section they check, as websockets' tests do.
"""

from __future__ import annotations

import base64
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastws import handshake as hs
from fastws.errors import FastWSError
from fastws.frames import CloseCode
from fastws.handshake import (
    HandshakeError, Request, RequestReader, Response, ResponseReader, UpstreamHandshakeError,
    accept_key, build_response, build_switching_protocols, build_upstream_request,
    check_upstream_response, new_key, validate_upgrade,
)

websockets_client = pytest.importorskip("websockets.client")
websockets_server = pytest.importorskip("websockets.server")
from websockets.extensions.permessage_deflate import (  # noqa: E402
    ClientPerMessageDeflateFactory, ServerPerMessageDeflateFactory,
)
from websockets.exceptions import InvalidStatus  # noqa: E402
from websockets.protocol import State  # noqa: E402
from websockets.uri import parse_uri  # noqa: E402
from wsproto import ConnectionType, WSConnection  # noqa: E402
from wsproto import events as wsevents  # noqa: E402
from wsproto.extensions import PerMessageDeflate  # noqa: E402

PREFIX = "Cannot complete WebSocket handshake: "
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # RFC 6455 §5.7: masked "Hello"
UNMASKED_FRAME = b"\x81\x05Hello"

GOOD = (
    b"GET /chat?room=1 HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + RFC_KEY.encode() + b"\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


# ---------------------------------------------------------------------------
# helpers


def websockets_request(uri: str = "ws://example.com/chat", **kwargs) -> tuple[object, bytes]:
    """A websockets sans-I/O client and the handshake bytes it sends."""
    client = websockets_client.ClientProtocol(parse_uri(uri), **kwargs)
    client.send_request(client.connect())
    return client, b"".join(client.data_to_send())


def wsproto_request(**kwargs) -> tuple[WSConnection, bytes]:
    """A wsproto client and the handshake bytes it sends."""
    client = WSConnection(ConnectionType.CLIENT)
    data = client.send(wsevents.Request(host="example.com", target="/chat", **kwargs))
    return client, data


def read_request(data: bytes, **kwargs) -> Request:
    reader = RequestReader(**kwargs)
    request = reader.feed(data)
    assert request is not None
    return request


def request_with(*lines: str, method: str = "GET", target: str = "/chat", version: str = "1.1") -> Request:
    """A request head made of the given header lines (no validation yet)."""
    head = f"{method} {target} HTTP/{version}\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n"
    return read_request(head.encode("latin-1"))


VALID_LINES = (
    "Host: example.com",
    "Upgrade: websocket",
    "Connection: Upgrade",
    f"Sec-WebSocket-Key: {RFC_KEY}",
    "Sec-WebSocket-Version: 13",
)


def without(name: str, *extra: str) -> tuple[str, ...]:
    return tuple(line for line in VALID_LINES if not line.lower().startswith(name.lower() + ":")) + extra


def upstream_request(req: Request, *, key: str = RFC_KEY, **kwargs) -> bytes:
    args = dict(host="backend", port=9000, path="/ws", scheme="ws", client_ip="203.0.113.7",
                client_port=50000, tls=False, key=key, server_port=8000)
    args.update(kwargs)
    return build_upstream_request(req, **args)


def read_response(data: bytes, **kwargs) -> Response:
    reader = ResponseReader(**kwargs)
    response = reader.feed(data)
    assert response is not None
    return response


def response_101(key: str, *lines: str) -> Response:
    head = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n"
    )
    return read_response(head.encode("latin-1"))


def websockets_upstream(request_bytes: bytes, **kwargs) -> bytes:
    """What a websockets server answers to ``request_bytes``."""
    server = websockets_server.ServerProtocol(**kwargs)
    server.receive_data(request_bytes)
    [request] = server.events_received()
    server.send_response(server.accept(request))
    assert server.handshake_exc is None, server.handshake_exc
    return b"".join(server.data_to_send())


def header_names(headers) -> list[str]:
    return [name.lower() for name, _ in headers]


# ---------------------------------------------------------------------------
# real clients, end to end


class TestRealClients:
    """RFC 6455 §4.1/§4.2: what real clients send is accepted, and they accept our 101."""

    @pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate-offered"])
    def test_websockets_client_direct_101(self, deflate):
        extensions = [ClientPerMessageDeflateFactory()] if deflate else None
        client, data = websockets_request("ws://example.com:8000/chat?x=1", extensions=extensions)
        reader = RequestReader()
        req = reader.feed(data)
        validate_upgrade(req)
        assert (req.method, req.path, req.query, req.host) == ("GET", "/chat", "x=1", "example.com:8000")
        assert req.is_upgrade and reader.leftover == b""
        client.receive_data(build_switching_protocols(req))
        [event] = client.events_received()
        assert event.status_code == 101
        assert client.handshake_exc is None
        assert client.state is State.OPEN

    def test_websockets_client_subprotocol_through_upstream(self):
        client, data = websockets_request(subprotocols=["chat", "superchat"])
        req = read_request(data)
        validate_upgrade(req)
        assert req.protocols == ["chat", "superchat"]
        key = new_key()
        to_upstream = upstream_request(req, key=key)
        answer = websockets_upstream(to_upstream, subprotocols=["superchat"])
        resp = read_response(answer)
        check_upstream_response(req, resp, key)
        client.receive_data(build_switching_protocols(req, resp))
        client.events_received()
        assert client.handshake_exc is None
        assert client.subprotocol == "superchat"

    @pytest.mark.parametrize("extensions", [[], [PerMessageDeflate()]], ids=["plain", "deflate-offered"])
    def test_wsproto_client(self, extensions):
        client, data = wsproto_request(subprotocols=["chat"], extensions=extensions)
        req = read_request(data)
        validate_upgrade(req)
        key = new_key()
        resp = read_response(websockets_upstream(upstream_request(req, key=key), subprotocols=["chat"]))
        check_upstream_response(req, resp, key)
        client.receive_data(build_switching_protocols(req, resp))
        [event] = list(client.events())
        assert isinstance(event, wsevents.AcceptConnection)
        assert event.subprotocol == "chat"
        assert event.extensions == []

    def test_websockets_client_accepts_relayed_rejection(self):
        client, data = websockets_request()
        req = read_request(data)
        validate_upgrade(req)
        upstream = read_response(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n0\r\n\r\n")
        client.receive_data(build_response(upstream.status, upstream.reason, upstream.headers, upstream.body))
        client.events_received()
        assert isinstance(client.handshake_exc, InvalidStatus)
        assert client.handshake_exc.response.status_code == 403
        assert bytes(client.handshake_exc.response.body) == b"nope"

    def test_websockets_client_reads_handshake_error(self):
        client, _ = websockets_request()
        client.receive_data(HandshakeError(400, PREFIX + "method must be GET").response())
        client.events_received()
        assert isinstance(client.handshake_exc, InvalidStatus)
        assert client.handshake_exc.response.status_code == 400
        assert bytes(client.handshake_exc.response.body) == (PREFIX + "method must be GET\n").encode()


# ---------------------------------------------------------------------------
# RequestReader


class TestRequestReader:
    """Reading the client's request head incrementally with llhttp (RFC 7230 §3)."""

    def test_fields(self):
        req = read_request(GOOD)
        assert req.method == "GET"
        assert req.target == "/chat?room=1"
        assert (req.path, req.raw_path, req.query) == ("/chat", "/chat", "room=1")
        assert req.http_version == "1.1"
        assert req.host == "server.example.com"
        assert req.is_upgrade is True
        assert req.key is None  # set by validate_upgrade()
        assert req.protocols == ["chat", "superchat"]
        assert req.headers[0] == ("Host", "server.example.com")
        assert header_names(req.headers) == [
            "host", "upgrade", "connection", "sec-websocket-key", "origin",
            "sec-websocket-protocol", "sec-websocket-version",
        ]

    def test_headers_keep_case_order_and_repeats(self):
        req = request_with("Host: h", "X-A: 1", "x-a:   2  ", "COOKIE: c=1", "X-Empty:")
        assert req.headers[1:] == [("X-A", "1"), ("x-a", "2"), ("COOKIE", "c=1"), ("X-Empty", "")]
        assert req.get("x-A") == "1"
        assert req.get_all("X-A") == ["1", "2"]
        assert req.get("cookie") == "c=1"
        assert req.get("missing") is None and req.get("missing", "d") == "d"
        assert req.get_all("missing") == []

    def test_latin1_values_round_trip(self):
        req = read_request(b"GET / HTTP/1.1\r\nHost: h\r\nX-Name: caf\xe9\r\n\r\n")
        assert req.get("X-Name") == "caf\xe9"

    def test_one_byte_at_a_time(self):
        reader = RequestReader()
        data = GOOD + FRAME
        for i in range(len(GOOD) - 1):
            assert reader.feed(data[i:i + 1]) is None
        req = reader.feed(data[len(GOOD) - 1:len(GOOD)])
        assert req is not None and req.target == "/chat?room=1"
        assert reader.leftover == b""
        with pytest.raises(RuntimeError):
            reader.feed(FRAME)

    def test_leftover_kept(self):
        reader = RequestReader()
        req = reader.feed(GOOD + FRAME + FRAME)
        assert req is not None
        assert reader.leftover == FRAME + FRAME

    def test_leftover_kept_when_head_ends_in_a_later_chunk(self):
        reader = RequestReader()
        assert reader.feed(GOOD[:50]) is None
        assert reader.feed(GOOD[50:] + FRAME) is not None
        assert reader.leftover == FRAME

    @given(st.lists(st.integers(min_value=0, max_value=len(GOOD) + len(FRAME)), max_size=8))
    def test_any_split(self, cuts):
        data = GOOD + FRAME
        bounds = [0, *sorted(cuts), len(data)]
        reader = RequestReader()
        result, extra = None, b""
        for start, end in zip(bounds, bounds[1:]):
            if result is None:
                result = reader.feed(data[start:end])
            else:
                extra += data[start:end]  # what the proxy keeps after completion
        assert result is not None
        assert result.headers == read_request(GOOD).headers
        assert reader.leftover + extra == FRAME

    def test_plain_request_completes_at_head_and_ignores_the_rest(self):
        reader = RequestReader()
        req = reader.feed(b"GET /chat HTTP/1.1\r\nHost: h\r\n\r\nGARBAGE THAT IS NOT HTTP\r\n\r\n")
        assert req is not None and req.is_upgrade is False
        assert reader.leftover == b""

    def test_plain_post_body_is_not_read(self):
        req = read_request(b"POST /chat HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n")
        assert req.method == "POST"

    def test_absolute_form_target(self):
        # RFC 7230 §5.4: the authority in the target wins over Host.
        req = read_request(b"GET ws://real.example:81/a/b?q HTTP/1.1\r\nHost: other\r\n\r\n")
        assert (req.host, req.path, req.query) == ("real.example:81", "/a/b", "q")
        assert (req.target, req.origin_target) == ("ws://real.example:81/a/b?q", "/a/b?q")
        assert read_request(GOOD).origin_target == "/chat?room=1"
        assert read_request(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").origin_target == "/x"

    @pytest.mark.parametrize("target, path, raw_path", [
        ("/a%20b/c", "/a b/c", "/a%20b/c"),
        ("/chat/../admin", "/admin", "/chat/../admin"),
        ("/chat/%2e%2e/admin", "/admin", "/chat/%2e%2e/admin"),
        ("/a/./b/", "/a/b/", "/a/./b/"),
        ("/a/b/..", "/a/", "/a/b/.."),
        ("/../..", "/", "/../.."),
        ("//double", "//double", "//double"),
        ("/caf%C3%A9", "/caf\xe9", "/caf%C3%A9"),
    ])
    def test_path_decoded_and_normalized(self, target, path, raw_path):
        req = read_request(f"GET {target} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        assert (req.path, req.raw_path, req.target) == (path, raw_path, target)

    def test_empty_query(self):
        assert read_request(b"GET /a? HTTP/1.1\r\nHost: h\r\n\r\n").query == ""


class TestRequestReaderErrors:
    """400 / 431 from the reader, before validation (RFC 7230 §3.2.5, §5.4; RFC 6585 §5)."""

    @pytest.mark.parametrize("data", [
        b"GET /chat HTTP/1.1\nHost: h\n\n",
        b"GET /chat HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on the plain port
        b"GET /chat HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET /chat HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
    ])
    def test_malformed_is_400(self, data):
        with pytest.raises(HandshakeError) as info:
            RequestReader().feed(data)
        assert info.value.status == 400
        assert info.value.reason.startswith("Bad Request: malformed HTTP request (")
        assert info.value.detail

    @pytest.mark.parametrize("target", ["*", "example.com:443"])
    def test_unusable_target_is_400(self, target):
        with pytest.raises(HandshakeError) as info:
            RequestReader().feed(f"GET {target} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        assert info.value.status == 400 and info.value.reason.startswith("Bad Request:")

    def test_missing_host(self):
        with pytest.raises(HandshakeError) as info:
            RequestReader().feed(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")
        assert (info.value.status, info.value.reason) == (400, "Bad Request: missing Host header")

    def test_repeated_host(self):
        with pytest.raises(HandshakeError) as info:
            RequestReader().feed(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        assert (info.value.status, info.value.reason) == (400, "Bad Request: repeated Host header")

    @pytest.mark.parametrize("line", ["Content-Length: 5", "Transfer-Encoding: chunked"])
    @pytest.mark.parametrize("upgrade_lines", [
        ("Upgrade: websocket", "Connection: Upgrade"),
        ("Upgrade: websocket",),
        ("Connection: Upgrade",),
    ], ids=["full", "upgrade-only", "connection-only"])
    def test_body_on_upgrade_is_400(self, line, upgrade_lines):
        lines = "".join(x + "\r\n" for x in (*upgrade_lines, line))
        head = "GET /chat HTTP/1.1\r\nHost: h\r\n" + lines + "\r\n"
        with pytest.raises(HandshakeError) as info:
            RequestReader().feed(head.encode() + b"hello")
        assert (info.value.status, info.value.reason) == (400, PREFIX + "request has a body")

    def test_content_length_zero_is_fine(self):
        req = request_with(*VALID_LINES, "Content-Length: 0")
        validate_upgrade(req)

    def test_error_is_sticky(self):
        reader = RequestReader()
        with pytest.raises(HandshakeError) as first:
            reader.feed(b"BREW /pot HTCPCP/1.0\r\n")
        with pytest.raises(HandshakeError) as second:
            reader.feed(GOOD)
        assert second.value is first.value


class TestHeaderLimits:
    """431 Request Header Fields Too Large (RFC 6585 §5): at the limit passes, one over fails."""

    @staticmethod
    def head_of_size(size: int) -> bytes:
        base = GOOD[:-2] + b"X-Pad: \r\n\r\n"
        pad = size - len(base)
        assert pad >= 0
        return GOOD[:-2] + b"X-Pad: " + b"p" * pad + b"\r\n\r\n"

    @pytest.mark.parametrize("chunk", [None, 1, 7, 1000], ids=["whole", "bytewise", "7", "1000"])
    def test_size_exactly_at_limit_passes(self, chunk):
        data = self.head_of_size(1024)
        assert len(data) == 1024
        reader = RequestReader(max_header_size=1024)
        result = None
        step = chunk or len(data)
        for i in range(0, len(data), step):
            assert result is None
            result = reader.feed(data[i:i + step] + (FRAME if i + step >= len(data) else b""))
        assert result is not None and reader.leftover == FRAME

    @pytest.mark.parametrize("chunk", [None, 1, 7, 1000], ids=["whole", "bytewise", "7", "1000"])
    def test_size_one_over_fails(self, chunk):
        data = self.head_of_size(1025)
        reader = RequestReader(max_header_size=1024)
        step = chunk or len(data)
        with pytest.raises(HandshakeError) as info:
            for i in range(0, len(data), step):
                reader.feed(data[i:i + step])
        assert (info.value.status, info.value.reason) == (431, "Request Header Fields Too Large")

    def test_size_fails_without_reading_more(self):
        # 1 MiB of header in one chunk: rejected as soon as the budget is spent.
        reader = RequestReader(max_header_size=1024)
        with pytest.raises(HandshakeError) as info:
            reader.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * (1 << 20))
        assert info.value.status == 431

    def test_size_fails_on_an_endless_head_fed_bytewise(self):
        reader = RequestReader(max_header_size=64)
        data = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 20
        with pytest.raises(HandshakeError):
            for i in range(len(data)):
                reader.feed(data[i:i + 1])
        assert i == 63  # the 64th byte spent the budget

    def test_header_count_at_limit_passes(self):
        lines = VALID_LINES + tuple(f"X-{i}: v" for i in range(10 - len(VALID_LINES)))
        head = ("GET / HTTP/1.1\r\n" + "".join(x + "\r\n" for x in lines) + "\r\n").encode()
        req = read_request(head, max_headers=10)
        assert len(req.headers) == 10

    def test_header_count_one_over_fails(self):
        lines = VALID_LINES + tuple(f"X-{i}: v" for i in range(11 - len(VALID_LINES)))
        head = ("GET / HTTP/1.1\r\n" + "".join(x + "\r\n" for x in lines) + "\r\n").encode()
        with pytest.raises(HandshakeError) as info:
            RequestReader(max_headers=10).feed(head)
        assert (info.value.status, info.value.reason) == (431, "Request Header Fields Too Large")

    def test_header_count_fails_before_the_head_ends(self):
        reader = RequestReader(max_headers=3)
        with pytest.raises(HandshakeError) as info:
            reader.feed(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 5)  # no final CRLF yet
        assert info.value.status == 431


# ---------------------------------------------------------------------------
# validate_upgrade


class TestValidateUpgrade:
    """RFC 6455 §4.2.1 / SPEC §3 step 3: every failure with its exact status, text and headers."""

    @pytest.mark.parametrize("lines, kwargs, status, reason, headers", [
        # Plain HTTP: neither Upgrade nor an upgrade token (SPEC §2) -> 426, any method.
        (("Host: h",), {}, 426, "not a WebSocket request, use a WebSocket client",
         [("Connection", "Upgrade"), ("Upgrade", "websocket")]),
        (("Host: h", "Connection: keep-alive"), {"method": "POST"}, 426,
         "not a WebSocket request, use a WebSocket client",
         [("Connection", "Upgrade"), ("Upgrade", "websocket")]),
        (VALID_LINES, {"method": "POST"}, 400, "method must be GET", []),
        (VALID_LINES, {"method": "HEAD"}, 400, "method must be GET", []),
        (VALID_LINES, {"version": "1.0"}, 400, "HTTP version must be 1.1", []),
        (without("Connection"), {}, 400, 'no "upgrade" in Connection', []),
        (without("Connection", "Connection: keep-alive"), {}, 400, 'no "upgrade" in Connection', []),
        (without("Connection", "Connection: upgraded"), {}, 400, 'no "upgrade" in Connection', []),
        (without("Upgrade"), {}, 400, 'no "websocket" in Upgrade', []),
        (without("Upgrade", "Upgrade: h2c"), {}, 400, 'no "websocket" in Upgrade', []),
        (without("Upgrade", "Upgrade: websockets"), {}, 400, 'no "websocket" in Upgrade', []),
        (without("Sec-WebSocket-Key"), {}, 400, "Sec-WebSocket-Key missing", []),
        (VALID_LINES + (f"Sec-WebSocket-Key: {RFC_KEY}",), {}, 400, "Sec-WebSocket-Key repeated", []),
        (without("Sec-WebSocket-Key", "Sec-WebSocket-Key: not base64!"), {}, 400,
         "Sec-WebSocket-Key is not 16 bytes in base64", []),
        (without("Sec-WebSocket-Key", "Sec-WebSocket-Key: " + base64.b64encode(b"x" * 15).decode()), {},
         400, "Sec-WebSocket-Key is not 16 bytes in base64", []),
        (without("Sec-WebSocket-Key", "Sec-WebSocket-Key: " + base64.b64encode(b"x" * 17).decode()), {},
         400, "Sec-WebSocket-Key is not 16 bytes in base64", []),
        (without("Sec-WebSocket-Key", "Sec-WebSocket-Key: " + RFC_KEY.rstrip("=")), {},
         400, "Sec-WebSocket-Key is not 16 bytes in base64", []),
        (without("Sec-WebSocket-Key", f"Sec-WebSocket-Key: {RFC_KEY}, {RFC_KEY}"), {},
         400, "Sec-WebSocket-Key is not 16 bytes in base64", []),
        (without("Sec-WebSocket-Key", "Sec-WebSocket-Key:"), {},
         400, "Sec-WebSocket-Key is not 16 bytes in base64", []),
        (without("Sec-WebSocket-Version"), {}, 426, "Sec-WebSocket-Version is not 13",
         [("Sec-WebSocket-Version", "13")]),
        (without("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8"), {}, 426,
         "Sec-WebSocket-Version is not 13", [("Sec-WebSocket-Version", "13")]),
        (without("Sec-WebSocket-Version", "Sec-WebSocket-Version: 13, 8"), {}, 426,
         "Sec-WebSocket-Version is not 13", [("Sec-WebSocket-Version", "13")]),
        (VALID_LINES + ("Sec-WebSocket-Version: 13",), {}, 426,
         "Sec-WebSocket-Version is not 13", [("Sec-WebSocket-Version", "13")]),
    ], ids=lambda v: v if isinstance(v, str) else None)
    def test_failures(self, lines, kwargs, status, reason, headers):
        req = request_with(*lines, **kwargs)
        with pytest.raises(HandshakeError) as info:
            validate_upgrade(req)
        assert info.value.status == status
        assert info.value.reason == PREFIX + reason
        assert info.value.headers == headers
        assert req.key is None

    def test_order_method_before_connection(self):
        with pytest.raises(HandshakeError, match="method must be GET"):
            validate_upgrade(request_with("Host: h", "Upgrade: websocket", method="PUT"))

    def test_order_connection_before_upgrade(self):
        with pytest.raises(HandshakeError, match='no "upgrade" in Connection'):
            validate_upgrade(request_with("Host: h", "Upgrade: h2c"))

    def test_order_key_before_version(self):
        with pytest.raises(HandshakeError, match="Key missing"):
            validate_upgrade(request_with(*without("Sec-WebSocket-Key", "Sec-WebSocket-Version: 8")[:-2]))

    @pytest.mark.parametrize("lines", [
        VALID_LINES,
        without("Connection", "Connection: keep-alive, Upgrade"),  # Firefox
        without("Connection", "Connection: keep-alive", "Connection: UPGRADE"),
        without("Connection", "Connection: ,upgrade,"),
        without("Upgrade", "Upgrade: WebSocket"),
        without("Upgrade", "Upgrade: h2c, websocket"),
    ])
    def test_accepted_variants(self, lines):
        req = request_with(*lines)
        validate_upgrade(req)
        assert req.key == RFC_KEY

    def test_sets_key_and_protocols(self):
        req = request_with(*VALID_LINES, "Sec-WebSocket-Protocol: a, b", "Sec-WebSocket-Protocol:  c ,")
        validate_upgrade(req)
        assert req.key == RFC_KEY
        assert req.protocols == ["a", "b", "c"]


class TestHandshakeError:
    """The HTTP answer to a failed handshake."""

    def test_is_a_fastws_error(self):
        assert issubclass(HandshakeError, FastWSError)
        assert issubclass(UpstreamHandshakeError, HandshakeError)

    def test_response_bytes(self):
        exc = HandshakeError(400, PREFIX + "method must be GET")
        body = (PREFIX + "method must be GET\n").encode()
        assert exc.response() == (
            b"HTTP/1.1 400 Bad Request\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + body
        )

    def test_426_merges_connection(self):
        req = request_with("Host: h")
        with pytest.raises(HandshakeError) as info:
            validate_upgrade(req)
        resp = read_response(info.value.response())
        assert resp.status == 426 and resp.reason == "Upgrade Required"
        assert resp.get_all("Connection") == ["Upgrade, close"]
        assert resp.get("Upgrade") == "websocket"
        assert resp.body == (info.value.reason + "\n").encode()

    def test_version_426_header(self):
        resp = read_response(HandshakeError(426, "x", [("Sec-WebSocket-Version", "13")]).response())
        assert resp.get("Sec-WebSocket-Version") == "13"

    def test_431_and_unknown_status_phrases(self):
        assert HandshakeError(431, "x").response().startswith(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        assert HandshakeError(599, "x").response().startswith(b"HTTP/1.1 599 Unknown\r\n")

    def test_utf8_body(self):
        resp = read_response(HandshakeError(400, "caf\xe9").response())
        assert resp.body == "caf\xe9\n".encode()
        assert resp.get("Content-Length") == str(len(resp.body))

    def test_pickle_keeps_attributes(self):
        exc = UpstreamHandshakeError(502, "r", [("A", "b")], detail="d", close_upstream_code=1002)
        copy = pickle.loads(pickle.dumps(exc))
        assert (copy.status, copy.reason, copy.headers, copy.detail, copy.close_upstream_code) == (
            502, "r", [("A", "b")], "d", CloseCode.PROTOCOL_ERROR)
        assert str(copy) == "r"


# ---------------------------------------------------------------------------
# keys


class TestKeys:
    """RFC 6455 §4.1 item 7 and §4.2.2 item 5.4."""

    def test_accept_key_rfc_example(self):
        assert accept_key(RFC_KEY) == RFC_ACCEPT

    def test_new_key(self):
        keys = {new_key() for _ in range(20)}
        assert len(keys) == 20
        for key in keys:
            assert len(key) == 24
            assert len(base64.b64decode(key, validate=True)) == 16

    def test_new_key_passes_validation(self):
        validate_upgrade(request_with(*without("Sec-WebSocket-Key", f"Sec-WebSocket-Key: {new_key()}")))


# ---------------------------------------------------------------------------
# build_upstream_request


class TestUpstreamRequest:
    """SPEC §3 headers paragraph; RFC 7230 §6.1 hop-by-hop; nginx/Kong forwarding headers."""

    CLIENT = (
        b"GET /chat/room?x=1&y=2 HTTP/1.1\r\n"
        b"Host: Chat.Example.com:8443\r\n"
        b"User-Agent: test/1\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: keep-alive, Upgrade, X-Hop\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"X-Hop: secret\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"TE: trailers\r\n"
        b"Sec-WebSocket-Key: " + RFC_KEY.encode() + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        b"Sec-WebSocket-Protocol: chat, superchat\r\n"
        b"Sec-WebSocket-Protocol: v2\r\n"
        b"Cookie: session=abc\r\n"
        b"Origin: https://chat.example.com\r\n"
        b"X-Forwarded-For: 198.51.100.1\r\n"
        b"x-forwarded-for: 198.51.100.2, 10.0.0.1\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: evil\r\n"
        b"X-Forwarded-Port: 1\r\n"
        b"X-Forwarded-Path: /evil\r\n"
        b"X-Forwarded-Prefix: /evil\r\n"
        b"X-Real-IP: 6.6.6.6\r\n"
        b"Authorization: Bearer t\r\n"
        b"\r\n"
    )

    def build(self, **kwargs) -> tuple[Request, bytes, Request]:
        req = read_request(self.CLIENT)
        validate_upgrade(req)
        data = upstream_request(req, **kwargs)
        return req, data, read_request(data)

    def test_request_line_and_managed_headers(self):
        key = new_key()
        _, data, out = self.build(key=key, path="/ws/room?x=1&y=2")
        assert data.startswith(b"GET /ws/room?x=1&y=2 HTTP/1.1\r\nHost: backend:9000\r\n"
                               b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
        assert out.get_all("Sec-WebSocket-Key") == [key]
        assert out.get_all("Sec-WebSocket-Version") == ["13"]
        assert out.get_all("Host") == ["backend:9000"]
        assert out.get_all("Connection") == ["Upgrade"]
        assert out.get_all("Upgrade") == ["websocket"]
        validate_upgrade(out)

    def test_client_key_is_not_reused(self):
        _, _, out = self.build(key=new_key())
        assert RFC_KEY not in out.get_all("Sec-WebSocket-Key")

    def test_no_extensions_offered(self):
        _, _, out = self.build()
        assert out.get_all("Sec-WebSocket-Extensions") == []

    def test_subprotocols_pass_as_received(self):
        _, _, out = self.build()
        assert out.get_all("Sec-WebSocket-Protocol") == ["chat, superchat", "v2"]

    def test_hop_by_hop_removed(self):
        _, _, out = self.build()
        names = header_names(out.headers)
        for name in ("keep-alive", "x-hop", "proxy-authorization", "te"):
            assert name not in names

    def test_end_to_end_headers_kept_in_order(self):
        _, _, out = self.build()
        kept = [(n, v) for n, v in out.headers
                if n.lower() in ("user-agent", "cookie", "origin", "authorization")]
        assert kept == [("User-Agent", "test/1"), ("Cookie", "session=abc"),
                        ("Origin", "https://chat.example.com"), ("Authorization", "Bearer t")]

    def test_forwarded_headers(self):
        _, _, out = self.build(client_ip="203.0.113.7", tls=True, server_port=8443)
        assert out.get_all("X-Forwarded-For") == ["198.51.100.1, 198.51.100.2, 10.0.0.1, 203.0.113.7"]
        assert out.get_all("X-Forwarded-Proto") == ["https"]
        assert out.get_all("X-Forwarded-Host") == ["chat.example.com"]
        assert out.get_all("X-Forwarded-Port") == ["8443"]
        assert out.get_all("X-Forwarded-Path") == ["/chat/room"]
        assert out.get_all("X-Real-IP") == ["203.0.113.7"]
        assert out.get_all("X-Forwarded-Prefix") == []

    def test_forwarded_without_client_xff(self):
        req = read_request(GOOD)
        validate_upgrade(req)
        out = read_request(upstream_request(req, client_ip="127.0.0.1", tls=False))
        assert out.get_all("X-Forwarded-For") == ["127.0.0.1"]
        assert out.get_all("X-Forwarded-Proto") == ["http"]
        assert out.get_all("X-Forwarded-Host") == ["server.example.com"]

    @pytest.mark.parametrize("host, port, scheme, expected", [
        ("backend", 80, "ws", "backend"),
        ("backend", 443, "wss", "backend"),
        ("backend", 443, "ws", "backend:443"),
        ("backend", 80, "wss", "backend:80"),
        ("::1", 9000, "ws", "[::1]:9000"),
        ("::1", 80, "ws", "[::1]"),
        ("[::1]", 81, "ws", "[::1]:81"),
    ])
    def test_host_header(self, host, port, scheme, expected):
        req = read_request(GOOD)
        validate_upgrade(req)
        out = read_request(upstream_request(req, host=host, port=port, scheme=scheme))
        assert out.get_all("Host") == [expected]

    def test_ipv6_client_host(self):
        req = request_with("Host: [2001:db8::1]:8000", *VALID_LINES[1:])
        validate_upgrade(req)
        out = read_request(upstream_request(req, client_ip="2001:db8::2"))
        assert out.get("X-Forwarded-Host") == "[2001:db8::1]"
        assert out.get("X-Forwarded-For") == "2001:db8::2"

    @pytest.mark.parametrize("path, target", [
        ("/ws", "/ws"),  # the caller (router) decides about the query
        ("/ws?token=a&room=1", "/ws?token=a&room=1"),
        ("/a b/é?q=é", "/a%20b/%C3%A9?q=%C3%A9"),
        ("/already%20encoded", "/already%20encoded"),
        ("/x#frag", "/x%23frag"),
        ("/x\r\nX-Evil: 1", "/x%0D%0AX-Evil:%201"),
    ])
    def test_path_used_as_target(self, path, target):
        req = read_request(GOOD)
        validate_upgrade(req)
        assert read_request(upstream_request(req, path=path)).target == target

    def test_connection_cannot_hide_subprotocol(self):
        req = request_with(*without("Connection", "Connection: Upgrade, Sec-WebSocket-Protocol"),
                           "Sec-WebSocket-Protocol: chat")
        validate_upgrade(req)
        assert read_request(upstream_request(req)).get_all("Sec-WebSocket-Protocol") == ["chat"]

    @pytest.mark.parametrize("kwargs", [
        {"scheme": "http"}, {"path": "ws"}, {"host": "a\r\nX: y"}, {"key": "k\r\n"},
        {"client_ip": "1.2.3.4\r\nX-Evil: 1"},
    ])
    def test_invalid_arguments(self, kwargs):
        req = read_request(GOOD)
        validate_upgrade(req)
        with pytest.raises(ValueError):
            upstream_request(req, **kwargs)

    def test_real_upstreams_accept_it(self):
        """websockets' and wsproto's servers complete the handshake fastws starts."""
        req = read_request(self.CLIENT)
        validate_upgrade(req)
        key = new_key()
        data = upstream_request(req, key=key)
        resp = read_response(websockets_upstream(
            data, subprotocols=["v2"], extensions=[ServerPerMessageDeflateFactory()]))
        check_upstream_response(req, resp, key)
        assert resp.get("Sec-WebSocket-Protocol") == "v2"
        assert resp.get("Sec-WebSocket-Extensions") is None  # nothing offered, nothing chosen

        server = WSConnection(ConnectionType.SERVER)
        server.receive_data(data)
        [event] = list(server.events())
        assert isinstance(event, wsevents.Request)
        assert event.subprotocols == ["chat", "superchat", "v2"]
        assert event.extensions == []
        resp = read_response(server.send(wsevents.AcceptConnection(subprotocol="chat")))
        check_upstream_response(req, resp, key)

    def test_aiohttp_server_handshake_accepts_it(self):
        """aiohttp's server handshake logic, fed by aiohttp's own HTTP parser."""
        from unittest import mock
        http_parser = pytest.importorskip("aiohttp.http_parser")
        from aiohttp.test_utils import make_mocked_request
        from aiohttp.web_ws import WebSocketResponse
        if not hasattr(WebSocketResponse, "_handshake"):
            pytest.skip("aiohttp's private WebSocketResponse._handshake moved")
        req = read_request(GOOD)
        validate_upgrade(req)
        key = new_key()
        parser = http_parser.HttpRequestParserPy(mock.Mock(), mock.Mock(), 2 ** 16)
        messages, upgraded, _ = parser.feed_data(upstream_request(req, key=key))
        message = messages[0][0]
        assert upgraded and message.upgrade
        headers, protocol, compress, _ = WebSocketResponse(protocols=("superchat",))._handshake(
            make_mocked_request(message.method, message.path, headers=message.headers))
        assert (protocol, compress) == ("superchat", 0)
        answer = "HTTP/1.1 101 Switching Protocols\r\n" + "".join(
            f"{n}: {v}\r\n" for n, v in headers.items()) + "\r\n"
        check_upstream_response(req, read_response(answer.encode()), key)


# ---------------------------------------------------------------------------
# ResponseReader


class TestResponseReader:
    """The upstream's answer.

    A 101 ends at its head (RFC 6455 §4.1), any other answer at the end of its
    body (RFC 7230 §3.3.3).
    """

    HEAD_101 = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + RFC_ACCEPT.encode() + b"\r\n\r\n"
    )

    def test_101_with_leftover(self):
        reader = ResponseReader()
        resp = reader.feed(self.HEAD_101 + UNMASKED_FRAME)
        assert (resp.status, resp.reason, resp.http_version) == (101, "Switching Protocols", "1.1")
        assert resp.leftover == UNMASKED_FRAME
        assert resp.body == b""
        assert resp.get("sec-websocket-accept") == RFC_ACCEPT

    def test_101_one_byte_at_a_time(self):
        reader = ResponseReader()
        data = self.HEAD_101
        for i in range(len(data) - 1):
            assert reader.feed(data[i:i + 1]) is None
        resp = reader.feed(data[-1:] + UNMASKED_FRAME)
        assert resp.status == 101 and resp.leftover == UNMASKED_FRAME

    @given(st.lists(st.integers(min_value=0, max_value=len(HEAD_101) + 7), max_size=6))
    def test_101_any_split(self, cuts):
        data = self.HEAD_101 + UNMASKED_FRAME
        bounds = [0, *sorted(cuts), len(data)]
        reader = ResponseReader()
        result, extra = None, b""
        for start, end in zip(bounds, bounds[1:]):
            if result is None:
                result = reader.feed(data[start:end])
            else:
                extra += data[start:end]
        assert result is not None and result.leftover + extra == UNMASKED_FRAME

    def test_interim_responses_skipped(self):
        resp = read_response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                             + self.HEAD_101 + UNMASKED_FRAME)
        assert resp.status == 101 and resp.get("Link") is None
        assert resp.leftover == UNMASKED_FRAME

    def test_101_without_upgrade_headers_is_returned_then_rejected(self):
        resp = read_response(b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + UNMASKED_FRAME)
        assert resp.status == 101
        with pytest.raises(UpstreamHandshakeError):
            check_upstream_response(read_request(GOOD), resp, RFC_KEY)

    def test_content_length_body(self):
        reader = ResponseReader()
        head = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\nX-Why: token\r\n\r\n"
        assert reader.feed(head + b"forb") is None
        resp = reader.feed(b"idden" + b"HTTP/1.1 200 OK\r\n\r\n")  # trailing bytes ignored
        assert (resp.status, resp.reason, resp.body) == (403, "Forbidden", b"forbidden")
        assert resp.truncated is False
        assert resp.headers == [("Content-Length", "9"), ("X-Why", "token")]

    def test_chunked_body(self):
        resp = read_response(b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        assert resp.body == b"hello world"

    def test_body_until_eof(self):
        reader = ResponseReader()
        assert reader.feed(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno ") is None
        assert reader.feed(b"such route") is None
        resp = reader.feed_eof()
        assert (resp.status, resp.body) == (404, b"no such route")
        assert reader.feed_eof() is resp

    def test_no_body_statuses_complete_at_head(self):
        assert read_response(b"HTTP/1.1 204 No Content\r\n\r\n").body == b""
        assert read_response(b"HTTP/1.1 304 Not Modified\r\n\r\n").status == 304

    @pytest.mark.parametrize("data, eof", [
        (b"HTTP/1.1 413 Too Large\r\nContent-Length: 100\r\n\r\n" + b"x" * 100, False),
        (b"HTTP/1.1 413 Too Large\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"32\r\n" + b"x" * 50 + b"\r\n32\r\n" + b"x" * 50 + b"\r\n0\r\n\r\n", False),
        (b"HTTP/1.1 413 Too Large\r\n\r\n" + b"x" * 100, True),
    ], ids=["length", "chunked", "eof"])
    def test_body_over_max_truncated(self, data, eof):
        reader = ResponseReader(max_body=10)
        resp = reader.feed(data)
        if eof:
            assert resp is None
            resp = reader.feed_eof()
        assert (resp.body, resp.truncated) == (b"x" * 10, True)

    def test_body_exactly_max_is_not_truncated(self):
        resp = read_response(b"HTTP/1.1 400 Bad\r\nContent-Length: 10\r\n\r\n" + b"y" * 10, max_body=10)
        assert (resp.body, resp.truncated) == (b"y" * 10, False)

    @pytest.mark.parametrize("data", [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 abc Nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ], ids=["ssh", "status", "length", "chunk-size"])
    def test_invalid_is_502(self, data):
        with pytest.raises(UpstreamHandshakeError) as info:
            ResponseReader().feed(data)
        assert info.value.status == 502
        assert info.value.reason == "Bad Gateway: upstream sent an invalid HTTP response"
        assert info.value.detail and info.value.close_upstream_code is None

    @pytest.mark.parametrize("data", [
        b"",
        b"HTTP/1.1 101 Switching",
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    ], ids=["nothing", "partial-head", "short-length", "unfinished-chunked"])
    def test_eof_too_early_is_502(self, data):
        reader = ResponseReader()
        assert reader.feed(data) is None
        with pytest.raises(UpstreamHandshakeError) as info:
            reader.feed_eof()
        assert info.value.status == 502

    def test_header_block_limit(self):
        head = b"HTTP/1.1 101 Switching Protocols\r\nX: " + b"a" * 100 + b"\r\n\r\n"
        assert read_response(head, max_header_size=len(head)).status == 101
        with pytest.raises(UpstreamHandshakeError) as info:
            ResponseReader(max_header_size=len(head) - 1).feed(head)
        assert info.value.status == 502

    def test_header_limit_does_not_apply_to_the_body(self):
        head = b"HTTP/1.1 404 Not Found\r\nContent-Length: 1000\r\n\r\n"
        reader = ResponseReader(max_header_size=len(head), max_body=2000)
        resp = reader.feed(head + b"z" * 1000)
        assert len(resp.body) == 1000

    def test_header_count_limit(self):
        head = b"HTTP/1.1 204 No Content\r\n" + b"X: y\r\n" * 4 + b"\r\n"
        assert len(read_response(head, max_headers=4).headers) == 4
        with pytest.raises(UpstreamHandshakeError):
            ResponseReader(max_headers=3).feed(head)

    def test_error_is_sticky(self):
        reader = ResponseReader()
        with pytest.raises(UpstreamHandshakeError) as first:
            reader.feed(b"garbage\r\n\r\n")
        with pytest.raises(UpstreamHandshakeError) as second:
            reader.feed(self.HEAD_101)
        assert second.value is first.value


# ---------------------------------------------------------------------------
# check_upstream_response


class TestCheckUpstreamResponse:
    """RFC 6455 §4.1, the client's checks of the server's answer; SPEC §3 step 4."""

    def req(self, *protocol_lines: str) -> Request:
        req = request_with(*VALID_LINES, *protocol_lines)
        validate_upgrade(req)
        return req

    def test_good(self):
        key = new_key()
        check_upstream_response(self.req("Sec-WebSocket-Protocol: a, b"), response_101(
            key, "Sec-WebSocket-Protocol: b", "Set-Cookie: s=1"), key)
        check_upstream_response(self.req(), response_101(key), key)

    def raises(self, req, resp, key, reason, code=None):
        with pytest.raises(UpstreamHandshakeError) as info:
            check_upstream_response(req, resp, key)
        assert info.value.status == 502
        assert info.value.reason == "Bad Gateway: " + reason
        assert info.value.close_upstream_code == code
        return info.value

    def test_wrong_accept(self):
        # The upstream answered the client's key, not fastws's: the classic key-reuse bug.
        exc = self.raises(self.req(), response_101(RFC_KEY), new_key(),
                          "upstream sent a wrong Sec-WebSocket-Accept")
        assert RFC_ACCEPT in exc.detail

    def test_missing_accept(self):
        resp = read_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\n\r\n")
        self.raises(self.req(), resp, RFC_KEY, "upstream 101 has no Sec-WebSocket-Accept")

    def test_repeated_accept(self):
        resp = response_101(RFC_KEY, f"Sec-WebSocket-Accept: {RFC_ACCEPT}")
        self.raises(self.req(), resp, RFC_KEY, "upstream sent a wrong Sec-WebSocket-Accept")

    def test_missing_upgrade(self):
        resp = read_response(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Accept: " + RFC_ACCEPT.encode() + b"\r\n\r\n")
        self.raises(self.req(), resp, RFC_KEY, 'upstream 101 has no "websocket" in Upgrade')

    def test_wrong_upgrade(self):
        resp = read_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Accept: " + RFC_ACCEPT.encode() + b"\r\n\r\n")
        self.raises(self.req(), resp, RFC_KEY, 'upstream 101 has no "websocket" in Upgrade')

    def test_missing_connection(self):
        resp = read_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Sec-WebSocket-Accept: " + RFC_ACCEPT.encode() + b"\r\n\r\n")
        self.raises(self.req(), resp, RFC_KEY, 'upstream 101 has no "upgrade" in Connection')

    def test_unoffered_subprotocol(self):
        exc = self.raises(self.req("Sec-WebSocket-Protocol: chat"),
                          response_101(RFC_KEY, "Sec-WebSocket-Protocol: Chat"), RFC_KEY,
                          "upstream chose a subprotocol the client did not offer", 1002)
        assert "'Chat'" in exc.detail

    def test_subprotocol_when_none_offered(self):
        self.raises(self.req(), response_101(RFC_KEY, "Sec-WebSocket-Protocol: chat"), RFC_KEY,
                    "upstream chose a subprotocol the client did not offer", 1002)

    @pytest.mark.parametrize("lines", [
        ("Sec-WebSocket-Protocol: a, b",),
        ("Sec-WebSocket-Protocol: a", "Sec-WebSocket-Protocol: b"),
    ])
    def test_more_than_one_subprotocol(self, lines):
        self.raises(self.req("Sec-WebSocket-Protocol: a, b"), response_101(RFC_KEY, *lines), RFC_KEY,
                    "upstream chose more than one subprotocol", 1002)

    @pytest.mark.parametrize("value", ["permessage-deflate", "x-webkit-deflate-frame", "foo; bar=1"])
    def test_any_extension(self, value):
        # Even one the client offered: fastws offered none upstream.
        req = self.req("Sec-WebSocket-Extensions: permessage-deflate")
        exc = self.raises(req, response_101(RFC_KEY, f"Sec-WebSocket-Extensions: {value}"), RFC_KEY,
                          "upstream chose an extension that was not offered", 1002)
        assert exc.close_upstream_code is CloseCode.PROTOCOL_ERROR

    def test_non_101_is_a_caller_error(self):
        with pytest.raises(ValueError):
            ok = read_response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            check_upstream_response(self.req(), ok, RFC_KEY)


# ---------------------------------------------------------------------------
# build_switching_protocols / build_response


class TestSwitchingProtocols:
    """The 101 to the client (RFC 6455 §4.2.2 item 5)."""

    def test_minimal(self):
        req = read_request(GOOD)
        validate_upgrade(req)
        assert build_switching_protocols(req) == (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + RFC_ACCEPT.encode() + b"\r\n\r\n"
        )

    def test_relays_safe_upstream_headers(self):
        req = read_request(GOOD)
        validate_upgrade(req)
        key = new_key()
        upstream = response_101(
            key, "Sec-WebSocket-Protocol: superchat", "Set-Cookie: a=1", "Set-Cookie: b=2",
            "Sec-WebSocket-Extensions: permessage-deflate", "Sec-WebSocket-Version: 13",
            "Keep-Alive: timeout=5", "Connection: X-Private", "X-Private: 1",
            "Content-Length: 0", "Date: Mon, 01 Jan 2024 00:00:00 GMT", "Server: up/1",
        )
        out = read_response(build_switching_protocols(req, upstream, [("X-Plugin", "yes")]))
        assert out.status == 101
        assert out.headers == [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", RFC_ACCEPT),  # the client's key, not fastws's
            ("Sec-WebSocket-Protocol", "superchat"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("Server", "up/1"),
            ("X-Plugin", "yes"),
        ]

    def test_needs_validation_first(self):
        with pytest.raises(ValueError):
            build_switching_protocols(read_request(GOOD))

    def test_rejects_header_injection(self):
        req = read_request(GOOD)
        validate_upgrade(req)
        with pytest.raises(ValueError):
            build_switching_protocols(req, extra_headers=[("X", "a\r\nSet-Cookie: evil")])
        with pytest.raises(ValueError):
            build_switching_protocols(req, extra_headers=[("Bad Name", "v")])


class TestBuildResponse:
    """Relaying a non-101 answer (SPEC §3 step 4) and plugin rejections."""

    def test_relay_content_length(self):
        upstream = read_response(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n"
                                 b"Content-Length: 6\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
                                 b"Keep-Alive: timeout=5\r\n\r\ndenied")
        data = build_response(upstream.status, upstream.reason, upstream.headers, upstream.body)
        assert data == (b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n"
                        b"Content-Length: 6\r\nConnection: close\r\n\r\ndenied")

    def test_relay_chunked_is_reframed(self):
        upstream = read_response(b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After: 5\r\n\r\n"
                                 b"3\r\nbus\r\n1\r\ny\r\n0\r\n\r\n")
        out = read_response(build_response(upstream.status, upstream.reason, upstream.headers, upstream.body))
        assert (out.status, out.reason, out.body) == (503, "Busy", b"busy")
        assert out.headers == [("Retry-After", "5"), ("Content-Length", "4"), ("Connection", "close")]

    def test_truncated_body_gets_its_own_length(self):
        upstream = read_response(b"HTTP/1.1 500 Oops\r\nContent-Length: 100\r\n\r\n" + b"e" * 100,
                                 max_body=10)
        out = read_response(build_response(upstream.status, upstream.reason, upstream.headers, upstream.body))
        assert out.get_all("Content-Length") == ["10"] and out.body == b"e" * 10

    def test_plugin_rejection_default_phrase(self):
        data = build_response(403, "", [("Content-Type", "text/plain")], b"no\n")
        assert data.startswith(b"HTTP/1.1 403 Forbidden\r\n")

    @pytest.mark.parametrize("status", [204, 304])
    def test_no_body_statuses(self, status):
        data = build_response(status, "", [("Content-Length", "5")], b"ignored")
        assert b"Content-Length" not in data and data.endswith(b"Connection: close\r\n\r\n")

    @pytest.mark.parametrize("status", [101, 100, 99])
    def test_non_final_status_is_a_caller_error(self, status):
        with pytest.raises(ValueError):
            build_response(status, "", [], b"")

    def test_rejects_header_injection(self):
        with pytest.raises(ValueError):
            build_response(403, "Forbidden\r\nX-Evil: 1", [], b"")
        with pytest.raises(ValueError):
            build_response(403, "", [("X", "a\nb")], b"")


class TestOnlyDocumentedExceptions:
    """Arbitrary input raises HandshakeError or nothing (websockets' fuzzing/ harness rule)."""

    @given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
    def test_request_reader(self, tail, chunk):
        data = GOOD[: len(tail) % len(GOOD)] + tail
        reader = RequestReader(max_header_size=256, max_headers=8)
        try:
            for i in range(0, len(data), chunk):
                if reader.feed(data[i:i + chunk]) is not None:
                    break
        except HandshakeError as exc:
            assert exc.status in (400, 431)
            exc.response()

    @given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
    def test_response_reader(self, tail, chunk):
        head = TestResponseReader.HEAD_101
        data = head[: len(tail) % len(head)] + tail
        reader = ResponseReader(max_header_size=256, max_headers=8, max_body=16)
        try:
            for i in range(0, len(data), chunk):
                if reader.feed(data[i:i + chunk]) is not None:
                    break
            else:
                reader.feed_eof()
        except UpstreamHandshakeError as exc:
            assert exc.status == 502


def test_module_exports():
    for name in hs.__all__:
        assert hasattr(hs, name), name
