#!/usr/bin/env python3
"""Generate the frame corpus in tests/vectors/{valid,invalid}/ (after gunicorn's tests/requests).

Each vector is ``NNN.bin`` (the raw bytes of one direction of a connection) and
``NNN.json``::

    {
      "description": "...",
      "rfc": "5.4",                       # the RFC 6455 section (or RFC 7692) it exercises
      "mask_required": true,              # true: frames from a client; false: from a server
      "options": {"max_message_size": 0, "validate_utf8": true, "allow_rsv1": false},
      "events": [                         # one entry per complete frame, in order
        ["data", opcode, fin, payload_hex, message_opcode, rsv1],
        ["ping", 9, true, payload_hex],
        ["pong", 10, true, payload_hex],
        ["close", 8, true, payload_hex, close_code, close_reason]
      ],
      "closed": false,                    # valid vectors: a close frame was received
      "counters": {"frames": n, "messages": n, "payload_bytes": n},   # valid vectors
      "error": {"class": "ProtocolError", "code": 1002, "offset": 0}  # invalid vectors
    }

``events`` of an invalid vector are those before the error; ``offset`` (the stream
position where the parser stops, i.e. how far the input was valid) is given
only where it does not depend on how the input is cut into reads.  Payloads are
unmasked.  Expected results are written from the frames built here, never by
running fastws.

Run from the repository root; the output is deterministic (fixed mask keys)::

    python tests/vectors/make_vectors.py
"""

from __future__ import annotations

import json
import pathlib
import shutil

HERE = pathlib.Path(__file__).resolve().parent

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
KEYS = [bytes((0x37, 0xFA, 0x21, 0x3D)), bytes((0x00, 0x00, 0x00, 0x00)),
        bytes((0xFF, 0xFF, 0xFF, 0xFF)), bytes((0x80, 0x01, 0xC3, 0x7E))]
DEFAULTS = {"max_message_size": 0, "validate_utf8": True, "allow_rsv1": False}


class F:
    """One frame; any field may be illegal."""

    def __init__(self, opcode, payload=b"", *, fin=True, rsv=0, masked=None, length=None,
                 length_size=None):
        self.opcode, self.payload, self.fin, self.rsv = opcode, payload, fin, rsv
        self.masked, self.length, self.length_size = masked, length, length_size

    def encode(self, mask_required: bool, key: bytes) -> bytes:
        masked = mask_required if self.masked is None else self.masked
        length = len(self.payload) if self.length is None else self.length
        size = self.length_size or (7 if length < 126 else 16 if length < 0x10000 else 64)
        first = (0x80 if self.fin else 0) | self.rsv | self.opcode
        maskbit = 0x80 if masked else 0
        if size == 7:
            head = bytes((first, maskbit | length))
        elif size == 16:
            head = bytes((first, maskbit | 126)) + length.to_bytes(2, "big")
        else:
            head = bytes((first, maskbit | 127)) + length.to_bytes(8, "big")
        if not masked:
            return head + self.payload
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(self.payload))


def close(code: int | None, reason: bytes = b"") -> bytes:
    return b"" if code is None else code.to_bytes(2, "big") + reason


