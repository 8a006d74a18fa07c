"""RFC 6455 behaviours the Autobahn|Testsuite checks on servers, through the proxy.

Each test runs with the proxy in passthrough (no handler: original bytes
forwarded, fragmentation and client masks kept) and in inspect mode (a no-op
handler chain on both directions: messages aggregated, unmasked, sent on as one
frame), on uvloop and on the stock asyncio loop.  The client and the upstream
are raw sockets (``flow_ws``) so that the tests choose every byte on the wire
and see every byte the proxy sends -- including anything after a close frame.

Autobahn case numbers are given where a test follows one (5.x fragmentation,
6.x UTF-8, 7.x closing, 2.x pings, 9.x limits).
"""

from __future__ import annotations

import asyncio

import pytest

from .conftest import run
from .flow_ws import (
    through,
    BINARY, CLOSE, CONT, PING, PONG, TEXT, ConnectionEnded, Pump, RawServer, build, close_payload,
    connect, inspect_chain,
)

MODES = {"passthrough": {}, "inspect": {"chain_for": inspect_chain}}
# UTF-8 is checked in inspect mode always, in passthrough when validate_utf8 is on.
UTF8_MODES = {
    "passthrough": {},
    "passthrough-validate": {"validate_utf8": True},
    "inspect": {"chain_for": inspect_chain},
}


@pytest.fixture(params=list(MODES))
def mode(request) -> str:
    return request.param




async def finish_close(client, upstream, code=1000, reason=""):
    """The client closes; the close reaches the upstream, its answer the client; both TCPs end."""
    await client.send_close(code, reason)
    close = await upstream.expect_close()
    assert (close.close_code, close.close_reason) == (code, reason)
    await upstream.send_close(code, reason)
    answer = await client.expect_close()
    assert (answer.close_code, answer.close_reason) == (code, reason)
    assert await client.expect_eof(3) == b""
    assert await upstream.expect_eof(3) == b""


async def expect_failed(victim, peer, code: int, reason: str, *, peer_reason: str = ""):
    """``victim`` gets ``code`` and its TCP closed; ``peer`` gets 1001 (no reason) and answers it."""
    close = await victim.expect_close(3)
    assert (close.close_code, close.close_reason) == (code, reason)
    assert await victim.expect_eof(3) == b"", "bytes after the close frame"
    close = await peer.expect_close(3)
    assert (close.close_code, close.close_reason) == (1001, peer_reason)
    await peer.send_close(1001)
    assert await peer.expect_eof(3) == b"", "bytes after the close frame"


# -- fragmentation (Autobahn 5.x) ---------------------------------------------------------------

def test_control_frames_between_fragments(start_proxy, mode):
    """5.6-5.9: ping and pong in the middle of a fragmented text message, each sent on its own."""
    async def body(client, upstream, proxy):
        sent = [
            client.frame(TEXT, b"Hello", fin=False),
            client.frame(PING, b"ping-in-the-middle"),
            client.frame(CONT, b", ", fin=False),
            client.frame(PONG, b"unsolicited"),
            client.frame(CONT, b"World", fin=True),
        ]
        await client.send_raw(sent[0])
        await client.send_raw(sent[1])
        if mode == "passthrough":
            # Original bytes, in order, client mask and all.
            first = await upstream.recv()
            assert first.raw == sent[0]
            ping = await upstream.recv()
            assert ping.raw == sent[1]
        else:
            # The ping reaches the upstream at once, not after the message is complete.
            ping = await upstream.recv()
            assert (ping.opcode, ping.payload, ping.masked) == (PING, b"ping-in-the-middle", True)
        await upstream.send(PONG, ping.payload)           # the upstream answers the ping
        pong = await client.recv()
        assert (pong.opcode, pong.payload, pong.masked) == (PONG, b"ping-in-the-middle", False)
        for raw in sent[2:]:
            await client.send_raw(raw)
        if mode == "passthrough":
            rest = [await upstream.recv() for _ in sent[2:]]
            assert [f.raw for f in rest] == sent[2:]
        else:
            pong2 = await upstream.recv()
            assert (pong2.opcode, pong2.payload) == (PONG, b"unsolicited")
            text = await upstream.recv()
            assert (text.opcode, text.fin, text.payload, text.masked) == (TEXT, True, b"Hello, World", True)
            assert text.raw[-12:] != b"Hello, World"      # masked on the way up
        await finish_close(client, upstream)
    through(start_proxy, body, **MODES[mode])


