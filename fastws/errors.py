"""Exceptions raised by fastws.

The tree::

    FastWSError
    ├── ConfigError               a configuration file or flag is invalid
    ├── ProtocolError             a peer broke RFC 6455; carries the close code (1002)
    │   ├── InvalidPayloadData    invalid UTF-8 in a text message or close reason (1007)
    │   └── PayloadTooBig         a message over the size limit (1009)
    └── PDKError                  a plugin used the PDK wrongly

Protocol errors carry the close code to send to the peer that caused them, as
``wsproto``'s ``ParseFailed(msg, code)`` and picows' ``WSProtocolError(code, msg)``
do: the layer that maps an error to a close frame never has to guess.
"""

from __future__ import annotations

from .frames import CloseCode

__all__ = [
    "FastWSError",
    "ConfigError",
    "ProtocolError",
    "InvalidPayloadData",
    "PayloadTooBig",
    "PDKError",
]


class FastWSError(Exception):
    """Base class of every exception fastws raises on purpose."""


class ConfigError(FastWSError):
    """A configuration file or command-line flag is invalid."""


class ProtocolError(FastWSError):
    """A peer violated RFC 6455; ``code`` is the close code to answer with."""

    default_code = CloseCode.PROTOCOL_ERROR

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = CloseCode(code if code is not None else self.default_code)

    def __reduce__(self):  # keep the code across pickling (multiprocessing)
        return (type(self), (str(self), int(self.code)))


class InvalidPayloadData(ProtocolError):
    """A text message or a close reason is not valid UTF-8 (RFC 6455 §8.1)."""

    default_code = CloseCode.INVALID_DATA


class PayloadTooBig(ProtocolError):
    """A message is larger than the receiving side allows."""

    default_code = CloseCode.MESSAGE_TOO_BIG


class PDKError(FastWSError):
    """A plugin called a PDK function wrongly (phase, direction or argument)."""
