"""Helpers for the codec tests: a raw frame builder and a driver that feeds a parser.

The builder writes any header, legal or not (reserved bits, unknown opcodes,
non-minimal lengths), so the tests do not depend on the ``FrameWriter`` under test.

The driver feeds a byte stream in chunks the way the proxy does: it appends each
chunk to a pending buffer, feeds it, pulls events until ``EV_NONE``, then drops the
consumed prefix (``offset``) and keeps the rest for the next read.  On the way it
checks the invariants of ``_codec.pyi`` that hold for every stream:

- ``offset`` never moves backwards and stays within the fed region;
- ``scan()`` never returns ``EV_DATA`` and leaves the bytes it walks untouched;
- ``next_event()`` leaves the unmasked chunk in the buffer (in place) and
  ``payload()`` returns the same bytes;
- after a ``ProtocolError`` the parser is ``failed``.
"""

from __future__ import annotations

import dataclasses

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CONTROL_NAMES = {OP_PING: "ping", OP_PONG: "pong", OP_CLOSE: "close"}
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10

#: The masking key of RFC 6455 section 5.7's examples.
RFC_KEY = bytes((0x37, 0xFA, 0x21, 0x3D))


def xor_mask(data: bytes, key: bytes, phase: int = 0) -> bytes:
    """The trivially correct reference: byte i XOR key[(i + phase) % 4]."""
    return bytes(b ^ key[(i + phase) % 4] for i, b in enumerate(data))


