"""Configuration: every setting declared once, as data, for the file, the flags and the docs.

After ``gunicorn/config.py``: each :class:`Setting` carries its name, type, default,
description, command-line flag and validator, and that one list (:data:`SETTINGS`)
feeds three consumers (STYLE principle 24):

* the YAML file: its top-level keys are exactly the setting names, and the JSON
  Schema that checks the file's structure is built from each setting's ``schema``;
* the command line: :func:`add_arguments` adds one flag per setting that has ``cli``;
* the documentation: :func:`render_docs` writes the tables in ``docs/configuration.md``.

Services, routes and plugin entries are nested mappings; their fields are declared
the same way (:data:`SERVICE_FIELDS`, :data:`ROUTE_FIELDS`, :data:`PLUGIN_FIELDS`).

Loading runs in three steps, and every failure is one :class:`~fastws.errors.ConfigError`
whose message names the source, the field path and the reason, on one line::

    fastws.yaml: services[0].url: must be a ws:// or wss:// URL, got 'http://x'
    --workers: must be at least 1, got 0

1. Structure: the compiled JSON Schema (fastjsonschema, compiled once at import)
   checks types, ranges, required and unknown keys of the file and of the flags.
2. Meaning: each setting's validator converts the value (addresses, URLs, files
   that must exist) and checks what a schema cannot express.
3. Merge: flags given on the command line replace the file's values, then the
   cross-setting rules run (``tls_cert``/``tls_key`` pairs, ``upstream`` shorthand,
   write-buffer marks, address clashes).

The result is a frozen, picklable :class:`Config`; workers receive it as is.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import fastjsonschema
import yaml

from .errors import ConfigError

__all__ = [
    "Setting",
    "SETTINGS",
    "SERVICE_FIELDS",
    "ROUTE_FIELDS",
    "PLUGIN_FIELDS",
    "MAX_PAYLOAD_LIMIT",
    "Config",
    "Listen",
    "TLSFiles",
    "Service",
    "Route",
    "PluginSpec",
    "load_config",
    "config_from_args",
    "add_arguments",
    "effective_config_dict",
    "dump_config",
    "check_main",
    "render_docs",
    "parse_address",
    "format_address",
    "upstream_service",
]

#: Largest message size any direction may be configured for (SPEC §4: 32 MiB).
MAX_PAYLOAD_LIMIT = 32 * 1024 * 1024

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


# --------------------------------------------------------------------------------------
# Result types


@dataclass(frozen=True)
class TLSFiles:
    """A certificate chain and its private key, both PEM files (absolute paths)."""

    cert: str
    key: str


@dataclass(frozen=True)
class Listen:
    """One listening address; ``host`` carries no brackets, even for IPv6."""

    host: str
    port: int
    tls: TLSFiles | None = None

    @property
    def address(self) -> str:
        """``HOST:PORT`` as written in the config, with brackets around IPv6."""
        return format_address(self.host, self.port)


@dataclass(frozen=True)
class PluginSpec:
    """A plugin entry as configured: loaded and validated later by the plugin layer.

    ``config`` is kept verbatim (a plain dict, so a Config stays picklable); it takes
    no part in hashing, only in equality.
    """

    name: str
    config: dict = field(default_factory=dict, hash=False)
    enabled: bool = True


@dataclass(frozen=True)
class Route:
    """Which requests go to a service: host names and path prefixes (see fastws.routing)."""

    name: str
    paths: tuple[str, ...]
    hosts: tuple[str, ...]
    strip_path: bool = True


@dataclass(frozen=True)
class Service:
    """An upstream WebSocket server and the routes that lead to it.

    ``url`` is as configured; ``scheme``, ``host`` (no brackets, lower case),
    ``port`` (80/443 when absent) and ``path`` (``/`` when absent) are parsed from it.
    """

    name: str
    url: str
    scheme: str
    host: str
    port: int
    path: str
    connect_timeout: float
    tls_verify: bool
    ca_file: str | None
    client_cert: str | None
    client_key: str | None
    routes: tuple[Route, ...]
    plugins: tuple[PluginSpec, ...] = ()

    @property
    def tls(self) -> bool:
        return self.scheme == "wss"


@dataclass(frozen=True)
class Config:
    """The effective configuration: one attribute per entry of :data:`SETTINGS`, plus

    ``echo``: True when no service is configured (neither ``services`` nor ``upstream``);
    the worker then proxies to a built-in echo upstream and says so on start-up.
    ``source``: the config file it was loaded from, or None (not part of equality).
    """

    listen: tuple[Listen, ...]
    workers: int
    admin: tuple[str, int] | None
    upstream: str | None
    tls_cert: str | None
    tls_key: str | None
    log_level: str
    access_log: str | None
    access_log_format: str
    handshake_timeout: float
    close_timeout: float
    idle_timeout: float
    ping_interval: float
    ping_timeout: float
    graceful_timeout: float
    worker_timeout: float
    drain_timeout: float
    client_max_payload: int
    upstream_max_payload: int
    max_header_size: int
    max_headers: int
    validate_utf8: bool
    write_buffer_high: int
    write_buffer_low: int
    services: tuple[Service, ...]
    plugins: tuple[PluginSpec, ...]
    echo: bool = False
    source: str | None = field(default=None, compare=False)


# --------------------------------------------------------------------------------------
# Errors inside validators


class _Invalid(ValueError):
    """A validator's complaint: a reason and the path below the setting it concerns."""

    def __init__(self, reason: str, path: Sequence[str | int] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = tuple(path)

    def within(self, *prefix: str | int) -> _Invalid:
        return _Invalid(self.reason, (*prefix, *self.path))


def _format_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _show(value: Any) -> str:
    """A value as it would look in the YAML file, short enough for a one-line error."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return repr(text)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _suggest(word: Any, choices: Iterable[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True)
class _Context:
    """Where values come from: relative file names resolve against ``base_dir``."""

    base_dir: str


# --------------------------------------------------------------------------------------
# Value parsers shared by the validators

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_ADDRESS_RE = re.compile(r"^(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>[0-9]+)$")


def parse_address(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (IPv6 as ``[::1]:8000``) into ``(host, port)``.

    Raises:
        ValueError: with a reason fit for a one-line error message.
    """
    if not isinstance(text, str):
        raise _Invalid(f"must be a 'HOST:PORT' string, got {_show(text)}")
    m = _ADDRESS_RE.match(text.strip())
    if m is None:
        if text.count(":") > 1 and not text.startswith("["):
            raise _Invalid(f"must be HOST:PORT with an IPv6 host in brackets, like [::1]:8000, got {_show(text)}")
        raise _Invalid(f"must be HOST:PORT, like 127.0.0.1:8000, got {_show(text)}")
    port = int(m["port"])
    if not 1 <= port <= 65535:
        raise _Invalid(f"port must be 1..65535, got {_show(text)}")
    if m["v6"] is not None:
        import ipaddress

        try:
            ipaddress.IPv6Address(m["v6"])
        except ValueError:
            raise _Invalid(f"{m['v6']!r} in brackets is not an IPv6 address, got {_show(text)}") from None
        return m["v6"].lower(), port
    host = m["host"]
    if not host:
        raise _Invalid(f"must name a host (0.0.0.0 for every IPv4 interface), got {_show(text)}")
    if not _HOSTNAME_RE.match(host):
        raise _Invalid(f"{host!r} is not a host name or IP address, got {_show(text)}")
    return host.lower(), port


def format_address(host: str, port: int) -> str:
    """The inverse of :func:`parse_address`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_ws_url(text: Any) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path)`` of a ws:// or wss:// URL, or raise _Invalid."""
    wrong = f"must be a ws:// or wss:// URL, got {_show(text)}"
    if not isinstance(text, str):
        raise _Invalid(wrong)
    if any(c.isspace() for c in text):
        raise _Invalid(f"must not contain white space, got {_show(text)}")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise _Invalid(wrong)
    if parts.username is not None or parts.password is not None:
        raise _Invalid(f"must not contain credentials (user:password@), got {_show(text)}")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise _Invalid(f"must not have a query string or a fragment, got {_show(text)}")
    host = parts.hostname
    if not host:
        raise _Invalid(f"must name a host, got {_show(text)}")
    try:
        port = parts.port
    except ValueError:
        raise _Invalid(f"has an invalid port, got {_show(text)}") from None
    if port is None:
        port = 443 if scheme == "wss" else 80
    elif port == 0:
        raise _Invalid(f"port must be 1..65535, got {_show(text)}")
    if not (host.startswith("[") or _HOSTNAME_RE.match(host) or ":" in host):
        raise _Invalid(f"{host!r} is not a host name or IP address, got {_show(text)}")
    return scheme, host.lower(), port, parts.path or "/"


def _existing_file(value: str, ctx: _Context) -> str:
    """Absolute path of a file that must exist and be readable now (TLS material)."""
    path = os.path.abspath(os.path.join(ctx.base_dir, os.path.expanduser(value)))
    where = "" if path == value else f" (looked for {path})"
    if not os.path.exists(path):
        raise _Invalid(f"no such file: {value!r}{where}")
    if not os.path.isfile(path):
        raise _Invalid(f"not a regular file: {value!r}{where}")
    if not os.access(path, os.R_OK):
        raise _Invalid(f"file is not readable: {value!r}{where}")
    return path


def _tls_pair(cert: str | None, key: str | None, ctx: _Context, cert_name: str, key_name: str):
    """Both files or neither; each must exist."""
    if (cert is None) != (key is None):
        given, missing = (cert_name, key_name) if cert is not None else (key_name, cert_name)
        raise _Invalid(f"required when {given} is set (they go together)", (missing,))
    if cert is None:
        return None, None
    try:
        cert = _existing_file(cert, ctx)
    except _Invalid as e:
        raise e.within(cert_name) from None
    try:
        key = _existing_file(key, ctx)  # type: ignore[arg-type]
    except _Invalid as e:
        raise e.within(key_name) from None
    return cert, key


# --------------------------------------------------------------------------------------
# Setting declarations


@dataclass(frozen=True)
class Setting:
    """One configurable value, declared once.

    Attributes:
        name: key in the YAML file and attribute of :class:`Config`.
        type: Python type of the value the user writes (drives argparse's ``type``).
        default: the value as it would be written in the file (it goes through the
            validator like any other value).
        doc: description for ``--help`` (first sentence) and the docs (all of it).
        cli: command-line flags, or None for file-only settings.
        validator: ``f(value, ctx) -> converted``; raises ``_Invalid``. None keeps the
            value as the schema let it through.
        schema: JSON Schema fragment for the value (type, range, nested structure).
        metavar: placeholder in ``--help``.
        required: for nested fields (services, routes, plugins): must be present.
        dumper: ``f(converted) -> file value`` for :func:`effective_config_dict`.
        help: short text for ``--help``; default: the first sentence of ``doc``.
    """

    name: str
    type: type
    default: Any
    doc: str
    cli: tuple[str, ...] | None = None
    validator: Callable[[Any, _Context], Any] | None = None
    schema: Mapping[str, Any] = field(default_factory=dict)
    metavar: str | None = None
    required: bool = False
    dumper: Callable[[Any], Any] | None = None
    help: str | None = None

    @property
    def flag(self) -> str | None:
        return self.cli[0] if self.cli else None


def _int_schema(minimum: int, maximum: int | None = None) -> dict:
    schema: dict = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


_SECONDS = {"type": "number", "minimum": 0}
_POSITIVE_SECONDS = {"type": "number", "exclusiveMinimum": 0}
_OPTIONAL_STRING = {"type": ["string", "null"]}


def _seconds(value: Any, ctx: _Context) -> float:
    if not math.isfinite(value):
        raise _Invalid(f"must be a finite number of seconds, got {_show(value)}")
    return float(value)


def _optional_path(value: str | None, ctx: _Context) -> str | None:
    """A file name that need not exist yet (relative to the config file)."""
    if value is None:
        return None
    if not value:
        raise _Invalid("must not be empty (use null to leave it unset)")
    return os.path.abspath(os.path.join(ctx.base_dir, os.path.expanduser(value)))


def _optional_file(value: str | None, ctx: _Context) -> str | None:
    """A file name that must exist now, or null."""
    if value is None:
        return None
    if not value:
        raise _Invalid("must not be empty (use null to leave it unset)")
    return _existing_file(value, ctx)


def _access_log(value: str | None, ctx: _Context) -> str | None:
    if value is None or value == "-":
        return value
    path = _optional_path(value, ctx)
    parent = os.path.dirname(path)  # type: ignore[arg-type]
    if not os.path.isdir(parent):
        raise _Invalid(f"directory {parent} does not exist (for {value!r})")
    return path


def _admin(value: str | None, ctx: _Context) -> tuple[str, int] | None:
    return None if value is None else parse_address(value)


def _dump_admin(value: tuple[str, int] | None) -> str | None:
    return None if value is None else format_address(*value)


def _upstream(value: str | None, ctx: _Context) -> str | None:
    if value is not None:
        _parse_ws_url(value)
    return value


def _listen(value: Any, ctx: _Context) -> tuple[Listen, ...]:
    items = [value] if isinstance(value, str) else value
    out: list[Listen] = []
    seen: dict[tuple[str, int], int] = {}
    for i, item in enumerate(items):
        if isinstance(item, str):
            try:
                host, port = parse_address(item)
            except _Invalid as e:
                raise e.within(i) from None
            tls = None
        else:
            try:
                host, port = parse_address(item["address"])
            except _Invalid as e:
                raise e.within(i, "address") from None
            tls = None
            if item.get("tls") is not None:
                try:
                    cert, key = _tls_pair(item["tls"].get("cert"), item["tls"].get("key"), ctx, "cert", "key")
                except _Invalid as e:
                    raise e.within(i, "tls") from None
                tls = TLSFiles(cert, key)  # type: ignore[arg-type]
        if (host, port) in seen:
            raise _Invalid(f"{format_address(host, port)} is listed twice (also item {seen[host, port]})", (i,))
        seen[host, port] = i
        out.append(Listen(host, port, tls))
    return tuple(out)


def _dump_listen(value: tuple[Listen, ...]) -> list:
    return [
        item.address
        if item.tls is None
        else {"address": item.address, "tls": {"cert": item.tls.cert, "key": item.tls.key}}
        for item in value
    ]


# Names of services and routes follow Kong's rule for entity names.
_NAME_RE = re.compile(r"^[A-Za-z0-9._~-]+$")
_NAME_SCHEMA = {"type": "string", "minLength": 1}
_BUILTIN_PLUGIN_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_CLASS_PLUGIN_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")
_HOST_LABEL = r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
_ROUTE_HOST_RE = re.compile(rf"^(\*\.)?{_HOST_LABEL}(\.{_HOST_LABEL})*$|^\[[0-9a-f:.]+\]$")


PLUGIN_FIELDS: list[Setting] = [
    Setting(
        "name", str, None, "A built-in plugin name (`size-limit`, `validator`, `pre-function`, "
        "`post-function`) or `module:Class` for your own plugin.",
        schema=_NAME_SCHEMA, required=True,
    ),
    Setting(
        "config", dict, {}, "The plugin's own settings, checked by the plugin's schema at "
        "start-up and by `fastws check`.",
        schema={"type": ["object", "null"]},
    ),
    Setting("enabled", bool, True, "`false` keeps the entry in the file but does not run it.",
            schema={"type": "boolean"}),
]

ROUTE_FIELDS: list[Setting] = [
    Setting(
        "name", str, None, "Unique among all routes; shown in the access log and metrics. "
        "Default: the service name when the service has one route, else `SERVICE-INDEX`.",
        schema=_OPTIONAL_STRING,
    ),
    Setting(
        "paths", list, [], "Path prefixes, each starting with `/`; `/chat` matches `/chat`, "
        "`/chat/...` and `/chat?...`, not `/chatroom`. Longest matching prefix wins.",
        schema={"type": "array", "items": {"type": "string"}},
    ),
    Setting(
        "hosts", list, [], "Host names (no port) the request's `Host` must equal; a leading "
        "`*.` matches any subdomain. Empty: any host.",
        schema={"type": "array", "items": {"type": "string"}},
    ),
    Setting(
        "strip_path", bool, True, "Remove the matched prefix from the path before appending it "
        "to the service URL's path (as Kong).",
        schema={"type": "boolean"},
    ),
]

SERVICE_FIELDS: list[Setting] = [
    Setting("name", str, None, "Unique service name (letters, digits, `.`, `_`, `~`, `-`).",
            schema=_NAME_SCHEMA, required=True),
    Setting("url", str, None, "The upstream: `ws://` or `wss://`, host, optional port and "
            "path; the (stripped) request path is appended to the path.",
            schema={"type": "string", "x-expected": "a ws:// or wss:// URL"}, required=True),
    Setting("connect_timeout", float, 10, "Seconds to open the upstream connection (TCP, TLS "
            "and the WebSocket handshake); on expiry the client gets HTTP 504.",
            schema=_POSITIVE_SECONDS),
    Setting("tls_verify", bool, True, "For `wss://`: verify the upstream's certificate and host name.",
            schema={"type": "boolean"}),
    Setting("ca_file", str, None, "For `wss://`: PEM bundle of CAs to trust instead of the "
            "system's.", schema=_OPTIONAL_STRING),
    Setting("client_cert", str, None, "For `wss://` with mutual TLS: client certificate (PEM); "
            "needs `client_key`.", schema=_OPTIONAL_STRING),
    Setting("client_key", str, None, "Private key for `client_cert` (PEM).", schema=_OPTIONAL_STRING),
    Setting("routes", list, None, "At least one route (see below).",
            schema={"type": "array", "minItems": 1}, required=True),
    Setting("plugins", list, [], "Plugins for this service's routes (entries as below).",
            schema={"type": "array"}),
]


def _object_schema(fields: list[Setting]) -> dict:
    return {
        "type": "object",
        "properties": {f.name: dict(f.schema) for f in fields},
        "required": [f.name for f in fields if f.required],
        "additionalProperties": False,
    }


_PLUGIN_SCHEMA = _object_schema(PLUGIN_FIELDS)
_ROUTE_SCHEMA = _object_schema(ROUTE_FIELDS)
_SERVICE_SCHEMA = _object_schema(SERVICE_FIELDS)
_SERVICE_SCHEMA["properties"]["routes"]["items"] = _ROUTE_SCHEMA
_SERVICE_SCHEMA["properties"]["plugins"]["items"] = _PLUGIN_SCHEMA


def _field_defaults(fields: list[Setting]) -> dict[str, Any]:
    return {f.name: f.default for f in fields}


_PLUGIN_DEFAULTS = _field_defaults(PLUGIN_FIELDS)
_ROUTE_DEFAULTS = _field_defaults(ROUTE_FIELDS)
_SERVICE_DEFAULTS = _field_defaults(SERVICE_FIELDS)


def _plugins(value: list, ctx: _Context) -> tuple[PluginSpec, ...]:
    out = []
    for i, raw in enumerate(value):
        raw = {**_PLUGIN_DEFAULTS, **raw}
        name = raw["name"]
        if not (_BUILTIN_PLUGIN_RE.match(name) or _CLASS_PLUGIN_RE.match(name)):
            raise _Invalid(
                f"must be a built-in plugin name like 'size-limit' or 'module:Class', got {_show(name)}",
                (i, "name"),
            )
        config = raw["config"] if raw["config"] is not None else {}
        out.append(PluginSpec(name=name, config=dict(config), enabled=raw["enabled"]))
    return tuple(out)


def _dump_plugins(value: tuple[PluginSpec, ...]) -> list:
    return [{"name": p.name, "config": dict(p.config), "enabled": p.enabled} for p in value]


def _route(raw: dict, i: int, service_name: str, n_routes: int) -> Route:
    raw = {**_ROUTE_DEFAULTS, **raw}
    name = raw["name"]
    if name is None:
        name = service_name if n_routes == 1 else f"{service_name}-{i}"
    elif not _NAME_RE.match(name):
        raise _Invalid(f"may contain only letters, digits and . _ ~ -, got {_show(name)}", ("name",))
    paths = []
    for j, path in enumerate(raw["paths"]):
        if not path.startswith("/"):
            raise _Invalid(f"must start with '/', got {_show(path)}", ("paths", j))
        if "?" in path or "#" in path:
            raise _Invalid(f"must not contain '?' or '#', got {_show(path)}", ("paths", j))
        if any(c.isspace() for c in path):
            raise _Invalid(f"must not contain white space, got {_show(path)}", ("paths", j))
        paths.append(path)
    hosts = []
    for j, host in enumerate(raw["hosts"]):
        norm = host.strip().lower().rstrip(".")
        if not _ROUTE_HOST_RE.match(norm):
            if re.match(r"^[^\[]*:[0-9]*$", norm):
                reason = f"must be a host name without a port, got {_show(host)}"
            else:
                reason = f"must be a host name, optionally starting with '*.', got {_show(host)}"
            raise _Invalid(reason, ("hosts", j))
        hosts.append(norm)
    if not paths and not hosts:
        raise _Invalid("needs paths or hosts (use paths: [/] for a catch-all route)")
    return Route(name=name, paths=tuple(paths), hosts=tuple(hosts), strip_path=raw["strip_path"])


def _service(raw: dict, ctx: _Context) -> Service:
    raw = {**_SERVICE_DEFAULTS, **raw}
    name = raw["name"]
    if not _NAME_RE.match(name):
        raise _Invalid(f"may contain only letters, digits and . _ ~ -, got {_show(name)}", ("name",))
    try:
        scheme, host, port, path = _parse_ws_url(raw["url"])
    except _Invalid as e:
        raise e.within("url") from None
    ca_file = client_cert = client_key = None
    if scheme == "ws":
        for key in ("ca_file", "client_cert", "client_key"):
            if raw[key] is not None:
                raise _Invalid(f"applies to wss:// URLs only, and url is {_show(raw['url'])}", (key,))
    else:
        if raw["ca_file"] is not None:
            try:
                ca_file = _existing_file(raw["ca_file"], ctx)
            except _Invalid as e:
                raise e.within("ca_file") from None
        client_cert, client_key = _tls_pair(raw["client_cert"], raw["client_key"], ctx, "client_cert", "client_key")
    routes = []
    for i, route in enumerate(raw["routes"]):
        try:
            routes.append(_route(route, i, name, len(raw["routes"])))
        except _Invalid as e:
            raise e.within("routes", i) from None
    try:
        plugins = _plugins(raw["plugins"], ctx)
    except _Invalid as e:
        raise e.within("plugins") from None
    return Service(
        name=name, url=raw["url"], scheme=scheme, host=host, port=port, path=path,
        connect_timeout=_seconds(raw["connect_timeout"], ctx), tls_verify=raw["tls_verify"],
        ca_file=ca_file, client_cert=client_cert, client_key=client_key,
        routes=tuple(routes), plugins=plugins,
    )


def _services(value: list, ctx: _Context) -> tuple[Service, ...]:
    out: list[Service] = []
    service_at: dict[str, int] = {}
    route_at: dict[str, tuple[int, int]] = {}
    for i, raw in enumerate(value):
        try:
            service = _service(raw, ctx)
        except _Invalid as e:
            raise e.within(i) from None
        if service.name in service_at:
            raise _Invalid(
                f"duplicate service name {service.name!r} (also services[{service_at[service.name]}])", (i, "name")
            )
        service_at[service.name] = i
        for j, route in enumerate(service.routes):
            if route.name in route_at:
                other = f"services[{route_at[route.name][0]}].routes[{route_at[route.name][1]}]"
                named = "name" in raw["routes"][j]
                where: tuple = (i, "routes", j, "name") if named else (i, "routes", j)
                hint = "" if named else "; this unnamed route's name comes from its service: give it a name"
                raise _Invalid(f"duplicate route name {route.name!r} (also {other}){hint}", where)
            route_at[route.name] = (i, j)
        out.append(service)
    return tuple(out)


def _dump_services(value: tuple[Service, ...]) -> list:
    out = []
    for s in value:
        entry: dict[str, Any] = {
            "name": s.name, "url": s.url, "connect_timeout": s.connect_timeout, "tls_verify": s.tls_verify,
        }
        for key in ("ca_file", "client_cert", "client_key"):
            if getattr(s, key) is not None:
                entry[key] = getattr(s, key)
        entry["routes"] = [
            {"name": r.name, "paths": list(r.paths), "hosts": list(r.hosts), "strip_path": r.strip_path}
            for r in s.routes
        ]
        entry["plugins"] = _dump_plugins(s.plugins)
        out.append(entry)
    return out


_ADDRESS_ITEM = {
    "type": ["string", "object"],
    "x-expected": "'HOST:PORT' or {address: HOST:PORT, tls: {cert, key}}",
    "properties": {
        "address": {"type": "string"},
        "tls": {
            "type": ["object", "null"],
            "properties": {"cert": {"type": "string"}, "key": {"type": "string"}},
            "required": ["cert", "key"],
            "additionalProperties": False,
        },
    },
    "required": ["address"],
    "additionalProperties": False,
}

SETTINGS: list[Setting] = [
    Setting(
        "listen", list, ["127.0.0.1:8000"],
        "Addresses to accept clients on: `HOST:PORT` (IPv6 as `\"[::1]:8000\"`, quoted in YAML) or "
        "`{address: HOST:PORT, tls: {cert: PEM, key: PEM}}`. Every worker binds each one with "
        "SO_REUSEPORT. `--listen` may be repeated; given on the command line, it replaces the file's list.",
        cli=("--listen",), validator=_listen, metavar="HOST:PORT",
        help="address to accept clients on, IPv6 as [::1]:8000; repeat for more; replaces the file's list",
        schema={"type": ["array", "string"], "minItems": 1, "items": _ADDRESS_ITEM}, dumper=_dump_listen,
    ),
    Setting(
        "workers", int, 1, "Number of worker processes, each with its own event loop.",
        cli=("--workers",), schema=_int_schema(1), metavar="N", help="number of worker processes",
    ),
    Setting(
        "admin", str, None,
        "Address of the admin endpoint (`/metrics`, `/status`, `/healthz`), `HOST:PORT`; null: off.",
        cli=("--admin",), validator=_admin, help="serve /metrics, /status and /healthz on this address", schema={**_OPTIONAL_STRING, "x-expected": "'HOST:PORT' or null"}, metavar="HOST:PORT", dumper=_dump_admin,
    ),
    Setting(
        "upstream", str, None,
        "Shorthand for one service named `default` (`ws://` or `wss://` URL) with a catch-all route "
        "`/`. Cannot be combined with `services` in the file; given as a flag, it replaces them.",
        cli=("--upstream",), validator=_upstream,
        help="proxy everything to this ws:// or wss:// URL (replaces the file's services)",
        schema={**_OPTIONAL_STRING, "x-expected": "a ws:// or wss:// URL or null"}, metavar="URL",
    ),
    Setting(
        "tls_cert", str, None,
        "Certificate chain (PEM) for every listen address that has no `tls` of its own, e.g. those "
        "given with `--listen`. Needs `tls_key`.",
        cli=("--tls-cert",), validator=_optional_file,
        help="serve TLS with this certificate chain on every listen address without its own tls", schema=_OPTIONAL_STRING, metavar="PEM",
    ),
    Setting(
        "tls_key", str, None, "Private key (PEM) for `tls_cert`.",
        cli=("--tls-key",), validator=_optional_file, help="private key for --tls-cert", schema=_OPTIONAL_STRING, metavar="PEM",
    ),
    Setting(
        "log_level", str, "info", "Error log level: " + ", ".join(LOG_LEVELS) + ".",
        cli=("--log-level",), help="error log level", schema={"type": "string", "enum": list(LOG_LEVELS)}, metavar="LEVEL",
    ),
    Setting(
        "access_log", str, None,
        "Where to write one line per connection at close: a file, `-` for standard output, null: off.",
        cli=("--access-log",), validator=_access_log,
        help="write one line per connection to this file, or - for standard output", schema=_OPTIONAL_STRING, metavar="PATH|-",
    ),
    Setting(
        "access_log_format", str, "text", "Access log lines as `text` or `json` (JSON lines).",
        cli=("--access-log-format",), help="access log lines as text or JSON", schema={"type": "string", "enum": ["text", "json"]}, metavar="FORMAT",
    ),
    Setting(
        "handshake_timeout", float, 10,
        "Seconds a client has to send its complete opening handshake; must be > 0.",
        validator=_seconds, schema=_POSITIVE_SECONDS,
    ),
    Setting(
        "close_timeout", float, 5,
        "Seconds to wait for the peer's close frame after sending one, then drop the TCP connection.",
        validator=_seconds, schema=_SECONDS,
    ),
    Setting(
        "idle_timeout", float, 0,
        "Close a connection (1001) when no frame has been relayed either way for this many seconds (fastws's own keepalive pings do not count); 0: off.",
        validator=_seconds, schema=_SECONDS,
    ),
    Setting(
        "ping_interval", float, 0, "Seconds between keepalive pings fastws sends to both sides (their pongs are not relayed); 0: off.",
        validator=_seconds, schema=_SECONDS,
    ),
    Setting(
        "ping_timeout", float, 20,
        "Seconds to wait for the pong to a keepalive ping before closing with 1011; must be > 0.",
        validator=_seconds, schema=_POSITIVE_SECONDS,
    ),
    Setting(
        "graceful_timeout", float, 10,
        "On SIGTERM, seconds to wait for sessions to finish their closing handshakes.",
        validator=_seconds, schema=_SECONDS,
    ),
    Setting(
        "worker_timeout", float, 30,
        "Seconds a worker may go without its heartbeat (a blocked event loop) before the master "
        "replaces it, and that new workers have to start listening during a reload; must be > 0.",
        validator=_seconds, schema=_POSITIVE_SECONDS,
    ),
    Setting(
        "drain_timeout", float, 30,
        "On reload (SIGHUP), seconds old workers keep their sessions (they no longer accept) before "
        "closing them with 1012 \"Service Restart\".",
        validator=_seconds, schema=_SECONDS,
    ),
    Setting(
        "client_max_payload", int, 1048576,
        "Largest message, in bytes, a client may send (1 to 33554432); larger: close 1009.",
        schema=_int_schema(1, MAX_PAYLOAD_LIMIT),
    ),
    Setting(
        "upstream_max_payload", int, 16777216,
        "Largest message, in bytes, an upstream may send (1 to 33554432); larger: close 1009.",
        schema=_int_schema(1, MAX_PAYLOAD_LIMIT),
    ),
    Setting(
        "max_header_size", int, 16384,
        "Largest opening handshake (request line and headers) in bytes (1024 to 1048576).",
        schema=_int_schema(1024, 1048576),
    ),
    Setting(
        "max_headers", int, 100, "Most header lines in an opening handshake (1 to 10000).",
        schema=_int_schema(1, 10000),
    ),
    Setting(
        "validate_utf8", bool, False,
        "Check UTF-8 in text messages relayed in passthrough too (inspect mode always checks); "
        "invalid: close 1007.",
        schema={"type": "boolean"},
    ),
    Setting(
        "write_buffer_high", int, 65536,
        "Bytes waiting to be written to one side above which fastws stops reading the other side.",
        schema=_int_schema(1),
    ),
    Setting(
        "write_buffer_low", int, 16384,
        "Bytes waiting to be written below which reading resumes; at most `write_buffer_high`.",
        schema=_int_schema(0),
    ),
    Setting(
        "services", list, [], "Upstreams and their routes (see Services). With none and no `upstream`, fastws proxies to "
        "its built-in echo upstream.",
        validator=_services, schema={"type": "array", "items": _SERVICE_SCHEMA}, dumper=_dump_services,
    ),
    Setting(
        "plugins", list, [], "Global plugins, applied to every route (see Plugins).",
        validator=_plugins, schema={"type": "array", "items": _PLUGIN_SCHEMA}, dumper=_dump_plugins,
    ),
]

_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

_CONFIG_SCHEMA = {
    "type": "object",
    "properties": {s.name: dict(s.schema) for s in SETTINGS},
    "additionalProperties": False,
}
# Compiled once: validating a file is then a plain function call.
_validate_structure = fastjsonschema.compile(_CONFIG_SCHEMA)

_derived = {f.name for f in dataclasses.fields(Config)} - {"echo", "source"}
if _derived != set(_BY_NAME):  # pragma: no cover - a developer error, caught on import
    raise RuntimeError(f"Config fields and SETTINGS disagree: {sorted(_derived ^ set(_BY_NAME))}")
del _derived


# --------------------------------------------------------------------------------------
# Structure errors from fastjsonschema, in the user's words

_TYPE_WORDS = {
    "integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
    "array": "a list", "object": "a mapping", "null": "null",
}


def _real_path(parts: Sequence[str], data: Any) -> tuple[str | int, ...]:
    """fastjsonschema names list indices as strings; walk the data to tell them apart."""
    out: list[str | int] = []
    node = data
    for part in parts:
        if isinstance(node, list):
            index = int(part)
            out.append(index)
            node = node[index] if index < len(node) else None
        else:
            out.append(part)
            node = node.get(part) if isinstance(node, dict) else None
    return tuple(out)


def _structure_error(exc: fastjsonschema.JsonSchemaValueException, data: Any) -> _Invalid:
    path = _real_path(exc.path[1:], data)
    rule, limit, value = exc.rule, exc.rule_definition, exc.value
    if rule == "type":
        types = [limit] if isinstance(limit, str) else list(limit)
        if "x-expected" in exc.definition:
            wanted = exc.definition["x-expected"]
        else:
            wanted = " or ".join(_TYPE_WORDS.get(t, t) for t in types if t != "null")
            if "null" in types:
                wanted += " or null"
        return _Invalid(f"must be {wanted}, got {_show(value)}", path)
    if rule == "minimum":
        return _Invalid(f"must be at least {limit}, got {_show(value)}", path)
    if rule == "exclusiveMinimum":
        return _Invalid(f"must be greater than {limit}, got {_show(value)}", path)
    if rule == "maximum":
        return _Invalid(f"must be at most {limit}, got {_show(value)}", path)
    if rule == "enum":
        return _Invalid(f"must be one of {', '.join(map(str, limit))}; got {_show(value)}", path)
    if rule == "required":
        known = list(exc.definition.get("properties", {}))
        extra = [k for k in value if k not in known]
        if extra:  # a misspelt key is the likelier story than a missing one
            return _Invalid(f"unknown key {_show(extra[0])}{_suggest(extra[0], known)}", path)
        missing = [k for k in limit if k not in value]
        return _Invalid(f"missing required key '{missing[0]}'", path)
    if rule == "additionalProperties":
        known = list(exc.definition.get("properties", {}))
        extra = [k for k in value if k not in known][0]
        noun = "key" if path else "setting"
        return _Invalid(f"unknown {noun} {_show(extra)}{_suggest(extra, known)}", path)
    if rule == "minItems":
        return _Invalid("must not be empty", path)
    if rule == "minLength":
        return _Invalid("must not be empty", path)
    message = exc.message  # a rule this table does not know: fastjsonschema's words
    return _Invalid(message.split(" ", 1)[1] if message.startswith("data") else message, path)


# --------------------------------------------------------------------------------------
# Reading the file


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # unhashable: the base class reports it
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: {where}{e.problem}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = e.problem or e.context or "invalid YAML"
        hint = ""
        if mark is not None:
            line = text.splitlines()[mark.line] if mark.line < len(text.splitlines()) else ""
            if re.search(r"\[[0-9A-Fa-f:.]*\]:[0-9]", line) and not re.search(r"[\"']\[", line):
                hint = ' (quote IPv6 addresses: "[::1]:8000")'
        raise ConfigError(f"{path}: {where}YAML syntax error: {problem}{hint}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML error: {' '.join(str(e).split())}") from None


# --------------------------------------------------------------------------------------
# Loading


class _Source:
    """Names the origin of values in error messages: a file, or command-line flags."""

    def __init__(self, file: str | None) -> None:
        self.file = file

    def error(self, setting: str, exc: _Invalid) -> ConfigError:
        if self.file is not None:
            field_path = _format_path((setting, *exc.path)) if setting else _format_path(exc.path)
            return ConfigError(f"{self.file}: {field_path + ': ' if field_path else ''}{exc.reason}")
        flag = _BY_NAME[setting].flag if setting in _BY_NAME else None
        label = flag or f"setting {setting!r}"
        return ConfigError(f"{label}: {exc.reason}")


def _convert(values: dict, source: _Source, ctx: _Context) -> dict[str, Any]:
    """Check the structure of ``values``, then run every validator (in SETTINGS order)."""
    try:
        _validate_structure(values)
    except fastjsonschema.JsonSchemaValueException as exc:
        err = _structure_error(exc, values)
        if err.path:
            raise source.error(str(err.path[0]), _Invalid(err.reason, err.path[1:])) from None
        raise source.error("", err) from None
    out: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name not in values:
            continue
        value = values[setting.name]
        try:
            out[setting.name] = setting.validator(value, ctx) if setting.validator else value
        except _Invalid as e:
            raise source.error(setting.name, e) from None
    cert, key = values.get("tls_cert"), values.get("tls_key")
    if (cert is None) != (key is None):
        given, missing = ("tls_cert", "tls_key") if cert is not None else ("tls_key", "tls_cert")
        if source.file is None:
            raise ConfigError(f"{_BY_NAME[missing].flag} is required with {_BY_NAME[given].flag}")
        raise source.error(missing, _Invalid(f"required when {given} is set (they go together)"))
    return out


def upstream_service(url: str, name: str = "default") -> Service:
    """The service the ``upstream`` shorthand stands for: ``url`` with a catch-all route ``/``.

    The worker can use it for its built-in echo upstream too.

    Raises:
        ConfigError: ``url`` is not a ws:// or wss:// URL.
    """
    try:
        return _service({"name": name, "url": url, "routes": [{"paths": ["/"]}]}, _Context(os.getcwd()))
    except _Invalid as e:
        raise ConfigError(f"{_format_path(e.path)}: {e.reason}") from None


def load_config(path: str | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load the config file (if any), apply command-line overrides, validate, return a Config.

    Args:
        path: YAML file, or None for defaults only. Relative file names inside it
            (certificates, access log) are taken relative to the file's directory.
        overrides: ``{setting_name: value}`` for the flags the user actually gave, in
            file form (``listen`` a list of ``HOST:PORT``); they replace the file's
            values. Relative file names are taken relative to the working directory.

    Returns:
        The frozen, picklable effective configuration.

    Raises:
        ConfigError: one line naming the file or flag, the field path and the reason.
    """
    raw: Any = {}
    file_values: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(path)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: must be a mapping of settings (key: value), got {_show(raw)}")
        base = os.path.dirname(os.path.abspath(path))
        file_values = _convert(raw, _Source(path), _Context(base))
        if raw.get("upstream") is not None and raw.get("services"):
            raise ConfigError(
                f"{path}: upstream: cannot be combined with services; "
                "add a service with a catch-all route (paths: [/]) instead"
            )
    overrides = dict(overrides or {})
    unknown = [k for k in overrides if k not in _BY_NAME]
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}{_suggest(unknown[0], _BY_NAME)}")
    flag_values = _convert(overrides, _Source(None), _Context(os.getcwd()))

    defaults = {s.name: s.default for s in SETTINGS}
    values = _convert(defaults, _Source("<defaults>"), _Context(os.getcwd()))
    values.update(file_values)
    values.update(flag_values)
    origin = {name: (None if name in flag_values else path) for name in values}

    def fail(name: str, reason: str) -> ConfigError:
        return _Source(origin[name] if origin[name] is not None else None).error(name, _Invalid(reason))

    # An upstream flag replaces the file's services (flags override the file).
    if flag_values.get("upstream") is not None:
        values["services"] = ()
    if values["upstream"] is not None:
        values["services"] = (upstream_service(values["upstream"]),)

    if values["tls_cert"] is not None:
        default_tls = TLSFiles(values["tls_cert"], values["tls_key"])
        values["listen"] = tuple(
            item if item.tls is not None else dataclasses.replace(item, tls=default_tls)
            for item in values["listen"]
        )
    if values["write_buffer_low"] > values["write_buffer_high"]:
        raise fail(
            "write_buffer_low",
            f"must not exceed write_buffer_high ({values['write_buffer_high']}), got {values['write_buffer_low']}",
        )
    if values["admin"] is not None:
        for item in values["listen"]:
            if (item.host, item.port) == values["admin"]:
                raise fail("admin", f"{item.address} is also a listen address")

    return Config(**values, echo=not values["services"], source=path)


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the Config from a namespace parsed by a parser that :func:`add_arguments` set up.

    Only flags the user actually gave are present in the namespace (their default is
    ``argparse.SUPPRESS``), so the file keeps every value the command line did not name.

    Raises:
        ConfigError: as :func:`load_config`.
    """
    overrides = {s.name: getattr(args, s.name) for s in SETTINGS if s.cli and hasattr(args, s.name)}
    return load_config(getattr(args, "config", None), overrides)


def add_arguments(parser: argparse.ArgumentParser, config_flag: bool = False) -> None:
    """Add one flag per setting with ``cli`` (and ``-c/--config FILE`` if ``config_flag``).

    Setting flags default to ``argparse.SUPPRESS``: an attribute exists in the
    namespace only when the user gave the flag, which :func:`config_from_args` relies on.
    :func:`config_from_args` reads the file name from ``args.config``.
    """
    if config_flag:
        parser.add_argument("-c", "--config", metavar="FILE", default=None, help="YAML config file")
    for s in SETTINGS:
        if not s.cli:
            continue
        text = s.help or s.doc.split(". ")[0].rstrip(".").replace("`", "")
        help_text = f"{text} (default: {_help_default(s.default)})".replace("%", "%%")
        kwargs: dict[str, Any] = dict(dest=s.name, default=argparse.SUPPRESS, help=help_text)
        if s.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = s.metavar
            if s.type is list:
                kwargs["action"] = "append"
            elif s.type in (int, float):
                kwargs["type"] = s.type
            if "enum" in s.schema:
                kwargs["choices"] = s.schema["enum"]
                kwargs.pop("metavar")
        parser.add_argument(*s.cli, **kwargs)


# --------------------------------------------------------------------------------------
# Output: effective config, `fastws check`, docs


def effective_config_dict(config: Config) -> dict[str, Any]:
    """The configuration in file form, every setting present: what ``fastws check`` prints.

    Loading it back gives an equal Config. With ``upstream`` set, the service it stands
    for is left out (the shorthand says it).
    """
    out: dict[str, Any] = {}
    for s in SETTINGS:
        value = getattr(config, s.name)
        out[s.name] = s.dumper(value) if s.dumper else value
    if config.upstream is not None:
        del out["services"]
    return out


def dump_config(config: Config) -> str:
    """:func:`effective_config_dict` as YAML."""
    return yaml.safe_dump(effective_config_dict(config), sort_keys=False, default_flow_style=False,
                          allow_unicode=True)


def check_main(path: str) -> int:
    """``fastws check FILE``: print the effective config and return 0, or the error and return 2."""
    try:
        config = load_config(path)
    except ConfigError as e:
        print(f"fastws: {e}", file=sys.stderr)
        return 2
    if config.echo:
        print("# no services: fastws would proxy to its built-in echo upstream")
    print(dump_config(config), end="")
    return 0


def _help_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _dump_default(s: Setting) -> str:
    return json.dumps(s.default)


def _table(fields: list[Setting], with_cli: bool) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    head = "| Setting | Flag | Default | Description |" if with_cli else "| Field | Default | Description |"
    rule = "|---|---|---|---|" if with_cli else "|---|---|---|"
    lines = [head, rule]
    for f in fields:
        default = "required" if f.required else f"`{_dump_default(f)}`"
        if with_cli:
            flag = f"`{' '.join(filter(None, (f.flag, f.metavar)))}`" if f.cli else ""
            lines.append(f"| `{f.name}` | {cell(flag)} | {cell(default)} | {cell(f.doc)} |")
        else:
            lines.append(f"| `{f.name}` | {cell(default)} | {cell(f.doc)} |")
    return lines


def render_docs() -> str:
    """Markdown tables of every setting and of the service, route and plugin fields."""
    parts = ["### Settings", "", *_table(SETTINGS, True), "",
             "### Service fields", "", *_table(SERVICE_FIELDS, False), "",
             "### Route fields", "", *_table(ROUTE_FIELDS, False), "",
             "### Plugin entry fields", "", *_table(PLUGIN_FIELDS, False), ""]
    return "\n".join(parts)
