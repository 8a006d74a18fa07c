"""Handler chains: per phase, the plugins that define it, highest priority first.

A ``Chain`` is built once per route and config (global plugins plus the
service's) -- Kong's ``plugins_iterator``: a plugin is in a phase's list only if
it defines that phase, so an empty list keeps that direction in passthrough.
``Chain.bind(ws)`` gives the per-connection object the session and the proxy
call: ``has(phase)``, ``run(phase, frame)``, ``run_handshake()``, ``run_close()``.

Handlers may be ``async def``: ``run`` then returns an awaitable that finishes
the chain, and the direction waits for it (the order of messages is kept).

A handler that raises is reported as ``HandlerError`` naming the plugin and
the phase; the session answers it with 1011 on both sides.
"""

from __future__ import annotations

import inspect
import logging
from time import perf_counter
from typing import Any, Awaitable

from ..errors import FastWSError
from ..pdk import Rejected, WebSocket, _current
from . import PHASES

__all__ = ["Chain", "BoundChain", "HandlerError"]

log = logging.getLogger("fastws.plugins")


class HandlerError(FastWSError):
    """A plugin handler raised: ``plugin`` and ``phase`` say which, ``__cause__`` what."""

    def __init__(self, plugin: str, phase: str, exc: BaseException) -> None:
        super().__init__(f"plugin {plugin!r} raised in {phase}: {type(exc).__name__}: {exc}")
        self.plugin, self.phase = plugin, phase


class Chain:
    """The handler lists of one route, built once per config."""

    def __init__(self, plugins: list[Any]) -> None:
        # sorted() is stable: equal priorities keep config order (global ones first).
        self.plugins = sorted(plugins, key=lambda plugin: -getattr(plugin, "priority", 0))
        self.handlers: dict[str, list[tuple[int, str, Any]]] = {}
        for phase in PHASES:
            self.handlers[phase] = [
                (index, getattr(plugin, "name", type(plugin).__name__), getattr(plugin, phase))
                for index, plugin in enumerate(self.plugins)
                if callable(getattr(plugin, phase, None))
            ]
        # Per plugin (by index): handler calls and the time they took, for the metrics
        # (an async handler's time includes its wait: its direction waited as long).
        # Timed only when the metrics are on (a master with an admin endpoint).
        from ..metrics import enabled

        self.timed = enabled()
        self.names = [getattr(plugin, "name", type(plugin).__name__) for plugin in self.plugins]
        self.calls = [0] * len(self.plugins)
        self.seconds = [0.0] * len(self.plugins)

    def has(self, phase: str) -> bool:
        return bool(self.handlers[phase])

    @property
    def empty(self) -> bool:
        return not any(self.handlers.values())

    def bind(self, ws: WebSocket) -> "BoundChain":
        return BoundChain(self, ws)


class BoundChain:
    """A chain bound to one connection: each plugin gets its own ``ws`` view per direction."""

    __slots__ = ("chain", "ws", "ctxs", "views")

    # Which view a phase uses: handshake and close share one (they never overlap).
    SLOTS = {"ws_handshake": 0, "ws_close": 0, "ws_client_frame": 1, "ws_upstream_frame": 2}

    def __init__(self, chain: Chain, ws: WebSocket) -> None:
        self.chain = chain
        self.ws = ws
        self.ctxs = [{} for _ in chain.plugins]     # ws.ctx: one dict per plugin
        self.views: dict[tuple[int, int], WebSocket] = {}

    def has(self, phase: str) -> bool:
        return self.chain.has(phase)

    def _view(self, index: int, slot: int) -> WebSocket:
        view = self.views.get((index, slot))
        if view is None:
            view = self.views[(index, slot)] = self.ws.view(self.ctxs[index])
        return view

    def run(self, phase: str, frame: Any) -> Awaitable | None:
        """Run ``phase``'s handlers on ``frame``; an awaitable if one of them is async."""
        self.ws._conn.frames[0 if phase == "ws_client_frame" else 1] = frame
        return self._run(phase, frame, 0)

    def _run(self, phase: str, frame: Any, start: int) -> Awaitable | None:
        chain = self.chain
        timed = chain.timed
        handlers = chain.handlers[phase]
        slot = self.SLOTS[phase]
        for position in range(start, len(handlers)):
            index, name, handler = handlers[position]
            ws = self._view(index, slot)
            ws.phase = phase
            token = _current.set(ws)
            if timed:
                started = perf_counter()
            try:
                result = handler(ws)
            except Rejected:
                raise                       # ws.reject(): an answer, not a failure
            except Exception as exc:
                raise HandlerError(name, phase, exc) from exc
            finally:
                _current.reset(token)
                ws.phase = None
                if timed:
                    chain.calls[index] += 1
                    chain.seconds[index] += perf_counter() - started
            if result is not None and inspect.isawaitable(result):   # most handlers return None
                return self._run_async(phase, frame, position, ws, name, result)
            if frame is not None and (frame.dropped or frame.close_args is not None):
                break           # drop_frame() and close() skip the later handlers
        return None

    async def _run_async(self, phase: str, frame: Any, position: int, ws: WebSocket, name: str,
                         pending: Awaitable) -> None:
        # The handler's view keeps its phase while it awaits: this direction waits for
        # it, and the other direction uses other views.
        ws.phase = phase
        token = _current.set(ws)
        started = perf_counter()
        try:
            await pending
        except Rejected:
            raise
        except Exception as exc:
            raise HandlerError(name, phase, exc) from exc
        finally:
            _current.reset(token)
            ws.phase = None
            if self.chain.timed:
                index = self.chain.handlers[phase][position][0]
                self.chain.seconds[index] += perf_counter() - started
        if frame is not None and (frame.dropped or frame.close_args is not None):
            return
        rest = self._run(phase, frame, position + 1)
        if rest is not None:
            await rest

    def run_handshake(self) -> Awaitable | None:
        """ws_handshake: may raise ``pdk.Rejected`` (ws.reject) or ``HandlerError``."""
        return self._run("ws_handshake", None, 0)

    def run_close(self) -> Awaitable | None:
        """ws_close, once per connection, for logging: errors are logged, never raised."""
        try:
            result = self._run("ws_close", None, 0)
        except HandlerError as exc:
            log.error("%s", exc, exc_info=exc.__cause__)
            return None
        if result is None:
            return None

        async def logged():
            try:
                await result
            except HandlerError as exc:
                log.error("%s", exc, exc_info=exc.__cause__)
        return logged()
