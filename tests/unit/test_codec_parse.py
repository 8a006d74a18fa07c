"""FrameParser against RFC 6455 section 5 (and 7.4, 8.1), one class per section.

Every test runs on both codecs (the ``codec`` fixture) and, where it matters, in
both directions (``mask_required``) and both modes (``next_event`` and ``scan``).
Error tests check the class, the close code (``exc.code``) and, for the cases that
cannot depend on chunking, where ``offset`` was left.
"""

from __future__ import annotations

import itertools

import pytest

from codec_helpers import (
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RFC_KEY, RSV1, RSV2, RSV3,
    build_frame, close_payload, drive,
)
from fastws import _codec_py as ref
from fastws.errors import InvalidPayloadData, PayloadTooBig, ProtocolError

KEY = RFC_KEY
ALL_OPCODES = (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG)
UNDEFINED_OPCODES = (0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF)
LENGTH_BOUNDARIES = (0, 1, 125, 126, 127, 65535, 65536, 1 << 20)


def pattern(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def key_for(mask_required: bool) -> bytes | None:
    """The mask key a valid frame in this direction carries."""
    return KEY if mask_required else None


def wrong_key_for(mask_required: bool) -> bytes | None:
    return None if mask_required else KEY


def header_size(length: int, masked: bool) -> int:
    return (2 if length < 126 else 4 if length < 0x10000 else 10) + (4 if masked else 0)


@pytest.fixture(params=[True, False], ids=["from-client", "from-server"])
def mask_required(request):
    """True: the parser reads a client's frames (masked); False: a server's (plain)."""
    return request.param


def expect_events(codec, data, *, mask_required, events, bytewise=True, **options):
    """``data`` parses to ``events`` fed whole and one byte at a time, in both modes.

    Returns the whole-feed next_event run.
    """
    runs = {}
    cut_modes = [()] + (["bytewise"] if bytewise and len(data) <= 4096 else [])
    for cuts, mode in itertools.product(cut_modes, ("event", "scan")):
        run = drive(codec, data, mask_required=mask_required, cuts=cuts, mode=mode, **options)
        assert run.error is None, (mode, cuts, run.error)
        expected = events if mode == "event" else [e for e in events if e[0] != "data"]
        got = run.events if mode == "event" else run.control_events()
        assert got == expected, (mode, cuts)
        if mode == "scan":
            assert run.forwarded == data[:len(run.forwarded)]
        runs[cuts, mode] = run
    reference = runs[(), "event"]
    for (cuts, mode), run in runs.items():
        assert run.counters == reference.counters, (cuts, mode)
        assert run.parser.closed == reference.parser.closed
    return reference


def expect_error(codec, data, *, mask_required, exc, code, message=None, offset=None,
                 bytewise=True, **options):
    """``data`` fails with ``exc``/``code`` fed whole and one byte at a time, in both modes."""
    runs = []
    cut_modes = [()] + (["bytewise"] if bytewise and len(data) <= 4096 else [])
    for cuts, mode in itertools.product(cut_modes, ("event", "scan")):
        run = drive(codec, data, mask_required=mask_required, cuts=cuts, mode=mode, **options)
        assert run.error is not None, f"no error ({mode}, {cuts}): {run.events}"
        assert type(run.error) is exc, (mode, cuts, run.error)
        assert run.error.code == code
        assert isinstance(run.error, ProtocolError)
        if message is not None:
            assert str(run.error) == message
        if offset is not None:
            assert run.error_offset == offset, (mode, cuts)
        assert run.parser.failed
        runs.append(run)
    return runs


def fails_on(codec, data, *, mask_required, **options):
    """The error raised by next_event when exactly ``data`` is fed (no more)."""
    parser = codec.FrameParser(mask_required=mask_required, **options)
    parser.feed(bytearray(data))
    with pytest.raises(ProtocolError) as info:
        while parser.next_event() != codec.EV_NONE:
            pass
    return info.value, parser


# ---------------------------------------------------------------------------------------
class TestBaseFraming:
    """RFC 6455 section 5.2: base framing, lengths, reserved bits and opcodes."""

    @pytest.mark.parametrize("length", LENGTH_BOUNDARIES)
    def test_length_encodings(self, codec, mask_required, length):
        payload = pattern(length)
        data = build_frame(OP_BINARY, payload, mask_key=key_for(mask_required))
        hsize = header_size(length, mask_required)
        assert len(data) == hsize + length
        run = expect_events(codec, data, mask_required=mask_required,
                            events=[("data", OP_BINARY, OP_BINARY, True, False, payload)])
        assert run.counters == (1, 1, length, length)

        # Only the header: consumed whole, the frame described, the payload awaited.
        parser = codec.FrameParser(mask_required=mask_required)
        parser.feed(bytearray(data[:hsize]))
        event = parser.next_event()
        assert parser.offset == hsize
        assert (parser.opcode, parser.fin, parser.frame_length) == (OP_BINARY, True, length)
        if length == 0:
            assert event == codec.EV_DATA and parser.frame_finished and parser.message_finished
        else:
            assert event == codec.EV_NONE
            assert parser.frames == 0 and parser.payload_bytes == 0

    @pytest.mark.parametrize("length", [2**16, 2**32, 2**62, 2**63 - 1])
    def test_large_declared_length_streams(self, codec, mask_required, length):
        head = build_frame(OP_BINARY, b"", length=length, mask_key=key_for(mask_required))
        body = pattern(300)
        masked_body = body if not mask_required else bytes(
            b ^ KEY[i % 4] for i, b in enumerate(body))
        parser = codec.FrameParser(mask_required=mask_required)
        buf = bytearray(head + masked_body)
        parser.feed(buf)
        assert parser.next_event() == codec.EV_DATA
        assert parser.frame_length == length
        assert parser.payload() == body
        assert not parser.frame_finished and not parser.message_finished
        assert (parser.frames, parser.messages, parser.payload_bytes, parser.message_size) \
            == (0, 0, 300, 300)
        assert parser.next_event() == codec.EV_NONE
        assert parser.offset == len(buf)

    def test_frame_start_and_frame_remaining(self, codec, mask_required):
        key = key_for(mask_required)
        data_frame = build_frame(OP_BINARY, pattern(300), mask_key=key)
        ping = build_frame(OP_PING, b"ping", mask_key=key)
        buf = bytearray(b"###" + ping + data_frame + ping)
        parser = codec.FrameParser(mask_required=mask_required)
        assert parser.frame_remaining == 0
        parser.feed(buf, 3, len(buf) - len(ping) - 100)   # the data frame is cut short
        assert parser.next_event() == codec.EV_PING
        assert parser.frame_start == 3                    # the whole frame: [frame_start:offset]
        assert parser.offset - parser.frame_start == len(ping)
        assert buf[parser.frame_start:parser.frame_start + 2] == ping[:2]   # its header
        assert parser.frame_remaining == 0
        assert parser.next_event() == codec.EV_DATA
        assert parser.frame_start == 3 + len(ping)
        assert parser.frame_remaining == 100 == 300 - (parser.payload_end - parser.payload_start)
        assert parser.next_event() == codec.EV_NONE
        assert parser.frame_remaining == 100              # still in the frame
        parser.feed(buf, parser.offset)
        assert parser.next_event() == codec.EV_DATA and parser.frame_finished
        assert parser.frame_remaining == 0
        assert parser.next_event() == codec.EV_PING
        assert parser.frame_start == len(buf) - len(ping)
        assert parser.frame_remaining == 0

    def test_data_payload_consumed_as_it_arrives(self, codec, mask_required):
        payload = pattern(300)
        data = build_frame(OP_BINARY, payload, mask_key=key_for(mask_required))
        hsize = header_size(300, mask_required)
        parser = codec.FrameParser(mask_required=mask_required)
        got, pos = b"", 0
        for stop in (hsize, hsize + 10, hsize + 11, hsize + 150, len(data)):
            buf = bytearray(data[:stop])       # the same stream, more of it each read
            parser.feed(buf, pos)
            while (event := parser.next_event()) == codec.EV_DATA:
                got += parser.payload()
                assert parser.offset == hsize + len(got)     # consumed as it came
                assert parser.frame_finished == (len(got) == 300)
            assert event == codec.EV_NONE and parser.offset == stop
            assert parser.frame_length == 300 and parser.opcode == OP_BINARY
            pos = parser.offset
        assert got == payload and parser.payload_bytes == 300 and parser.frames == 1

    def test_rfc_examples(self, codec):
        """The example frames of RFC 6455 section 5.7, byte for byte."""
        hello = b"Hello"
        unmasked_text = bytes((0x81, 0x05)) + hello
        masked_text = bytes((0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58))
        fragments = bytes((0x01, 0x03, 0x48, 0x65, 0x6C, 0x80, 0x02, 0x6C, 0x6F))
        ping = bytes((0x89, 0x05)) + hello
        masked_pong = bytes((0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58))
        bin256 = bytes((0x82, 0x7E, 0x01, 0x00)) + pattern(256)
        bin64k = bytes((0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0)) + pattern(65536)
        expect_events(codec, unmasked_text, mask_required=False,
                      events=[("data", OP_TEXT, OP_TEXT, True, False, hello)])
        expect_events(codec, masked_text, mask_required=True,
                      events=[("data", OP_TEXT, OP_TEXT, True, False, hello)])
        expect_events(codec, fragments, mask_required=False,
                      events=[("data", OP_TEXT, OP_TEXT, False, False, b"Hel"),
                              ("data", OP_CONT, OP_TEXT, True, False, b"lo")])
        expect_events(codec, ping, mask_required=False, events=[("ping", hello)])
        expect_events(codec, masked_pong, mask_required=True, events=[("pong", hello)])
        expect_events(codec, bin256, mask_required=False,
                      events=[("data", OP_BINARY, OP_BINARY, True, False, pattern(256))])
        expect_events(codec, bin64k, mask_required=False,
                      events=[("data", OP_BINARY, OP_BINARY, True, False, pattern(65536))])

    @pytest.mark.parametrize("length", [0, 1, 125])
    def test_non_minimal_16_bit_length(self, codec, mask_required, length):
        data = build_frame(OP_BINARY, pattern(length), length_size=16,
                           mask_key=key_for(mask_required))
        expect_error(codec, data, mask_required=mask_required, exc=ProtocolError, code=1002,
                     message=ref.MSG_NON_MINIMAL, offset=0)
        # Known from the 4 length bytes alone.
        exc, parser = fails_on(codec, data[:4], mask_required=mask_required)
        assert str(exc) == ref.MSG_NON_MINIMAL and parser.offset == 0

    @pytest.mark.parametrize("length", [0, 1, 125, 126, 65535])
    def test_non_minimal_64_bit_length(self, codec, mask_required, length):
        data = build_frame(OP_BINARY, pattern(length), length_size=64,
                           mask_key=key_for(mask_required))
        expect_error(codec, data, mask_required=mask_required, exc=ProtocolError, code=1002,
                     message=ref.MSG_NON_MINIMAL, offset=0)
        exc, parser = fails_on(codec, data[:10], mask_required=mask_required)
        assert exc.code == 1002 and parser.offset == 0

    @pytest.mark.parametrize("length", [2**63, 2**63 + 1, 2**64 - 1])
    def test_64_bit_length_with_msb_set(self, codec, mask_required, length):
        data = build_frame(OP_BINARY, b"", length=length, mask_key=key_for(mask_required))
        expect_error(codec, data, mask_required=mask_required, exc=ProtocolError, code=1002,
                     message=ref.MSG_LENGTH_MSB, offset=0)

    @pytest.mark.parametrize("rsv", [RSV2, RSV3, RSV2 | RSV3, RSV1 | RSV2, RSV1 | RSV3])
    @pytest.mark.parametrize("opcode", ALL_OPCODES)
    @pytest.mark.parametrize("allow_rsv1", [False, True])
    def test_rsv2_rsv3_never_allowed(self, codec, mask_required, rsv, opcode, allow_rsv1):
        prefix = build_frame(OP_TEXT, b"x", fin=False, mask_key=key_for(mask_required)) \
            if opcode == OP_CONT else b""
        data = prefix + build_frame(opcode, b"ab", rsv=rsv, mask_key=key_for(mask_required))
        expect_error(codec, data, mask_required=mask_required, exc=ProtocolError, code=1002,
                     message=ref.MSG_RSV, offset=len(prefix), allow_rsv1=allow_rsv1)

    @pytest.mark.parametrize("opcode", ALL_OPCODES)
    def test_rsv1_without_extension(self, codec, mask_required, opcode):
        prefix = build_frame(OP_TEXT, b"x", fin=False, mask_key=key_for(mask_required)) \
            if opcode == OP_CONT else b""
        data = prefix + build_frame(opcode, b"ab", rsv=RSV1, mask_key=key_for(mask_required))
        expect_error(codec, data, mask_required=mask_required, exc=ProtocolError, code=1002,
                     message=ref.MSG_RSV, offset=len(prefix))

    @pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
    def test_rsv1_with_extension_on_first_data_frame(self, codec, mask_required, opcode):
        """RFC 7692: RSV1 marks a compressed message, on its first frame only."""
        key = key_for(mask_required)
        data = (build_frame(opcode, b"ab", fin=False, rsv=RSV1, mask_key=key)
                + build_frame(OP_CONT, b"cd", mask_key=key)
                + build_frame(opcode, b"ef", rsv=RSV1, mask_key=key))
        expect_events(codec, data, mask_required=mask_required, allow_rsv1=True, events=[
            ("data", opcode, opcode, False, True, b"ab"),
            ("data", OP_CONT, opcode, True, False, b"cd"),
            ("data", opcode, opcode, True, True, b"ef"),
        ])

    @pytest.mark.parametrize("opcode", [OP_CONT, OP_PING, OP_PONG, OP_CLOSE])
    def test_rsv1_with_extension_not_on_control_or_continuation(self, codec, mask_required,
                                                                 opcode):
        key = key_for(mask_required)
        prefix = build_frame(OP_TEXT, b"x", fin=False, rsv=RSV1, mask_key=key) \
            if opcode == OP_CONT else b""
        data = prefix + build_frame(opcode, b"\x03\xe8", rsv=RSV1, mask_key=key)
        expect_error(codec, data, mask_required=mask_required, exc=ProtocolError, code=1002,
                     message=ref.MSG_RSV1_CONTROL, offset=len(prefix), allow_rsv1=True)

    @pytest.mark.parametrize("opcode", UNDEFINED_OPCODES)
    def test_undefined_opcodes(self, codec, mask_required, opcode):
        data = build_frame(opcode, b"ab", mask_key=key_for(mask_required))
        expect_error(codec, data, mask_required=mask_required, exc=ProtocolError, code=1002,
                     message=ref.MSG_OPCODE.format(opcode), offset=0)
        assert f"{opcode:#x}" in ref.MSG_OPCODE.format(opcode)

    @pytest.mark.parametrize("first_two", [
        bytes((0x80 | RSV2 | OP_BINARY, 127)),       # reserved bit, 64-bit length to come
        bytes((0x80 | 0x3, 126)),                    # undefined opcode
        bytes((OP_PING, 0)),                         # fragmented control frame
        bytes((0x80 | OP_PING, 126)),                # control frame over 125 bytes
        bytes((0x80 | OP_CONT, 127)),                # continuation with no message
    ])
    def test_header_errors_raised_from_the_first_two_bytes(self, codec, mask_required,
                                                           first_two):
        data = bytes((first_two[0], first_two[1] | (0x80 if mask_required else 0)))
        exc, parser = fails_on(codec, data, mask_required=mask_required)
        assert exc.code == 1002
        assert parser.offset == 0 and parser.failed

    def test_partial_header_is_not_consumed(self, codec, mask_required):
        for length in (5, 300, 70000):
            data = build_frame(OP_BINARY, pattern(length), mask_key=key_for(mask_required))
            hsize = header_size(length, mask_required)
            for n in range(hsize):
                parser = codec.FrameParser(mask_required=mask_required)
                buf = bytearray(b"##" + data[:n] + b"##")
                parser.feed(buf, 2, 2 + n)
                assert parser.next_event() == codec.EV_NONE
                assert parser.offset == 2, (length, n)
                assert parser.frames == 0 and not parser.failed

    def test_one_byte_at_a_time_equals_one_feed(self, codec, mask_required):
        key = key_for(mask_required)
        data = b"".join([
            build_frame(OP_TEXT, "héllo €".encode(), mask_key=key),
            build_frame(OP_BINARY, pattern(126), fin=False, mask_key=key),
            build_frame(OP_PING, b"are you there", mask_key=key),
            build_frame(OP_CONT, b"", fin=False, mask_key=key),
            build_frame(OP_PONG, b"", mask_key=key),
            build_frame(OP_CONT, pattern(300), mask_key=key),
            build_frame(OP_BINARY, b"", mask_key=key),
            build_frame(OP_CLOSE, close_payload(1001, "gone".encode()), mask_key=key),
        ])
        for mode in ("event", "scan"):
            whole = drive(codec, data, mask_required=mask_required, mode=mode)
            bytewise = drive(codec, data, mask_required=mask_required, mode=mode,
                             cuts="bytewise")
            assert whole.error is None and bytewise.error is None
            assert whole.events == bytewise.events
            assert whole.counters == bytewise.counters == (8, 3, 436, 0)
            assert whole.events[-1] == ("close", 1001, "gone", close_payload(1001, b"gone"))
        assert len(drive(codec, data, mask_required=mask_required).events) == 8

    def test_feed_region_bounds(self, codec, mask_required):
        data = build_frame(OP_TEXT, b"inside", mask_key=key_for(mask_required))
        run = drive(codec, data, mask_required=mask_required, pad=(7, 5))
        assert run.events == [("data", OP_TEXT, OP_TEXT, True, False, b"inside")]
        parser = codec.FrameParser(mask_required=mask_required)
        buf = bytearray(10)
        for start, end in [(-1, 5), (5, 3), (0, 11), (11, 11), (11, -1)]:
            with pytest.raises(ValueError):
                parser.feed(buf, start, end)
        parser.feed(buf, 10, 10)
        assert (parser.offset, parser.end) == (10, 10)
        assert parser.next_event() == codec.EV_NONE
        parser.feed(buf, 3)
        assert (parser.offset, parser.end) == (3, 10)

    def test_buffer_export_held_until_region_used_up(self, codec, mask_required):
        key = key_for(mask_required)
        buf = bytearray(build_frame(OP_PING, b"1", mask_key=key)
                        + build_frame(OP_PING, b"2", mask_key=key))
        parser = codec.FrameParser(mask_required=mask_required)
        parser.feed(buf)
        assert parser.next_event() == codec.EV_PING
        with pytest.raises(BufferError):
            buf.extend(b"x")         # the parser holds an export of the buffer
        assert parser.next_event() == codec.EV_PING
        assert parser.next_event() == codec.EV_NONE
        buf.extend(b"x")             # released at the end of the fed region
        parser.feed(buf)
        with pytest.raises(BufferError):
            buf.extend(b"x")
        parser.release()
        parser.release()             # idempotent
        buf.extend(b"x")
        assert parser.next_event() == codec.EV_NONE


# ---------------------------------------------------------------------------------------
class TestMasking:
    """RFC 6455 sections 5.1 and 5.3: who masks, and how."""

    @pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE])
    def test_unmasked_frame_from_client(self, codec, opcode):
        data = build_frame(opcode, b"\x03\xe8")
        expect_error(codec, data, mask_required=True, exc=ProtocolError, code=1002,
                     message=ref.MSG_UNMASKED, offset=0)

    @pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE])
    def test_masked_frame_from_server(self, codec, opcode):
        data = build_frame(opcode, b"\x03\xe8", mask_key=KEY)
        expect_error(codec, data, mask_required=False, exc=ProtocolError, code=1002,
                     message=ref.MSG_MASKED, offset=0)

    def test_mask_rule_applies_to_continuations(self, codec, mask_required):
        data = (build_frame(OP_BINARY, b"ab", fin=False, mask_key=key_for(mask_required))
                + build_frame(OP_CONT, b"cd", mask_key=wrong_key_for(mask_required)))
        expect_error(codec, data, mask_required=mask_required, exc=ProtocolError, code=1002,
                     offset=8 if mask_required else 4)

    def test_next_event_unmasks_in_place(self, codec):
        plain = "unmask me, all of me".encode()
        buf = bytearray(build_frame(OP_TEXT, plain, mask_key=KEY)
                        + build_frame(OP_PING, b"ping!", mask_key=KEY))
        parser = codec.FrameParser(mask_required=True)
        parser.feed(buf)
        assert parser.next_event() == codec.EV_DATA
        assert buf[parser.payload_start:parser.payload_end] == plain
        assert parser.payload() == plain
        assert parser.next_event() == codec.EV_PING
        assert buf[parser.payload_start:parser.payload_end] == b"ping!"
        assert parser.payload() == b"ping!"

    def test_scan_leaves_masked_bytes_untouched(self, codec):
        data = (build_frame(OP_TEXT, "plain text é".encode(), mask_key=KEY)
                + build_frame(OP_BINARY, pattern(1000), mask_key=bytes((1, 2, 3, 4)))
                + build_frame(OP_PING, b"ping!", mask_key=KEY)
                + build_frame(OP_CLOSE, close_payload(1000, b"bye"), mask_key=KEY))
        buf = bytearray(data)
        parser = codec.FrameParser(mask_required=True)
        parser.feed(buf)
        assert parser.scan() == codec.EV_PING
        masked_ping = bytes(buf[parser.payload_start:parser.payload_end])
        assert masked_ping == bytes(b ^ KEY[i % 4] for i, b in enumerate(b"ping!"))
        assert parser.payload() == b"ping!"
        assert parser.scan() == codec.EV_CLOSE
        assert parser.payload() == close_payload(1000, b"bye")
        assert (parser.close_code, parser.close_reason) == (1000, "bye")
        assert parser.offset == len(data)
        assert bytes(buf) == data       # every byte as it came: the proxy forwards them
        assert (parser.frames, parser.messages, parser.payload_bytes) == (4, 2, 1013)

    def test_scan_works_on_read_only_masked_input(self, codec):
        data = build_frame(OP_BINARY, pattern(64), mask_key=KEY) + build_frame(
            OP_PING, b"x", mask_key=KEY)
        run = drive(codec, data, mask_required=True, mode="scan", readonly=True,
                    cuts=[3, 20, 71])
        assert run.error is None and run.events == [("ping", b"x")]
        assert run.forwarded == data

    @pytest.mark.parametrize("frame", [
        build_frame(OP_BINARY, b"abc", mask_key=KEY),
        build_frame(OP_TEXT, b"abc", mask_key=KEY),
        build_frame(OP_PING, b"abc", mask_key=KEY),
        build_frame(OP_CLOSE, close_payload(1000), mask_key=KEY),
    ], ids=["binary", "text", "ping", "close"])
    def test_next_event_on_read_only_masked_input(self, codec, frame):
        parser = codec.FrameParser(mask_required=True)
        parser.feed(frame)              # bytes: read-only
        with pytest.raises(BufferError):
            parser.next_event()

    def test_next_event_on_read_only_unmasked_input(self, codec):
        data = build_frame(OP_BINARY, b"abc") + build_frame(OP_PING, b"p")
        run = drive(codec, data, mask_required=False, readonly=True)
        assert run.error is None
        assert run.events == [("data", OP_BINARY, OP_BINARY, True, False, b"abc"), ("ping", b"p")]

    def test_unmasking_across_chunks_at_every_phase(self, codec):
        payload = pattern(23)
        key = bytes((0xA5, 0x5A, 0xFF, 0x01))
        data = build_frame(OP_BINARY, payload, mask_key=key)
        expected = [("data", OP_BINARY, OP_BINARY, True, False, payload)]
        for first, second in itertools.combinations(range(1, len(data)), 2):
            run = drive(codec, data, mask_required=True, cuts=[first, second])
            assert run.events == expected, (first, second)


