"""size-limit: set each side's message limit at the handshake.

Like Kong's websocket-size-limit, the plugin only calls
``set_max_payload_size`` in ``ws_handshake``; the session enforces the limit
from each frame header and from the running total of a fragmented message.
A message over it closes the sender with 1009 and the peer with 1001
(SPEC section 4). The plugin defines no frame phase, so both directions can
stay in passthrough.
"""

from __future__ import annotations

from .. import Plugin
from .schema import Config

__all__ = ["SizeLimitPlugin"]


class SizeLimitPlugin(Plugin):
    name = "size-limit"
    priority = 1003             # Kong's websocket-size-limit PRIORITY
    Config = Config

    def __init__(self, conf: Config) -> None:
        self.conf = conf

    def ws_handshake(self, ws) -> None:
        if self.conf.client_max_payload is not None:
            ws.client.set_max_payload_size(self.conf.client_max_payload)
        if self.conf.upstream_max_payload is not None:
            ws.upstream.set_max_payload_size(self.conf.upstream_max_payload)
