"""fastws.config: settings as data, the YAML file, flags, validation messages, dump round-trip.

Every error is asserted as the full one-line message the user sees, so the field path
(``services[0].routes[1].paths[0]``) and the wording are part of the contract.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import pickle

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fastws import config as cfg
from fastws.config import (
    SETTINGS,
    Config,
    Listen,
    PluginSpec,
    Route,
    TLSFiles,
    add_arguments,
    check_main,
    config_from_args,
    dump_config,
    effective_config_dict,
    format_address,
    load_config,
    parse_address,
    render_docs,
    upstream_service,
)
from fastws.errors import ConfigError

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A scratch directory as the working directory, with a certificate and key in it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cert.pem").write_text("cert")
    (tmp_path / "key.pem").write_text("key")
    return tmp_path


def load_text(text: str, overrides=None, name: str = "fastws.yaml") -> Config:
    pathlib.Path(name).write_text(text)
    return load_config(name, overrides)


def error_of(text: str, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(text, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def flag_error(overrides, text: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        if text is None:
            load_config(None, overrides)
        else:
            load_text(text, overrides)
    return str(info.value)


SERVICE = "services: [{name: chat, url: 'ws://backend:9000/ws', routes: [{paths: [/chat]}]}]\n"


# --------------------------------------------------------------------------------------
# Declarations


class TestDeclarations:
    def test_config_fields_are_the_settings(self):
        names = [f.name for f in dataclasses.fields(Config)]
        assert names == [s.name for s in SETTINGS] + ["echo", "source"]

    def test_setting_names_unique_and_flags_unique(self):
        assert len({s.name for s in SETTINGS}) == len(SETTINGS)
        flags = [f for s in SETTINGS if s.cli for f in s.cli]
        assert len(set(flags)) == len(flags)

    def test_spec_flags_exist(self):
        flags = {s.flag: s.name for s in SETTINGS if s.cli}
        for flag in ("--listen", "--workers", "--admin", "--upstream", "--tls-cert", "--tls-key",
                     "--log-level", "--access-log", "--access-log-format"):
            assert flag in flags

    def test_every_setting_documented(self):
        for s in SETTINGS:
            assert s.doc and s.doc.endswith("."), s.name


class TestDefaults:
    def test_no_file_no_flags(self):
        config = load_config(None)
        assert config.listen == (Listen("127.0.0.1", 8000, None),)
        assert config.workers == 1
        assert config.admin is None and config.upstream is None
        assert config.log_level == "info"
        assert config.access_log is None and config.access_log_format == "text"
        assert (config.handshake_timeout, config.close_timeout, config.idle_timeout) == (10.0, 5.0, 0.0)
        assert (config.ping_interval, config.ping_timeout) == (0.0, 20.0)
        assert (config.graceful_timeout, config.drain_timeout) == (10.0, 30.0)
        assert config.client_max_payload == 1048576
        assert config.upstream_max_payload == 16777216
        assert (config.max_header_size, config.max_headers) == (16384, 100)
        assert config.validate_utf8 is False
        assert (config.write_buffer_high, config.write_buffer_low) == (65536, 16384)
        assert config.services == () and config.plugins == ()
        assert config.echo is True and config.source is None

    def test_seconds_are_floats(self, workdir):
        config = load_text("close_timeout: 2\nidle_timeout: 0.5\n")
        assert config.close_timeout == 2.0 and isinstance(config.close_timeout, float)
        assert config.idle_timeout == 0.5

    def test_empty_file_is_defaults(self, workdir):
        assert load_text("") == load_config(None)
        assert load_text("# only a comment\n") == load_config(None)

    def test_source_recorded_but_not_compared(self, workdir):
        config = load_text("workers: 2\n")
        assert config.source == "fastws.yaml"
        assert config == load_config(None, {"workers": 2})

    def test_pickle(self, workdir):
        config = load_text(
            SERVICE + "plugins: [{name: 'a.b:C', config: {x: [1, 2]}}]\nadmin: 127.0.0.1:9901\n"
        )
        again = pickle.loads(pickle.dumps(config))
        assert again == config and again.source == config.source
        hash(config)  # plugin configs are dicts, yet a Config stays hashable


# --------------------------------------------------------------------------------------
# One bad value per setting (at least): the message names file, field, reason.

BAD_VALUES = [
    ("listen", "listen: []", "listen: must not be empty"),
    ("listen", "listen: [localhost]", "listen[0]: must be HOST:PORT, like 127.0.0.1:8000, got 'localhost'"),
    ("listen", "listen: ['1.2.3.4:0']", "listen[0]: port must be 1..65535, got '1.2.3.4:0'"),
    ("listen", "listen: ['1.2.3.4:65536']", "listen[0]: port must be 1..65535, got '1.2.3.4:65536'"),
    ("listen", "listen: [':8000']", "listen[0]: must name a host (0.0.0.0 for every IPv4 interface), got ':8000'"),
    ("listen", "listen: ['::1:8000']",
     "listen[0]: must be HOST:PORT with an IPv6 host in brackets, like [::1]:8000, got '::1:8000'"),
    ("listen", "listen: ['[fe:zz]:80']", "listen[0]: 'fe:zz' in brackets is not an IPv6 address, got '[fe:zz]:80'"),
    ("listen", "listen: ['a b:80']", "listen[0]: 'a b' is not a host name or IP address, got 'a b:80'"),
    ("listen", "listen: [7]",
     "listen[0]: must be 'HOST:PORT' or {address: HOST:PORT, tls: {cert, key}}, got 7"),
    ("listen", "listen: ['0.0.0.0:80', '0.0.0.0:80']", "listen[1]: 0.0.0.0:80 is listed twice (also item 0)"),
    ("listen", "listen: [{address: '0.0.0.0:80', tls: {cert: cert.pem}}]", "listen[0].tls: missing required key 'key'"),
    ("listen", "listen: [{address: '0.0.0.0:80', tls: {cert: nope.pem, key: key.pem}}]",
     "listen[0].tls.cert: no such file: 'nope.pem' (looked for {dir}/nope.pem)"),
    ("listen", "listen: [{tls: null}]", "listen[0]: missing required key 'address'"),
    ("listen", "listen: [{address: 'x:1', tsl: {}}]", "listen[0]: unknown key 'tsl' (did you mean 'tls'?)"),
    ("listen", "listen: {a: 1}", "listen: must be a list or a string, got a mapping"),
    ("workers", "workers: 0", "workers: must be at least 1, got 0"),
    ("workers", "workers: '4'", "workers: must be an integer, got '4'"),
    ("workers", "workers: true", "workers: must be an integer, got true"),
    ("workers", "workers: 1.5", "workers: must be an integer, got 1.5"),
    ("admin", "admin: 9901", "admin: must be 'HOST:PORT' or null, got 9901"),
    ("admin", "admin: localhost", "admin: must be HOST:PORT, like 127.0.0.1:8000, got 'localhost'"),
    ("admin", "admin: '127.0.0.1:8000'", "admin: 127.0.0.1:8000 is also a listen address"),
    ("upstream", "upstream: 'http://x'", "upstream: must be a ws:// or wss:// URL, got 'http://x'"),
    ("upstream", "upstream: [ws://x]", "upstream: must be a ws:// or wss:// URL or null, got a list"),
    ("tls_cert", "tls_cert: nope.pem\ntls_key: key.pem", "tls_cert: no such file: 'nope.pem' (looked for {dir}/nope.pem)"),
    ("tls_cert", "tls_key: key.pem", "tls_cert: required when tls_key is set (they go together)"),
    ("tls_key", "tls_cert: cert.pem", "tls_key: required when tls_cert is set (they go together)"),
    ("tls_key", "tls_cert: cert.pem\ntls_key: ''", "tls_key: must not be empty (use null to leave it unset)"),
    ("log_level", "log_level: verbose", "log_level: must be one of debug, info, warning, error, critical; got 'verbose'"),
    ("log_level", "log_level: INFO", "log_level: must be one of debug, info, warning, error, critical; got 'INFO'"),
    ("access_log", "access_log: 5", "access_log: must be a string or null, got 5"),
    ("access_log", "access_log: /nonexistent-dir/x.log",
     "access_log: directory /nonexistent-dir does not exist (for '/nonexistent-dir/x.log')"),
    ("access_log_format", "access_log_format: xml", "access_log_format: must be one of text, json; got 'xml'"),
    ("handshake_timeout", "handshake_timeout: 0", "handshake_timeout: must be greater than 0, got 0"),
    ("handshake_timeout", "handshake_timeout: soon", "handshake_timeout: must be a number, got 'soon'"),
    ("close_timeout", "close_timeout: -1", "close_timeout: must be at least 0, got -1"),
    ("close_timeout", "close_timeout: .inf", "close_timeout: must be a finite number of seconds, got inf"),
    ("idle_timeout", "idle_timeout: -0.5", "idle_timeout: must be at least 0, got -0.5"),
    ("ping_interval", "ping_interval: '5'", "ping_interval: must be a number, got '5'"),
    ("ping_timeout", "ping_timeout: 0", "ping_timeout: must be greater than 0, got 0"),
    ("graceful_timeout", "graceful_timeout: -1", "graceful_timeout: must be at least 0, got -1"),
    ("drain_timeout", "drain_timeout: null", "drain_timeout: must be a number, got null"),
    ("worker_timeout", "worker_timeout: 0", "worker_timeout: must be greater than 0, got 0"),
    ("client_max_payload", "client_max_payload: 0", "client_max_payload: must be at least 1, got 0"),
    ("client_max_payload", "client_max_payload: 33554433", "client_max_payload: must be at most 33554432, got 33554433"),
    ("upstream_max_payload", "upstream_max_payload: 33554433",
     "upstream_max_payload: must be at most 33554432, got 33554433"),
    ("upstream_max_payload", "upstream_max_payload: 1MiB", "upstream_max_payload: must be an integer, got '1MiB'"),
    ("max_header_size", "max_header_size: 100", "max_header_size: must be at least 1024, got 100"),
    ("max_headers", "max_headers: 0", "max_headers: must be at least 1, got 0"),
    ("max_headers", "max_headers: 10001", "max_headers: must be at most 10000, got 10001"),
    ("validate_utf8", "validate_utf8: 'maybe'", "validate_utf8: must be true or false, got 'maybe'"),
    ("write_buffer_high", "write_buffer_high: 0", "write_buffer_high: must be at least 1, got 0"),
    ("write_buffer_low", "write_buffer_low: -1", "write_buffer_low: must be at least 0, got -1"),
    ("write_buffer_low", "write_buffer_low: 70000", "write_buffer_low: must not exceed write_buffer_high (65536), got 70000"),
    ("services", "services: {}", "services: must be a list, got a mapping"),
    ("plugins", "plugins: size-limit", "plugins: must be a list, got 'size-limit'"),
]


@pytest.mark.parametrize("setting, text, expected", BAD_VALUES, ids=[f"{b[0]}:{b[1]}" for b in BAD_VALUES])
def test_bad_value(workdir, setting, text, expected):
    assert error_of(text + "\n") == "fastws.yaml: " + expected.replace("{dir}", str(workdir))


def test_every_setting_has_a_bad_value_case():
    assert {b[0] for b in BAD_VALUES} == {s.name for s in SETTINGS}


class TestGoodValues:
    def test_listen_forms(self, workdir):
        config = load_text(
            "listen:\n"
            "  - 0.0.0.0:8000\n"
            "  - '[::1]:8001'\n"
            "  - {address: 'localhost:8443', tls: {cert: cert.pem, key: key.pem}}\n"
            "  - {address: '10.0.0.1:8002', tls: null}\n"
        )
        tls = TLSFiles(str(workdir / "cert.pem"), str(workdir / "key.pem"))
        assert config.listen == (
            Listen("0.0.0.0", 8000), Listen("::1", 8001), Listen("localhost", 8443, tls), Listen("10.0.0.1", 8002)
        )
        assert [item.address for item in config.listen] == [
            "0.0.0.0:8000", "[::1]:8001", "localhost:8443", "10.0.0.1:8002"
        ]

    def test_listen_single_string(self, workdir):
        assert load_text("listen: 0.0.0.0:80\n").listen == (Listen("0.0.0.0", 80),)

    def test_admin_ipv6(self, workdir):
        assert load_text("admin: '[::1]:9901'\n").admin == ("::1", 9901)

    def test_access_log(self, workdir):
        assert load_text("access_log: '-'\n").access_log == "-"
        os.mkdir("conf")
        pathlib.Path("conf/fastws.yaml").write_text("access_log: logs/access.log\n")
        os.mkdir("conf/logs")
        assert load_config("conf/fastws.yaml").access_log == str(workdir / "conf" / "logs" / "access.log")

    def test_yaml_booleans(self, workdir):
        assert load_text("validate_utf8: yes\n").validate_utf8 is True

    def test_parse_and_format_address(self):
        for text, parsed in [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::]:8443", ("::", 8443)),
                             ("Example.COM:1", ("example.com", 1))]:
            assert parse_address(text) == parsed
            assert parse_address(format_address(*parsed)) == parsed
        with pytest.raises(ValueError):
            parse_address("nope")


# --------------------------------------------------------------------------------------
# The file itself


class TestFileErrors:
    def test_unknown_setting_suggests(self, workdir):
        assert error_of("wrokers: 4\n") == "fastws.yaml: unknown setting 'wrokers' (did you mean 'workers'?)"

    def test_unknown_setting_without_close_match(self, workdir):
        assert error_of("zzz: 1\n") == "fastws.yaml: unknown setting 'zzz'"

    def test_unknown_setting_wins_over_missing_key_inside(self, workdir):
        assert error_of("tls-cert: x\n") == "fastws.yaml: unknown setting 'tls-cert' (did you mean 'tls_cert'?)"

    def test_yaml_syntax_error_names_line(self, workdir):
        message = error_of("workers: 2\nlisten:\n  - 0.0.0.0:80\n   bad: [\n")
        assert message.startswith("fastws.yaml: line 4, column ")
        assert "YAML syntax error" in message

    def test_unquoted_ipv6_hint(self, workdir):
        message = error_of("workers: 1\nlisten:\n  - [::1]:8000\n")
        assert message.startswith("fastws.yaml: line 3, column ")
        assert message.endswith('(quote IPv6 addresses: "[::1]:8000")')

    def test_duplicate_key(self, workdir):
        assert error_of("workers: 1\nlog_level: info\nworkers: 2\n") == (
            "fastws.yaml: line 3, column 1: duplicate key 'workers'"
        )

    def test_top_level_not_a_mapping(self, workdir):
        assert error_of("- workers\n") == "fastws.yaml: must be a mapping of settings (key: value), got a list"
        assert error_of("42\n") == "fastws.yaml: must be a mapping of settings (key: value), got 42"

    def test_missing_file(self, workdir):
        with pytest.raises(ConfigError, match=r"^nope\.yaml: cannot read the config file: No such file"):
            load_config("nope.yaml")

    def test_not_utf8(self, workdir):
        pathlib.Path("fastws.yaml").write_bytes(b"workers: \xff\n")
        with pytest.raises(ConfigError, match=r"^fastws\.yaml: not a UTF-8 text file$"):
            load_config("fastws.yaml")

    def test_paths_relative_to_the_file(self, workdir):
        os.makedirs("etc/certs")
        pathlib.Path("etc/certs/c.pem").write_text("c")
        pathlib.Path("etc/certs/k.pem").write_text("k")
        pathlib.Path("etc/fastws.yaml").write_text("tls_cert: certs/c.pem\ntls_key: certs/k.pem\n")
        config = load_config("etc/fastws.yaml")
        assert config.tls_cert == str(workdir / "etc" / "certs" / "c.pem")
        assert config.listen[0].tls == TLSFiles(config.tls_cert, config.tls_key)


# --------------------------------------------------------------------------------------
# Flags: precedence, the argparse glue, messages naming the flag


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastws")
    add_arguments(parser, config_flag=True)
    return parser


class TestFlags:
    def test_flags_override_file(self, workdir):
        config = load_text("workers: 4\nlog_level: debug\nlisten: ['0.0.0.0:80', '0.0.0.0:81']\n",
                           {"workers": 2, "listen": ["127.0.0.1:9000"]})
        assert config.workers == 2
        assert config.log_level == "debug"  # not given as a flag: the file's value stays
        assert config.listen == (Listen("127.0.0.1", 9000),)  # replaced, not appended

    def test_parser_leaves_absent_flags_out(self):
        args = make_parser().parse_args([])
        assert vars(args) == {"config": None}

    def test_config_from_args(self, workdir):
        pathlib.Path("fastws.yaml").write_text("workers: 4\nadmin: 127.0.0.1:9901\n" + SERVICE)
        args = make_parser().parse_args(
            ["--config", "fastws.yaml", "--workers", "3", "--listen", "0.0.0.0:1", "--listen", "[::]:2",
             "--log-level", "warning", "--access-log", "-", "--access-log-format", "json"]
        )
        config = config_from_args(args)
        assert config.workers == 3
        assert config.listen == (Listen("0.0.0.0", 1), Listen("::", 2))
        assert config.admin == ("127.0.0.1", 9901)
        assert (config.log_level, config.access_log, config.access_log_format) == ("warning", "-", "json")
        assert config.services[0].name == "chat"
        assert config.source == "fastws.yaml"

    def test_config_from_args_without_file(self):
        config = config_from_args(make_parser().parse_args(["--upstream", "ws://127.0.0.1:9000"]))
        assert config.services[0].url == "ws://127.0.0.1:9000" and config.echo is False

    def test_argparse_checks_types_and_choices(self, capsys):
        for argv in (["--workers", "x"], ["--log-level", "loud"], ["--access-log-format", "xml"]):
            with pytest.raises(SystemExit) as info:
                make_parser().parse_args(argv)
            assert info.value.code == 2
        assert "invalid" in capsys.readouterr().err

    def test_help_renders(self):
        text = " ".join(make_parser().format_help().split())
        for flag in ("--listen HOST:PORT", "--workers N", "--tls-cert PEM", "--access-log PATH|-"):
            assert flag in text
        assert "(default: 1)" in text and "(default: 127.0.0.1:8000)" in text and "(default: info)" in text

    def test_add_arguments_leaves_config_to_the_caller_by_default(self):
        parser = argparse.ArgumentParser()
        parser.add_argument("--config", "-c")
        add_arguments(parser)
        assert vars(parser.parse_args([])) == {"config": None}

    @pytest.mark.parametrize(
        "overrides, expected",
        [
            ({"workers": 0}, "--workers: must be at least 1, got 0"),
            ({"listen": ["nope"]}, "--listen: must be HOST:PORT, like 127.0.0.1:8000, got 'nope'"),
            ({"upstream": "http://x"}, "--upstream: must be a ws:// or wss:// URL, got 'http://x'"),
            ({"admin": "x"}, "--admin: must be HOST:PORT, like 127.0.0.1:8000, got 'x'"),
            ({"tls_cert": "cert.pem"}, "--tls-key is required with --tls-cert"),
            ({"tls_key": "key.pem"}, "--tls-cert is required with --tls-key"),
            ({"tls_cert": "nope.pem", "tls_key": "key.pem"}, "--tls-cert: no such file: 'nope.pem' (looked for {dir}/nope.pem)"),
            ({"log_level": "loud"}, "--log-level: must be one of debug, info, warning, error, critical; got 'loud'"),
            ({"admin": "127.0.0.1:8000"}, "--admin: 127.0.0.1:8000 is also a listen address"),
            ({"close_timeout": -1}, "setting 'close_timeout': must be at least 0, got -1"),
            ({"wrokers": 2}, "unknown setting 'wrokers' (did you mean 'workers'?)"),
        ],
    )
    def test_flag_errors_name_the_flag(self, workdir, overrides, expected):
        assert flag_error(overrides) == expected.replace("{dir}", str(workdir))

    def test_flag_file_cross_check_names_each_source(self, workdir):
        # listen comes from the file, admin from the flag: the flag is blamed.
        message = flag_error({"admin": "0.0.0.0:80"}, "listen: ['0.0.0.0:80']\n")
        assert message == "--admin: 0.0.0.0:80 is also a listen address"
        message = flag_error({"listen": ["0.0.0.0:80"]}, "admin: 0.0.0.0:80\n")
        assert message == "fastws.yaml: admin: 0.0.0.0:80 is also a listen address"

    def test_flag_paths_relative_to_working_directory(self, workdir):
        os.mkdir("etc")
        pathlib.Path("etc/fastws.yaml").write_text("workers: 1\n")
        config = load_config("etc/fastws.yaml", {"tls_cert": "cert.pem", "tls_key": "key.pem"})
        assert config.tls_cert == str(workdir / "cert.pem")


# --------------------------------------------------------------------------------------
# upstream shorthand, echo mode, TLS for listen addresses


class TestUpstreamAndEcho:
    def test_echo_when_nothing_configured(self, workdir):
        assert load_config(None).echo is True
        assert load_text("workers: 2\n").echo is True

    def test_no_echo_with_services(self, workdir):
        assert load_text(SERVICE).echo is False

    def test_upstream_flag_is_one_catch_all_service(self):
        config = load_config(None, {"upstream": "wss://Backend.example:9443/ws"})
        assert config.echo is False
        assert config.upstream == "wss://Backend.example:9443/ws"
        (service,) = config.services
        assert (service.name, service.scheme, service.host, service.port, service.path) == (
            "default", "wss", "backend.example", 9443, "/ws"
        )
        assert service.routes == (Route("default", ("/",), (), True),)
        assert service.tls_verify is True and service.plugins == ()

    def test_upstream_in_file(self, workdir):
        config = load_text("upstream: ws://127.0.0.1:9000\n")
        assert config.services == (upstream_service("ws://127.0.0.1:9000"),)

    def test_upstream_flag_replaces_file_services(self, workdir):
        config = load_text(SERVICE + "plugins: [{name: size-limit}]\n", {"upstream": "ws://127.0.0.1:9000"})
        assert [s.name for s in config.services] == ["default"]
        assert config.plugins == (PluginSpec("size-limit"),)  # global plugins stay

    def test_upstream_and_services_in_one_file(self, workdir):
        assert error_of("upstream: ws://x\n" + SERVICE) == (
            "fastws.yaml: upstream: cannot be combined with services; "
            "add a service with a catch-all route (paths: [/]) instead"
        )

    def test_upstream_service_helper(self):
        service = upstream_service("ws://127.0.0.1:5555", name="echo")
        assert (service.name, service.port, service.path, service.routes[0].name) == ("echo", 5555, "/", "echo")
        with pytest.raises(ConfigError, match=r"^url: must be a ws:// or wss:// URL, got 'tcp://x'$"):
            upstream_service("tcp://x")


class TestListenTLS:
    def test_tls_flags_apply_to_flag_listen_addresses(self, workdir):
        config = load_config(None, {"listen": ["0.0.0.0:443", "[::]:443"], "tls_cert": "cert.pem",
                                    "tls_key": "key.pem"})
        tls = TLSFiles(str(workdir / "cert.pem"), str(workdir / "key.pem"))
        assert [item.tls for item in config.listen] == [tls, tls]

    def test_tls_flags_apply_to_the_default_listen_address(self, workdir):
        config = load_config(None, {"tls_cert": "cert.pem", "tls_key": "key.pem"})
        assert config.listen[0].tls is not None

    def test_tls_flags_keep_file_entries_with_their_own_tls(self, workdir):
        os.mkdir("other")
        pathlib.Path("other/c.pem").write_text("c")
        pathlib.Path("other/k.pem").write_text("k")
        config = load_text(
            "listen: ['0.0.0.0:80', {address: '0.0.0.0:443', tls: {cert: other/c.pem, key: other/k.pem}}]\n",
            {"tls_cert": "cert.pem", "tls_key": "key.pem"},
        )
        assert config.listen[0].tls == TLSFiles(str(workdir / "cert.pem"), str(workdir / "key.pem"))
        assert config.listen[1].tls == TLSFiles(str(workdir / "other/c.pem"), str(workdir / "other/k.pem"))

    def test_no_tls_by_default(self, workdir):
        assert load_text("listen: ['0.0.0.0:80']\n").listen[0].tls is None


# --------------------------------------------------------------------------------------
# services, routes, plugins


def svc(extra: str = "", url: str = "ws://backend:9000/ws", routes: str = "[{paths: [/chat]}]") -> str:
    return f"services:\n  - {{name: chat, url: '{url}', routes: {routes}{extra}}}\n"


class TestServices:
    def test_full_service(self, workdir):
        config = load_text(
            "services:\n"
            "  - name: chat\n"
            "    url: wss://Chat-Backend:9000/ws\n"
            "    connect_timeout: 3\n"
            "    tls_verify: false\n"
            "    ca_file: cert.pem\n"
            "    client_cert: cert.pem\n"
            "    client_key: key.pem\n"
            "    routes:\n"
            "      - {name: chat-r, paths: [/chat, /talk/], hosts: [Chat.Example.com., '*.chat.example.com'],"
            " strip_path: false}\n"
            "    plugins:\n"
            "      - {name: size-limit, config: {client_max_payload: 65536}}\n"
            "      - {name: 'my.mod:Plug', enabled: false}\n"
        )
        (s,) = config.services
        assert (s.name, s.url, s.scheme, s.host, s.port, s.path) == (
            "chat", "wss://Chat-Backend:9000/ws", "wss", "chat-backend", 9000, "/ws"
        )
        assert (s.connect_timeout, s.tls_verify, s.tls) == (3.0, False, True)
        assert s.ca_file == s.client_cert == str(workdir / "cert.pem")
        assert s.client_key == str(workdir / "key.pem")
        assert s.routes == (Route("chat-r", ("/chat", "/talk/"), ("chat.example.com", "*.chat.example.com"), False),)
        assert s.plugins == (PluginSpec("size-limit", {"client_max_payload": 65536}, True),
                             PluginSpec("my.mod:Plug", {}, False))

    def test_service_defaults(self, workdir):
        (s,) = load_text(svc()).services
        assert (s.connect_timeout, s.tls_verify, s.ca_file, s.client_cert, s.client_key, s.plugins) == (
            10.0, True, None, None, None, ()
        )
        assert s.routes == (Route("chat", ("/chat",), (), True),)

    @pytest.mark.parametrize(
        "url, parts",
        [
            ("ws://h", ("ws", "h", 80, "/")),
            ("wss://h", ("wss", "h", 443, "/")),
            ("WSS://H:1/a/b/", ("wss", "h", 1, "/a/b/")),
            ("ws://[::1]:9000/x", ("ws", "::1", 9000, "/x")),
        ],
    )
    def test_url_parts(self, workdir, url, parts):
        (s,) = load_text(svc(url=url)).services
        assert (s.scheme, s.host, s.port, s.path) == parts

    def test_derived_route_names(self, workdir):
        (s,) = load_text(svc(routes="[{paths: [/a]}, {name: named, paths: [/b]}, {paths: [/c]}]")).services
        assert [r.name for r in s.routes] == ["chat-0", "named", "chat-2"]

    SERVICE_ERRORS = [
        (svc(url="http://x"), "services[0].url: must be a ws:// or wss:// URL, got 'http://x'"),
        (svc(url="ws://"), "services[0].url: must be a ws:// or wss:// URL, got 'ws://'"),
        (svc(url="ws://h:99999"), "services[0].url: has an invalid port, got 'ws://h:99999'"),
        (svc(url="ws://h/?a=1"), "services[0].url: must not have a query string or a fragment, got 'ws://h/?a=1'"),
        (svc(url="ws://u:p@h/"), "services[0].url: must not contain credentials (user:password@), got 'ws://u:p@h/'"),
        ("services: [{name: chat, url: 5, routes: [{paths: [/]}]}]", "services[0].url: must be a ws:// or wss:// URL, got 5"),
        ("services: [{url: 'ws://x', routes: [{paths: [/]}]}]", "services[0]: missing required key 'name'"),
        ("services: [{name: chat, routes: [{paths: [/]}]}]", "services[0]: missing required key 'url'"),
        ("services: [{name: chat, url: 'ws://x'}]", "services[0]: missing required key 'routes'"),
        ("services: [{name: chat, urll: 'ws://x', routes: []}]", "services[0]: unknown key 'urll' (did you mean 'url'?)"),
        ("services: [{name: '', url: 'ws://x', routes: [{paths: [/]}]}]", "services[0].name: must not be empty"),
        ("services: [{name: 'a b', url: 'ws://x', routes: [{paths: [/]}]}]",
         "services[0].name: may contain only letters, digits and . _ ~ -, got 'a b'"),
        (svc(routes="[]"), "services[0].routes: must not be empty"),
        (svc(", connect_timeout: 0"), "services[0].connect_timeout: must be greater than 0, got 0"),
        (svc(", tls_verify: 1"), "services[0].tls_verify: must be true or false, got 1"),
        (svc(", ca_file: cert.pem"), "services[0].ca_file: applies to wss:// URLs only, and url is 'ws://backend:9000/ws'"),
        (svc(", ca_file: nope.pem", url="wss://h"), "services[0].ca_file: no such file: 'nope.pem' (looked for {dir}/nope.pem)"),
        (svc(", client_cert: cert.pem", url="wss://h"),
         "services[0].client_key: required when client_cert is set (they go together)"),
        (svc(", client_key: key.pem", url="wss://h"),
         "services[0].client_cert: required when client_key is set (they go together)"),
        (svc(", client_cert: cert.pem, client_key: nope.pem", url="wss://h"),
         "services[0].client_key: no such file: 'nope.pem' (looked for {dir}/nope.pem)"),
        ("services:\n - {name: a, url: 'ws://x', routes: [{paths: [/]}]}\n - {name: a, url: 'ws://y', routes: [{paths: [/]}]}",
         "services[1].name: duplicate service name 'a' (also services[0])"),
        ("services:\n - {name: a, url: 'ws://x', routes: [{name: r, paths: [/]}]}\n"
         " - {name: b, url: 'ws://y', routes: [{paths: [/b]}, {name: r, paths: [/]}]}",
         "services[1].routes[1].name: duplicate route name 'r' (also services[0].routes[0])"),
        ("services:\n - {name: a, url: 'ws://x', routes: [{name: b, paths: [/]}]}\n - {name: b, url: 'ws://y', routes: [{paths: [/]}]}",
         "services[1].routes[0]: duplicate route name 'b' (also services[0].routes[0]); "
         "this unnamed route's name comes from its service: give it a name"),
        # routes
        (svc(routes="[{}]"), "services[0].routes[0]: needs paths or hosts (use paths: [/] for a catch-all route)"),
        (svc(routes="[{paths: []}]"), "services[0].routes[0]: needs paths or hosts (use paths: [/] for a catch-all route)"),
        (svc(routes="[{paths: [chat]}]"), "services[0].routes[0].paths[0]: must start with '/', got 'chat'"),
        (svc(routes="[{paths: [/a, '/b?x']}]"), "services[0].routes[0].paths[1]: must not contain '?' or '#', got '/b?x'"),
        (svc(routes="[{paths: [/a b]}]"), "services[0].routes[0].paths[0]: must not contain white space, got '/a b'"),
        (svc(routes="[{paths: /chat}]"), "services[0].routes[0].paths: must be a list, got '/chat'"),
        (svc(routes="[{paths: [3]}]"), "services[0].routes[0].paths[0]: must be a string, got 3"),
        (svc(routes="[{hosts: ['a.com:80']}]"), "services[0].routes[0].hosts[0]: must be a host name without a port, got 'a.com:80'"),
        (svc(routes="[{hosts: ['a.*.com']}]"),
         "services[0].routes[0].hosts[0]: must be a host name, optionally starting with '*.', got 'a.*.com'"),
        (svc(routes="[{hosts: ['example.*']}]"),
         "services[0].routes[0].hosts[0]: must be a host name, optionally starting with '*.', got 'example.*'"),
        (svc(routes="[{paths: [/], strip_path: 'no'}]"), "services[0].routes[0].strip_path: must be true or false, got 'no'"),
        (svc(routes="[{paths: [/], name: 'x y'}]"),
         "services[0].routes[0].name: may contain only letters, digits and . _ ~ -, got 'x y'"),
        (svc(routes="[{path: [/]}]"), "services[0].routes[0]: unknown key 'path' (did you mean 'paths'?)"),
        # service plugins
        (svc(", plugins: [{config: {}}]"), "services[0].plugins[0]: missing required key 'name'"),
        (svc(", plugins: [{name: 'Bad Name'}]"),
         "services[0].plugins[0].name: must be a built-in plugin name like 'size-limit' or 'module:Class', got 'Bad Name'"),
        (svc(", plugins: [{name: 'mod:'}]"),
         "services[0].plugins[0].name: must be a built-in plugin name like 'size-limit' or 'module:Class', got 'mod:'"),
        (svc(", plugins: [{name: size-limit, config: [1]}]"),
         "services[0].plugins[0].config: must be a mapping or null, got a list"),
        (svc(", plugins: [{name: size-limit, confg: {}}]"),
         "services[0].plugins[0]: unknown key 'confg' (did you mean 'config'?)"),
        (svc(", plugins: {name: size-limit}"), "services[0].plugins: must be a list, got a mapping"),
    ]

    @pytest.mark.parametrize("text, expected", SERVICE_ERRORS, ids=[e[1].split(":")[0] + str(i)
                                                                    for i, e in enumerate(SERVICE_ERRORS)])
    def test_service_errors(self, workdir, text, expected):
        assert error_of(text + "\n") == "fastws.yaml: " + expected.replace("{dir}", str(workdir))

    def test_route_hosts_normalised(self, workdir):
        (s,) = load_text(svc(routes="[{hosts: [Chat.Example.COM., '*.Example.com', '[::1]', 10.0.0.1]}]")).services
        assert s.routes[0].hosts == ("chat.example.com", "*.example.com", "[::1]", "10.0.0.1")
        assert s.routes[0].paths == ()


class TestPlugins:
    def test_global_plugins_kept_verbatim(self, workdir):
        config = load_text(
            "plugins:\n"
            "  - {name: 'mycompany.audit:AuditPlugin', config: {sink: /var/log/audit.jsonl, deep: {a: [1]}}}\n"
            "  - {name: size-limit, config: null}\n"
            "  - {name: not-a-real-plugin, enabled: false}\n"
            "  - name: pkg.sub.mod:Outer.Inner\n"
        )
        assert config.plugins == (
            PluginSpec("mycompany.audit:AuditPlugin", {"sink": "/var/log/audit.jsonl", "deep": {"a": [1]}}, True),
            PluginSpec("size-limit", {}, True),
            PluginSpec("not-a-real-plugin", {}, False),
            PluginSpec("pkg.sub.mod:Outer.Inner", {}, True),
        )

    @pytest.mark.parametrize(
        "text, expected",
        [
            ("plugins: [{}]", "plugins[0]: missing required key 'name'"),
            ("plugins: [size-limit]", "plugins[0]: must be a mapping, got 'size-limit'"),
            ("plugins: [{name: 3}]", "plugins[0].name: must be a string, got 3"),
            ("plugins: [{name: ok}, {name: 'a:b:c'}]",
             "plugins[1].name: must be a built-in plugin name like 'size-limit' or 'module:Class', got 'a:b:c'"),
            ("plugins: [{name: ok, enabled: 'no'}]", "plugins[0].enabled: must be true or false, got 'no'"),
            ("plugins: [{name: ok, conf: {}}]", "plugins[0]: unknown key 'conf' (did you mean 'config'?)"),
        ],
    )
    def test_plugin_errors(self, workdir, text, expected):
        assert error_of(text + "\n") == "fastws.yaml: " + expected


# --------------------------------------------------------------------------------------
# Dump, check, docs

FULL = """\
listen:
  - 0.0.0.0:8000
  - {address: '[::]:8443', tls: {cert: cert.pem, key: key.pem}}
