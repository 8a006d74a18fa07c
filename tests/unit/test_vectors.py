"""Run the frame corpus in tests/vectors/ through both codecs.

Each vector is fed whole and one byte at a time, to ``next_event()`` (every event)
and to ``scan()`` (control events, counters, errors).  The corpus and its format
are described in tests/vectors/make_vectors.py, which generates it.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from codec_helpers import drive

VECTORS = pathlib.Path(__file__).resolve().parent.parent / "vectors"


def load(kind: str):
    cases = []
    for meta_path in sorted((VECTORS / kind).glob("*.json")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        data = meta_path.with_suffix(".bin").read_bytes()
        cases.append(pytest.param(meta, data, id=f"{kind}/{meta_path.stem}"))
    return cases


VALID = load("valid")
INVALID = load("invalid")


def as_events(run):
    """A run's aggregated events in the corpus format."""
    out = []
    for event in run.events:
        if event[0] == "data":
            _, opcode, message_opcode, fin, rsv1, payload = event
            out.append(["data", opcode, fin, payload.hex(), message_opcode, rsv1])
        elif event[0] == "close":
            _, code, reason, payload = event
            out.append(["close", 8, True, payload.hex(), code, reason])
        else:
            name, payload = event
            out.append([name, 9 if name == "ping" else 10, True, payload.hex()])
    return out


def run_vector(codec, meta, data, cuts, mode):
    run = drive(codec, data, mask_required=meta["mask_required"], cuts=cuts, mode=mode,
                **meta["options"])
    expected = meta["events"] if mode == "event" else [
        e for e in meta["events"] if e[0] != "data"]
    assert as_events(run) == expected, meta["description"]
    return run


def test_corpus_is_there():
    assert len(VALID) >= 50 and len(INVALID) >= 100
    for kind in ("valid", "invalid"):
        for meta_path in (VECTORS / kind).glob("*.json"):
            assert meta_path.with_suffix(".bin").exists(), meta_path


@pytest.mark.parametrize("cuts", [(), "bytewise"], ids=["whole", "bytewise"])
@pytest.mark.parametrize("mode", ["event", "scan"])
@pytest.mark.parametrize("meta, data", VALID)
def test_valid(codec, meta, data, mode, cuts):
    run = run_vector(codec, meta, data, cuts, mode)
    assert run.error is None, (meta["description"], run.error)
    assert run.parser.closed == meta["closed"]
    counters = meta["counters"]
    assert (run.parser.frames, run.parser.messages, run.parser.payload_bytes) == (
        counters["frames"], counters["messages"], counters["payload_bytes"])
    assert run.consumed == len(data)       # nothing left over: the streams end on a frame
    if mode == "scan":
        assert run.forwarded == data


@pytest.mark.parametrize("cuts", [(), "bytewise"], ids=["whole", "bytewise"])
@pytest.mark.parametrize("mode", ["event", "scan"])
@pytest.mark.parametrize("meta, data", INVALID)
def test_invalid(codec, meta, data, mode, cuts):
    run = run_vector(codec, meta, data, cuts, mode)
    expected = meta["error"]
    assert run.error is not None, meta["description"]
    assert type(run.error).__name__ == expected["class"], (meta["description"], run.error)
    assert isinstance(run.error, codec.ProtocolError)
    assert run.error.code == expected["code"]
    if "offset" in expected:
        assert run.error_offset == expected["offset"]
    assert run.parser.failed