def pattern(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def text(n: int) -> bytes:
    return (b"Lorem ipsum " * (n // 12 + 1))[:n]


def expected_events(frames: list[F]) -> tuple[list, dict, bool]:
    """Events, counters and closed-ness of frames that are all valid, in order."""
    events, message_opcode = [], 0
    counters = {"frames": 0, "messages": 0, "payload_bytes": 0}
    for f in frames:
        counters["frames"] += 1
        if f.opcode in (TEXT, BINARY, CONT):
            if f.opcode != CONT:
                message_opcode = f.opcode
            events.append(["data", f.opcode, f.fin, f.payload.hex(), message_opcode,
                           bool(f.rsv & RSV1)])
            counters["payload_bytes"] += len(f.payload)
            counters["messages"] += f.fin
        elif f.opcode == CLOSE:
            code = 1005 if not f.payload else int.from_bytes(f.payload[:2], "big")
            reason = f.payload[2:].decode("utf-8", "replace")
            events.append(["close", CLOSE, True, f.payload.hex(), code, reason])
            return events, counters, True          # anything after a close is discarded
        else:
            events.append(["ping" if f.opcode == PING else "pong", f.opcode, True,
                           f.payload.hex()])
    return events, counters, False


VALID: list[dict] = []
INVALID: list[dict] = []


def valid(description, rfc, frames, *, mask_required=(True, False), tail=b"", **options):
    """A valid stream; ``tail`` is raw bytes after the frames (after a close: discarded)."""
    for direction in ((mask_required,) if isinstance(mask_required, bool) else mask_required):
        VALID.append(dict(description=description, rfc=rfc, mask_required=direction,
                          frames=frames, tail=tail, options={**DEFAULTS, **options}))


def invalid(description, rfc, frames, bad, error, code, *, offset=True,
            mask_required=(True, False), raw=None, **options):
    """``frames`` are valid, then ``bad`` (a frame, or raw bytes in ``raw``) fails with
    ``error``/``code``; offset=True: the parser stops at the bad frame's first byte."""
    for direction in ((mask_required,) if isinstance(mask_required, bool) else mask_required):
        INVALID.append(dict(description=description, rfc=rfc, mask_required=direction,
                            frames=frames, bad=bad, raw=raw, error=error, code=code,
                            offset=offset, options={**DEFAULTS, **options}))


# -- valid streams -------------------------------------------------------------------------

valid("RFC 6455 5.7 example: a single-frame text message 'Hello'", "5.7",
      [F(TEXT, b"Hello")])
valid("RFC 6455 5.7 example: a fragmented text message 'Hel' + 'lo'", "5.7",
      [F(TEXT, b"Hel", fin=False), F(CONT, b"lo")])
valid("RFC 6455 5.7 example: ping 'Hello' and its pong", "5.7",
      [F(PING, b"Hello"), F(PONG, b"Hello")])
# The two largest boundaries in one direction each, to keep the corpus small.
for n, directions in ((0, (True, False)), (1, (True, False)), (125, (True, False)),
                      (126, (True, False)), (127, (True, False)), (65535, False),
                      (65536, (True, False))):
    valid(f"binary frame of {n} bytes (length encoding boundary)", "5.2",
          [F(BINARY, pattern(n))], mask_required=directions)
for n, directions in ((0, (True, False)), (125, (True, False)), (126, (True, False)),
                      (65536, True)):
    valid(f"text frame of {n} bytes (length encoding boundary)", "5.2",
          [F(TEXT, text(n))], mask_required=directions)
valid("empty frames of every kind", "5.2",
      [F(TEXT, b""), F(BINARY, b""), F(PING, b""), F(PONG, b""), F(TEXT, b"", fin=False),
       F(CONT, b""), F(CLOSE, b"")])
valid("fragmented text message with ping and pong between the fragments", "5.4",
      [F(TEXT, b"frag", fin=False), F(PING, b"are you there?"), F(CONT, b"men", fin=False),
       F(PONG, b""), F(CONT, b"ted")])
valid("fragmented binary message, fragments across length encodings", "5.4",
      [F(BINARY, pattern(125), fin=False), F(CONT, pattern(126), fin=False),
       F(PING, pattern(125)), F(CONT, pattern(300))])
valid("close frame between the fragments of a message; the rest is discarded", "5.4",
      [F(BINARY, b"part one", fin=False), F(CLOSE, close(1001)), F(CONT, b"never seen")])
valid("several messages in a row, then a close with a reason", "5.5.1",
      [F(TEXT, b"one"), F(BINARY, b"\x00two"), F(TEXT, "drei €".encode(), fin=False),
       F(CONT, b"!"), F(CLOSE, close(1000, b"bye"))])
valid("close frame without a payload (code 1005 reported)", "5.5.1", [F(CLOSE, b"")])
valid("close frame with a code and no reason", "5.5.1", [F(CLOSE, close(1000))])
valid("close frame with a 123-byte reason (125-byte payload)", "5.5.1",
      [F(CLOSE, close(1000, b"r" * 123))])
valid("close frame with a UTF-8 reason", "5.5.1",
      [F(CLOSE, close(4000, "ünïcödé €𝄞".encode()))])
for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
             3000, 3999, 4000, 4999):
    valid(f"close code {code} may be sent", "7.4", [F(CLOSE, close(code, b"ok"))],
          mask_required=code % 2 == 0)
valid("input after a close frame is discarded, even garbage", "5.5.1",
      [F(CLOSE, close(1000))], tail=b"\xff\xff\x00garbage after close")
valid("ping with a 125-byte payload", "5.5", [F(PING, pattern(125))])
valid("text characters split across fragments at every byte", "8.1",
      [F(TEXT, "é€𝄞".encode()[:1], fin=False), F(CONT, "é€𝄞".encode()[1:3], fin=False),
       F(CONT, "é€𝄞".encode()[3:4], fin=False), F(CONT, "é€𝄞".encode()[4:8], fin=False),
       F(CONT, "é€𝄞".encode()[8:])])
valid("edge code points U+0080 U+07FF U+0800 U+D7FF U+E000 U+FFFF U+10000 U+10FFFF", "8.1",
      [F(TEXT, "\u0080\u07ff\u0800\ud7ff\ue000\uffff\U00010000\U0010ffff".encode())])
valid("invalid UTF-8 in text accepted when validate_utf8 is off", "8.1",
      [F(TEXT, b"\xff\xed\xa0\x80\xc0\xaf"), F(CLOSE, close(1000, b"\xff"))],
      validate_utf8=False)
valid("binary messages are never checked for UTF-8", "8.1",
      [F(BINARY, b"\xff\xed\xa0\x80", fin=False), F(CONT, b"\xc0")])
valid("RSV1 on the first frame of a message when an extension allows it", "RFC 7692 6",
      [F(TEXT, b"compressed?", fin=False, rsv=RSV1), F(CONT, b"rest"),
       F(BINARY, b"x", rsv=RSV1)], allow_rsv1=True)
valid("message exactly at max_message_size", "10.4", [F(BINARY, pattern(1024))],
      max_message_size=1024)
valid("fragmented message exactly at max_message_size", "10.4",
      [F(BINARY, pattern(500), fin=False), F(PING, b""), F(CONT, pattern(524))],
      max_message_size=1024)
valid("control frames do not count against max_message_size", "10.4",
      [F(PING, pattern(125)), F(PONG, pattern(125)), F(TEXT, b"a")], max_message_size=1)
valid("max_message_size applies to each message, not to the connection", "10.4",
      [F(BINARY, pattern(1000)), F(TEXT, text(1000)), F(BINARY, pattern(1000))],
      max_message_size=1024)

# -- invalid streams -----------------------------------------------------------------------

P, R = "ProtocolError", 1002
for rsv, name in ((RSV2, "RSV2"), (RSV3, "RSV3"), (RSV2 | RSV3, "RSV2 and RSV3")):
    invalid(f"{name} set", "5.2", [], F(BINARY, b"x", rsv=rsv), P, R)
    invalid(f"{name} set even with an extension allowing RSV1", "5.2", [],
            F(TEXT, b"x", rsv=rsv), P, R, allow_rsv1=True)
invalid("RSV1 set without an extension", "5.2", [F(TEXT, b"ok")], F(TEXT, b"x", rsv=RSV1), P, R)
invalid("RSV1 on a ping, with an extension", "RFC 7692 6", [], F(PING, b"", rsv=RSV1), P, R,
        allow_rsv1=True)
invalid("RSV1 on a close, with an extension", "RFC 7692 6", [], F(CLOSE, b"", rsv=RSV1), P, R,
        allow_rsv1=True)
invalid("RSV1 on a continuation, with an extension", "RFC 7692 6",
        [F(TEXT, b"a", fin=False, rsv=RSV1)], F(CONT, b"b", rsv=RSV1), P, R, allow_rsv1=True)
for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF):
    invalid(f"undefined opcode {op:#x}", "5.2", [F(PING, b"")], F(op, b"abc"), P, R)
for op, name in ((PING, "ping"), (PONG, "pong"), (CLOSE, "close")):
    invalid(f"fragmented {name} frame (FIN clear)", "5.5", [], F(op, b"", fin=False), P, R)
    invalid(f"{name} frame with 126 bytes of payload", "5.5", [],
            F(op, close(1000, b"x" * 124)), P, R)
    invalid(f"{name} frame with a 64-bit length", "5.5", [],
            F(op, b"", length=70000), P, R)
invalid("unmasked frame from a client", "5.1", [F(TEXT, b"ok")],
        F(TEXT, b"plain", masked=False), P, R, mask_required=True)
invalid("unmasked control frame from a client", "5.1", [],
        F(PING, b"plain", masked=False), P, R, mask_required=True)
invalid("masked frame from a server", "5.1", [F(TEXT, b"ok")],
        F(TEXT, b"masked", masked=True), P, R, mask_required=False)
invalid("masked continuation from a server", "5.1", [F(BINARY, b"a", fin=False)],
        F(CONT, b"b", masked=True), P, R, mask_required=False)
invalid("continuation frame with no message", "5.4", [], F(CONT, b"orphan"), P, R)
invalid("continuation frame after a finished message", "5.4", [F(TEXT, b"done")],
        F(CONT, b"orphan"), P, R)
invalid("text frame inside a fragmented message", "5.4",
        [F(TEXT, b"a", fin=False), F(PING, b"")], F(TEXT, b"b"), P, R)
invalid("binary frame inside a fragmented message", "5.4",
        [F(BINARY, b"a", fin=False), F(CONT, b"b", fin=False)], F(BINARY, b"c"), P, R)
for n in (0, 125):
    invalid(f"length {n} in the 16-bit encoding", "5.2", [], F(BINARY, pattern(n), length_size=16),
            P, R)
for n in (0, 125, 126, 65535):
    invalid(f"length {n} in the 64-bit encoding", "5.2", [], F(BINARY, pattern(n), length_size=64),
            P, R)
for n in (2**63, 2**64 - 1):
    invalid(f"64-bit length {n:#x} with the most significant bit set", "5.2", [],
            F(BINARY, b"", length=n), P, R)
invalid("close frame with a 1-byte payload", "5.5.1", [], F(CLOSE, b"\x03"), P, R)
for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535):
    invalid(f"close code {code} may not be sent", "7.4", [F(TEXT, b"before")],
            F(CLOSE, close(code, b"r")), P, R)