# ---------------------------------------------------------------------------------------
class TestFragmentation:
    """RFC 6455 section 5.4: fragmented messages."""

    def test_fragmented_message_with_interleaved_control_frames(self, codec, mask_required):
        key = key_for(mask_required)
        data = (build_frame(OP_TEXT, b"Hel", fin=False, mask_key=key)
                + build_frame(OP_PING, b"p", mask_key=key)
                + build_frame(OP_CONT, b"l", fin=False, mask_key=key)
                + build_frame(OP_PONG, b"", mask_key=key)
                + build_frame(OP_CONT, b"lo", mask_key=key))
        run = expect_events(codec, data, mask_required=mask_required, events=[
            ("data", OP_TEXT, OP_TEXT, False, False, b"Hel"),
            ("ping", b"p"),
            ("data", OP_CONT, OP_TEXT, False, False, b"l"),
            ("pong", b""),
            ("data", OP_CONT, OP_TEXT, True, False, b"lo"),
        ])
        assert run.counters[:3] == (5, 1, 6)
        data_records = [r for r in run.raw if r[0] == codec.EV_DATA]
        # (frame_finished, message_finished) per chunk: only the last ends the message.
        assert [(r[10], r[11]) for r in data_records] == [
            (True, False), (True, False), (True, True)]

    def test_close_between_fragments(self, codec, mask_required):
        key = key_for(mask_required)
        data = (build_frame(OP_BINARY, b"ab", fin=False, mask_key=key)
                + build_frame(OP_CLOSE, close_payload(1000), mask_key=key)
                + build_frame(OP_CONT, b"cd", mask_key=key))
        run = expect_events(codec, data, mask_required=mask_required, events=[
            ("data", OP_BINARY, OP_BINARY, False, False, b"ab"),
            ("close", 1000, "", close_payload(1000)),
        ])
        assert run.parser.closed and run.consumed == len(data)

    @pytest.mark.parametrize("before", [[], [(OP_TEXT, True)], [(OP_BINARY, False), (OP_CONT, True)]])
    def test_continuation_without_a_message(self, codec, mask_required, before):
        key = key_for(mask_required)
        prefix = b"".join(build_frame(op, b"z", fin=fin, mask_key=key) for op, fin in before)
        data = prefix + build_frame(OP_CONT, b"abc", mask_key=key)
        expect_error(codec, data, mask_required=mask_required, exc=ProtocolError, code=1002,
                     message=ref.MSG_CONT_NO_MESSAGE, offset=len(prefix))

    @pytest.mark.parametrize("first, second", list(itertools.product([OP_TEXT, OP_BINARY], repeat=2)))
    def test_new_data_frame_inside_a_message(self, codec, mask_required, first, second):
        key = key_for(mask_required)
        prefix = (build_frame(first, b"a", fin=False, mask_key=key)
                  + build_frame(OP_PING, b"", mask_key=key)
                  + build_frame(OP_CONT, b"b", fin=False, mask_key=key))
        data = prefix + build_frame(second, b"c", mask_key=key)
        expect_error(codec, data, mask_required=mask_required, exc=ProtocolError, code=1002,
                     message=ref.MSG_DATA_IN_MESSAGE, offset=len(prefix))

    def test_empty_fragments(self, codec, mask_required):
        key = key_for(mask_required)
        data = (build_frame(OP_BINARY, b"", fin=False, mask_key=key)
                + build_frame(OP_CONT, b"", fin=False, mask_key=key)
                + build_frame(OP_CONT, b"", mask_key=key))
        run = expect_events(codec, data, mask_required=mask_required, events=[
            ("data", OP_BINARY, OP_BINARY, False, False, b""),
            ("data", OP_CONT, OP_BINARY, False, False, b""),
            ("data", OP_CONT, OP_BINARY, True, False, b""),
        ])
        assert [r[11] for r in run.raw if r[0] == codec.EV_DATA] == [False, False, True]
        assert run.counters[:3] == (3, 1, 0)

    def test_message_size_counts_fragments(self, codec, mask_required):
        key = key_for(mask_required)
        buf = bytearray(build_frame(OP_BINARY, b"abc", fin=False, mask_key=key)
                        + build_frame(OP_CONT, b"defg", fin=False, mask_key=key)
                        + build_frame(OP_CONT, b"hi", mask_key=key))
        parser = codec.FrameParser(mask_required=mask_required)
        parser.feed(buf)
        seen = []
        while parser.next_event() == codec.EV_DATA:
            seen.append((parser.message_size, parser.messages, parser.frames))
        assert seen == [(3, 0, 1), (7, 0, 2), (9, 1, 3)]
        assert parser.payload_bytes == 9