def test_fragmented_binary_and_empty_fragments(start_proxy, mode):
    """5.3-5.5, 5.18-ish: empty fragments and single-byte fragments of a binary message."""
    async def body(client, upstream, proxy):
        parts = [b"", b"\x00", b"", b"\xff\x01", b""]
        sent = [client.frame(BINARY if i == 0 else CONT, p, fin=(i == len(parts) - 1))
                for i, p in enumerate(parts)]
        await client.send_raw(*sent)
        if mode == "passthrough":
            got = [await upstream.recv() for _ in sent]
            assert [f.raw for f in got] == sent
        else:
            got = await upstream.recv()
            assert (got.opcode, got.fin, got.payload) == (BINARY, True, b"\x00\xff\x01")
        assert await upstream.quiet(0.1) == []
        await finish_close(client, upstream)
    through(start_proxy, body, **MODES[mode])


# -- UTF-8 (Autobahn 6.x) -------------------------------------------------------------------------

TEXT_SAMPLE = "Hello-µ@ßöäüàá-UTF-8!! κόσμε €𝄞".encode()


@pytest.mark.parametrize("utf8_mode", list(UTF8_MODES))
def test_text_split_at_every_byte_boundary(start_proxy, utf8_mode):
    """6.2.1-6.2.4: valid text split anywhere, mid-sequence too, is delivered -- both directions."""
    data = TEXT_SAMPLE
    splits = list(range(1, len(data)))

    async def body(client, upstream, proxy):
        # client -> upstream: one two-fragment message per split point, then one byte per fragment
        for i in splits:
            await client.send_raw(client.frame(TEXT, data[:i], fin=False), client.frame(CONT, data[i:]))
        await client.send_raw(*[client.frame(TEXT if i == 0 else CONT, data[i:i + 1], fin=(i == len(data) - 1))
                                for i in range(len(data))])
        for i in splits + [None]:
            opcode, payload, controls = await upstream.recv_message()
            assert (opcode, payload, controls) == (TEXT, data, []), i
        # upstream -> client, the same
        for i in splits:
            await upstream.send_raw(upstream.frame(TEXT, data[:i], fin=False), upstream.frame(CONT, data[i:]))
        for i in splits:
            opcode, payload, controls = await client.recv_message()
            assert (opcode, payload, controls) == (TEXT, data, []), i
        await finish_close(client, upstream)

    # In inspect mode every message must arrive as one frame.
    if utf8_mode == "inspect":
        async def body_inspect(client, upstream, proxy):
            for i in splits:
                await client.send_raw(client.frame(TEXT, data[:i], fin=False), client.frame(CONT, data[i:]))
            for i in splits:
                frame = await upstream.recv()
                assert (frame.opcode, frame.fin, frame.payload) == (TEXT, True, data), i
            await finish_close(client, upstream)
        through(start_proxy, body_inspect, **UTF8_MODES[utf8_mode])
    through(start_proxy, body, **UTF8_MODES[utf8_mode])


# The invalid byte is in the first fragment, or in a later one, or completes a sequence wrongly.
INVALID_FRAGMENTS = {
    "first-fragment": [b"abc\xff", b"def", b"ghi"],
    "6.4.1-codepoint-above-max": ["κόσμε".encode(), b"\xf4\x90\x80\x80", b"edited"],
    "6.4.2-split-sequence": ["κόσμε".encode() + b"\xf4", b"\x90\x80\x80", b"edited"],
    "surrogate": [b"\xed", b"\xa0\x80", b"ok"],
    "overlong": [b"\xc0\xaf", b"x", b"y"],
}


