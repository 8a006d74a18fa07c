"""The sans-I/O relay: bytes in from one side, frames and closes out to each side.

No sockets and no sleeps: time is an argument.  What a side receives is decoded
with the codec in the role of that side (a client sees unmasked frames, the
upstream masked ones).
"""

from __future__ import annotations

import pytest

from fastws.codec import EV_CLOSE, EV_DATA, EV_NONE, FrameParser, FrameWriter
from fastws.frames import CloseCode, Opcode
from fastws.session import PING_MAGIC, Session, Side

C, U = Side.CLIENT, Side.UPSTREAM


def client_frame(opcode, payload=b"", fin=True):
    """A frame as a client sends it (masked)."""
    return FrameWriter(mask=True).frame(opcode, payload, fin=fin)


def server_frame(opcode, payload=b"", fin=True):
    """A frame as an upstream sends it (unmasked)."""
    return FrameWriter(mask=False).frame(opcode, payload, fin=fin)


def decode(chunks, to: Side):
    """Frames in what the session queued for ``to``: [(opcode, payload, fin)]."""
    data = bytearray(b"".join(bytes(c) for c in chunks))
    # Frames to the upstream are masked (fastws is its client), to the client plain.
    parser = FrameParser(mask_required=(to == U), validate_utf8=False)
    parser.feed(data)
    frames, payload = [], bytearray()
    while (event := parser.next_event()) != EV_NONE:
        if event == EV_DATA:
            payload += data[parser.payload_start:parser.payload_end]
            if parser.frame_finished:
                frames.append((parser.opcode, bytes(payload), parser.fin))
                payload = bytearray()
        else:
            frames.append((parser.opcode, parser.payload(), True))
            if event == EV_CLOSE:
                break
    return frames


def close_payload(code, reason=b""):
    return code.to_bytes(2, "big") + reason


def feed(session, side, data, now=0.0):
    buf = bytearray(data)
    consumed = session.receive(side, buf, len(buf), now)
    return consumed


class TrivialChain:
    """A handler chain for inspect mode: records, and rewrites by a rule."""

    def __init__(self, phases=("ws_client_frame", "ws_upstream_frame"), action=None):
        self.phases = set(phases)
        self.seen = []
        self.action = action

    def has(self, phase):
        return phase in self.phases

    def run(self, phase, frame):
        self.seen.append((phase, frame.opcode, frame.data, frame.status))
        if self.action is not None:
            self.action(phase, frame)


class TestPassthrough:
    def test_client_frames_forwarded_byte_for_byte(self):
        s = Session()
        wire = client_frame(Opcode.TEXT, b"hello") + client_frame(Opcode.BINARY, b"\x00" * 300)
        assert feed(s, C, wire) == len(wire)
        assert b"".join(bytes(c) for c in s.out(U)) == wire      # masks reused, nothing re-framed
        assert s.out(C) == []
        assert s.halves[C].parser.messages == 2

    def test_upstream_frames_forwarded_byte_for_byte(self):
        s = Session()
        wire = server_frame(Opcode.TEXT, b"a", fin=False) + server_frame(Opcode.PING, b"p") + \
            server_frame(Opcode.CONT, b"b")
        feed(s, U, wire)
        assert b"".join(bytes(c) for c in s.out(C)) == wire      # fragmentation kept, ping in between

    def test_partial_frame_is_streamed_and_tail_kept(self):
        s = Session()
        wire = client_frame(Opcode.BINARY, b"x" * 70000)
        # A header cut in the middle is not consumed; payload is forwarded as it arrives.
        assert feed(s, C, wire[:3]) == 0
        assert s.out(U) == []
        assert feed(s, C, wire[:5000]) == 5000
        assert b"".join(bytes(c) for c in s.out(U)) == wire[:5000]
        assert feed(s, C, wire[5000:]) == len(wire) - 5000
        assert b"".join(bytes(c) for c in s.out(U)) == wire[5000:]
        assert s.halves[C].parser.messages == 1

    def test_nothing_forwarded_after_a_close_frame(self):
        s = Session()
        wire = client_frame(Opcode.CLOSE, close_payload(1000, b"bye")) + client_frame(Opcode.TEXT, b"late")
        feed(s, C, wire)
        assert decode(s.out(U), U) == [(Opcode.CLOSE, close_payload(1000, b"bye"), True)]


