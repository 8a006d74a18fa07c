# cython: language_level=3
"""RFC 6455 frame codec: parse in place, (un)mask, build headers, count sizes.

The hot path of fastws.  It knows nothing of sockets, asyncio or logging: it walks
a buffer the caller owns and reports offsets into it.  The contract is in
``_codec.pyi``; ``_codec_py.py`` is the readable reference with the same
behaviour, attributes and error messages, and the tests hold the two together.

Two ways to consume a parser:
- ``scan()`` walks every complete data frame of the fed region in C and returns
  only for a control frame or the end of the region (passthrough relay).
- ``next_event()`` returns one event at a time, unmasking payload in place
  (inspect relay).
"""

from cpython.buffer cimport (
    PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

import os

from .errors import InvalidPayloadData, PayloadTooBig, ProtocolError

__all__ = [
    "EV_NONE", "EV_DATA", "EV_PING", "EV_PONG", "EV_CLOSE", "MAX_HEADER_SIZE", "IMPLEMENTATION",
    "FrameParser", "FrameWriter",
    "apply_mask", "mask_inplace", "validate_utf8", "build_close_payload", "parse_close_payload",
]

IMPLEMENTATION = "cython"

EV_NONE = EV_NONE_
EV_DATA = EV_DATA_
EV_PING = EV_PING_
EV_PONG = EV_PONG_
EV_CLOSE = EV_CLOSE_
MAX_HEADER_SIZE = 14

cdef enum:
    OP_CONT = 0x0
    OP_TEXT = 0x1
    OP_BINARY = 0x2
    OP_CLOSE = 0x8
    OP_PING = 0x9
    OP_PONG = 0xA
    MAX_CONTROL_PAYLOAD = 125
    KEY_BLOCK = 4096

cdef extern from *:
    """
    #define FASTWS_HIGH_BITS 0x8080808080808080ULL
    """
    const uint64_t HIGH_BITS "FASTWS_HIGH_BITS"

# Error messages: the same text as _codec_py.py; the differential tests compare them.
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
MSG_READONLY = "next_event unmasks in place: feed a writable buffer"


# -- Small C helpers ---------------------------------------------------------------

cdef inline uint64_t _load64(const unsigned char* p) noexcept nogil:
    # memcpy into a local instead of a pointer cast: no unaligned-load assumption.
    cdef uint64_t w
    memcpy(&w, p, 8)
    return w


cdef inline uint64_t _load_be64(const unsigned char* p) noexcept nogil:
    return ((<uint64_t>p[0] << 56) | (<uint64_t>p[1] << 48) | (<uint64_t>p[2] << 40)
            | (<uint64_t>p[3] << 32) | (<uint64_t>p[4] << 24) | (<uint64_t>p[5] << 16)
            | (<uint64_t>p[6] << 8) | <uint64_t>p[7])


cdef inline void _fill_key(unsigned char* key12, const unsigned char* key4) noexcept nogil:
    # The key three times over: key12 + phase is 8 valid mask bytes for any phase 0..3.
    memcpy(key12, key4, 4)
    memcpy(key12 + 4, key4, 4)
    memcpy(key12 + 8, key4, 4)


cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    /* dst[i] = src[i] ^ k[i % 4] with k = key12 + phase; dst may equal src.
       16-byte vectors, 64 bytes a step, through GCC/Clang vector extensions: SSE2 on x86-64 and
       NEON on arm64 (both baseline, so no runtime dispatch and no -march), then
       a word at a time, then the tail.  memcpy keeps every access unaligned-safe. */
    #if defined(__GNUC__) || defined(__clang__)
    /* 16 bytes: the native width of SSE2 and NEON.  A wider generic vector would be
       split by the compiler, sometimes through the stack. */
    typedef uint64_t fastws_v2u64 __attribute__((vector_size(16)));
    #endif
    static inline void fastws_xor_mask(unsigned char *dst, const unsigned char *src,
                                       Py_ssize_t n, const unsigned char *k) {
        uint64_t m;
        Py_ssize_t i = 0;
        memcpy(&m, k, 8);
    #if defined(__GNUC__) || defined(__clang__)
        fastws_v2u64 mv = {m, m};
        for (; i + 64 <= n; i += 64) {     /* four independent 16-byte streams a step */
            fastws_v2u64 w0, w1, w2, w3;
            memcpy(&w0, src + i, 16);
            memcpy(&w1, src + i + 16, 16);
            memcpy(&w2, src + i + 32, 16);
            memcpy(&w3, src + i + 48, 16);
            w0 ^= mv; w1 ^= mv; w2 ^= mv; w3 ^= mv;
            memcpy(dst + i, &w0, 16);
            memcpy(dst + i + 16, &w1, 16);
            memcpy(dst + i + 32, &w2, 16);
            memcpy(dst + i + 48, &w3, 16);
        }
        for (; i + 16 <= n; i += 16) {
            fastws_v2u64 w;
            memcpy(&w, src + i, 16);
            w ^= mv;
            memcpy(dst + i, &w, 16);
        }
    #endif
        for (; i + 8 <= n; i += 8) {
            uint64_t w;
            memcpy(&w, src + i, 8);
            w ^= m;
            memcpy(dst + i, &w, 8);
        }
        for (; i < n; i++)
            dst[i] = src[i] ^ k[i & 3];
    }
    """
    void fastws_xor_mask(unsigned char* dst, const unsigned char* src, Py_ssize_t n,
                         const unsigned char* k) noexcept nogil


cdef inline void _xor_mask(unsigned char* dst, const unsigned char* src, Py_ssize_t n,
                           const unsigned char* key12, Py_ssize_t phase) noexcept nogil:
    """dst[i] = src[i] ^ key[(phase + i) % 4]; dst may equal src (RFC 6455 section 5.3).

    aiohttp's mask.pyx goes a word at a time; the C above goes 64 bytes a step,
    which gcc -O2 does not do by itself for a word loop.
    """
    fastws_xor_mask(dst, src, n, key12 + (phase & 3))


cdef inline bint _close_code_ok(int code) noexcept nogil:
    # RFC 6455 section 7.4; same table as fastws.frames.close_code_is_valid.
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


cdef bint _utf8_feed(Utf8State* st, const unsigned char* p, Py_ssize_t n,
                     const unsigned char* key12, Py_ssize_t phase) noexcept nogil:
    """Advance ``st`` over ``n`` bytes; False at the first byte that cannot be valid.

    ``key12`` (with ``phase``) unmasks on the fly so scan() can check masked
    payload it must forward untouched; pass a zeroed key for plain bytes.
    """
    cdef Py_ssize_t i = 0
    cdef unsigned char c
    cdef uint8_t need = st.need, lo = st.lo, hi = st.hi
    while i < n:
        if need == 0:
            # ASCII fast path: 8 bytes at a time.  key12 + ((phase + i) & 3) is the key
            # in phase for byte i, with 8 valid bytes behind it.
            while i + 8 <= n and ((_load64(p + i) ^ _load64(key12 + ((phase + i) & 3))) & HIGH_BITS) == 0:
                i += 8
            if i >= n:
                break
            c = p[i] ^ key12[(phase + i) & 3]
            i += 1
            if c < 0x80:
                continue
            lo = 0x80
            hi = 0xBF
            if 0xC2 <= c <= 0xDF:
                need = 1
            elif c == 0xE0:
                need = 2
                lo = 0xA0           # no overlongs below U+0800
            elif c == 0xED:
                need = 2
                hi = 0x9F           # no surrogates
            elif 0xE1 <= c <= 0xEF:
                need = 2
            elif c == 0xF0:
                need = 3
                lo = 0x90           # no overlongs below U+10000
            elif 0xF1 <= c <= 0xF3:
                need = 3
            elif c == 0xF4:
                need = 3
                hi = 0x8F           # nothing above U+10FFFF
            else:
                return False
        else:
            c = p[i] ^ key12[(phase + i) & 3]
            i += 1
            if c < lo or c > hi:
                return False
            need -= 1
            lo = 0x80
            hi = 0xBF
    st.need = need
    st.lo = lo
    st.hi = hi
    return True


cdef unsigned char _ZERO_KEY[12]
memset(_ZERO_KEY, 0, 12)


cdef inline void _utf8_reset(Utf8State* st) noexcept nogil:
    st.need = 0
    st.lo = 0x80
    st.hi = 0xBF


cdef int _get_buffer(object obj, Py_buffer* view, bint writable) except -1:
    """Acquire a contiguous byte buffer; read-only unless ``writable`` is required."""
    if writable:
        PyObject_GetBuffer(obj, view, PyBUF_WRITABLE)
    else:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    return 0


# -- Close payloads ------------------------------------------------------------------

cdef object _parse_close(const unsigned char* p, Py_ssize_t n, bint validate, int* code_out):
    """The reason of a close payload (code in code_out); raises like parse_close_payload."""
    cdef Utf8State st
    cdef int code
    if n == 0:
        code_out[0] = 1005
        return ""
    if n == 1:
        raise ProtocolError(MSG_CLOSE_ONE_BYTE)
    code = (p[0] << 8) | p[1]
    if not _close_code_ok(code):
        raise ProtocolError(MSG_CLOSE_CODE.format(code))
    code_out[0] = code
    if validate:
        _utf8_reset(&st)
        if not _utf8_feed(&st, p + 2, n - 2, _ZERO_KEY, 0) or st.need != 0:
            raise InvalidPayloadData(MSG_CLOSE_UTF8)
        return PyUnicode_DecodeUTF8(<char*>p + 2, n - 2, NULL)
    return PyUnicode_DecodeUTF8(<char*>p + 2, n - 2, "replace")


def parse_close_payload(payload):
    """(code, reason) of a close frame's payload; (1005, "") for an empty one."""
    cdef Py_buffer view
    cdef int code = 0
    _get_buffer(payload, &view, False)
    try:
        reason = _parse_close(<const unsigned char*>view.buf, view.len, True, &code)
    finally:
        PyBuffer_Release(&view)
    return code, reason


def build_close_payload(code=1000, reason=b""):
    """The payload of a close frame; ValueError for a code that may not be sent."""
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code")
        return b""
    if not validate_utf8(reason):
        raise ValueError("close reason is not valid UTF-8 (RFC 6455 section 5.5.1)")
    if not _close_code_ok(code):
        raise ValueError(f"close code {code} may not be sent (RFC 6455 section 7.4)")
    payload = int(code).to_bytes(2, "big") + bytes(reason)
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError("close reason over 123 bytes (RFC 6455 section 5.5)")
    return payload


def validate_utf8(data):
    """Whether ``data`` is complete, valid UTF-8."""
    cdef Py_buffer view
    cdef Utf8State st
    cdef bint ok
    _get_buffer(data, &view, False)
    _utf8_reset(&st)
    ok = _utf8_feed(&st, <const unsigned char*>view.buf, view.len, _ZERO_KEY, 0) and st.need == 0
    PyBuffer_Release(&view)
    return ok


# -- Masking ---------------------------------------------------------------------------

cdef int _check_key(object key, unsigned char* key12) except -1:
    cdef Py_buffer kv
    _get_buffer(key, &kv, False)
    try:
        if kv.len != 4:
            raise ValueError("mask key must be 4 bytes")
        _fill_key(key12, <const unsigned char*>kv.buf)
    finally:
        PyBuffer_Release(&kv)
    return 0


def apply_mask(data, key):
    """A masked (or unmasked) copy of ``data``: byte i XOR key[i % 4] (RFC 6455 section 5.3)."""
    cdef unsigned char key12[12]
    cdef Py_buffer view
    _check_key(key, key12)
    _get_buffer(data, &view, False)
    try:
        out = PyBytes_FromStringAndSize(NULL, view.len)
        _xor_mask(<unsigned char*>PyBytes_AS_STRING(out), <const unsigned char*>view.buf,
                  view.len, key12, 0)
    finally:
        PyBuffer_Release(&view)
    return out


def mask_inplace(buffer, key, Py_ssize_t start=0, Py_ssize_t end=-1, Py_ssize_t phase=0):
    """XOR ``buffer[start:end]`` with ``key`` in place, starting at key position ``phase``."""
    cdef unsigned char key12[12]
    cdef Py_buffer view
    cdef unsigned char* p
    _check_key(key, key12)
    try:
        _get_buffer(buffer, &view, True)
    except BufferError:
        raise BufferError("mask_inplace needs a writable buffer") from None
    try:
        if end < 0:
            end = view.len
        if not (0 <= start <= end <= view.len):
            raise ValueError("start/end out of range")
        if not (0 <= phase <= 3):
            raise ValueError("phase must be 0..3")
        p = <unsigned char*>view.buf
        _xor_mask(p + start, p + start, end - start, key12, phase)
    finally:
        PyBuffer_Release(&view)


# -- Parser ------------------------------------------------------------------------------

cdef class FrameParser:
    """Incremental RFC 6455 frame parser for one direction (see ``_codec.pyi``)."""

    def __cinit__(self):
        self._has_buf = False
        self._data = NULL

    def __init__(self, *, mask_required, max_message_size=0, validate_utf8=True, allow_rsv1=False):
        self.mask_required = bool(mask_required)
        self.max_message_size = max_message_size
        self.validate_utf8 = bool(validate_utf8)
        self.allow_rsv1 = bool(allow_rsv1)
        self.offset = 0
        self.end = 0
        self.closed = False
        self.failed = False
        self._state = READ_HEADER
        self._in_message = False
        _utf8_reset(&self._utf8)
        memset(self._f_key, 0, 12)
        self._f_masked = False
        self._f_done = 0
        self.frame_start = 0
        self.frame_start_valid = False
        self.opcode = 0
        self.message_opcode = 0
        self.fin = False
        self.rsv1 = False
        self.frame_length = 0
        self.payload_start = 0
        self.payload_end = 0
        self.frame_finished = False
        self.message_finished = False
        self.close_code = 0
        self.close_reason = ""
        self._ctrl_len = 0
        self.frames = 0
        self.messages = 0
        self.payload_bytes = 0
        self.message_size = 0

    def __dealloc__(self):
        self._release()

    @property
    def max_message_size(self):
        return self._max_message_size

    @max_message_size.setter
    def max_message_size(self, value):
        if not 0 <= value < 1 << 63:
            raise ValueError("max_message_size must be >= 0 and < 2**63 (0: no limit)")
        self._max_message_size = value

    cdef void _release(self) noexcept:
        if self._has_buf:
            self._has_buf = False
            self._data = NULL
            PyBuffer_Release(&self._buf)

    def release(self):
        """Drop the buffer export taken by ``feed`` (idempotent)."""
        self._release()

    @property
    def in_message(self):
        """A fragmented data message is open: only its continuations (and control frames) may come."""
        return self._in_message

    @property
    def frame_remaining(self):
        """Payload bytes still to come of the data frame in progress (0 at a frame boundary)."""
        if self._state == READ_PAYLOAD:
            return self.frame_length - self._f_done
        return 0

    def feed(self, buffer, Py_ssize_t start=0, Py_ssize_t end=-1):
        """Hand the parser ``buffer[start:end]`` (end=-1: to the end)."""
        self._feed(buffer, start, end)

    cdef int _feed(self, object buffer, Py_ssize_t start, Py_ssize_t end) except -1:
        # Also the C-level entry point of the compiled relay (fastws/_relay.pyx).
        cdef Py_buffer view
        cdef bint writable = True
        # bytes are the common read-only case: skip the failing writable request.
        if type(buffer) is bytes:
            writable = False
            _get_buffer(buffer, &view, False)
        else:
            try:
                _get_buffer(buffer, &view, True)
            except BufferError:
                writable = False
                _get_buffer(buffer, &view, False)
        if end < 0:
            end = view.len
        if not (0 <= start <= end <= view.len):
            PyBuffer_Release(&view)
            raise ValueError("start/end out of range")
        self._release()
        self._buf = view
        self._has_buf = True
        self._writable = writable
        self._data = <unsigned char*>view.buf
        self.offset = start
        self.end = end
        self.frame_start_valid = False      # frame_start points into the previous buffer
        return 0

    def payload(self):
        """A copy of the current event's payload, unmasked (the chunk for EV_DATA)."""
        if self.opcode >= OP_CLOSE:
            return PyBytes_FromStringAndSize(<char*>self._ctrl, self._ctrl_len)
        if not self._has_buf:
            raise BufferError("the fed buffer was released; copy the chunk before EV_NONE")
        return PyBytes_FromStringAndSize(<char*>self._data + self.payload_start,
                                         self.payload_end - self.payload_start)

    def scan(self):
        """Walk frames to the end of the fed region; stop after each control frame."""
        return self._parse(False)

    def next_event(self):
        """Parse one event; payload is unmasked in place."""
        return self._parse(True)

    cdef int _fail(self, object cls, object message) except -1:
        self.failed = True
        self._release()
        raise cls(message)

    cdef int _parse(self, bint inspect) except -1:
        # One loop for both modes: scan() goes round it once per data frame without
        # touching a Python object; next_event() returns at the first event.
        cdef unsigned char* data = self._data
        cdef Py_ssize_t pos = self.offset
        cdef Py_ssize_t end = self.end
        cdef Py_ssize_t avail, hlen, take
        cdef uint64_t length, remaining, so_far
        cdef unsigned char b0, b1
        cdef int opcode, len7
        cdef bint fin, masked, control
        cdef int rsv

        if not self._has_buf:
            return EV_NONE_
        if self.failed or self.closed:
            self.offset = end           # RFC 6455 sections 7.1.7 and 5.5.1: discard
            self._release()
            return EV_NONE_

        while True:
            if self._state == READ_HEADER:
                avail = end - pos
                if avail < 2:
                    break
                b0 = data[pos]
                b1 = data[pos + 1]
                fin = (b0 & 0x80) != 0
                rsv = b0 & 0x70
                opcode = b0 & 0x0F
                masked = (b1 & 0x80) != 0
                len7 = b1 & 0x7F
                control = opcode >= OP_CLOSE

                # Checks that need only two bytes: fail as early as possible.
                if rsv:
                    if (rsv & 0x30) or not self.allow_rsv1:
                        return self._fail(ProtocolError, MSG_RSV)
                if (OP_BINARY < opcode < OP_CLOSE) or opcode > OP_PONG:
                    return self._fail(ProtocolError, MSG_OPCODE.format(opcode))
                if rsv and (control or opcode == OP_CONT):
                    return self._fail(ProtocolError, MSG_RSV1_CONTROL)
                if control:
                    if not fin:
                        return self._fail(ProtocolError, MSG_CONTROL_FRAGMENTED)
                    if len7 > MAX_CONTROL_PAYLOAD:
                        return self._fail(ProtocolError, MSG_CONTROL_TOO_LONG)
                if masked != self.mask_required:
                    return self._fail(ProtocolError, MSG_UNMASKED if self.mask_required else MSG_MASKED)
                if opcode == OP_CONT:
                    if not self._in_message:
                        return self._fail(ProtocolError, MSG_CONT_NO_MESSAGE)
                elif not control and self._in_message:
                    return self._fail(ProtocolError, MSG_DATA_IN_MESSAGE)

                if len7 < 126:
                    length = len7
                    hlen = 2
                elif len7 == 126:
                    if avail < 4:
                        break
                    length = (<uint64_t>data[pos + 2] << 8) | data[pos + 3]
                    if length < 126:
                        return self._fail(ProtocolError, MSG_NON_MINIMAL)
                    hlen = 4
                else:
                    if avail < 10:
                        break
                    length = _load_be64(data + pos + 2)
                    if length >> 63:
                        return self._fail(ProtocolError, MSG_LENGTH_MSB)
                    if length < 0x10000:
                        return self._fail(ProtocolError, MSG_NON_MINIMAL)
                    hlen = 10
                # Judge the limit from the header, before any payload is buffered.  A
                # continuation adds to the message so far, a new message starts at 0;
                # subtract rather than add so a 2^63 length cannot overflow, and check
                # the order first (the limit may have been lowered mid-message).
                if not control and self._max_message_size:
                    so_far = self.message_size if opcode == OP_CONT else 0
                    if (so_far > <uint64_t>self._max_message_size
                            or length > <uint64_t>self._max_message_size - so_far):
                        return self._fail(PayloadTooBig, MSG_TOO_BIG.format(
                            so_far + length, self._max_message_size))
                if masked:
                    hlen += 4
                if avail < hlen:
                    break
                if control and <uint64_t>avail < hlen + length:
                    break           # control frames are consumed whole

                self.frame_start = pos
                self.frame_start_valid = True
                self.opcode = opcode
                self.fin = fin
                self.rsv1 = rsv != 0
                self.frame_length = length
                self._f_masked = masked
                if masked:
                    _fill_key(self._f_key, data + pos + hlen - 4)
                if control:
                    self.offset = pos
                    return self._read_control(pos + hlen, inspect)

                if opcode != OP_CONT:
                    self._in_message = True
                    self.message_opcode = opcode
                    self.message_size = 0
                    _utf8_reset(&self._utf8)
                pos += hlen
                self.offset = pos
                self._f_done = 0
                self._state = READ_PAYLOAD
                if length != 0 and pos == end:
                    break

            # READ_PAYLOAD: take what is there of the current data frame.
            remaining = self.frame_length - self._f_done
            take = end - pos
            if <uint64_t>take > remaining:
                take = <Py_ssize_t>remaining
            if take == 0 and remaining != 0:
                break
            if self._f_masked and inspect:
                if not self._writable:
                    raise BufferError(MSG_READONLY)
                _xor_mask(data + pos, data + pos, take, self._f_key, self._f_done & 3)
            if self.message_opcode == OP_TEXT and self.validate_utf8:
                if self._f_masked and not inspect:
                    ok = _utf8_feed(&self._utf8, data + pos, take, self._f_key, self._f_done & 3)
                else:
                    ok = _utf8_feed(&self._utf8, data + pos, take, _ZERO_KEY, 0)
                if not ok:
                    self.offset = pos
                    return self._fail(InvalidPayloadData, MSG_TEXT_UTF8)
            self._f_done += take
            self.payload_bytes += take
            self.message_size += take
            self.payload_start = pos
            pos += take
            self.payload_end = pos
            self.offset = pos
            self.frame_finished = self._f_done == self.frame_length
            self.message_finished = self.frame_finished and self.fin
            if self.frame_finished:
                self._state = READ_HEADER
                self.frames += 1
                if self.fin:
                    if (self.message_opcode == OP_TEXT and self.validate_utf8
                            and self._utf8.need != 0):
                        return self._fail(InvalidPayloadData, MSG_TEXT_UTF8)
                    self._in_message = False
                    self.messages += 1
            if inspect:
                return EV_DATA_

        self.offset = pos
        self._release()
        return EV_NONE_

    cdef int _read_control(self, Py_ssize_t start, bint inspect) except -1:
        cdef Py_ssize_t n = <Py_ssize_t>self.frame_length
        cdef unsigned char* p = self._data + start
        cdef int code = 0
        if self._f_masked:
            if inspect:
                if not self._writable:
                    raise BufferError(MSG_READONLY)
                _xor_mask(p, p, n, self._f_key, 0)
                memcpy(self._ctrl, p, n)
            else:
                _xor_mask(self._ctrl, p, n, self._f_key, 0)
        else:
            memcpy(self._ctrl, p, n)
        self._ctrl_len = n
        if self.opcode == OP_CLOSE:
            try:
                self.close_reason = _parse_close(self._ctrl, n, self.validate_utf8, &code)
            except ProtocolError as exc:
                self.failed = True
                self._release()
                raise
            self.close_code = code
        self.payload_start = start
        self.payload_end = start + n
        self.frame_finished = True
        self.message_finished = False
        self.offset = start + n
        self.frames += 1
        if self.opcode == OP_CLOSE:
            self.closed = True
            return EV_CLOSE_
        return EV_PING_ if self.opcode == OP_PING else EV_PONG_


# -- Writer --------------------------------------------------------------------------------

cdef inline Py_ssize_t _header_size(uint64_t length, bint mask) noexcept nogil:
    cdef Py_ssize_t n = 2 if length < 126 else (4 if length < 0x10000 else 10)
    return n + 4 if mask else n


cdef inline Py_ssize_t _write_header(unsigned char* out, int opcode, uint64_t length, bint fin,
                                     bint rsv1, const unsigned char* key4) noexcept nogil:
    """Write a header into ``out`` (14 bytes room); key4 NULL for no mask; returns its size."""
    cdef Py_ssize_t n
    cdef int i
    cdef unsigned char maskbit = 0x80 if key4 != NULL else 0
    out[0] = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if length < 126:
        out[1] = maskbit | <unsigned char>length
        n = 2
    elif length < 0x10000:
        out[1] = maskbit | 126
        out[2] = <unsigned char>(length >> 8)
        out[3] = <unsigned char>length
        n = 4
    else:
        out[1] = maskbit | 127
        for i in range(8):
            out[2 + i] = <unsigned char>(length >> (56 - 8 * i))
        n = 10
    if key4 != NULL:
        memcpy(out + n, key4, 4)
        n += 4
    return n


cdef int _check_frame(int opcode, uint64_t length, bint fin) except -1:
    if (OP_BINARY < opcode < OP_CLOSE) or opcode > OP_PONG or opcode < 0:
        raise ValueError(f"unknown opcode {opcode:#x}")
    if opcode >= OP_CLOSE and (length > MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError("control frames carry at most 125 bytes and cannot be fragmented")
    if length >> 63:
        raise ValueError("payload length out of range")
    return 0


cdef class FrameWriter:
    """Builds frames: masked towards a server (``mask=True``), plain towards a client."""

    def __init__(self, *, mask):
        self.mask = bool(mask)
        self._keys = b""
        self._key_pos = 0

    cdef int _next_key(self, unsigned char* out) except -1:
        # os.urandom per frame is a system call: draw KEY_BLOCK bytes at a time.
        if self._key_pos + 4 > len(self._keys):
            self._keys = os.urandom(KEY_BLOCK)
            self._key_pos = 0
        memcpy(out, PyBytes_AS_STRING(self._keys) + self._key_pos, 4)
        self._key_pos += 4
        return 0

    def new_mask_key(self):
        """4 unpredictable bytes."""
        cdef unsigned char key[4]
        self._next_key(key)
        return PyBytes_FromStringAndSize(<char*>key, 4)

    def header(self, int opcode, length, fin=True, rsv1=False, mask_key=None):
        """Only the header of a frame of ``length`` payload bytes."""
        cdef unsigned char out[14]
        cdef unsigned char key12[12]
        cdef Py_ssize_t n
        # The checks of _check_frame, in the same order, on a Python int: a length
        # of 2**64 is a ValueError here too, not an OverflowError.
        if (OP_BINARY < opcode < OP_CLOSE) or opcode > OP_PONG or opcode < 0:
            raise ValueError(f"unknown opcode {opcode:#x}")
        if opcode >= OP_CLOSE and (length > MAX_CONTROL_PAYLOAD or not fin):
            raise ValueError("control frames carry at most 125 bytes and cannot be fragmented")
        if length < 0 or length >> 63:
            raise ValueError("payload length out of range")
        if self.mask != (mask_key is not None):
            raise ValueError("mask_key is required when masking and refused otherwise")
        if self.mask:
            _check_key(mask_key, key12)
        n = _write_header(out, opcode, length, fin, rsv1, key12 if self.mask else NULL)
        return PyBytes_FromStringAndSize(<char*>out, n)

    def frame(self, int opcode, payload=b"", fin=True, rsv1=False):
        """One whole frame, masked with a fresh random key when ``mask``."""
        cdef Py_buffer view
        cdef unsigned char key12[12]
        cdef unsigned char* out
        cdef Py_ssize_t n, hlen
        _get_buffer(payload, &view, False)
        try:
            _check_frame(opcode, view.len, fin)
            if self.mask:
                self._next_key(key12)
                _fill_key(key12, key12)
            hlen = _header_size(view.len, self.mask)
            result = PyBytes_FromStringAndSize(NULL, hlen + view.len)
            out = <unsigned char*>PyBytes_AS_STRING(result)
            _write_header(out, opcode, view.len, fin, rsv1, key12 if self.mask else NULL)
            if self.mask:
                _xor_mask(out + hlen, <const unsigned char*>view.buf, view.len, key12, 0)
            else:
                memcpy(out + hlen, view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return result

    def close_frame(self, code=1000, reason=""):
        """A close frame; code None gives an empty payload."""
        return self.frame(OP_CLOSE, build_close_payload(code, reason))
