"""Frame codec microbenchmarks: fastws against wsproto, websockets, aiohttp and picows.

Run on request, never in the default ``pytest`` run (``testpaths = ["tests"]``)::

    pytest benchmarks/bench_codec.py --benchmark-json=out.json
    python benchmarks/report.py out.json

What is measured (details and fairness notes in ``benchmarks/README.md``):

``test_parse``
    One stream of masked client frames per payload size (16 B, 125 B, 1 KiB,
    64 KiB, 1 MiB; binary, FIN, a fresh random key per frame, 1.4-2.1 MiB in
    all), built once.  One round parses the whole stream:

    * ``fastws-{c,py}-scan``: ``feed`` then ``scan()`` until ``EV_NONE`` (the
      passthrough mode: headers walked, payload left masked);
    * ``fastws-{c,py}-event``: ``feed`` then ``next_event()`` until ``EV_NONE``,
      unmasking in place.  The masked stream is copied into the parser's
      bytearray in the untimed setup of each round, as ``recv_into`` would
      leave it;
    * ``fastws-c-event_copy``: the same plus ``payload()``, a bytes copy of
      every payload, which is what wsproto, websockets and aiohttp hand out;
    * ``wsproto``: ``FrameProtocol(client=False).receive_bytes`` and iterate
      ``received_frames()``;
    * ``websockets``: ``StreamReader.feed_data`` and one resume of a long-lived
      ``Frame.parse`` loop (how ``websockets.protocol.Protocol`` drives it),
      with the C ``apply_mask`` from ``websockets.speedups``;
    * ``aiohttp-c``: the compiled ``WebSocketReader.feed_data`` (a fresh reader
      per round, made in the untimed setup); messages stay in its queue;
    * ``picows``: the server protocol that ``picows.ws_create_server`` builds,
      fed through the asyncio ``BufferedProtocol`` interface: the stream is
      copied into ``get_buffer()`` in the untimed setup, the timed part is
      ``buffer_updated(n)``, which parses, unmasks in place and calls a
      ``WSListener.on_ws_frame`` that does nothing;
    * ``memcpy``: that untimed setup copy, timed on its own for reference.

    Every contender is checked once, untimed, before it is timed (frame count,
    unmasked payloads).  The cyclic GC is off while timing (see ``_measure``).

``test_mask``
    (Un)masking 1 KiB, 64 KiB and 1 MiB: fastws ``apply_mask`` (copy) and
    ``mask_inplace``, websockets' C ``apply_mask`` (copy), aiohttp's C
    ``_websocket_mask_cython`` (in place), and the pure-Python references.

``test_build``
    One binary frame of 16 B, 1 KiB, 64 KiB, masked (client side) and unmasked:
    fastws ``FrameWriter.frame``, websockets ``Frame(...).serialize``, wsproto
    ``FrameProtocol.send_data`` and picows ``WSTransport.send``.

Every test records frames/s, ns/frame and GB/s (10**9 payload bytes a second,
from the median round) in ``benchmark.extra_info``.  ``FASTWS_BENCH_BUDGET``
(seconds a benchmark, default 2.0) sets how many rounds each one gets.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import logging
import os
import random
import socket
import time
from dataclasses import dataclass

import pytest

from fastws import _codec_py

try:
    from fastws import _codec as _codec_c
except ImportError:  # not built (yet): the fastws-c contenders are skipped
    _codec_c = None

OP_BINARY = 0x2

PARSE_SIZES = (16, 125, 1024, 65536, 1048576)
MASK_SIZES = (1024, 65536, 1048576)
BUILD_SIZES = (16, 1024, 65536)
# Frames a stream: 1.4-2.1 MiB of wire bytes each.
FRAMES_PER_STREAM = {16: 65536, 125: 16384, 1024: 2048, 65536: 32, 1048576: 2}
# The pure-Python codec is timed only where it finishes in reasonable time.
PY_PARSE_SIZES = (16, 125, 1024)

BUDGET = float(os.environ.get("FASTWS_BENCH_BUDGET", "2.0"))  # seconds a benchmark, roughly
GB = 1e9


# -- streams ------------------------------------------------------------------

@dataclass(frozen=True)
class Stream:
    size: int           # payload bytes a frame
    count: int          # frames
    header: int         # header bytes a frame, mask key included
    payload: bytes      # the (unmasked) payload of every frame
    data: bytes         # the wire bytes, masked as a client sends them
    unmasked: bytes     # the same bytes after unmasking in place (headers untouched)

    @property
    def payload_bytes(self) -> int:
        return self.size * self.count


def _header(n: int, key: bytes) -> bytes:
    first = 0x80 | OP_BINARY  # FIN, binary: no UTF-8 validation on either side
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 0x10000:
        head = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + key


@functools.lru_cache(maxsize=None)
def stream(size: int) -> Stream:
    """The stream of ``FRAMES_PER_STREAM[size]`` masked client frames, built once."""
    rng = random.Random(size)
    payload = rng.randbytes(size)
    wire, plain = [], []
    for _ in range(FRAMES_PER_STREAM[size]):
        key = rng.randbytes(4)
        head = _header(size, key)
        wire.append(head + _codec_py.apply_mask(payload, key))
        plain.append(head + payload)
    return Stream(size, len(wire), len(head), payload, b"".join(wire), b"".join(plain))


# -- timing -------------------------------------------------------------------

def _measure(benchmark, target, setup=None, *, iterations=None):
    """Time ``target`` with pedantic rounds sized to the budget.

    One untimed call (after ``setup``) warms up and tells how long a call takes.
    With a ``setup`` every round is one call, its setup outside the timed region.
    Without one, fast targets are repeated ``iterations`` times a round so that a
    round lasts about 2 ms (timer overhead and resolution stop mattering).
    """
    if setup is not None:
        setup()
    t0 = time.perf_counter()
    target()
    once = max(time.perf_counter() - t0, 1e-9)
    if setup is not None:
        iterations = 1
    elif iterations is None:
        iterations = max(1, int(0.002 / once))
    per_round = once * iterations
    rounds = int(BUDGET / per_round)
    rounds = max(3 if per_round > 0.2 else 7, min(rounds, 1000))
    # The cyclic GC is off while timing, for every contender: aiohttp's queue
    # keeps all messages of a stream (65,536 tuples at 16 B), which makes the GC
    # re-walk them again and again (2x its time at 16 B), a cost an application
    # draining the queue between reads would mostly not pay.  fastws and picows
    # allocate nothing a frame, so this can only flatter the peers.
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        benchmark.pedantic(
            target,
            setup=setup,
            rounds=rounds,
            iterations=iterations,
            warmup_rounds=0 if setup is not None else 1,
        )
    finally:
        if was_enabled:
            gc.enable()


def _record(benchmark, **info):
    """Put the metadata and the derived rates into the JSON's extra_info."""
    benchmark.extra_info.update(info)
    stats = getattr(benchmark, "stats", None)
    if not stats:  # --benchmark-disable: ran once, not timed
        return
    for name in ("median", "min"):
        t = getattr(stats.stats, name)
        sfx = "" if name == "median" else "_min"
        if info.get("frames"):
            benchmark.extra_info["frames_per_s" + sfx] = info["frames"] / t
            benchmark.extra_info["ns_per_frame" + sfx] = t / info["frames"] * 1e9
        if info.get("payload_bytes"):
            benchmark.extra_info["gb_per_s" + sfx] = info["payload_bytes"] / t / GB


