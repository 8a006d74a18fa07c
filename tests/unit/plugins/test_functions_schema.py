"""pre-function / post-function config, after Kong's spec/03-plugins/33-serverless-functions/01-schema_spec.

Every config goes through ``fastws.plugins.create`` (so the snippets are also
compiled) and every error is asserted as the full message the user sees.
"""

from __future__ import annotations

import dataclasses

import pytest

from fastws.errors import ConfigError
from fastws.plugins import PHASES, create
from fastws.plugins.functions.handler import PostFunctionPlugin, PreFunctionPlugin
from fastws.plugins.functions.schema import Config

NAMES = ("pre-function", "post-function")
AT_LEAST_ONE = ("at least one of these fields must be non-empty: "
                "'ws_handshake', 'ws_client_frame', 'ws_upstream_frame', 'ws_close'")


def error(name, raw) -> str:
    with pytest.raises(ConfigError) as info:
        create(name, raw)
    return str(info.value)


@pytest.mark.parametrize("name", NAMES)
class TestValid:
    @pytest.mark.parametrize("phase", PHASES)
    def test_one_phase(self, name, phase):
        plugin = create(name, {phase: ["x = 1", "y = 2"]})
        assert getattr(plugin.conf, phase) == ["x = 1", "y = 2"]
        assert len(plugin.code[phase]) == 2
        for other in PHASES:
            if other != phase:
                assert getattr(plugin.conf, other) == []

    def test_all_phases(self, name):
        raw = {phase: [f"phase = {phase!r}"] for phase in PHASES}
        plugin = create(name, raw)
        assert set(plugin.code) == set(PHASES)

    def test_empty_phase_lists_beside_a_full_one(self, name):
        plugin = create(name, {"ws_handshake": [], "ws_close": ["pass"]})
        assert set(plugin.code) == {"ws_close"}

    def test_multiline_snippet(self, name):
        source = "data, typ, status = ws.client.get_frame()\nif typ == 'text':\n    ws.client.drop_frame()\n"
        create(name, {"ws_client_frame": [source]})


class TestPlugins:
    def test_names_and_priorities(self):
        # Kong: pre-function _handler(1000000), post-function _handler(-1000).
        assert (PreFunctionPlugin.name, PreFunctionPlugin.priority) == ("pre-function", 1000000)
        assert (PostFunctionPlugin.name, PostFunctionPlugin.priority) == ("post-function", -1000)

    def test_config_is_frozen_and_documented(self):
        conf = create("pre-function", {"ws_close": ["pass"]}).conf
        with pytest.raises(dataclasses.FrozenInstanceError):
            conf.ws_close = []
        assert [spec.name for spec in dataclasses.fields(Config)] == list(PHASES)
        for spec in dataclasses.fields(Config):
            assert spec.metadata["doc"]
            assert spec.default_factory() == []


@pytest.mark.parametrize("name", NAMES)
class TestInvalid:
    @pytest.mark.parametrize("raw", [{}, None, {phase: [] for phase in PHASES}])
    def test_at_least_one_phase(self, name, raw):
        assert error(name, raw) == f"plugin {name!r}: config: {AT_LEAST_ONE}"

    @pytest.mark.parametrize("phase", PHASES)
    def test_syntax_error_names_phase_and_index(self, name, phase):
        raw = {phase: ["x = 1", "x = = 2"]}
        assert error(name, raw) == (f"plugin {name!r}: config.{phase}[1]: "
                                    f"error parsing {name}: invalid syntax (line 1)")

    @pytest.mark.parametrize("source, reason", [
        ("if True:\nx = 1", "expected an indented block after 'if' statement on line 1 (line 2)"),
        ("return 1", "'return' outside function (line 1)"),
        ("await ws.client.send('x')", "'await' outside function (line 1)"),
        ("x = (", "'(' was never closed (line 1)"),
    ])
    def test_compile_errors(self, name, source, reason):
        assert error(name, {"ws_client_frame": ["pass", "pass", source]}) == (
            f"plugin {name!r}: config.ws_client_frame[2]: error parsing {name}: {reason}")

    def test_null_byte(self, name):
        # A ValueError before Python 3.12, a SyntaxError (with a line number) since.
        assert error(name, {"ws_close": ["x = '\x00'"]}).startswith(
            f"plugin {name!r}: config.ws_close[0]: error parsing {name}: "
            f"source code string cannot contain null bytes")

    @pytest.mark.parametrize("value", ["x = 1", {"x": 1}, 1])
    def test_phase_not_a_list(self, name, value):
        assert error(name, {"ws_upstream_frame": value}) == (
            f"plugin {name!r}: config.ws_upstream_frame: must be a list, got {type(value).__name__}")

    @pytest.mark.parametrize("item, got", [
        (1, "int"), (None, "NoneType"), (["x = 1"], "list"), (b"x = 1", "bytes"),
    ])
    def test_snippet_not_a_string(self, name, item, got):
        assert error(name, {"ws_handshake": ["pass", item]}) == (
            f"plugin {name!r}: config.ws_handshake: item 1: must be a string (Python source), got {got}")

    @pytest.mark.parametrize("field", ["functions", "access", "log", "ws_frame"])
    def test_unknown_phase(self, name, field):
        assert error(name, {field: ["pass"]}) == (
            f"plugin {name!r}: config.{field}: unknown field "
            f"(fields: ws_handshake, ws_client_frame, ws_upstream_frame, ws_close)")
