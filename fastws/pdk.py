"""The plugin development kit: what a plugin handler sees of a connection.

Each handler gets ``ws``, one per connection (Kong's ``kong.websocket`` PDK,
SPEC section 5)::

    ws.request                 the client's handshake: method, path, headers, client address
    ws.client / ws.upstream    frames from that side (phase ws_client_frame / ws_upstream_frame)
    ws.ctx                     a dict per plugin and connection
    ws.shared                  a dict per connection, shared by all plugins
    ws.stats                   in ws_close: durations, counts, bytes, close codes, who closed
    ws.reject(status, ...)     in ws_handshake: refuse the upgrade with an HTTP answer

``from fastws.pdk import websocket`` gives the same ``client``/``upstream`` for the
connection in flight, for code written the Kong way.

Every function checks the phase it is called in against the phases it allows
(Kong's ``kong/pdk/private/phases.lua``) and raises ``PDKError`` naming them.
"""

from __future__ import annotations

import contextvars
from typing import Any

from .codec import validate_utf8
from .errors import PDKError
from .frames import MAX_CONTROL_PAYLOAD, CloseCode, Opcode, close_code_is_valid

__all__ = ["WebSocket", "Connection", "Direction", "websocket", "PDKError", "MAX_PAYLOAD_LIMIT"]

#: SPEC section 4: a side's message limit is at most 32 MiB.
MAX_PAYLOAD_LIMIT = 32 * 1024 * 1024

TYPE_NAMES = {Opcode.TEXT: "text", Opcode.BINARY: "binary", Opcode.CLOSE: "close",
              Opcode.PING: "ping", Opcode.PONG: "pong"}
SEND_TYPES = {"text": Opcode.TEXT, "binary": Opcode.BINARY, "ping": Opcode.PING, "pong": Opcode.PONG}

# Plain ints for the per-message checks: reading an IntEnum member costs more than the check.
_TEXT, _CLOSE, _PING, _PONG = int(Opcode.TEXT), int(Opcode.CLOSE), int(Opcode.PING), int(Opcode.PONG)

_current: contextvars.ContextVar["WebSocket | None"] = contextvars.ContextVar("fastws_websocket", default=None)


class Rejected(Exception):
    """Raised by ``ws.reject()`` to end the handshake phase; the proxy answers with it."""

    def __init__(self, status: int, body: bytes, headers: list) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers


def _as_bytes(data: Any, what: str) -> bytes:
    if isinstance(data, str):
        try:
            return data.encode("utf-8")
        except UnicodeEncodeError as exc:      # a lone surrogate
            raise PDKError(f"{what}: the str is not valid Unicode ({exc.reason} at index {exc.start}), "
                           f"so it cannot go out as UTF-8") from None
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise PDKError(f"{what}: data must be bytes or str, got {type(data).__name__}")