def _need_c():
    if _codec_c is None:
        pytest.skip("fastws._codec is not built (pip install -e . builds it)")
    return _codec_c


def _codec(impl: str):
    return _need_c() if impl == "c" else _codec_py


# -- parse contenders -------------------------------------------------------------
# Each returns (setup, target, verify): setup runs untimed before every round,
# target is the timed region, verify checks one run's result (untimed).

def _fastws_scan(impl: str, s: Stream):
    codec = _codec(impl)
    parser = codec.FrameParser(mask_required=True)
    feed, scan, none = parser.feed, parser.scan, codec.EV_NONE
    data = s.data  # scan only reads: bytes will do

    def target():
        feed(data)
        controls = 0
        while scan() != none:  # stops only at control frames; this stream has none
            controls += 1
        return controls

    def verify():
        before = parser.frames
        assert target() == 0
        assert parser.frames - before == s.count, (parser.frames, before)
        assert parser.offset == len(data), parser.offset

    return None, target, verify


def _fastws_event(impl: str, s: Stream, copy: bool = False):
    codec = _codec(impl)
    parser = codec.FrameParser(mask_required=True)
    feed, next_event, payload, none = parser.feed, parser.next_event, parser.payload, codec.EV_NONE
    buf = bytearray(len(s.data))
    data = s.data

    def setup():
        buf[:] = data  # same length: one memcpy, the bytes a recv_into would leave

    if copy:
        # Also make a bytes copy of every payload, as wsproto, websockets and aiohttp do.
        def target():
            feed(buf)
            while next_event() != none:
                payload()
    else:
        def target():
            feed(buf)
            while next_event() != none:
                pass

    def verify():
        before = parser.frames
        setup()
        target()
        assert parser.frames - before == s.count
        assert buf == s.unmasked, "payload not unmasked in place"

    return setup, target, verify


