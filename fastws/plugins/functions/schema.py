"""Config of pre-function and post-function: a list of Python snippets per phase.

::

    plugins:
      - name: pre-function
        config:
          ws_client_frame:
            - |
              data, typ, status = ws.client.get_frame()
              if typ == "text" and b"secret" in data:
                  ws.client.drop_frame()

Each field is a phase (Kong's ``ws_*`` phases of these plugins) and lists
source snippets, run in order with ``ws`` in scope. At least one phase must
have a snippet. The snippets are compiled when the plugin is built.
"""

from __future__ import annotations

import dataclasses

from .. import PHASES, field

__all__ = ["Config"]


def _check_snippets(value: list) -> str | None:
    for index, snippet in enumerate(value):
        if not isinstance(snippet, str):
            return f"item {index}: must be a string (Python source), got {type(snippet).__name__}"
    return None


def _phase(doc: str):
    return field(default_factory=list, check=_check_snippets, doc=doc)


@dataclasses.dataclass(frozen=True)
class Config:
    ws_handshake: list[str] = _phase(
        "Snippets run on the client's handshake (ws.request, ws.reject, "
        "ws.client/ws.upstream.set_max_payload_size).")
    ws_client_frame: list[str] = _phase(
        "Snippets run on each message and control frame from the client (ws.client).")
    ws_upstream_frame: list[str] = _phase(
        "Snippets run on each message and control frame from the upstream (ws.upstream).")
    ws_close: list[str] = _phase(
        "Snippets run once when the connection has closed (ws.stats).")

    def validate(self) -> str | None:
        if not any(getattr(self, phase) for phase in PHASES):
            return ("at least one of these fields must be non-empty: "
                    + ", ".join(f"'{phase}'" for phase in PHASES))
        return None
