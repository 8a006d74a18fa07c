"""size-limit config, after Kong's spec/03-plugins/websocket-size-limit/01-schema_spec.

Every config goes through ``fastws.plugins.create`` and every error is asserted
as the full message the user sees (plugin, field, reason).
"""

from __future__ import annotations

import dataclasses

import pytest

from fastws.errors import ConfigError
from fastws.plugins import create
from fastws.plugins.size_limit.handler import SizeLimitPlugin
from fastws.plugins.size_limit.schema import Config

MAX = 33554432
RANGE = f"value should be between 1 and {MAX}"


def error(raw) -> str:
    with pytest.raises(ConfigError) as info:
        create("size-limit", raw)
    return str(info.value)


class TestValid:
    @pytest.mark.parametrize("raw", [
        {"client_max_payload": 1024},
        {"upstream_max_payload": 1024},
        {"client_max_payload": 1024, "upstream_max_payload": 1024},
        {"client_max_payload": 1, "upstream_max_payload": MAX},
        {"client_max_payload": MAX, "upstream_max_payload": None},
    ])
    def test_accepted(self, raw):
        plugin = create("size-limit", raw)
        assert isinstance(plugin, SizeLimitPlugin)
        for name in ("client_max_payload", "upstream_max_payload"):
            assert getattr(plugin.conf, name) == raw.get(name)

    def test_config_is_frozen_and_documented(self):
        conf = create("size-limit", {"client_max_payload": 10}).conf
        with pytest.raises(dataclasses.FrozenInstanceError):
            conf.client_max_payload = 20
        for spec in dataclasses.fields(Config):
            assert spec.metadata["doc"]
            assert spec.default is None

    def test_name_and_priority(self):
        # Kong's websocket-size-limit handler: PRIORITY = 1003.
        assert (SizeLimitPlugin.name, SizeLimitPlugin.priority) == ("size-limit", 1003)


class TestInvalid:
    @pytest.mark.parametrize("raw", [{}, None, {"client_max_payload": None},
                                     {"client_max_payload": None, "upstream_max_payload": None}])
    def test_at_least_one(self, raw):
        assert error(raw) == ("plugin 'size-limit': config: at least one of these fields must be non-empty: "
                              "'client_max_payload', 'upstream_max_payload'")

    @pytest.mark.parametrize("value", [0, -1, MAX + 1])
    @pytest.mark.parametrize("name", ["client_max_payload", "upstream_max_payload"])
    def test_range(self, name, value):
        assert error({name: value}) == f"plugin 'size-limit': config.{name}: {RANGE}"

    @pytest.mark.parametrize("value", ["1024", 1024.0, True, [1]])
    @pytest.mark.parametrize("name", ["client_max_payload", "upstream_max_payload"])
    def test_type(self, name, value):
        assert error({name: value}) == f"plugin 'size-limit': config.{name}: must be an integer or null"

    def test_unknown_field(self):
        assert error({"client_max_payload": 1, "max_payload": 2}) == (
            "plugin 'size-limit': config.max_payload: unknown field "
            "(fields: client_max_payload, upstream_max_payload)")

    def test_not_a_mapping(self):
        assert error([1024]) == "plugin 'size-limit': config: must be a mapping"
