"""Raw-socket WebSocket peers for integration tests: say exactly the bytes a test wants.

Two kinds of peer share one class, :class:`RawPeer` (a buffered asyncio stream):

* a client, from :func:`connect`: send a handshake written by hand
  (:func:`upgrade_request`), read the HTTP answer (:meth:`RawPeer.read_response`),
  then send raw frame bytes (:func:`frame`, malformed ones included) and read what
  comes back (:meth:`RawPeer.recv_frame`, :meth:`RawPeer.recv_close`);
* an upstream connection, from :class:`RawUpstream`: read the proxy's upgrade
  request (:meth:`RawPeer.read_request`), answer whatever the test wants
  (:meth:`RawPeer.send_101` with a correct or wrong accept, chosen subprotocol or
  extension headers, or any bytes at all, or nothing), then frames as above.

Frames are built and decoded here by hand, not with ``fastws.codec``: a test
that used the codec under test to read the proxy's output could not see a codec
bug, and the decoder reports what is on the wire as it is (mask bit, RSV bits,
invalid close codes) instead of refusing it.

Everything is bounded: every read takes a timeout (``asyncio.TimeoutError`` when
nothing came), and EOF is reported, never waited for forever.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from dataclasses import dataclass

from fastws.handshake import accept_key

__all__ = [
    "OP_CONT", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG",
    "Frame", "HttpHead", "RawPeer", "RawUpstream",
    "frame", "close_frame", "mask_payload", "new_key", "upgrade_request", "connect",
]

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

DEFAULT_TIMEOUT = 5.0


# ---------------------------------------------------------------------------
# Frames


def mask_payload(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` (RFC 6455 §5.3)."""
    if not payload:
        return b""
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    mask_key: bytes | None = None,
    length: int | None = None,
    length_form: str | None = None,
) -> bytes:
    """One frame's bytes, possibly malformed on purpose.

    Args:
        opcode: any 4-bit value (3 is reserved: a test wants to send it).
        payload: the unmasked payload.
        fin: the FIN bit.
        rsv: the three RSV bits as a number 0..7 (4 = RSV1).
        mask: set the MASK bit and mask the payload (clients must, servers must not).
        mask_key: the 4-byte key (default: random).
        length: the length written in the header (default ``len(payload)``);
            the payload bytes sent are still ``payload``: to announce a length
            and send only the header, pass ``payload=b""`` and ``length=N``.
        length_form: ``"7"``, ``"16"`` or ``"64"`` to force the length encoding
            (a non-minimal one, for instance); default the minimal one.
    """
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    if length_form is None:
        length_form = "7" if n < 126 else "16" if n < 0x10000 else "64"
    mbit = 0x80 if mask else 0
    if length_form == "7":
        header = bytes([b0, mbit | n])
    elif length_form == "16":
        header = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    elif length_form == "64":
        header = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    else:
        raise ValueError(f"length_form must be '7', '16' or '64', not {length_form!r}")
    if mask:
        key = mask_key if mask_key is not None else os.urandom(4)
        return header + key + mask_payload(payload, key)
    return header + payload


def close_frame(code: int | None = 1000, reason: bytes | str = b"", *, mask: bool = True) -> bytes:
    """A close frame; ``code`` None gives an empty payload; any code is accepted (999, 1005...)."""
    if isinstance(reason, str):
        reason = reason.encode()
    payload = b"" if code is None else struct.pack("!H", code) + reason
    return frame(OP_CLOSE, payload, mask=mask)


@dataclass
class Frame:
    """A frame as it was on the wire (payload unmasked)."""

    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    masked: bool = False

    @property
    def close_code(self) -> int | None:
        """The code of a close frame, None when its payload is empty."""
        assert self.opcode == OP_CLOSE, f"not a close frame: {self}"
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> bytes:
        assert self.opcode == OP_CLOSE, f"not a close frame: {self}"
        return self.payload[2:]

    def __repr__(self) -> str:
        body = self.payload if len(self.payload) <= 40 else self.payload[:40] + b"..."
        return (f"Frame(op={self.opcode}, fin={self.fin}, rsv={self.rsv}, masked={self.masked}, "
                f"len={len(self.payload)}, payload={body!r})")


