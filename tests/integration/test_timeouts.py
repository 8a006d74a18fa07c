"""Session timers through a running proxy: idle timeout, keepalive pings, close timeout, handshake timeout.

The proxy runs in-process (``start_proxy``, on uvloop and on asyncio) with
timeouts of a fraction of a second.  Clients and upstreams are raw sockets
(``flow_ws``) where a test needs to see or withhold single frames (pongs, close
answers), and websockets where a real library's behaviour is the point.  Time
assertions allow generous slack above each timeout (loaded CI machines) but
check that nothing fires early.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from fastws.session import PING_MAGIC

from .conftest import run
from .flow_ws import (
    through,
    CLOSE, PING, PONG, TEXT, Pump, inspect_chain,
)

SLACK = 1.0     # seconds a timer may fire late on a busy machine




# -- idle timeout ---------------------------------------------------------------------------------

IDLE = 0.4


def test_idle_timeout_closes_both_sides(start_proxy):
    """No frame either way for idle_timeout: 1001 "Idle Timeout" to the client and the upstream."""
    async def body(client, upstream, proxy):
        start = time.monotonic()
        close_c = await client.expect_close(IDLE + SLACK + 1)
        elapsed = time.monotonic() - start
        close_u = await upstream.expect_close(1)
        assert (close_c.close_code, close_c.close_reason) == (1001, "Idle Timeout")
        assert (close_u.close_code, close_u.close_reason) == (1001, "Idle Timeout")
        assert IDLE - 0.05 <= elapsed <= IDLE + SLACK, elapsed
        # Both answer; the proxy ends both connections and forgets the session.
        await client.send_close(1001)
        await upstream.send_close(1001)
        assert await client.expect_eof(2) == b""
        assert await upstream.expect_eof(2) == b""
    through(start_proxy, body, idle_timeout=IDLE)


def test_idle_timeout_with_websockets_client(start_proxy, websockets_upstream):
    """The same, seen by real libraries on both ends (websockets client and server)."""
    upstream = websockets_upstream(ping_interval=None)

    async def go():
        proxy = start_proxy(upstream.url, idle_timeout=IDLE)
        async with websockets.connect(proxy.url + "/", ping_interval=None) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            start = time.monotonic()
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), IDLE + SLACK + 1)
            elapsed = time.monotonic() - start
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (1001, "Idle Timeout")
        assert IDLE - 0.05 <= elapsed <= IDLE + SLACK
    run(go())


@pytest.mark.parametrize("direction", ["client-to-upstream", "upstream-to-client"])
def test_traffic_keeps_idle_session_open(start_proxy, direction):
    """Messages every IDLE/4 for 3 x IDLE in one direction keep the session open; once they stop
    the idle close comes IDLE later."""
    async def body(client, upstream, proxy):
        sender, receiver = (client, upstream) if direction == "client-to-upstream" else (upstream, client)
        loop = asyncio.get_running_loop()
        start = loop.time()
        count = 0
        while loop.time() - start < 3 * IDLE:
            await sender.send(TEXT, f"tick {count}")
            frame = await receiver.recv(1)
            assert (frame.opcode, frame.payload) == (TEXT, f"tick {count}".encode())
            count += 1
            await asyncio.sleep(IDLE / 4)
        assert count >= 8
        stopped = time.monotonic()
        close = await client.expect_close(IDLE + SLACK + 1)
        assert (close.close_code, close.close_reason) == (1001, "Idle Timeout")
        # IDLE after the last tick (which was IDLE/4 ago when the loop ended)
        assert time.monotonic() - stopped >= IDLE * 3 / 4 - 0.05
        assert (await upstream.expect_close(1)).close_code == 1001
    through(start_proxy, body, idle_timeout=IDLE)


def test_keepalive_pings_do_not_count_as_activity(start_proxy):
    """idle_timeout is "no frame has passed either way": the proxy's own keepalive pings and the
    pongs that answer them pass between the proxy and one side only, so an idle session with
    ping_interval < idle_timeout must still be closed for idleness."""
    idle, interval = 0.6, 0.15

    async def body(client, upstream, proxy):
        pump_c = Pump(client, answer_pings=True, answer_close=False)
        pump_u = Pump(upstream, answer_pings=True, answer_close=False)
        start = time.monotonic()
        try:
            await asyncio.wait_for(pump_c.closed.wait(), idle + SLACK + 1)
        except asyncio.TimeoutError:
            pass
        elapsed = time.monotonic() - start
        pings = len(pump_c.of(PING))
        closes = pump_c.of(CLOSE)
        assert closes, (f"no idle close after {elapsed:.1f}s with idle_timeout={idle}: the {pings} "
                        f"keepalive pong(s) kept the session alive")
        assert (closes[0].close_code, closes[0].close_reason) == (1001, "Idle Timeout")
        assert idle - 0.05 <= elapsed <= idle + SLACK
        await pump_c.stop()
        await pump_u.stop()
    through(start_proxy, body, idle_timeout=idle, ping_interval=interval, ping_timeout=1)


# -- keepalive pings --------------------------------------------------------------------------------

INTERVAL = 0.2
PING_TIMEOUT = 0.4


@pytest.mark.parametrize("mode", ["passthrough", "inspect"])
def test_pings_answered_keep_session_and_pongs_are_not_forwarded(start_proxy, mode):
    """ping_interval: the proxy pings both sides; each answers; after several intervals the
    session is still up, neither side ever sees the other's answer to a proxy ping, and the
    endpoints' own pings and pongs still go through."""
    async def body(client, upstream, proxy):
        pump_c = Pump(client, answer_pings=True)
        pump_u = Pump(upstream, answer_pings=True, echo=True)
        await asyncio.sleep(INTERVAL * 5 + 0.1)
        # The session is alive and relays.
        await client.send(TEXT, "still there?")
        for _ in range(100):
            if pump_c.of(TEXT):
                break
            await asyncio.sleep(0.01)
        assert [f.payload for f in pump_c.of(TEXT)] == [b"still there?"]
        # The endpoints' own ping and an unsolicited pong still pass.
        await client.send(PING, "client's own ping")
        await client.send(PONG, PING_MAGIC + b"999999")       # looks like ours, was never sent
        await asyncio.sleep(0.2)
        proxy_pings_c = [f for f in pump_c.of(PING) if f.payload.startswith(PING_MAGIC)]
        proxy_pings_u = [f for f in pump_u.of(PING) if f.payload.startswith(PING_MAGIC)]
        assert len(proxy_pings_c) >= 3, pump_c.frames
        assert len(proxy_pings_u) >= 3, pump_u.frames
        # Neither side saw a pong to a proxy ping (its own pongs were the answers, swallowed).
        assert [f.payload for f in pump_u.of(PONG)] == [PING_MAGIC + b"999999"]
        client_pongs = [f.payload for f in pump_c.of(PONG)]
        assert client_pongs == [b"client's own ping"], client_pongs
        assert [f.payload for f in pump_u.of(PING) if not f.payload.startswith(PING_MAGIC)] == \
            [b"client's own ping"]
        assert not pump_c.closed.is_set() and not pump_u.closed.is_set()
        await client.send_close(1000)
        await asyncio.wait_for(pump_c.closed.wait(), 2)
        await pump_c.stop()
        await pump_u.stop()
    through(start_proxy, body, ping_interval=INTERVAL, ping_timeout=PING_TIMEOUT,
            **({"chain_for": inspect_chain} if mode == "inspect" else {}))


