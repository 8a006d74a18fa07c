"""Loading plugins by name, checking their config, and building each service's chain.

``fastws.plugins.load_class`` / ``build_config`` / ``create`` and
``fastws.worker.build_chains`` (SPEC sections 2 and 5).  Every error is asserted
as the whole message the user sees: it names the plugin and the field, like
Kong's schema errors.  The plugin classes used here live in this module and are
loaded by ``module:Class`` like any user plugin.
"""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
import yaml

from fastws.config import load_config
from fastws.errors import ConfigError
from fastws.plugins import BUILTIN, PHASES, Plugin, build_config, create, field, load_class
from fastws.plugins.chain import Chain
from fastws.worker import build_chains

HERE = __name__         # this module, as importable by name (tests/unit is on sys.path)


# -- plugins to load -----------------------------------------------------------------------------------


def _positive(value: int) -> str | None:
    return None if value > 0 else "must be positive"


@dataclasses.dataclass(frozen=True)
class MeterConfig:
    limit: int = field(doc="Required: no default.", check=_positive)
    ratio: float = field(1.0, doc="Any number.")
    label: str | None = field(None, doc="A string or null.")
    tags: list = field(default_factory=list, doc="A list.")
    strict: bool = field(False, doc="A boolean.")

    def validate(self) -> str | None:
        return "ratio must not exceed limit" if self.ratio > self.limit else None


class Meter(Plugin):
    name = "meter"
    priority = 10
    Config = MeterConfig

    def ws_client_frame(self, ws):
        pass


class Marker(Plugin):
    """No schema: the config mapping is handed over as it is."""

    name = "marker"
    priority = 5

    def ws_close(self, ws):
        pass


class Other(Plugin):
    name = "other"
    priority = 5

    def ws_handshake(self, ws):
        pass


class High(Plugin):
    name = "high"
    priority = 1000

    def ws_upstream_frame(self, ws):
        pass


class FailsToStart(Plugin):
    name = "fails"

    def __init__(self, conf):
        raise ValueError(f"cannot start with {conf!r}")

    def ws_close(self, ws):
        pass


class RaisesConfigError(Plugin):
    def __init__(self, conf):
        raise ConfigError("plugin 'custom': config.path: no such file")

    def ws_close(self, ws):
        pass


class NoPhases(Plugin):
    name = "no-phases"


class Outer:
    class Inner(Plugin):
        name = "inner"

        def ws_handshake(self, ws):
            pass


def not_a_class(ws):
    pass


def error(call, *args) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args)
    return str(info.value)


# -- load_class ---------------------------------------------------------------------------------------------


class TestLoadClass:
    def test_module_class(self):
        assert load_class(f"{HERE}:Meter") is Meter

    def test_nested_class(self):
        assert load_class(f"{HERE}:Outer.Inner") is Outer.Inner

    @pytest.mark.parametrize("name", sorted(BUILTIN))
    def test_builtin_names(self, name):
        cls = load_class(name)
        assert isinstance(cls, type)
        assert any(callable(getattr(cls, phase, None)) for phase in PHASES)

    def test_unknown_builtin_name(self):
        assert error(load_class, "size-limits") == (
            "plugin 'size-limits': not a built-in plugin "
            "(post-function, pre-function, size-limit, validator) nor 'module:Class'")

    def test_module_not_importable(self):
        assert error(load_class, "no_such_module_for_fastws:Thing") == (
            "plugin 'no_such_module_for_fastws:Thing': cannot import 'no_such_module_for_fastws': "
            "ModuleNotFoundError: No module named 'no_such_module_for_fastws'")

    def test_module_failing_at_import(self, tmp_path, monkeypatch):
        (tmp_path / "fastws_broken_plugin.py").write_text("raise RuntimeError('kaput')\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        assert error(load_class, "fastws_broken_plugin:Plugin") == (
            "plugin 'fastws_broken_plugin:Plugin': cannot import 'fastws_broken_plugin': RuntimeError: kaput")

    def test_class_missing(self):
        assert error(load_class, f"{HERE}:Missing") == (
            f"plugin '{HERE}:Missing': module '{HERE}' has no 'Missing'")

    def test_nested_class_missing(self):
        assert error(load_class, f"{HERE}:Outer.Missing") == (
            f"plugin '{HERE}:Outer.Missing': module '{HERE}' has no 'Outer.Missing'")

    def test_not_a_class(self):
        assert error(load_class, f"{HERE}:not_a_class") == (
            f"plugin '{HERE}:not_a_class': '{HERE}:not_a_class' is not a class")

    def test_no_phases(self):
        assert error(load_class, f"{HERE}:NoPhases") == (
            f"plugin '{HERE}:NoPhases': '{HERE}:NoPhases' defines none of the phases "
            "ws_handshake, ws_client_frame, ws_upstream_frame, ws_close")


