"""FrameWriter, close payloads, masking and UTF-8 validation, on both codecs.

Frames written here are read back with a FrameParser of the opposite role:
a writer with ``mask=True`` (a client's side, towards the server) feeds a parser
with ``mask_required=True`` (the server's side), as websockets' ``assertFrameData``
checks both directions of the serialisation.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codec_helpers import (
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RFC_KEY, build_frame, drive,
    xor_mask,
)
from fastws.errors import InvalidPayloadData, ProtocolError

LENGTHS = (0, 1, 125, 126, 127, 65535, 65536, 1 << 20)
CONTROL_LENGTHS = (0, 1, 2, 124, 125)
VALID_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
               3000, 3999, 4000, 4999)
INVALID_CODES = (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)
KEYS = (RFC_KEY, b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x02\x04\x08")


def pattern(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def text_pattern(n: int) -> bytes:
    return (b"text " * (n // 5 + 1))[:n]


@pytest.fixture(params=[True, False], ids=["mask", "plain"])
def mask(request):
    return request.param


def read_back(codec, data: bytes, *, mask: bool, **options):
    """Parse ``data`` with a parser for frames from the writer's side."""
    run = drive(codec, data, mask_required=mask, **options)
    assert run.error is None, run.error
    return run


def mask_bit(frame: bytes) -> bool:
    return bool(frame[1] & 0x80)