def _decode_frame(buf: bytearray) -> tuple[Frame, int] | None:
    """Decode one frame from the start of ``buf``: (frame, its size), or None if incomplete."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    masked = bool(b1 & 0x80)
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack("!H", buf[2:4])[0]
        pos = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack("!Q", buf[2:10])[0]
        pos = 10
    key = b""
    if masked:
        if len(buf) < pos + 4:
            return None
        key = bytes(buf[pos:pos + 4])
        pos += 4
    if len(buf) < pos + n:
        return None
    payload = bytes(buf[pos:pos + n])
    if masked:
        payload = mask_payload(payload, key)
    return Frame(b0 & 0x0F, payload, bool(b0 & 0x80), (b0 >> 4) & 7, masked), pos + n


# ---------------------------------------------------------------------------
# HTTP


@dataclass
class HttpHead:
    """A request or response head, parsed loosely (the tests control both ends)."""

    start_line: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    # request
    @property
    def method(self) -> str:
        return self.start_line.split(" ", 2)[0]

    @property
    def target(self) -> str:
        return self.start_line.split(" ", 2)[1]

    # response
    @property
    def status(self) -> int:
        return int(self.start_line.split(" ", 2)[1])

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]

    def tokens(self, name: str) -> list[str]:
        return [t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()]


def _parse_head(raw: bytes) -> HttpHead:
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return HttpHead(lines[0], headers)


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def upgrade_request(
    path: str = "/",
    *,
    method: str = "GET",
    host: str = "127.0.0.1",
    key: str | None = None,
    replace: dict[str, str | None] | None = None,
    extra: list[tuple[str, str]] | tuple = (),
) -> bytes:
    """A client's opening handshake, valid unless ``replace``/``extra`` say otherwise.

    Args:
        replace: header name -> new value, or None to leave the header out
            (``{"Sec-WebSocket-Key": None}``).  Names are the default headers':
            Host, Upgrade, Connection, Sec-WebSocket-Key, Sec-WebSocket-Version.
        extra: more headers, appended in order (repeats allowed).
    """
    headers = {
        "Host": host,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key or new_key(),
        "Sec-WebSocket-Version": "13",
    }
    for name, value in (replace or {}).items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    lines = [f"{method} {path} HTTP/1.1"]
    lines += [f"{n}: {v}" for n, v in headers.items()]
    lines += [f"{n}: {v}" for n, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ---------------------------------------------------------------------------
# A peer


class RawPeer:
    """A buffered byte stream with HTTP-head and frame readers on top.

    ``mask`` is whether this peer masks the frames it sends with :meth:`send_frame`
    (a client: True; an upstream: False).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, mask: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.mask = mask
        self.buf = bytearray()
        self.eof = False
        self.reset = False          # the connection ended with a reset / error, not a FIN
        self.frames: list[Frame] = []   # every frame received, in order
        self.key: str | None = None     # the key of the last handshake this peer sent

    # -- low level ----------------------------------------------------------------

    async def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False at EOF.  TimeoutError at the deadline."""
        if self.eof:
            return False
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise asyncio.TimeoutError
        try:
            data = await asyncio.wait_for(self.reader.read(65536), remaining)
        except asyncio.TimeoutError:    # a subclass of OSError since Python 3.11: not a reset
            raise
        except OSError:
            data = b""
            self.reset = True
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _deadline(self, timeout: float) -> float:
        return asyncio.get_running_loop().time() + timeout

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_frame(self, opcode: int, payload: bytes = b"", **kwargs) -> None:
        kwargs.setdefault("mask", self.mask)
        await self.send(frame(opcode, payload, **kwargs))

    async def send_close(self, code: int | None = 1000, reason: bytes | str = b"") -> None:
        await self.send(close_frame(code, reason, mask=self.mask))

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (RST)."""
        self.writer.transport.abort()

    def close_transport(self) -> None:
        """Close the TCP connection without a close frame (FIN)."""
        self.writer.close()

    # -- HTTP ---------------------------------------------------------------------

    async def read_head(self, timeout: float = DEFAULT_TIMEOUT) -> HttpHead:
        """Read one HTTP head (up to the blank line); later bytes stay buffered.

        Raises:
            EOFError: the connection ended before a complete head.
        """
        deadline = self._deadline(timeout)
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                raw = bytes(self.buf[:end])
                del self.buf[:end + 4]
                return _parse_head(raw)
            if not await self._fill(deadline):
                raise EOFError(f"connection closed before a complete HTTP head; got {bytes(self.buf)!r}")

    async def read_request(self, timeout: float = DEFAULT_TIMEOUT) -> HttpHead:
        return await self.read_head(timeout)

    async def read_response(self, timeout: float = DEFAULT_TIMEOUT) -> HttpHead:
        """Read a response head and, for a non-101, its Content-Length body (or to EOF)."""
        deadline = self._deadline(timeout)
        head = await self.read_head(timeout)
        if head.status == 101:
            return head
        length = head.get("Content-Length")
        if length is not None:
            n = int(length)
            while len(self.buf) < n:
                if not await self._fill(deadline):
                    break
            head.body = bytes(self.buf[:n])
            del self.buf[:n]
        else:
            while await self._fill(deadline):
                pass
            head.body = bytes(self.buf)
            self.buf.clear()
        return head

    async def handshake(self, path: str = "/", timeout: float = DEFAULT_TIMEOUT, **kwargs) -> HttpHead:
        """Send a valid upgrade request and read the answer; asserts a correct 101."""
        self.key = new_key()
        await self.send(upgrade_request(path, key=self.key, **kwargs))
        head = await self.read_response(timeout)
        assert head.status == 101, f"expected 101, got {head.start_line!r} {head.headers} {head.body!r}"
        assert head.get("Sec-WebSocket-Accept") == accept_key(self.key), head.headers
        return head

    async def send_101(
        self,
        request: HttpHead,
        *,
        accept: str | None = None,
        protocol: str | None = None,
        extensions: str | None = None,
        extra: list[tuple[str, str]] | tuple = (),
        then: bytes = b"",
    ) -> None:
        """Answer an upgrade request with a 101 (correct unless told otherwise).

        Args:
            accept: Sec-WebSocket-Accept to send (default: the right one for the request's key).
            protocol: a Sec-WebSocket-Protocol to choose.
            extensions: a Sec-WebSocket-Extensions header to add.
            extra: more headers.
            then: bytes to send in the same write, right after the head (first frames).
        """
        key = request.get("Sec-WebSocket-Key")
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept if accept is not None else accept_key(key)}",
        ]
        if protocol is not None:
            lines.append(f"Sec-WebSocket-Protocol: {protocol}")
        if extensions is not None:
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        lines += [f"{n}: {v}" for n, v in extra]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + then)

    # -- frames -------------------------------------------------------------------

    async def recv_frame(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The next frame.

        Raises:
            EOFError: the connection ended first (the partial bytes are in the message).
            asyncio.TimeoutError: nothing complete within ``timeout``.
        """
        deadline = self._deadline(timeout)
        while True:
            decoded = _decode_frame(self.buf)
            if decoded is not None:
                got, size = decoded
                del self.buf[:size]
                self.frames.append(got)
                return got
            if not await self._fill(deadline):
                raise EOFError(f"connection closed before a complete frame; buffered {bytes(self.buf[:64])!r}"
                               f" (reset={self.reset}); frames so far {self.frames}")

    async def recv_close(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """Read frames until a close frame and return it (others stay in :attr:`frames`)."""
        deadline = self._deadline(timeout)
        while True:
            got = await self.recv_frame(max(deadline - asyncio.get_running_loop().time(), 0.001))
            if got.opcode == OP_CLOSE:
                return got

    async def read_exact(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Exactly ``n`` raw bytes (EOFError if the connection ends first)."""
        deadline = self._deadline(timeout)
        while len(self.buf) < n:
            if not await self._fill(deadline):
                raise EOFError(f"connection closed after {len(self.buf)} of {n} bytes")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def read_until_eof(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Everything left until the connection ends; TimeoutError if it does not end in time."""
        deadline = self._deadline(timeout)
        while await self._fill(deadline):
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    async def aclose(self) -> None:
        if not self.writer.is_closing():
            self.writer.transport.abort()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 1)
        except (Exception, asyncio.TimeoutError):
            pass


async def connect(port: int, host: str = "127.0.0.1", *, ssl=None, timeout: float = DEFAULT_TIMEOUT) -> RawPeer:
    """A raw client connection (TLS with ``ssl``, an ``ssl.SSLContext``)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ssl, server_hostname=host if ssl else None), timeout)
    return RawPeer(reader, writer, mask=True)


