"""Sans-I/O HTTP/1.1 Upgrade for both sides of the proxy (RFC 6455 §4, RFC 7230).

No sockets, no asyncio: bytes in, objects or bytes out.  The proxy drives it::

    client bytes ──> RequestReader.feed() ──> Request          (reader.leftover: first client frames)
                     validate_upgrade(req)                     (SPEC §3 step 3)
    key = new_key(); build_upstream_request(req, ..., key=key) ──> bytes to the upstream
    upstream bytes ─> ResponseReader.feed() / feed_eof() ──> Response
        101:   check_upstream_response(req, resp, key)
               build_switching_protocols(req, resp) ──> bytes to the client
        other: build_response(resp.status, resp.reason, resp.headers, resp.body) ──> bytes to the client
    any HandshakeError: exc.response() ──> bytes to the client, then close

HTTP is parsed by llhttp (through ``httptools``), never by regular expressions:
request smuggling and header-splitting bugs live in hand-written HTTP parsers.

Exceptions added by this module (the rest of the tree is in :mod:`fastws.errors`)::

    FastWSError
    └── HandshakeError              status, reason, headers; response() renders the HTTP answer
        └── UpstreamHandshakeError  the upstream's answer is unusable (502); close_upstream_code

A handshake error is answered with an HTTP status, not a close code: the
WebSocket connection does not exist yet (RFC 6455 §4.2.2, §4.1 "_Fail the
WebSocket Connection_").  ``reason`` goes to the peer; ``detail`` is for the log
only, as websockets keeps possibly security-sensitive details out of close reasons.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import http
import secrets
from collections.abc import Iterable, Sequence
from urllib.parse import quote, unquote

import httptools

from .errors import FastWSError
from .frames import CloseCode

__all__ = [
    "HandshakeError",
    "UpstreamHandshakeError",
    "Request",
    "RequestReader",
    "Response",
    "ResponseReader",
    "validate_upgrade",
    "accept_key",
    "new_key",
    "build_upstream_request",
    "check_upstream_response",
    "build_switching_protocols",
    "build_response",
    "HOP_BY_HOP",
    "WS_GUID",
]

#: RFC 6455 §1.3: the GUID appended to Sec-WebSocket-Key before hashing.
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: RFC 7230 §6.1: headers meaningful for one connection only, never forwarded.
#: "Trailers" (RFC 2616's spelling) and "Proxy-Connection" (non-standard, still
#: sent by some clients) are dropped too, as Go's httputil.ReverseProxy does.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})

#: Headers fastws writes itself on the upstream request (SPEC §3 "those fastws manages").
#: Content-Length goes too: fastws sends the upstream no body.
_MANAGED_UPSTREAM = frozenset({
    "host", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-accept", "content-length",
})

#: Client-supplied proxy headers that fastws replaces (X-Forwarded-For is appended to instead).
_FORWARDED = frozenset({"x-real-ip"})

_DEFAULT_PORTS = {"ws": 80, "wss": 443}

_HTTP_PREFIX = "Cannot complete WebSocket handshake: "
_BAD_GATEWAY_INVALID = "Bad Gateway: upstream sent an invalid HTTP response"

# RFC 7230 §3.2.6 tchar, for header names we render.
_TCHAR = frozenset(
    "!#$%&'*+-.^_`|~0123456789"
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
# Everything printable in ASCII except space and "#": what may stay as-is in a
# request-target; quote() escapes the rest (RFC 3986 §2.1), keeping existing %XX.
_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "#")


# ---------------------------------------------------------------------------
# Errors


class HandshakeError(FastWSError):
    """The opening handshake failed: answer ``status`` with ``reason`` and close.

    Args:
        status: HTTP status to answer with (400, 426, 431, 502, ...).
        reason: text for the peer, rendered as the body of :meth:`response`.
        headers: extra response headers, e.g. ``("Sec-WebSocket-Version", "13")``
            for a 426 (RFC 6455 §4.4).
        detail: what went wrong, for the log only (principle 9: details that
            may be security-sensitive never go on the wire).
    """

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        detail: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers: list[tuple[str, str]] = list(headers)
        self.detail = detail

    def __reduce__(self):  # keep every attribute across pickling (multiprocessing)
        return (type(self), (self.status, self.reason, self.headers), self.__dict__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.reason!r})"

    def response(self) -> bytes:
        """Render the HTTP/1.1 error response, ``Connection: close`` included.

        Connection tokens from :attr:`headers` (``Upgrade`` for a 426, which
        RFC 7230 §6.7 requires next to an ``Upgrade`` header) are merged with
        ``close`` into one Connection header.
        """
        body = (self.reason + "\n").encode("utf-8")
        connection: list[str] = []
        extra: list[tuple[str, str]] = []
        for name, value in self.headers:
            if name.lower() == "connection":
                connection.extend(_tokens([value]))
            else:
                extra.append((name, value))
        connection.append("close")
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", ", ".join(connection)),
            *extra,
        ]
        return _render(_status_line(self.status, ""), headers) + body


class UpstreamHandshakeError(HandshakeError):
    """The upstream's answer cannot complete the client's handshake (502 to the client).

    ``close_upstream_code`` is the close code to send the upstream, which
    believes the WebSocket is open once it has sent its 101: 1002 when it chose
    a subprotocol or an extension fastws did not offer (SPEC §3, RFC 6455 §4.1
    client requirements 5 and 6), else None (drop the TCP connection).
    """

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        detail: str | None = None,
        close_upstream_code: int | None = None,
    ) -> None:
        super().__init__(status, reason, headers, detail=detail)
        self.close_upstream_code = (
            CloseCode(close_upstream_code) if close_upstream_code is not None else None
        )


# ---------------------------------------------------------------------------
# Header helpers


def _tokens(values: Iterable[str]) -> list[str]:
    """Elements of comma-separated header values, across repeated headers.

    RFC 7230 §7: "a recipient MUST accept empty list elements"; §3.2.2 says
    repeated headers are equivalent to one comma-joined header.
    """
    out = []
    for value in values:
        for item in value.split(","):
            item = item.strip(" \t")
            if item:
                out.append(item)
    return out


class _Headers:
    """Case-insensitive lookups over a list of (name, value) pairs, order kept."""

    headers: list[tuple[str, str]]

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``default``."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in received order."""
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]

    def tokens(self, name: str) -> list[str]:
        """Comma-separated elements of every ``name`` header, stripped (RFC 7230 §7)."""
        return _tokens(self.get_all(name))


