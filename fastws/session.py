"""The sans-I/O relay for one client/upstream pair.

A ``Session`` is handed bytes as they arrive from either side and says what to
send to each side and when to close each connection.  It does no I/O and reads
no clock: the proxy passes ``now`` in.  (websockets' ``protocol.py`` and wsproto
are the models: ``receive_data``-style inputs, ``data_to_send``-style outputs.)

Each direction is relayed in one of two modes (SPEC section 4):

- passthrough, when no frame handler looks at that direction: the codec's
  ``scan()`` walks the frames of a whole read in C, and the original bytes are
  forwarded -- client masks included, fragmentation kept;
- inspect: messages are aggregated and unmasked, the handler chain runs, and
  the result goes out as one frame (with a fresh mask towards the upstream).

Closing (SPEC section 6, RFC 6455 section 7): a close frame from one side is
forwarded to the other and that side's answer is forwarded back; a side is done
when it has both sent and received a close, and its connection is then closed.
A close fastws makes itself (protocol error, limit, TCP drop, shutdown, timeout)
is sent to the affected sides, and their answers are swallowed.  A side that
does not answer a close within ``close_timeout`` is dropped.  A close can only
be put on a stream at a frame boundary; when passthrough is in the middle of a
frame towards that side, the close waits until the frame has been relayed.
"""

from __future__ import annotations

import enum
from typing import Any, Callable

from .codec import EV_CLOSE, EV_DATA, EV_NONE, EV_PING, EV_PONG, FrameParser, FrameWriter, mask_inplace
from .errors import PDKError, ProtocolError
from .frames import CloseCode, Opcode

__all__ = ["Session", "Side", "InFlight", "CLOSE_REASONS"]

#: Close reasons fastws sends with its own closes (SPEC section 6).
CLOSE_REASONS = {
    CloseCode.PROTOCOL_ERROR: "Protocol Error",
    CloseCode.INVALID_DATA: "Invalid Frame Payload Data",
    CloseCode.MESSAGE_TOO_BIG: "Payload Too Large",
    CloseCode.INTERNAL_ERROR: "Internal Server Error",
    CloseCode.GOING_AWAY: "Going Away",
    CloseCode.SERVICE_RESTART: "Service Restart",
}

# The payload of fastws's own pings; a pong that echoes it is not forwarded.
PING_MAGIC = b"fastws-ping:"


class Side(enum.IntEnum):
    CLIENT = 0
    UPSTREAM = 1


class InFlight:
    """The frame in the handler chain (inspect mode): what the PDK reads and edits.

    Its payload stays where it arrived -- ``view``: a view of the read buffer, or the
    bytearray a fragmented message was gathered in -- until a handler reads it:
    ``data`` makes ``bytes`` of it once.  A message no handler changed is forwarded
    from ``view`` (re-masked in place towards the upstream), not copied.
    """

    __slots__ = ("opcode", "_data", "view", "status", "dropped", "close_args", "close_code",
                 "close_reason")

    def __init__(self, opcode: int, data: bytes | None, status: int | None = None,
                 view: memoryview | bytearray | None = None) -> None:
        self.opcode = opcode
        self._data = data
        self.view = view
        self.status = status
        self.dropped = False
        self.close_args: tuple | None = None   # (status, message, peer_status, peer_message)
        self.close_code = status               # a close frame as received, for the session
        self.close_reason = ""

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = bytes(self.view)       # the one copy, when a handler asks
        return self._data

    @data.setter
    def data(self, data: bytes) -> None:
        self._data = bytes(data)
        self.view = None                        # changed: forward the new bytes

    get_data = data.fget
    set_data = data.fset

    def detach(self) -> None:
        """Stop borrowing the read buffer (before a handler awaits: the buffer moves on)."""
        if isinstance(self.view, memoryview):
            self._data = self.data
            self.view = None