def test_pings_with_websockets_client_stay_connected(start_proxy, websockets_upstream):
    """A real client (websockets answers pings itself) stays connected across many intervals."""
    upstream = websockets_upstream(ping_interval=None)

    async def go():
        proxy = start_proxy(upstream.url, ping_interval=INTERVAL, ping_timeout=PING_TIMEOUT)
        async with websockets.connect(proxy.url + "/", ping_interval=None) as ws:
            for i in range(5):
                await asyncio.sleep(INTERVAL)
                await ws.send(f"m{i}")
                assert await asyncio.wait_for(ws.recv(), 2) == f"m{i}"
            # Quiet for several intervals: the pings alone must not close anything.
            await asyncio.sleep(INTERVAL + PING_TIMEOUT + 0.2)
            await ws.send("end")
            assert await asyncio.wait_for(ws.recv(), 2) == "end"
        assert ws.close_code == 1000
        assert upstream.received == [f"m{i}" for i in range(5)] + ["end"]
    run(go())


@pytest.mark.parametrize("silent", ["client", "upstream"])
def test_ping_timeout(start_proxy, silent):
    """A side that never answers the proxy's ping: 1011 "Ping Timeout" to it (and its TCP closed),
    1001 to the other side, ping_interval + ping_timeout after the start."""
    async def body(client, upstream, proxy):
        quiet_side, other = (client, upstream) if silent == "client" else (upstream, client)
        pump = Pump(other, answer_pings=True, answer_close=False)
        start = time.monotonic()
        # The silent side reads (to see the frames) but never answers a ping.
        frames = []
        while True:
            frame = await quiet_side.recv(INTERVAL + PING_TIMEOUT + SLACK + 1)
            frames.append(frame)
            if frame.opcode == CLOSE:
                break
        elapsed = time.monotonic() - start
        pings = [f for f in frames if f.opcode == PING]
        assert pings and pings[0].payload.startswith(PING_MAGIC)
        close = frames[-1]
        assert (close.close_code, close.close_reason) == (1011, "Ping Timeout")
        assert INTERVAL + PING_TIMEOUT - 0.05 <= elapsed <= INTERVAL + PING_TIMEOUT + SLACK, elapsed
        assert await quiet_side.expect_eof(2) == b""
        await asyncio.wait_for(pump.closed.wait(), 2)
        other_close = pump.of(CLOSE)[0]
        assert (other_close.close_code, other_close.close_reason) == (1001, "")
        await other.send_close(1001)
        await asyncio.wait_for(pump.ended.wait(), 2)
    through(start_proxy, body, ping_interval=INTERVAL, ping_timeout=PING_TIMEOUT)