def _has_token(values: Iterable[str], token: str) -> bool:
    """Whether ``token`` is one of the list elements, case-insensitively."""
    return any(item.lower() == token for item in _tokens(values))


def _split_host_port(host: str) -> tuple[str, str | None]:
    """Split a Host value (RFC 7230 §5.4, RFC 3986 §3.2.2) into host and port; IPv6 keeps brackets."""
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            rest = host[end + 1:]
            return host[:end + 1], (rest[1:] if rest.startswith(":") else None)
        return host, None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, port
    return host, None


def _status_line(status: int, phrase: str) -> str:
    if not phrase:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}"


def _check_field(name: str, value: str) -> None:
    """Refuse to render a header that would split the message (CR, LF, NUL)."""
    if not name or not set(name) <= _TCHAR:
        raise ValueError(f"invalid header name {name!r} (RFC 7230 §3.2.6: a token)")
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"invalid value for header {name!r}: CR, LF and NUL are not allowed")


def _render(start_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """Serialise a start line and headers; latin-1 round-trips what llhttp gave us."""
    if "\r" in start_line or "\n" in start_line:
        raise ValueError(f"invalid start line {start_line!r}")
    lines = [start_line]
    for name, value in headers:
        _check_field(name, value)
        lines.append(f"{name}: {value}")
    lines.append("")
    lines.append("")
    return "\r\n".join(lines).encode("latin-1")


def _normalize_path(path: str) -> str:
    """Remove dot segments (RFC 3986 §5.2.4) from an absolute, decoded path.

    Routes match by path prefix, so ``/chat/../admin`` must not be seen as
    under ``/chat``; nginx and Kong normalise the same way before matching.
    Repeated slashes are kept.
    """
    segments = path.split("/")
    out: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")  # "/a/b/.." names the directory "/a/"
    return "/" + "/".join(out)


# ---------------------------------------------------------------------------
# Client side: the request


@dataclasses.dataclass(eq=False)
class Request(_Headers):
    """A client's HTTP request head, as received.

    Attributes:
        method: e.g. ``"GET"``.
        target: the raw request-target (RFC 7230 §5.3), query included.
        path: percent-decoded path without the query, dot segments removed:
            what routes match against.
        raw_path: the path as received (still percent-encoded), without the query.
        query: the raw query string without ``?``, or ``""``.
        http_version: ``"1.1"``.
        headers: (name, value) pairs in received order and case; values are
            latin-1 decoded (RFC 7230 §3.2.4 obs-text round-trips), OWS stripped.
        is_upgrade: the request has an Upgrade header and an ``upgrade`` token in
            Connection (RFC 7230 §6.7), as llhttp judges it.
        key: Sec-WebSocket-Key, set by :func:`validate_upgrade`.
        protocols: subprotocols offered in every Sec-WebSocket-Protocol header
            (RFC 6455 §4.1, item 10), in order.
    """

    method: str
    target: str
    path: str
    raw_path: str
    query: str
    http_version: str
    headers: list[tuple[str, str]]
    is_upgrade: bool = False
    key: str | None = None
    protocols: list[str] = dataclasses.field(default_factory=list)
    #: Authority of an absolute-form target (``GET ws://host/ HTTP/1.1``), which
    #: RFC 7230 §5.4 says wins over the Host header.
    target_authority: str | None = None

    @property
    def origin_target(self) -> str:
        """The target in origin form, ``raw_path[?query]``, also for an absolute-form target.

        What a router should match on: ``target`` of ``GET ws://h/chat HTTP/1.1``
        is the whole URL (RFC 7230 §5.3.2).
        """
        return f"{self.raw_path}?{self.query}" if self.query else self.raw_path

    @property
    def host(self) -> str | None:
        """The host the client asked for, with its port if any (RFC 7230 §5.4)."""
        if self.target_authority is not None:
            return self.target_authority
        return self.get("Host")


class _Stop(Exception):
    """Raised inside an httptools callback to make llhttp stop where it is."""


class RequestReader:
    """Incremental parser of one client request head (the handshake).

    Feed it bytes until it returns a :class:`Request`.  It reads the head only:
    a request that is not an upgrade is answered with an error and the
    connection closed, so its body (if any) is never read.

    Args:
        max_header_size: largest header block, request line and final CRLF
            included.  Beyond it: 431.  llhttp never sees more than this many
            bytes before the head is complete.
        max_headers: most header lines.  Beyond it: 431.
    """

    def __init__(self, max_header_size: int = 16384, max_headers: int = 100) -> None:
        self.max_header_size = max_header_size
        self.max_headers = max_headers
        #: Bytes received after the header block: the client's first frames, if
        #: it sent any before the 101.  Only meaningful for an upgrade request.
        self.leftover = b""
        self._parser = httptools.HttpRequestParser(self)
        self._consumed = 0
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._pending: HandshakeError | None = None  # raised inside a callback
        self._error: HandshakeError | None = None  # sticky, principle 11
        self._request: Request | None = None
        self._head_done = False

    # -- httptools callbacks -------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url  # llhttp may report the target in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._headers) >= self.max_headers:
            self._pending = HandshakeError(
                431, "Request Header Fields Too Large",
                detail=f"more than {self.max_headers} headers",
            )
            raise _Stop
        # RFC 7230 §3.2.4: OWS around the value is not part of it; llhttp strips
        # only the leading side.
        self._headers.append((name.decode("latin-1"), value.decode("latin-1").strip(" \t")))

    def on_headers_complete(self) -> None:
        self._head_done = True
        error = self._check_head()
        if error is not None:
            self._pending = error
            raise _Stop
        if not self._parser.should_upgrade():
            # Not an upgrade: llhttp would go on to the body and to pipelined
            # requests, which fastws never serves.  Stop at the end of the head.
            raise _Stop
        # An upgrade: llhttp pauses after this callback and feed_data() raises
        # HttpParserUpgrade with the offset of the first byte after the head.

    # -- public API ----------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> Request | None:
        """Parse more bytes of the request head.

        Returns:
            The :class:`Request` once the header block is complete (later bytes
            are in :attr:`leftover`), else None.

        Raises:
            HandshakeError: 400 for malformed HTTP, a missing or repeated Host
                header, or a body on an upgrade request; 431 when the head is
                over ``max_header_size`` bytes or ``max_headers`` headers.  Once
                raised, every later call raises it again (RFC 6455 §7.1.7 spirit:
                discard input after a failure).
        """
        if self._error is not None:
            raise self._error
        if self._request is not None:
            raise RuntimeError("the request head is complete; read the rest from .leftover")
        data = bytes(data)
        budget = self.max_header_size - self._consumed
        head, tail = data[:budget], data[budget:]
        try:
            self._parser.feed_data(head)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0]
            return self._finish(head[offset:] + tail)
        except httptools.HttpParserError as exc:
            if self._pending is not None:
                raise self._fail(self._pending) from None
            if self._head_done:
                return self._finish(b"")
            raise self._fail(HandshakeError(
                400, f"Bad Request: malformed HTTP request ({exc})", detail=str(exc),
            )) from None
        self._consumed += len(head)
        if self._consumed >= self.max_header_size:
            # The head is not complete within the budget, so it is larger.
            raise self._fail(HandshakeError(
                431, "Request Header Fields Too Large",
                detail=f"header block over {self.max_header_size} bytes",
            ))
        return None

    # -- internals -----------------------------------------------------------

    def _fail(self, error: HandshakeError) -> HandshakeError:
        self._error = error
        return error

    def _check_head(self) -> HandshakeError | None:
        """Checks that must not wait for validate_upgrade(): they decide how to read."""
        lower = [name.lower() for name, _ in self._headers]
        # RFC 7230 §5.4: 400 for an HTTP/1.1 request without Host or with more
        # than one (nginx answers the same).  Routing needs the host.
        hosts = lower.count("host")
        if hosts > 1:
            return HandshakeError(400, "Bad Request: repeated Host header")
        if hosts == 0 and self._parser.get_http_version() == "1.1":
            return HandshakeError(400, "Bad Request: missing Host header")
        # An upgrade request carries no body (RFC 6455 §4.1 gives it none); llhttp
        # would treat body bytes as WebSocket frames, so refuse instead of guessing.
        values = [v for n, v in self._headers]
        attempted = "upgrade" in lower or _has_token(
            [v for n, v in zip(lower, values) if n == "connection"], "upgrade"
        )
        if attempted:
            for name, value in zip(lower, values):
                # "0", "00": no body; llhttp has already checked the digits.
                if name == "transfer-encoding" or (name == "content-length" and value.strip("0")):
                    return HandshakeError(400, _HTTP_PREFIX + "request has a body")
        return None

    def _finish(self, leftover: bytes) -> Request:
        parser = self._parser
        target = self._url.decode("latin-1")
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise self._fail(HandshakeError(400, "Bad Request: invalid request target")) from None
        raw_path = (url.path or b"").decode("latin-1")
        authority = None
        if url.schema is not None:
            # absolute-form (RFC 7230 §5.3.2): the authority replaces Host.
            if url.host is None:
                raise self._fail(HandshakeError(400, "Bad Request: invalid request target"))
            host = url.host.decode("latin-1")
            if ":" in host:
                host = f"[{host}]"
            authority = host if url.port is None else f"{host}:{url.port}"
            raw_path = raw_path or "/"
        if not raw_path.startswith("/"):
            # "*" (asterisk-form) and authority-form have no meaning for GET.
            raise self._fail(HandshakeError(400, "Bad Request: invalid request target"))
        path = _normalize_path(unquote(raw_path, encoding="utf-8", errors="replace"))
        request = Request(
            method=parser.get_method().decode("ascii"),
            target=target,
            path=path,
            raw_path=raw_path,
            query=(url.query or b"").decode("latin-1"),
            http_version=parser.get_http_version(),
            headers=self._headers,
            is_upgrade=parser.should_upgrade(),
            target_authority=authority,
        )
        request.protocols = request.tokens("Sec-WebSocket-Protocol")
        self.leftover = leftover
        self._request = request
        return request