# ---------------------------------------------------------------------------------------
class TestControlFrames:
    """RFC 6455 section 5.5: control frames."""

    @pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
    def test_fragmented_control_frame(self, codec, mask_required, opcode):
        data = build_frame(opcode, b"", fin=False, mask_key=key_for(mask_required))
        expect_error(codec, data, mask_required=mask_required, exc=ProtocolError, code=1002,
                     message=ref.MSG_CONTROL_FRAGMENTED, offset=0)

    @pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
    @pytest.mark.parametrize("length, length_size", [(126, 16), (126, 64), (65535, 16),
                                                     (125, 16), (65536, 64)])
    def test_control_payload_over_125_bytes(self, codec, mask_required, opcode, length,
                                            length_size):
        # The 7-bit length field says 126 or 127: over 125 before the extended length.
        payload = close_payload(1000, b"x" * (length - 2))
        data = build_frame(opcode, payload, length_size=length_size,
                           mask_key=key_for(mask_required))
        expect_error(codec, data, mask_required=mask_required, exc=ProtocolError, code=1002,
                     message=ref.MSG_CONTROL_TOO_LONG, offset=0, bytewise=length < 200)

    @pytest.mark.parametrize("opcode, name", [(OP_PING, "ping"), (OP_PONG, "pong")])
    @pytest.mark.parametrize("length", [0, 1, 125])
    def test_ping_pong_payloads(self, codec, mask_required, opcode, name, length):
        payload = pattern(length)
        data = build_frame(opcode, payload, mask_key=key_for(mask_required))
        run = expect_events(codec, data, mask_required=mask_required, events=[(name, payload)])
        # Control frames count as frames but not as message payload.
        assert run.counters == (1, 0, 0, 0)

    def test_control_frame_consumed_only_whole(self, codec, mask_required):
        data = build_frame(OP_PING, pattern(125), mask_key=key_for(mask_required))
        for n in range(len(data)):
            parser = codec.FrameParser(mask_required=mask_required)
            parser.feed(bytearray(b"#" + data[:n]), 1)
            assert parser.next_event() == codec.EV_NONE
            assert parser.offset == 1 and parser.frames == 0
        parser = codec.FrameParser(mask_required=mask_required)
        parser.feed(bytearray(b"#" + data), 1)
        assert parser.next_event() == codec.EV_PING
        assert parser.offset == len(data) + 1
        assert parser.payload() == pattern(125)

    def test_control_frames_not_limited_by_max_message_size(self, codec, mask_required):
        key = key_for(mask_required)
        data = (build_frame(OP_PING, pattern(125), mask_key=key)
                + build_frame(OP_CLOSE, close_payload(1000, b"r" * 123), mask_key=key))
        expect_events(codec, data, mask_required=mask_required, max_message_size=1, events=[
            ("ping", pattern(125)), ("close", 1000, "r" * 123, close_payload(1000, b"r" * 123))])


