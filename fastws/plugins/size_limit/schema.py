"""Config of size-limit, after Kong's websocket-size-limit schema.

Both limits are optional, but at least one must be set; each is 1..33554432
(32 MiB, the most any side may be given, SPEC section 4).
"""

from __future__ import annotations

import dataclasses

from ...pdk import MAX_PAYLOAD_LIMIT
from .. import field

__all__ = ["Config"]


def _check_limit(value: int) -> str | None:
    if not 1 <= value <= MAX_PAYLOAD_LIMIT:
        return f"value should be between 1 and {MAX_PAYLOAD_LIMIT}"
    return None


@dataclasses.dataclass(frozen=True)
class Config:
    client_max_payload: int | None = field(
        None, check=_check_limit,
        doc="Largest message the client may send, in bytes (default limit: 1 MiB).")
    upstream_max_payload: int | None = field(
        None, check=_check_limit,
        doc="Largest message the upstream may send, in bytes (default limit: 16 MiB).")

    def validate(self) -> str | None:
        if self.client_max_payload is None and self.upstream_max_payload is None:
            return ("at least one of these fields must be non-empty: "
                    "'client_max_payload', 'upstream_max_payload'")
        return None
