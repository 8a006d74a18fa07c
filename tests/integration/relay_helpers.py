"""Peers for the relay tests: raw frame tools, a raw upstream, a raw client,
uniform adapters over four client libraries, and trivial handler chains.

The raw frame codec here is written independently of ``fastws.codec`` on
purpose: it is the oracle that tells what went over the wire, so it must not
share the code under test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# -- raw frames ----------------------------------------------------------------------------------


def xor_mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    n = len(data)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes = b"", fin: bool = True, mask_key: bytes | None = None) -> bytes:
    """One frame, RFC 6455 section 5.2, with the minimal length encoding."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask_key is not None else 0
    n = len(payload)
    if n < 126:
        head.append(mask_bit | n)
    elif n < 1 << 16:
        head.append(mask_bit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", n)
    if mask_key is not None:
        head += mask_key
        payload = xor_mask(payload, mask_key)
    return bytes(head) + payload


def close_payload(code: int | None, reason: str = "") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason.encode()


def parse_close(payload: bytes) -> tuple[int | None, str]:
    if not payload:
        return None, ""
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


@dataclass
class RawFrame:
    fin: bool
    opcode: int
    payload: bytes            # unmasked
    mask_key: bytes | None
    raw: bytes                # the frame's bytes exactly as on the wire
    rsv: int = 0


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the frames completed so far."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[RawFrame]:
        self.buf += data
        frames = []
        while True:
            frame = self._one()
            if frame is None:
                return frames
            frames.append(frame)

    def _one(self) -> RawFrame | None:
        buf = self.buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            n = struct.unpack_from("!H", buf, 2)[0]
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n = struct.unpack_from("!Q", buf, 2)[0]
            pos = 10
        key = None
        if b1 & 0x80:
            if len(buf) < pos + 4:
                return None
            key = bytes(buf[pos:pos + 4])
            pos += 4
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos:pos + n])
        raw = bytes(buf[:pos + n])
        del buf[:pos + n]
        if key is not None:
            payload = xor_mask(payload, key)
        return RawFrame(bool(b0 & 0x80), b0 & 0x0F, payload, key, raw, (b0 >> 4) & 0x7)


def reassemble(frames: list[RawFrame]) -> list[tuple[int, bytes]]:
    """Data messages (opcode, payload) out of a frame list; control frames are skipped."""
    messages = []
    current: tuple[int, bytearray] | None = None
    for f in frames:
        if f.opcode in (TEXT, BINARY):
            current = (f.opcode, bytearray(f.payload))
        elif f.opcode == CONT:
            assert current is not None, "continuation without a start"
            current[1].extend(f.payload)
        else:
            continue
        if f.fin:
            messages.append((current[0], bytes(current[1])))
            current = None
    return messages


def _accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


# -- a raw upstream ------------------------------------------------------------------------------


class RawConn:
    """One connection to the raw upstream: everything it got, and a way to send."""

    def __init__(self, server: "RawUpstream", reader, writer) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.request_line = ""
        self.headers: dict[str, str] = {}
        self.raw = bytearray()             # bytes after the handshake, as received
        self.frames: list[RawFrame] = []
        self.messages: list[tuple[int, bytes]] = []
        self.close_received: tuple[int | None, str] | None = None
        self.close_sent: tuple[int | None, str] | None = None
        self.eof = False
        self._partial: tuple[int, bytearray] | None = None

    def send(self, data: bytes) -> None:
        """Write raw bytes to the proxy (thread-safe)."""
        self.server.loop.call_soon_threadsafe(self.writer.write, data)

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (thread-safe)."""
        self.server.loop.call_soon_threadsafe(self.writer.transport.abort)

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True) -> None:
        if opcode == CLOSE:
            self.close_sent = parse_close(payload)
        self.send(encode_frame(opcode, payload, fin))


class RawUpstream:
    """A WebSocket server on a raw socket that records every frame it receives.

    By default it answers pings, echoes each data message back as one frame and
    answers a close with the same code and reason (``close_reply`` overrides it).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, echo: bool = True,
                 close_reply: tuple[int | None, str] | None = None,
                 subprotocol: str | None = None,
                 on_open: Callable[[RawConn], Any] | None = None) -> None:
        self.loop = loop
        self.echo = echo
        self.close_reply = close_reply
        self.subprotocol = subprotocol
        self.on_open = on_open
        self.conns: list[RawConn] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def start(self) -> "RawUpstream":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in self.conns:
                conn.writer.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = RawConn(self, reader, writer)
        self.conns.append(conn)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            conn.request_line, conn.headers = _headers(head)
            response = [
                "HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
                f"Sec-WebSocket-Accept: {_accept(conn.headers['sec-websocket-key'])}",
            ]
            if self.subprotocol:
                response.append(f"Sec-WebSocket-Protocol: {self.subprotocol}")
            writer.write(("\r\n".join(response) + "\r\n\r\n").encode())
            if self.on_open is not None:
                result = self.on_open(conn)
                if asyncio.iscoroutine(result):
                    asyncio.ensure_future(result)
            decoder = FrameDecoder()
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                conn.raw += data
                for frame in decoder.feed(data):
                    conn.frames.append(frame)
                    self._on_frame(conn, frame)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            conn.eof = True
            writer.close()

    def _on_frame(self, conn: RawConn, frame: RawFrame) -> None:
        w = conn.writer
        if frame.opcode == PING:
            w.write(encode_frame(PONG, frame.payload))
        elif frame.opcode == CLOSE:
            conn.close_received = parse_close(frame.payload)
            if conn.close_sent is None:
                code, reason = self.close_reply or conn.close_received
                conn.close_sent = (code, reason)
                w.write(encode_frame(CLOSE, close_payload(code, reason)))
            w.close()
        elif frame.opcode in (TEXT, BINARY, CONT):
            if frame.opcode != CONT:
                conn._partial = (frame.opcode, bytearray())
            conn._partial[1].extend(frame.payload)
            if frame.fin:
                message = (conn._partial[0], bytes(conn._partial[1]))
                conn._partial = None
                conn.messages.append(message)
                if self.echo:
                    w.write(encode_frame(message[0], message[1]))


