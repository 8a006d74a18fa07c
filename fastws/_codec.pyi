"""Type stubs and the contract of the frame codec.

Both ``fastws._codec`` (Cython) and ``fastws._codec_py`` (pure Python) implement
exactly this API with the same error classes and messages; ``fastws.codec``
picks one.  The codec knows nothing of sockets or asyncio: it walks a buffer the
caller owns and reports byte offsets into it.

Usage, passthrough (scan mode) -- one Python call per read, none per data frame::

    parser.feed(buf, 0, n)
    start = 0
    while True:
        event = parser.scan()            # walks every complete data frame
        forward(buf[start:parser.offset])  # original bytes, masks and all
        start = parser.offset
        if event == EV_NONE:
            break                        # keep buf[parser.offset:n] for the next read
        handle_control(event, parser.payload())

Usage, inspect (event mode)::

    parser.feed(buf, 0, n)
    while (event := parser.next_event()) != EV_NONE:
        chunk = memoryview(buf)[parser.payload_start:parser.payload_end]   # unmasked in place
        ...

Buffers: ``feed`` takes any C-contiguous bytes-like object.  ``next_event``
unmasks in place, so masked input needs a writable buffer (bytearray,
memoryview of one); ``scan`` only reads.  The parser holds a buffer export from
``feed`` until ``release()``, the next ``feed``, or the end of the fed region
is reached; a bytearray cannot be resized while it is held.

Offsets: ``offset`` is the absolute position in the fed buffer up to which
input has been consumed.  A frame header is consumed only when complete and
valid; a control frame only when the whole frame is there; data payload as it
arrives.  Bytes before ``offset`` are valid protocol bytes; bytes from
``offset`` on must be kept and fed again (with more data behind them).
When a method raises ``ProtocolError``, ``offset`` still tells how far the
input was valid, and the parser is failed: later calls discard input.
After a close frame the parser is closed: later input is discarded (RFC 6455
§5.5.1: nothing may follow a close frame), ``offset`` moves to the end.
"""

from typing import Final

from .errors import ProtocolError as ProtocolError

EV_NONE: Final[int]    # = 0: the fed region holds no further complete event
EV_DATA: Final[int]    # = 1: a chunk of a data frame's payload (next_event only)
EV_PING: Final[int]    # = 2: a complete ping frame
EV_PONG: Final[int]    # = 3: a complete pong frame
EV_CLOSE: Final[int]   # = 4: a complete, valid close frame

MAX_HEADER_SIZE: Final[int]  # = 14
IMPLEMENTATION: Final[str]   # "cython" or "python"

