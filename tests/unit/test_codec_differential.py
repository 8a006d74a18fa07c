"""Differential tests: the compiled codec against the Python reference, and both against wsproto.

(a) ``fastws._codec`` vs ``fastws._codec_py``: hypothesis builds frame streams
(well-formed ones with zero to two broken rules, truncated or with garbage
behind), cuts them at random points and feeds both codecs the same way.  Every
``scan()``/``next_event()`` call must report the same event, fields, payload and
offset, and the final error the same class, code and message.

(b) ``wsproto.frame_protocol.FrameProtocol`` reads the same streams.  Where wsproto
departs from RFC 6455 or from fastws's documented choices, the strategy keeps away
from the difference and a ``test_wsproto_differs_*`` test pins it instead:

1. Fail-fast UTF-8: wsproto relies on Python's incremental decoder, which accepts a
   surrogate prefix ED A0..ED BF until the third byte or the end of the message;
   fastws fails at the second byte.  (Every other impossible byte fails at once in
   both.)  Normalised: 0xED in data payloads becomes 0xEE.
2. Close code 1014 (Bad Gateway, IANA-registered, RFC 6455 7.4.2): wsproto rejects
   it with 1002.  Normalised: the strategy sends 1013 instead.
3. No message size limit in wsproto's frame layer: ``max_message_size`` is 0.
4. No switch to turn UTF-8 validation off, and RSV1 only through an extension
   object: ``validate_utf8`` is True and ``allow_rsv1`` False.
5. wsproto checks continuation rules (continuation without a message, a new data
   frame inside one) only once the frame's first payload byte is there (or the
   frame is empty); fastws fails on the header.  Reserved bits and the mask bit are
   checked after the extended length in wsproto, after two bytes in fastws.  So on
   a truncated stream fastws can fail where wsproto has not decided yet.
   Normalised: the wsproto streams hold whole frames only.
6. Order of checks: wsproto tests the opcode before the reserved bits (fastws the
   other way round); the close code is 1002 either way, only the message differs.
7. Representation: wsproto reports the message's opcode on continuation frames and
   decodes text chunk by chunk to ``str`` (a character split across frames shows up
   in the later one).  Normalised: frames are compared as (message opcode, fin) and
   text per message.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from codec_helpers import (
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RFC_KEY, RSV2, Spec, build_frame,
    close_payload, cut, cut_points, drive, encode_specs, examples, frame_specs, parser_options,
)
from fastws import _codec_py as ref
from fastws.errors import InvalidPayloadData, ProtocolError


@pytest.fixture(scope="module")
def both(c_codec, py_codec):
    """(compiled, reference); the compiled side is skipped only under FASTWS_NO_EXTENSIONS."""
    return c_codec, py_codec


@dataclasses.dataclass
class Scenario:
    data: bytes
    mask_required: bool
    cuts: object
    options: dict


@st.composite
def scenarios(draw):
    mask_required = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:                  # plain noise now and then
        data = draw(st.binary(max_size=64))
    else:
        data = encode_specs(draw, draw(frame_specs()), mask_required)
        if draw(st.integers(0, 3)) == 0:
            data = data[:draw(st.integers(0, len(data)))]
        if draw(st.integers(0, 5)) == 0:
            data += draw(st.binary(max_size=16))
    return Scenario(data, mask_required, draw(cut_points(data)), draw(parser_options()))


@st.composite
def setting_changes(draw):
    """Changes of the writable settings before some chunks: {chunk index: {name: value}}."""
    changes = draw(st.dictionaries(
        st.integers(1, 8),
        st.fixed_dictionaries({}, optional={
            "max_message_size": st.sampled_from([0, 1, 30, 600, 1000]),
            "validate_utf8": st.booleans(),
            "allow_rsv1": st.booleans(),
        }),
        max_size=3))

    return SettingChanges(changes)


class SettingChanges:
    """``between`` callback for ``drive``; its repr shows the changes in a falsifying example."""

    def __init__(self, changes):
        self.changes = changes

    def __call__(self, parser, index):
        for name, value in self.changes.get(index, {}).items():
            setattr(parser, name, value)

    def __repr__(self):
        return f"SettingChanges({self.changes!r})"


def assert_same(c_run, py_run):
    assert c_run.error_info == py_run.error_info
    assert c_run.raw == py_run.raw
    assert c_run.events == py_run.events
    assert c_run.counters == py_run.counters
    assert (c_run.parser.closed, c_run.parser.failed) == (py_run.parser.closed,
                                                           py_run.parser.failed)
    assert c_run.forwarded == py_run.forwarded


# ---------------------------------------------------------------------------------------
# (a) compiled vs reference

class TestCompiledAgainstReference:

    @settings(max_examples=examples(300))
    @given(sc=scenarios(), mode=st.sampled_from(["event", "scan"]),
           pad=st.tuples(st.integers(0, 3), st.integers(0, 3)), readonly=st.booleans())
    def test_streams(self, both, sc, mode, pad, readonly):
        runs = [drive(codec, sc.data, mask_required=sc.mask_required, cuts=sc.cuts, mode=mode,
                      pad=pad, readonly=readonly and mode == "scan", **sc.options)
                for codec in both]
        assert_same(*runs)

    @given(sc=scenarios(), mode=st.sampled_from(["event", "scan"]), between=setting_changes())
    def test_streams_with_settings_changed_midway(self, both, sc, mode, between):
        runs = [drive(codec, sc.data, mask_required=sc.mask_required, cuts=sc.cuts, mode=mode,
                      between=between, **sc.options) for codec in both]
        assert_same(*runs)

    @settings(max_examples=examples(3000))
    @given(segments=st.lists(st.tuples(st.integers(0, 9), st.sampled_from(
               [b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9d\x84\x9e"])), max_size=5),
           last=st.tuples(st.integers(0, 9), st.sampled_from(
               [b"", b"\x80", b"\xff", b"\xc3", b"\xed\xa0", b"\xc3\xa9"])),
           key=st.binary(min_size=4, max_size=4),
           cuts=st.lists(st.integers(0, 30), max_size=3),
           mode=st.sampled_from(["scan", "event"]))
    def test_masked_text(self, both, segments, last, key, cuts, mode):
        """Text payload of ASCII runs and characters, maybe one bad byte at the end: the
        word-at-a-time UTF-8 and mask paths at every alignment of key, chunk and char."""
        payload = b"".join(b"a" * n + piece for n, piece in [*segments, last]) + b"z" * 9
        data = build_frame(OP_TEXT, payload, mask_key=key)
        runs = [drive(codec, data, mask_required=True, cuts=cuts, mode=mode) for codec in both]
        assert_same(*runs)

    def test_limit_lowered_below_the_message_in_progress(self, both):
        """Both must judge a message that is already over a lowered limit alike."""
        data = build_frame(OP_BINARY, b"x" * 600, fin=False) + build_frame(OP_CONT, b"")

        def lower(parser, index):
            if index == 1:
                parser.max_message_size = 500
        runs = [drive(codec, data, mask_required=False, cuts=[len(data) - 2],
                      max_message_size=1000, between=lower) for codec in both]
        assert_same(*runs)

    @given(data=st.binary(max_size=80), key=st.binary(min_size=4, max_size=4),
           phase=st.integers(0, 3), start=st.integers(0, 80), length=st.integers(0, 80))
    def test_masking(self, both, data, key, phase, start, length):
        c, py = both
        assert c.apply_mask(data, key) == py.apply_mask(data, key)
        end = min(start + length, len(data))
        results = []
        for codec in both:
            buf = bytearray(data)
            try:
                codec.mask_inplace(buf, key, start, end, phase)
                results.append(bytes(buf))
            except ValueError as exc:
                results.append((type(exc), str(exc)))
        assert results[0] == results[1]

    @given(data=st.one_of(st.binary(max_size=40), st.text(max_size=20).map(str.encode)))
    def test_validate_utf8(self, both, data):
        c, py = both
        assert c.validate_utf8(data) == py.validate_utf8(data)

    @given(payload=st.one_of(st.binary(max_size=8),
                             st.tuples(st.integers(0, 65535), st.binary(max_size=6)).map(
                                 lambda t: close_payload(*t))))
    def test_parse_close_payload(self, both, payload):
        results = []
        for codec in both:
            try:
                results.append(codec.parse_close_payload(payload))
            except ProtocolError as exc:
                results.append((type(exc), exc.code, str(exc)))
        assert results[0] == results[1]

    @pytest.mark.parametrize("call", [
        pytest.param(lambda m: m.build_close_payload(1005), id="close-1005"),
        pytest.param(lambda m: m.build_close_payload(1000, "x" * 124), id="close-124"),
        pytest.param(lambda m: m.build_close_payload(None, "x"), id="close-no-code"),
        pytest.param(lambda m: m.FrameWriter(mask=False).frame(OP_PING, b"x" * 126), id="ping-126"),
        pytest.param(lambda m: m.FrameWriter(mask=False).frame(0x3), id="frame-opcode-3"),
        pytest.param(lambda m: m.FrameWriter(mask=False).header(0x3, -1), id="header-opcode-3-length-neg"),
        pytest.param(lambda m: m.FrameWriter(mask=False).header(OP_PING, 2**63), id="header-ping-2^63"),
        pytest.param(lambda m: m.FrameWriter(mask=False).header(OP_BINARY, 2**63), id="header-2^63"),
        pytest.param(lambda m: m.FrameWriter(mask=False).header(OP_BINARY, 2**64), id="header-2^64"),
        pytest.param(lambda m: m.FrameWriter(mask=True).header(OP_BINARY, 1), id="header-no-key"),
        pytest.param(lambda m: m.FrameWriter(mask=True).header(OP_BINARY, 1, mask_key=b"k"),
                     id="header-short-key"),
        pytest.param(lambda m: m.apply_mask(b"x", b"k"), id="apply-mask-short-key"),
        pytest.param(lambda m: m.FrameParser(mask_required=True).feed(b"abc", 2, 1), id="feed-range"),
    ])
    def test_value_error_messages(self, both, call):
        """Same exception class and message for the same bad argument."""
        outcomes = []
        for codec in both:
            try:
                outcomes.append(("ok", call(codec)))
            except Exception as exc:  # noqa: BLE001 - the class is what is compared
                outcomes.append((type(exc).__name__, str(exc)))
        assert outcomes[0] == outcomes[1]
        assert outcomes[1][0] == "ValueError"


# ---------------------------------------------------------------------------------------
# (b) against wsproto

def wsproto_read(data: bytes, *, mask_required: bool, cuts=()):
    """Normalised items and the close code of the error (None) as wsproto sees them."""
    proto = FrameProtocol(client=not mask_required, extensions=[])
    items, message, error = [], bytearray(), None
    for piece in cut(data, cuts):
        proto.receive_bytes(piece)
        try:
            for frame in proto.received_frames():
                if frame.opcode in (Opcode.PING, Opcode.PONG):
                    items.append((frame.opcode.name.lower(), bytes(frame.payload)))
                elif frame.opcode is Opcode.CLOSE:
                    code, reason = frame.payload
                    items.append(("close", int(code), reason))
                else:
                    chunk = frame.payload
                    message += chunk.encode() if isinstance(chunk, str) else chunk
                    if frame.frame_finished:
                        items.append(("frame", int(frame.opcode), frame.message_finished))
                    if frame.message_finished:
                        items.append(("message", int(frame.opcode), bytes(message)))
                        message.clear()
        except ParseFailed as exc:
            error = int(exc.code)
            break
    return items, error


def fastws_read(codec, data: bytes, *, mask_required: bool, cuts=(), mode="event"):
    """The same normalised items from a fastws run."""
    run = drive(codec, data, mask_required=mask_required, cuts=cuts, mode=mode)
    items, message = [], bytearray()
    for event in run.events:
        if event[0] == "data":
            _, _, message_opcode, fin, _, payload = event
            message += payload
            items.append(("frame", message_opcode, fin))
            if fin:
                items.append(("message", message_opcode, bytes(message)))
                message.clear()
        elif event[0] == "close":
            items.append(event[:3])
        else:
            items.append(event)
    return items, None if run.error is None else int(run.error.code), run


def normalise_for_wsproto(specs: list[Spec]) -> list[Spec]:
    for s in specs:
        if s.opcode in (OP_TEXT, OP_BINARY, OP_CONT):
            s.payload = s.payload.replace(b"\xed", b"\xee")         # difference 1
        elif s.opcode == OP_CLOSE and s.payload[:2] == b"\x03\xf6":
            s.payload = b"\x03\xf5" + s.payload[2:]                  # difference 2
    return specs


@st.composite
def wsproto_scenarios(draw):
    mask_required = draw(st.booleans())
    specs = normalise_for_wsproto(draw(frame_specs()))
    data = encode_specs(draw, specs, mask_required)                 # whole frames: difference 5
    return Scenario(data, mask_required, draw(cut_points(data)), {})


class TestAgainstWsproto:

    @given(sc=wsproto_scenarios())
    def test_streams(self, codec, sc):
        ours, our_error, run = fastws_read(codec, sc.data, mask_required=sc.mask_required,
                                           cuts=sc.cuts)
        theirs, their_error = wsproto_read(sc.data, mask_required=sc.mask_required, cuts=sc.cuts)
        assert our_error == their_error, (run.error, sc)
        assert ours == theirs

    def test_fragmented_stream(self, codec):
        for mask_required in (True, False):
            key = RFC_KEY if mask_required else None
            data = (build_frame(OP_TEXT, "fragmé".encode()[:6], fin=False, mask_key=key)
                    + build_frame(OP_PING, b"hi", mask_key=key)
                    + build_frame(OP_CONT, "fragmé".encode()[6:], mask_key=key)
                    + build_frame(OP_BINARY, bytes(70000), mask_key=key)
                    + build_frame(OP_CLOSE, close_payload(1000, b"bye"), mask_key=key))
            expected = [("frame", OP_TEXT, False), ("ping", b"hi"), ("frame", OP_TEXT, True),
                        ("message", OP_TEXT, "fragmé".encode()), ("frame", OP_BINARY, True),
                        ("message", OP_BINARY, bytes(70000)), ("close", 1000, "bye")]
            for cuts in ((), (3, 9, 100)):
                ours, our_error, _ = fastws_read(codec, data, mask_required=mask_required,
                                                 cuts=cuts)
                theirs, their_error = wsproto_read(data, mask_required=mask_required, cuts=cuts)
                assert ours == theirs == expected
                assert our_error is their_error is None

    # -- the pinned differences ----------------------------------------------------------

    def test_wsproto_differs_surrogate_prefix_is_not_fail_fast(self, codec):
        """wsproto differs: ED A0 (a surrogate's first two bytes) passes until the third byte."""
        data = build_frame(OP_TEXT, b"ok\xed\xa0\x80 and more")
        prefix = data[:6]                                   # header + b"ok\xed\xa0"
        ours, our_error, _ = fastws_read(codec, prefix, mask_required=False)
        assert our_error == 1007
        theirs, their_error = wsproto_read(prefix, mask_required=False)
        assert their_error is None
        _, their_error = wsproto_read(data[:7], mask_required=False)
        assert their_error == 1007
        # Any other impossible second byte fails at once in both.
        for bad in (b"\xe0\x80", b"\xf0\x8f", b"\xf4\x90"):
            frame = build_frame(OP_TEXT, b"ok" + bad + b"\x80\x80 more")
            assert wsproto_read(frame[:6], mask_required=False)[1] == 1007
            assert fastws_read(codec, frame[:6], mask_required=False)[1] == 1007

    def test_wsproto_differs_close_code_1014_is_rejected(self, codec):
        """wsproto differs: it refuses close code 1014 (Bad Gateway) with 1002."""
        data = build_frame(OP_CLOSE, close_payload(1014, b"upstream"))
        ours, our_error, _ = fastws_read(codec, data, mask_required=False)
        assert our_error is None and ours == [("close", 1014, "upstream")]
        assert wsproto_read(data, mask_required=False)[1] == 1002
        for code in (1012, 1013):                            # 1012/1013 accepted by both
            data = build_frame(OP_CLOSE, close_payload(code))
            assert wsproto_read(data, mask_required=False) == ([("close", code, "")], None)

    def test_wsproto_differs_no_message_size_limit(self, codec):
        """wsproto differs: its frame layer has no size limit; fastws fails from the header."""
        header = build_frame(OP_BINARY, b"", length=1 << 30)
        run = drive(codec, header, mask_required=False, max_message_size=1 << 20)
        assert run.error is not None and run.error.code == 1009
        assert wsproto_read(header + b"x" * 100, mask_required=False)[1] is None

    @pytest.mark.parametrize("prefix, frame", [
        (b"", build_frame(OP_CONT, b"abcde")),
        (build_frame(OP_TEXT, b"a", fin=False), build_frame(OP_BINARY, b"abcde")),
    ], ids=["continuation-without-message", "new-message-inside-message"])
    def test_wsproto_differs_fragmentation_checked_after_first_payload_byte(self, codec, prefix,
                                                                          frame):
        """wsproto differs: it judges fragmentation only once payload arrives."""
        header_only = prefix + frame[:2]
        assert fastws_read(codec, header_only, mask_required=False)[1] == 1002
        assert wsproto_read(header_only, mask_required=False)[1] is None
        assert wsproto_read(header_only + frame[2:3], mask_required=False)[1] == 1002

    @pytest.mark.parametrize("first_two, full", [
        (bytes((0x80 | RSV2 | OP_BINARY, 127)), 10),         # reserved bit
        (bytes((0x80 | OP_BINARY, 126)), 4),                 # unmasked frame from a client
    ], ids=["rsv2", "unmasked"])
    def test_wsproto_differs_checks_after_the_extended_length(self, codec, first_two, full):
        """wsproto differs: reserved bits and the mask bit wait for the extended length."""
        length = 70000 if full == 10 else 300
        data = first_two + length.to_bytes(full - 2, "big")
        mask_required = first_two[1] == 126
        assert fastws_read(codec, data[:2], mask_required=mask_required)[1] == 1002
        assert wsproto_read(data[:full - 1], mask_required=mask_required)[1] is None
        assert wsproto_read(data[:full], mask_required=mask_required)[1] == 1002

    def test_wsproto_differs_opcode_checked_before_reserved_bits(self, codec):
        """wsproto differs: order of checks (same code 1002, different reason)."""
        data = bytes((0x80 | RSV2 | 0x3, 0))
        run = drive(codec, data, mask_required=False)
        assert str(run.error) == ref.MSG_RSV and run.error.code == 1002
        proto = FrameProtocol(client=True, extensions=[])
        proto.receive_bytes(data)
        with pytest.raises(ParseFailed, match="Invalid opcode") as info:
            list(proto.received_frames())
        assert info.value.code == 1002

    def test_wsproto_differs_continuation_opcode_and_text_chunks(self, codec):
        """wsproto differs (representation): continuations carry the message opcode, and
        text arrives as str, a split character in the later frame."""
        data = build_frame(OP_TEXT, b"a\xc3", fin=False) + build_frame(OP_CONT, b"\xa9")
        run = drive(codec, data, mask_required=False)
        assert run.events == [("data", OP_TEXT, OP_TEXT, False, False, b"a\xc3"),
                              ("data", OP_CONT, OP_TEXT, True, False, b"\xa9")]
        proto = FrameProtocol(client=True, extensions=[])
        proto.receive_bytes(data)
        frames = list(proto.received_frames())
        assert [(f.opcode, f.payload) for f in frames] == [(Opcode.TEXT, "a"), (Opcode.TEXT, "é")]

    def test_wsproto_agrees_on_input_after_close(self, codec):
        """Not a difference: both ignore whatever follows a close frame."""
        data = build_frame(OP_CLOSE, close_payload(1000)) + b"\xff\xff garbage"
        ours, our_error, _ = fastws_read(codec, data, mask_required=False)
        assert (ours, our_error) == wsproto_read(data, mask_required=False) == \
            ([("close", 1000, "")], None)

    def test_wsproto_agrees_on_utf8_errors(self, codec):
        """Not a difference: invalid text is 1007 in both, also split across fragments."""
        for payloads in ([b"\xff"], [b"\xe2\x82", b"("], [b"ok\xc3"], [b"\xf4\x90\x80\x80"]):
            data = b"".join(build_frame(OP_TEXT if i == 0 else OP_CONT, p,
                                        fin=i == len(payloads) - 1)
                            for i, p in enumerate(payloads))
            assert fastws_read(codec, data, mask_required=False)[1] == 1007
            assert wsproto_read(data, mask_required=False)[1] == 1007
        # And close reasons.
        data = build_frame(OP_CLOSE, close_payload(1000, b"\xff"))
        assert fastws_read(codec, data, mask_required=False)[1] == 1007
        assert wsproto_read(data, mask_required=False)[1] == 1007
        assert isinstance(drive(codec, data, mask_required=False).error, InvalidPayloadData)

    @pytest.mark.parametrize("opcode", [OP_PING, OP_PONG])
    def test_wsproto_agrees_on_control_frames(self, codec, opcode):
        data = build_frame(opcode, b"x" * 125, mask_key=RFC_KEY)
        assert fastws_read(codec, data, mask_required=True)[:2] == \
            wsproto_read(data, mask_required=True)