@pytest.mark.parametrize("case", list(INVALID_FRAGMENTS))
@pytest.mark.parametrize("utf8_mode", ["passthrough-validate", "inspect"])
def test_invalid_utf8_fails_fast(start_proxy, utf8_mode, case):
    """6.4.x: a text message is failed (1007) as soon as a fragment has an invalid sequence,
    before the later fragments are even sent; the upstream gets a clean 1001 close."""
    fragments = INVALID_FRAGMENTS[case]

    async def body(client, upstream, proxy):
        # Send fragments one by one until the proxy fails the connection; the last one
        # must never be needed.
        close = None
        for i, part in enumerate(fragments[:-1]):
            await client.send(TEXT if i == 0 else CONT, part, fin=False)
            frames = await client.quiet(0.3)
            if frames:
                close = frames[0]
                break
        assert close is not None, "no close before the last fragment"
        assert (close.opcode, close.close_code, close.close_reason) == (CLOSE, 1007, "Invalid Frame Payload Data")
        assert await client.expect_eof(3) == b""
        # The upstream: only complete, well-formed frames, then a 1001 close with no reason.
        # (Read for a bounded time: a stream left mid-frame would otherwise just hang.)
        frames = await upstream.quiet(0.5)
        assert not upstream.buf, (
            f"the upstream was left inside a truncated frame: {frames} then {bytes(upstream.buf)!r}")
        assert frames and frames[-1].opcode == CLOSE, frames
        close_up, before = frames[-1], frames[:-1]
        assert (close_up.close_code, close_up.close_reason) == (1001, ""), close_up
        if utf8_mode == "inspect":
            assert before == []                      # nothing of the bad message went up
        else:
            # passthrough: whole fragments that were valid may have gone up, never a piece of one
            for frame in before:
                assert frame.opcode in (TEXT, CONT) and not frame.fin
                assert frame.payload in fragments, frame
        await upstream.send_close(1001)
        assert await upstream.expect_eof(3) == b""
    through(start_proxy, body, **UTF8_MODES[utf8_mode])


def test_invalid_utf8_in_passthrough_is_forwarded_unchecked(start_proxy):
    """Without validate_utf8, passthrough leaves UTF-8 to the endpoints: the bytes go through."""
    async def body(client, upstream, proxy):
        raw = client.frame(TEXT, b"\xff\xfe not utf-8")
        await client.send_raw(raw)
        assert (await upstream.recv()).raw == raw
        await finish_close(client, upstream)
    through(start_proxy, body)


def test_invalid_utf8_from_upstream_inspect(start_proxy):
    """Inspect mode checks the upstream's text too: 1007 to the upstream, 1001 to the client."""
    async def body(client, upstream, proxy):
        await upstream.send(TEXT, b"ok \xce", fin=False)
        await upstream.send(CONT, b"\x41")
        await expect_failed(upstream, client, 1007, "Invalid Frame Payload Data")
    through(start_proxy, body, chain_for=inspect_chain)


# -- closing handshake (Autobahn 7.x) --------------------------------------------------------------

def test_nothing_forwarded_after_client_close(start_proxy, mode):
    """7.1.2-7.1.6: a close then a text frame and a ping in the same write: only the close goes on."""
    async def body(client, upstream, proxy):
        await client.send(TEXT, "before")
        await client.send_raw(client.close_frame(1000, "bye"), client.frame(TEXT, "after"),
                              client.frame(PING, "after"))
        message = await upstream.recv()
        assert (message.opcode, message.payload) == (TEXT, b"before")
        close = await upstream.recv()
        assert (close.opcode, close.close_code, close.close_reason) == (CLOSE, 1000, "bye")
        assert await upstream.quiet(0.2) == []
        await upstream.send_close(1000, "bye")
        answer = await client.expect_close()
        assert answer.close_code == 1000
        assert await client.expect_eof(3) == b""
        assert await upstream.expect_eof(3) == b""
    through(start_proxy, body, **MODES[mode])


