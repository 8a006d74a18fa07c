"""Bulk binary streams with sequence numbers and a running checksum, for the backpressure tests.

A :class:`Producer` writes ``count`` binary messages of ``size`` bytes on a raw
connection (``flow_ws.RawWS``), masked when it plays a client; each payload
starts with its sequence number (8 bytes, big-endian), the rest is one random
block shared by all messages.  It records how far it got and when it last made
progress, so a test can see it blocked by backpressure.  A :func:`consume`
reads the messages back one frame at a time (``readexactly``: no reassembly
buffers), checks every sequence number in order and keeps a CRC-32 of every
payload byte, to be compared with the producer's.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
import zlib

from fastws.codec import FrameWriter, apply_mask

from .flow_ws import BINARY, RawWS

MIB = 1 << 20


class Producer:
    def __init__(self, ws: RawWS, count: int, size: int = MIB, *, fragments: int = 1) -> None:
        self.ws = ws
        self.count = count
        self.size = size
        self.fragments = fragments          # frames per message (size must divide evenly)
        self.block = bytearray(os.urandom(size))
        self.sent_messages = 0
        self.sent_bytes = 0                 # payload bytes handed to the socket (drained)
        self.last_progress = time.monotonic()
        self.crc = 0
        self.done = False
        self.task: asyncio.Task | None = None
        self.error: ConnectionError | None = None

    def start(self) -> "Producer":
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        # A connection torn down under the producer (a failing test's cleanup) is kept
        # for finish() to raise, not left as a task exception nobody retrieves.
        try:
            await self._send_all()
        except ConnectionError as exc:
            self.error = exc

    async def _send_all(self) -> None:
        writer = self.ws.writer
        fw = FrameWriter(mask=self.ws.mask)
        piece = self.size // self.fragments
        for seq in range(self.count):
            payload = self.block
            payload[:8] = struct.pack("!Q", seq)
            self.crc = zlib.crc32(payload, self.crc)
            for i in range(self.fragments):
                chunk = memoryview(payload)[i * piece:(i + 1) * piece]
                opcode = BINARY if i == 0 else 0
                fin = i == self.fragments - 1
                if fw.mask:
                    key = fw.new_mask_key()
                    writer.write(fw.header(opcode, len(chunk), fin=fin, mask_key=key))
                    writer.write(apply_mask(chunk, key))
                else:
                    writer.write(fw.header(opcode, len(chunk), fin=fin))
                    writer.write(bytes(chunk))
                await writer.drain()
                self.sent_bytes += len(chunk)
                self.last_progress = time.monotonic()
            self.sent_messages += 1
        self.done = True

    async def wait_stalled(self, quiet: float = 0.5, timeout: float = 30.0) -> None:
        """Wait until the producer has made no progress for ``quiet`` seconds.

        Fails when it finished instead (no backpressure) or is still moving after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.task is not None and self.task.done():
                self.task.result()          # raise its error, if any
                raise AssertionError(f"the producer sent all {self.sent_bytes} bytes: nothing held it back")
            if time.monotonic() - self.last_progress >= quiet:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"producer still sending after {timeout}s ({self.sent_bytes} bytes)")
            await asyncio.sleep(0.05)

    async def finish(self, timeout: float) -> None:
        await asyncio.wait_for(self.task, timeout)
        if self.error is not None:
            raise self.error


async def _read(ws: RawWS, n: int) -> bytes:
    if ws.buf:
        take = bytes(ws.buf[:n])
        del ws.buf[:n]
        if len(take) == n:
            return take
        return take + await ws.reader.readexactly(n - len(take))
    return await ws.reader.readexactly(n)


async def consume(ws: RawWS, count: int, size: int = MIB, *, masked: bool) -> tuple[int, int, int]:
    """Read ``count`` messages; check sequence numbers, sizes and masking; return
    (messages, payload bytes, CRC-32 of all payloads)."""
    crc = 0
    total = 0
    for seq in range(count):
        got = 0
        first = True
        while True:
            b0, b1 = await _read(ws, 2)
            opcode, fin = b0 & 0x0F, bool(b0 & 0x80)
            assert opcode == (BINARY if first else 0), f"message {seq}: opcode {opcode:#x}"
            assert bool(b1 & 0x80) == masked, f"message {seq}: mask bit {b1 >> 7}"
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack("!H", await _read(ws, 2))[0]
            elif length == 127:
                length = struct.unpack("!Q", await _read(ws, 8))[0]
            key = await _read(ws, 4) if masked else None
            payload = await _read(ws, length)
            if key is not None:
                payload = apply_mask(payload, key)
            if first:
                assert struct.unpack("!Q", payload[:8])[0] == seq, \
                    f"message {seq} out of order: got {struct.unpack('!Q', payload[:8])[0]}"
            crc = zlib.crc32(payload, crc)
            got += length
            first = False
            if fin:
                break
        assert got == size, f"message {seq}: {got} bytes instead of {size}"
        total += got
    return count, total, crc