# ---------------------------------------------------------------------------------------
class TestClose:
    """RFC 6455 sections 5.5.1 and 7.4: close frames and close codes."""

    VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                   3000, 3999, 4000, 4999]
    INVALID_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]

    def test_close_without_payload(self, codec, mask_required):
        data = build_frame(OP_CLOSE, b"", mask_key=key_for(mask_required))
        run = expect_events(codec, data, mask_required=mask_required,
                            events=[("close", 1005, "", b"")])
        assert run.parser.closed and run.counters == (1, 0, 0, 0)

    @pytest.mark.parametrize("reason", ["", "bye", "ünïcödé €𝄞", "r" * 123])
    def test_close_with_code_and_reason(self, codec, mask_required, reason):
        payload = close_payload(1001, reason.encode())
        data = build_frame(OP_CLOSE, payload, mask_key=key_for(mask_required))
        expect_events(codec, data, mask_required=mask_required,
                      events=[("close", 1001, reason, payload)])

    def test_close_payload_of_one_byte(self, codec, mask_required):
        data = build_frame(OP_CLOSE, b"\x03", mask_key=key_for(mask_required))
        expect_error(codec, data, mask_required=mask_required, exc=ProtocolError, code=1002,
                     message=ref.MSG_CLOSE_ONE_BYTE, offset=0)

    @pytest.mark.parametrize("code", VALID_CODES)
    def test_valid_close_codes(self, codec, mask_required, code):
        data = build_frame(OP_CLOSE, close_payload(code, b"ok"), mask_key=key_for(mask_required))
        expect_events(codec, data, mask_required=mask_required,
                      events=[("close", code, "ok", close_payload(code, b"ok"))])

    @pytest.mark.parametrize("code", INVALID_CODES)
    @pytest.mark.parametrize("validate_utf8", [True, False])
    def test_close_codes_that_may_not_be_sent(self, codec, mask_required, code, validate_utf8):
        data = build_frame(OP_CLOSE, close_payload(code), mask_key=key_for(mask_required))
        expect_error(codec, data, mask_required=mask_required, exc=ProtocolError, code=1002,
                     message=ref.MSG_CLOSE_CODE.format(code), offset=0,
                     validate_utf8=validate_utf8)

    @pytest.mark.parametrize("reason", [b"\xff", b"ok\xc3", b"\xed\xa0\x80", b"\xc0\xaf",
                                        b"abc\xf4\x90\x80\x80"])
    def test_close_reason_not_utf8(self, codec, mask_required, reason):
        data = build_frame(OP_CLOSE, close_payload(1000, reason), mask_key=key_for(mask_required))
        runs = expect_error(codec, data, mask_required=mask_required, exc=InvalidPayloadData,
                            code=1007, message=ref.MSG_CLOSE_UTF8, offset=0)
        assert not runs[0].parser.closed

    def test_close_reason_not_checked_without_validate_utf8(self, codec, mask_required):
        data = build_frame(OP_CLOSE, close_payload(1000, b"a\xffb"), mask_key=key_for(mask_required))
        for mode in ("event", "scan"):
            run = drive(codec, data, mask_required=mask_required, mode=mode, validate_utf8=False)
            assert run.error is None and run.parser.closed
            (event,) = run.events
            assert event[0] == "close" and event[1] == 1000
            assert event[2].startswith("a") and event[2].endswith("b")
            assert event[3] == close_payload(1000, b"a\xffb")

    def test_input_after_close_is_discarded(self, codec, mask_required):
        key = key_for(mask_required)
        close = build_frame(OP_CLOSE, close_payload(1000), mask_key=key)
        garbage = b"\xff\xff\x00 anything, even an invalid frame"
        for step_name in ("next_event", "scan"):
            buf = bytearray(close + build_frame(OP_PING, b"late", mask_key=key) + garbage)
            parser = codec.FrameParser(mask_required=mask_required)
            step = getattr(parser, step_name)
            parser.feed(buf)
            assert step() == codec.EV_CLOSE
            assert parser.offset == len(close) and parser.closed
            assert step() == codec.EV_NONE
            assert parser.offset == len(buf)
            parser.feed(bytearray(garbage), 3)
            assert step() == codec.EV_NONE
            assert parser.offset == len(garbage)
            assert parser.frames == 1 and not parser.failed


