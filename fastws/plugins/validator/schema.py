"""Config of validator, after Kong's websocket-validator schema.

``client`` and ``upstream`` are each optional (at least one is required) and
hold a validation per data message type, ``text`` and/or ``binary`` (at least
one)::

    client:
      text: {type: draft4, schema: '{"type": "object", "required": ["name"]}'}

``type`` is the validation kind; ``draft4`` (JSON Schema draft 4) is the only
one, as in Kong. ``schema`` is the JSON Schema as a JSON string. It is decoded
and checked against the draft 4 meta-schema here; the handler compiles it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import fastjsonschema

from .. import field

__all__ = ["Config", "TYPES", "DATA_TYPES", "PEER_FIELDS", "decode_schema", "NO_REMOTE_REFS"]

#: Validation kinds (Kong: VALIDATION_TYPES).
TYPES = ("draft4",)
#: Message types a validation may be given for; ping, pong and close have none.
DATA_TYPES = ("text", "binary")
PEER_FIELDS = ("type", "schema")

DRAFT4_URI = "http://json-schema.org/draft-04/schema#"

# The JSON Schema draft 4 meta-schema (http://json-schema.org/draft-04/schema).
DRAFT4_META_SCHEMA: dict[str, Any] = {
    "id": DRAFT4_URI,
    "$schema": DRAFT4_URI,
    "description": "Core schema meta-schema",
    "definitions": {
        "schemaArray": {"type": "array", "minItems": 1, "items": {"$ref": "#"}},
        "positiveInteger": {"type": "integer", "minimum": 0},
        "positiveIntegerDefault0": {"allOf": [{"$ref": "#/definitions/positiveInteger"}, {"default": 0}]},
        "simpleTypes": {"enum": ["array", "boolean", "integer", "null", "number", "object", "string"]},
        "stringArray": {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True},
    },
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uri"},
        "$schema": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "default": {},
        "multipleOf": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
        "maximum": {"type": "number"},
        "exclusiveMaximum": {"type": "boolean", "default": False},
        "minimum": {"type": "number"},
        "exclusiveMinimum": {"type": "boolean", "default": False},
        "maxLength": {"$ref": "#/definitions/positiveInteger"},
        "minLength": {"$ref": "#/definitions/positiveIntegerDefault0"},
        "pattern": {"type": "string", "format": "regex"},
        "additionalItems": {"anyOf": [{"type": "boolean"}, {"$ref": "#"}], "default": {}},
        "items": {"anyOf": [{"$ref": "#"}, {"$ref": "#/definitions/schemaArray"}], "default": {}},
        "maxItems": {"$ref": "#/definitions/positiveInteger"},
        "minItems": {"$ref": "#/definitions/positiveIntegerDefault0"},
        "uniqueItems": {"type": "boolean", "default": False},
        "maxProperties": {"$ref": "#/definitions/positiveInteger"},
        "minProperties": {"$ref": "#/definitions/positiveIntegerDefault0"},
        "required": {"$ref": "#/definitions/stringArray"},
        "additionalProperties": {"anyOf": [{"type": "boolean"}, {"$ref": "#"}], "default": {}},
        "definitions": {"type": "object", "additionalProperties": {"$ref": "#"}, "default": {}},
        "properties": {"type": "object", "additionalProperties": {"$ref": "#"}, "default": {}},
        "patternProperties": {"type": "object", "additionalProperties": {"$ref": "#"}, "default": {}},
        "dependencies": {"type": "object", "additionalProperties": {
            "anyOf": [{"$ref": "#"}, {"$ref": "#/definitions/stringArray"}]}},
        "enum": {"type": "array", "minItems": 1, "uniqueItems": True},
        "type": {"anyOf": [
            {"$ref": "#/definitions/simpleTypes"},
            {"type": "array", "items": {"$ref": "#/definitions/simpleTypes"},
             "minItems": 1, "uniqueItems": True},
        ]},
        "format": {"type": "string"},
        "allOf": {"$ref": "#/definitions/schemaArray"},
        "anyOf": {"$ref": "#/definitions/schemaArray"},
        "oneOf": {"$ref": "#/definitions/schemaArray"},
        "not": {"$ref": "#"},
    },
    "dependencies": {"exclusiveMaximum": ["maximum"], "exclusiveMinimum": ["minimum"]},
    "default": {},
}


def _refuse_remote(uri: str) -> Any:
    raise fastjsonschema.JsonSchemaDefinitionException(f"remote $ref {uri!r} is not allowed")


class _NoRemoteRefs(dict):
    """fastjsonschema ``handlers`` that refuse every remote ``$ref``.

    Without a handler for a URI scheme, fastjsonschema fetches the URI with
    urllib; a config must not make the proxy fetch anything.
    """

    def __contains__(self, scheme: object) -> bool:
        return True

    def __missing__(self, scheme: str):
        return _refuse_remote


NO_REMOTE_REFS = _NoRemoteRefs()

_meta_validate = None


def _draft4_meta_validate(schema: Any) -> None:
    """Check ``schema`` against the draft 4 meta-schema (compiled on first use)."""
    global _meta_validate
    if _meta_validate is None:
        _meta_validate = fastjsonschema.compile(DRAFT4_META_SCHEMA, handlers=NO_REMOTE_REFS,
                                                use_default=False)
    _meta_validate(schema)


def decode_schema(text: str) -> tuple[Any, str | None]:
    """The decoded JSON Schema and None, or None and an error message (Kong's wording)."""
    try:
        schema = json.loads(text)
    except ValueError as exc:
        return None, f"failed decoding schema: {exc}"
    try:
        _draft4_meta_validate(schema)
    except fastjsonschema.JsonSchemaValueException as exc:
        return None, f"not a valid JSONschema draft 4 schema: {exc.message}"
    return schema, None


def _check_validation(typ: str, value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"{typ}: must be a mapping, got {type(value).__name__}"
    for key in value:
        if key not in PEER_FIELDS:
            return f"{typ}.{key}: unknown field (fields: {', '.join(PEER_FIELDS)})"
    kind, text = value.get("type"), value.get("schema")
    if kind is None:
        return f"{typ}.type: required field missing"
    if kind not in TYPES:
        return f"{typ}.type: expected one of: {', '.join(TYPES)}"
    if text is None:
        return f"{typ}.schema: required field missing"
    if not isinstance(text, str):
        return f"{typ}.schema: must be a string (a JSON Schema as JSON), got {type(text).__name__}"
    _, error = decode_schema(text)
    if error:
        return f"{typ}.schema: {error}"
    return None


def _check_peer(value: dict) -> str | None:
    """One side's validations: ``text`` and/or ``binary``, each ``{type, schema}``."""
    for key in value:
        if key not in DATA_TYPES:
            return f"{key}: unknown field (fields: {', '.join(DATA_TYPES)})"
    if all(value.get(typ) is None for typ in DATA_TYPES):
        return "at least one of these fields must be non-empty: 'text', 'binary'"
    for typ in DATA_TYPES:
        if value.get(typ) is not None:
            error = _check_validation(typ, value[typ])
            if error:
                return error
    return None


@dataclasses.dataclass(frozen=True)
class Config:
    client: dict | None = field(
        None, check=_check_peer,
        doc="Validations of messages from the client: 'text' and/or 'binary', each "
            "{type: draft4, schema: '<JSON Schema as a JSON string>'}.")
    upstream: dict | None = field(
        None, check=_check_peer,
        doc="Validations of messages from the upstream, in the same form as 'client'.")

    def validate(self) -> str | None:
        if self.client is None and self.upstream is None:
            return "at least one of these fields must be non-empty: 'client', 'upstream'"
        return None