# -- a raw client ----------------------------------------------------------------------------------


class RawClient:
    """A WebSocket client on a raw socket: full control over frames, masks and fragmentation."""

    def __init__(self, reader, writer, status_line: str, headers: dict[str, str], leftover: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.status_line = status_line
        self.headers = headers
        self.decoder = FrameDecoder()
        self.pending: list[RawFrame] = self.decoder.feed(leftover)
        self.sent = bytearray()            # every frame byte this client wrote

    @classmethod
    async def connect(cls, port: int, path: str = "/", subprotocols: list[str] | None = None) -> "RawClient":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
            "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
        ]
        if subprotocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, headers = _headers(head)
        assert status_line.split()[1] == "101", status_line
        assert headers["sec-websocket-accept"] == _accept(key)
        return cls(reader, writer, status_line, headers, b"")

    def send(self, data: bytes) -> None:
        self.sent += data
        self.writer.write(data)

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True,
                   mask_key: bytes | None = None) -> bytes:
        data = encode_frame(opcode, payload, fin, mask_key or os.urandom(4))
        self.send(data)
        return data

    async def recv_frame(self, timeout: float = 5.0) -> RawFrame:
        async def get() -> RawFrame:
            while not self.pending:
                data = await self.reader.read(1 << 16)
                if not data:
                    raise EOFError("connection closed before a frame arrived")
                self.pending.extend(self.decoder.feed(data))
            return self.pending.pop(0)
        return await asyncio.wait_for(get(), timeout)

    async def recv_frames(self, count: int, timeout: float = 5.0) -> list[RawFrame]:
        return [await self.recv_frame(timeout) for _ in range(count)]

    async def at_eof(self, timeout: float = 5.0) -> bytes:
        """Read to the end of the stream; returns what arrived meanwhile."""
        rest = b""

        async def drain():
            nonlocal rest
            while data := await self.reader.read(1 << 16):
                rest += data
        await asyncio.wait_for(drain(), timeout)
        return rest

    def close(self) -> None:
        self.writer.close()


# -- uniform client adapters -----------------------------------------------------------------------


class ClientAdapter:
    """The same few operations over websockets, aiohttp, picows and websocket-client."""

    kind = "?"
    subprotocol: str | None = None

    async def send(self, message: str | bytes) -> None: ...
    async def recv(self) -> str | bytes: ...
    async def ping(self, payload: bytes) -> bytes:
        """Send a ping, return the payload of the pong that comes back."""
    async def close(self, code: int, reason: str) -> tuple[int | None, str]:
        """Close first; returns the (code, reason) of the close that came back."""
    async def wait_closed_by_peer(self) -> tuple[int | None, str]:
        """The peer closes first: returns its (code, reason), after answering it."""
    async def aclose(self) -> None: ...