class TestClosingHandshake:
    def test_client_initiated(self):
        s = Session()
        feed(s, C, client_frame(Opcode.CLOSE, close_payload(4000, b"done")))
        assert decode(s.out(U), U) == [(Opcode.CLOSE, close_payload(4000, b"done"), True)]
        assert not s.done(C) and not s.done(U)
        feed(s, U, server_frame(Opcode.CLOSE, close_payload(4000, b"done")))
        assert decode(s.out(C), C) == [(Opcode.CLOSE, close_payload(4000, b"done"), True)]
        assert s.done(C) and s.done(U) and s.finished
        assert not s.aborted(C) and not s.aborted(U)
        assert s.closed_by == "client"

    def test_upstream_initiated_with_data_before_the_reply(self):
        s = Session()
        feed(s, U, server_frame(Opcode.CLOSE, close_payload(1001)))
        assert decode(s.out(C), C) == [(Opcode.CLOSE, close_payload(1001), True)]
        # The client may still send data until it answers; it goes to the upstream? No:
        # the upstream has sent its close and may ignore it, but it is still relayed.
        feed(s, C, client_frame(Opcode.TEXT, b"last words") + client_frame(Opcode.CLOSE, close_payload(1001)))
        assert decode(s.out(U), U) == [(Opcode.TEXT, b"last words", True),
                                       (Opcode.CLOSE, close_payload(1001), True)]
        assert s.finished and s.closed_by == "upstream"

    def test_empty_close_is_forwarded_as_is(self):
        s = Session()
        feed(s, C, client_frame(Opcode.CLOSE))
        assert decode(s.out(U), U) == [(Opcode.CLOSE, b"", True)]
        feed(s, U, server_frame(Opcode.CLOSE))
        assert decode(s.out(C), C) == [(Opcode.CLOSE, b"", True)]
        assert s.finished

    def test_close_timeout_drops_the_silent_side_and_answers_the_other(self):
        s = Session(close_timeout=5.0)
        feed(s, C, client_frame(Opcode.CLOSE, close_payload(1000)), now=1.0)
        s.out(U)
        assert s.next_deadline() == pytest.approx(6.0)
        s.tick(5.9)
        assert not s.done(U)
        s.tick(6.0)
        assert s.done(U) and s.aborted(U)
        # The client still waited for an answer: it gets its own code back.
        assert decode(s.out(C), C) == [(Opcode.CLOSE, close_payload(1000), True)]
        assert s.finished


