"""Pure-Python frame codec: the reference for ``fastws._codec``, and its fallback.

Same classes, methods, attributes, errors and messages as the Cython module
(the contract is in ``_codec.pyi``).  Written for clarity, not speed: when the
two disagree, read this one first, then the RFC.
"""

from __future__ import annotations

import operator
import os

from .errors import InvalidPayloadData, PayloadTooBig, ProtocolError
from .frames import MAX_CONTROL_PAYLOAD, MAX_HEADER_SIZE, close_code_is_valid

__all__ = [
    "EV_NONE", "EV_DATA", "EV_PING", "EV_PONG", "EV_CLOSE", "MAX_HEADER_SIZE", "IMPLEMENTATION",
    "FrameParser", "FrameWriter",
    "apply_mask", "mask_inplace", "validate_utf8", "build_close_payload", "parse_close_payload",
]

IMPLEMENTATION = "python"

EV_NONE = 0
EV_DATA = 1
EV_PING = 2
EV_PONG = 3
EV_CLOSE = 4

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_CONTROL_EVENT = {OP_PING: EV_PING, OP_PONG: EV_PONG, OP_CLOSE: EV_CLOSE}
_KNOWN_OPCODES = frozenset({OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG})

# Parser states, named as in aiohttp and picows.
READ_HEADER = 0
READ_PAYLOAD = 1

# Error messages: the Cython module uses the same text, and the tests compare them.
MSG_RSV = "reserved bits set without an extension that defines them (RFC 6455 section 5.2)"
MSG_RSV1_CONTROL = "RSV1 set on a control or continuation frame (RFC 7692 section 6)"
MSG_OPCODE = "unknown opcode {:#x} (RFC 6455 section 5.2)"
MSG_CONTROL_FRAGMENTED = "fragmented control frame (RFC 6455 section 5.5)"
MSG_CONTROL_TOO_LONG = "control frame payload over 125 bytes (RFC 6455 section 5.5)"
MSG_UNMASKED = "unmasked frame from a client; RFC 6455 section 5.1 requires clients to mask"
MSG_MASKED = "masked frame from a server; RFC 6455 section 5.1 forbids servers to mask"
MSG_CONT_NO_MESSAGE = "continuation frame with no message to continue (RFC 6455 section 5.4)"
MSG_DATA_IN_MESSAGE = "new data frame inside a fragmented message (RFC 6455 section 5.4)"
MSG_NON_MINIMAL = "payload length not in its shortest encoding (RFC 6455 section 5.2)"
MSG_LENGTH_MSB = "64-bit payload length with the most significant bit set (RFC 6455 section 5.2)"
MSG_TOO_BIG = "message of at least {} bytes is over the limit of {} bytes"
MSG_CLOSE_ONE_BYTE = "close frame payload of 1 byte (RFC 6455 section 5.5.1)"
MSG_CLOSE_CODE = "close code {} may not be sent (RFC 6455 section 7.4)"
MSG_CLOSE_UTF8 = "close reason is not valid UTF-8 (RFC 6455 section 5.5.1)"
MSG_TEXT_UTF8 = "text message is not valid UTF-8 (RFC 6455 section 8.1)"


# -- UTF-8 -------------------------------------------------------------------
# An incremental validator per RFC 3629 table 4: it fails at the first byte that
# cannot continue a valid sequence (overlongs, surrogates and code points above
# U+10FFFF are caught at their second byte).  Its state is (bytes still needed,
# lowest and highest value the next byte may take).

UTF8_ACCEPT = (0, 0x80, 0xBF)


def _utf8_start(byte: int):
    """The state after a lead byte, or None when it cannot start a sequence."""
    if byte < 0x80:
        return UTF8_ACCEPT
    if 0xC2 <= byte <= 0xDF:
        return (1, 0x80, 0xBF)
    if byte == 0xE0:
        return (2, 0xA0, 0xBF)   # no overlongs below U+0800
    if byte == 0xED:
        return (2, 0x80, 0x9F)   # no surrogates U+D800..U+DFFF
    if 0xE1 <= byte <= 0xEF:
        return (2, 0x80, 0xBF)
    if byte == 0xF0:
        return (3, 0x90, 0xBF)   # no overlongs below U+10000
    if 0xF1 <= byte <= 0xF3:
        return (3, 0x80, 0xBF)
    if byte == 0xF4:
        return (3, 0x80, 0x8F)   # nothing above U+10FFFF
    return None


def _utf8_feed(state, data) -> object:
    """Advance the validator over ``data``; None once the input is invalid."""
    if state == UTF8_ACCEPT and bytes(data).isascii():
        return state
    for byte in bytes(data):
        need, lo, hi = state
        if need == 0:
            state = _utf8_start(byte)
        elif lo <= byte <= hi:
            state = (need - 1, 0x80, 0xBF)
        else:
            state = None
        if state is None:
            return None
    return state