# ---------------------------------------------------------------------------------------
class TestFrameWriter:

    @pytest.mark.parametrize("length", LENGTHS)
    @pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
    def test_data_frame_round_trip(self, codec, mask, opcode, length):
        payload = text_pattern(length) if opcode == OP_TEXT else pattern(length)
        writer = codec.FrameWriter(mask=mask)
        frame = writer.frame(opcode, payload)
        assert isinstance(frame, bytes)
        assert mask_bit(frame) == mask
        hsize = (2 if length < 126 else 4 if length < 65536 else 10) + (4 if mask else 0)
        assert len(frame) == hsize + length
        if mask:
            key = frame[hsize - 4:hsize]
            assert frame == build_frame(opcode, payload, mask_key=key)
        else:
            assert frame == build_frame(opcode, payload)
        run = read_back(codec, frame, mask=mask)
        assert run.events == [("data", opcode, opcode, True, False, payload)]

    @pytest.mark.parametrize("length", CONTROL_LENGTHS)
    @pytest.mark.parametrize("opcode, name", [(OP_PING, "ping"), (OP_PONG, "pong")])
    def test_ping_pong_round_trip(self, codec, mask, opcode, name, length):
        frame = codec.FrameWriter(mask=mask).frame(opcode, pattern(length))
        assert mask_bit(frame) == mask
        assert read_back(codec, frame, mask=mask).events == [(name, pattern(length))]

    @pytest.mark.parametrize("length", [2, 3, 125])
    def test_close_opcode_round_trip(self, codec, mask, length):
        payload = (1000).to_bytes(2, "big") + b"r" * (length - 2)
        frame = codec.FrameWriter(mask=mask).frame(OP_CLOSE, payload)
        run = read_back(codec, frame, mask=mask)
        assert run.events == [("close", 1000, "r" * (length - 2), payload)]

    @pytest.mark.parametrize("length", LENGTHS[:7])
    def test_fragments_and_rsv1_round_trip(self, codec, mask, length):
        writer = codec.FrameWriter(mask=mask)
        data = (writer.frame(OP_BINARY, pattern(length), fin=False, rsv1=True)
                + writer.frame(OP_PING, b"between")
                + writer.frame(OP_CONT, pattern(length), fin=False)
                + writer.frame(OP_CONT, b"end"))
        run = read_back(codec, data, mask=mask, allow_rsv1=True)
        assert run.events == [
            ("data", OP_BINARY, OP_BINARY, False, True, pattern(length)),
            ("ping", b"between"),
            ("data", OP_CONT, OP_BINARY, False, False, pattern(length)),
            ("data", OP_CONT, OP_BINARY, True, False, b"end"),
        ]
        assert data[0] == 0x40 | OP_BINARY      # FIN clear, RSV1 set

    def test_frame_accepts_bytes_like_payloads(self, codec, mask):
        writer = codec.FrameWriter(mask=mask)
        for payload in (b"abc", bytearray(b"abc"), memoryview(b"xabcx")[1:4]):
            frame = writer.frame(OP_BINARY, payload)
            run = read_back(codec, frame, mask=mask)
            assert run.events[0][5] == b"abc"

    def test_masked_frames_use_fresh_keys(self, codec):
        writer = codec.FrameWriter(mask=True)
        frames = [writer.frame(OP_BINARY, b"same payload") for _ in range(200)]
        keys = {f[2:6] for f in frames}
        assert len(keys) >= 199          # 4 random bytes: a repeat is a 1-in-10^5 event
        for frame in frames[:10]:
            assert frame[6:] == xor_mask(b"same payload", frame[2:6])

    def test_new_mask_key(self, codec):
        writer = codec.FrameWriter(mask=True)
        keys = [writer.new_mask_key() for _ in range(1100)]   # more than one 4 KiB block
        assert all(isinstance(k, bytes) and len(k) == 4 for k in keys)
        assert len(set(keys)) >= 1095
        assert all(a != b for a, b in zip(keys, keys[1:]))
        assert len(set(codec.FrameWriter(mask=True).new_mask_key() for _ in range(50))) >= 49

    def test_mask_attribute(self, codec):
        assert codec.FrameWriter(mask=True).mask is True
        assert codec.FrameWriter(mask=False).mask is False

    @pytest.mark.parametrize("length", LENGTHS + (2**32, 2**63 - 1))
    @pytest.mark.parametrize("opcode", [OP_CONT, OP_TEXT, OP_BINARY])
    @pytest.mark.parametrize("fin, rsv1", [(True, False), (False, True)])
    def test_header(self, codec, mask, opcode, length, fin, rsv1):
        writer = codec.FrameWriter(mask=mask)
        key = RFC_KEY if mask else None
        header = writer.header(opcode, length, fin=fin, rsv1=rsv1, mask_key=key)
        expected = build_frame(opcode, b"", length=length, fin=fin, rsv=0x40 if rsv1 else 0,
                               mask_key=key)
        assert header == expected

    def test_header_then_mask_inplace_makes_a_frame(self, codec):
        writer = codec.FrameWriter(mask=True)
        payload = "assembled by hand é".encode()
        key = writer.new_mask_key()
        body = bytearray(payload)
        codec.mask_inplace(body, key)
        frame = writer.header(OP_TEXT, len(payload), mask_key=key) + bytes(body)
        assert read_back(codec, frame, mask=True).events == [
            ("data", OP_TEXT, OP_TEXT, True, False, payload)]

    @pytest.mark.parametrize("length", CONTROL_LENGTHS)
    @pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
    def test_control_header(self, codec, mask, opcode, length):
        key = RFC_KEY if mask else None
        header = codec.FrameWriter(mask=mask).header(opcode, length, mask_key=key)
        assert header == build_frame(opcode, b"", length=length, mask_key=key)

    @pytest.mark.parametrize("call", [
        pytest.param(lambda w, k: w.frame(OP_PING, b"x" * 126), id="ping-126"),
        pytest.param(lambda w, k: w.frame(OP_PONG, b"x" * 200), id="pong-200"),
        pytest.param(lambda w, k: w.frame(OP_CLOSE, b"x" * 126), id="close-126"),
        pytest.param(lambda w, k: w.frame(OP_PING, b"", fin=False), id="ping-fin0"),
        pytest.param(lambda w, k: w.frame(OP_CLOSE, b"\x03\xe8", fin=False), id="close-fin0"),
        *[pytest.param((lambda op: lambda w, k: w.frame(op, b"x"))(op), id=f"frame-opcode-{op:#x}")
          for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)],
        pytest.param(lambda w, k: w.header(OP_PING, 126, mask_key=k), id="header-ping-126"),
        pytest.param(lambda w, k: w.header(OP_PONG, 0, fin=False, mask_key=k), id="header-pong-fin0"),
        pytest.param(lambda w, k: w.header(0x3, 0, mask_key=k), id="header-opcode-0x3"),
        pytest.param(lambda w, k: w.header(OP_BINARY, -1, mask_key=k), id="header-length-neg"),
        pytest.param(lambda w, k: w.header(OP_BINARY, 2**63, mask_key=k), id="header-length-2^63"),
        pytest.param(lambda w, k: w.header(OP_BINARY, 2**64, mask_key=k), id="header-length-2^64"),
        pytest.param(lambda w, k: w.header(OP_BINARY, 1, mask_key=None if k else RFC_KEY),
                     id="header-key-mismatch"),
        pytest.param(lambda w, k: w.header(OP_BINARY, 1, mask_key=b"abc" if k else b"abcd"),
                     id="header-bad-key"),
        pytest.param(lambda w, k: w.close_frame(1005), id="close-1005"),
        pytest.param(lambda w, k: w.close_frame(1000, "x" * 124), id="close-reason-124"),
        pytest.param(lambda w, k: w.close_frame(None, "reason"), id="close-reason-no-code"),
    ])
    def test_value_errors(self, codec, mask, call):
        with pytest.raises(ValueError):
            call(codec.FrameWriter(mask=mask), RFC_KEY if mask else None)

    @pytest.mark.parametrize("code, reason", [(1000, ""), (1001, "going away"), (4999, b"bytes"),
                                              (3000, "é" * 61), (1000, "r" * 123)])
    def test_close_frame_round_trip(self, codec, mask, code, reason):
        frame = codec.FrameWriter(mask=mask).close_frame(code, reason)
        text = reason if isinstance(reason, str) else reason.decode()
        run = read_back(codec, frame, mask=mask)
        assert run.events == [("close", code, text, code.to_bytes(2, "big") + text.encode())]

    def test_close_frame_defaults(self, codec, mask):
        writer = codec.FrameWriter(mask=mask)
        assert read_back(codec, writer.close_frame(), mask=mask).events == [
            ("close", 1000, "", b"\x03\xe8")]
        assert read_back(codec, writer.close_frame(None), mask=mask).events == [
            ("close", 1005, "", b"")]