class WebsocketsClient(ClientAdapter):
    kind = "websockets"

    @classmethod
    async def open(cls, url: str, subprotocols=None) -> "WebsocketsClient":
        from websockets.asyncio.client import connect
        self = cls()
        self.ws = await connect(url, max_size=None, subprotocols=subprotocols, ping_interval=None,
                                open_timeout=5, close_timeout=5, compression=None)
        self.subprotocol = self.ws.subprotocol
        return self

    async def send(self, message):
        await self.ws.send(message)

    async def recv(self):
        return await self.ws.recv()

    async def ping(self, payload):
        waiter = await self.ws.ping(payload)
        await asyncio.wait_for(waiter, 5)
        return payload          # websockets resolves the waiter only for a pong with this payload

    async def close(self, code, reason):
        await self.ws.close(code, reason)
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")

    async def wait_closed_by_peer(self):
        from websockets.exceptions import ConnectionClosed
        try:
            message = await self.ws.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "no close frame received"
            return exc.rcvd.code, exc.rcvd.reason
        raise AssertionError(f"expected a close, got message {message!r}")

    async def aclose(self):
        await self.ws.close()


class AiohttpClient(ClientAdapter):
    kind = "aiohttp"

    @classmethod
    async def open(cls, url: str, subprotocols=None) -> "AiohttpClient":
        import aiohttp
        self = cls()
        self.session = aiohttp.ClientSession()
        try:
            self.ws = await self.session.ws_connect(url, protocols=tuple(subprotocols or ()),
                                                    max_msg_size=0, autoping=False, autoclose=False)
        except BaseException:
            await self.session.close()
            raise
        self.subprotocol = self.ws.protocol
        return self

    async def send(self, message):
        if isinstance(message, str):
            await self.ws.send_str(message)
        else:
            await self.ws.send_bytes(message)

    async def _receive(self):
        from aiohttp import WSMsgType
        while True:
            msg = await self.ws.receive(timeout=10)
            if msg.type == WSMsgType.PING:     # autoping is off: answer by hand
                await self.ws.pong(msg.data)
                continue
            return msg

    async def recv(self):
        from aiohttp import WSMsgType
        msg = await self._receive()
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            return msg.data
        raise AssertionError(f"expected a message, got {msg!r}")

    async def ping(self, payload):
        from aiohttp import WSMsgType
        await self.ws.ping(payload)
        msg = await self._receive()
        assert msg.type == WSMsgType.PONG, msg
        return msg.data

    async def close(self, code, reason):
        from aiohttp import WSMsgType
        # ws.close() would read the answer itself and drop its reason: do it by hand.
        await self.ws._writer.close(code, reason.encode())
        msg = await self._receive()
        assert msg.type == WSMsgType.CLOSE, msg
        await self.ws.close()
        return msg.data, msg.extra or ""

    async def wait_closed_by_peer(self):
        from aiohttp import WSMsgType
        msg = await self._receive()
        assert msg.type == WSMsgType.CLOSE, msg
        await self.ws.close(code=msg.data, message=(msg.extra or "").encode())
        return msg.data, msg.extra or ""

    async def aclose(self):
        await self.ws.close()
        await self.session.close()


class PicowsClient(ClientAdapter):
    kind = "picows"

    @classmethod
    async def open(cls, url: str, subprotocols=None) -> "PicowsClient":
        import picows

        self = cls()
        queue: asyncio.Queue = asyncio.Queue()

        class Listener(picows.WSListener):
            def on_ws_frame(self, transport, frame):
                if frame.msg_type == picows.WSMsgType.CLOSE:
                    code = int(frame.get_close_code())
                    reason = frame.get_close_reason() or ""
                    queue.put_nowait(("close", code, reason))
                    if not transport.is_close_frame_sent:
                        transport.send_close(frame.get_close_code(), reason.encode())
                    transport.disconnect()
                else:
                    queue.put_nowait((frame.msg_type, frame.get_payload_as_bytes(), frame.fin))

            def on_ws_disconnected(self, transport):
                queue.put_nowait(("eof",))

        headers = {"Sec-WebSocket-Protocol": ", ".join(subprotocols)} if subprotocols else None
        self.transport, _ = await picows.ws_connect(Listener, url, max_frame_size=64 << 20,
                                                    extra_headers=headers)
        self.queue = queue
        self.subprotocol = self.transport.response.headers.get("Sec-WebSocket-Protocol")
        return self

    async def _get(self):
        return await asyncio.wait_for(self.queue.get(), 10)

    async def send(self, message):
        import picows
        if isinstance(message, str):
            self.transport.send(picows.WSMsgType.TEXT, message.encode())
        else:
            self.transport.send(picows.WSMsgType.BINARY, message)

    async def recv(self):
        import picows
        T = picows.WSMsgType
        parts: list[bytes] = []
        opcode = None
        while True:
            item = await self._get()
            if item[0] in (T.PING, T.PONG):
                continue
            if item[0] in ("close", "eof"):
                raise AssertionError(f"expected a message, got {item!r}")
            if item[0] != T.CONTINUATION:
                opcode = item[0]
            parts.append(item[1])
            if item[2]:
                data = b"".join(parts)
                return data.decode() if opcode == T.TEXT else data

    async def ping(self, payload):
        import picows
        self.transport.send_ping(payload)
        while True:
            item = await self._get()
            if item[0] == picows.WSMsgType.PONG:
                return item[1]
            assert item[0] == picows.WSMsgType.PING, item

    async def close(self, code, reason):
        import picows
        self.transport.send_close(picows.WSCloseCode(code), reason.encode())
        while True:
            item = await self._get()
            if item[0] == "close":
                await asyncio.wait_for(self.transport.wait_disconnected(), 5)
                return item[1], item[2]
            assert item[0] != "eof", "disconnected without a close reply"

    async def wait_closed_by_peer(self):
        item = await self._get()
        assert item[0] == "close", item
        await asyncio.wait_for(self.transport.wait_disconnected(), 5)
        return item[1], item[2]

    async def aclose(self):
        self.transport.disconnect()
        await asyncio.wait_for(self.transport.wait_disconnected(), 5)


