"""The built-in plugins' handlers, run through a handler chain without sockets.

Each test builds the plugin with ``fastws.plugins.create``, binds a ``Chain`` to
a bare ``fastws.pdk.WebSocket`` and runs a phase on an in-flight frame
(``fastws.session.InFlight``), then asserts what the handlers made of it:
data, ``dropped``, ``close_args``, status, or the per-side limits after the
handshake phase. What the session then puts on the wire is tested elsewhere.
"""

from __future__ import annotations

import json
import logging

import fastjsonschema
import pytest

from fastws.errors import PDKError
from fastws.frames import Opcode
from fastws.pdk import Rejected, WebSocket
from fastws.plugins import PHASES, Plugin, create
from fastws.plugins.chain import Chain, HandlerError
from fastws.session import InFlight

MAX = 33554432
INVALID = (1007, "Invalid Frame Payload Data")
# What close(1007, reason) sends the peer: as in Kong, a close frame with no status.
PEER_CLOSE = (None, "")


def bind(*plugins):
    ws = WebSocket()
    return Chain(list(plugins)).bind(ws), ws


def frame(opcode=Opcode.TEXT, data=b"", status=None):
    return InFlight(opcode, data, status)


def phases(chain) -> set[str]:
    return {phase for phase in PHASES if chain.has(phase)}


class Recorder(Plugin):
    """Priority 0: notes each frame it sees in ws.shared["seen"]."""

    name = "recorder"
    priority = 0

    def ws_client_frame(self, ws):
        ws.shared.setdefault("seen", []).append(("recorder", ws.client.get_frame()))

    def ws_upstream_frame(self, ws):
        ws.shared.setdefault("seen", []).append(("recorder", ws.upstream.get_frame()))


# -- size-limit -------------------------------------------------------------------------


class TestSizeLimit:
    @pytest.mark.parametrize("raw, client, upstream", [
        ({"client_max_payload": 4096}, 4096, 0),
        ({"upstream_max_payload": 1048576}, 0, 1048576),
        ({"client_max_payload": 1, "upstream_max_payload": MAX}, 1, MAX),
        ({"client_max_payload": MAX, "upstream_max_payload": None}, MAX, 0),
    ])
    def test_sets_limits_at_handshake(self, raw, client, upstream):
        chain, ws = bind(create("size-limit", raw))
        assert (ws.payload_limit(0), ws.payload_limit(1)) == (0, 0)
        assert chain.run_handshake() is None
        assert (ws.payload_limit(0), ws.payload_limit(1)) == (client, upstream)

    def test_only_the_handshake_phase(self):
        # No frame phase: both directions stay in passthrough.
        chain, _ = bind(create("size-limit", {"client_max_payload": 10, "upstream_max_payload": 10}))
        assert phases(chain) == {"ws_handshake"}

    def test_runs_after_pre_function(self):
        # pre-function (1000000) runs first; size-limit (1003) has the last word.
        pre = create("pre-function", {"ws_handshake": ["ws.client.set_max_payload_size(100)",
                                                       "ws.upstream.set_max_payload_size(200)"]})
        chain, ws = bind(create("size-limit", {"client_max_payload": 4096}), pre)
        chain.run_handshake()
        assert (ws.payload_limit(0), ws.payload_limit(1)) == (4096, 200)


# -- validator --------------------------------------------------------------------------

NAMED = json.dumps({"type": "object", "required": ["name"]})


def validator(**peers):
    raw = {peer: {typ: {"type": "draft4", "schema": schema} for typ, schema in types.items()}
           for peer, types in peers.items()}
    return create("validator", raw)


