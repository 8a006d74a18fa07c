"""validator: close the connection on a message that fails its JSON Schema.

After Kong's websocket-validator: each configured side and message type has a
JSON Schema (draft 4), compiled once when the plugin is built. A message is
decoded as JSON -- binary ones too, as Kong's cjson decodes any payload -- and
validated; invalid JSON or a failed validation closes the sender with 1007
"Invalid Frame Payload Data" (Kong's STATUS.INVALID_DATA) and the peer with a
close of its own. Message types with no schema (and ping, pong, close) pass.

A side with no validations defines no frame phase, so it stays in passthrough.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

import fastjsonschema

from ...errors import ConfigError
from ...frames import CloseCode
from .. import Plugin
from .schema import DATA_TYPES, DRAFT4_URI, NO_REMOTE_REFS, Config, decode_schema

__all__ = ["ValidatorPlugin", "INVALID_DATA_REASON"]

log = logging.getLogger("fastws.plugins.validator")

INVALID_DATA_REASON = "Invalid Frame Payload Data"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def compile_draft4(schema: Any) -> Callable[[Any], Any]:
    """A validator for a decoded draft 4 schema (raises fastjsonschema errors).

    fastjsonschema picks the draft from ``$schema``; Kong always validates as
    draft 4, so the copy compiled here says draft 4 whatever the original says.
    """
    return fastjsonschema.compile({**schema, "$schema": DRAFT4_URI},
                                  handlers=NO_REMOTE_REFS, use_default=False)


def _validation(validate: Callable[[Any], Any]) -> Callable[[bytes], str | None]:
    """A check of one payload: None when valid, else why not."""

    def check(data: bytes) -> str | None:
        try:
            document = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:     # UnicodeDecodeError is a ValueError
            return f"invalid JSON: {exc}"
        try:
            validate(document)
        except (fastjsonschema.JsonSchemaException, RecursionError) as exc:
            return str(exc)
        return None

    return check


class ValidatorPlugin(Plugin):
    name = "validator"
    priority = 1006             # Kong's websocket-validator PRIORITY
    Config = Config

    def __init__(self, conf: Config) -> None:
        self.conf = conf
        self.checks: dict[str, dict[str, Callable[[bytes], str | None]]] = {}
        for side in ("client", "upstream"):
            peer = getattr(conf, side)
            if peer is None:
                # Hide the class's handler: the chain leaves this direction in passthrough.
                setattr(self, f"ws_{side}_frame", None)
                continue
            self.checks[side] = {}
            for typ in DATA_TYPES:
                validation = peer.get(typ)
                if validation is None:
                    continue
                schema, error = decode_schema(validation["schema"])
                if error is None:
                    try:
                        validate = compile_draft4(schema)
                    except fastjsonschema.JsonSchemaDefinitionException as exc:   # a bad or remote $ref
                        error = f"not a valid JSONschema draft 4 schema: {exc}"
                    except Exception as exc:    # whatever else the code generator trips on
                        error = f"not a valid JSONschema draft 4 schema: {type(exc).__name__}: {exc}"
                if error is not None:
                    raise ConfigError(f"plugin {self.name!r}: config.{side}: {typ}.schema: {error}")
                self.checks[side][typ] = _validation(validate)

    def _validate(self, direction, side: str) -> None:
        data, typ, _ = direction.get_frame()
        check = self.checks[side].get(typ)
        if check is None:
            return
        error = check(data)
        if error is not None:
            log.debug("closing WebSocket connection after an invalid %s message from the %s: %s",
                      typ, side, error)
            # The reason is Kong's; the validation error would not fit in a close frame.
            direction.close(CloseCode.INVALID_DATA, INVALID_DATA_REASON)

    def ws_client_frame(self, ws) -> None:
        self._validate(ws.client, "client")

    def ws_upstream_frame(self, ws) -> None:
        self._validate(ws.upstream, "upstream")