# -- build_config / create ----------------------------------------------------------------------------


class TestBuildConfig:
    def check(self, raw) -> str:
        return error(build_config, "meter", Meter, raw)

    def test_valid(self):
        raw = {"limit": 5, "ratio": 2, "label": "x", "tags": ["a"], "strict": True}
        conf = build_config("meter", Meter, raw)
        assert conf == MeterConfig(limit=5, ratio=2, label="x", tags=["a"], strict=True)
        with pytest.raises(dataclasses.FrozenInstanceError):
            conf.limit = 6

    def test_defaults(self):
        assert build_config("meter", Meter, {"limit": 3}) == MeterConfig(limit=3)

    def test_unknown_field(self):
        assert self.check({"limit": 1, "limt": 2}) == (
            "plugin 'meter': config.limt: unknown field (fields: limit, ratio, label, tags, strict)")

    @pytest.mark.parametrize("raw,message", [
        ({"limit": "5"}, "config.limit: must be an integer, got str"),
        ({"limit": True}, "config.limit: must be an integer, got bool"),
        ({"limit": 1.5}, "config.limit: must be an integer, got float"),
        ({"limit": 5, "ratio": "x"}, "config.ratio: must be a number, got str"),
        ({"limit": 5, "ratio": False}, "config.ratio: must be a number, got bool"),
        ({"limit": 5, "label": 3}, "config.label: must be a string or null"),
        ({"limit": 5, "tags": "a"}, "config.tags: must be a list, got str"),
        ({"limit": 5, "strict": "yes"}, "config.strict: must be a boolean, got str"),
    ])
    def test_wrong_type(self, raw, message):
        assert self.check(raw) == f"plugin 'meter': {message}"

    def test_required_field_missing(self):
        assert self.check({}) == "plugin 'meter': config.limit: required"
        assert self.check(None) == "plugin 'meter': config.limit: required"

    def test_check_message(self):
        assert self.check({"limit": 0}) == "plugin 'meter': config.limit: must be positive"

    def test_validate_message(self):
        assert self.check({"limit": 1, "ratio": 2.5}) == "plugin 'meter': config: ratio must not exceed limit"

    def test_not_a_mapping(self):
        assert self.check([1, 2]) == "plugin 'meter': config: must be a mapping"

    def test_no_schema_takes_the_mapping(self):
        assert build_config("marker", Marker, {"anything": [1]}) == {"anything": [1]}
        assert build_config("marker", Marker, None) == {}
        assert error(build_config, "marker", Marker, "text") == "plugin 'marker': config: must be a mapping"


class TestCreate:
    def test_instance_gets_its_config(self):
        plugin = create(f"{HERE}:Meter", {"limit": 2})
        assert isinstance(plugin, Meter) and plugin.conf == MeterConfig(limit=2)

    def test_config_errors_name_the_plugin_as_configured(self):
        assert error(create, f"{HERE}:Meter", {"limit": 0}) == (
            f"plugin '{HERE}:Meter': config.limit: must be positive")

    def test_init_failure(self):
        assert error(create, f"{HERE}:FailsToStart", {"x": 1}) == (
            f"plugin '{HERE}:FailsToStart': failed to start: ValueError: cannot start with {{'x': 1}}")

    def test_init_config_error_passes_through(self):
        assert error(create, f"{HERE}:RaisesConfigError", None) == (
            "plugin 'custom': config.path: no such file")