# ---------------------------------------------------------------------------------------
class TestClosePayload:

    @pytest.mark.parametrize("code", VALID_CODES)
    @pytest.mark.parametrize("reason", ["", "ok", "ünï €𝄞", "r" * 123, b"raw bytes"])
    def test_round_trip(self, codec, code, reason):
        payload = codec.build_close_payload(code, reason)
        text = reason if isinstance(reason, str) else reason.decode()
        assert payload == code.to_bytes(2, "big") + text.encode()
        assert codec.parse_close_payload(payload) == (code, text)
        assert codec.parse_close_payload(bytearray(payload)) == (code, text)
        assert codec.parse_close_payload(memoryview(payload)) == (code, text)

    @given(code=st.sampled_from(VALID_CODES), reason=st.text(max_size=123))
    def test_round_trip_any_text(self, codec, code, reason):
        if len(reason.encode()) > 123:
            with pytest.raises(ValueError):
                codec.build_close_payload(code, reason)
        else:
            assert codec.parse_close_payload(codec.build_close_payload(code, reason)) == \
                (code, reason)

    def test_no_code(self, codec):
        assert codec.build_close_payload(None) == b""
        assert codec.build_close_payload(None, "") == b""
        assert codec.build_close_payload() == b"\x03\xe8"
        assert codec.parse_close_payload(b"") == (1005, "")
        with pytest.raises(ValueError):
            codec.build_close_payload(None, "a reason needs a code")

    @pytest.mark.parametrize("code", INVALID_CODES)
    def test_build_refuses_codes_that_may_not_be_sent(self, codec, code):
        with pytest.raises(ValueError):
            codec.build_close_payload(code)

    def test_build_refuses_long_reasons(self, codec):
        assert len(codec.build_close_payload(1000, "x" * 123)) == 125
        for reason in ("x" * 124, "é" * 62, b"x" * 124):
            with pytest.raises(ValueError):
                codec.build_close_payload(1000, reason)

    @pytest.mark.parametrize("code", INVALID_CODES)
    def test_parse_refuses_codes_that_may_not_be_sent(self, codec, code):
        with pytest.raises(ProtocolError) as info:
            codec.parse_close_payload(code.to_bytes(2, "big") + b"reason")
        assert type(info.value) is ProtocolError and info.value.code == 1002

    def test_parse_refuses_one_byte(self, codec):
        with pytest.raises(ProtocolError) as info:
            codec.parse_close_payload(b"\x03")
        assert type(info.value) is ProtocolError and info.value.code == 1002

    @pytest.mark.parametrize("reason", [b"\xff", b"abc\xc3", b"\xed\xa0\x80", b"\xe0\x80\x80"])
    def test_parse_refuses_invalid_utf8(self, codec, reason):
        with pytest.raises(InvalidPayloadData) as info:
            codec.parse_close_payload(b"\x03\xe8" + reason)
        assert info.value.code == 1007