invalid("close reason that is not UTF-8", "5.5.1", [], F(CLOSE, close(1000, b"\xff")),
        "InvalidPayloadData", 1007)
invalid("close reason with a truncated character", "5.5.1", [],
        F(CLOSE, close(1000, "é".encode()[:1])), "InvalidPayloadData", 1007)
for seq, name in ((b"\xc0\xaf", "overlong C0"), (b"\xc1\xbf", "overlong C1"),
                  (b"\xe0\x80\xaf", "overlong E0 80"), (b"\xf0\x80\x80\xaf", "overlong F0 80"),
                  (b"\xed\xa0\x80", "surrogate ED A0"), (b"\xed\xbf\xbf", "surrogate ED BF"),
                  (b"\xf4\x90\x80\x80", "above U+10FFFF (F4 90)"), (b"\xf5\x80\x80\x80", "F5"),
                  (b"\xff", "FF"), (b"\x80", "lone continuation byte"),
                  (b"\xc3", "truncated at the end of the message")):
    invalid(f"invalid UTF-8 in a text message: {name}", "8.1", [F(BINARY, b"\xff")],
            F(TEXT, b"valid start " + seq + (b" and more" if len(seq) > 1 else b"")),
            "InvalidPayloadData", 1007, offset=False)
invalid("invalid UTF-8 split across fragments: E2 82 then '('", "8.1",
        [F(TEXT, b"ok \xe2\x82", fin=False), F(PING, b"")], F(CONT, b"("),
        "InvalidPayloadData", 1007, offset=False)