def test_nothing_forwarded_after_upstream_close(start_proxy, mode):
    """The upstream closes and keeps writing: the client sees the close and nothing after it."""
    async def body(client, upstream, proxy):
        await upstream.send_raw(upstream.close_frame(1001, "restarting"), upstream.frame(TEXT, "after"),
                                upstream.frame(PING, "after"))
        close = await client.recv()
        assert (close.opcode, close.close_code, close.close_reason) == (CLOSE, 1001, "restarting")
        assert await client.quiet(0.2) == []
        await client.send_close(1001)
        answer = await upstream.expect_close()
        assert answer.close_code == 1001
        assert await upstream.expect_eof(3) == b""
        assert await client.expect_eof(3) == b""
    through(start_proxy, body, **MODES[mode])


def test_close_without_payload(start_proxy, mode):
    """7.3.1: an empty close is forwarded empty and answered empty."""
    async def body(client, upstream, proxy):
        await client.send_close(None)
        close = await upstream.expect_close()
        assert close.payload == b""
        await upstream.send_close(None)
        answer = await client.expect_close()
        assert answer.payload == b""
        assert await client.expect_eof(3) == b""
    through(start_proxy, body, **MODES[mode])


def test_close_with_max_reason(start_proxy, mode):
    """7.3.5: a close with a 123-byte reason (125-byte payload) is relayed intact."""
    reason = "r" * 123

    async def body(client, upstream, proxy):
        await finish_close(client, upstream, 1000, reason)
    through(start_proxy, body, **MODES[mode])


VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


def test_valid_close_codes_relayed(start_proxy, mode):
    """7.7.x: every code a peer may send goes through as it is."""
    async def go():
        async with RawServer() as server:
            proxy = start_proxy(server.url, **MODES[mode])
            for code in VALID_CODES:
                client = await connect(proxy.port)
                upstream = await server.accept()
                try:
                    await finish_close(client, upstream, code, "why")
                finally:
                    client.abort()
                    upstream.abort()
    run(go(), 30)


def test_invalid_close_codes_fail(start_proxy, mode):
    """7.9.x: a close code that may not be sent is a protocol error: 1002 back, 1001 on."""
    async def go():
        async with RawServer() as server:
            proxy = start_proxy(server.url, **MODES[mode])
            for code in INVALID_CODES:
                client = await connect(proxy.port)
                upstream = await server.accept()
                try:
                    await client.send_raw(build(CLOSE, code.to_bytes(2, "big")))
                    await expect_failed(client, upstream, 1002, "Protocol Error")
                finally:
                    client.abort()
                    upstream.abort()
    run(go(), 30)


@pytest.mark.parametrize("utf8_mode", list(UTF8_MODES))
def test_close_reason_invalid_utf8(start_proxy, utf8_mode):
    """7.5.1: a close reason that is not UTF-8 gets 1007 where UTF-8 is checked; plain
    passthrough leaves it to the upstream and forwards the close as it came."""
    payload = b"\x03\xe8" + b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"

    async def body(client, upstream, proxy):
        await client.send_raw(raw := build(CLOSE, payload))
        if utf8_mode == "passthrough":
            assert (await upstream.recv()).raw == raw
            await upstream.send_close(1007)
            assert (await client.expect_close()).close_code == 1007
            assert await client.expect_eof(3) == b""
        else:
            await expect_failed(client, upstream, 1007, "Invalid Frame Payload Data")
    through(start_proxy, body, **UTF8_MODES[utf8_mode])


# -- protocol errors (Autobahn 2.x, 3.x, 4.x, 5.x) ---------------------------------------------------