class TestFailures:
    def test_protocol_error_1002_to_offender_1001_to_peer(self):
        s = Session()
        good = client_frame(Opcode.TEXT, b"ok")
        bad = bytes([0x83, 0x80, 0, 0, 0, 0])      # opcode 3 is reserved
        feed(s, C, good + bad)
        assert decode(s.out(U), U) == [(Opcode.TEXT, b"ok", True), (Opcode.CLOSE, close_payload(1001), True)]
        assert decode(s.out(C), C) == [(Opcode.CLOSE, close_payload(1002, b"Protocol Error"), True)]
        assert s.done(C)                      # failed: closed right after the close frame
        assert not s.done(U)                  # waits for the upstream's answer ...
        feed(s, U, server_frame(Opcode.CLOSE, close_payload(1001)))
        assert s.out(C) == []                 # ... which is swallowed
        assert s.finished and s.closed_by == "proxy"

    def test_masked_frame_from_upstream(self):
        s = Session()
        feed(s, U, client_frame(Opcode.TEXT, b"masked"))
        assert decode(s.out(U), U) == [(Opcode.CLOSE, close_payload(1002, b"Protocol Error"), True)]
        assert decode(s.out(C), C) == [(Opcode.CLOSE, close_payload(1001), True)]

    def test_over_limit_judged_from_the_header(self):
        s = Session(client_max_payload=1024)
        header_only = client_frame(Opcode.BINARY, b"z" * 2000)[:8]
        feed(s, C, header_only)
        assert decode(s.out(C), C) == [(Opcode.CLOSE, close_payload(1009, b"Payload Too Large"), True)]
        assert decode(s.out(U), U) == [(Opcode.CLOSE, close_payload(1001), True)]

    def test_over_limit_across_fragments(self):
        s = Session(client_max_payload=1024)
        wire = client_frame(Opcode.BINARY, b"a" * 500, fin=False) + client_frame(Opcode.CONT, b"b" * 500, fin=False)
        feed(s, C, wire)
        assert decode(s.out(U), U) == [(Opcode.BINARY, b"a" * 500, False), (Opcode.CONT, b"b" * 500, False)]
        feed(s, C, client_frame(Opcode.CONT, b"c" * 500))
        assert decode(s.out(C), C) == [(Opcode.CLOSE, close_payload(1009, b"Payload Too Large"), True)]
        assert decode(s.out(U), U) == [(Opcode.CLOSE, close_payload(1001), True)]

    def test_invalid_utf8_with_validation_on(self):
        s = Session(validate_utf8=True)
        feed(s, C, client_frame(Opcode.TEXT, b"caf\xc3"))
        assert decode(s.out(C), C) == [(Opcode.CLOSE, close_payload(1007, b"Invalid Frame Payload Data"), True)]

    def test_invalid_utf8_passes_with_validation_off(self):
        s = Session(validate_utf8=False)
        wire = client_frame(Opcode.TEXT, b"caf\xc3")
        feed(s, C, wire)
        assert b"".join(bytes(c) for c in s.out(U)) == wire

    def test_tcp_drop_gives_1001_to_the_other_side(self):
        s = Session()
        s.eof(C, now=0.0)
        assert s.done(C)
        assert decode(s.out(U), U) == [(Opcode.CLOSE, close_payload(1001), True)]
        feed(s, U, server_frame(Opcode.CLOSE, close_payload(1001)))
        assert s.finished and s.closed_by == "client"

    def test_close_waits_for_the_frame_in_flight(self):
        """A close cannot be put inside a frame: it follows the frame being relayed."""
        s = Session()
        big = server_frame(Opcode.BINARY, b"q" * 1000)
        feed(s, U, big[:200])                            # upstream -> client mid-frame
        s.out(C)
        feed(s, C, bytes([0x83, 0x80, 0, 0, 0, 0]))      # client protocol error
        assert s.out(C) == []                            # the 1002 cannot go yet
        assert decode(s.out(U), U) == [(Opcode.CLOSE, close_payload(1001), True)]
        feed(s, U, big[200:] + server_frame(Opcode.TEXT, b"after"))
        out = b"".join(bytes(c) for c in s.out(C))
        assert out.startswith(big[200:])                 # the rest of the frame first
        assert decode([out[len(big) - 200:]], C) == [(Opcode.CLOSE, close_payload(1002, b"Protocol Error"), True)]
        assert s.done(C)


class TestNoCloseInsideAFrame:
    """A close frame cannot go inside a frame: when the stream to a side is stuck in a
    frame that will never be finished, that side is dropped instead."""

    def test_sender_drops_mid_frame(self):
        s = Session()
        big = client_frame(Opcode.BINARY, b"q" * 1000)
        feed(s, C, big[:300])
        assert b"".join(bytes(c) for c in s.out(U)) == big[:300]
        s.eof(C, now=0.0)
        assert s.out(U) == []                          # no close frame inside the frame
        assert s.done(U) and s.aborted(U)

    def test_bad_utf8_in_a_frame_whose_header_came_in_this_read(self):
        s = Session(validate_utf8=True)
        good = client_frame(Opcode.TEXT, b"fine")
        feed(s, C, good + client_frame(Opcode.TEXT, b"ab\xff" + b"c" * 50))
        # The good frame goes through, nothing of the bad one, then a clean 1001.
        assert decode(s.out(U), U) == [(Opcode.TEXT, b"fine", True), (Opcode.CLOSE, close_payload(1001), True)]
        assert decode(s.out(C), C) == [(Opcode.CLOSE, close_payload(1007, b"Invalid Frame Payload Data"), True)]

    def test_bad_utf8_after_the_header_went_out(self):
        s = Session(validate_utf8=True)
        bad = client_frame(Opcode.TEXT, b"a" * 100 + b"\xff" + b"c" * 50)
        feed(s, C, bad[:60])
        assert b"".join(bytes(c) for c in s.out(U)) == bad[:60]
        feed(s, C, bad[60:])
        assert s.out(U) == []                          # stuck mid-frame: dropped, not closed
        assert s.done(U) and s.aborted(U)
        assert decode(s.out(C), C) == [(Opcode.CLOSE, close_payload(1007, b"Invalid Frame Payload Data"), True)]


