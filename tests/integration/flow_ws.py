"""Raw WebSocket endpoints over asyncio streams, for tests that need the exact bytes.

A test plays both the client and the upstream on its own event loop, while the
proxy runs elsewhere (a thread of its own, or a subprocess)::

    async with RawServer() as upstream:          # an upstream that answers the upgrade itself
        proxy = ...(upstream.url)
        client = await connect(port)             # the client side, frames masked
        peer = await upstream.accept()           # the upstream side, frames unmasked
        await client.send(TEXT, b"hi")
        frame = await peer.recv()                # Frame(opcode, fin, rsv, masked, payload, raw)

Well-formed frames are built with ``fastws.codec.FrameWriter``; malformed ones
(reserved bits, unknown opcodes, non-minimal lengths...) with :func:`build`,
which FrameWriter rightly refuses to make.  Frames are decoded here by
:func:`decode`, a deliberately small parser written apart from the codec under
test: it accepts anything, so a test sees what the proxy really sent -- including
bytes after a close frame, which a conforming parser would discard.

Every wait has a timeout; nothing here retries forever.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from typing import NamedTuple

from fastws.codec import FrameWriter, apply_mask, build_close_payload

from .conftest import run

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DEFAULT_TIMEOUT = 5.0


class Frame(NamedTuple):
    opcode: int
    fin: bool
    rsv: int            # the three reserved bits, as 0..7 (RSV1 = 4)
    masked: bool
    payload: bytes      # unmasked
    raw: bytes          # the frame as it was on the wire

    @property
    def close_code(self) -> int | None:
        """The close code of a close frame (None when the payload is empty)."""
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8", "replace")


def decode(buf: bytes | bytearray, pos: int = 0) -> tuple[Frame | None, int]:
    """One frame from ``buf[pos:]``: (frame, end position), or (None, pos) when incomplete."""
    avail = len(buf) - pos
    if avail < 2:
        return None, pos
    b0, b1 = buf[pos], buf[pos + 1]
    length = b1 & 0x7F
    head = 2
    if length == 126:
        if avail < 4:
            return None, pos
        length = struct.unpack_from("!H", buf, pos + 2)[0]
        head = 4
    elif length == 127:
        if avail < 10:
            return None, pos
        length = struct.unpack_from("!Q", buf, pos + 2)[0]
        head = 10
    masked = bool(b1 & 0x80)
    key = b""
    if masked:
        if avail < head + 4:
            return None, pos
        key = bytes(buf[pos + head:pos + head + 4])
        head += 4
    end = pos + head + length
    if len(buf) < end:
        return None, pos
    payload = bytes(buf[pos + head:end])
    if masked:
        payload = apply_mask(payload, key)
    frame = Frame(b0 & 0x0F, bool(b0 & 0x80), (b0 >> 4) & 0x07, masked, payload, bytes(buf[pos:end]))
    return frame, end


def build(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bool = True,
          key: bytes | None = None, length: int | None = None, length_form: int | None = None) -> bytes:
    """Any frame, well-formed or not.

    ``length`` overrides the length field (the payload given is still appended);
    ``length_form`` forces the encoding: 7 (inline), 16 or 64 bits, minimal or not.
    """
    n = len(payload) if length is None else length
    form = length_form or (7 if n < 126 else 16 if n < 0x10000 else 64)
    first = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    maskbit = 0x80 if mask else 0
    if form == 7:
        head = bytes((first, maskbit | n))
    elif form == 16:
        head = bytes((first, maskbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, maskbit | 127)) + struct.pack("!Q", n)
    if mask:
        key = key if key is not None else os.urandom(4)
        return head + key + apply_mask(payload, key)
    return head + payload


def close_payload(code: int | None = 1000, reason: str = "") -> bytes:
    return build_close_payload(code, reason)


class ConnectionEnded(Exception):
    """The TCP connection ended (EOF or reset) while a frame was awaited."""


class RawWS:
    """One side of an open WebSocket connection over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 mask: bool, leftover: bytes = b"") -> None:
        self.reader = reader
        self.writer = writer
        self.fw = FrameWriter(mask=mask)
        self.mask = mask
        self.buf = bytearray(leftover)
        self.ended = False

    # -- sending --------------------------------------------------------------------

    def frame(self, opcode: int, payload: bytes | str = b"", fin: bool = True) -> bytes:
        """A well-formed frame for this direction (masked from a client), via FrameWriter."""
        if isinstance(payload, str):
            payload = payload.encode()
        return self.fw.frame(opcode, payload, fin=fin)

    def close_frame(self, code: int | None = 1000, reason: str = "") -> bytes:
        return self.fw.close_frame(code, reason)

    async def send_raw(self, *chunks: bytes) -> None:
        """Write ``chunks`` in a single write (so they reach the proxy in one segment)."""
        self.writer.write(b"".join(chunks))
        await self.writer.drain()

    async def send(self, opcode: int, payload: bytes | str = b"", fin: bool = True) -> None:
        await self.send_raw(self.frame(opcode, payload, fin))

    async def send_close(self, code: int | None = 1000, reason: str = "") -> None:
        await self.send_raw(self.close_frame(code, reason))

    # -- receiving ------------------------------------------------------------------

    async def _fill(self, timeout: float) -> None:
        try:
            data = await asyncio.wait_for(self.reader.read(1 << 20), timeout)
        except asyncio.TimeoutError:
            raise                           # (a subclass of OSError since Python 3.11)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.ended = True
            raise ConnectionEnded("connection ended")
        self.buf += data

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The next frame; ConnectionEnded on EOF, TimeoutError when none in ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame, end = decode(self.buf)
            if frame is not None:
                del self.buf[:end]
                return frame
            if self.ended:
                raise ConnectionEnded("connection ended")
            left = deadline - loop.time()
            if left <= 0:
                raise asyncio.TimeoutError(f"no frame within {timeout}s")
            await self._fill(left)

    async def recv_message(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, bytes, list[Frame]]:
        """The next data message, reassembled: (opcode, payload, control frames seen meanwhile)."""
        controls: list[Frame] = []
        opcode, parts = None, []
        while True:
            frame = await self.recv(timeout)
            if frame.opcode >= CLOSE:
                controls.append(frame)
                if frame.opcode == CLOSE:
                    raise AssertionError(f"close {frame.close_code} {frame.close_reason!r} "
                                         f"instead of a message")
                continue
            if opcode is None:
                opcode = frame.opcode
            parts.append(frame.payload)
            if frame.fin:
                return opcode, b"".join(parts), controls

    async def frames_until_close(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[Frame, list[Frame]]:
        """Read up to and including a close frame: (close frame, frames before it)."""
        before: list[Frame] = []
        while True:
            frame = await self.recv(timeout)
            if frame.opcode == CLOSE:
                return frame, before
            before.append(frame)

    async def expect_close(self, timeout: float = DEFAULT_TIMEOUT, *, skip_control: bool = True) -> Frame:
        """The next close frame, skipping pings/pongs (and failing on data before it)."""
        close, before = await self.frames_until_close(timeout)
        unexpected = [f for f in before if not (skip_control and f.opcode in (PING, PONG))]
        assert not unexpected, f"frames before the close: {unexpected}"
        return close

    async def expect_eof(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Wait for the TCP connection to end; return any bytes that came before the end."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.ended:
            left = deadline - loop.time()
            if left <= 0:
                raise asyncio.TimeoutError(f"connection still open after {timeout}s")
            try:
                await self._fill(left)
            except ConnectionEnded:
                break
        rest = bytes(self.buf)
        self.buf.clear()
        return rest

    async def quiet(self, seconds: float) -> list[Frame]:
        """Everything that arrives within ``seconds`` (frames; stops early at EOF)."""
        frames = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return frames
            try:
                frames.append(await self.recv(left))
            except (asyncio.TimeoutError, ConnectionEnded):
                return frames

    # -- teardown -------------------------------------------------------------------

    def abort(self) -> None:
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()

    async def aclose(self) -> None:
        self.abort()


class Pump:
    """Reads a RawWS in the background: records frames, optionally answers pings/closes, echoes."""

    def __init__(self, ws: RawWS, *, answer_pings: bool = True, answer_close: bool = True,
                 echo: bool = False) -> None:
        self.ws = ws
        self.answer_pings = answer_pings
        self.answer_close = answer_close
        self.echo = echo
        self.frames: list[Frame] = []
        self.closed = asyncio.Event()         # a close frame arrived
        self.ended = asyncio.Event()          # the TCP connection ended
        self._message: list[Frame] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        ws = self.ws
        try:
            while True:
                try:
                    frame = await ws.recv(3600)
                except (ConnectionEnded, asyncio.TimeoutError):
                    return
                self.frames.append(frame)
                if frame.opcode == PING and self.answer_pings and not self.closed.is_set():
                    await ws.send(PONG, frame.payload)
                elif frame.opcode == CLOSE:
                    if self.answer_close and not self.closed.is_set():
                        await ws.send_raw(ws.close_frame(frame.close_code, frame.close_reason)
                                          if frame.close_code not in (None, 1005) else ws.close_frame(None))
                    self.closed.set()
                elif frame.opcode < CLOSE and self.echo:
                    self._message.append(frame)
                    if frame.fin:
                        payload = b"".join(f.payload for f in self._message)
                        await ws.send(self._message[0].opcode, payload)
                        self._message = []
        except asyncio.TimeoutError:
            pass
        except (ConnectionError, OSError):
            pass
        finally:
            self.ended.set()

    def of(self, *opcodes: int) -> list[Frame]:
        return [f for f in self.frames if f.opcode in opcodes]

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):
            pass


def accept_value(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


async def _read_head(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, bytes]:
    """Read an HTTP head; return (head, bytes after it)."""
    buf = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while b"\r\n\r\n" not in buf:
        left = deadline - loop.time()
        if left <= 0:
            raise asyncio.TimeoutError("no complete HTTP head")
        chunk = await asyncio.wait_for(reader.read(65536), left)
        if not chunk:
            raise ConnectionEnded(f"connection ended during the HTTP head: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        out[name.strip().lower()] = value.strip()
    return out


async def connect(port: int, path: str = "/", *, host: str = "127.0.0.1",
                  headers: tuple[tuple[str, str], ...] = (), timeout: float = DEFAULT_TIMEOUT,
                  limit: int = 1 << 16) -> RawWS:
    """Open a WebSocket connection as a client, by hand; the frames are then up to the test."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=limit), timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in headers]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head, rest = await _read_head(reader, timeout)
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        writer.transport.abort()
        raise AssertionError(f"handshake refused: {head!r}")
    assert _headers(head).get("sec-websocket-accept") == accept_value(key), head
    return RawWS(reader, writer, mask=True, leftover=rest)


class RawServer:
    """A hand-made upstream: it answers the upgrade, then each connection is a RawWS."""

    def __init__(self, host: str = "127.0.0.1", limit: int = 1 << 16) -> None:
        self.host = host
        self.limit = limit
        self.server: asyncio.AbstractServer | None = None
        self.queue: asyncio.Queue = asyncio.Queue()
        self.requests: list[bytes] = []
        self.conns: list[RawWS] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    async def start(self) -> "RawServer":
        self.server = await asyncio.start_server(self._handle, self.host, 0, limit=self.limit)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head, rest = await _read_head(reader, DEFAULT_TIMEOUT)
        except (ConnectionEnded, asyncio.TimeoutError, ConnectionError):
            writer.transport.abort()
            return
        self.requests.append(head)
        key = _headers(head).get("sec-websocket-key", "")
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept_value(key)}\r\n\r\n").encode())
        ws = RawWS(reader, writer, mask=False, leftover=rest)
        self.conns.append(ws)
        await self.queue.put(ws)

    async def accept(self, timeout: float = DEFAULT_TIMEOUT) -> RawWS:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def close(self) -> None:
        for ws in self.conns:
            ws.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def __aenter__(self) -> "RawServer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def pair(proxy_port: int, server: RawServer, path: str = "/") -> tuple[RawWS, RawWS]:
    """A client connected through the proxy and the upstream end of that same connection."""
    client = await connect(proxy_port, path)
    upstream = await server.accept()
    return client, upstream


class NullChain:
    """A handler chain that looks at both directions and changes nothing: inspect mode, no-op."""

    def has(self, phase: str) -> bool:
        return phase in ("ws_client_frame", "ws_upstream_frame")

    def run(self, phase: str, frame) -> None:
        return None


def inspect_chain(match) -> NullChain:
    """``chain_for`` for start_proxy: every route relays both directions in inspect mode."""
    return NullChain()


def through(start_proxy, body, timeout: float = 20.0, **proxy_kwargs):
    """Run ``body(client, upstream, proxy)`` on one raw connection through a fresh proxy."""
    async def go():
        async with RawServer() as server:
            proxy = start_proxy(server.url, **proxy_kwargs)
            client = await connect(proxy.port)
            upstream = await server.accept()
            try:
                return await body(client, upstream, proxy)
            finally:
                client.abort()
                upstream.abort()
    return run(go(), timeout)