BAD_CLIENT_FRAMES = {
    "3.1-rsv1-text": lambda: [build(TEXT, b"x", rsv=4)],
    "3.2-rsv2-text": lambda: [build(TEXT, b"x", rsv=2)],
    "3.4-rsv3-ping": lambda: [build(PING, b"x", rsv=1)],
    "3.7-rsv-close": lambda: [build(CLOSE, close_payload(1000), rsv=7)],
    "4.1.1-opcode-3": lambda: [build(3, b"")],
    "4.1.3-opcode-5-after-text": lambda: [build(TEXT, b"ok"), build(5, b"")],
    "4.2.1-opcode-b": lambda: [build(0xB, b"")],
    "4.2.5-opcode-f": lambda: [build(0xF, b"x")],
    "unmasked-text": lambda: [build(TEXT, b"x", mask=False)],
    "2.5-ping-126-bytes": lambda: [build(PING, b"p" * 126)],
    "5.1-fragmented-ping": lambda: [build(PING, b"a", fin=False), build(CONT, b"b")],
    "5.2-fragmented-pong": lambda: [build(PONG, b"a", fin=False), build(CONT, b"b")],
    "5.9-continuation-without-message": lambda: [build(CONT, b"x")],
    "5.17-continuation-fin-0-first": lambda: [build(CONT, b"x", fin=False)],
    "5.18-text-inside-message": lambda: [build(TEXT, b"a", fin=False), build(TEXT, b"b")],
    "7.1-close-one-byte": lambda: [build(CLOSE, b"\x03")],
    "non-minimal-16-bit-length": lambda: [build(BINARY, b"abc", length_form=16)],
    "non-minimal-64-bit-length": lambda: [build(BINARY, b"a" * 200, length_form=64)],
    "64-bit-length-msb": lambda: [build(BINARY, b"", length=1 << 63, length_form=64)],
}


@pytest.mark.parametrize("case", list(BAD_CLIENT_FRAMES))
def test_client_protocol_error(start_proxy, mode, case):
    """Any frame RFC 6455 forbids: 1002 "Protocol Error" to the client, 1001 to the upstream,
    and nothing of the bad frame goes up."""
    async def body(client, upstream, proxy):
        frames = BAD_CLIENT_FRAMES[case]()
        await client.send_raw(*frames)
        close = await client.expect_close(3)
        assert (close.close_code, close.close_reason) == (1002, "Protocol Error")
        assert await client.expect_eof(3) == b""
        close_up, before = await upstream.frames_until_close(3)
        assert (close_up.close_code, close_up.close_reason) == (1001, "")
        # Only frames before the bad one may have gone up, and only whole.
        allowed = {f for f in frames[:-1]}
        for frame in before:
            if mode == "passthrough":
                assert frame.raw in allowed, frame
            else:
                assert frame.opcode == TEXT and frame.payload == b"ok", frame
        await upstream.send_close(1001)
        assert await upstream.expect_eof(3) == b""
    through(start_proxy, body, **MODES[mode])


BAD_UPSTREAM_FRAMES = {
    "masked-frame": lambda: [build(TEXT, b"x", mask=True)],
    "rsv1": lambda: [build(BINARY, b"x", rsv=4, mask=False)],
    "opcode-3": lambda: [build(3, b"", mask=False)],
    "ping-126-bytes": lambda: [build(PING, b"p" * 126, mask=False)],
    "continuation-without-message": lambda: [build(CONT, b"x", mask=False)],
    "close-code-1005": lambda: [build(CLOSE, b"\x03\xed", mask=False)],
}


@pytest.mark.parametrize("case", list(BAD_UPSTREAM_FRAMES))
def test_upstream_protocol_error(start_proxy, mode, case):
    """The same rules for the upstream: 1002 to it, 1001 to the client."""
    async def body(client, upstream, proxy):
        await upstream.send_raw(*BAD_UPSTREAM_FRAMES[case]())
        await expect_failed(upstream, client, 1002, "Protocol Error")
    through(start_proxy, body, **MODES[mode])


# -- pings (Autobahn 2.x) ---------------------------------------------------------------------------