class TestProxyCloses:
    def test_shutdown_sends_1001_both_ways_and_swallows_answers(self):
        s = Session()
        s.close(CloseCode.GOING_AWAY, "Going Away", now=0.0)
        assert decode(s.out(C), C) == [(Opcode.CLOSE, close_payload(1001, b"Going Away"), True)]
        assert decode(s.out(U), U) == [(Opcode.CLOSE, close_payload(1001, b"Going Away"), True)]
        feed(s, C, client_frame(Opcode.CLOSE, close_payload(1001)))
        feed(s, U, server_frame(Opcode.CLOSE, close_payload(1001)))
        assert s.out(C) == [] and s.out(U) == []
        assert s.finished and not s.aborted(C) and not s.aborted(U)

    def test_idle_timeout(self):
        s = Session(idle_timeout=30.0, now=0.0)
        feed(s, C, client_frame(Opcode.TEXT, b"x"), now=10.0)
        s.tick(39.0)
        assert s.out(C) == []
        s.tick(40.0)
        assert decode(s.out(C), C) == [(Opcode.CLOSE, close_payload(1001, b"Idle Timeout"), True)]

    def test_proxy_pings_and_swallows_the_answer(self):
        s = Session(ping_interval=10.0, ping_timeout=5.0, now=0.0)
        s.tick(10.0)
        ping = decode(s.out(C), C)
        assert ping[0][0] == Opcode.PING and ping[0][1].startswith(PING_MAGIC)
        upstream_ping = decode(s.out(U), U)           # both sides are pinged
        assert upstream_ping[0][0] == Opcode.PING and upstream_ping[0][1] != ping[0][1]
        feed(s, C, client_frame(Opcode.PONG, ping[0][1]) + client_frame(Opcode.TEXT, b"t"), now=11.0)
        assert decode(s.out(U), U) == [(Opcode.TEXT, b"t", True)]     # the pong is not forwarded
        # A pong that is not the answer to fastws's ping belongs to the peer: forwarded.
        feed(s, C, client_frame(Opcode.PONG, b"unsolicited"), now=12.0)
        assert decode(s.out(U), U) == [(Opcode.PONG, b"unsolicited", True)]
        s.tick(16.0)
        assert not s.done(C)

    def test_ping_timeout_closes_1011(self):
        s = Session(ping_interval=10.0, ping_timeout=5.0, now=0.0)
        s.tick(10.0)
        s.out(C), s.out(U)
        feed(s, U, server_frame(Opcode.PONG, s.halves[U].ping_payload), now=11.0)
        s.tick(15.0)
        assert decode(s.out(C), C) == [(Opcode.CLOSE, close_payload(1011, b"Ping Timeout"), True)]
        assert decode(s.out(U), U) == [(Opcode.CLOSE, close_payload(1001), True)]
        assert s.done(C)


