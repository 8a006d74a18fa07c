"""RFC 6455 constants shared by every layer, and a ``Frame`` value for cold paths.

The hot path never builds ``Frame`` objects: the codec reports offsets into the
read buffer.  ``Frame`` is for tests, plugins and error paths.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = [
    "Opcode",
    "CloseCode",
    "Frame",
    "DATA_OPCODES",
    "CONTROL_OPCODES",
    "MAX_CONTROL_PAYLOAD",
    "MAX_HEADER_SIZE",
    "close_code_is_valid",
]


class Opcode(enum.IntEnum):
    """Frame opcodes, RFC 6455 §5.2 and §11.8."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


DATA_OPCODES = frozenset({Opcode.CONT, Opcode.TEXT, Opcode.BINARY})
CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})

#: RFC 6455 §5.5: "All control frames MUST have a payload length of 125 bytes or less".
MAX_CONTROL_PAYLOAD = 125
#: 2 bytes of flags and length, 8 bytes of extended length, 4 bytes of mask key.
MAX_HEADER_SIZE = 14


class CloseCode(enum.IntEnum):
    """Close codes, RFC 6455 §7.4.1 and the IANA registry."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    # 1004 is reserved; 1005 and 1006 must never be sent on the wire.
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015

    @classmethod
    def _missing_(cls, value):
        # Registered-elsewhere and private codes (3000-4999) are valid ints
        # without a name: keep them as pseudo-members instead of failing.
        if isinstance(value, int):
            member = int.__new__(cls, value)
            member._name_ = f"CODE_{value}"
            member._value_ = value
            return member
        return None


def close_code_is_valid(code: int) -> bool:
    """Whether a peer may put ``code`` in a close frame (RFC 6455 §7.4).

    1000-1003 and 1007-1014 are defined for use on the wire; 1004 is reserved,
    1005, 1006 and 1015 are for local reporting only, the rest of 1000-2999 is
    reserved for future RFCs, 3000-3999 is registered with IANA and 4000-4999
    is private use.
    """
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """One frame, decoded: for tests, plugins and cold paths."""

    opcode: Opcode
    payload: bytes
    fin: bool = True
    rsv1: bool = False