def test_pings_wait_for_frame_boundary(start_proxy):
    """A large passthrough frame trickling through: the proxy's pings to the upstream never land
    inside it (the frame arrives intact), and the trickle keeps the idle timer at bay.

    (The client does not answer the proxy's pings here: it could not put a pong inside its own
    frame either, so ping_timeout is set beyond the test's length.)"""
    size, chunks = 1 << 20, 16

    async def body(client, upstream, proxy):
        pump_c = Pump(client, answer_pings=False)
        pump_u = Pump(upstream, answer_pings=True)
        payload = bytes(range(256)) * (size // 256)
        raw = client.frame(0x2, payload)
        step = len(raw) // chunks + 1
        for i in range(0, len(raw), step):
            await client.send_raw(raw[i:i + step])
            await asyncio.sleep(INTERVAL / 2)      # the whole frame takes about 4 intervals
        for _ in range(200):
            if pump_u.of(0x2):
                break
            await asyncio.sleep(0.01)
        data = pump_u.of(0x2)
        assert len(data) == 1 and data[0].payload == payload and data[0].raw == raw
        # Pings that fell due mid-frame were skipped for the upstream; once the frame is
        # through, the next interval's ping gets there.
        for _ in range(100):
            if pump_u.of(PING):
                break
            await asyncio.sleep(INTERVAL / 10)
        assert pump_u.of(PING), "the upstream was never pinged"
        assert all(f.opcode in (PING, 0x2) for f in pump_u.frames), pump_u.frames
        assert not pump_c.closed.is_set() and not pump_u.closed.is_set()
        await client.send_close(1000)
        await asyncio.wait_for(pump_c.closed.wait(), 2)
        await pump_c.stop()
        await pump_u.stop()
    through(start_proxy, body, ping_interval=INTERVAL, ping_timeout=10,
            idle_timeout=IDLE, client_max_payload=2 << 20)


# -- close timeout ----------------------------------------------------------------------------------

CLOSE_TIMEOUT = 0.5


def test_close_timeout_upstream_never_answers(start_proxy):
    """The client closes; the upstream reads the close but never answers: after close_timeout the
    proxy drops the upstream and answers the client's close itself (echoing its code)."""
    async def body(client, upstream, proxy):
        start = time.monotonic()
        await client.send_close(1000, "bye")
        close = await upstream.expect_close(1)
        assert close.close_code == 1000
        answer = await client.expect_close(CLOSE_TIMEOUT + SLACK + 1)
        elapsed = time.monotonic() - start
        assert answer.close_code == 1000
        assert CLOSE_TIMEOUT - 0.05 <= elapsed <= CLOSE_TIMEOUT + SLACK, elapsed
        assert await client.expect_eof(2) == b""
        assert await upstream.expect_eof(2) == b""
    through(start_proxy, body, close_timeout=CLOSE_TIMEOUT)


def test_close_timeout_client_never_answers(start_proxy):
    """The upstream closes; the client never answers: the client is dropped after close_timeout,
    and the upstream gets its close echoed."""
    async def body(client, upstream, proxy):
        start = time.monotonic()
        await upstream.send_close(4000, "done")
        close = await client.expect_close(1)
        assert (close.close_code, close.close_reason) == (4000, "done")
        answer = await upstream.expect_close(CLOSE_TIMEOUT + SLACK + 1)
        assert answer.close_code == 4000
        assert await client.expect_eof(CLOSE_TIMEOUT + SLACK) == b""
        assert time.monotonic() - start >= CLOSE_TIMEOUT - 0.05
        assert await upstream.expect_eof(2) == b""
    through(start_proxy, body, close_timeout=CLOSE_TIMEOUT)


def test_close_timeout_after_proxy_close(start_proxy):
    """A close the proxy starts (idle timeout here): a client that never answers is dropped
    close_timeout after the close frame; the upstream that answers is closed normally."""
    async def body(client, upstream, proxy):
        close = await client.expect_close(IDLE + SLACK + 1)
        got_close = time.monotonic()
        assert close.close_code == 1001
        assert (await upstream.expect_close(1)).close_code == 1001
        await upstream.send_close(1001)
        assert await upstream.expect_eof(2) == b""
        assert await client.expect_eof(CLOSE_TIMEOUT + SLACK) == b""
        waited = time.monotonic() - got_close
        assert CLOSE_TIMEOUT - 0.1 <= waited <= CLOSE_TIMEOUT + SLACK, waited
    through(start_proxy, body, idle_timeout=IDLE, close_timeout=CLOSE_TIMEOUT)


# -- handshake timeout ------------------------------------------------------------------------------

HANDSHAKE_TIMEOUT = 0.5


@pytest.mark.parametrize("sent", [b"", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"])
def test_handshake_timeout(start_proxy, sent):
    """A client that sends nothing, or half a request: HTTP 408 after handshake_timeout, then close."""
    async def go():
        proxy = start_proxy(handshake_timeout=HANDSHAKE_TIMEOUT)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            start = time.monotonic()
            writer.write(sent)
            answer = await asyncio.wait_for(reader.read(), HANDSHAKE_TIMEOUT + SLACK + 1)
            elapsed = time.monotonic() - start
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert HANDSHAKE_TIMEOUT - 0.05 <= elapsed <= HANDSHAKE_TIMEOUT + SLACK, elapsed
        finally:
            writer.transport.abort()
    run(go())


def test_handshake_timeout_does_not_touch_open_sessions(start_proxy):
    """Once the session is open the handshake timer is gone: a session older than it relays on."""
    async def body(client, upstream, proxy):
        await asyncio.sleep(HANDSHAKE_TIMEOUT * 2)
        await client.send(TEXT, "late")
        assert (await upstream.recv(1)).payload == b"late"
        assert await client.quiet(0.1) == []
    through(start_proxy, body, handshake_timeout=HANDSHAKE_TIMEOUT)
