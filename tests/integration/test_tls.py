"""TLS on both sides: a wss:// listener, wss:// upstreams (verification, CA file, host name, mTLS).

Certificates come from trustme, one CA per test; PEM files go to tmp_path.
Every failure must be a clean HTTP answer (502) within a bound, never a hang,
and must leave a healthy connection through the same proxy working.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl

import pytest
import trustme
import websockets
import yaml

from fastws.config import load_config

from . import raw
from .conftest import free_port, run


@contextlib.asynccontextmanager
async def healthy_connection(url: str, **kwargs):
    """A websockets client that always ends with a clean 1000 (see test_failures.healthy_connection)."""
    ws = await websockets.connect(url, **kwargs)
    try:
        yield ws
    finally:
        await ws.close()


async def roundtrip(ws) -> None:
    message = "still alive " + os.urandom(4).hex()
    await ws.send(message)
    assert await asyncio.wait_for(ws.recv(), 5) == message


class PKI:
    """A CA, a server certificate and a client certificate, as PEM files in ``tmp``."""

    def __init__(self, tmp, server_names=("127.0.0.1", "localhost")) -> None:
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert(*server_names)
        self.client = self.ca.issue_cert("fastws-client@example.org")
        self.ca_file = str(tmp / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.server_cert = str(tmp / "server.pem")
        self.server_key = str(tmp / "server.key")
        for i, pem in enumerate(self.server.cert_chain_pems):
            pem.write_to_path(self.server_cert, append=i > 0)
        self.server.private_key_pem.write_to_path(self.server_key)
        self.client_cert = str(tmp / "client.pem")
        self.client_key = str(tmp / "client.key")
        for i, pem in enumerate(self.client.cert_chain_pems):
            pem.write_to_path(self.client_cert, append=i > 0)
        self.client.private_key_pem.write_to_path(self.client_key)

    def client_context(self) -> ssl.SSLContext:
        """What a client of a wss:// endpoint with our server certificate uses."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def server_context(self, require_client_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server.configure_cert(ctx)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(ctx)
        return ctx


@pytest.fixture
def pki(tmp_path):
    return PKI(tmp_path)


# ---------------------------------------------------------------------------
# The listener


def test_tls_listener_echo(start_proxy, pki):
    proxy = start_proxy(tls_cert=pki.server_cert, tls_key=pki.server_key)
    url = f"wss://127.0.0.1:{proxy.port}/"

    async def go():
        async with healthy_connection(url, ssl=pki.client_context()) as ws:
            for message in ["hello", b"\x00\xff" * 100, "x" * 100_000]:
                await ws.send(message)
                assert await asyncio.wait_for(ws.recv(), 5) == message
        # Raw TLS client: the handshake and frames work the same over TLS.
        client = await raw.connect(proxy.port, ssl=pki.client_context())
        await client.handshake("/")
        await client.send_frame(raw.OP_TEXT, b"over tls")
        echoed = await client.recv_frame()
        assert (echoed.opcode, echoed.payload, echoed.masked) == (raw.OP_TEXT, b"over tls", False)
        await client.send_close(1000)
        assert (await client.recv_frame()).close_code == 1000
        assert await client.read_until_eof() == b""

    run(go(), 20)


