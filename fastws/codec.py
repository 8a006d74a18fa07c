"""The one place that chooses the frame codec; every other module imports it from here.

The compiled ``fastws._codec`` is used unless it is missing (no compiler at
install time) or ``FASTWS_NO_EXTENSIONS`` is set, as aiohttp does with
``AIOHTTP_NO_EXTENSIONS``; ``fastws._codec_py`` has the same API.
"""

from __future__ import annotations

import os

if os.environ.get("FASTWS_NO_EXTENSIONS"):
    from . import _codec_py as _impl
else:
    try:
        from . import _codec as _impl  # type: ignore[no-redef]
    except ImportError:  # pragma: no cover - depends on the build
        from . import _codec_py as _impl  # type: ignore[no-redef]

EV_NONE = _impl.EV_NONE
EV_DATA = _impl.EV_DATA
EV_PING = _impl.EV_PING
EV_PONG = _impl.EV_PONG
EV_CLOSE = _impl.EV_CLOSE
MAX_HEADER_SIZE = _impl.MAX_HEADER_SIZE
IMPLEMENTATION = _impl.IMPLEMENTATION
FrameParser = _impl.FrameParser
FrameWriter = _impl.FrameWriter
apply_mask = _impl.apply_mask
mask_inplace = _impl.mask_inplace
validate_utf8 = _impl.validate_utf8
build_close_payload = _impl.build_close_payload
parse_close_payload = _impl.parse_close_payload

__all__ = [
    "EV_NONE", "EV_DATA", "EV_PING", "EV_PONG", "EV_CLOSE", "MAX_HEADER_SIZE", "IMPLEMENTATION",
    "FrameParser", "FrameWriter",
    "apply_mask", "mask_inplace", "validate_utf8", "build_close_payload", "parse_close_payload",
]