class TestValidator:
    def test_kong_example(self):
        # Kong's docs: Alex and Kiran pass, missing_name closes with 1007.
        chain, _ = bind(validator(client={"text": NAMED}))
        for data in (b'{ "name": "Alex" }', b'{ "name": "Kiran" }'):
            f = frame(data=data)
            chain.run("ws_client_frame", f)
            assert (f.data, f.dropped, f.close_args) == (data, False, None)
        f = frame(data=b'{ "missing_name": true }')
        chain.run("ws_client_frame", f)
        assert f.close_args == INVALID + PEER_CLOSE

    @pytest.mark.parametrize("data", [
        b"not json", b"{", b"", b'{"name": 1} trailing', b"\xef\xbb\xbf{}",
        b'{"name": NaN}', b'{"name": Infinity}', b"[" * 100000 + b"]" * 100000,
    ])
    def test_invalid_json_closes(self, data):
        chain, _ = bind(validator(client={"text": json.dumps({})}))
        f = frame(data=data)
        chain.run("ws_client_frame", f)
        assert f.close_args == INVALID + PEER_CLOSE

    @pytest.mark.parametrize("data, valid", [
        (b'"a string"', False), (b"[]", False), (b"null", False), (b"{}", False),
        (b'{"name": null}', True), (b'{"name": "x", "more": [1, 2]}', True),
    ])
    def test_any_json_document(self, data, valid):
        chain, _ = bind(validator(upstream={"text": NAMED}))
        f = frame(data=data)
        chain.run("ws_upstream_frame", f)
        assert f.close_args == (None if valid else INVALID + PEER_CLOSE)

    @pytest.mark.parametrize("data, valid", [
        (b'{"name": "x"}', True), (b"{}", False), (b"\x00\x01\x02", False),
        (b"\xff{}", False), ('{"name": "\u00e9"}'.encode("utf-16"), False),
    ])
    def test_binary_is_decoded_as_json(self, data, valid):
        # Kong's cjson decodes binary payloads as JSON too; only UTF-8 JSON is JSON.
        chain, _ = bind(validator(client={"binary": NAMED}))
        f = frame(Opcode.BINARY, data)
        chain.run("ws_client_frame", f)
        assert f.close_args == (None if valid else INVALID + PEER_CLOSE)

    def test_text_and_binary_schemas_apart(self):
        chain, _ = bind(validator(client={"text": json.dumps({"type": "string"}),
                                          "binary": json.dumps({"type": "integer"})}))
        for opcode, data, valid in [(Opcode.TEXT, b'"s"', True), (Opcode.TEXT, b"1", False),
                                    (Opcode.BINARY, b"1", True), (Opcode.BINARY, b'"s"', False)]:
            f = frame(opcode, data)
            chain.run("ws_client_frame", f)
            assert f.close_args == (None if valid else INVALID + PEER_CLOSE), (opcode, data)

    def test_type_without_schema_passes(self):
        chain, _ = bind(validator(client={"text": NAMED}))
        f = frame(Opcode.BINARY, b"\xff not json")
        chain.run("ws_client_frame", f)
        assert (f.data, f.dropped, f.close_args) == (b"\xff not json", False, None)

    @pytest.mark.parametrize("opcode, data, status", [
        (Opcode.PING, b"not json", None), (Opcode.PONG, b"", None), (Opcode.CLOSE, b"bye", 1000),
    ])
    def test_control_frames_pass(self, opcode, data, status):
        chain, _ = bind(validator(client={"text": NAMED, "binary": NAMED}))
        f = frame(opcode, data, status)
        chain.run("ws_client_frame", f)
        assert (f.data, f.status, f.dropped, f.close_args) == (data, status, False, None)

    def test_sides_apart(self):
        chain, _ = bind(validator(client={"text": json.dumps({"type": "string"})},
                                  upstream={"text": json.dumps({"type": "number"})}))
        f = frame(data=b"1")
        chain.run("ws_client_frame", f)
        assert f.close_args == INVALID + PEER_CLOSE
        f = frame(data=b"1")
        chain.run("ws_upstream_frame", f)
        assert f.close_args is None

    @pytest.mark.parametrize("peer, expected", [
        ("client", {"ws_client_frame"}), ("upstream", {"ws_upstream_frame"}),
    ])
    def test_only_configured_sides_have_a_phase(self, peer, expected):
        chain, _ = bind(validator(**{peer: {"text": NAMED}}))
        assert phases(chain) == expected
        chain, _ = bind(validator(client={"text": NAMED}, upstream={"binary": NAMED}))
        assert phases(chain) == {"ws_client_frame", "ws_upstream_frame"}

    def test_close_skips_later_handlers(self):
        chain, ws = bind(validator(client={"text": NAMED}), Recorder({}))
        chain.run("ws_client_frame", frame(data=b'{"name": 1}'))
        chain.run("ws_client_frame", frame(data=b"{}"))
        assert ws.shared["seen"] == [("recorder", (b'{"name": 1}', "text", None))]

    def test_always_draft4(self):
        # Kong validates with draft 4 whatever $schema says: exclusiveMinimum is a boolean.
        schema = json.dumps({"$schema": "http://json-schema.org/draft-07/schema#",
                             "type": "number", "minimum": 0, "exclusiveMinimum": True})
        chain, _ = bind(validator(client={"text": schema}))
        for data, valid in [(b"1", True), (b"0", False), (b"-1", False)]:
            f = frame(data=data)
            chain.run("ws_client_frame", f)
            assert f.close_args == (None if valid else INVALID + PEER_CLOSE), data

    def test_logs_why_at_debug(self, caplog):
        chain, _ = bind(validator(upstream={"binary": NAMED}))
        with caplog.at_level(logging.DEBUG, logger="fastws.plugins.validator"):
            chain.run("ws_upstream_frame", frame(Opcode.BINARY, b"{}"))
        assert "invalid binary message from the upstream" in caplog.text
        assert "name" in caplog.text

    def test_compiled_once(self, monkeypatch):
        plugin = validator(client={"text": NAMED})

        def fail(*args, **kwargs):
            raise AssertionError("compiled again")

        monkeypatch.setattr(fastjsonschema, "compile", fail)
        chain, _ = bind(plugin)
        for _ in range(3):
            chain.run("ws_client_frame", frame(data=b'{"name": 1}'))


