"""asyncio glue: sockets, the upstream connection, backpressure and timers.

All I/O of a proxied connection lives here; the decisions live in the sans-I/O
``handshake`` and ``session`` modules.  Both sides are ``BufferedProtocol``s
reading into a per-connection ``bytearray`` (uvloop reads straight into it), so
in passthrough a read costs one ``Session.receive`` call, one codec ``scan()``
and one ``transport.write`` of a view of that same buffer.

Read buffers: a connection that holds no bytes between reads (the usual case in
passthrough) reads into one buffer shared by all connections of the loop, so an
idle connection holds no buffer; bytes that must wait for more (a partial
header) move to a small private buffer.  uvloop and asyncio keep a reference to
a buffer they could not write at once: after writing views of a read buffer,
an endpoint whose peer transport still holds data (``get_write_buffer_size() >
0``) gives that buffer away and continues in a fresh one, so bytes still queued
are never overwritten.

Backpressure: when a side's write buffer passes its high-water mark, its
transport calls ``pause_writing`` and the proxy stops reading the other side;
``resume_writing`` (below low water) starts it again.  Memory per connection is
then bounded by the read buffer plus the write buffer limits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from typing import Any, Callable

from . import codec
from . import handshake as hs
from .frames import CloseCode
from .pdk import Rejected, WebSocket
from .session import Session, Side

__all__ = ["ProxyServer", "ConnectionStats"]

log = logging.getLogger("fastws.proxy")

READ_BUFFER_SIZE = 64 * 1024        # the shared read buffer, and a private one's floor
MIN_READ_SPACE = 16 * 1024          # grow a private buffer when less than this is free
SMALL_BUFFER_SIZE = 4 * 1024


class ConnectionStats:
    """What the access log and ``ws_close`` see of a connection (SPEC section 7)."""

    __slots__ = (
        "client", "route", "service", "upstream", "path", "status", "started", "ended",
        "client_messages", "client_bytes", "upstream_messages", "upstream_bytes",
        "client_close_code", "upstream_close_code", "closed_by", "cause",
    )

    def __init__(self, client: str) -> None:
        self.client = client
        self.route = self.service = self.upstream = self.path = None
        self.status = 0
        self.started = time.time()
        self.ended: float | None = None
        self.client_messages = self.client_bytes = 0
        self.upstream_messages = self.upstream_bytes = 0
        self.client_close_code: int | None = None    # the close code the client sent
        self.upstream_close_code: int | None = None  # the close code the upstream sent
        self.closed_by: str | None = None
        self.cause: str | None = None

    @property
    def duration(self) -> float:
        return (self.ended or time.time()) - self.started

    def as_dict(self) -> dict:
        return {
            "client": self.client, "route": self.route, "service": self.service,
            "upstream": self.upstream, "path": self.path, "status": self.status,
            "duration": round(self.duration, 6),
            "client_messages": self.client_messages, "client_bytes": self.client_bytes,
            "upstream_messages": self.upstream_messages, "upstream_bytes": self.upstream_bytes,
            "client_close_code": self.client_close_code,
            "upstream_close_code": self.upstream_close_code,
            "closed_by": self.closed_by, "cause": self.cause,
        }

    def as_text(self) -> str:
        d = {key: "-" if value is None else value for key, value in self.as_dict().items()}
        return (
            f'{d["client"]} "{d["path"]}" {d["status"]} route={d["route"]} upstream={d["upstream"]} '
            f'duration={d["duration"]:.3f}s in={d["client_messages"]}/{d["client_bytes"]}B '
            f'out={d["upstream_messages"]}/{d["upstream_bytes"]}B '
            f'close=client:{d["client_close_code"]},upstream:{d["upstream_close_code"]} '
            f'closed_by={d["closed_by"]}' + (f' cause="{d["cause"]}"' if d["cause"] else "")
        )


class _PyReadBuffer:
    """The read buffer shared by the connections of one loop: twin of ``fastws._relay.ReadBuffer``."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        """Start a fresh buffer: a transport kept views of the current one."""
        self.buf = bytearray(READ_BUFFER_SIZE)
        self.view = memoryview(self.buf)


class _PyEndpointBase:
    """Read buffers of one side: the pure-Python twin of ``fastws._relay.Endpoint``.

    Used when the extensions are not built.  A connection reads into its loop's shared
    buffer whenever it holds no bytes of its own, and keeps a private buffer only for
    bytes it must hold between reads (a partial header, early frames during the
    handshake).  Every read goes through the Python session (``_Link.relay``); the
    compiled twin has a fast path for plain passthrough reads and otherwise does the same.
    """

    def __init__(self, link: "_Link") -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.buf: bytearray | None = None
        self.view: memoryview | None = None
        self.len = 0
        self.shared = False
        self.read_buffer = link.server.read_buffer
        self.relaying = False
        self.closed = False
        self.paused_by_peer = False
        self.peer: _Endpoint | None = None
        # The compiled twin's fast-path fields; set by the link, unused here.
        self.fast = False
        self.parser = self.session = self.peer_write = self.peer_buffered = self.clock = None

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.len == 0:
            # Nothing held: read into the loop's shared buffer.  A memoryview, not the
            # bytearray: asyncio's SSL transport slices what it is given, and a slice of
            # a bytearray is a copy.
            self.shared = True
            return self.read_buffer.view
        if len(self.buf) - self.len < MIN_READ_SPACE:
            self._replace_buffer(max(2 * len(self.buf), self.len + MIN_READ_SPACE), self.len)
        return self.view[self.len:]

    def _replace_buffer(self, size: int, keep_from: int) -> None:
        """Move ``buf[keep_from:len]`` to the start of a new private buffer of ``size`` bytes."""
        rest = self.len - keep_from
        new = bytearray(max(size, SMALL_BUFFER_SIZE))
        new[:rest] = self.view[keep_from:self.len]
        self.buf, self.view, self.len = new, memoryview(new), rest

    def _consumed(self, consumed: int, lent: bool) -> None:
        """Drop ``buf[:consumed]``; ``lent``: the peer transport still holds views of it."""
        if consumed == 0:
            return
        if lent:
            # uvloop and asyncio keep a view they could not write at once: leave them
            # this buffer and go on in a fresh one.
            if self.shared:
                self.read_buffer.renew()
                self.shared = False
            self._replace_buffer(max(self.len - consumed, SMALL_BUFFER_SIZE), consumed)
            return
        rest = self.len - consumed
        if rest:
            self.buf[:rest] = self.view[consumed:self.len]
        self.len = rest

    def _settle(self) -> None:
        """After a read: keep held bytes in a private buffer, or hold no buffer at all."""
        if self.shared:
            self.shared = False
            if self.len:
                self._replace_buffer(max(2 * self.len, READ_BUFFER_SIZE), 0)
            else:
                self.buf = self.view = None
        elif self.len == 0 and self.buf is not None:
            self.buf = self.view = None     # drained: an idle connection holds nothing

    def buffer_updated(self, nbytes: int) -> None:
        if self.shared:
            self.buf, self.view, self.len = self.read_buffer.buf, self.read_buffer.view, nbytes
        else:
            self.len += nbytes
        if self.relaying:
            self.link.relay(self)
        else:
            self.before_relay(nbytes)
        self._settle()

if codec.IMPLEMENTATION == "cython":
    try:
        from ._relay import Endpoint as _EndpointBase, ReadBuffer
    except ImportError:  # pragma: no cover - a build with the codec but not the relay
        _EndpointBase, ReadBuffer = _PyEndpointBase, _PyReadBuffer
else:
    _EndpointBase, ReadBuffer = _PyEndpointBase, _PyReadBuffer


class _Endpoint(_EndpointBase, asyncio.BufferedProtocol):
    """One side's connection; relays into the link's session once both sides are open."""

    side: Side

    def before_relay(self, nbytes: int) -> None:
        """Bytes before the session exists (handshake); subclasses decide."""

    # -- flow control ------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        limits = self.link.server.write_limits
        transport.set_write_buffer_limits(high=limits[0], low=limits[1])

    def pause_writing(self) -> None:
        self.link.pause_peer_of(self)

    def resume_writing(self) -> None:
        self.link.resume_peer_of(self)

    def write(self, chunks: list) -> None:
        if self.closed or self.transport is None:
            return
        if len(chunks) == 1:
            self.transport.write(chunks[0])
        else:
            self.transport.writelines(chunks)

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def eof_received(self) -> bool:
        self.link.eof(self)
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.link.eof(self)


class ClientEndpoint(_Endpoint):
    side = Side.CLIENT

    def __init__(self, server: "ProxyServer", listen: Any) -> None:
        super().__init__(_Link(server, self))
        self.listen = listen
        self.reader = hs.RequestReader(server.config.max_header_size, server.config.max_headers)
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        server = self.link.server
        peer = transport.get_extra_info("peername") or ("?", 0)
        sock = transport.get_extra_info("sockname") or ("?", 0)
        self.link.stats = ConnectionStats(f"{peer[0]}:{peer[1]}")
        self.link.client_addr = (peer[0], peer[1])
        self.link.server_port = sock[1]
        self.link.tls = transport.get_extra_info("sslcontext") is not None
        server.connection_opened(self.link)
        self.handshake_timer = server.loop.call_later(server.config.handshake_timeout, self._handshake_timeout)

    def before_relay(self, nbytes: int) -> None:
        if self.task is not None:
            # Request complete, waiting for the upstream: keep the bytes (early frames) and
            # keep reading, so that a client that leaves is noticed; stop only if it floods.
            if self.len >= READ_BUFFER_SIZE:
                self.transport.pause_reading()
            return
        # The reader keeps what it needs of the head; the buffer need not.
        self.len -= nbytes
        try:
            request = self.reader.feed(bytes(self.view[self.len:self.len + nbytes]))
        except hs.HandshakeError as exc:
            self.link.reject(exc)
            return
        if request is None:
            return
        # Bytes after the request are the client's first frames: keep only those.
        leftover = self.reader.leftover
        self.buf[:len(leftover)] = leftover
        self.len = len(leftover)
        self.task = self.link.server.loop.create_task(self.link.open(request))

    def _handshake_timeout(self) -> None:
        if not self.relaying and self.task is None and not self.closed:
            self.link.reject(hs.HandshakeError(408, "Request Timeout: no complete handshake in time"))

    def connection_lost(self, exc) -> None:
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
        super().connection_lost(exc)


class UpstreamEndpoint(_Endpoint):
    side = Side.UPSTREAM

    def __init__(self, link: "_Link") -> None:
        super().__init__(link)
        self.reader = hs.ResponseReader()
        self.response: asyncio.Future = link.server.loop.create_future()

    def before_relay(self, nbytes: int) -> None:
        if self.response.done():
            return
        self.len -= nbytes                # a non-101 body must not pile up here
        try:
            response = self.reader.feed(bytes(self.view[self.len:self.len + nbytes]))
        except hs.HandshakeError as exc:
            self.response.set_exception(exc)
            return
        if response is not None:
            leftover = response.leftover if response.status == 101 else b""
            self.buf[:len(leftover)] = leftover
            self.len = len(leftover)
            self.transport.pause_reading()
            self.response.set_result(response)

    def eof_received(self) -> bool:
        if not self.response.done():
            try:
                self.response.set_result(self.reader.feed_eof())
            except hs.HandshakeError as exc:
                self.response.set_exception(exc)
        return super().eof_received()

    def connection_lost(self, exc) -> None:
        if not self.response.done():
            self.response.set_exception(
                hs.HandshakeError(502, "Bad Gateway: upstream closed the connection during the handshake"))
        super().connection_lost(exc)


class _Link:
    """One proxied connection: the two endpoints, the session, timers and stats."""

    def __init__(self, server: "ProxyServer", client: ClientEndpoint) -> None:
        self.server = server
        self.loop = server.loop
        self.client = client
        self.upstream: UpstreamEndpoint | None = None
        self.session: Session | None = None
        self.stats: ConnectionStats | None = None
        self.client_addr = ("?", 0)
        self.server_port = 0
        self.tls = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_when: float | None = None
        self.finished = False
        self.chain = None                   # the route's handler chain, bound to this connection
        self.ws: WebSocket | None = None    # the PDK object plugins see
        self.waiting_tasks: dict[int, asyncio.Task] = {}
        self.wake_scheduled = False

    # -- handshake ----------------------------------------------------------------------------

    def reject(self, exc: hs.HandshakeError) -> None:
        """Answer the client with an HTTP error and close (SPEC section 3)."""
        if self.upstream is not None:
            self.upstream.close(abort=True)
        self._reply(exc.status, exc.response(), exc.reason)

    async def open(self, request) -> None:
        try:
            await self._open(request)
        except hs.HandshakeError as exc:
            self.reject(exc)
        except Exception as exc:  # never let one connection take the worker down
            log.exception("unexpected error during the handshake")
            self.reject(hs.HandshakeError(500, f"Internal Server Error: {type(exc).__name__}"))

    async def _open(self, request) -> None:
        server = self.server
        stats = self.stats
        stats.path = request.target
        # Route on the decoded path with dot segments removed, so that
        # /chat/../admin cannot ride on a /chat route; the query is kept.
        match = server.router.match(request.host, request.path + ("?" + request.query if request.query else ""))
        if match is None:
            raise hs.HandshakeError(404, "Not Found: no route matches")
        stats.route = match.route.name
        stats.service = match.service.name
        service = match.service
        # SPEC section 3: ws_handshake handlers run first (they may reject, or set
        # limits), then the upgrade itself is validated.
        request.client_address = self.client_addr
        chain = server.chain_for(match) if server.chain_for is not None else None
        if chain is not None and hasattr(chain, "bind"):
            # A plugin chain (fastws.plugins.chain.Chain): bind it to this connection's PDK.
            self.ws = WebSocket(request, self.client_addr)
            chain = chain.bind(self.ws)
            if chain.has("ws_handshake"):
                try:
                    pending = chain.run_handshake()
                    if pending is not None:
                        # An async handshake handler counts against handshake_timeout too.
                        await asyncio.wait_for(pending, server.config.handshake_timeout)
                except Rejected as rejection:
                    self._reply(rejection.status, hs.build_response(
                        rejection.status, "", rejection.headers, rejection.body), "rejected by a plugin")
                    return
                except asyncio.TimeoutError:
                    log.error("ws_handshake handlers did not finish within handshake_timeout")
                    raise hs.HandshakeError(500, "Internal Server Error") from None
                except Exception as exc:        # HandlerError: a plugin bug
                    self._handler_error(exc, "ws_handshake")
                    raise hs.HandshakeError(500, "Internal Server Error") from None
        self.chain = chain
        hs.validate_upgrade(request)

        stats.upstream = service.url
        key = hs.new_key()
        upstream = UpstreamEndpoint(self)
        self.upstream = upstream
        ssl_ctx = server.upstream_ssl(service)
        # connect_timeout bounds the whole upstream handshake: TCP and TLS connect, then
        # the upstream's answer to the upgrade request.
        deadline = self.loop.time() + service.connect_timeout
        try:
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: upstream, service.host, service.port, ssl=ssl_ctx,
                    server_hostname=service.host if ssl_ctx is not None else None,
                ),
                timeout=service.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise hs.HandshakeError(504, "Gateway Timeout: upstream connect timed out") from None
        except ssl.SSLError as exc:
            raise hs.HandshakeError(502, f"Bad Gateway: upstream TLS failed ({exc.reason or exc})") from None
        except OSError as exc:
            raise hs.HandshakeError(502, f"Bad Gateway: upstream connect failed ({exc.strerror or exc})") from None
        if self.client.closed:
            upstream.close(abort=True)
            self._finish()
            return
        upstream.transport.write(hs.build_upstream_request(
            request, host=service.host, port=service.port, path=match.upstream_path,
            scheme=service.scheme, client_ip=self.client_addr[0], client_port=self.client_addr[1],
            tls=self.tls, key=key, server_port=self.server_port,
        ))
        try:
            # On timeout wait_for cancels the future, so a later connection_lost finds it
            # done and leaves no "exception never retrieved" behind.
            response = await asyncio.wait_for(upstream.response,
                                              timeout=max(deadline - self.loop.time(), 0.0))
        except asyncio.TimeoutError:
            raise hs.HandshakeError(504, "Gateway Timeout: upstream did not answer the upgrade") from None
        if response.status != 101:
            # SPEC section 3: the upstream's status, headers and body go to the client.
            upstream.close()
            self._reply(response.status, hs.build_response(
                response.status, response.reason, response.headers, response.body), None)
            return
        try:
            hs.check_upstream_response(request, response, key)
        except hs.UpstreamHandshakeError as exc:
            if exc.close_upstream_code is not None:
                from .codec import FrameWriter
                upstream.transport.write(FrameWriter(mask=True).close_frame(exc.close_upstream_code))
            upstream.close()
            raise
        self._start_relay(request, response)

    def _reply(self, status: int, response: bytes, cause: str | None) -> None:
        """Answer the client with a whole HTTP response and close (no WebSocket)."""
        if self.stats is not None:
            self.stats.status = status
            self.stats.cause = cause or self.stats.cause
        self.server.handshake_done(status)
        if not self.client.closed:
            self.client.transport.write(response)
            self.client.close()
        self._finish()

    def _start_relay(self, request, response) -> None:
        server = self.server
        cfg = server.config
        if self.client.handshake_timer is not None:
            self.client.handshake_timer.cancel()
        ws = self.ws
        # set_max_payload_size() in ws_handshake: 0 (unset) keeps the configured limit.
        client_limit = (ws.payload_limit(Side.CLIENT) if ws is not None else 0) or server.client_max_payload
        upstream_limit = (ws.payload_limit(Side.UPSTREAM) if ws is not None else 0) or server.upstream_max_payload
        self.session = Session(
            client_max_payload=client_limit,
            upstream_max_payload=upstream_limit,
            validate_utf8=cfg.validate_utf8,
            chain=self.chain,
            close_timeout=cfg.close_timeout,
            idle_timeout=cfg.idle_timeout,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            now=self.loop.time(),
            on_error=self._handler_error,
        )
        if ws is not None:
            ws.session = self.session
            ws._conn.wakeup = self._wake
        self.stats.status = 101
        server.handshake_done(101)
        self.client.transport.write(hs.build_switching_protocols(request, response))
        self.client.peer, self.upstream.peer = self.upstream, self.client
        clock = self.loop.time if cfg.idle_timeout > 0 else None
        for endpoint in (self.client, self.upstream):
            endpoint.session = self.session
            endpoint.parser = self.session.halves[endpoint.side].parser
            endpoint.peer_write = endpoint.peer.transport.write
            endpoint.peer_buffered = endpoint.peer.transport.get_write_buffer_size
            endpoint.clock = clock
        self._update_fast_path()
        self.client.relaying = True
        self.upstream.relaying = True
        # Frames that arrived with the handshakes.
        for endpoint in (self.upstream, self.client):
            if endpoint.len and not self.finished:
                self.relay(endpoint)
        self._schedule()
        if not self.finished:
            self.client.transport.resume_reading()
            self.upstream.transport.resume_reading()

    def _handler_error(self, exc: BaseException, phase: str) -> None:
        # HandlerError names the plugin and the phase; the traceback is its cause's.
        log.error("%s", exc, exc_info=exc.__cause__ or exc)
        server = self.server
        server.handler_errors += 1
        plugin = getattr(exc, "plugin", "?")
        server.handler_errors_by_plugin[plugin] = server.handler_errors_by_plugin.get(plugin, 0) + 1

    def _wake(self) -> None:
        """A handler queued a message (PDK send): write it soon, even if no read comes."""
        if not self.wake_scheduled:
            self.wake_scheduled = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        self.wake_scheduled = False
        if self.finished or self.session is None or not self.session.attention:
            return
        try:
            self._after_session()
        except Exception:
            log.exception("internal error writing a plugin's message; closing the connection with 1011")
            self._internal_error()

    def _await_handler(self, endpoint: "_Endpoint", pending) -> None:
        """An async handler holds ``endpoint``'s direction: stop reading it until it is done."""
        if endpoint.transport is not None:
            endpoint.transport.pause_reading()

        async def wait() -> None:
            error = None
            try:
                await pending
            except Exception as exc:
                error = exc
            self.waiting_tasks.pop(endpoint.side, None)
            if self.finished:
                return
            try:
                self.session.resume(endpoint.side, error, self.loop.time())
                self._after_session()
                if not self.finished and endpoint.len and not endpoint.closed:
                    self.relay(endpoint)        # frames that came in with the one it held
            except Exception:
                log.exception("internal error after a handler; closing the connection with 1011")
                self._internal_error()
                return
            if (not self.finished and not endpoint.closed and not endpoint.paused_by_peer
                    and self.session.halves[endpoint.side].waiting is None):
                endpoint.transport.resume_reading()

        self.waiting_tasks[endpoint.side] = self.loop.create_task(wait())

    # -- relay ----------------------------------------------------------------------------------

    def relay(self, src: _Endpoint) -> None:
        try:
            self._relay(src)
        except Exception:
            # A bug must cost one connection, never the worker.
            log.exception("internal error relaying a connection; closing it with 1011")
            self._internal_error()

    def _internal_error(self) -> None:
        if self.finished:
            return
        if self.session is not None:
            self.session.close(CloseCode.INTERNAL_ERROR, "Internal Server Error", self.loop.time(),
                               cause="internal error")
            for endpoint in (self.client, self.upstream):
                if endpoint is not None:
                    out = self.session.out(endpoint.side)
                    if out:
                        endpoint.write(out)
        self._finish()

    def relay_scanned(self, src: _Endpoint, event: int, exc) -> None:
        """The compiled fast path scanned a read and met something for the session."""
        try:
            consumed = self.session.resume_passthrough(src.side, src.view, src.len, event, exc,
                                                       self.loop.time())
            self._deliver(src, consumed)
        except Exception:
            log.exception("internal error relaying a connection; closing it with 1011")
            self._internal_error()

    def _relay(self, src: _Endpoint) -> None:
        consumed = self.session.receive(src.side, src.view, src.len, self.loop.time())
        self._deliver(src, consumed)

    def _deliver(self, src: _Endpoint, consumed: int) -> None:
        """Write what the session forwarded from ``src``, free the buffer, act on the rest."""
        session = self.session
        dst = src.peer
        out = session.out(dst.side)
        lent = False
        if out:
            dst.write(out)
            lent = dst.transport is not None and dst.transport.get_write_buffer_size() > 0
        src._consumed(consumed, lent)
        if session.attention:
            self._after_session()

    def _after_session(self) -> None:
        session = self.session
        session.attention = False
        for endpoint in (self.client, self.upstream):
            out = session.out(endpoint.side)
            if out:
                endpoint.write(out)
            if session.done(endpoint.side) and not endpoint.closed:
                endpoint.close(abort=session.aborted(endpoint.side))
        if session.finished:
            self._finish()
            return
        for endpoint in (self.client, self.upstream):
            waiting = session.halves[endpoint.side].waiting
            if waiting is not None and endpoint.side not in self.waiting_tasks:
                self._await_handler(endpoint, waiting[0])
        self._update_fast_path()
        if session.timers_dirty:
            self._schedule()

    def _update_fast_path(self) -> None:
        """Let each side's next read take the compiled fast path while it is plain passthrough."""
        session = self.session
        for endpoint in (self.client, self.upstream):
            endpoint.fast = (session.passthrough_ready(endpoint.side)
                             and not endpoint.peer.closed and endpoint.peer.transport is not None)

    def _schedule(self) -> None:
        session = self.session
        session.timers_dirty = False
        when = session.next_deadline()
        if when is None:
            return
        if self.timer is not None and self.timer_when is not None and self.timer_when <= when:
            return                          # the earlier timer will fire and reschedule
        if self.timer is not None:
            self.timer.cancel()
        self.timer_when = when
        self.timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.timer_when = None
        if self.finished or self.session is None:
            return
        try:
            self.session.tick(self.loop.time())
            self._after_session()
        except Exception:
            log.exception("internal error in a connection's timer; closing it with 1011")
            self._internal_error()
            return
        if not self.finished:
            self._schedule()

    def eof(self, endpoint: _Endpoint) -> None:
        if self.session is None:
            if endpoint is self.client:
                # Client gone during the handshake: drop the upstream attempt too.
                if self.client.task is not None and not self.client.task.done():
                    self.client.task.cancel()
                if self.upstream is not None:
                    self.upstream.close(abort=True)
                self._finish()
            return
        if self.finished:
            return
        self.session.eof(endpoint.side, self.loop.time())
        self._after_session()

    def pause_peer_of(self, endpoint: _Endpoint) -> None:
        peer = self.upstream if endpoint is self.client else self.client
        if peer is not None and peer.transport is not None and not peer.closed and peer.relaying:
            peer.paused_by_peer = True
            peer.transport.pause_reading()

    def resume_peer_of(self, endpoint: _Endpoint) -> None:
        peer = self.upstream if endpoint is self.client else self.client
        if peer is not None and peer.paused_by_peer and not peer.closed:
            peer.paused_by_peer = False
            peer.transport.resume_reading()

    def close(self, code: int, reason: str, cause: str) -> None:
        """Close both sides with ``code`` (shutdown, drain)."""
        if self.session is None:
            self.client.close(abort=True)
            if self.upstream is not None:
                self.upstream.close(abort=True)
            self._finish()
            return
        self.session.close(code, reason, self.loop.time(), cause=cause)
        self._after_session()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for task in self.waiting_tasks.values():
            task.cancel()
        for endpoint in (self.client, self.upstream):
            if endpoint is not None and not endpoint.closed:
                endpoint.close(abort=self.session is not None and self.session.aborted(endpoint.side))
        stats = self.stats
        if stats is not None:
            stats.ended = time.time()
            session = self.session
            if session is not None:
                c, u = session.halves
                stats.client_messages, stats.client_bytes = c.parser.messages, c.parser.payload_bytes
                stats.upstream_messages, stats.upstream_bytes = u.parser.messages, u.parser.payload_bytes
                stats.client_close_code = c.close_received_code
                stats.upstream_close_code = u.close_received_code
                stats.closed_by = session.closed_by
                stats.cause = stats.cause or session.close_cause
            if self.ws is not None and self.chain is not None and self.chain.has("ws_close"):
                # SPEC section 3 step 6: once per connection, for logging.
                self.ws.stats = stats
                pending = self.chain.run_close()
                if pending is not None:
                    self.loop.create_task(pending)
        self.server.connection_closed(self)