def test_ping_125_bytes_answered_with_same_pong(start_proxy, mode):
    """2.3/2.4: a 125-byte (and an empty, and a binary) ping reaches the upstream, whose pong with
    the same payload comes back; control frames do not count against the message limit (16 here)."""
    payloads = [b"\xfe" * 125, b"", bytes(range(125))]

    async def body(client, upstream, proxy):
        pump = Pump(upstream, answer_pings=True)
        for payload in payloads:
            await client.send(PING, payload)
            pong = await client.recv()
            assert (pong.opcode, pong.payload) == (PONG, payload)
        assert [f.payload for f in pump.of(PING)] == payloads
        await client.send_close(1000)
        assert (await client.expect_close()).close_code == 1000
        await pump.stop()
    through(start_proxy, body, client_max_payload=16, **MODES[mode])


def test_many_pings_in_one_write(start_proxy, mode):
    """2.10/2.11: ten pings at once are all relayed, and all their pongs come back in order."""
    async def body(client, upstream, proxy):
        pump = Pump(upstream, answer_pings=True)
        await client.send_raw(*[client.frame(PING, f"ping {i}") for i in range(10)])
        pongs = [await client.recv() for _ in range(10)]
        assert [(f.opcode, f.payload) for f in pongs] == [(PONG, f"ping {i}".encode()) for i in range(10)]
        await client.send_close(1000)
        assert (await client.expect_close()).close_code == 1000
        await pump.stop()
    through(start_proxy, body, **MODES[mode])


# -- limits (Autobahn 9.x-style sizes, against the configured limits) ---------------------------------

LIMIT = 1024


def test_client_message_at_limit_passes_over_limit_fails(start_proxy, mode):
    async def body(client, upstream, proxy):
        await client.send(BINARY, b"a" * LIMIT)
        frame = await upstream.recv()
        assert (frame.opcode, len(frame.payload)) == (BINARY, LIMIT)
        await client.send(BINARY, b"b" * (LIMIT + 1))
        await expect_failed(client, upstream, 1009, "Payload Too Large")
    through(start_proxy, body, client_max_payload=LIMIT, **MODES[mode])


def test_client_limit_judged_from_header(start_proxy, mode):
    """Only the header of an oversized frame is sent: the proxy answers 1009 without waiting
    for (or buffering) the payload."""
    async def body(client, upstream, proxy):
        await client.send_raw(build(BINARY, b"", length=10 * LIMIT, length_form=16))
        await expect_failed(client, upstream, 1009, "Payload Too Large")
    through(start_proxy, body, client_max_payload=LIMIT, **MODES[mode])


def test_client_limit_counts_fragments(start_proxy, mode):
    """The running total across fragments counts: the third 400-byte fragment is over 1024."""
    async def body(client, upstream, proxy):
        await client.send(BINARY, b"1" * 400, fin=False)
        await client.send(CONT, b"2" * 400, fin=False)
        await asyncio.sleep(0.1)
        await client.send(CONT, b"3" * 400, fin=True)
        close = await client.expect_close(3)
        assert (close.close_code, close.close_reason) == (1009, "Payload Too Large")
        close_up, before = await upstream.frames_until_close(3)
        assert close_up.close_code == 1001 and close_up.close_reason == ""
        if mode == "passthrough":
            assert [(f.opcode, f.payload[:1], len(f.payload)) for f in before] == [(BINARY, b"1", 400), (CONT, b"2", 400)]
        else:
            assert before == []
        await upstream.send_close(1001)
        assert await upstream.expect_eof(3) == b""
    through(start_proxy, body, client_max_payload=LIMIT, **MODES[mode])


def test_upstream_limit(start_proxy, mode):
    async def body(client, upstream, proxy):
        await upstream.send(TEXT, b"u" * LIMIT)
        frame = await client.recv()
        assert (frame.opcode, len(frame.payload)) == (TEXT, LIMIT)
        await upstream.send(TEXT, b"u" * 600, fin=False)
        await upstream.send(CONT, b"v" * 600)
        close = await upstream.expect_close(3)
        assert (close.close_code, close.close_reason) == (1009, "Payload Too Large")
        assert await upstream.expect_eof(3) == b""
        close_c, before = await client.frames_until_close(3)
        assert (close_c.close_code, close_c.close_reason) == (1001, "")
        # passthrough: the first fragment (within the limit) may have gone through whole
        expected = [(TEXT, False, b"u" * 600)] if mode == "passthrough" else []
        assert [(f.opcode, f.fin, f.payload) for f in before] in (expected, []), before
        await client.send_close(1001)
        assert await client.expect_eof(3) == b""
    through(start_proxy, body, upstream_max_payload=LIMIT, **MODES[mode])


