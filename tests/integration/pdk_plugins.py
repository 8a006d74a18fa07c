"""Plugins for ``test_pdk.py``: written the way a user writes them (SPEC section 5).

Most take a plain dict as ``conf`` (they declare no ``Config``, so the loader
would hand them the mapping as it is): the tests build them directly and put
lists in it for the plugin to record into.  The handlers run on the proxy's
thread; the tests read those lists after waiting for the peers, never while a
handler may still append.

``Upper`` and ``Tag`` declare a ``Config`` schema and record nothing but into
``EVENTS``: they are the ones the YAML config test loads as
``pdk_plugins:Upper`` / ``pdk_plugins:Tag`` (this directory on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import dataclasses

from fastws.pdk import PDKError, websocket
from fastws.plugins import PHASES, Plugin, field

#: What the config-loaded plugins saw: (plugin name, phase, detail).
EVENTS: list = []


def _direction(ws, side: str):
    return ws.client if side == "client" else ws.upstream


def attempt(errors: list, label: str, call) -> None:
    """Run ``call()``; a PDKError is recorded as ``(label, message)`` and swallowed."""
    try:
        call()
    except PDKError as exc:
        errors.append((label, str(exc)))
    else:
        errors.append((label, None))


# -- configured from a file ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UpperConfig:
    suffix: str = field("", doc="Appended to every text message from the client, after upper-casing.")
    priority: int = field(800, doc="Unused by the chain (priority is a class attribute); checked for type.")

    def validate(self) -> str | None:
        return "suffix: at most 10 characters" if len(self.suffix) > 10 else None


class Upper(Plugin):
    """Upper-cases the client's text messages and appends ``suffix`` (the SPEC's Redact, simplified)."""

    name = "upper"
    priority = 800
    Config = UpperConfig

    def ws_client_frame(self, ws):
        data, typ, _ = ws.client.get_frame()
        if typ == "text":
            ws.client.set_frame_data(data.upper() + self.conf.suffix.encode())

    def ws_close(self, ws):
        EVENTS.append((self.name, "ws_close", ws.stats.client_messages))


@dataclasses.dataclass(frozen=True)
class TagConfig:
    tag: str = field(doc="Appended to every text message from the upstream.")


class Tag(Plugin):
    """Appends ``[tag]`` to the upstream's text messages."""

    name = "tag"
    priority = 100
    Config = TagConfig

    def ws_upstream_frame(self, ws):
        data, typ, _ = ws.upstream.get_frame()
        if typ == "text":
            ws.upstream.set_frame_data(data + f"[{self.conf.tag}]".encode())


# -- built by the tests ----------------------------------------------------------------------------


class Hooks(Plugin):
    """A plugin made of functions: ``Hooks(name="a", priority=5, ws_client_frame=fn)``.

    The chain looks the phases up on the instance, so only the given phases exist.
    """

    def __init__(self, conf=None, *, name: str = "hooks", priority: int = 0, **handlers) -> None:
        super().__init__(conf)
        self.name = name
        self.priority = priority
        for phase, handler in handlers.items():
            if phase not in PHASES:
                raise TypeError(f"not a phase: {phase}")
            setattr(self, phase, handler)


class Recorder(Plugin):
    """Records ``get_frame()`` of every frame in both directions: ``conf["log"]`` gets
    ``(side, data, type, status)``.  It changes nothing (both directions in inspect mode)."""

    name = "recorder"

    def __init__(self, conf) -> None:
        super().__init__(conf)
        self.priority = conf.get("priority", 0)
        self.name = conf.get("name", "recorder")

    def ws_client_frame(self, ws):
        self.conf["log"].append(("client", *ws.client.get_frame()))

    def ws_upstream_frame(self, ws):
        self.conf["log"].append(("upstream", *ws.upstream.get_frame()))


class Append(Plugin):
    """Appends ``|mark`` to the text messages of ``conf["side"]`` and records each one it saw
    into ``conf["seen"]`` as ``(mark, data)``: priority order made visible."""

    def __init__(self, conf) -> None:
        super().__init__(conf)
        self.name = f"append-{conf['mark']}"
        self.priority = conf["priority"]
        setattr(self, f"ws_{conf.get('side', 'client')}_frame", self._frame)

    def _frame(self, ws):
        direction = _direction(ws, self.conf.get("side", "client"))
        data, typ, _ = direction.get_frame()
        if typ == "text":
            self.conf["seen"].append((self.conf["mark"], data))
            direction.set_frame_data(data + b"|" + self.conf["mark"].encode())


class Dropper(Plugin):
    """Drops the data messages and pings of ``conf["side"]`` whose payload contains ``b"drop"``;
    records the PDKError of drop_frame() on a close frame into ``conf["errors"]``."""

    name = "dropper"
    priority = 500

    def __init__(self, conf) -> None:
        super().__init__(conf)
        setattr(self, f"ws_{conf['side']}_frame", self._frame)

    def _frame(self, ws):
        direction = _direction(ws, self.conf["side"])
        data, typ, _ = direction.get_frame()
        if typ == "close":
            attempt(self.conf["errors"], "drop close", direction.drop_frame)
        elif b"drop" in data:
            direction.drop_frame()


class Closer(Plugin):
    """On the message ``b"close me"`` from ``conf["side"]``: ``close(*conf["args"])``."""

    name = "closer"
    priority = 500

    def __init__(self, conf) -> None:
        super().__init__(conf)
        setattr(self, f"ws_{conf['side']}_frame", self._frame)

    def _frame(self, ws):
        direction = _direction(ws, self.conf["side"])
        data, _, _ = direction.get_frame()
        if data == b"close me":
            direction.close(*self.conf["args"], **self.conf.get("kwargs", {}))