class _Half:
    """State of one side: its parser (frames from it), writer (frames to it), closing flags."""

    __slots__ = (
        "side", "parser", "writer", "inspect", "out", "close_sent", "close_received",
        "close_received_code", "close_received_reason", "eof", "done",
        "abort", "deadline", "pending_close", "fail_after_send", "agg", "agg_opcode",
        "ping_sent_at", "ping_payload", "peer", "broken_frame", "waiting", "dropped",
    )

    def __init__(self, side: Side, parser: FrameParser, writer: FrameWriter, inspect: bool) -> None:
        self.side = side
        self.parser = parser              # frames coming FROM this side
        self.writer = writer              # frames going TO this side
        self.inspect = inspect            # frames from this side go through the chain
        self.out: list = []               # bytes-like objects to write TO this side
        self.close_sent = False           # a close frame was put on the stream to this side
        self.close_received = False       # this side sent a close frame
        self.close_received_code: int | None = None
        self.close_received_reason = ""
        self.eof = False                  # this side's TCP connection ended
        self.done = False                 # the proxy should close this side's connection
        self.abort = False                # ... without waiting for the write buffer
        self.deadline: float | None = None  # drop the connection then (close reply overdue)
        self.pending_close: tuple | None = None  # (code, reason, fail) waiting for a frame boundary
        self.fail_after_send = False      # close the connection right after the close frame
        self.dropped = 0                  # frames from this side a handler dropped
        self.agg: bytearray | None = None  # inspect: message being aggregated
        self.agg_opcode = 0
        self.ping_sent_at: float | None = None
        self.ping_payload = b""
        self.peer: _Half = self           # the other side, set by the Session
        # Passthrough forwarded part of a frame from this side that will never be finished
        # (the side dropped or failed mid-frame): the peer's stream is stuck inside a frame,
        # where a close frame would be read as payload, so the peer can only be dropped.
        self.broken_frame = False
        # (awaitable, frame): an async handler runs on a frame from this side; reading from
        # it waits (message order is kept), the other direction goes on.
        self.waiting: tuple | None = None