# ---------------------------------------------------------------------------------------
class TestUTF8:
    """RFC 6455 section 8.1: text messages must be UTF-8, checked fail-fast."""

    # Each sequence is impossible at its last byte and possible until then.
    INVALID = [
        b"\x80", b"\xbf",                 # continuation byte with no lead
        b"\xc0", b"\xc1",                 # overlong 2-byte leads
        b"\xf5", b"\xf8", b"\xff",        # no such lead byte (above U+10FFFF / not UTF-8)
        b"\xe0\x80", b"\xe0\x9f",         # overlong 3-byte
        b"\xed\xa0", b"\xed\xbf",         # surrogates U+D800..U+DFFF
        b"\xf0\x80", b"\xf0\x8f",         # overlong 4-byte
        b"\xf4\x90", b"\xf4\xbf",         # above U+10FFFF
        b"\xc2A", b"\xe2\x82A", b"\xf0\x90\x80A",   # sequence cut by a non-continuation
    ]
    VALID_EDGES = ["\u0080", "\u07ff", "\u0800", "\ud7ff", "\ue000", "\uffff", "\U00010000",
                   "\U0010ffff", "é", "€", "𝄞"]

    def test_valid_text_split_across_fragments_anywhere(self, codec, mask_required):
        key = key_for(mask_required)
        text = "aé€𝄞\U0010ffffz".encode()
        for i in range(len(text) + 1):
            data = (build_frame(OP_TEXT, text[:i], fin=False, mask_key=key)
                    + build_frame(OP_CONT, text[i:], mask_key=key))
            run = drive(codec, data, mask_required=mask_required)
            assert run.error is None, i
            assert b"".join(e[5] for e in run.events) == text

    @pytest.mark.parametrize("char", VALID_EDGES)
    def test_valid_edge_code_points(self, codec, mask_required, char):
        payload = ("x" + char + "y").encode()
        data = build_frame(OP_TEXT, payload, mask_key=key_for(mask_required))
        expect_events(codec, data, mask_required=mask_required,
                      events=[("data", OP_TEXT, OP_TEXT, True, False, payload)])

    @pytest.mark.parametrize("seq", INVALID)
    @pytest.mark.parametrize("mode", ["event", "scan"])
    def test_invalid_text_fails_fast(self, codec, mask_required, seq, mode):
        """The error comes with the first impossible byte, before the frame is complete."""
        payload = b"ok" + seq + b"and the rest of the frame"
        data = build_frame(OP_TEXT, payload, mask_key=key_for(mask_required))
        bad = len(data) - len(payload) + 2 + len(seq) - 1     # position of the impossible byte
        # Fed up to just before that byte: no error yet.
        run = drive(codec, data[:bad], mask_required=mask_required, mode=mode)
        assert run.error is None and not run.parser.failed
        # One byte more, with the rest of the frame still missing: the error.
        run = drive(codec, data[:bad + 1], mask_required=mask_required, mode=mode,
                    cuts=[bad])
        assert type(run.error) is InvalidPayloadData and run.error.code == 1007
        assert str(run.error) == ref.MSG_TEXT_UTF8
        assert run.error_offset == bad      # everything before the bad byte was consumed
        # Fed whole: the error too, offset within the frame's payload, before the bad byte.
        run = drive(codec, data, mask_required=mask_required, mode=mode)
        assert type(run.error) is InvalidPayloadData
        assert len(data) - len(payload) <= run.error_offset <= bad

    @pytest.mark.parametrize("seq", INVALID)
    def test_invalid_text_across_fragments_fails_fast(self, codec, mask_required, seq):
        key = key_for(mask_required)
        first = build_frame(OP_TEXT, b"ok" + seq[:-1], fin=False, mask_key=key)
        ping = build_frame(OP_PING, b"", mask_key=key)
        second = build_frame(OP_CONT, seq[-1:] + b"more", mask_key=key)
        head = header_size(5, mask_required)
        data = first + ping + second[:head + 1]          # the rest of `second` never comes
        for mode in ("event", "scan"):
            run = drive(codec, data, mask_required=mask_required, mode=mode,
                        cuts=[len(first) + len(ping) + head])
            assert type(run.error) is InvalidPayloadData and run.error.code == 1007, mode
            assert run.events[-1] == ("ping", b"")

    @pytest.mark.parametrize("tail", [b"\xc3", b"\xe2\x82", b"\xf0\x9d\x84"])
    def test_truncated_sequence_at_end_of_message(self, codec, mask_required, tail):
        key = key_for(mask_required)
        data = build_frame(OP_TEXT, b"abc" + tail, mask_key=key)
        expect_error(codec, data, mask_required=mask_required, exc=InvalidPayloadData,
                     code=1007, message=ref.MSG_TEXT_UTF8)
        # Not an error while the message goes on.
        data = build_frame(OP_TEXT, b"abc" + tail, fin=False, mask_key=key)
        run = drive(codec, data, mask_required=mask_required)
        assert run.error is None and run.counters[:2] == (1, 0)

    def test_validation_state_resets_between_messages(self, codec, mask_required):
        key = key_for(mask_required)
        # A binary message with an unfinished sequence does not leak into the next text.
        data = build_frame(OP_BINARY, b"\xe2\x82", mask_key=key) + build_frame(
            OP_TEXT, b"\xac", mask_key=key)
        expect_error(codec, data, mask_required=mask_required, exc=InvalidPayloadData,
                     code=1007)

    @pytest.mark.parametrize("seq", INVALID + [b"\xe2\x82"])
    def test_validate_utf8_off(self, codec, mask_required, seq):
        payload = b"ok" + seq
        data = build_frame(OP_TEXT, payload, mask_key=key_for(mask_required))
        expect_events(codec, data, mask_required=mask_required, validate_utf8=False,
                      events=[("data", OP_TEXT, OP_TEXT, True, False, payload)])

    def test_validate_utf8_is_writable(self, codec, mask_required):
        key = key_for(mask_required)
        buf = bytearray(build_frame(OP_TEXT, b"\xff", mask_key=key) * 2)
        parser = codec.FrameParser(mask_required=mask_required, validate_utf8=False)
        parser.feed(buf)
        assert parser.next_event() == codec.EV_DATA
        parser.validate_utf8 = True
        assert parser.validate_utf8
        with pytest.raises(InvalidPayloadData):
            parser.next_event()

    def test_binary_is_not_validated(self, codec, mask_required):
        payload = b"\xff\xed\xa0\x80\xc0"
        data = build_frame(OP_BINARY, payload, fin=False, mask_key=key_for(mask_required)) \
            + build_frame(OP_CONT, payload, mask_key=key_for(mask_required))
        run = expect_events(codec, data, mask_required=mask_required, events=[
            ("data", OP_BINARY, OP_BINARY, False, False, payload),
            ("data", OP_CONT, OP_BINARY, True, False, payload)])
        assert run.counters[:3] == (2, 1, 10)

    def test_scan_checks_masked_text_at_every_key_phase(self, codec):
        """scan() validates masked text without unmasking it: every alignment of a
        multi-byte character, a second non-ASCII byte (valid or not), the chunk start
        and the mask key must be judged as the unmasked text is.

        The smallest cases: key 80 00 00 00, the frame cut after 8 bytes (header 6 +
        payload 2), payload b"aaa\xc3\xa9aaaaaaa\xffbb" (invalid) or
        b"aaa\xc3\xa9aaaaaaa\xc3\xa9bb" (valid)."""
        keys = [bytes((0x80, 0x80, 0x80, 0x80)), bytes((0xFF, 0x7F, 0x01, 0xC3)),
                bytes((0x80, 0x00, 0x00, 0x00)), bytes((0x00, 0x00, 0x00, 0x00))]
        failures = []
        for key, split, lead, char, gap, second in itertools.product(
                keys, range(4), range(5), ("é".encode(), "€".encode(), "𝄞".encode()),
                range(12), (b"\xff", b"\x80", "é".encode(), "€".encode())):
            payload = b"s" * split + b"a" * lead + char + b"a" * gap + second + b"b" * 9
            valid = second not in (b"\xff", b"\x80")
            data = build_frame(OP_TEXT, payload, mask_key=key)
            for mode in ("event", "scan"):
                run = drive(codec, data, mask_required=True, cuts=[6 + split], mode=mode)
                if (run.error is None) != valid:
                    failures.append((mode, key.hex(), split, payload))
        assert not failures, f"{len(failures)} misjudged, e.g. {failures[:3]}"