@pytest.mark.parametrize("size", [20_000, 100_000, 300_000])
def test_tls_listener_large_frames_byte_exact(start_proxy, pki, size):
    """Frames spanning several TLS records reach the upstream byte for byte (passthrough
    keeps the client's mask), and come back the same way."""
    up = raw.RawUpstream()
    proxy = start_proxy(up.url, tls_cert=pki.server_cert, tls_key=pki.server_key)

    async def go():
        async with up:
            client = await raw.connect(proxy.port, ssl=pki.client_context())
            client.key = raw.new_key()
            await client.send(raw.upgrade_request("/", key=client.key))
            peer, _ = await up.accept_upgrade()
            assert (await client.read_response()).status == 101
            payload = b"".join(b"%08d" % i for i in range(size // 8))
            sent = raw.frame(raw.OP_BINARY, payload)
            await client.send(sent)
            got = await peer.read_exact(len(sent), timeout=5)
            if got != sent:
                at = next(i for i in range(len(sent)) if got[i] != sent[i])
                pytest.fail(f"client -> upstream over the TLS listener: bytes differ from offset {at} "
                            f"of {len(sent)} (TLS records are 16384 bytes); got {got[at:at + 16]!r}")
            await peer.send_frame(raw.OP_BINARY, payload)
            back = await client.recv_frame()
            assert back.payload == payload, "upstream -> client over the TLS listener"
            await client.send_close(1000)
            assert (await peer.recv_frame()).close_code == 1000

    run(go(), 20)


def test_tls_listener_bad_clients_do_not_disturb_others(start_proxy, pki):
    """Plain TCP on the TLS port, and a TLS client that does not trust the certificate:
    both fail cleanly and a healthy wss:// connection keeps working."""
    proxy = start_proxy(tls_cert=pki.server_cert, tls_key=pki.server_key)
    url = f"wss://127.0.0.1:{proxy.port}/"

    async def go():
        async with healthy_connection(url, ssl=pki.client_context()) as healthy:
            await roundtrip(healthy)
            # Plain HTTP upgrade to the TLS port: the TLS layer rejects it, connection ends.
            plain = await raw.connect(proxy.port)
            await plain.send(raw.upgrade_request("/"))
            leftover = await plain.read_until_eof(timeout=5)
            assert b"101" not in leftover
            # A client that does not trust the proxy's certificate.
            with pytest.raises(ssl.SSLCertVerificationError):
                await raw.connect(proxy.port, ssl=ssl.create_default_context())
            await roundtrip(healthy)

    run(go(), 20)


def test_tls_listener_silent_client_closed_after_handshake_timeout(start_proxy, pki):
    """A client that opens TCP to the TLS port and never sends a ClientHello.

    handshake_timeout is "seconds a client has to send its complete opening
    handshake"; over TLS the TLS handshake comes first, and must not get the
    event loop's own default (60 s) instead.
    """
    proxy = start_proxy(tls_cert=pki.server_cert, tls_key=pki.server_key, handshake_timeout=0.5)
    url = f"wss://127.0.0.1:{proxy.port}/"

    async def go():
        async with healthy_connection(url, ssl=pki.client_context()) as healthy:
            silent = await raw.connect(proxy.port)
            try:
                assert await silent.read_until_eof(timeout=3) == b""
            except asyncio.TimeoutError:
                pytest.fail("a client silent before the TLS handshake is still connected 3 s later "
                            "(handshake_timeout=0.5)")
            await roundtrip(healthy)

    run(go(), 20)


# ---------------------------------------------------------------------------
# wss:// upstreams


@pytest.fixture
def wss_proxy(start_proxy, websockets_upstream, tmp_path):
    """``wss_proxy(upstream_port, **service_fields) -> RunningProxy``.

    Service ``target`` (``wss://127.0.0.1:PORT/`` with the given fields) on ``/``,
    and a plain ``healthy`` websockets echo service on ``/healthy``.
    """
    def make(port: int, host: str = "127.0.0.1", **service):
        healthy = websockets_upstream()
        services = [
            {"name": "healthy", "url": healthy.url, "routes": [{"paths": ["/healthy"]}]},
            {"name": "target", "url": f"wss://{host}:{port}/", "routes": [{"paths": ["/"]}],
             "connect_timeout": 3, **service},
        ]
        path = tmp_path / "fastws.yaml"
        path.write_text(yaml.safe_dump({"services": services}))
        return start_proxy(config=load_config(str(path), {"listen": [f"127.0.0.1:{free_port()}"]}))
    return make


def tls_echo_upstream(websockets_upstream, ctx: ssl.SSLContext):
    """A websockets echo server over TLS that records the client certificate it saw."""
    seen: list = []

    async def echo(ws):
        seen.append(ws.transport.get_extra_info("peercert"))
        async for message in ws:
            await ws.send(message)

    upstream = websockets_upstream(echo, ssl=ctx)
    return upstream, seen


async def echo_through(proxy, path: str = "/") -> None:
    async with healthy_connection(proxy.url + path) as ws:
        for message in ["through wss", b"\x01\x02" * 1000]:
            await ws.send(message)
            assert await asyncio.wait_for(ws.recv(), 5) == message


async def expect_502(proxy, prefix: bytes = b"Bad Gateway") -> raw.HttpHead:
    """A raw client asks for ``/``: 502 and a closed connection, well within the bound."""
    async with healthy_connection(proxy.url + "/healthy") as healthy:
        await roundtrip(healthy)
        client = await raw.connect(proxy.port)
        await client.send(raw.upgrade_request("/"))
        response = await client.read_response(timeout=5)
        assert response.status == 502, (response.start_line, response.body)
        assert response.body.startswith(prefix), response.body
        assert await client.read_until_eof(timeout=5) == b""
        await roundtrip(healthy)
        return response


def test_wss_upstream_with_ca_file(wss_proxy, websockets_upstream, pki):
    upstream, seen = tls_echo_upstream(websockets_upstream, pki.server_context())
    proxy = wss_proxy(upstream.port, ca_file=pki.ca_file)
    run(echo_through(proxy), 20)
    assert len(seen) == 1


def test_wss_upstream_localhost_name(wss_proxy, websockets_upstream, pki):
    upstream, _ = tls_echo_upstream(websockets_upstream, pki.server_context())
    proxy = wss_proxy(upstream.port, host="localhost", ca_file=pki.ca_file)
    run(echo_through(proxy), 20)


def test_wss_upstream_untrusted_ca_502(wss_proxy, websockets_upstream, pki):
    """tls_verify true (default) and no ca_file: the system store does not know our CA."""
    upstream, seen = tls_echo_upstream(websockets_upstream, pki.server_context())
    proxy = wss_proxy(upstream.port)
    response = run(expect_502(proxy, b"Bad Gateway: upstream TLS failed"), 20)
    assert b"CERTIFICATE_VERIFY_FAILED" in response.body
    assert seen == []


def test_wss_upstream_tls_verify_false(wss_proxy, websockets_upstream, pki):
    upstream, _ = tls_echo_upstream(websockets_upstream, pki.server_context())
    proxy = wss_proxy(upstream.port, tls_verify=False)
    run(echo_through(proxy), 20)


def test_wss_upstream_hostname_mismatch_502(wss_proxy, websockets_upstream, tmp_path):
    other = PKI(tmp_path, server_names=("upstream.example.org",))
    upstream, seen = tls_echo_upstream(websockets_upstream, other.server_context())
    proxy = wss_proxy(upstream.port, ca_file=other.ca_file)
    response = run(expect_502(proxy, b"Bad Gateway: upstream TLS failed"), 20)
    assert b"CERTIFICATE_VERIFY_FAILED" in response.body
    assert seen == []


def test_wss_upstream_hostname_mismatch_tls_verify_false(wss_proxy, websockets_upstream, tmp_path):
    """tls_verify false turns off the host name check too (as the docs say)."""
    other = PKI(tmp_path, server_names=("upstream.example.org",))
    upstream, _ = tls_echo_upstream(websockets_upstream, other.server_context())
    proxy = wss_proxy(upstream.port, tls_verify=False)
    run(echo_through(proxy), 20)


def test_wss_upstream_mtls(wss_proxy, websockets_upstream, pki):
    upstream, seen = tls_echo_upstream(websockets_upstream, pki.server_context(require_client_cert=True))
    proxy = wss_proxy(upstream.port, ca_file=pki.ca_file,
                      client_cert=pki.client_cert, client_key=pki.client_key)
    run(echo_through(proxy), 20)
    assert len(seen) == 1 and seen[0], seen
    names = [value for rdn in seen[0].get("subjectAltName", ()) for value in rdn[1:]]
    assert "fastws-client@example.org" in names, seen[0]


def test_wss_upstream_mtls_without_client_cert_502(wss_proxy, websockets_upstream, pki):
    """The upstream requires a client certificate and the service has none.

    With TLS 1.3 the client side of the handshake completes before the server
    checks the certificate; the server's alert arrives while fastws waits for
    the 101.  Either way the client must get a prompt 502, not a hang.
    """
    upstream, seen = tls_echo_upstream(websockets_upstream, pki.server_context(require_client_cert=True))
    proxy = wss_proxy(upstream.port, ca_file=pki.ca_file)
    run(expect_502(proxy), 20)
    assert seen == []