def validate_utf8(data) -> bool:
    """Whether ``data`` is complete, valid UTF-8."""
    return _utf8_feed(UTF8_ACCEPT, data) == UTF8_ACCEPT


# -- Masking -------------------------------------------------------------------

def _check_key(key) -> bytes:
    key = bytes(key)
    if len(key) != 4:
        raise ValueError("mask key must be 4 bytes")
    return key


def apply_mask(data, key) -> bytes:
    """RFC 6455 section 5.3: byte i is XORed with key[i % 4]."""
    key = _check_key(key)
    data = bytes(data)
    n = len(data)
    # XOR as one big integer: clear and fast enough for a reference.
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def mask_inplace(buffer, key, start: int = 0, end: int = -1, phase: int = 0) -> None:
    key = _check_key(key)
    view = memoryview(buffer).cast("B")
    if view.readonly:
        raise BufferError("mask_inplace needs a writable buffer")
    if end < 0:
        end = len(view)
    if not 0 <= start <= end <= len(view):
        raise ValueError("start/end out of range")
    if not 0 <= phase <= 3:
        raise ValueError("phase must be 0..3")
    rotated = key[phase:] + key[:phase]
    view[start:end] = apply_mask(view[start:end], rotated)


# -- Close payloads --------------------------------------------------------------

def build_close_payload(code=1000, reason=b"") -> bytes:
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code")
        return b""
    if not validate_utf8(reason):
        raise ValueError("close reason is not valid UTF-8 (RFC 6455 section 5.5.1)")
    if not close_code_is_valid(code):
        raise ValueError(f"close code {code} may not be sent (RFC 6455 section 7.4)")
    payload = int(code).to_bytes(2, "big") + bytes(reason)
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError("close reason over 123 bytes (RFC 6455 section 5.5)")
    return payload


def parse_close_payload(payload) -> tuple[int, str]:
    payload = bytes(payload)
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise ProtocolError(MSG_CLOSE_ONE_BYTE)
    code = int.from_bytes(payload[:2], "big")
    if not close_code_is_valid(code):
        raise ProtocolError(MSG_CLOSE_CODE.format(code))
    if _utf8_feed(UTF8_ACCEPT, payload[2:]) != UTF8_ACCEPT:
        raise InvalidPayloadData(MSG_CLOSE_UTF8)
    return code, payload[2:].decode("utf-8")


# -- Parser ----------------------------------------------------------------------