def validate_upgrade(req: Request) -> None:
    """Check a client's opening handshake (RFC 6455 §4.2.1; SPEC §3 step 3).

    Checks, in this order (the first failure wins):

    1. Neither an Upgrade header nor an ``upgrade`` token in Connection: a
       plain HTTP request, whatever its method → 426 with ``Upgrade: websocket``
       (SPEC §2; RFC 7230 §6.7 requires Upgrade in a 426).
    2. Method not GET → 400 (RFC 6455 §4.1 item 2).
    3. HTTP version not 1.1 → 400 (same item: "at least 1.1"; llhttp parses
       HTTP/1.x syntax, so anything else is 1.0 or bogus).
    4. No ``upgrade`` in Connection, no ``websocket`` in Upgrade → 400
       (items 5 and 4; comma lists, case-insensitive, across repeated headers).
    5. Sec-WebSocket-Key missing, repeated, or not 16 bytes in base64 → 400 (item 7).
    6. Sec-WebSocket-Version not exactly 13 → 426 with
       ``Sec-WebSocket-Version: 13`` (item 9 and §4.4).

    On success sets ``req.key`` and ``req.protocols``.

    Raises:
        HandshakeError: 400 texts start ``Cannot complete WebSocket handshake: ``.
    """
    connection = req.get_all("Connection")
    upgrade = req.get_all("Upgrade")
    has_conn_upgrade = _has_token(connection, "upgrade")
    if not upgrade and not has_conn_upgrade:
        raise HandshakeError(
            426, _HTTP_PREFIX + "not a WebSocket request, use a WebSocket client",
            [("Connection", "Upgrade"), ("Upgrade", "websocket")],
        )
    if req.method != "GET":
        raise HandshakeError(400, _HTTP_PREFIX + "method must be GET")
    if req.http_version != "1.1":
        raise HandshakeError(400, _HTTP_PREFIX + "HTTP version must be 1.1")
    if not has_conn_upgrade:
        raise HandshakeError(400, _HTTP_PREFIX + 'no "upgrade" in Connection')
    if not _has_token(upgrade, "websocket"):
        raise HandshakeError(400, _HTTP_PREFIX + 'no "websocket" in Upgrade')
    keys = req.get_all("Sec-WebSocket-Key")
    if not keys:
        raise HandshakeError(400, _HTTP_PREFIX + "Sec-WebSocket-Key missing")
    if len(keys) > 1:
        raise HandshakeError(400, _HTTP_PREFIX + "Sec-WebSocket-Key repeated")
    key = keys[0]
    try:
        raw = base64.b64decode(key.encode("latin-1"), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, _HTTP_PREFIX + "Sec-WebSocket-Key is not 16 bytes in base64")
    if req.tokens("Sec-WebSocket-Version") != ["13"]:
        raise HandshakeError(
            426, _HTTP_PREFIX + "Sec-WebSocket-Version is not 13",
            [("Sec-WebSocket-Version", "13")],
        )
    req.key = key
    req.protocols = req.tokens("Sec-WebSocket-Protocol")


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for ``key``: base64(SHA-1(key + GUID)) (RFC 6455 §4.2.2 item 5.4)."""
    digest = hashlib.sha1((key + WS_GUID).encode("latin-1")).digest()
    return base64.b64encode(digest).decode("ascii")


def new_key() -> str:
    """A fresh Sec-WebSocket-Key: 16 random bytes, base64 (RFC 6455 §4.1 item 7).

    fastws never reuses the client's key upstream: the key proves to fastws
    that the upstream speaks WebSocket, so fastws must be the one choosing it.
    """
    return base64.b64encode(secrets.token_bytes(16)).decode("ascii")


def build_upstream_request(
    req: Request,
    *,
    host: str,
    port: int,
    path: str,
    scheme: str,
    client_ip: str,
    client_port: int,
    tls: bool,
    key: str,
    server_port: int,
) -> bytes:
    """The opening handshake fastws sends the upstream (RFC 6455 §4.1; SPEC §3).

    Headers, in order: Host (the upstream's, port omitted when default for
    ``scheme``), Upgrade, Connection, Sec-WebSocket-Key (``key``: fastws's own,
    see :func:`new_key`), Sec-WebSocket-Version: 13, the client's
    Sec-WebSocket-Protocol headers as received, every other client header in
    received order, then the proxy headers.  Never Sec-WebSocket-Extensions:
    fastws implements no extension, and relaying the client's offer would let
    the upstream compress frames fastws must parse (SPEC §3, STYLE §4).

    Dropped client headers: hop-by-hop ones (RFC 7230 §6.1: :data:`HOP_BY_HOP`
    and every header named in the client's Connection header), those fastws
    manages (Host, Sec-WebSocket-Key/-Version/-Extensions/-Accept,
    Content-Length), and the client's X-Forwarded-* and X-Real-IP.

    Proxy headers, as nginx's and Kong's documented defaults:

    - X-Forwarded-For: the client's values (all headers, comma-joined) with
      ``client_ip`` appended, as nginx's ``$proxy_add_x_forwarded_for``;
    - X-Forwarded-Proto: ``https`` if the client connected over TLS, else
      ``http``.  Kong sends http/https for WebSocket routes too, and upstream
      frameworks (Werkzeug, Starlette's ProxyHeadersMiddleware) expect them;
    - X-Forwarded-Host: the client's Host without its port;
    - X-Forwarded-Port: ``server_port``, the port the client connected to;
    - X-Forwarded-Path: the client's path as received, without the query (Kong);
    - X-Real-IP: ``client_ip``.

    Args:
        req: the validated client request.
        host, port, scheme: the upstream (``scheme`` is ``ws`` or ``wss``).
        path: the upstream request-target in origin form, query included
            (the router's ``Match.upstream_path``: service path + rest of the
            client's path + the client's query), already percent-encoded.
            Bytes that cannot appear in a request-target (space, controls,
            non-ASCII, ``#``) are percent-encoded, so it cannot split the request.
        client_ip, client_port: the client's address.  ``client_port`` is not
            sent (neither nginx nor Kong send it); it is accepted so callers
            pass the whole peer address and a future ``Forwarded`` header
            (RFC 7239) needs no signature change.
        tls: the client connection is TLS.
        key: the Sec-WebSocket-Key to send.
        server_port: the local port the client connected to.

    Raises:
        ValueError: an unknown scheme or a header that would split the request.
    """
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"upstream scheme must be ws or wss, not {scheme!r}")
    if not path.startswith("/"):
        raise ValueError(f"upstream path must be in origin form ('/...'), not {path!r}")
    target = quote(path, safe=_TARGET_SAFE)
    host_header = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if port != _DEFAULT_PORTS[scheme]:
        host_header = f"{host_header}:{port}"

    named = {token.lower() for token in req.tokens("Connection")}
    # Sec-WebSocket-Protocol is end-to-end by design (RFC 6455 §4.1); the
    # client naming it in Connection must not make the upstream's choice
    # unverifiable in check_upstream_response().
    named.discard("sec-websocket-protocol")
    headers: list[tuple[str, str]] = [
        ("Host", host_header),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]
    headers += [(n, v) for n, v in req.headers if n.lower() == "sec-websocket-protocol"]
    for name, value in req.headers:
        lower = name.lower()
        if (
            lower in HOP_BY_HOP
            or lower in named
            or lower in _MANAGED_UPSTREAM
            or lower in _FORWARDED
            or lower.startswith("x-forwarded-")
            or lower == "sec-websocket-protocol"  # already placed above
        ):
            continue
        headers.append((name, value))

    client_host, _ = _split_host_port(req.host or "")
    headers += [
        ("X-Forwarded-For", ", ".join(_tokens(req.get_all("X-Forwarded-For")) + [client_ip])),
        ("X-Forwarded-Proto", "https" if tls else "http"),
        ("X-Forwarded-Host", client_host.lower()),
        ("X-Forwarded-Port", str(server_port)),
        ("X-Forwarded-Path", req.raw_path),
        ("X-Real-IP", client_ip),
    ]
    return _render(f"GET {target} HTTP/1.1", headers)


# ---------------------------------------------------------------------------
# Upstream side: the response


@dataclasses.dataclass(eq=False)
class Response(_Headers):
    """The upstream's answer to the opening handshake.

    Attributes:
        status, reason, http_version: from the status line.
        headers: (name, value) pairs in received order and case, latin-1.
        body: the body of a non-101 answer, at most ``max_body`` bytes.
        truncated: the body was longer than ``max_body``; the rest was dropped.
        leftover: bytes after the header block of a 101: the upstream's first frames.
    """

    status: int
    reason: str
    http_version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    truncated: bool = False
    leftover: bytes = b""


class ResponseReader:
    """Incremental parser of the upstream's answer to fastws's handshake.

    A 101 is complete at the end of its head (RFC 6455 §4.1: the bytes after it
    are frames).  Any other final answer is complete at the end of its body:
    Content-Length, chunked, or, with neither, the end of the connection
    (:meth:`feed_eof`, RFC 7230 §3.3.3 item 7).  Interim 1xx answers (100, 103)
    are skipped, as RFC 7231 §6.2 asks of a client.

    Args:
        max_header_size: largest header block, interim answers included; more → 502
            (nginx answers "upstream sent too big header" the same way).
        max_headers: most header lines in one answer; more → 502.
        max_body: most body bytes kept; the rest is read and dropped, and
            :attr:`Response.truncated` set.
    """

    def __init__(
        self, max_header_size: int = 16384, max_headers: int = 100, max_body: int = 65536
    ) -> None:
        self.max_header_size = max_header_size
        self.max_headers = max_headers
        self.max_body = max_body
        self._parser = httptools.HttpResponseParser(self)
        self._header_bytes = 0
        self._reason = b""
        self._headers: list[tuple[str, str]] = []
        self._body = bytearray()
        self._truncated = False
        self._status = 0
        self._head_done = False  # head of the final (non-1xx) answer complete
        self._done = False  # message complete: stop parsing
        self._pending: UpstreamHandshakeError | None = None
        self._error: UpstreamHandshakeError | None = None
        self._response: Response | None = None

    # -- httptools callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        # A new message after an interim 1xx: forget the interim one.
        self._reason = b""
        self._headers = []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._headers) >= self.max_headers:
            self._pending = self._invalid(f"more than {self.max_headers} headers")
            raise _Stop
        self._headers.append((name.decode("latin-1"), value.decode("latin-1").strip(" \t")))

    def on_headers_complete(self) -> None:
        status = self._status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # interim: llhttp moves on to the next message by itself
        self._head_done = True
        if status == 101 and not self._parser.should_upgrade():
            # llhttp pauses on any 101 but only reports the offset when Upgrade
            # and Connection: upgrade are present.  Without them the handshake
            # fails in check_upstream_response() anyway; the frames do not matter.
            self._done = True
            raise _Stop

    def on_body(self, body: bytes) -> None:
        room = self.max_body - len(self._body)
        if len(body) > room:
            self._truncated = True
            body = body[:max(room, 0)]
        self._body += body

    def on_message_complete(self) -> None:
        if self._status == 101 or not self._head_done:
            return  # 101: HttpParserUpgrade follows; 1xx: the final answer follows
        self._done = True
        raise _Stop  # do not parse what follows (a pipelined answer, garbage)

    # -- public API ----------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> Response | None:
        """Parse more of the upstream's answer.

        Returns:
            The :class:`Response` once complete (see the class docstring), else None.

        Raises:
            UpstreamHandshakeError: 502 ``Bad Gateway: upstream sent an invalid
                HTTP response`` (details in ``.detail``); sticky once raised.
        """
        if self._error is not None:
            raise self._error
        if self._response is not None:
            raise RuntimeError("the response is complete")
        data = bytes(data)
        while data:
            if self._head_done:
                piece, data = data, b""
            else:
                budget = self.max_header_size - self._header_bytes
                piece, data = data[:budget], data[budget:]
            try:
                self._parser.feed_data(piece)
            except httptools.HttpParserUpgrade as exc:
                return self._finish(piece[exc.args[0]:] + data)
            except httptools.HttpParserError as exc:
                if self._pending is not None:
                    raise self._fail(self._pending) from None
                if self._done:
                    return self._finish(b"")
                raise self._fail(self._invalid(str(exc))) from None
            if not self._head_done:
                self._header_bytes += len(piece)
                if self._header_bytes >= self.max_header_size:
                    raise self._fail(self._invalid(f"header block over {self.max_header_size} bytes"))
        return None

    def feed_eof(self) -> Response:
        """The upstream closed the connection: finish a body delimited by EOF.

        Returns:
            The :class:`Response` (the same object if :meth:`feed` already returned it).

        Raises:
            UpstreamHandshakeError: 502 when the head is incomplete, or the body
                was delimited by Content-Length or chunked and is incomplete.
        """
        if self._error is not None:
            raise self._error
        if self._response is not None:
            return self._response
        if not self._head_done:
            raise self._fail(self._invalid("connection closed before the end of the response head"))
        te = _tokens(v for n, v in self._headers if n.lower() == "transfer-encoding")
        chunked = bool(te) and te[-1].lower() == "chunked"
        has_length = not te and any(n.lower() == "content-length" for n, _ in self._headers)
        if chunked or has_length:
            raise self._fail(self._invalid("connection closed before the end of the body"))
        return self._finish(b"")

    # -- internals -----------------------------------------------------------

    @staticmethod
    def _invalid(detail: str) -> UpstreamHandshakeError:
        return UpstreamHandshakeError(502, _BAD_GATEWAY_INVALID, detail=detail)

    def _fail(self, error: UpstreamHandshakeError) -> UpstreamHandshakeError:
        self._error = error
        return error

    def _finish(self, leftover: bytes) -> Response:
        response = Response(
            status=self._status,
            reason=self._reason.decode("latin-1"),
            http_version=self._parser.get_http_version(),
            headers=self._headers,
            body=bytes(self._body),
            truncated=self._truncated,
            leftover=leftover,
        )
        self._response = response
        return response


def check_upstream_response(req: Request, resp: Response, key: str) -> None:
    """Check the upstream's 101 as a WebSocket client must (RFC 6455 §4.1, client items 2-6).

    Checks, in order: ``websocket`` in Upgrade, ``upgrade`` in Connection,
    exactly one Sec-WebSocket-Accept equal to ``accept_key(key)``, at most one
    subprotocol and one the client offered, no Sec-WebSocket-Extensions at all
    (fastws offers none upstream).

    Args:
        req: the client's request (its Sec-WebSocket-Protocol headers went
            upstream unchanged, so they are the offer).
        resp: the upstream's 101.
        key: the Sec-WebSocket-Key fastws sent the upstream.

    Raises:
        UpstreamHandshakeError: status 502; ``close_upstream_code`` 1002 for
            the subprotocol and extension cases (SPEC §3), else None.
        ValueError: ``resp`` is not a 101; relay other answers with
            :func:`build_response` instead.
    """
    if resp.status != 101:
        raise ValueError(f"check_upstream_response() takes a 101, not a {resp.status}")
    if not _has_token(resp.get_all("Upgrade"), "websocket"):
        raise UpstreamHandshakeError(502, 'Bad Gateway: upstream 101 has no "websocket" in Upgrade')
    if not _has_token(resp.get_all("Connection"), "upgrade"):
        raise UpstreamHandshakeError(502, 'Bad Gateway: upstream 101 has no "upgrade" in Connection')
    accepts = resp.get_all("Sec-WebSocket-Accept")
    if not accepts:
        raise UpstreamHandshakeError(502, "Bad Gateway: upstream 101 has no Sec-WebSocket-Accept")
    if len(accepts) > 1 or accepts[0] != accept_key(key):
        raise UpstreamHandshakeError(
            502, "Bad Gateway: upstream sent a wrong Sec-WebSocket-Accept",
            detail=f"got {accepts!r}, expected {accept_key(key)!r}",
        )
    chosen = resp.tokens("Sec-WebSocket-Protocol")
    if len(chosen) > 1:
        raise UpstreamHandshakeError(
            502, "Bad Gateway: upstream chose more than one subprotocol",
            detail=f"upstream chose {chosen!r}", close_upstream_code=CloseCode.PROTOCOL_ERROR,
        )
    offered = req.tokens("Sec-WebSocket-Protocol")
    if chosen and chosen[0] not in offered:  # tokens compare case-sensitively (RFC 6455 §4.1)
        raise UpstreamHandshakeError(
            502, "Bad Gateway: upstream chose a subprotocol the client did not offer",
            detail=f"upstream chose {chosen[0]!r}, client offered {offered!r}",
            close_upstream_code=CloseCode.PROTOCOL_ERROR,
        )
    extensions = resp.tokens("Sec-WebSocket-Extensions")
    if extensions:
        raise UpstreamHandshakeError(
            502, "Bad Gateway: upstream chose an extension that was not offered",
            detail=f"upstream chose {extensions!r}", close_upstream_code=CloseCode.PROTOCOL_ERROR,
        )


#: Response headers never relayed from the upstream's 101: fastws writes the
#: handshake headers itself, and a 101 has no body to describe.
_NOT_RELAYED_101 = frozenset({"content-length", "content-type", "content-encoding"})


def _relayable(headers: Sequence[tuple[str, str]], drop: frozenset[str]) -> list[tuple[str, str]]:
    """``headers`` minus hop-by-hop ones (RFC 7230 §6.1, including those named in Connection)."""
    named = {token.lower() for token in _tokens(v for n, v in headers if n.lower() == "connection")}
    return [
        (name, value) for name, value in headers
        if (lower := name.lower()) not in HOP_BY_HOP and lower not in named and lower not in drop
    ]


def build_switching_protocols(
    req: Request,
    resp: Response | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """The 101 fastws sends the client (RFC 6455 §4.2.2 item 5).

    Headers: Upgrade, Connection, Sec-WebSocket-Accept for the client's key,
    Sec-WebSocket-Protocol if the upstream chose one (already checked by
    :func:`check_upstream_response`), then the upstream's other headers
    (Set-Cookie, Date, Server, custom ones), then ``extra_headers``.

    Not relayed from the upstream: hop-by-hop headers (RFC 7230 §6.1), every
    Sec-WebSocket-* header (the accept belongs to fastws's key, and fastws
    grants no extension to the client), and Content-Length/-Type/-Encoding
    (a 101 has no body).  Date and Server pass through, as Kong relays them.

    Args:
        req: the client request, after :func:`validate_upgrade` (``req.key`` set).
        resp: the upstream's 101, or None when fastws answers by itself.
        extra_headers: added last (e.g. by plugins).

    Raises:
        ValueError: ``req.key`` is unset, or a header would split the response.
    """
    if req.key is None:
        raise ValueError("validate_upgrade() must run before build_switching_protocols()")
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(req.key)),
    ]
    if resp is not None:
        chosen = resp.tokens("Sec-WebSocket-Protocol")
        if chosen:
            headers.append(("Sec-WebSocket-Protocol", chosen[0]))
        headers += [
            (name, value) for name, value in _relayable(resp.headers, _NOT_RELAYED_101)
            if not name.lower().startswith("sec-websocket-")
        ]
    headers += list(extra_headers)
    return _render("HTTP/1.1 101 Switching Protocols", headers)


def build_response(
    status: int,
    reason_phrase: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
) -> bytes:
    """A final HTTP response to the client, then the connection closes.

    Used to relay an upstream's non-101 answer (SPEC §3 step 4) and for plugin
    rejections.  Hop-by-hop headers (RFC 7230 §6.1, including those named in
    Connection) and Content-Length are dropped; the body is re-framed with a
    fresh Content-Length (a chunked upstream body arrives de-chunked) and
    ``Connection: close`` is added, since fastws serves one request per connection.
    204 and 304 carry neither body nor Content-Length (RFC 7230 §3.3.2, §3.3.3).

    Args:
        status: 200-599.
        reason_phrase: the upstream's phrase; empty means the standard one.
        headers: (name, value) pairs, e.g. ``Response.headers``.
        body: the body, e.g. ``Response.body`` (possibly truncated).

    Raises:
        ValueError: ``status`` is not a final status, or a header would split the response.
    """
    if not 200 <= status <= 999:
        raise ValueError(f"build_response() takes a final status (200-999), not {status}")
    out = _relayable(list(headers), frozenset({"content-length"}))
    if status in (204, 304):
        body = b""
    else:
        out.append(("Content-Length", str(len(body))))
    out.append(("Connection", "close"))
    return _render(_status_line(status, reason_phrase), out) + body