class WebsocketClientClient(ClientAdapter):
    """websocket-client is synchronous: each call runs in a worker thread."""

    kind = "websocket-client"

    @classmethod
    async def open(cls, url: str, subprotocols=None) -> "WebsocketClientClient":
        import websocket
        self = cls()
        self.ws = await asyncio.to_thread(websocket.create_connection, url, timeout=10,
                                          subprotocols=subprotocols)
        self.subprotocol = self.ws.getsubprotocol()
        return self

    async def send(self, message):
        if isinstance(message, str):
            await asyncio.to_thread(self.ws.send, message)
        else:
            await asyncio.to_thread(self.ws.send_binary, message)

    async def recv(self):
        return await asyncio.to_thread(self.ws.recv)

    def _next_frame(self, want_ping: bool = False):
        """The next frame, pings answered; close frames are not answered automatically
        (``recv_data_frame`` would answer any close with a bare 1000)."""
        import websocket
        while True:
            frame = self.ws.recv_frame()
            if frame.opcode == websocket.ABNF.OPCODE_PING:
                self.ws.pong(frame.data)
                if not want_ping:
                    continue
            return frame.opcode, frame

    async def ping(self, payload):
        import websocket
        await asyncio.to_thread(self.ws.ping, payload)
        opcode, frame = await asyncio.to_thread(self._next_frame)
        assert opcode == websocket.ABNF.OPCODE_PONG, (opcode, frame)
        return frame.data

    async def close(self, code, reason):
        import websocket
        await asyncio.to_thread(self.ws.send_close, code, reason.encode())
        opcode, frame = await asyncio.to_thread(self._next_frame)
        assert opcode == websocket.ABNF.OPCODE_CLOSE, (opcode, frame)
        await asyncio.to_thread(self.ws.shutdown)
        return parse_close(frame.data)

    async def wait_closed_by_peer(self):
        import websocket
        opcode, frame = await asyncio.to_thread(self._next_frame)
        assert opcode == websocket.ABNF.OPCODE_CLOSE, (opcode, frame)
        code, reason = parse_close(frame.data)
        try:
            await asyncio.to_thread(self.ws.send_close, code, reason.encode())
        except (OSError, websocket.WebSocketConnectionClosedException):
            pass                            # the peer closed the TCP connection already
        await asyncio.to_thread(self.ws.shutdown)
        return code, reason

    async def aclose(self):
        await asyncio.to_thread(self.ws.close, timeout=2)


CLIENTS: dict[str, type[ClientAdapter]] = {
    "websockets": WebsocketsClient,
    "aiohttp": AiohttpClient,
    "picows": PicowsClient,
    "websocket-client": WebsocketClientClient,
}


async def open_client(kind: str, url: str, subprotocols=None) -> ClientAdapter:
    return await CLIENTS[kind].open(url, subprotocols)


# -- handler chains (the interface Session uses: has(phase), run(phase, frame)) ------------------


class Chain:
    """A trivial handler chain: ``fn(phase, frame)`` for the phases given; every call recorded."""

    def __init__(self, phases: tuple[str, ...], fn: Callable[[str, Any], None] | None = None) -> None:
        self.phases = phases
        self.fn = fn
        self.calls: list[tuple[str, int, bytes, int | None]] = []
        self.lock = threading.Lock()

    def has(self, phase: str) -> bool:
        return phase in self.phases

    def run(self, phase: str, frame) -> None:
        with self.lock:
            self.calls.append((phase, int(frame.opcode), bytes(frame.data), frame.status))
        if self.fn is not None:
            self.fn(phase, frame)


# -- waiting ---------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``predicate`` (from a thread with no running loop) until truthy; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


async def async_wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def wait_no_connections(proxy, timeout: float = 5.0) -> None:
    wait_until(lambda: proxy.open_connections() == 0, timeout, "proxy.open_connections() == 0")