workers: 4
admin: 127.0.0.1:9901
log_level: debug
access_log: access.log
access_log_format: json
handshake_timeout: 3
close_timeout: 1.5
idle_timeout: 60
ping_interval: 15
ping_timeout: 5
graceful_timeout: 2
drain_timeout: 7
client_max_payload: 65536
upstream_max_payload: 33554432
max_header_size: 8192
max_headers: 50
validate_utf8: true
write_buffer_high: 1000
write_buffer_low: 1000
tls_cert: cert.pem
tls_key: key.pem
services:
  - name: chat
    url: wss://chat-backend:9000/ws
    connect_timeout: 10
    tls_verify: true
    ca_file: cert.pem
    client_cert: cert.pem
    client_key: key.pem
    routes:
      - {name: chat, paths: [/chat], hosts: [chat.example.com], strip_path: true}
      - {paths: [/x, /y/], strip_path: false}
    plugins:
      - {name: size-limit, config: {client_max_payload: 65536}}
  - name: other
    url: ws://[::1]:9001
    routes: [{hosts: ['*.example.com']}]
plugins:
  - {name: "mycompany.audit:AuditPlugin", config: {sink: /var/log/audit.jsonl}}
  - {name: validator, enabled: false}
"""


class TestDump:
    def roundtrip(self, config: Config) -> Config:
        pathlib.Path("dumped.yaml").write_text(dump_config(config))
        return load_config("dumped.yaml")

    def test_full_roundtrip(self, workdir):
        config = load_text(FULL)
        again = self.roundtrip(config)
        assert again == config
        assert again.source == "dumped.yaml"

    def test_roundtrip_from_another_directory(self, workdir):
        """Dumped paths are absolute, so the dump works wherever it is saved."""
        config = load_text(FULL)
        os.mkdir("elsewhere")
        pathlib.Path("elsewhere/d.yaml").write_text(dump_config(config))
        assert load_config("elsewhere/d.yaml") == config

    def test_defaults_roundtrip(self, workdir):
        config = load_config(None)
        assert self.roundtrip(config) == config
        data = effective_config_dict(config)
        assert set(data) == {s.name for s in SETTINGS}
        assert data["listen"] == ["127.0.0.1:8000"] and data["admin"] is None

    def test_upstream_roundtrip(self, workdir):
        config = load_config(None, {"upstream": "ws://127.0.0.1:9000/x"})
        data = effective_config_dict(config)
        assert data["upstream"] == "ws://127.0.0.1:9000/x" and "services" not in data
        assert self.roundtrip(config) == config

    def test_dump_is_plain_yaml(self, workdir):
        data = yaml.safe_load(dump_config(load_text(FULL)))
        assert data["listen"][0]["address"] == "0.0.0.0:8000"  # tls_cert gave it TLS
        assert data["listen"][0]["tls"]["cert"].endswith("cert.pem")
        assert data["listen"][1]["address"] == "[::]:8443"
        assert data["admin"] == "127.0.0.1:9901"
        assert data["services"][0]["routes"][1]["name"] == "chat-1"

    @given(
        workers=st.integers(1, 64),
        timeouts=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=4, max_size=4),
        payloads=st.tuples(st.integers(1, cfg.MAX_PAYLOAD_LIMIT), st.integers(1, cfg.MAX_PAYLOAD_LIMIT)),
        utf8=st.booleans(),
        level=st.sampled_from(cfg.LOG_LEVELS),
        buffers=st.tuples(st.integers(1, 1 << 30), st.integers(0, 1 << 30)).map(lambda t: (t[0], min(t))),
        port=st.integers(1, 65535),
    )
    def test_scalar_roundtrip(self, workers, timeouts, payloads, utf8, level, buffers, port):
        overrides = dict(
            workers=workers, close_timeout=timeouts[0], idle_timeout=timeouts[1], ping_interval=timeouts[2],
            drain_timeout=timeouts[3], client_max_payload=payloads[0], upstream_max_payload=payloads[1],
            validate_utf8=utf8, log_level=level, write_buffer_high=buffers[0], write_buffer_low=buffers[1],
            listen=[f"[::1]:{port}"],
        )
        config = load_config(None, overrides)
        assert load_config(None, yaml.safe_load(dump_config(config))) == config


class TestCheckMain:
    def test_valid(self, workdir, capsys):
        pathlib.Path("fastws.yaml").write_text(FULL)
        assert check_main("fastws.yaml") == 0
        out, err = capsys.readouterr()
        assert err == ""
        assert yaml.safe_load(out) == effective_config_dict(load_config("fastws.yaml"))

    def test_echo_note(self, workdir, capsys):
        pathlib.Path("fastws.yaml").write_text("workers: 2\n")
        assert check_main("fastws.yaml") == 0
        out = capsys.readouterr().out
        assert out.startswith("# no services: fastws would proxy to its built-in echo upstream\n")
        assert yaml.safe_load(out)["workers"] == 2

    def test_invalid(self, workdir, capsys):
        pathlib.Path("fastws.yaml").write_text("workers: 0\n")
        assert check_main("fastws.yaml") == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err == "fastws: fastws.yaml: workers: must be at least 1, got 0\n"

    def test_missing_file(self, workdir, capsys):
        assert check_main("nope.yaml") == 2
        assert capsys.readouterr().err.startswith("fastws: nope.yaml: cannot read the config file")


class TestDocs:
    def test_render_docs_lists_everything(self):
        text = render_docs()
        for s in SETTINGS:
            assert f"| `{s.name}` |" in text
            if s.cli:
                assert f"`{s.flag}" in text
        for fields in (cfg.SERVICE_FIELDS, cfg.ROUTE_FIELDS, cfg.PLUGIN_FIELDS):
            for f in fields:
                assert f"| `{f.name}` |" in text

    def test_docs_file_is_current(self):
        """docs/configuration.md embeds render_docs(); regenerate it when a setting changes."""
        assert render_docs() in DOCS.read_text()

    def test_docs_example_is_valid(self, workdir):
        """The full example in the docs loads (with its certificate files present)."""
        text = DOCS.read_text()
        example = text.split("<!-- full example -->\n```yaml\n", 1)[1].split("```", 1)[0]
        for name in ("certs/server.pem", "certs/server.key", "certs/ca.pem", "certs/client.pem",
                     "certs/client.key"):
            pathlib.Path(name).parent.mkdir(exist_ok=True)
            pathlib.Path(name).write_text("x")
        os.mkdir("logs")
        config = load_text(example)
        assert config.services and config.plugins