def _wsproto(s: Stream):
    frame_protocol = pytest.importorskip("wsproto.frame_protocol")
    fp = frame_protocol.FrameProtocol(client=False, extensions=[])
    data = s.data

    def target():
        fp.receive_bytes(data)
        for _frame in fp.received_frames():
            pass

    def verify():
        fp.receive_bytes(data)
        frames = list(fp.received_frames())
        assert len(frames) == s.count
        assert frames[0].payload == s.payload and frames[-1].payload == s.payload
        assert frames[-1].frame_finished and frames[-1].message_finished

    return None, target, verify


def _websockets_parser(reader, out, frame_cls):
    # websockets.protocol.Protocol.parse() in miniature: one generator for the
    # connection, resumed after each feed_data, parsing until data runs out.
    parse, read_exact = frame_cls.parse, reader.read_exact
    while True:
        frame = yield from parse(read_exact, mask=True, max_size=None, extensions=None)
        if out is not None:
            out.append(frame)


def _websockets(s: Stream):
    frames_mod = pytest.importorskip("websockets.frames")
    streams = pytest.importorskip("websockets.streams")
    speedups = pytest.importorskip("websockets.speedups")
    assert frames_mod.apply_mask is speedups.apply_mask, "websockets is not using its C apply_mask"
    reader = streams.StreamReader()
    gen = _websockets_parser(reader, None, frames_mod.Frame)
    next(gen)  # waits for the first header
    data = s.data

    def target():
        reader.feed_data(data)
        next(gen)  # returns when the buffer is used up

    def verify():
        r = streams.StreamReader()
        out = []
        g = _websockets_parser(r, out, frames_mod.Frame)
        next(g)
        r.feed_data(data)
        next(g)
        assert len(out) == s.count and not r.buffer
        assert out[0].data == s.payload and out[-1].data == s.payload

    return None, target, verify


class _FakeProtocol:
    """What aiohttp's WebSocketDataQueue needs of its protocol: flow control flags."""

    _reading_paused = False

    def pause_reading(self):
        self._reading_paused = True

    def resume_reading(self):
        self._reading_paused = False


