"""The built-in echo upstream: what fastws proxies to when no upstream is configured.

A minimal, conforming WebSocket server on fastws's own codec: every text or
binary message comes back as it was sent, pings are answered, the closing
handshake is honoured.  Each worker starts one on 127.0.0.1 with a free port, so
``pip install fastws && fastws`` works with nothing else running.  The test
suite and the load benchmarks use it too.
"""

from __future__ import annotations

import asyncio

from . import handshake as hs
from .codec import EV_CLOSE, EV_DATA, EV_NONE, EV_PING, FrameParser, FrameWriter
from .errors import ProtocolError
from .frames import Opcode

__all__ = ["EchoProtocol", "start_echo_server"]


class EchoProtocol(asyncio.Protocol):
    def __init__(self, max_message_size: int = 64 << 20) -> None:
        self.reader: hs.RequestReader | None = hs.RequestReader()
        self.parser = FrameParser(mask_required=True, max_message_size=max_message_size)
        self.writer = FrameWriter(mask=False)
        self.buf = bytearray()
        self.message = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.reader is not None:
            try:
                request = self.reader.feed(data)
                if request is None:
                    return
                hs.validate_upgrade(request)
            except hs.HandshakeError as exc:
                self.transport.write(exc.response())
                self.transport.close()
                return
            self.transport.write(hs.build_switching_protocols(request))
            data = self.reader.leftover
            self.reader = None
        self.buf += data
        self._frames()

    def _frames(self) -> None:
        parser = self.parser
        parser.feed(self.buf)
        try:
            while (event := parser.next_event()) != EV_NONE:
                if event == EV_DATA:
                    self.message += memoryview(self.buf)[parser.payload_start:parser.payload_end]
                    if parser.message_finished:
                        self.transport.write(self.writer.frame(parser.message_opcode, self.message))
                        self.message = bytearray()
                elif event == EV_PING:
                    self.transport.write(self.writer.frame(Opcode.PONG, parser.payload()))
                elif event == EV_CLOSE:
                    code = parser.close_code
                    self.transport.write(self.writer.close_frame(
                        None if code == 1005 else code, parser.close_reason))
                    self.transport.close()
        except ProtocolError as exc:
            self.transport.write(self.writer.close_frame(int(exc.code)))
            self.transport.close()
        finally:
            parser.release()
        del self.buf[:parser.offset]


async def start_echo_server(host: str = "127.0.0.1", port: int = 0) -> asyncio.AbstractServer:
    """Start an echo server; ``server.sockets[0].getsockname()`` tells the port."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(EchoProtocol, host, port)