# ---------------------------------------------------------------------------
# A raw upstream server


class RawUpstream:
    """A TCP server on 127.0.0.1 whose connections the test drives by hand.

    The listening socket is bound at construction (so the port can go into the
    proxy's config before any event loop runs); serving starts in ``async with``
    on the running loop and every connection is dropped at its exit::

        up = RawUpstream()
        proxy = start_proxy(up.url)
        async def go():
            async with up:
                ...                           # the proxy connects
                peer = await up.accept()
                request = await peer.read_request()
                await peer.send_101(request)
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.url = f"ws://{host}:{self.port}/"
        self.server: asyncio.AbstractServer | None = None
        self.queue: asyncio.Queue | None = None
        self.peers: list[RawPeer] = []

    async def __aenter__(self) -> "RawUpstream":
        self.queue = asyncio.Queue()

        async def accepted(reader, writer):
            peer = RawPeer(reader, writer, mask=False)
            self.peers.append(peer)
            self.queue.put_nowait(peer)

        self.server = await asyncio.start_server(accepted, sock=self.sock)
        return self

    async def __aexit__(self, *exc) -> None:
        for peer in self.peers:
            await peer.aclose()
        if self.server is not None:
            self.server.close()
            try:
                await asyncio.wait_for(self.server.wait_closed(), 2)
            except asyncio.TimeoutError:
                pass
        else:
            self.sock.close()

    async def accept(self, timeout: float = DEFAULT_TIMEOUT) -> RawPeer:
        """The next connection the proxy opened."""
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def accept_upgrade(self, timeout: float = DEFAULT_TIMEOUT, **send_101) -> tuple[RawPeer, HttpHead]:
        """Accept the next connection, read its request and answer a correct 101."""
        peer = await self.accept(timeout)
        request = await peer.read_request(timeout)
        await peer.send_101(request, **send_101)
        return peer, request
