"""Fuzz the parser with hypothesis: whatever the bytes, only documented outcomes.

Arbitrary bytes (and mutated well-formed streams, which get deeper into the
parser), cut into arbitrary reads, both modes, both directions, random settings:

- the only exceptions are ``ProtocolError`` and its subclasses (close codes 1002,
  1007, 1009), after which the parser is failed and discards all later input;
- ``offset`` never moves backwards and stays within the fed region, event payload
  regions lie within the consumed input (checked by ``codec_helpers.drive``);
- scan() forwards exactly the bytes it consumed, untouched.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from codec_helpers import drive, encode_specs, examples, frame_specs, parser_options


@st.composite
def fuzz_input(draw):
    mask_required = draw(st.booleans())
    if draw(st.booleans()):
        data = draw(st.binary(max_size=200))
    else:
        data = bytearray(encode_specs(draw, draw(frame_specs()), mask_required))
        for _ in range(draw(st.integers(0, 3))):          # flip a few bytes anywhere
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = bytes(data)
    n = len(data)
    cuts = "bytewise" if n < 100 and draw(st.integers(0, 5)) == 0 else draw(
        st.lists(st.integers(0, n), max_size=10))
    return mask_required, data, cuts


@settings(max_examples=examples(400))
@given(case=fuzz_input(), mode=st.sampled_from(["event", "scan"]), options=parser_options(),
       pad=st.tuples(st.integers(0, 2), st.integers(0, 2)), readonly=st.booleans())
def test_only_protocol_errors(codec, case, mode, options, pad, readonly):
    mask_required, data, cuts = case
    # drive() lets anything but ProtocolError propagate, and checks the offsets.
    run = drive(codec, data, mask_required=mask_required, cuts=cuts, mode=mode, pad=pad,
                readonly=readonly and mode == "scan", **options)
    parser = run.parser
    assert 0 <= run.consumed <= len(data)
    if mode == "scan":
        assert run.forwarded == data[:len(run.forwarded)]
        assert len(run.forwarded) == run.consumed
    if run.error is not None:
        assert run.error.code in (1002, 1007, 1009)
        assert parser.failed and not parser.closed
        frames = parser.frames
        # Failed: later input is discarded, whatever it is.
        for later in (data, b"\x81\x05hello", b"\x00" * 3):
            parser.feed(bytearray(later))
            assert parser.scan() == codec.EV_NONE
            assert parser.offset == len(later)
            parser.feed(bytearray(later))
            assert parser.next_event() == codec.EV_NONE
            assert parser.offset == len(later)
        assert parser.frames == frames and parser.failed
    else:
        assert not parser.failed
        if mode == "event":
            data_bytes = sum(len(e[5]) for e in run.events if e[0] == "data")
            assert data_bytes <= parser.payload_bytes   # the unfinished frame's chunks too
        if parser.closed:
            assert run.consumed == len(data)
            assert run.events and run.events[-1][0] == "close"
            assert 1000 <= run.events[-1][1] <= 4999


@given(data=st.binary(max_size=40), mask_required=st.booleans())
def test_every_prefix_is_judged_consistently(codec, data, mask_required):
    """A prefix of a stream never fails where the whole stream would not."""
    whole = drive(codec, data, mask_required=mask_required)
    for n in range(len(data)):
        prefix = drive(codec, data[:n], mask_required=mask_required)
        if prefix.error is not None:
            assert whole.error is not None
            assert type(whole.error) is type(prefix.error)
            assert whole.error_offset == prefix.error_offset