# ---------------------------------------------------------------------------------------
class TestMessageSizeLimit:
    """max_message_size: judged from each header, summed over fragments (RFC 6455 10.4)."""

    @pytest.mark.parametrize("limit, length", [(100, 101), (1024, 1025), (1024, 65536),
                                               (65536, 65537), (1 << 20, 2**62), (1, 2**63 - 1)])
    def test_header_alone_over_the_limit(self, codec, mask_required, limit, length):
        header = build_frame(OP_BINARY, b"", length=length, mask_key=key_for(mask_required))
        runs = expect_error(codec, header, mask_required=mask_required, exc=PayloadTooBig,
                            code=1009, offset=0, max_message_size=limit)
        assert str(runs[0].error) == ref.MSG_TOO_BIG.format(length, limit)

    @pytest.mark.parametrize("limit", [1, 125, 126, 65535, 65536])
    def test_limit_is_inclusive(self, codec, mask_required, limit):
        key = key_for(mask_required)
        at_limit = build_frame(OP_BINARY, pattern(limit), mask_key=key)
        run = drive(codec, at_limit, mask_required=mask_required, max_message_size=limit)
        assert run.error is None and run.counters[:2] == (1, 1)
        over = build_frame(OP_TEXT, b"a" * (limit + 1), mask_key=key)
        expect_error(codec, over, mask_required=mask_required, exc=PayloadTooBig, code=1009,
                     offset=0, max_message_size=limit, bytewise=False)

    def test_limit_across_fragments(self, codec, mask_required):
        key = key_for(mask_required)
        first = build_frame(OP_BINARY, pattern(500), fin=False, mask_key=key)
        second = build_frame(OP_CONT, pattern(500), fin=False, mask_key=key)
        third = build_frame(OP_CONT, pattern(500), mask_key=key)
        data = first + second + third
        runs = expect_error(codec, data, mask_required=mask_required, exc=PayloadTooBig,
                            code=1009, offset=len(first) + len(second), max_message_size=1024,
                            message=ref.MSG_TOO_BIG.format(1500, 1024))
        assert runs[0].events == [("data", OP_BINARY, OP_BINARY, False, False, pattern(500)),
                                  ("data", OP_CONT, OP_BINARY, False, False, pattern(500))]
        # The third header alone is enough.
        run = drive(codec, first + second + third[:header_size(500, mask_required)],
                    mask_required=mask_required, max_message_size=1024)
        assert type(run.error) is PayloadTooBig

    def test_limit_applies_to_each_message(self, codec, mask_required):
        """Earlier messages do not count against the next one."""
        key = key_for(mask_required)
        data = (build_frame(OP_BINARY, pattern(1000), mask_key=key)
                + build_frame(OP_TEXT, b"t" * 1000, mask_key=key)
                + build_frame(OP_BINARY, pattern(600), fin=False, mask_key=key)
                + build_frame(OP_CONT, pattern(400), mask_key=key))
        run = drive(codec, data, mask_required=mask_required, max_message_size=1024)
        assert run.error is None, run.error
        assert run.counters[:3] == (4, 3, 3000)

    def test_limit_applies_to_each_message_minimal(self, codec):
        """Two 1-byte messages under a 1-byte limit: b"\\x82\\x01a\\x82\\x01b"."""
        run = drive(codec, b"\x82\x01a\x82\x01b", mask_required=False, max_message_size=1)
        assert run.error is None, run.error
        assert [e[5] for e in run.events] == [b"a", b"b"]

    def test_no_limit_by_default(self, codec, mask_required):
        key = key_for(mask_required)
        data = (build_frame(OP_BINARY, pattern(1 << 20), fin=False, mask_key=key)
                + build_frame(OP_CONT, pattern(1 << 20), mask_key=key))
        for options in ({}, {"max_message_size": 0}):
            run = drive(codec, data, mask_required=mask_required, **options)
            assert run.error is None and run.counters[:3] == (2, 1, 2 << 20)

    def test_limit_is_writable(self, codec, mask_required):
        key = key_for(mask_required)
        buf = bytearray(build_frame(OP_BINARY, pattern(11), mask_key=key) * 2)
        parser = codec.FrameParser(mask_required=mask_required)
        assert parser.max_message_size == 0
        parser.feed(buf)
        assert parser.next_event() == codec.EV_DATA
        parser.max_message_size = 10
        assert parser.max_message_size == 10
        with pytest.raises(PayloadTooBig) as info:
            parser.next_event()
        assert info.value.code == 1009 and parser.failed

    def test_limit_lowered_below_a_message_in_progress(self, codec, mask_required):
        """A message already over a lowered limit fails at its next fragment."""
        key = key_for(mask_required)
        buf = bytearray(build_frame(OP_BINARY, pattern(600), fin=False, mask_key=key)
                        + build_frame(OP_CONT, b"", mask_key=key))
        parser = codec.FrameParser(mask_required=mask_required, max_message_size=1000)
        parser.feed(buf)
        assert parser.next_event() == codec.EV_DATA and parser.message_size == 600
        parser.max_message_size = 500
        with pytest.raises(PayloadTooBig):
            parser.next_event()


