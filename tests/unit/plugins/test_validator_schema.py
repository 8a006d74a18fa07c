"""validator config, after Kong's spec/03-plugins/websocket-validator/01-schema_spec.

Every config goes through ``fastws.plugins.create`` (so the JSON Schemas are also
compiled) and every error is asserted as the full message the user sees.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from fastws.errors import ConfigError
from fastws.plugins import create
from fastws.plugins.validator.handler import ValidatorPlugin
from fastws.plugins.validator.schema import Config

PEERS = ("client", "upstream")
DATA_TYPES = ("text", "binary")
VALIDATION = {"type": "draft4", "schema": json.dumps({"type": "string"})}


def error(raw) -> str:
    with pytest.raises(ConfigError) as info:
        create("validator", raw)
    return str(info.value)


class TestValid:
    @pytest.mark.parametrize("typ", DATA_TYPES)
    @pytest.mark.parametrize("peer", PEERS)
    def test_one_validation(self, peer, typ):
        plugin = create("validator", {peer: {typ: VALIDATION}})
        assert getattr(plugin.conf, peer) == {typ: VALIDATION}
        assert set(plugin.checks) == {peer}
        assert set(plugin.checks[peer]) == {typ}

    def test_all_validations(self):
        draft4 = {"type": "draft4", "schema": json.dumps({
            "type": "object",
            "properties": {"foo": {"type": "string"}, "bar": {"type": "integer"}},
            "required": ["foo", "bar"],
        })}
        raw = {peer: {typ: draft4 for typ in DATA_TYPES} for peer in PEERS}
        plugin = create("validator", raw)
        assert (plugin.conf.client, plugin.conf.upstream) == (raw["client"], raw["upstream"])

    def test_null_entries_count_as_absent(self):
        plugin = create("validator", {"client": {"text": VALIDATION, "binary": None}, "upstream": None})
        assert plugin.conf.upstream is None
        assert set(plugin.checks) == {"client"}
        assert set(plugin.checks["client"]) == {"text"}

    @pytest.mark.parametrize("schema", [
        {},
        {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"},
        {"type": ["string", "null"], "maxLength": 3},
        {"definitions": {"n": {"type": "integer"}}, "items": {"$ref": "#/definitions/n"}},
        {"type": "number", "minimum": 0, "exclusiveMinimum": True},
        {"pattern": "^[a-z]+$"},
    ])
    def test_draft4_schemas(self, schema):
        create("validator", {"client": {"text": {"type": "draft4", "schema": json.dumps(schema)}}})

    def test_config_is_frozen_and_documented(self):
        conf = create("validator", {"client": {"text": VALIDATION}}).conf
        with pytest.raises(dataclasses.FrozenInstanceError):
            conf.client = None
        for spec in dataclasses.fields(Config):
            assert spec.metadata["doc"]
            assert spec.default is None

    def test_name_and_priority(self):
        # Kong's websocket-validator handler: PRIORITY = 1006.
        assert (ValidatorPlugin.name, ValidatorPlugin.priority) == ("validator", 1006)


class TestInvalid:
    @pytest.mark.parametrize("raw", [{}, None, {"client": None, "upstream": None}])
    def test_at_least_one_peer(self, raw):
        assert error(raw) == ("plugin 'validator': config: at least one of these fields must be non-empty: "
                              "'client', 'upstream'")

    @pytest.mark.parametrize("peer", PEERS)
    @pytest.mark.parametrize("value", [{}, {"text": None}, {"text": None, "binary": None}])
    def test_at_least_one_type(self, peer, value):
        assert error({peer: value}) == (f"plugin 'validator': config.{peer}: at least one of these fields "
                                        f"must be non-empty: 'text', 'binary'")

    @pytest.mark.parametrize("typ", DATA_TYPES)
    @pytest.mark.parametrize("peer", PEERS)
    def test_type_required(self, peer, typ):
        raw = {peer: {typ: {"schema": json.dumps({"type": "string"})}}}
        assert error(raw) == f"plugin 'validator': config.{peer}: {typ}.type: required field missing"

    @pytest.mark.parametrize("typ", DATA_TYPES)
    @pytest.mark.parametrize("peer", PEERS)
    def test_schema_required(self, peer, typ):
        raw = {peer: {typ: {"type": "draft4"}}}
        assert error(raw) == f"plugin 'validator': config.{peer}: {typ}.schema: required field missing"

    @pytest.mark.parametrize("kind", ["draft7", "Draft4", "json", 4])
    def test_only_draft4(self, kind):
        raw = {"client": {"text": {"type": kind, "schema": "{}"}}}
        assert error(raw) == "plugin 'validator': config.client: text.type: expected one of: draft4"

    @pytest.mark.parametrize("typ", ["close", "ping", "pong", "continuation"])
    @pytest.mark.parametrize("peer", PEERS)
    def test_no_validators_for_non_data_frames(self, peer, typ):
        raw = {peer: {typ: VALIDATION, "text": VALIDATION, "binary": VALIDATION}}
        assert error(raw) == f"plugin 'validator': config.{peer}: {typ}: unknown field (fields: text, binary)"

    def test_unknown_validation_field(self):
        raw = {"client": {"text": {**VALIDATION, "strict": True}}}
        assert error(raw) == ("plugin 'validator': config.client: text.strict: "
                              "unknown field (fields: type, schema)")

    def test_unknown_top_field(self):
        assert error({"client": {"text": VALIDATION}, "peer": {}}) == (
            "plugin 'validator': config.peer: unknown field (fields: client, upstream)")

    @pytest.mark.parametrize("peer", PEERS)
    @pytest.mark.parametrize("value", ["text", ["text"], 1])
    def test_peer_not_a_mapping(self, peer, value):
        assert error({peer: value}) == f"plugin 'validator': config.{peer}: must be a mapping or null"

    @pytest.mark.parametrize("value, got", [("draft4", "str"), ([VALIDATION], "list")])
    def test_validation_not_a_mapping(self, value, got):
        assert error({"upstream": {"binary": value}}) == (
            f"plugin 'validator': config.upstream: binary: must be a mapping, got {got}")

    @pytest.mark.parametrize("schema, got", [({"type": "string"}, "dict"), (1, "int")])
    def test_schema_not_a_string(self, schema, got):
        raw = {"client": {"text": {"type": "draft4", "schema": schema}}}
        assert error(raw) == (f"plugin 'validator': config.client: text.schema: must be a string "
                              f"(a JSON Schema as JSON), got {got}")

    @pytest.mark.parametrize("peer, typ, schema, reason", [
        ("client", "text", "oops", "Expecting value: line 1 column 1 (char 0)"),
        ("client", "binary", "!!!", "Expecting value: line 1 column 1 (char 0)"),
        ("upstream", "text", "{",
         "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        ("upstream", "binary", "}", "Expecting value: line 1 column 1 (char 0)"),
        ("client", "text", "", "Expecting value: line 1 column 1 (char 0)"),
    ])
    def test_invalid_json(self, peer, typ, schema, reason):
        raw = {peer: {typ: {"type": "draft4", "schema": schema}}}
        assert error(raw) == (f"plugin 'validator': config.{peer}: {typ}.schema: "
                              f"failed decoding schema: {reason}")

    @pytest.mark.parametrize("schema, reason", [
        ({"type": "object", "properties": "NOPE"}, "data.properties must be object"),
        ("a string", "data must be object"),
        ([{"type": "string"}], "data must be object"),
        ({"type": "strin"}, "data.type cannot be validated by any definition"),
        ({"required": []}, "data.required must contain at least 1 items"),
        ({"minLength": -1}, "data.minLength must be bigger than or equal to 0"),
        ({"pattern": "("}, "data.pattern must be a valid regex"),
        ({"exclusiveMinimum": True}, "data missing dependency minimum for exclusiveMinimum"),
    ])
    def test_not_a_draft4_schema(self, schema, reason):
        raw = {"client": {"text": {"type": "draft4", "schema": json.dumps(schema)}}}
        assert error(raw) == (f"plugin 'validator': config.client: text.schema: "
                              f"not a valid JSONschema draft 4 schema: {reason}")

    @pytest.mark.parametrize("ref, reason", [
        ("#/definitions/nope", "Unresolvable ref: definitions"),
        ("http://127.0.0.1:9/schema.json", "remote $ref 'http://127.0.0.1:9/schema.json' is not allowed"),
        ("file:///etc/passwd", "remote $ref 'file:///etc/passwd' is not allowed"),
    ])
    def test_refs_fail_at_compile(self, ref, reason):
        # Valid by the meta-schema; the compiler refuses the reference (never fetched).
        raw = {"upstream": {"text": {"type": "draft4", "schema": json.dumps({"$ref": ref})}}}
        assert error(raw) == (f"plugin 'validator': config.upstream: text.schema: "
                              f"not a valid JSONschema draft 4 schema: {reason}")
