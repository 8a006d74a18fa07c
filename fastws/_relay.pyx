# cython: language_level=3
"""The compiled per-read path of the relay: read buffers and passthrough fast path.

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

from cpython.bytearray cimport PyByteArray_FromStringAndSize

cdef Py_ssize_t READ_BUFFER_SIZE = 64 * 1024     # the shared read buffer, and a private one's floor
cdef Py_ssize_t MIN_READ_SPACE = 16 * 1024       # grow a private buffer when less is free
cdef Py_ssize_t SMALL_BUFFER_SIZE = 4 * 1024


cdef bytearray _new_bytearray(Py_ssize_t size):
    # Not zero-filled: every byte is written by a read before it is looked at.
    return PyByteArray_FromStringAndSize(NULL, size)


cdef class ReadBuffer:
    """The read buffer shared by every connection of one event loop.

    A connection reads into it whenever it holds no bytes of its own (the usual case
    in passthrough, where a read is forwarded whole), so an idle connection costs no
    buffer at all.  Per loop, never per process: the read itself runs without the GIL.
    """

    cdef public bytearray buf
    cdef public object view

    def __init__(self):
        self.renew()

    cpdef renew(self):
        """Start a fresh buffer: a transport kept views of the current one."""
        self.buf = _new_bytearray(READ_BUFFER_SIZE)
        self.view = memoryview(self.buf)


cdef class Endpoint:
    """One side's read buffer; the base of ``proxy._Endpoint`` when compiled."""

    cdef public object link
    cdef public object transport
    cdef public object buf              # bytearray holding buf[0:len], or None when empty
    cdef public object view             # memoryview of buf, kept for cheap slicing
    cdef public Py_ssize_t len          # bytes held
    cdef public bint shared             # the bytes being read are in the loop's shared buffer
    cdef public ReadBuffer read_buffer  # the loop's shared buffer
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
        self.buf = None
        self.view = None
        self.len = 0
        self.shared = False
        self.read_buffer = link.server.read_buffer
        self.relaying = False
        self.closed = False
        self.paused_by_peer = False
        self.peer = None
        self.fast = False

    def get_buffer(self, Py_ssize_t sizehint):
        if self.len == 0:
            # Nothing held: read into the loop's shared buffer.  A memoryview, not the
            # bytearray: asyncio's SSL transport slices what it is given, and a slice
            # of a bytearray is a copy.
            self.shared = True
            return self.read_buffer.view
        if len(self.buf) - self.len < MIN_READ_SPACE:
            self._replace_buffer(max(2 * len(self.buf), self.len + MIN_READ_SPACE), self.len)
        return self.view[self.len:]

    cpdef _replace_buffer(self, Py_ssize_t size, Py_ssize_t keep_from):
        """Move ``buf[keep_from:len]`` to the start of a new private buffer of ``size`` bytes."""
        cdef Py_ssize_t rest = self.len - keep_from
        new = _new_bytearray(max(size, SMALL_BUFFER_SIZE))
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
            if self.shared:
                self.read_buffer.renew()
                self.shared = False
            self._replace_buffer(max(self.len - consumed, SMALL_BUFFER_SIZE) if self.len > consumed
                                 else SMALL_BUFFER_SIZE, consumed)
            return
        rest = self.len - consumed
        if rest:
            self.buf[:rest] = self.view[consumed:self.len]
        self.len = rest

    cdef int _settle(self) except -1:
        """After a read: keep held bytes in a private buffer, or hold no buffer at all."""
        if self.shared:
            self.shared = False
            if self.len:
                self._replace_buffer(max(2 * self.len, READ_BUFFER_SIZE), 0)
            else:
                self.buf = self.view = None
        elif self.len == 0 and self.buf is not None:
            self.buf = self.view = None     # drained: an idle connection holds nothing
        return 0

    def buffer_updated(self, Py_ssize_t nbytes):
        if self.shared:
            self.buf = self.read_buffer.buf
            self.view = self.read_buffer.view
            self.len = nbytes
        else:
            self.len += nbytes
        if not self.relaying:
            self.before_relay(nbytes)
        elif self.fast:
            self._fast_relay()
        else:
            self.link.relay(self)
        self._settle()

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
            if self.clock is not None:      # idle_timeout counts relayed traffic only
                self.session.last_activity = self.clock()
        return 0