class Direction:
    """``ws.client`` or ``ws.upstream``: the frames coming from that side."""

    __slots__ = ("_ws", "_side", "_phase", "_name")

    def __init__(self, ws: "WebSocket", side: int, phase: str, name: str) -> None:
        self._ws = ws
        self._side = side          # 0: client, 1: upstream (fastws.session.Side)
        self._phase = phase        # the frame phase of this direction
        self._name = name

    def _check(self, function: str, phases: tuple[str, ...]) -> None:
        current = self._ws.phase
        if current not in phases:
            raise PDKError(f"ws.{self._name}.{function}() may be called in phase "
                           f"{' or '.join(phases)}, not {current or 'outside a handler'}")

    def _frame(self, function: str):
        self._check(function, (self._phase,))
        return self._ws._conn.frames[self._side]

    # -- Kong's functions -------------------------------------------------------------

    def get_frame(self) -> tuple[bytes, str, int | None]:
        """The in-flight frame: ``(data, type, status)``.

        Phases: this direction's frame phase.
        Returns: the payload (the close reason for a close frame), the type
            ("text", "binary", "ping", "pong" or "close") and the close code for a
            close frame, else None.
        Raises: PDKError in any other phase.
        Usage: ``data, typ, status = ws.client.get_frame()``
        """
        frame = self._frame("get_frame")
        return frame.get_data(), TYPE_NAMES[frame.opcode], frame.status

    def set_frame_data(self, data: bytes | str) -> None:
        """Replace the payload (on a close frame: the reason); later handlers see it.

        Phases: this direction's frame phase.
        Parameters: data -- bytes, or str sent as UTF-8.
        Raises: PDKError in another phase, for text that is not UTF-8, a control
            payload over 125 bytes (a close reason over 123), or a message over the
            limit of this direction.
        Usage: ``ws.client.set_frame_data(data.replace(b"secret", b"******"))``
        """
        frame = self._frame("set_frame_data")
        payload = _as_bytes(data, f"ws.{self._name}.set_frame_data")
        if frame.opcode == _CLOSE:
            if payload and frame.status in (None, CloseCode.NO_STATUS_RCVD):
                raise PDKError(f"ws.{self._name}.set_frame_data: this close frame has no status, so it "
                               f"cannot carry a reason; call set_status() first")
            if len(payload) > MAX_CONTROL_PAYLOAD - 2:
                raise PDKError(f"ws.{self._name}.set_frame_data: a close reason carries at most 123 bytes, "
                               f"got {len(payload)}")
            if not validate_utf8(payload):
                raise PDKError(f"ws.{self._name}.set_frame_data: a close reason must be UTF-8")
        elif frame.opcode == _PING or frame.opcode == _PONG:
            if len(payload) > MAX_CONTROL_PAYLOAD:
                raise PDKError(f"ws.{self._name}.set_frame_data: a {TYPE_NAMES[frame.opcode]} carries at most "
                               f"125 bytes, got {len(payload)}")
        else:
            limit = self._ws._session_limit(self._side)
            if limit and len(payload) > limit:
                raise PDKError(f"ws.{self._name}.set_frame_data: {len(payload)} bytes is over this "
                               f"direction's limit of {limit} bytes")
            if frame.opcode == _TEXT and not validate_utf8(payload):
                raise PDKError(f"ws.{self._name}.set_frame_data: a text message must be UTF-8")
        frame.set_data(payload)

    def set_status(self, status: int) -> None:
        """Replace a close frame's code; later handlers see it.

        Phases: this direction's frame phase.
        Raises: PDKError on any frame but a close, or for a code that may not be sent.
        Usage: ``ws.upstream.set_status(4000)``
        """
        frame = self._frame("set_status")
        if frame.opcode != Opcode.CLOSE:
            raise PDKError(f"ws.{self._name}.set_status: only a close frame has a status "
                           f"(this is a {TYPE_NAMES[frame.opcode]} frame)")
        if not isinstance(status, int) or not close_code_is_valid(status):
            raise PDKError(f"ws.{self._name}.set_status: {status!r} is not a close code that may be sent")
        frame.status = status

    def drop_frame(self) -> None:
        """Do not forward the frame; later handlers for it are skipped.

        Phases: this direction's frame phase.
        Raises: PDKError on a close frame (use close() to end the connection).
        Usage: ``ws.client.drop_frame()``
        """
        frame = self._frame("drop_frame")
        if frame.opcode == Opcode.CLOSE:
            raise PDKError(f"ws.{self._name}.drop_frame: a close frame cannot be dropped; use close()")
        frame.dropped = True

    def close(self, status: int | None = None, message: str | bytes | None = None,
              peer_status: int | None = None, peer_message: str | bytes | None = None) -> None:
        """Close both sides at once: ``status``/``message`` to this side, the peer pair to the other.

        The frame in flight is not forwarded and later handlers are skipped.
        Phases: this direction's frame phase.
        Parameters: a status left out (None) sends a close frame with no code, as in Kong;
            messages default to none.
        Raises: PDKError for a code that may not be sent, a message over 123 bytes, or a
            message without a status.
        Usage: ``ws.client.close(1008, "policy", 1001)``
        """
        frame = self._frame("close")
        pairs: list = []
        for code, text in ((status, message), (peer_status, peer_message)):
            reason = _as_bytes(text or b"", f"ws.{self._name}.close")
            if code is None:
                # As in Kong: no status, a close frame with an empty payload.
                if reason:
                    raise PDKError(f"ws.{self._name}.close: a close message needs a status")
                pairs += [None, ""]
                continue
            if not isinstance(code, int) or isinstance(code, bool) or not close_code_is_valid(code):
                raise PDKError(f"ws.{self._name}.close: {code!r} is not a close code that may be sent")
            if len(reason) > MAX_CONTROL_PAYLOAD - 2 or not validate_utf8(reason):
                raise PDKError(f"ws.{self._name}.close: a close message is UTF-8 of at most 123 bytes")
            pairs += [int(code), reason.decode("utf-8")]
        frame.close_args = tuple(pairs)

    def set_max_payload_size(self, size: int) -> None:
        """The limit for messages from this side; 0 restores the configured default.

        Phases: ws_handshake.
        Raises: PDKError when size is not an int, < 0 or > 32 MiB.
        Usage: ``ws.client.set_max_payload_size(65536)``
        """
        self._check("set_max_payload_size", ("ws_handshake",))
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_PAYLOAD_LIMIT:
            raise PDKError(f"ws.{self._name}.set_max_payload_size: size must be an int from 0 to "
                           f"{MAX_PAYLOAD_LIMIT}, got {size!r}")
        self._ws._conn.limits[self._side] = size

    # -- beyond Kong ------------------------------------------------------------------------

    def send(self, data: bytes | str, type: str = "text") -> None:
        """Send a message made by the proxy to this side.

        Phases: ws_client_frame, ws_upstream_frame.
        Parameters: data -- bytes or str; type -- "text", "binary", "ping" or "pong".
        Raises: PDKError for an unknown type, text that is not UTF-8, or a control
            payload over 125 bytes.
        Usage: ``ws.client.send('{"error": "rate limited"}')``
        """
        self._check("send", ("ws_client_frame", "ws_upstream_frame"))
        opcode = SEND_TYPES.get(type)
        if opcode is None:
            raise PDKError(f"ws.{self._name}.send: type must be one of {', '.join(SEND_TYPES)}, got {type!r}")
        payload = _as_bytes(data, f"ws.{self._name}.send")
        if opcode in (Opcode.PING, Opcode.PONG) and len(payload) > MAX_CONTROL_PAYLOAD:
            raise PDKError(f"ws.{self._name}.send: a {type} carries at most 125 bytes")
        if opcode == Opcode.TEXT and not validate_utf8(payload):
            raise PDKError(f"ws.{self._name}.send: a text message must be UTF-8")
        self._ws._send(self._side, opcode, payload)