invalid("surrogate split across fragments: ED then A0 80", "8.1",
        [F(TEXT, b"\xed", fin=False)], F(CONT, b"\xa0\x80"), "InvalidPayloadData", 1007,
        offset=False)
invalid("message over max_message_size, known from the header alone", "10.4", [], None,
        "PayloadTooBig", 1009, raw=b"\x82\x7e\x04\x01", mask_required=False,
        max_message_size=1024)
invalid("masked message over max_message_size, known from the header alone", "10.4", [], None,
        "PayloadTooBig", 1009, raw=b"\x82\xfe\x04\x01\x37\xfa\x21\x3d", mask_required=True,
        max_message_size=1024)
invalid("message one byte over max_message_size", "10.4", [F(TEXT, b"x" * 1024)],
        F(BINARY, pattern(1025)), "PayloadTooBig", 1009, max_message_size=1024)
invalid("three 500-byte fragments over a 1024-byte limit: the third fails", "10.4",
        [F(BINARY, pattern(500), fin=False), F(CONT, pattern(500), fin=False)],
        F(CONT, pattern(500)), "PayloadTooBig", 1009, max_message_size=1024)
invalid("64-bit length far over the limit", "10.4", [], F(BINARY, b"", length=2**62),
        "PayloadTooBig", 1009, max_message_size=65536)