class Session:
    """Relay state for one client/upstream pair.

    Inputs: ``receive(side, buffer, end, now)``, ``eof(side, now)``, ``tick(now)``,
    ``close(code, reason, now)``.  Outputs, to be drained by the caller after
    each input: ``out(side)`` (bytes-like objects to write to that side -- they
    may be views into the buffer just passed in, so write them before touching
    that buffer again), ``done(side)``/``aborted(side)`` (close that side's
    connection, after or without flushing), ``next_deadline()``.
    """

    def __init__(
        self,
        *,
        client_max_payload: int = 1 << 20,
        upstream_max_payload: int = 16 << 20,
        validate_utf8: bool = False,
        chain: Any = None,
        close_timeout: float = 5.0,
        idle_timeout: float = 0.0,
        ping_interval: float = 0.0,
        ping_timeout: float = 20.0,
        now: float = 0.0,
        on_error: Callable[[BaseException, str], None] | None = None,
    ) -> None:
        self.chain = chain
        inspect_client = bool(chain is not None and chain.has("ws_client_frame"))
        inspect_upstream = bool(chain is not None and chain.has("ws_upstream_frame"))
        self.halves = (
            _Half(
                Side.CLIENT,
                FrameParser(mask_required=True, max_message_size=client_max_payload,
                            validate_utf8=validate_utf8 or inspect_client),
                FrameWriter(mask=False),
                inspect_client,
            ),
            _Half(
                Side.UPSTREAM,
                FrameParser(mask_required=False, max_message_size=upstream_max_payload,
                            validate_utf8=validate_utf8 or inspect_upstream),
                FrameWriter(mask=True),
                inspect_upstream,
            ),
        )
        self.halves[0].peer, self.halves[1].peer = self.halves[1], self.halves[0]
        self.close_timeout = close_timeout
        self.idle_timeout = idle_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        # The last time anything was relayed between the sides (idle_timeout counts
        # from it); fastws's own keepalive pings and their pongs do not count.
        self.last_activity = now
        self._now = now
        self.next_ping = now + ping_interval if ping_interval > 0 else None
        self.closed_by: str | None = None   # "client", "upstream" or "proxy"
        self.close_cause: str | None = None
        self.close_code: int | None = None  # of the close that ended it (1006: a TCP drop)
        self.on_error = on_error
        self._ping_counter = 0
        # Set when a deadline may have moved earlier: the proxy then reschedules its timer.
        self.timers_dirty = True
        # Set when anything but forwarding happened (a close, a failure, a timer): the
        # proxy then looks at both sides' outputs and done flags; otherwise it need not.
        self.attention = True

    # -- outputs -----------------------------------------------------------------------

    def out(self, side: Side) -> list:
        """Take the bytes-like objects queued for ``side``."""
        half = self.halves[side]
        data, half.out = half.out, []
        return data

    def done(self, side: Side) -> bool:
        return self.halves[side].done

    def aborted(self, side: Side) -> bool:
        return self.halves[side].abort

    @property
    def finished(self) -> bool:
        return self.halves[0].done and self.halves[1].done

    def next_deadline(self) -> float | None:
        """When ``tick`` must run next, or None."""
        times = [h.deadline for h in self.halves if h.deadline is not None and not h.done]
        for h in self.halves:
            if h.ping_sent_at is not None and not h.done:
                times.append(h.ping_sent_at + self.ping_timeout)
        if self.next_ping is not None and not self.closing:
            times.append(self.next_ping)
        if self.idle_timeout > 0 and not self.closing:
            times.append(self.last_activity + self.idle_timeout)
        return min(times) if times else None

    @property
    def closing(self) -> bool:
        return any(h.close_sent or h.close_received or h.eof for h in self.halves)

    # -- inputs -------------------------------------------------------------------------

    def receive(self, side: Side, buffer, end: int, now: float) -> int:
        """Bytes ``buffer[0:end]`` arrived from ``side``; returns how many were consumed.

        The caller keeps ``buffer[consumed:end]`` and passes it again, with more
        bytes behind it, on the next read.
        """
        src = self.halves[side]
        if src.close_received or src.parser.failed or src.eof:
            return end                      # RFC 6455 section 5.5.1 / 7.1.7: discard
        if src.waiting is not None:
            return 0                        # an async handler holds this direction
        self._now = now
        if type(buffer) is not memoryview:
            buffer = memoryview(buffer)     # forwarded slices are views, not copies
        dst = src.peer
        if dst.pending_close is not None and not src.inspect:
            return self._receive_to_boundary(src, dst, buffer, end, now)
        if src.inspect:
            return self._receive_inspect(src, dst, buffer, end, now)
        return self._receive_passthrough(src, dst, buffer, 0, end, now)

    def passthrough_ready(self, side: Side) -> bool:
        """Whether a read from ``side`` is plain passthrough: scan, forward, nothing else.

        The compiled relay (``fastws/_relay.pyx``) takes its fast path only then,
        and hands anything else back through ``resume_passthrough``.
        """
        src = self.halves[side]
        dst = src.peer
        return not (src.inspect or src.close_received or src.parser.failed or src.eof
                    or dst.pending_close is not None or dst.close_sent or dst.eof)

    def resume_passthrough(self, side: Side, buffer, end: int, event: int,
                           exc: ProtocolError | None, now: float) -> int:
        """Continue a read whose first ``scan()`` over ``buffer[0:end]`` the caller ran.

        ``event`` is what that scan returned, or ``exc`` what it raised.
        """
        src = self.halves[side]
        self._now = now
        return self._passthrough_loop(src, src.peer, buffer, 0, end, now, event, exc)

    def _receive_passthrough(self, src: _Half, dst: _Half, buffer, start: int, end: int, now: float) -> int:
        parser = src.parser
        parser.feed(buffer, start, end)
        try:
            event, exc = parser.scan(), None
        except ProtocolError as error:
            event, exc = EV_NONE, error
        return self._passthrough_loop(src, dst, buffer, start, end, now, event, exc)

    def _passthrough_loop(self, src: _Half, dst: _Half, buffer, start: int, end: int, now: float,
                          event: int, exc: ProtocolError | None) -> int:
        parser = src.parser
        while True:
            if exc is not None:
                stop = parser.offset
                if parser.frame_remaining:
                    # The error is inside a frame (bad UTF-8). Hold that frame back whole if
                    # its header came in this read; if the header went out earlier, the
                    # peer's stream is stuck in the frame.
                    if parser.frame_start_valid:
                        stop = max(start, parser.frame_start)
                    else:
                        src.broken_frame = True
                self._forward(dst, buffer, start, stop)
                self._protocol_error(src, exc, now)
                return end
            if event == EV_NONE:
                self._forward(dst, buffer, start, parser.offset)
                return parser.offset
            if event == EV_PONG and src.ping_sent_at is not None and parser.payload() == src.ping_payload:
                # The answer to fastws's own ping: not the peer's business.
                self._forward(dst, buffer, start, parser.frame_start)
                src.ping_sent_at = None
                start = parser.offset
            elif event == EV_CLOSE:
                self._forward(dst, buffer, start, parser.frame_start)
                raw = buffer[parser.frame_start:parser.offset]
                self._close_received(src, dst, parser.close_code, parser.close_reason, raw, now)
                parser.release()
                return end
            # Pings and the peer's pongs stay in the stream and are forwarded as they are.
            try:
                event = parser.scan()
            except ProtocolError as error:
                exc = error

    def _receive_to_boundary(self, src: _Half, dst: _Half, buffer, end: int, now: float) -> int:
        """A close waits for ``dst``: relay only the rest of the frame in flight, then send it."""
        remaining = src.parser.frame_remaining
        limit = min(end, remaining) if remaining else 0
        consumed = self._receive_passthrough(src, dst, buffer, 0, limit, now) if limit else 0
        if src.parser.frame_remaining or dst.pending_close is None:
            return consumed                 # still mid-frame (or src failed/closed meanwhile)
        code, reason, fail = dst.pending_close
        dst.pending_close = None
        self._send_close(dst, code, reason, now, fail=fail)
        if consumed == end or src.close_received or src.parser.failed:
            return end if src.close_received or src.parser.failed else consumed
        # Keep parsing what follows: nothing reaches dst any more, but src's own close
        # (its answer to a close we sent it) must still be seen.
        return self._receive_passthrough(src, dst, buffer, consumed, end, now)

    def _receive_inspect(self, src: _Half, dst: _Half, buffer, end: int, now: float) -> int:
        parser = src.parser
        parser.feed(buffer, 0, end)
        phase = "ws_client_frame" if src.side == Side.CLIENT else "ws_upstream_frame"
        while True:
            try:
                event = parser.next_event()
            except ProtocolError as exc:
                self._protocol_error(src, exc, now)
                return end
            if event == EV_NONE:
                return parser.offset
            if event == EV_DATA:
                if parser.message_finished and src.agg is None:
                    # One frame in one read: the payload stays in the read buffer (unmasked
                    # in place) unless a handler asks for it.
                    frame = InFlight(parser.message_opcode, None,
                                     view=buffer[parser.payload_start:parser.payload_end])
                else:
                    if src.agg is None:
                        src.agg = bytearray()
                        src.agg_opcode = parser.message_opcode
                    src.agg += buffer[parser.payload_start:parser.payload_end]
                    if not parser.message_finished:
                        continue
                    frame = InFlight(src.agg_opcode, None, view=src.agg)
                    src.agg = None
            elif event == EV_CLOSE:
                frame = InFlight(Opcode.CLOSE, parser.close_reason.encode(), parser.close_code)
                frame.close_reason = parser.close_reason
            else:
                frame = InFlight(Opcode.PING if event == EV_PING else Opcode.PONG, parser.payload())
                if (event == EV_PONG and src.ping_sent_at is not None and frame.data == src.ping_payload):
                    src.ping_sent_at = None
                    continue
            outcome = self._run_chain(phase, frame, src, now)
            if outcome is False:
                parser.release()
                return end
            if outcome is not True:
                # An async handler: this direction waits for it (resume() goes on).
                frame.detach()
                src.waiting = (outcome, frame)
                self.attention = True
                parser.release()
                return parser.offset
            if not self._after_chain(src, dst, frame, now):
                parser.release()
                return end

    def _after_chain(self, src: _Half, dst: _Half, frame: InFlight, now: float) -> bool:
        """Act on what the handlers made of ``frame``; False once ``src`` is done sending."""
        if frame.close_args is not None:
            self._handler_close(src, frame.close_args, now)
            return False
        if frame.opcode == Opcode.CLOSE:
            raw = dst.writer.close_frame(
                frame.status if frame.status != CloseCode.NO_STATUS_RCVD else None, frame.data)
            self._close_received(src, dst, frame.close_code, frame.close_reason, raw, now)
            return False
        if not frame.dropped:
            self._forward_frame(dst, frame)
        else:
            src.dropped += 1
        return True

    def _forward_frame(self, dst: _Half, frame: InFlight) -> None:
        """One header, then the payload where it is (masked in place towards the upstream)."""
        if dst.close_sent or dst.eof:
            return
        writer = dst.writer
        if frame.view is None:
            dst.out.append(writer.frame(frame.opcode, frame.data))
        elif writer.mask:
            key = writer.new_mask_key()
            mask_inplace(frame.view, key)
            dst.out += (writer.header(frame.opcode, len(frame.view), mask_key=key), frame.view)
        else:
            dst.out += (writer.header(frame.opcode, len(frame.view)), frame.view)
        self.last_activity = self._now

    def resume(self, side: Side, exc: BaseException | None, now: float) -> None:
        """The async handler that held ``side``'s direction finished (``exc``: it raised).

        The caller then passes the bytes it kept from that side again.
        """
        src = self.halves[side]
        if src.waiting is None:
            return
        _, frame = src.waiting
        src.waiting = None
        self.attention = True
        self._now = now
        if exc is not None:
            self._handler_failed(exc, "ws_client_frame" if side == Side.CLIENT else "ws_upstream_frame", now)
            return
        self._after_chain(src, src.peer, frame, now)

    def send(self, side: Side, opcode: int, payload: bytes) -> None:
        """A message made by the proxy (PDK ``send``) for ``side``.

        Raises:
            PDKError: that side is closing, or the passthrough stream to it is inside a
                frame (or, for a data message, inside a fragmented message), where nothing
                can be put.
        """
        dst = self.halves[side]
        if dst.close_sent or dst.eof:
            raise PDKError(f"send: the connection to the {dst.side.name.lower()} is closing")
        feeder = dst.peer
        if not feeder.inspect and (feeder.parser.frame_remaining
                                   or (opcode < Opcode.CLOSE and feeder.parser.in_message)):
            raise PDKError(f"send: a message is being relayed to the {dst.side.name.lower()} in "
                           f"passthrough; nothing can be put inside it")
        dst.out.append(dst.writer.frame(opcode, payload))
        self.attention = True

    def eof(self, side: Side, now: float) -> None:
        """``side``'s TCP connection ended (or failed)."""
        half = self.halves[side]
        if half.eof:
            return
        self.attention = True
        half.eof = True
        half.done = True
        peer = half.peer
        if not half.inspect and not half.parser.failed and half.parser.frame_remaining:
            half.broken_frame = True        # it dropped in the middle of a forwarded frame
        if not half.close_received:
            # TCP drop without a close frame: SPEC section 6, 1001 to the other side.
            self._first_cause(side.name.lower(), "tcp drop", CloseCode.ABNORMAL_CLOSURE)
            if not peer.close_sent:
                self._send_close(peer, CloseCode.GOING_AWAY, "", now)
        if peer.close_received and peer.close_sent:
            peer.done = True
        elif peer.eof:
            peer.done = True

    def close(self, code: int, reason: str, now: float, cause: str = "proxy") -> None:
        """fastws closes both sides itself (shutdown 1001, drain timeout 1012)."""
        self.attention = True
        self._first_cause("proxy", cause, code)
        for half in self.halves:
            if not half.close_sent and not half.eof:
                self._send_close(half, code, reason, now)

    def tick(self, now: float) -> None:
        """Run the timers: close replies overdue, pings, idle timeout."""
        self.attention = True
        for half in self.halves:
            if half.done:
                continue
            if half.deadline is not None and now >= half.deadline:
                # No close answer in close_timeout (SPEC section 6): drop the connection.
                half.done = True
                half.abort = True
                self.close_cause = self.close_cause or "close timeout"
                peer = half.peer
                if peer.eof or (peer.close_sent and peer.close_received):
                    peer.done = True
                elif not peer.close_sent:
                    # The peer still waits for an answer to its close (or knows nothing):
                    # echo its code, or 1001 when it sent none.
                    code = peer.close_received_code if peer.close_received else CloseCode.GOING_AWAY
                    if code == CloseCode.NO_STATUS_RCVD:
                        code = None
                    self._send_close(peer, code, "", now)
            elif half.ping_sent_at is not None and now >= half.ping_sent_at + self.ping_timeout:
                self._first_cause("proxy", "ping timeout", CloseCode.INTERNAL_ERROR)
                self._fail_side(half, CloseCode.INTERNAL_ERROR, "Ping Timeout", now)
        if self.closing:
            return
        if self.idle_timeout > 0 and now >= self.last_activity + self.idle_timeout:
            self.close(CloseCode.GOING_AWAY, "Idle Timeout", now, cause="idle timeout")
            return
        if self.next_ping is not None and now >= self.next_ping:
            self.next_ping = now + self.ping_interval
            for half in self.halves:
                if half.ping_sent_at is None and self._at_boundary(half):
                    self._ping_counter += 1
                    half.ping_payload = PING_MAGIC + str(self._ping_counter).encode()
                    half.ping_sent_at = now
                    if not half.close_sent and not half.eof:    # not relayed traffic: no activity
                        half.out.append(half.writer.frame(Opcode.PING, half.ping_payload))

    # -- internals ----------------------------------------------------------------------------

    def _first_cause(self, by: str, cause: str, code: int | None) -> None:
        """Record who closed, why and with which code; the first cause wins (what follows is
        its consequence)."""
        if self.closed_by is None:
            self.closed_by = by
            self.close_code = code
        self.close_cause = self.close_cause or cause

    def _forward(self, dst: _Half, buffer, start: int, stop: int) -> None:
        if stop > start and not dst.close_sent and not dst.eof:
            dst.out.append(buffer[start:stop])
            self.last_activity = self._now

    def _at_boundary(self, dst: _Half) -> bool:
        """Whether a frame may be put on the stream towards ``dst`` now."""
        src = dst.peer
        return src.inspect or src.parser.frame_remaining == 0 or src.eof or src.parser.failed

    def _send_close(self, dst: _Half, code: int | None, reason: str, now: float, fail: bool = False,
                    raw: bytes | None = None) -> None:
        """Put a close frame on the stream to ``dst``: one fastws makes, or ``raw``, a peer's
        close frame forwarded as it is (its code and reason are still given, in case it
        must wait for a frame boundary and be rebuilt)."""
        self.attention = True
        if dst.close_sent or dst.eof:
            if fail:
                dst.done = True
            return
        if dst.peer.broken_frame:
            # A close now would land inside an unfinished frame: drop the connection.
            dst.close_sent = True
            dst.pending_close = None
            dst.done = True
            dst.abort = True
            return
        if not self._at_boundary(dst):
            # Mid-frame in passthrough: the close goes out once the frame has been relayed.
            dst.pending_close = (code, reason, fail)
            dst.deadline = now + self.close_timeout
            self.timers_dirty = True
            return
        dst.out.append(raw if raw is not None else dst.writer.close_frame(code, reason))
        dst.close_sent = True
        dst.deadline = now + self.close_timeout
        self.timers_dirty = True
        if fail or dst.close_received:
            dst.done = True

    def _close_received(self, src: _Half, dst: _Half, code: int, reason: str, raw, now: float) -> None:
        """``src`` sent a close frame (``raw``: as it goes to ``dst``, None to swallow it)."""
        self.attention = True
        src.close_received = True
        src.close_received_code = code
        src.close_received_reason = reason
        src.ping_sent_at = None
        self._first_cause(src.side.name.lower(), "close frame", code)
        if src.close_sent:
            src.done = True                     # its answer to our (or the peer's) close
            src.deadline = None
        if raw is not None:
            self._send_close(dst, code if code != CloseCode.NO_STATUS_RCVD else None, reason, now,
                             raw=bytes(raw))
        if dst.eof:
            src.done = True                     # nobody left to answer for
        if not src.close_sent and dst.eof:
            self._send_close(src, code if code != CloseCode.NO_STATUS_RCVD else None, reason, now)

    def _protocol_error(self, src: _Half, exc: ProtocolError, now: float) -> None:
        """SPEC section 4/6: the offender gets 1002/1007/1009, its peer 1001 with no reason."""
        code = int(exc.code)
        self._first_cause("proxy", f"{src.side.name.lower()} protocol error: {exc}", code)
        self._fail_side(src, code, CLOSE_REASONS.get(code, ""), now)

    def _fail_side(self, half: _Half, code: int, reason: str, now: float) -> None:
        """Fail ``half`` (RFC 6455 section 7.1.7): close frame, then its TCP; 1001 to the peer."""
        peer = half.peer
        self._send_close(half, code, reason, now, fail=True)
        if not peer.close_sent:
            self._send_close(peer, CloseCode.GOING_AWAY, "", now)

    def _run_chain(self, phase: str, frame: InFlight, src: _Half, now: float):
        """Run the handlers: True when done, False when one raised (both sides then get
        1011), or an awaitable when one is async (the direction then waits for it)."""
        try:
            result = self.chain.run(phase, frame)
        except Exception as exc:  # a plugin bug must not take the worker down
            self._handler_failed(exc, phase, now)
            return False
        return True if result is None else result

    def _handler_failed(self, exc: BaseException, phase: str, now: float) -> None:
        """SPEC section 5: a handler raised: 1011 "Internal Server Error" to both sides."""
        if self.on_error is not None:
            self.on_error(exc, phase)
        self._first_cause("proxy", f"handler error in {phase}", CloseCode.INTERNAL_ERROR)
        for half in self.halves:
            self._send_close(half, CloseCode.INTERNAL_ERROR, "Internal Server Error", now, fail=True)

    def _handler_close(self, src: _Half, args: tuple, now: float) -> None:
        """A handler called close(): the first pair to ``src``, the second to its peer."""
        status, message, peer_status, peer_message = args
        self._first_cause("proxy", "handler close",
                          status if status is not None else CloseCode.NO_STATUS_RCVD)
        dst = src.peer
        # A status of None is a close frame with no code (an empty payload).
        self._send_close(src, status, message or "", now)
        self._send_close(dst, peer_status, peer_message or "", now)