class TestInspect:
    def test_trivial_chain_sees_whole_messages_and_controls_in_order(self):
        chain = TrivialChain()
        s = Session(chain=chain)
        wire = (client_frame(Opcode.TEXT, b"he", fin=False) + client_frame(Opcode.PING, b"p")
                + client_frame(Opcode.CONT, b"llo"))
        feed(s, C, wire)
        assert chain.seen == [("ws_client_frame", Opcode.PING, b"p", None),
                              ("ws_client_frame", Opcode.TEXT, b"hello", None)]
        # Re-framed: one frame per message, masked afresh towards the upstream.
        assert decode(s.out(U), U) == [(Opcode.PING, b"p", True), (Opcode.TEXT, b"hello", True)]

    def test_rewrite_and_drop(self):
        def action(phase, frame):
            if frame.data == b"drop me":
                frame.dropped = True
            else:
                frame.data = frame.data.upper()
        s = Session(chain=TrivialChain(action=action))
        feed(s, U, server_frame(Opcode.TEXT, b"drop me") + server_frame(Opcode.BINARY, b"abc"))
        assert decode(s.out(C), C) == [(Opcode.BINARY, b"ABC", True)]

    def test_one_direction_inspected_the_other_passthrough(self):
        chain = TrivialChain(phases=("ws_upstream_frame",))
        s = Session(chain=chain)
        wire = client_frame(Opcode.TEXT, b"raw")
        feed(s, C, wire)
        assert b"".join(bytes(c) for c in s.out(U)) == wire
        assert chain.seen == []

    def test_handler_error_closes_both_with_1011(self):
        def boom(phase, frame):
            raise RuntimeError("plugin bug")
        errors = []
        s = Session(chain=TrivialChain(action=boom), on_error=lambda exc, phase: errors.append(phase))
        feed(s, C, client_frame(Opcode.TEXT, b"x"))
        expected = [(Opcode.CLOSE, close_payload(1011, b"Internal Server Error"), True)]
        assert decode(s.out(C), C) == expected
        assert decode(s.out(U), U) == expected
        assert errors == ["ws_client_frame"]

    def test_invalid_utf8_fails_fast_in_inspect_mode(self):
        s = Session(chain=TrivialChain())
        header_and_bad_start = client_frame(Opcode.TEXT, b"ab\xff" + b"c" * 100)[:6 + 3]
        feed(s, C, header_and_bad_start)
        assert decode(s.out(C), C) == [(Opcode.CLOSE, close_payload(1007, b"Invalid Frame Payload Data"), True)]

    def test_close_frame_goes_through_the_chain(self):
        def action(phase, frame):
            if frame.opcode == Opcode.CLOSE:
                frame.data = b"rewritten"
        s = Session(chain=TrivialChain(action=action))
        feed(s, C, client_frame(Opcode.CLOSE, close_payload(4001, b"orig")))
        assert decode(s.out(U), U) == [(Opcode.CLOSE, close_payload(4001, b"rewritten"), True)]


class TestWhoClosedAndHow:
    """What the metrics' ``fastws_closes_total{by, code}`` and the access log read: the first cause
    of the end of a session, and its close code (1006 for a connection dropped without a close)."""

    @pytest.mark.parametrize("scenario, by, code, cause", [
        (lambda s: feed(s, C, client_frame(Opcode.CLOSE, close_payload(1000))), "client", 1000, "close frame"),
        (lambda s: feed(s, U, server_frame(Opcode.CLOSE, close_payload(4001))), "upstream", 4001, "close frame"),
        (lambda s: feed(s, C, client_frame(Opcode.CLOSE)), "client", 1005, "close frame"),
        (lambda s: s.eof(U, now=0.0), "upstream", 1006, "tcp drop"),
        (lambda s: s.close(1012, "Service Restart", 0.0, cause="drain timeout"), "proxy", 1012, "drain timeout"),
        (lambda s: feed(s, C, FrameWriter(mask=False).frame(Opcode.TEXT, b"x")), "proxy", 1002,
         "client protocol error"),
        (lambda s: (s.tick(10.0), s.tick(15.0)), "proxy", 1011, "ping timeout"),
    ])
    def test_first_cause(self, scenario, by, code, cause):
        s = Session(ping_interval=10.0, ping_timeout=5.0, now=0.0)
        scenario(s)
        assert (s.closed_by, s.close_code) == (by, code)
        assert s.close_cause.startswith(cause)
        # What follows is a consequence, not a new cause.
        feed(s, U, server_frame(Opcode.CLOSE, close_payload(1001)))
        s.eof(C, now=20.0)
        assert (s.closed_by, s.close_code) == (by, code)

    def test_handler_error_is_the_proxys_1011(self):
        def boom(phase, frame):
            raise RuntimeError("plugin bug")
        s = Session(chain=TrivialChain(action=boom))
        feed(s, C, client_frame(Opcode.TEXT, b"x"))
        assert (s.closed_by, s.close_code, s.close_cause) == ("proxy", 1011, "handler error in ws_client_frame")

    def test_dropped_frames_are_counted_per_side(self):
        def action(phase, frame):
            frame.dropped = frame.data.startswith(b"drop")
        s = Session(chain=TrivialChain(action=action))
        feed(s, U, server_frame(Opcode.TEXT, b"drop 1") + server_frame(Opcode.TEXT, b"keep")
             + server_frame(Opcode.TEXT, b"drop 2"))
        feed(s, C, client_frame(Opcode.TEXT, b"drop 3"))
        assert (s.halves[C].dropped, s.halves[U].dropped) == (1, 2)
        assert decode(s.out(C), C) == [(Opcode.TEXT, b"keep", True)]
