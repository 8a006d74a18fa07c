# Declarations of the frame codec's hot path: every per-frame field and method.
# The contract (semantics, offsets, errors) is in _codec.pyi; _codec_py.py is the
# readable reference with the same behaviour.

from cpython.buffer cimport Py_buffer
from libc.stdint cimport int64_t, uint8_t, uint64_t


cdef enum ParserState:
    READ_HEADER = 0     # at a frame boundary: the next byte starts a header
    READ_PAYLOAD = 1    # inside a data frame's payload (control frames are taken whole)


cdef enum Event:
    EV_NONE_ = 0
    EV_DATA_ = 1
    EV_PING_ = 2
    EV_PONG_ = 3
    EV_CLOSE_ = 4


# Incremental UTF-8 validator state (RFC 3629 table 4): continuation bytes still
# needed, and the range the next byte must fall in.
cdef struct Utf8State:
    uint8_t need
    uint8_t lo
    uint8_t hi


cdef class FrameParser:
    # The fed buffer: held from feed() until EV_NONE, release() or the next feed().
    cdef Py_buffer _buf
    cdef bint _has_buf
    cdef bint _writable
    cdef unsigned char* _data

    cdef readonly Py_ssize_t offset
    cdef readonly Py_ssize_t end
    cdef readonly bint mask_required
    cdef public bint validate_utf8
    cdef public bint allow_rsv1
    cdef int64_t _max_message_size      # 0: no limit
    cdef readonly bint closed
    cdef readonly bint failed

    cdef ParserState _state
    cdef bint _in_message
    cdef Utf8State _utf8

    # The frame in progress (_f_ prefix as in picows)
    cdef unsigned char _f_key[12]       # mask key repeated 3 times: any phase has 8 bytes ahead
    cdef bint _f_masked
    cdef uint64_t _f_done               # payload bytes of this frame consumed so far

    cdef readonly Py_ssize_t frame_start  # where the current frame's header began in the fed buffer
    cdef readonly bint frame_start_valid  # that header was parsed from the current feed's buffer
    cdef readonly int opcode
    cdef readonly int message_opcode
    cdef readonly bint fin
    cdef readonly bint rsv1
    cdef readonly uint64_t frame_length
    cdef readonly Py_ssize_t payload_start
    cdef readonly Py_ssize_t payload_end
    cdef readonly bint frame_finished
    cdef readonly bint message_finished
    cdef readonly int close_code
    cdef readonly object close_reason

    # A control frame's payload, unmasked: scan() leaves the wire bytes alone.
    cdef unsigned char _ctrl[125]
    cdef Py_ssize_t _ctrl_len

    cdef readonly uint64_t frames
    cdef readonly uint64_t messages
    cdef readonly uint64_t payload_bytes
    cdef readonly uint64_t message_size

    cdef int _feed(self, object buffer, Py_ssize_t start, Py_ssize_t end) except -1
    cdef int _parse(self, bint inspect) except -1
    cdef int _read_control(self, Py_ssize_t start, bint inspect) except -1
    cdef int _fail(self, object cls, object message) except -1
    cdef void _release(self) noexcept


cdef class FrameWriter:
    cdef readonly bint mask
    cdef bytes _keys                    # os.urandom drawn in blocks
    cdef Py_ssize_t _key_pos

    cdef int _next_key(self, unsigned char* out) except -1