class Connection:
    """What the handlers of one connection share: the request, the frames in flight, limits."""

    __slots__ = ("request", "client_address", "shared", "stats", "session", "frames", "limits", "wakeup")

    def __init__(self, request: Any, client_address: tuple | None) -> None:
        self.request = request
        self.client_address = client_address
        self.shared: dict = {}
        self.stats: Any = None
        self.session: Any = None            # fastws.session.Session, once the connection is open
        self.frames: list = [None, None]    # the frame in flight from the client / the upstream
        self.limits: list = [0, 0]          # set_max_payload_size per side, 0: configured default
        # Called after send(): the proxy writes what is queued even while an async
        # handler holds a direction (no read or timer would otherwise flush it).
        self.wakeup: Any = None


class WebSocket:
    """``ws``: a handler's view of its connection.

    There is one view per plugin and per direction (and one for the handshake and
    close phases): each carries that plugin's ``ctx`` and the phase its handler runs
    in, so an async handler of the client direction and one of the upstream direction
    never see each other's phase, frame or ``ctx``.  What they share -- request, frames,
    ``shared``, stats -- lives in one ``Connection``.
    """

    __slots__ = ("_conn", "ctx", "phase", "client", "upstream")

    def __init__(self, request: Any = None, client_address: tuple | None = None, *,
                 connection: Connection | None = None, ctx: dict | None = None) -> None:
        self._conn = connection if connection is not None else Connection(request, client_address)
        self.ctx: dict = {} if ctx is None else ctx
        self.phase: str | None = None
        self.client = Direction(self, 0, "ws_client_frame", "client")
        self.upstream = Direction(self, 1, "ws_upstream_frame", "upstream")

    def view(self, ctx: dict) -> "WebSocket":
        """Another view of the same connection, with its own ``ctx`` and phase."""
        return WebSocket(connection=self._conn, ctx=ctx)

    @property
    def request(self) -> Any:
        """The client's handshake: method, path, query, headers, and ``client_address``."""
        return self._conn.request

    @property
    def client_address(self) -> tuple | None:
        return self._conn.client_address

    @property
    def shared(self) -> dict:
        return self._conn.shared

    @property
    def stats(self) -> Any:
        return self._conn.stats

    @stats.setter
    def stats(self, stats: Any) -> None:
        self._conn.stats = stats

    @property
    def session(self) -> Any:
        return self._conn.session

    @session.setter
    def session(self, session: Any) -> None:
        self._conn.session = session

    def payload_limit(self, side: int) -> int:
        """What set_max_payload_size() asked for that side (0: the configured default)."""
        return self._conn.limits[side]

    def reject(self, status: int, body: bytes | str = b"", headers: list | dict | None = None) -> None:
        """Refuse the upgrade with an HTTP answer; the rest of the handshake phase is skipped.

        Phases: ws_handshake.
        Parameters: status -- 400..599; body -- bytes or str; headers -- a dict or a list
            of (name, value) strings.
        Raises: PDKError for a status outside 400..599, or a header that is not a pair of
            strings or holds CR, LF or NUL.
        Usage: ``ws.reject(403, "forbidden")``
        """
        if self.phase != "ws_handshake":
            raise PDKError(f"ws.reject() may be called in phase ws_handshake, not {self.phase or 'outside a handler'}")
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise PDKError(f"ws.reject: status must be an HTTP error status (400..599), got {status!r}")
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        for item in items:
            if (not isinstance(item, tuple) or len(item) != 2
                    or not all(isinstance(part, str) for part in item)
                    or any(ch in part for part in item for ch in "\r\n\0")):
                raise PDKError(f"ws.reject: headers must be (name, value) strings without CR, LF or NUL, "
                               f"got {item!r}")
        raise Rejected(status, _as_bytes(body, "ws.reject"), items)

    def _session_limit(self, side: int) -> int:
        session = self._conn.session
        if session is None:
            return 0
        return session.halves[side].parser.max_message_size

    def _send(self, side: int, opcode: int, payload: bytes) -> None:
        session = self._conn.session
        if session is None:
            raise PDKError("send: the connection is not open")
        session.send(side, opcode, payload)
        if self._conn.wakeup is not None:
            self._conn.wakeup()


class _Current:
    """``websocket.client`` / ``websocket.upstream`` of the connection in flight (Kong style)."""

    def _ws(self) -> WebSocket:
        ws = _current.get()
        if ws is None:
            raise PDKError("fastws.pdk.websocket is only bound inside a plugin handler")
        return ws

    @property
    def client(self) -> Direction:
        return self._ws().client

    @property
    def upstream(self) -> Direction:
        return self._ws().upstream


websocket = _Current()