# ---------------------------------------------------------------------------------------
class TestErrorState:
    """RFC 6455 section 7.1.7: after failing the connection, discard input."""

    BAD = {
        "rsv2": (bytes((0x80 | RSV2 | OP_BINARY, 0)), ProtocolError, 1002),
        "opcode": (bytes((0x83, 0)), ProtocolError, 1002),
        "close-code": (build_frame(OP_CLOSE, close_payload(1005)), ProtocolError, 1002),
        "text": (build_frame(OP_TEXT, b"\xff"), InvalidPayloadData, 1007),
        "size": (build_frame(OP_BINARY, b"", length=2000), PayloadTooBig, 1009),
    }

    @pytest.mark.parametrize("name", sorted(BAD))
    @pytest.mark.parametrize("step_name", ["next_event", "scan"])
    def test_failed_parser_discards_input(self, codec, name, step_name):
        good = build_frame(OP_BINARY, b"fine") + build_frame(OP_PING, b"")
        bad, exc, code = self.BAD[name]
        parser = codec.FrameParser(mask_required=False, max_message_size=1000)
        step = getattr(parser, step_name)
        parser.feed(bytearray(good + bad + b"more"))
        with pytest.raises(exc) as info:
            while step() != codec.EV_NONE:
                pass
        assert info.value.code == code and parser.failed
        assert len(good) <= parser.offset <= len(good) + len(bad)
        counters = (parser.frames, parser.messages, parser.payload_bytes)
        # Later calls and later input: nothing parsed, nothing raised, all consumed.
        assert step() == codec.EV_NONE
        for later in (build_frame(OP_PING, b"x"), bad, b"\x00" * 20):
            parser.feed(bytearray(later))
            assert step() == codec.EV_NONE
            assert parser.offset == len(later) and parser.failed
        assert (parser.frames, parser.messages, parser.payload_bytes) == counters

    def test_offset_after_a_header_error_is_the_frame_start(self, codec, mask_required):
        key = key_for(mask_required)
        good = (build_frame(OP_TEXT, b"one", mask_key=key)
                + build_frame(OP_BINARY, b"two", fin=False, mask_key=key)
                + build_frame(OP_PONG, b"", mask_key=key))
        bad = build_frame(OP_TEXT, b"three", mask_key=key)    # TEXT inside a message
        runs = expect_error(codec, good + bad, mask_required=mask_required, exc=ProtocolError,
                            code=1002, offset=len(good))
        for run in runs:
            assert run.counters[:3] == (3, 1, 6)