# -- pre-function / post-function --------------------------------------------------------


@pytest.mark.parametrize("name", ["pre-function", "post-function"])
class TestFunctions:
    def test_ws_in_scope_and_snippets_in_order(self, name):
        plugin = create(name, {"ws_client_frame": [
            "data, typ, status = ws.client.get_frame()\nws.client.set_frame_data(data.upper())",
            "data, typ, status = ws.client.get_frame()\nws.client.set_frame_data(data + b'!')",
        ]})
        chain, _ = bind(plugin)
        f = frame(data=b"hello")
        chain.run("ws_client_frame", f)
        assert (f.data, f.dropped, f.close_args) == (b"HELLO!", False, None)

    @pytest.mark.parametrize("phase, expected", [
        ("ws_handshake", {"ws_handshake"}),
        ("ws_client_frame", {"ws_client_frame"}),
        ("ws_upstream_frame", {"ws_upstream_frame"}),
        ("ws_close", {"ws_close"}),
    ])
    def test_only_configured_phases(self, name, phase, expected):
        plugin = create(name, {phase: ["pass"]})
        chain, _ = bind(plugin)
        assert phases(chain) == expected
        for other in PHASES:
            if other != phase:
                assert getattr(plugin, other) is None

    def test_upstream_frames(self, name):
        plugin = create(name, {"ws_upstream_frame": [
            "data, typ, status = ws.upstream.get_frame()\n"
            "if typ == 'close':\n    ws.upstream.set_status(4000)\n    ws.upstream.set_frame_data('bye')"]})
        chain, _ = bind(plugin)
        f = frame(Opcode.CLOSE, b"", 1000)
        chain.run("ws_upstream_frame", f)
        assert (f.status, f.data) == (4000, b"bye")

    def test_drop_skips_later_snippets_and_handlers(self, name):
        plugin = create(name, {"ws_client_frame": ["ws.client.drop_frame()"]})
        chain, ws = bind(plugin, Recorder({}))
        f = frame(data=b"x")
        chain.run("ws_client_frame", f)
        assert f.dropped
        assert f.close_args is None
        if name == "pre-function":
            assert "seen" not in ws.shared           # the recorder runs after pre-function
        else:
            assert ws.shared["seen"] == [("recorder", (b"x", "text", None))]

    def test_close(self, name):
        plugin = create(name, {"ws_upstream_frame": ["ws.upstream.close(4001, 'bad', 1001, 'gone')"]})
        chain, _ = bind(plugin)
        f = frame(Opcode.BINARY, b"x")
        chain.run("ws_upstream_frame", f)
        assert f.close_args == (4001, "bad", 1001, "gone")

    def test_fresh_namespace_and_ctx(self, name):
        # Names a snippet binds do not outlive the run; ws.ctx lasts the connection.
        plugin = create(name, {"ws_client_frame": [
            "count = globals().get('count', 0) + 1\n"
            "ws.ctx['runs'] = ws.ctx.get('runs', 0) + 1\n"
            "ws.ctx['count'] = count"]})
        chain, ws = bind(plugin)
        for _ in range(3):
            chain.run("ws_client_frame", frame(data=b"x"))
        assert chain.ctxs[0] == {"runs": 3, "count": 1}
        other, _ = bind(plugin)                     # another connection, same config
        other.run("ws_client_frame", frame(data=b"x"))
        assert other.ctxs[0] == {"runs": 1, "count": 1}

    def test_kong_style_websocket_import(self, name):
        plugin = create(name, {"ws_client_frame": [
            "from fastws.pdk import websocket\n"
            "data, typ, status = websocket.client.get_frame()\n"
            "websocket.client.set_frame_data(data[::-1])"]})
        chain, _ = bind(plugin)
        f = frame(data=b"abc")
        chain.run("ws_client_frame", f)
        assert f.data == b"cba"

    def test_raise_is_a_handler_error(self, name):
        plugin = create(name, {"ws_client_frame": ["pass", "raise RuntimeError('boom')", "unreachable()"]})
        chain, _ = bind(plugin)
        with pytest.raises(HandlerError) as info:
            chain.run("ws_client_frame", frame(data=b"x"))
        assert (info.value.plugin, info.value.phase) == (name, "ws_client_frame")
        assert isinstance(info.value.__cause__, RuntimeError)
        assert str(info.value) == f"plugin {name!r} raised in ws_client_frame: RuntimeError: boom"

    def test_pdk_misuse_is_a_handler_error(self, name):
        plugin = create(name, {"ws_client_frame": ["ws.upstream.get_frame()"]})
        chain, _ = bind(plugin)
        with pytest.raises(HandlerError) as info:
            chain.run("ws_client_frame", frame(data=b"x"))
        assert isinstance(info.value.__cause__, PDKError)

    def test_handshake(self, name):
        plugin = create(name, {"ws_handshake": [
            "ws.shared['path'] = ws.request\nws.upstream.set_max_payload_size(1234)"]})
        ws = WebSocket(request="/chat")
        chain = Chain([plugin]).bind(ws)
        chain.run_handshake()
        assert (ws.shared["path"], ws.payload_limit(1), ws.payload_limit(0)) == ("/chat", 1234, 0)

    def test_handshake_reject(self, name):
        plugin = create(name, {"ws_handshake": ["ws.reject(403, 'forbidden', {'X-Why': 'policy'})",
                                                "unreachable()"]})
        chain, _ = bind(plugin)
        with pytest.raises(Rejected) as info:
            chain.run_handshake()
        assert (info.value.status, info.value.body, info.value.headers) == (
            403, b"forbidden", [("X-Why", "policy")])

    def test_close_phase(self, name, caplog):
        plugin = create(name, {"ws_close": ["ws.shared['closed'] = True", "raise ValueError('late')"]})
        chain, ws = bind(plugin)
        with caplog.at_level(logging.ERROR, logger="fastws.plugins"):
            assert chain.run_close() is None         # logged, never raised
        assert ws.shared["closed"] is True
        assert f"plugin {name!r} raised in ws_close: ValueError: late" in caplog.text


def test_pre_and_post_function_bracket_other_plugins():
    post = create("post-function", {"ws_client_frame": ["ws.shared.setdefault('seen', []).append('post')"]})
    pre = create("pre-function", {"ws_client_frame": ["ws.shared.setdefault('seen', []).append('pre')"]})
    chain, ws = bind(post, Recorder({}), pre)
    chain.run("ws_client_frame", frame(data=b"x"))
    assert ws.shared["seen"] == ["pre", ("recorder", (b"x", "text", None)), "post"]