class Limit(Plugin):
    """``set_max_payload_size`` in ws_handshake: ``conf["client"]`` / ``conf["upstream"]``
    when present.  A PDKError is recorded into ``conf["errors"]`` and raised again."""

    name = "limit"

    def __init__(self, conf) -> None:
        super().__init__(conf)
        self.priority = conf.get("priority", 0)
        self.name = conf.get("name", "limit")

    def ws_handshake(self, ws):
        for side in ("client", "upstream"):
            if side in self.conf:
                try:
                    _direction(ws, side).set_max_payload_size(self.conf[side])
                except PDKError as exc:
                    self.conf.setdefault("errors", []).append(str(exc))
                    raise


class Boom(Plugin):
    """Raises in ``conf["phase"]`` on a message ``b"boom"`` (or always in ws_handshake/ws_close)."""

    name = "boom"
    priority = 10

    def __init__(self, conf) -> None:
        super().__init__(conf)
        setattr(self, conf["phase"], self._handler)

    def _handler(self, ws):
        phase = self.conf["phase"]
        if phase in ("ws_handshake", "ws_close"):
            raise RuntimeError(f"boom in {phase}")
        direction = ws.client if phase == "ws_client_frame" else ws.upstream
        if direction.get_frame()[0] == b"boom":
            raise RuntimeError(f"boom in {phase}")


class Counter(Plugin):
    """``ws.ctx`` per plugin and connection, ``ws.shared`` per connection.

    Appends ``|name:n:path:before`` to each client text message: ``n`` counts this
    plugin's text messages on this connection (in ``ws.ctx``), ``path`` was put in
    ``ws.ctx`` in ws_handshake, ``before`` is what the last plugin of this connection
    left in ``ws.shared`` (this one then leaves its own name there).
    ``conf["log"]`` gets ``(name, id(ws.ctx), sorted ctx keys)``, ``conf["closes"]`` the
    ``ws.ctx`` that ws_close sees.
    """

    def __init__(self, conf) -> None:
        super().__init__(conf)
        self.name = conf["name"]
        self.priority = conf["priority"]

    def ws_handshake(self, ws):
        ws.ctx["path"] = ws.request.path

    def ws_client_frame(self, ws):
        data, typ, _ = ws.client.get_frame()
        if typ != "text":
            return
        ws.ctx["n"] = ws.ctx.get("n", 0) + 1
        before = ws.shared.get("last", "-")
        ws.shared["last"] = self.name
        self.conf["log"].append((self.name, id(ws.ctx), sorted(ws.ctx)))
        ws.client.set_frame_data(data + f"|{self.name}:{ws.ctx['n']}:{ws.ctx['path']}:{before}".encode())

    def ws_close(self, ws):
        self.conf["closes"].append((self.name, dict(ws.ctx)))


class KongStyle(Plugin):
    """Uses ``from fastws.pdk import websocket`` instead of the ``ws`` argument, also in an
    async handler after an await: reverses the client's text messages."""

    name = "kong-style"

    def ws_client_frame(self, ws):
        data, typ, _ = websocket.client.get_frame()
        if typ == "text" and data.startswith(b"rev:"):
            websocket.client.set_frame_data(data[4:][::-1])

    async def ws_upstream_frame(self, ws):
        await asyncio.sleep(0)
        data, typ, _ = websocket.upstream.get_frame()
        if typ == "text":
            websocket.upstream.set_frame_data(b"kong:" + data)


class AsyncHold(Plugin):
    """An async ws_client_frame: on ``b"hold"`` it sleeps ``conf["sleep"]`` seconds.

    ``conf["holding"]`` (a threading.Event) is set when the sleep starts and
    ``conf["released"]`` when it ends.  After the sleep it reads the frame again and
    checks ``ws.ctx``: what it finds goes to ``conf["after"]`` (PDKErrors included).
    """

    name = "async-hold"
    priority = 900

    async def ws_client_frame(self, ws):
        data, _, _ = ws.client.get_frame()
        if data != b"hold":
            return
        ws.ctx["mine"] = True
        self.conf["holding"].set()
        await asyncio.sleep(self.conf["sleep"])
        self.conf["released"].set()
        after = self.conf["after"]
        try:
            after.append(("get_frame", ws.client.get_frame()))
        except PDKError as exc:
            after.append(("get_frame", f"PDKError: {exc}"))
        after.append(("ctx", dict(ws.ctx)))
        try:
            ws.client.set_frame_data(b"held")
            after.append(("set_frame_data", None))
        except PDKError as exc:
            after.append(("set_frame_data", f"PDKError: {exc}"))


class StatsRecorder(Plugin):
    """ws_close: records ``ws.stats`` (as a dict) and the phase check into ``conf["closes"]``."""

    name = "stats"

    def ws_close(self, ws):
        errors: list = []
        attempt(errors, "get_frame in ws_close", ws.client.get_frame)
        self.conf["closes"].append((ws.stats.as_dict(), errors))


class UpstreamOnly(Plugin):
    """Defines only ws_upstream_frame: the client direction stays in passthrough."""

    name = "upstream-only"

    def ws_upstream_frame(self, ws):
        data, typ, _ = ws.upstream.get_frame()
        if typ == "text":
            ws.upstream.set_frame_data(data.upper())


class NoPhases:
    """Defines no phase at all: the loader refuses it."""

    name = "no-phases"

    def __init__(self, conf) -> None:
        self.conf = conf
