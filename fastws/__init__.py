"""fastws: a WebSocket reverse proxy with Kong-style Python plugins."""

from .errors import (
    ConfigError,
    FastWSError,
    InvalidPayloadData,
    PayloadTooBig,
    PDKError,
    ProtocolError,
)
from .frames import CloseCode, Frame, Opcode

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "CloseCode",
    "ConfigError",
    "FastWSError",
    "Frame",
    "InvalidPayloadData",
    "Opcode",
    "PayloadTooBig",
    "PDKError",
    "ProtocolError",
]