# ---------------------------------------------------------------------------------------
class TestCountersAndModes:
    """scan() and next_event() agree on everything but the data events."""

    STREAMS = {
        "mixed": (b"".join([
            build_frame(OP_TEXT, "héllo".encode(), fin=False),
            build_frame(OP_PING, b"1"),
            build_frame(OP_CONT, b" world"),
            build_frame(OP_BINARY, pattern(70000)),
            build_frame(OP_PONG, b"2"),
            build_frame(OP_BINARY, b""),
            build_frame(OP_CLOSE, close_payload(4000, b"done")),
        ]), {}),
        "bad-text": (build_frame(OP_PING, b"") + build_frame(OP_TEXT, b"abc\xffdef"), {}),
        "too-big": (build_frame(OP_BINARY, b"12345", fin=False)
                    + build_frame(OP_PING, b"") + build_frame(OP_CONT, b"678"),
                    {"max_message_size": 7}),
        "bad-close": (build_frame(OP_BINARY, b"x") + build_frame(OP_CLOSE, b"\x03\xe8\xff"), {}),
    }

    @pytest.mark.parametrize("name", sorted(STREAMS))
    @pytest.mark.parametrize("cuts", [(), (1, 5, 9, 20, 100, 1000, 5000)], ids=["whole", "cut"])
    def test_scan_and_next_event_agree(self, codec, name, cuts):
        data, options = self.STREAMS[name]
        by_event = drive(codec, data, mask_required=False, cuts=cuts, **options)
        by_scan = drive(codec, data, mask_required=False, cuts=cuts, mode="scan", **options)
        assert by_scan.counters == by_event.counters
        assert by_scan.control_events() == by_event.control_events()
        assert by_scan.error_info == by_event.error_info
        assert (by_scan.parser.closed, by_scan.parser.failed) == \
            (by_event.parser.closed, by_event.parser.failed)
        assert by_scan.forwarded == data[:by_scan.consumed]

    def test_counters_of_the_mixed_stream(self, codec):
        data, _ = self.STREAMS["mixed"]
        run = drive(codec, data, mask_required=False)
        assert run.error is None and run.parser.closed
        frames, messages, payload_bytes, _ = run.counters
        assert (frames, messages, payload_bytes) == (7, 3, len("héllo world".encode()) + 70000)
        assert run.events[-1] == ("close", 4000, "done", close_payload(4000, b"done"))

    def test_scan_never_returns_data(self, codec, mask_required):
        key = key_for(mask_required)
        buf = bytearray(b"".join(build_frame(OP_BINARY, pattern(n), mask_key=key)
                                 for n in (0, 1, 200, 70000)))
        parser = codec.FrameParser(mask_required=mask_required)
        parser.feed(buf)
        assert parser.scan() == codec.EV_NONE    # all four frames in one call
        assert parser.offset == len(buf)
        assert (parser.frames, parser.messages, parser.payload_bytes) == (4, 4, 70201)

    def test_readonly_attributes(self, codec):
        """_codec.pyi marks these readonly; the writable ones are set elsewhere."""
        parser = codec.FrameParser(mask_required=True)
        for name in ("mask_required", "offset", "end", "closed", "failed", "frame_start",
                     "frame_remaining", "opcode",
                     "message_opcode", "fin", "rsv1", "frame_length", "payload_start",
                     "payload_end", "frame_finished", "message_finished", "close_code",
                     "close_reason", "frames", "messages", "payload_bytes", "message_size"):
            with pytest.raises(AttributeError):
                setattr(parser, name, getattr(parser, name))
        with pytest.raises(AttributeError):
            codec.FrameWriter(mask=True).mask = False

    def test_initial_state(self, codec, mask_required):
        parser = codec.FrameParser(mask_required=mask_required)
        assert parser.mask_required == mask_required
        assert (parser.max_message_size, parser.validate_utf8, parser.allow_rsv1) == (0, True, False)
        assert (parser.offset, parser.end, parser.closed, parser.failed) == (0, 0, False, False)
        assert (parser.frames, parser.messages, parser.payload_bytes, parser.message_size) == \
            (0, 0, 0, 0)
        assert parser.next_event() == codec.EV_NONE     # nothing fed yet
        assert parser.scan() == codec.EV_NONE
        assert (codec.EV_NONE, codec.EV_DATA, codec.EV_PING, codec.EV_PONG, codec.EV_CLOSE) == \
            (0, 1, 2, 3, 4)
        assert codec.MAX_HEADER_SIZE == 14