def _aiohttp(s: Stream):
    reader_c = pytest.importorskip("aiohttp._websocket.reader_c")
    loop = asyncio.new_event_loop()  # only stored by the queue; read() is never awaited
    state = {}
    data = s.data

    def setup():
        # A fresh queue + reader a round: the queue keeps every message (it would
        # hand them to the application) and stalls the reader above its limit.
        queue = reader_c.WebSocketDataQueue(_FakeProtocol(), 2**30, loop=loop)
        state["queue"] = queue
        state["reader"] = reader_c.WebSocketReader(queue, 0, False, False)  # no size limit, no deflate

    def target():
        state["reader"].feed_data(data)

    def verify():
        setup()
        target()
        buffered = state["queue"]._buffer
        assert len(buffered) == s.count, (len(buffered), state["queue"].exception())
        assert bytes(buffered[0][0].data) == s.payload and bytes(buffered[-1][0].data) == s.payload

    return setup, target, verify


_UPGRADE_REQUEST = (
    b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class _FakeTransport(asyncio.Transport):
    """A transport with a real (unconnected) TCP socket for setsockopt/fileno and no I/O.

    ``get_write_buffer_size`` says 1 so picows never tries its direct ``send()``
    fast path: it hands every frame to ``write`` as a bytes object instead (the
    same product as fastws's ``FrameWriter.frame``), which drops it.
    """

    def __init__(self):
        super().__init__()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.written = collections.deque(maxlen=8)
        self.write = self.written.append  # C callable, keeps the last few writes

    def get_extra_info(self, name, default=None):
        return self._sock if name == "socket" else default

    def get_write_buffer_size(self):
        return 1

    def is_closing(self):
        return False

    def close(self):
        self._sock.close()

    def abort(self):
        self._sock.close()


def _picows_capture_log():
    """A logger that keeps picows's records: connection_made logs its mask implementation."""
    logger = logging.Logger("picows.bench", logging.INFO)
    records = []

    class _Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger.addHandler(_Keep())
    logger.propagate = False
    return logger, records


def _picows_server(listener, read_buffer_size: int):
    """The server-side protocol of ``picows.ws_create_server``, upgraded, with no socket.

    ``ws_create_server`` hands its protocol factory to ``loop.create_server``;
    we take the factory there instead of listening, make one protocol, connect
    it to a fake transport and feed it an HTTP upgrade request.
    """
    picows = pytest.importorskip("picows")
    loop = asyncio.new_event_loop()
    logger, records = _picows_capture_log()
    captured = {}

    async def fake_create_server(factory, *args, **kwargs):
        captured["factory"] = factory

    async def make():
        loop.create_server = fake_create_server  # instance attribute: this loop only
        await picows.ws_create_server(
            lambda request: listener, "127.0.0.1", 0,
            use_aiofastnet=False,
            websocket_handshake_timeout=None,
            enable_auto_pong=False,
            max_frame_size=64 * 1024 * 1024,
            read_buffer_init_size=read_buffer_size,
            logger_name=logger,
        )
        proto = captured["factory"]()  # needs the running loop
        transport = _FakeTransport()
        proto.connection_made(transport)
        _picows_feed(proto, _UPGRADE_REQUEST)
        assert proto.listener is listener, "picows did not accept the upgrade"
        return proto, transport

    proto, transport = loop.run_until_complete(make())
    mask_impl = next((m.split("mask_impl=")[1] for m in records if "mask_impl=" in m), "unknown")
    return proto, transport, mask_impl


def _picows_feed(proto, data) -> int:
    view = proto.get_buffer(-1)
    n = len(data)
    assert len(view) >= n, "read buffer too small for the stream"
    view[:n] = data
    proto.buffer_updated(n)
    return n


def _picows(s: Stream):
    picows = pytest.importorskip("picows")

    class Sink(picows.WSListener):
        def on_ws_frame(self, transport, frame):
            pass

    class Keep(picows.WSListener):
        def __init__(self):
            self.payloads = []

        def on_ws_frame(self, transport, frame):
            self.payloads.append(frame.get_payload_as_bytes())

    size = 2 * len(s.data) + 65536  # the stream fits whole, under picows's 90 % growth mark
    proto, _transport, mask_impl = _picows_server(Sink(), size)
    data, n = s.data, len(s.data)
    state = {"mask_impl": mask_impl}

    def setup():
        view = proto.get_buffer(-1)
        view[:n] = data  # the bytes a recv_into would leave, untimed as for fastws-event

    def target():
        proto.buffer_updated(n)

    def verify():
        keep = Keep()
        p, _t, _m = _picows_server(keep, size)
        _picows_feed(p, data)
        assert len(keep.payloads) == s.count, len(keep.payloads)
        assert keep.payloads[0] == s.payload and keep.payloads[-1] == s.payload

    return setup, target, verify, state


def _memcpy(s: Stream):
    """The untimed setup copy of fastws-event and picows, timed on its own for reference."""
    buf = bytearray(len(s.data))
    data = s.data

    def target():
        buf[:] = data

    def verify():
        target()
        assert buf == data

    return None, target, verify


PARSE_CONTENDERS = (
    "fastws-c-scan", "fastws-c-event", "fastws-c-event_copy", "fastws-py-scan", "fastws-py-event",
    "picows", "aiohttp-c", "websockets", "wsproto", "memcpy",
)


def _parse_contender(name: str, s: Stream):
    extra = {}
    if name.startswith("fastws-"):
        _, impl, mode = name.split("-")
        if impl == "py" and s.size not in PY_PARSE_SIZES:
            pytest.skip("pure-Python codec timed only up to 1 KiB frames")
        if mode == "scan":
            made = _fastws_scan(impl, s)
        else:
            made = _fastws_event(impl, s, copy=mode == "event_copy")
        return made, f"fastws-{impl}", mode, extra
    if name == "picows":
        *made, state = _picows(s)
        extra["mask_impl"] = state["mask_impl"]
        return tuple(made), name, "event", extra
    if name == "memcpy":
        return _memcpy(s), name, "copy", extra
    made = {"wsproto": _wsproto, "websockets": _websockets, "aiohttp-c": _aiohttp}[name](s)
    return made, name, "event", extra


@pytest.mark.parametrize("contender", PARSE_CONTENDERS)
@pytest.mark.parametrize("size", PARSE_SIZES)
def test_parse(benchmark, size, contender):
    s = stream(size)
    (setup, target, verify), impl, mode, extra = _parse_contender(contender, s)
    verify()
    benchmark.group = f"parse {size:>7} B"
    _measure(benchmark, target, setup)
    _record(
        benchmark, kind="parse", mode=mode, impl=impl,
        size=size, frames=s.count, payload_bytes=s.payload_bytes, stream_bytes=len(s.data), **extra,
    )


# -- masking --------------------------------------------------------------------

MASK_KEY = b"\x37\xfa\x21\x3d"


def _mask_contender(name: str, data: bytes):
    """(target, verify, mode): mode "copy" returns a new object, "inplace" XORs a bytearray."""
    expected = _codec_py.apply_mask(data, MASK_KEY)
    buf = bytearray(data)
    if name in ("fastws-c", "fastws-py"):
        fn = _codec(name.split("-")[1]).apply_mask

        def target():
            return fn(data, MASK_KEY)

        return target, lambda: target() == expected, "copy"
    if name in ("fastws-c-inplace", "fastws-py-inplace"):
        fn = _codec(name.split("-")[1]).mask_inplace

        def target():
            fn(buf, MASK_KEY)

        def verify():
            b = bytearray(data)
            fn(b, MASK_KEY)
            return b == expected

        return target, verify, "inplace"
    if name == "websockets-c":
        fn = pytest.importorskip("websockets.speedups").apply_mask

        def target():
            return fn(data, MASK_KEY)

        return target, lambda: target() == expected, "copy"
    if name == "aiohttp-c":
        fn = pytest.importorskip("aiohttp._websocket.mask")._websocket_mask_cython

        def target():
            fn(MASK_KEY, buf)

        def verify():
            b = bytearray(data)
            fn(MASK_KEY, b)
            return b == expected

        return target, verify, "inplace"
    raise AssertionError(name)


MASK_CONTENDERS = (
    "fastws-c", "fastws-c-inplace", "websockets-c", "aiohttp-c", "fastws-py", "fastws-py-inplace",
)


@pytest.mark.parametrize("contender", MASK_CONTENDERS)
@pytest.mark.parametrize("size", MASK_SIZES)
def test_mask(benchmark, size, contender):
    data = random.Random(size).randbytes(size)
    target, verify, mode = _mask_contender(contender, data)
    assert verify(), f"{contender} masks wrongly"
    benchmark.group = f"mask {size:>7} B"
    _measure(benchmark, target)
    _record(benchmark, kind="mask", mode=mode, impl=contender.replace("-inplace", ""),
            size=size, frames=1, payload_bytes=size)


# -- frame building --------------------------------------------------------------

def _build_contender(name: str, payload: bytes, masked: bool):
    """(target, verify): one frame of ``payload`` a call."""
    if name in ("fastws-c", "fastws-py"):
        codec = _codec(name.split("-")[1])
        frame = codec.FrameWriter(mask=masked).frame

        def target():
            return frame(OP_BINARY, payload)

        def verify():
            out = target()
            p = codec.FrameParser(mask_required=masked)
            buf = bytearray(out)
            p.feed(buf)
            assert p.next_event() == codec.EV_DATA and p.frame_finished
            return bytes(buf[p.payload_start:p.payload_end]) == payload

        return target, verify
    if name == "websockets":
        frames = pytest.importorskip("websockets.frames")
        Frame, BINARY = frames.Frame, frames.Opcode.BINARY

        def target():
            return Frame(BINARY, payload).serialize(mask=masked)

        return target, lambda: _roundtrip(target(), masked) == payload
    if name == "wsproto":
        fp_mod = pytest.importorskip("wsproto.frame_protocol")
        fp = fp_mod.FrameProtocol(client=masked, extensions=[])
        send_data = fp.send_data

        def target():
            return send_data(payload)

        return target, lambda: _roundtrip(bytes(target()), masked) == payload
    if name == "picows":
        picows = pytest.importorskip("picows")
        loop = asyncio.new_event_loop()
        transport = _FakeTransport()
        ws = picows.WSTransport(masked, transport, logging.getLogger("picows.bench"), loop)
        send, BINARY = ws.send, picows.WSMsgType.BINARY

        def target():
            send(BINARY, payload)

        def verify():
            target()
            return _roundtrip(transport.written[-1], masked) == payload

        return target, verify
    raise AssertionError(name)


def _roundtrip(frame: bytes, masked: bool) -> bytes:
    """The payload of one frame, by the reference parser."""
    p = _codec_py.FrameParser(mask_required=masked)
    buf = bytearray(frame)
    p.feed(buf)
    assert p.next_event() == _codec_py.EV_DATA and p.frame_finished and p.offset == len(buf)
    return bytes(buf[p.payload_start:p.payload_end])


BUILD_CONTENDERS = ("fastws-c", "fastws-py", "websockets", "wsproto", "picows")


@pytest.mark.parametrize("contender", BUILD_CONTENDERS)
@pytest.mark.parametrize("masked", (True, False), ids=("masked", "unmasked"))
@pytest.mark.parametrize("size", BUILD_SIZES)
def test_build(benchmark, size, masked, contender):
    payload = random.Random(size).randbytes(size)
    target, verify = _build_contender(contender, payload, masked)
    assert verify(), f"{contender} builds a wrong frame"
    benchmark.group = f"build {'masked' if masked else 'unmasked'} {size:>6} B"
    _measure(benchmark, target)
    _record(benchmark, kind="build", mode="masked" if masked else "unmasked", impl=contender,
            size=size, frames=1, payload_bytes=size)