def build_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask_key: bytes | None = None,
    length: int | None = None,
    length_size: int | None = None,
) -> bytes:
    """Raw frame bytes with every field settable, including illegal values.

    Args:
        opcode: 0..15, defined or not.
        payload: the unmasked payload; masked here when ``mask_key`` is given.
        fin: the FIN bit.
        rsv: any of RSV1 | RSV2 | RSV3.
        mask_key: 4 bytes to set the MASK bit and mask with, or None.
        length: the declared payload length (default ``len(payload)``).
        length_size: 7, 16 or 64 to force a length encoding (default: shortest).
    """
    if length is None:
        length = len(payload)
    if length_size is None:
        length_size = 7 if length < 126 else 16 if length < 0x10000 else 64
    first = (0x80 if fin else 0) | rsv | opcode
    maskbit = 0x80 if mask_key is not None else 0
    if length_size == 7:
        head = bytes((first, maskbit | length))
    elif length_size == 16:
        head = bytes((first, maskbit | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((first, maskbit | 127)) + length.to_bytes(8, "big")
    if mask_key is None:
        return head + payload
    return head + mask_key + xor_mask(payload, mask_key)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


def cut(data: bytes, cuts) -> list[bytes]:
    """Split ``data`` at the positions in ``cuts`` ("bytewise": at every byte)."""
    if cuts == "bytewise":
        return [data[i:i + 1] for i in range(len(data))] or [b""]
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@dataclasses.dataclass
class Run:
    """What a parser made of a stream."""

    events: list            # aggregated: one entry per complete frame (see ``drive``)
    raw: list               # one record per scan()/next_event() call, for differential tests
    error: Exception | None
    error_offset: int | None  # absolute stream position of ``offset`` when the error was raised
    consumed: int           # absolute stream position up to which input was consumed
    forwarded: bytes        # scan mode: the bytes walked over, as they were in the buffer
    parser: object

    @property
    def counters(self):
        p = self.parser
        return (p.frames, p.messages, p.payload_bytes, p.message_size)

    @property
    def error_info(self):
        if self.error is None:
            return None
        return (type(self.error).__name__, int(self.error.code), str(self.error), self.error_offset)

    def control_events(self):
        return [e for e in self.events if e[0] != "data"]


def drive(
    codec,
    data: bytes,
    *,
    mask_required: bool,
    cuts=(),
    mode: str = "event",
    readonly: bool = False,
    pad: tuple[int, int] = (0, 0),
    catch: bool = True,
    between=None,
    **options,
) -> Run:
    """Feed ``data`` cut at ``cuts`` to a new parser and collect what it reports.

    Args:
        mode: "event" (next_event) or "scan".
        readonly: feed ``bytes`` instead of a ``bytearray``.
        pad: junk bytes before and after the fed region, to exercise ``feed``'s
            start/end (offsets in the result are stream positions all the same).
        catch: record a ``ProtocolError`` in the result instead of raising it.
        between: ``between(parser, i)`` is called before the i-th chunk is fed, to
            change the writable settings mid-stream.
        options: ``max_message_size``, ``validate_utf8``, ``allow_rsv1``.

    Aggregated events: ``("data", opcode, message_opcode, fin, rsv1, payload)`` per
    data frame (its EV_DATA chunks joined), ``("ping", payload)``, ``("pong", payload)``
    and ``("close", code, reason, payload)``.
    """
    assert mode in ("event", "scan")
    parser = codec.FrameParser(mask_required=mask_required, **options)
    step = parser.next_event if mode == "event" else parser.scan
    events: list = []
    raw: list = []
    forwarded = bytearray()
    frame_chunks = bytearray()
    pending = bytearray()
    base = 0                      # stream position of pending[0]
    lead, tail = pad
    error = error_offset = None

    for index, piece in enumerate(cut(data, cuts)):
        if between is not None:
            between(parser, index)
        pending += piece
        buf = bytearray(b"\xAA" * lead) + pending + bytearray(b"\x55" * tail)
        original = bytes(buf)
        if readonly:
            buf = bytes(buf)
        start, end = lead, lead + len(pending)
        parser.feed(buf, start, end)
        assert (parser.offset, parser.end) == (start, end)
        while True:
            before = parser.offset
            try:
                event = step()
            except codec.ProtocolError as exc:
                assert parser.failed
                assert start <= before <= parser.offset <= end
                error, error_offset = exc, base + parser.offset - start
                if mode == "scan":
                    forwarded += original[before:parser.offset]
                break
            offset = parser.offset
            assert start <= before <= offset <= end, (before, offset, start, end)
            if mode == "scan":
                assert event != codec.EV_DATA, "scan() returned EV_DATA"
                # scan() leaves the wire bytes as they were: the proxy forwards them.
                assert buf[before:offset] == original[before:offset]
                forwarded += buf[before:offset]
            rel = offset - start
            remaining = parser.frame_remaining
            if event == codec.EV_NONE:
                raw.append((event, base + rel, parser.opcode, parser.fin, parser.rsv1,
                            parser.frame_length, remaining))
                break
            payload = parser.payload()
            ps, pe = parser.payload_start, parser.payload_end
            assert start <= ps <= pe <= offset
            if event == codec.EV_DATA or mode == "event":
                # next_event() unmasks in place: the buffer holds what payload() returns.
                assert bytes(buf[ps:pe]) == payload, "payload not unmasked in place"
            record = [event, base + rel, parser.opcode, parser.message_opcode, parser.fin,
                      parser.rsv1, parser.frame_length, payload, ps - start, pe - start,
                      parser.frame_finished, parser.message_finished, remaining]
            if event == codec.EV_DATA:
                assert (remaining == 0) == parser.frame_finished
            else:
                # A control event: the whole frame, header and all, is buffer[frame_start:offset].
                assert remaining == 0
                assert before <= parser.frame_start < ps
                assert offset - parser.frame_start == \
                    2 + 4 * mask_required + parser.frame_length
                record.append(base + parser.frame_start - start)
            if event == codec.EV_CLOSE:
                record += [parser.close_code, parser.close_reason]
            raw.append(tuple(record))
            if event == codec.EV_DATA:
                frame_chunks += payload
                if parser.frame_finished:
                    events.append(("data", parser.opcode, parser.message_opcode, parser.fin,
                                   parser.rsv1, bytes(frame_chunks)))
                    frame_chunks.clear()
            elif event == codec.EV_CLOSE:
                assert parser.closed
                events.append(("close", parser.close_code, parser.close_reason, payload))
            else:
                assert event in (codec.EV_PING, codec.EV_PONG), event
                events.append((CONTROL_NAMES[parser.opcode], payload))
        consumed = parser.offset - start
        parser.release()
        if error is not None:
            break
        del pending[:consumed]
        base += consumed

    if error is not None and not catch:
        raise error
    return Run(events, raw, error, error_offset, base if error is None else error_offset,
               bytes(forwarded), parser)


# -- hypothesis strategies for frame streams ---------------------------------------------

from hypothesis import strategies as st  # noqa: E402  (kept next to its only users)

#: Sequences impossible at their last byte (RFC 3629), for corrupting text payloads.
INVALID_UTF8 = [b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1", b"\xf5", b"\xff", b"\xe0\x80",
                b"\xed\xa0\x80", b"\xed\xbf", b"\xf0\x8f", b"\xf4\x90", b"\xc2A", b"\xe2\x82",
                b"\xf0\x9d\x84"]
LENGTH_EDGES = [125, 126, 127, 65535, 65536]
CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999,
               0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]


@dataclasses.dataclass
class Spec:
    """One frame to encode; fields may be illegal on purpose."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    masked: bool | None = None        # None: as the direction requires
    length_size: int | None = None    # None: shortest encoding
    length: int | None = None         # None: len(payload)


def _data_payload(draw, opcode: int) -> bytes:
    if draw(st.integers(0, 9)) == 0:             # an edge length, cheaply filled
        n = draw(st.sampled_from(LENGTH_EDGES))
        if opcode == OP_TEXT:          # whole characters only, padded to n bytes
            text = ("tëxt €" * n).encode()[:n].decode("utf-8", "ignore").encode()
            return text + b" " * (n - len(text))
        return (bytes(range(256)) * (n // 256 + 1))[:n]
    if opcode == OP_TEXT:
        if draw(st.booleans()):     # mostly ASCII: runs long enough for word-at-a-time paths
            return draw(st.text(alphabet="abcdefgh é€𝄞", max_size=60)).encode()
        return draw(st.text(max_size=40)).encode()
    return draw(st.binary(max_size=40))


def _split(draw, payload: bytes, parts: int) -> list[bytes]:
    points = sorted(draw(st.lists(st.integers(0, len(payload)), min_size=parts - 1,
                                  max_size=parts - 1)))
    bounds = [0, *points, len(payload)]
    return [payload[a:b] for a, b in zip(bounds, bounds[1:])]


def _control(draw) -> Spec:
    opcode = draw(st.sampled_from([OP_PING, OP_PONG]))
    return Spec(opcode, draw(st.binary(max_size=125)) if draw(st.booleans()) else b"")


def _close(draw) -> Spec:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return Spec(OP_CLOSE, b"")
    code = draw(st.sampled_from(CLOSE_CODES[:11]) if kind < 4 else st.sampled_from(CLOSE_CODES))
    reason = draw(st.text(max_size=20)).encode()[:123]
    if kind == 5:
        reason += draw(st.sampled_from(INVALID_UTF8))
    return Spec(OP_CLOSE, close_payload(code, reason)[:125])


def _mutate(draw, specs: list[Spec]) -> None:
    """Break one rule somewhere in the stream."""
    if not specs:
        specs.append(Spec(draw(st.integers(0, 15)), draw(st.binary(max_size=8))))
        return
    i = draw(st.integers(0, len(specs) - 1))
    s = specs[i]
    kind = draw(st.sampled_from(["rsv", "opcode", "fin", "mask", "length_size", "utf8",
                                 "control_big", "close", "delete", "duplicate", "msb"]))
    if kind == "rsv":
        s.rsv = draw(st.sampled_from([RSV1, RSV2, RSV3, RSV1 | RSV2, RSV1 | RSV3]))
    elif kind == "opcode":
        s.opcode = draw(st.integers(0, 15))
    elif kind == "fin":
        s.fin = not s.fin
    elif kind == "mask":
        s.masked = draw(st.booleans())
    elif kind == "length_size":      # a longer encoding than needed (never a shorter one)
        n = len(s.payload) if s.length is None else s.length
        s.length_size = 64 if n >= 0x10000 else draw(st.sampled_from([16, 64]))
    elif kind == "utf8":
        pos = draw(st.integers(0, len(s.payload)))
        s.payload = s.payload[:pos] + draw(st.sampled_from(INVALID_UTF8)) + s.payload[pos:]
    elif kind == "control_big":
        specs.insert(i, Spec(draw(st.sampled_from([OP_PING, OP_PONG, OP_CLOSE])),
                             b"\x03\xe8" + b"x" * draw(st.integers(124, 200))))
    elif kind == "close":
        specs.insert(i, Spec(OP_CLOSE, draw(st.sampled_from(
            [b"\x03", b"\x03\xed", b"\x00\x00", b"\x03\xe8\xff", b"\x13\x88ok"]))))
    elif kind == "delete":
        del specs[i]
    elif kind == "duplicate":
        specs.insert(i, dataclasses.replace(s))
    elif kind == "msb":
        s.length, s.length_size = draw(st.sampled_from([2**63, 2**64 - 1, 2**63 + 126])), 64


@st.composite
def frame_specs(draw, *, max_messages: int = 4, mutations: bool = True) -> list[Spec]:
    """Mostly well-formed frames (fragmented messages, interleaved control frames,
    maybe a close), then zero to two broken rules."""
    specs: list[Spec] = []
    for _ in range(draw(st.integers(0, max_messages))):
        opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
        parts = _split(draw, _data_payload(draw, opcode), draw(st.integers(1, 3)))
        for n, part in enumerate(parts):
            specs.append(Spec(opcode if n == 0 else OP_CONT, part, fin=n == len(parts) - 1))
            if draw(st.integers(0, 3)) == 0:
                specs.append(_control(draw))
    if draw(st.integers(0, 3)) == 0:
        specs.append(_close(draw))
    if mutations:
        for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
            _mutate(draw, specs)
    return specs


def encode_specs(draw, specs: list[Spec], mask_required: bool) -> bytes:
    out = []
    for s in specs:
        masked = mask_required if s.masked is None else s.masked
        key = draw(st.binary(min_size=4, max_size=4)) if masked else None
        out.append(build_frame(s.opcode, s.payload, fin=s.fin, rsv=s.rsv, mask_key=key,
                               length=s.length, length_size=s.length_size))
    return b"".join(out)


@st.composite
def cut_points(draw, data: bytes):
    if len(data) <= 300 and draw(st.integers(0, 7)) == 0:
        return "bytewise"
    return draw(st.lists(st.integers(0, len(data)), max_size=8))


@st.composite
def parser_options(draw):
    return {
        "max_message_size": draw(st.sampled_from([0, 0, 0, 1, 40, 125, 1000, 65536])),
        "validate_utf8": draw(st.booleans()),
        "allow_rsv1": draw(st.booleans()),
    }


def examples(n: int) -> int:
    """``n`` hypothesis examples under the default profile (100), scaled with the profile
    in use (``HYPOTHESIS_PROFILE=nightly`` runs twenty times as many)."""
    from hypothesis import settings
    return max(1, n * settings.default.max_examples // 100)