class FrameParser:
    """Incremental RFC 6455 frame parser for one direction (see ``_codec.pyi``).

    The attributes that ``_codec.pyi`` marks readonly are properties over ``_name``
    fields (added below the class), as the Cython class's ``cdef readonly`` ones are.
    """

    def __init__(self, *, mask_required, max_message_size=0, validate_utf8=True, allow_rsv1=False):
        self._mask_required = bool(mask_required)
        self.max_message_size = max_message_size
        self.validate_utf8 = bool(validate_utf8)
        self.allow_rsv1 = bool(allow_rsv1)
        self._view = None
        self._offset = 0
        self._end = 0
        self._closed = False
        self._failed = False
        self._state = READ_HEADER
        self._in_message = False
        self._utf8 = UTF8_ACCEPT
        self._mask_key = b""
        self._frame_done = 0            # payload bytes of the current frame consumed
        self._control_payload = b""     # unmasked control payload (scan mode)
        self._frame_start = 0
        self._frame_start_valid = False
        self._opcode = 0
        self._message_opcode = 0
        self._fin = False
        self._rsv1 = False
        self._frame_length = 0
        self._payload_start = 0
        self._payload_end = 0
        self._frame_finished = False
        self._message_finished = False
        self._close_code = 0
        self._close_reason = ""
        self._frames = 0
        self._messages = 0
        self._payload_bytes = 0
        self._message_size = 0

    # attributes that are readonly in the Cython class
    @property
    def max_message_size(self):
        return self._max_message_size

    @max_message_size.setter
    def max_message_size(self, value):
        if not 0 <= value < 1 << 63:
            raise ValueError("max_message_size must be >= 0 and < 2**63 (0: no limit)")
        self._max_message_size = int(value)

    def feed(self, buffer, start=0, end=-1):
        view = memoryview(buffer).cast("B")
        if end < 0:
            end = len(view)
        if not 0 <= start <= end <= len(view):
            raise ValueError("start/end out of range")
        self.release()
        self._view = view
        self._offset = start
        self._end = end
        self._frame_start_valid = False     # frame_start points into the previous buffer

    @property
    def in_message(self):
        """A fragmented data message is open: only its continuations (and control frames) may come."""
        return self._in_message

    @property
    def frame_remaining(self):
        """Payload bytes still to come of the data frame in progress (0 at a frame boundary)."""
        if self._state == READ_PAYLOAD:
            return self._frame_length - self._frame_done
        return 0

    def release(self):
        if self._view is not None:
            self._view.release()
            self._view = None

    def payload(self) -> bytes:
        if self._opcode >= OP_CLOSE:
            return self._control_payload    # already unmasked, also after scan()
        if self._view is None:
            raise BufferError("the fed buffer was released; copy the chunk before EV_NONE")
        return bytes(self._view[self._payload_start:self._payload_end])

    def scan(self) -> int:
        while True:
            event = self._step(inspect=False)
            if event != EV_DATA:
                return event

    def next_event(self) -> int:
        return self._step(inspect=True)

    # -- the state machine -------------------------------------------------------

    def _fail(self, exc):
        self._failed = True
        self.release()
        raise exc

    def _step(self, inspect: bool) -> int:
        if self._view is None:
            return EV_NONE
        if self._failed or self._closed:
            self._offset = self._end        # RFC 6455 section 7.1.7 / 5.5.1: discard
            self.release()
            return EV_NONE
        try:
            if self._state == READ_HEADER:
                event = self._read_header(inspect)
            else:
                event = self._read_payload(inspect)
        except ProtocolError as exc:
            self._fail(exc)
        if event == EV_NONE:
            self.release()
        return event

    def _read_header(self, inspect: bool) -> int:
        buf, pos, avail = self._view, self._offset, self._end - self._offset
        if avail < 2:
            return EV_NONE
        b0, b1 = buf[pos], buf[pos + 1]
        fin, rsv, opcode = bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F
        masked, length = bool(b1 & 0x80), b1 & 0x7F
        control = opcode >= OP_CLOSE

        # Checks that need only the first two bytes: fail as early as possible.
        if rsv & 0x30 or (rsv and not self.allow_rsv1):
            raise ProtocolError(MSG_RSV)
        if opcode not in _KNOWN_OPCODES:
            raise ProtocolError(MSG_OPCODE.format(opcode))
        if rsv and (control or opcode == OP_CONT):
            raise ProtocolError(MSG_RSV1_CONTROL)
        if control and not fin:
            raise ProtocolError(MSG_CONTROL_FRAGMENTED)
        if control and length > MAX_CONTROL_PAYLOAD:
            raise ProtocolError(MSG_CONTROL_TOO_LONG)
        if masked != self._mask_required:
            raise ProtocolError(MSG_UNMASKED if self._mask_required else MSG_MASKED)
        if opcode == OP_CONT and not self._in_message:
            raise ProtocolError(MSG_CONT_NO_MESSAGE)
        if opcode in (OP_TEXT, OP_BINARY) and self._in_message:
            raise ProtocolError(MSG_DATA_IN_MESSAGE)

        header = 2
        if length == 126:
            if avail < 4:
                return EV_NONE
            length = int.from_bytes(buf[pos + 2:pos + 4], "big")
            if length < 126:
                raise ProtocolError(MSG_NON_MINIMAL)
            header = 4
        elif length == 127:
            if avail < 10:
                return EV_NONE
            length = int.from_bytes(buf[pos + 2:pos + 10], "big")
            if length >> 63:
                raise ProtocolError(MSG_LENGTH_MSB)
            if length < 0x10000:
                raise ProtocolError(MSG_NON_MINIMAL)
            header = 10
        if not control and self._max_message_size:
            # A continuation adds to the message so far; a new message starts at 0.
            so_far = self._message_size if opcode == OP_CONT else 0
            if length > self._max_message_size - so_far:
                raise PayloadTooBig(MSG_TOO_BIG.format(so_far + length, self._max_message_size))
        if masked:
            header += 4
        if avail < header:
            return EV_NONE
        if control and avail < header + length:
            return EV_NONE          # control frames are consumed whole

        self._frame_start = pos
        self._frame_start_valid = True
        self._opcode, self._fin, self._rsv1, self._frame_length = opcode, fin, bool(rsv), length
        self._mask_key = bytes(buf[pos + header - 4:pos + header]) if masked else b""
        if control:
            return self._read_control(pos + header, inspect)

        # A data frame: consume the header, then its payload as it arrives.
        if opcode != OP_CONT:
            self._in_message = True
            self._message_opcode = opcode
            self._message_size = 0
            self._utf8 = UTF8_ACCEPT
        self._offset = pos + header
        self._frame_done = 0
        self._state = READ_PAYLOAD
        if length == 0:
            return self._read_payload(inspect)
        return self._read_payload(inspect) if self._offset < self._end else EV_NONE

    def _read_control(self, start: int, inspect: bool) -> int:
        end = start + self._frame_length
        data = bytes(self._view[start:end])
        if self._mask_key:
            data = apply_mask(data, self._mask_key)
            if inspect:
                if self._view.readonly:
                    raise BufferError("next_event unmasks in place: feed a writable buffer")
                self._view[start:end] = data
        self._control_payload = data
        if self._opcode == OP_CLOSE:
            if self.validate_utf8:
                self._close_code, self._close_reason = parse_close_payload(data)
            else:
                code, reason = parse_close_payload(data[:2])
                self._close_code = code
                self._close_reason = data[2:].decode("utf-8", "replace")
        self._payload_start, self._payload_end = start, end
        self._frame_finished = True
        self._message_finished = False
        self._offset = end
        self._frames += 1
        if self._opcode == OP_CLOSE:
            self._closed = True
        return _CONTROL_EVENT[self._opcode]

    def _read_payload(self, inspect: bool) -> int:
        start = self._offset
        take = min(self._frame_length - self._frame_done, self._end - start)
        if take == 0 and self._frame_length:
            return EV_NONE
        end = start + take
        chunk = bytes(self._view[start:end])
        if self._mask_key:
            rotated = self._mask_key[self._frame_done % 4:] + self._mask_key[:self._frame_done % 4]
            chunk = apply_mask(chunk, rotated)
            if inspect:
                if self._view.readonly:
                    raise BufferError("next_event unmasks in place: feed a writable buffer")
                self._view[start:end] = chunk
        if self._message_opcode == OP_TEXT and self.validate_utf8:
            self._utf8 = _utf8_feed(self._utf8, chunk)
            if self._utf8 is None:
                raise InvalidPayloadData(MSG_TEXT_UTF8)
        self._frame_done += take
        self._payload_bytes += take
        self._message_size += take
        self._offset = end
        self._payload_start, self._payload_end = start, end
        self._frame_finished = self._frame_done == self._frame_length
        self._message_finished = self._frame_finished and self._fin
        if self._frame_finished:
            self._state = READ_HEADER
            self._frames += 1
            if self._fin:
                if self._message_opcode == OP_TEXT and self.validate_utf8 and self._utf8 != UTF8_ACCEPT:
                    raise InvalidPayloadData(MSG_TEXT_UTF8)
                self._in_message = False
                self._messages += 1
        return EV_DATA