class ProxyServer:
    """Everything one worker needs to proxy: config, router, TLS contexts, counters.

    ``chain_for(match)`` returns the handler chain of a route (or None for pure
    passthrough); the worker wires the plugin layer in through it.
    """

    def __init__(
        self,
        config: Any,
        router: Any,
        loop: asyncio.AbstractEventLoop,
        *,
        chain_for: Callable[[Any], Any] | None = None,
        access_log: Callable[[ConnectionStats], None] | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.loop = loop
        self.chain_for = chain_for
        self.access_log = access_log
        self.write_limits = (config.write_buffer_high, config.write_buffer_low)
        self.client_max_payload = config.client_max_payload
        self.upstream_max_payload = config.upstream_max_payload
        self.links: set[_Link] = set()
        self.read_buffer = ReadBuffer()     # shared by this loop's connections
        self._ssl_cache: dict[str, ssl.SSLContext | None] = {}
        self.connections_total = 0
        self.handshakes: dict[int, int] = {}
        self.handler_errors = 0
        self.handler_errors_by_plugin: dict[str, int] = {}
        # What closed connections carried, for the metrics (live ones are read at each report):
        # messages, payload bytes and dropped frames from the client [0] and the upstream [1];
        # and how sessions ended, by (who, close code).
        self.closed_messages = [0, 0]
        self.closed_bytes = [0, 0]
        self.closed_drops = [0, 0]
        self.closes: dict[tuple[str, int], int] = {}
        self.closed_event = asyncio.Event()

    def protocol_factory(self, listen: Any = None) -> Callable[[], ClientEndpoint]:
        return lambda: ClientEndpoint(self, listen)

    def upstream_ssl(self, service) -> ssl.SSLContext | None:
        if service.scheme != "wss":
            return None
        ctx = self._ssl_cache.get(service.name)
        if ctx is None:
            ctx = ssl.create_default_context(cafile=service.ca_file)
            if not service.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if service.client_cert:
                ctx.load_cert_chain(service.client_cert, service.client_key)
            self._ssl_cache[service.name] = ctx
        return ctx

    # -- bookkeeping ----------------------------------------------------------------------------

    def connection_opened(self, link: _Link) -> None:
        self.links.add(link)
        self.connections_total += 1
        self.closed_event.clear()

    def handshake_done(self, status: int) -> None:
        self.handshakes[status] = self.handshakes.get(status, 0) + 1

    def connection_closed(self, link: _Link) -> None:
        self.links.discard(link)
        session = link.session
        if session is not None:
            _add_traffic(session, self.closed_messages, self.closed_bytes, self.closed_drops)
            key = (session.closed_by or "proxy", session.close_code or CloseCode.ABNORMAL_CLOSURE)
            self.closes[key] = self.closes.get(key, 0) + 1
        stats = link.stats
        # A bare TCP connection (a port check that sent no request) is not logged, as
        # nginx and Kong do not log one either.
        if stats is not None and self.access_log is not None and (stats.path is not None or stats.status):
            try:
                self.access_log(link.stats)
            except Exception:
                log.exception("access log failed")
        if not self.links:
            self.closed_event.set()

    def traffic(self) -> tuple[list[int], list[int], list[int]]:
        """Messages, payload bytes and dropped frames from the client [0] and the upstream [1]
        so far: the closed connections' totals plus what the open ones have carried."""
        messages, payload, drops = list(self.closed_messages), list(self.closed_bytes), list(self.closed_drops)
        for link in self.links:
            if link.session is not None:
                _add_traffic(link.session, messages, payload, drops)
        return messages, payload, drops

    def close_all(self, code: int = CloseCode.GOING_AWAY, reason: str = "Going Away",
                  cause: str = "shutdown") -> None:
        for link in list(self.links):
            link.close(code, reason, cause)


def _add_traffic(session, messages: list[int], payload: list[int], drops: list[int]) -> None:
    for i, half in enumerate(session.halves):
        messages[i] += half.parser.messages
        payload[i] += half.parser.payload_bytes
        drops[i] += half.dropped


def access_log_writer(stream, fmt: str = "text") -> Callable[[ConnectionStats], None]:
    """One line per connection at close, text or JSON lines (SPEC section 7)."""
    def write(stats: ConnectionStats) -> None:
        line = json.dumps(stats.as_dict()) if fmt == "json" else stats.as_text()
        stream.write(line + "\n")
        stream.flush()
    return write