# -- build_chains --------------------------------------------------------------------------------------


def config_file(tmp_path, text: str):
    path = tmp_path / "fastws.yaml"
    path.write_text(textwrap.dedent(text).replace("HERE", HERE))
    return load_config(str(path))


def describe(chain: Chain | None):
    if chain is None:
        return None
    return [(type(plugin).__name__, plugin.conf) for plugin in chain.plugins]


class TestBuildChains:
    def test_global_and_service_plugins(self, tmp_path):
        config = config_file(tmp_path, """
            plugins:
              - {name: "HERE:Marker", config: {mark: global}}
              - {name: "HERE:Other", config: {mark: global}}
              - {name: "HERE:FailsToStart", enabled: false}
            services:
              - name: plain
                url: ws://127.0.0.1:9/
                routes: [{paths: [/plain]}]
              - name: overrides
                url: ws://127.0.0.1:9/
                routes: [{paths: [/overrides]}]
                plugins:
                  - {name: "HERE:Marker", config: {mark: service}}
                  - {name: "HERE:High", config: {mark: service}}
              - name: disables
                url: ws://127.0.0.1:9/
                routes: [{paths: [/disables]}]
                plugins:
                  - {name: "HERE:Other", enabled: false, config: {mark: service}}
                  - {name: "HERE:FailsToStart", enabled: false}
        """)
        chains = build_chains(config)
        assert set(chains) == {"plain", "overrides", "disables"}
        assert describe(chains["plain"]) == [("Marker", {"mark": "global"}), ("Other", {"mark": "global"})]
        # The service's Marker replaces the global one; priority orders the chain (High 1000
        # first), equal priorities keep global-before-service order.
        assert describe(chains["overrides"]) == [
            ("High", {"mark": "service"}), ("Other", {"mark": "global"}), ("Marker", {"mark": "service"})]
        # A disabled entry is not loaded (FailsToStart would fail) and replaces nothing: the
        # global Other still applies, as in Kong.
        assert describe(chains["disables"]) == [("Marker", {"mark": "global"}), ("Other", {"mark": "global"})]
        # One instance per configured entry, shared by every service that uses it.
        assert chains["plain"].plugins[0] is chains["disables"].plugins[0]
        assert chains["plain"].has("ws_close") and chains["plain"].has("ws_handshake")
        assert not chains["plain"].has("ws_client_frame")

    def test_service_without_plugins_gets_none(self, tmp_path):
        config = config_file(tmp_path, """
            plugins:
              - {name: "HERE:Marker", enabled: false}
            services:
              - name: none
                url: ws://127.0.0.1:9/
                routes: [{paths: [/none]}]
              - name: only-disabled
                url: ws://127.0.0.1:9/
                routes: [{paths: [/off]}]
                plugins:
                  - {name: "HERE:Other", enabled: false}
              - name: some
                url: ws://127.0.0.1:9/
                routes: [{paths: [/some]}]
                plugins:
                  - {name: "HERE:Meter", config: {limit: 4}}
        """)
        chains = build_chains(config)
        assert chains["none"] is None and chains["only-disabled"] is None
        assert describe(chains["some"]) == [("Meter", MeterConfig(limit=4))]

    def test_errors_name_the_file_and_the_entry(self, tmp_path):
        path = tmp_path / "fastws.yaml"
        path.write_text(yaml.safe_dump({"services": [{
            "name": "s", "url": "ws://127.0.0.1:9/", "routes": [{"paths": ["/"]}],
            "plugins": [{"name": f"{HERE}:Marker"}, {"name": f"{HERE}:Meter", "config": {"limit": "x"}}],
        }]}))
        with pytest.raises(ConfigError) as info:
            build_chains(load_config(str(path)))
        assert str(info.value) == (
            f"{path}: services[0].plugins[1]: plugin '{HERE}:Meter': "
            "config.limit: must be an integer, got str")