_READONLY = (
    "mask_required", "offset", "end", "closed", "failed", "frame_start", "frame_start_valid", "opcode",
    "message_opcode", "fin", "rsv1", "frame_length", "payload_start", "payload_end",
    "frame_finished", "message_finished", "close_code", "close_reason",
    "frames", "messages", "payload_bytes", "message_size",
)
for _name in _READONLY:
    setattr(FrameParser, _name, property(operator.attrgetter("_" + _name)))
del _name


# -- Writer ----------------------------------------------------------------------

class FrameWriter:
    """Builds frames: masked towards a server (``mask=True``), plain towards a client."""

    def __init__(self, *, mask):
        self._mask = bool(mask)
        self._keys = b""

    @property
    def mask(self) -> bool:
        return self._mask

    def new_mask_key(self) -> bytes:
        # os.urandom per frame is a system call; draw 4 KiB at a time instead.
        if not self._keys:
            self._keys = os.urandom(4096)
        key, self._keys = self._keys[:4], self._keys[4:]
        return key

    def header(self, opcode, length, fin=True, rsv1=False, mask_key=None) -> bytes:
        if opcode not in _KNOWN_OPCODES:
            raise ValueError(f"unknown opcode {opcode:#x}")
        if opcode >= OP_CLOSE and (length > MAX_CONTROL_PAYLOAD or not fin):
            raise ValueError("control frames carry at most 125 bytes and cannot be fragmented")
        if length < 0 or length >> 63:
            raise ValueError("payload length out of range")
        if self.mask != (mask_key is not None):
            raise ValueError("mask_key is required when masking and refused otherwise")
        first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
        maskbit = 0x80 if self.mask else 0
        if length < 126:
            head = bytes((first, maskbit | length))
        elif length < 0x10000:
            head = bytes((first, maskbit | 126)) + length.to_bytes(2, "big")
        else:
            head = bytes((first, maskbit | 127)) + length.to_bytes(8, "big")
        if self.mask:
            head += _check_key(mask_key)
        return head

    def frame(self, opcode, payload=b"", fin=True, rsv1=False) -> bytes:
        payload = bytes(payload)
        if not self.mask:
            return self.header(opcode, len(payload), fin, rsv1) + payload
        key = self.new_mask_key()
        return self.header(opcode, len(payload), fin, rsv1, key) + apply_mask(payload, key)

    def close_frame(self, code=1000, reason="") -> bytes:
        return self.frame(OP_CLOSE, build_close_payload(code, reason))
