"""The proxy relays end to end with each fixture's upstream (the fixtures themselves are sound)."""

import websockets

from .conftest import run


async def echo_roundtrip(url: str, messages) -> list:
    async with websockets.connect(url) as ws:
        replies = []
        for message in messages:
            await ws.send(message)
            replies.append(await ws.recv())
        return replies


MESSAGES = ["hello", b"\x00\xff" * 10, "", "x" * 65536]


def test_builtin_echo(start_proxy):
    proxy = start_proxy()
    assert run(echo_roundtrip(proxy.url + "/any/path", MESSAGES)) == MESSAGES


def test_websockets_upstream(start_proxy, websockets_upstream):
    upstream = websockets_upstream()
    proxy = start_proxy(upstream.url)
    assert run(echo_roundtrip(proxy.url + "/", MESSAGES)) == MESSAGES
    assert upstream.received == MESSAGES


def test_aiohttp_upstream(start_proxy, aiohttp_upstream):
    upstream = aiohttp_upstream()
    proxy = start_proxy(upstream.url)
    assert run(echo_roundtrip(proxy.url + "/", MESSAGES)) == MESSAGES
    assert upstream.received == MESSAGES