# -- writing -------------------------------------------------------------------------------

def encode(frames: list[F], mask_required: bool, counter: list[int]) -> bytes:
    out = b""
    for f in frames:
        out += f.encode(mask_required, KEYS[counter[0] % len(KEYS)])
        counter[0] += 1
    return out


def main() -> None:
    for kind in ("valid", "invalid"):
        shutil.rmtree(HERE / kind, ignore_errors=True)
        (HERE / kind).mkdir()
    counter = [0]
    for n, case in enumerate(VALID, 1):
        data = encode(case["frames"], case["mask_required"], counter) + case["tail"]
        events, counters, closed = expected_events(case["frames"])
        write("valid", n, data, {
            "description": case["description"], "rfc": case["rfc"],
            "mask_required": case["mask_required"], "options": case["options"],
            "events": events, "closed": closed, "counters": counters})
    for n, case in enumerate(INVALID, 1):
        data = encode(case["frames"], case["mask_required"], counter)
        start = len(data)
        if case["raw"] is not None:
            data += case["raw"]
        else:
            data += encode([case["bad"]], case["mask_required"], counter)
        error = {"class": case["error"], "code": case["code"]}
        if case["offset"]:
            error["offset"] = start
        events, _, _ = expected_events(case["frames"])
        write("invalid", n, data, {
            "description": case["description"], "rfc": case["rfc"],
            "mask_required": case["mask_required"], "options": case["options"],
            "events": events, "error": error})
    print(f"{len(VALID)} valid and {len(INVALID)} invalid vectors written to {HERE}")


def write(kind: str, n: int, data: bytes, meta: dict) -> None:
    """Write NNN.bin and NNN.json, the JSON with one key, and one event, per line."""
    (HERE / kind / f"{n:03d}.bin").write_bytes(data)
    lines = []
    for key, value in meta.items():
        if key == "events" and value:
            inner = ",\n".join("  " + json.dumps(e, ensure_ascii=False) for e in value)
            lines.append(f' "{key}": [\n{inner}\n ]')
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    assert json.loads(text) == meta
    (HERE / kind / f"{n:03d}.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