# ---------------------------------------------------------------------------------------
class TestMasking:

    @pytest.mark.parametrize("key", KEYS, ids=lambda k: k.hex())
    def test_apply_mask_small(self, codec, key):
        for n in range(71):
            data = pattern(n)
            masked = codec.apply_mask(data, key)
            assert isinstance(masked, bytes)
            assert masked == xor_mask(data, key), n
            assert codec.apply_mask(masked, key) == data

    def test_apply_mask_inputs(self, codec):
        data = pattern(37)
        expected = xor_mask(data, RFC_KEY)
        assert codec.apply_mask(bytearray(data), RFC_KEY) == expected
        assert codec.apply_mask(memoryview(b"--" + data)[2:], RFC_KEY) == expected
        assert codec.apply_mask(data, bytearray(RFC_KEY)) == expected
        for bad_key in (b"", b"abc", b"abcde"):
            with pytest.raises(ValueError):
                codec.apply_mask(data, bad_key)

    def test_apply_mask_one_mebibyte(self, codec):
        data = pattern(1 << 20)
        masked = codec.apply_mask(data, RFC_KEY)
        reference = (int.from_bytes(data, "little")
                     ^ int.from_bytes(RFC_KEY * (1 << 18), "little")).to_bytes(1 << 20, "little")
        assert masked == reference
        assert masked[:64] == xor_mask(data[:64], RFC_KEY)
        assert masked[-64:] == xor_mask(data[-64:], RFC_KEY)

    @pytest.mark.parametrize("phase", range(4))
    def test_mask_inplace_every_start_and_length(self, codec, phase):
        key = RFC_KEY
        original = pattern(90)
        for start, length in itertools.product(range(9), range(71)):
            buf = bytearray(original)
            codec.mask_inplace(buf, key, start, start + length, phase)
            expected = (original[:start] + xor_mask(original[start:start + length], key, phase)
                        + original[start + length:])
            assert buf == expected, (start, length, phase)

    @pytest.mark.parametrize("phase", range(4))
    def test_mask_inplace_one_mebibyte(self, codec, phase):
        n = 1 << 20
        original = pattern(n + 8)
        buf = bytearray(original)
        codec.mask_inplace(buf, RFC_KEY, 3, 3 + n, phase)
        rotated = RFC_KEY[phase:] + RFC_KEY[:phase]
        reference = (int.from_bytes(original[3:3 + n], "little")
                     ^ int.from_bytes(rotated * (n // 4), "little")).to_bytes(n, "little")
        assert buf[:3] == original[:3] and buf[3 + n:] == original[3 + n:]
        assert buf[3:3 + n] == reference
        codec.mask_inplace(buf, RFC_KEY, 3, 3 + n, phase)
        assert buf == original

    def test_mask_inplace_piecewise_equals_whole(self, codec):
        """Masking a payload in pieces, carrying the phase, is masking it whole."""
        data = pattern(50)
        whole = codec.apply_mask(data, RFC_KEY)
        for cut_points in itertools.combinations(range(1, 50), 2):
            buf = bytearray(data)
            bounds = [0, *cut_points, 50]
            for a, b in zip(bounds, bounds[1:]):
                codec.mask_inplace(buf, RFC_KEY, a, b, a % 4)
            assert buf == whole, cut_points

    def test_mask_inplace_defaults_and_errors(self, codec):
        buf = bytearray(pattern(10))
        codec.mask_inplace(buf, RFC_KEY)                # start=0, end=-1: all of it
        assert buf == xor_mask(pattern(10), RFC_KEY)
        buf = bytearray(pattern(10))
        codec.mask_inplace(memoryview(buf)[2:], RFC_KEY, 1)
        assert buf == pattern(3) + xor_mask(pattern(10)[3:], RFC_KEY)
        for start, end in [(-1, 5), (6, 5), (0, 11), (11, 11)]:
            with pytest.raises(ValueError):
                codec.mask_inplace(bytearray(10), RFC_KEY, start, end)
        for phase in (-1, 4):
            with pytest.raises(ValueError):
                codec.mask_inplace(bytearray(10), RFC_KEY, 0, 10, phase)
        with pytest.raises(ValueError):
            codec.mask_inplace(bytearray(10), b"abc")
        with pytest.raises(BufferError):
            codec.mask_inplace(b"read-only", RFC_KEY)


# ---------------------------------------------------------------------------------------
def _python_says_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")            # strict: no surrogates, no overlongs
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def utf8ish(draw):
    """Mostly valid UTF-8 with a few bytes changed, inserted or cut off."""
    data = bytearray(draw(st.text(max_size=40)).encode())
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from([0x80, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xED, 0xEF,
                                     0xF0, 0xF4, 0xF5, 0xFF, 0xA0, 0x90, 0x8F, 0x41]))
        if draw(st.booleans()) and pos < len(data):
            data[pos] = byte
        else:
            data.insert(pos, byte)
    if data and draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


class TestValidateUTF8:

    @given(data=st.one_of(st.binary(max_size=60), utf8ish(),
                          st.text().map(lambda s: s.encode())))
    def test_agrees_with_python(self, codec, data):
        result = codec.validate_utf8(data)
        assert isinstance(result, bool)
        assert result == _python_says_utf8(data), data

    @pytest.mark.parametrize("data, valid", [
        (b"", True), (b"ascii", True), ("é€𝄞\U0010ffff".encode(), True),
        (b"\xed\x9f\xbf", True), (b"\xee\x80\x80", True), (b"\xf4\x8f\xbf\xbf", True),
        (b"\xc0\xaf", False), (b"\xe0\x80\xaf", False), (b"\xed\xa0\x80", False),
        (b"\xf4\x90\x80\x80", False), (b"\xf5\x80\x80\x80", False), (b"\xc3", False),
        (b"\x80", False), (b"\xff", False),
    ])
    def test_examples(self, codec, data, valid):
        assert bool(codec.validate_utf8(data)) is valid
        assert bool(codec.validate_utf8(bytearray(data))) is valid
        assert bool(codec.validate_utf8(memoryview(b"x" + data)[1:])) is valid

    def test_bad_byte_at_every_position_of_long_ascii(self, codec):
        """Word-at-a-time fast paths must not skip a bad byte at any alignment."""
        for bad in (b"\x80", b"\xff", b"\xc3", b"\xed\xa0\x80"):
            for n in range(40):
                data = b"a" * n + bad + b"b" * (40 - n)
                assert not codec.validate_utf8(data), (bad, n)
                good = b"a" * n + "é".encode() + b"b" * (40 - n)
                assert codec.validate_utf8(good), n


class TestCloseReasonAndLimitRange:
    """RFC 6455 section 5.5.1: a close reason is UTF-8; limits fit the parser's 63 bits."""

    def test_close_reason_must_be_utf8(self, codec):
        with pytest.raises(ValueError, match="not valid UTF-8"):
            codec.build_close_payload(1000, b"\xff\xfe")
        assert codec.build_close_payload(1000, "caf\u00e9") == b"\x03\xe8caf\xc3\xa9"

    @pytest.mark.parametrize("value", [-1, 1 << 63, 1 << 64])
    def test_max_message_size_out_of_range(self, codec, value):
        parser = codec.FrameParser(mask_required=False)
        with pytest.raises(ValueError, match="max_message_size"):
            parser.max_message_size = value

    def test_max_message_size_largest(self, codec):
        parser = codec.FrameParser(mask_required=False)
        parser.max_message_size = (1 << 63) - 1
        assert parser.max_message_size == (1 << 63) - 1
