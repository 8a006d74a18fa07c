# cython: language_level=3
"""The compiled per-read path of the relay: read buffer and passthrough fast path.

A read in passthrough is the whole cost of a proxied message, so this one path
is compiled: uvloop calls ``get_buffer``/``buffer_updated`` here, the codec's
scan runs through a C call (no Python frame), and the forwarded bytes go to
the peer transport as a view of this same buffer.  Anything that is not plain
forwarding -- a control frame, a protocol error, a close, inspect mode -- is
handed to the Python session (``fastws.session``) through the link.

``fastws.proxy._PyEndpointBase`` is the pure-Python twin, used when the
extension is not built; the two must stay in step.
"""

from fastws._codec cimport EV_NONE_, FrameParser

from .errors import ProtocolError

cdef Py_ssize_t READ_BUFFER_SIZE = 64 * 1024     # initial read buffer per side
cdef Py_ssize_t MIN_READ_SPACE = 16 * 1024       # grow when less than this is free


cdef class Endpoint:
    """One side's read buffer; the base of ``proxy._Endpoint`` when compiled."""

    cdef public object link
    cdef public object transport
    cdef public bytearray buf
    cdef public object view             # memoryview of buf, kept for cheap slicing
    cdef public Py_ssize_t len          # bytes held in buf
    cdef public bint relaying
    cdef public bint closed
    cdef public bint paused_by_peer
    cdef public object peer             # the other side's endpoint
    # Set by the link while relaying (see _Link._update_fast_path):
    cdef public bint fast               # the next read may take the fast path
    cdef public FrameParser parser      # the session's parser for frames from this side
    cdef public object session
    cdef public object peer_write       # peer.transport.write
    cdef public object peer_buffered    # peer.transport.get_write_buffer_size
    cdef public object clock            # loop.time, when the session tracks activity

    def __init__(self, link):
        self.link = link
        self.transport = None
        self.buf = bytearray(READ_BUFFER_SIZE)
        self.view = memoryview(self.buf)
        self.len = 0
        self.relaying = False
        self.closed = False
        self.paused_by_peer = False
        self.peer = None
        self.fast = False

    def get_buffer(self, Py_ssize_t sizehint):
        if self.len == 0:
            # The usual case in passthrough: no slice to make.  A memoryview, not the
            # bytearray: asyncio's SSL transport slices what it is given, and a slice of
            # a bytearray is a copy.
            return self.view
        if len(self.buf) - self.len < MIN_READ_SPACE:
            self._replace_buffer(max(2 * len(self.buf), self.len + MIN_READ_SPACE), self.len)
        return self.view[self.len:]

    cpdef _replace_buffer(self, Py_ssize_t size, Py_ssize_t keep_from):
        """Move ``buf[keep_from:len]`` to the start of a new buffer of ``size`` bytes."""
        cdef Py_ssize_t rest = self.len - keep_from
        new = bytearray(max(size, READ_BUFFER_SIZE))
        new[:rest] = self.view[keep_from:self.len]
        self.buf = new
        self.view = memoryview(new)
        self.len = rest

    cpdef _consumed(self, Py_ssize_t consumed, bint lent):
        """Drop ``buf[:consumed]``; ``lent``: the peer transport still holds views of it."""
        cdef Py_ssize_t rest
        if consumed == 0:
            return
        if lent:
            # uvloop and asyncio keep a view they could not write at once: leave them
            # this buffer and go on in a fresh one.
            self._replace_buffer(len(self.buf) if len(self.buf) <= 4 * READ_BUFFER_SIZE
                                 else READ_BUFFER_SIZE, consumed)
            return
        rest = self.len - consumed
        if rest:
            self.buf[:rest] = self.view[consumed:self.len]
        self.len = rest
        if len(self.buf) > 4 * READ_BUFFER_SIZE and rest < READ_BUFFER_SIZE:
            self._replace_buffer(READ_BUFFER_SIZE, 0)    # shrink back after a large frame

    def buffer_updated(self, Py_ssize_t nbytes):
        self.len += nbytes
        if not self.relaying:
            self.before_relay(nbytes)
        elif self.fast:
            self._fast_relay()
        else:
            self.link.relay(self)

    def before_relay(self, nbytes):
        """Bytes before the session exists (handshake); subclasses decide."""

    cdef int _fast_relay(self) except -1:
        cdef FrameParser parser = self.parser
        cdef int event
        cdef Py_ssize_t offset
        parser._feed(self.view, 0, self.len)
        try:
            event = parser._parse(False)
        except ProtocolError as exc:
            self.link.relay_scanned(self, EV_NONE_, exc)
            return 0
        if event != EV_NONE_:
            self.link.relay_scanned(self, event, None)     # a control frame: the session decides
            return 0
        offset = parser.offset
        if offset:
            self.peer_write(self.view[:offset])
            self._consumed(offset, self.peer_buffered() > 0)
        if self.clock is not None:
            self.session.last_activity = self.clock()
        return 0