def test_default_client_limit_is_1mib(start_proxy, mode):
    """SPEC section 4: 1 MiB by default for client messages."""
    async def body(client, upstream, proxy):
        await client.send(BINARY, b"\x00" * (1 << 20))
        _, payload, _ = await upstream.recv_message()
        assert len(payload) == 1 << 20
        await client.send_raw(build(BINARY, b"", length=(1 << 20) + 1))
        await expect_failed(client, upstream, 1009, "Payload Too Large")
    through(start_proxy, body, **MODES[mode])


# -- the proxy keeps a conforming upstream conforming -------------------------------------------------

def test_upstream_fragments_and_pings_reach_client(start_proxy, mode):
    """An upstream that fragments and pings between fragments: passthrough hands the client the
    very same bytes; inspect hands it the pings, then one frame with the whole message."""
    async def body(client, upstream, proxy):
        sent = [
            upstream.frame(TEXT, "Hel", fin=False),
            upstream.frame(PING, "u1"),
            upstream.frame(CONT, "lo", fin=False),
            upstream.frame(PING, b"\x00" * 125),
            upstream.frame(CONT, " there", fin=True),
            upstream.frame(BINARY, b"\x01\x02", fin=False),
            upstream.frame(CONT, b"\x03", fin=True),
        ]
        await upstream.send_raw(*sent)
        if mode == "passthrough":
            got = [await client.recv() for _ in sent]
            assert [f.raw for f in got] == sent
        else:
            got = [await client.recv() for _ in range(4)]
            assert [(f.opcode, f.fin, f.payload, f.masked) for f in got] == [
                (PING, True, b"u1", False),
                (PING, True, b"\x00" * 125, False),
                (TEXT, True, b"Hello there", False),
                (BINARY, True, b"\x01\x02\x03", False),
            ]
        assert await client.quiet(0.1) == []
        # The client answers the pings; the pongs reach the upstream.
        await client.send(PONG, "u1")
        await client.send(PONG, b"\x00" * 125)
        pongs = [await upstream.recv() for _ in range(2)]
        assert [(f.opcode, f.payload) for f in pongs] == [(PONG, b"u1"), (PONG, b"\x00" * 125)]
        await finish_close(client, upstream)
    through(start_proxy, body, **MODES[mode])


def test_frames_with_the_handshake_and_split_headers(start_proxy, mode):
    """Frames that arrive byte by byte (headers split anywhere) are relayed correctly."""
    async def body(client, upstream, proxy):
        raw = client.frame(TEXT, "x" * 300) + client.frame(PING, "p") + client.frame(BINARY, b"y" * 70000)
        for i in range(0, 20):
            await client.send_raw(raw[i:i + 1])
            await asyncio.sleep(0.002)
        await client.send_raw(raw[20:])
        texts = await upstream.recv()
        ping = await upstream.recv()
        binary = await upstream.recv()
        assert (texts.opcode, texts.payload) == (TEXT, b"x" * 300)
        assert (ping.opcode, ping.payload) == (PING, b"p")
        assert (binary.opcode, binary.payload) == (BINARY, b"y" * 70000)
        await finish_close(client, upstream)
    through(start_proxy, body, **MODES[mode])


def test_client_tcp_drop_gives_upstream_1001(start_proxy, mode):
    """SPEC section 6: a TCP drop without a close frame -> 1001 to the other side."""
    async def body(client, upstream, proxy):
        await client.send(TEXT, "hi")
        assert (await upstream.recv()).payload == b"hi"
        client.abort()
        close = await upstream.expect_close(3)
        assert close.close_code == 1001
        await upstream.send_close(1001)
        assert await upstream.expect_eof(3) == b""
    through(start_proxy, body, **MODES[mode])


