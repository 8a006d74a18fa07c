"""Plugins: the base class, configuration schemas, and loading by name.

A plugin is a class with a ``name``, a ``priority`` (higher runs first, as in
Kong) and the phase handlers it needs -- ``ws_handshake``, ``ws_client_frame``,
``ws_upstream_frame``, ``ws_close`` -- each taking the connection's PDK object
``ws`` (``fastws.pdk``).  A phase a plugin does not define costs nothing: a
direction no plugin looks at stays in passthrough.

Configuration: a plugin may declare ``Config``, a frozen dataclass whose fields
carry defaults and a ``doc`` (and optionally a ``check`` callable returning an
error message or None) in their metadata, plus an optional ``validate()``
method for rules across fields.  The config from the file is checked against it
once, at start-up, and the plugin is built with the dataclass instance; errors
name the plugin and the field, like Kong's schema errors.

Names: a built-in name (``size-limit``, ``validator``, ``pre-function``,
``post-function``) or ``module:Class`` for any importable class.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from typing import Any

from ..errors import ConfigError

__all__ = ["Plugin", "PHASES", "BUILTIN", "load_class", "build_config", "create", "field"]

PHASES = ("ws_handshake", "ws_client_frame", "ws_upstream_frame", "ws_close")

#: Built-in plugins: name -> "module:Class" (imported only when a config uses them).
BUILTIN = {
    "size-limit": "fastws.plugins.size_limit.handler:SizeLimitPlugin",
    "validator": "fastws.plugins.validator.handler:ValidatorPlugin",
    "pre-function": "fastws.plugins.functions.handler:PreFunctionPlugin",
    "post-function": "fastws.plugins.functions.handler:PostFunctionPlugin",
}


class Plugin:
    """Base class of fastws plugins (subclassing it is optional; the shape is what counts)."""

    name: str = ""
    priority: int = 0
    #: A frozen dataclass describing the plugin's config, or None to take any mapping.
    Config: type | None = None

    def __init__(self, conf: Any) -> None:
        self.conf = conf


def field(default: Any = dataclasses.MISSING, *, doc: str, check=None, default_factory=dataclasses.MISSING):
    """A config field with its documentation and an optional ``check(value) -> str | None``."""
    metadata = {"doc": doc, "check": check}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def load_class(name: str) -> type:
    """The plugin class for a built-in name or ``module:Class``.

    Raises:
        ConfigError: unknown built-in name, module not importable, class missing.
    """
    target = BUILTIN.get(name, name)
    if ":" not in target:
        known = ", ".join(sorted(BUILTIN))
        raise ConfigError(f"plugin {name!r}: not a built-in plugin ({known}) nor 'module:Class'")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module itself failing
        raise ConfigError(f"plugin {name!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    try:
        cls = module
        for part in class_name.split("."):     # module:Outer.Inner
            cls = getattr(cls, part)
    except AttributeError:
        raise ConfigError(f"plugin {name!r}: module {module_name!r} has no {class_name!r}") from None
    if not isinstance(cls, type):
        raise ConfigError(f"plugin {name!r}: {target!r} is not a class")
    if not any(callable(getattr(cls, phase, None)) for phase in PHASES):
        raise ConfigError(f"plugin {name!r}: {target!r} defines none of the phases {', '.join(PHASES)}")
    return cls


def _type_error(value: Any, expected: Any) -> str | None:
    """None when ``value`` fits the annotation ``expected`` (the few shapes configs use)."""
    origin = typing.get_origin(expected)
    if expected is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(expected)
        if any(_type_error(value, option) is None for option in options):
            return None
        return "must be " + " or ".join(_type_name(option) for option in options)
    if expected is type(None):
        return None if value is None else "must be null"
    check = origin or expected
    if check is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif check is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, check)
    return None if ok else f"must be {_type_name(expected)}, got {type(value).__name__}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp) or tp
    return {int: "an integer", float: "a number", str: "a string", bool: "a boolean",
            dict: "a mapping", list: "a list", type(None): "null"}.get(origin, getattr(origin, "__name__", str(tp)))


def build_config(plugin_name: str, cls: type, raw: Any) -> Any:
    """Check ``raw`` against ``cls.Config`` and build it.

    Raises:
        ConfigError: naming the plugin and the field.
    """
    schema = getattr(cls, "Config", None)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"plugin {plugin_name!r}: config: must be a mapping")
    if schema is None:
        return raw
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"plugin {plugin_name!r}: config.{key}: unknown field "
                              f"(fields: {', '.join(fields)})")
    hints = typing.get_type_hints(schema)
    for name, spec in fields.items():
        if name not in raw:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ConfigError(f"plugin {plugin_name!r}: config.{name}: required")
            continue
        error = _type_error(raw[name], hints.get(name, Any))
        if error is None and spec.metadata.get("check") is not None and raw[name] is not None:
            error = spec.metadata["check"](raw[name])
        if error:
            raise ConfigError(f"plugin {plugin_name!r}: config.{name}: {error}")
    conf = schema(**raw)
    validate = getattr(conf, "validate", None)
    if validate is not None:
        error = validate()
        if error:
            raise ConfigError(f"plugin {plugin_name!r}: config: {error}")
    return conf


def create(name: str, raw_config: Any) -> Any:
    """Load, check and build one plugin instance from its config entry."""
    cls = load_class(name)
    conf = build_config(name, cls, raw_config)
    try:
        return cls(conf)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"plugin {name!r}: failed to start: {type(exc).__name__}: {exc}") from None