class FrameParser:
    """Incremental RFC 6455 frame parser for one direction of one connection."""

    mask_required: bool        # readonly. True: frames from a client (must be masked);
                               # False: frames from a server (must not be masked)
    max_message_size: int      # writable. limit of a data message's payload, summed over
                               # its fragments; 0 = no limit. Judged from each frame
                               # header before its payload is read.
    validate_utf8: bool        # writable. check text messages and close reasons, fail-fast
    allow_rsv1: bool           # writable. RSV1 allowed (an extension such as
                               # permessage-deflate was negotiated); RSV2/RSV3 never are

    # Position and state
    offset: int                # readonly, see module docstring
    end: int                   # readonly, end of the fed region
    closed: bool               # readonly, a close frame was received
    failed: bool               # readonly, a ProtocolError was raised

    # The current frame / event (valid after scan() or next_event() returned != EV_NONE;
    # opcode..frame_length also describe the frame in progress after EV_NONE)
    frame_start: int           # readonly, offset in the fed buffer where the current frame's
                               # header began (for a control event: its whole frame is
                               # buffer[frame_start:offset])
    frame_start_valid: bool    # readonly, the current frame's header was parsed from the buffer
                               # of the latest feed(), so frame_start points into it
    in_message: bool           # readonly, a data message is open (more fragments to come)
    frame_remaining: int       # readonly, payload bytes still to come of the data frame in
                               # progress; 0 at a frame boundary
    opcode: int                # the frame's own opcode (0 for a continuation)
    message_opcode: int        # TEXT or BINARY: the opcode of the data message in progress
                               # (valid for EV_DATA, also for continuation frames)
    fin: bool
    rsv1: bool
    frame_length: int          # payload length of the current frame
    payload_start: int         # event payload region in the fed buffer: for EV_DATA the
    payload_end: int           # chunk (unmasked in place by next_event); for control frames
                               # the whole payload (after next_event unmasked; after scan
                               # still masked as on the wire -- use payload())
    frame_finished: bool       # EV_DATA: this chunk ends its frame
    message_finished: bool     # EV_DATA: this chunk ends its message (fin frame, last chunk)
    close_code: int            # EV_CLOSE: the code, 1005 when the close frame had no payload
    close_reason: str          # EV_CLOSE: the reason, "" when none

    # Counters since construction (completed units only)
    frames: int                # frames of any kind
    messages: int              # data messages
    payload_bytes: int         # payload bytes of data frames consumed
    message_size: int          # payload bytes so far of the data message in progress

    def __init__(
        self,
        *,
        mask_required: bool,
        max_message_size: int = 0,
        validate_utf8: bool = True,
        allow_rsv1: bool = False,
    ) -> None: ...
    def feed(self, buffer: object, start: int = 0, end: int = -1) -> None:
        """Hand the parser ``buffer[start:end]`` (end=-1: to the end) to parse.

        Raises:
            ValueError: start/end out of range.
        """
    def release(self) -> None:
        """Drop the buffer export taken by ``feed`` (idempotent)."""
    def scan(self) -> int:
        """Walk frames from ``offset`` to the end of the fed region.

        Data frames are consumed without any Python-level work (counted, limits
        checked, UTF-8 checked if on, payload left masked as it came).  Stops
        after a complete control frame and returns EV_PING, EV_PONG or EV_CLOSE,
        or returns EV_NONE when the region is used up.  Never returns EV_DATA.

        Raises:
            ProtocolError: with the close code to send (1002, 1007 or 1009).
        """
    def next_event(self) -> int:
        """Parse one event from ``offset``: EV_DATA, EV_PING, EV_PONG, EV_CLOSE, or
        EV_NONE when nothing more can be had from the fed region.

        A data frame's payload is reported as it arrives, possibly in several
        EV_DATA chunks; an empty data frame is one EV_DATA with an empty chunk.
        Payload is unmasked in place.

        Raises:
            ProtocolError: with the close code to send (1002, 1007 or 1009).
            BufferError: masked input fed in a read-only buffer.
        """
    def payload(self) -> bytes:
        """A copy of the current event's payload, unmasked (the chunk for EV_DATA)."""

class FrameWriter:
    """Builds frames for one direction: masked towards a server, plain towards a client."""

    mask: bool                 # readonly
    def __init__(self, *, mask: bool) -> None: ...
    def frame(self, opcode: int, payload: bytes | bytearray | memoryview = b"",
              fin: bool = True, rsv1: bool = False) -> bytes:
        """One whole frame, masked with a fresh random key when ``mask``.

        Raises:
            ValueError: a control opcode with a payload over 125 bytes or fin=False,
                or an opcode that is not defined.
        """
    def header(self, opcode: int, length: int, fin: bool = True, rsv1: bool = False,
               mask_key: bytes | None = None) -> bytes:
        """Only the header of a frame of ``length`` payload bytes.  When ``mask`` is
        on, ``mask_key`` (4 bytes) must be given and the caller masks the payload
        itself with ``mask_inplace``; when off it must be None."""
    def close_frame(self, code: int | None = 1000, reason: str | bytes = "") -> bytes:
        """A close frame; code None gives an empty payload (no code)."""
    def new_mask_key(self) -> bytes:
        """4 unpredictable bytes (os.urandom, drawn in blocks)."""

def apply_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """A masked (or unmasked) copy of ``data`` with the 4-byte ``key``."""
def mask_inplace(buffer: bytearray | memoryview, key: bytes, start: int = 0, end: int = -1,
                 phase: int = 0) -> None:
    """XOR ``buffer[start:end]`` with ``key`` in place; ``phase`` (0..3) is the
    position in the key of the first byte, for payloads masked piecewise."""
def validate_utf8(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is complete, valid UTF-8 (RFC 3629: no overlongs, no surrogates)."""
def build_close_payload(code: int | None = 1000, reason: str | bytes = "") -> bytes:
    """The payload of a close frame.

    Raises:
        ValueError: a code that may not be sent, or a payload over 125 bytes.
    """
def parse_close_payload(payload: bytes | bytearray | memoryview) -> tuple[int, str]:
    """(code, reason) of a close frame's payload; (1005, "") for an empty one.

    Raises:
        ProtocolError: a 1-byte payload or a code that may not be sent (1002).
        InvalidPayloadData: a reason that is not UTF-8 (1007).
    """