def test_upstream_tcp_drop_gives_client_1001(start_proxy, mode):
    async def body(client, upstream, proxy):
        upstream.abort()
        close = await client.expect_close(3)
        assert close.close_code == 1001
        await client.send_close(1001)
        assert await client.expect_eof(3) == b""
    through(start_proxy, body, **MODES[mode])


def test_echo_roundtrip_many_sizes(start_proxy, mode):
    """Payload lengths around the 7/16/64-bit length encodings (1.1.x/1.2.x), echoed by the upstream."""
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 65537, 300000]

    async def body(client, upstream, proxy):
        pump = Pump(upstream, echo=True)
        for size in sizes:
            for opcode in (TEXT, BINARY):
                payload = (b"*" * size)
                await client.send(opcode, payload)
                frame = await client.recv()
                assert (frame.opcode, frame.fin, frame.payload) == (opcode, True, payload), size
        await client.send_close(1000)
        assert (await client.expect_close()).close_code == 1000
        await pump.stop()
    through(start_proxy, body, **MODES[mode])


def test_client_connection_ended_after_close_answered(start_proxy, mode):
    """After the closing handshake completes, the proxy ends the TCP connection to the client
    (RFC 6455 section 7.1.1: the server closes first)."""
    async def body(client, upstream, proxy):
        await client.send_close(1000)
        await upstream.expect_close()
        await upstream.send_close(1000)
        await client.expect_close()
        try:
            rest = await client.expect_eof(2)
        except ConnectionEnded:
            rest = b""
        assert rest == b""
        # and the proxy forgets the connection
        for _ in range(50):
            if proxy.open_connections() == 0:
                break
            await asyncio.sleep(0.02)
        assert proxy.open_connections() == 0
    through(start_proxy, body, **MODES[mode])


def test_data_after_peer_close_still_delivered(start_proxy, mode):
    """RFC 6455 section 5.5.1: the client closes; the upstream, not having answered yet, may
    still send data, which reaches the client before the upstream's close."""
    async def body(client, upstream, proxy):
        await client.send_close(1000, "done")
        assert (await upstream.expect_close()).close_code == 1000
        await upstream.send_raw(upstream.frame(TEXT, "late news"), upstream.close_frame(1000, "done"))
        late = await client.recv()
        assert (late.opcode, late.payload) == (TEXT, b"late news")
        close = await client.recv()
        assert (close.opcode, close.close_code) == (CLOSE, 1000)
        assert await client.expect_eof(3) == b""
    through(start_proxy, body, **MODES[mode])


def test_close_to_a_side_waits_for_frame_boundary(start_proxy):
    """Passthrough, mid-frame towards the upstream when the upstream commits a protocol error:
    the 1002 for the upstream cannot cut the client's frame in two, so it follows the rest of
    that frame; the client gets its 1001 at once."""
    async def body(client, upstream, proxy):
        payload = b"z" * 100000
        raw = client.frame(BINARY, payload)
        await client.send_raw(raw[:50000])
        got = bytearray()
        while len(got) < 50000:                        # the first half is through
            chunk = await asyncio.wait_for(upstream.reader.read(65536), 3)
            assert chunk
            got += chunk
        await upstream.send_raw(build(TEXT, b"masked", mask=True))   # protocol error by the upstream
        close = await client.expect_close(3)
        assert (close.close_code, close.close_reason) == (1001, "")
        await client.send_raw(raw[50000:], client.close_frame(1001))
        upstream.buf += got
        frame = await upstream.recv(3)
        assert frame.raw == raw, "the client's frame was cut"
        close_up = await upstream.recv(3)
        assert (close_up.opcode, close_up.close_code, close_up.close_reason) == (CLOSE, 1002, "Protocol Error")
        assert await upstream.expect_eof(3) == b""
        assert await client.expect_eof(3) == b""
    through(start_proxy, body, client_max_payload=1 << 20)
