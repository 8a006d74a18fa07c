"""pre-function / post-function: run the configured snippets in their phase.

Each snippet is compiled once, when the plugin is built, and run with
``exec`` in a fresh namespace holding ``ws``, the connection's PDK object;
state that should last goes in ``ws.ctx`` or ``ws.shared``. A snippet that
raises is a handler error (1011 to both sides in a frame phase). pre-function
runs before every other plugin, post-function after them (Kong's priorities
1000000 and -1000).

An instance defines only the phases that have snippets, so a direction with
none stays in passthrough.
"""

from __future__ import annotations

from types import CodeType

from ...errors import ConfigError
from .. import PHASES, Plugin
from .schema import Config

__all__ = ["PreFunctionPlugin", "PostFunctionPlugin"]


class _FunctionPlugin(Plugin):
    Config = Config

    def __init__(self, conf: Config) -> None:
        self.conf = conf
        self.code: dict[str, tuple[CodeType, ...]] = {}
        for phase in PHASES:
            compiled = []
            for index, source in enumerate(getattr(conf, phase)):
                try:
                    compiled.append(compile(source, f"<{self.name} {phase}[{index}]>", "exec"))
                except (SyntaxError, ValueError) as exc:    # ValueError: a NUL in the source
                    raise ConfigError(f"plugin {self.name!r}: config.{phase}[{index}]: "
                                      f"error parsing {self.name}: {_describe(exc)}") from None
            if compiled:
                self.code[phase] = tuple(compiled)
            else:
                # Hide the class's handler: the chain skips this phase for this instance.
                setattr(self, phase, None)

    def _run(self, phase: str, ws) -> None:
        for code in self.code[phase]:
            exec(code, {"ws": ws})

    def ws_handshake(self, ws) -> None:
        self._run("ws_handshake", ws)

    def ws_client_frame(self, ws) -> None:
        self._run("ws_client_frame", ws)

    def ws_upstream_frame(self, ws) -> None:
        self._run("ws_upstream_frame", ws)

    def ws_close(self, ws) -> None:
        self._run("ws_close", ws)


def _describe(exc: Exception) -> str:
    if isinstance(exc, SyntaxError) and exc.lineno is not None:
        return f"{exc.msg} (line {exc.lineno})"
    return str(exc)


class PreFunctionPlugin(_FunctionPlugin):
    name = "pre-function"
    priority = 1000000          # Kong's pre-function PRIORITY: first


class PostFunctionPlugin(_FunctionPlugin):
    name = "post-function"
    priority = -1000            # Kong's post-function PRIORITY: last
