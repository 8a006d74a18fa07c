"""The admin endpoint (SPEC section 7), served by the master from its ``select()`` loop.

    GET /metrics   Prometheus text format, summed over the workers (prometheus-client)
    GET /status    JSON: master, workers (pid, generation, state, uptime), connections, reloads
    GET /healthz   200 "ok" while accepting; 503 while stopping or before any worker is ready

The master has no event loop and no threads (it forks: a thread holding a lock at
fork time would leave the child stuck).  So the endpoint is a few non-blocking
sockets in the master's ``select()``: requests are parsed with httptools (llhttp),
a client gets ``REQUEST_TIMEOUT`` to send its request and take the answer, which is
written as the socket takes it.  Every answer closes its connection.  Nothing a
client sends can stop the master: a request that fails to parse gets 400, and an
error while answering gets 500 (and a log line).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

import httptools

from . import __version__

__all__ = ["AdminServer"]

log = logging.getLogger("fastws.admin")

REQUEST_TIMEOUT = 5.0       # to send a whole request and read the answer
MAX_REQUEST = 16 * 1024
MAX_CLIENTS = 64            # beyond: the oldest is dropped for the newest
ACCEPT_PAUSE = 0.5          # after an accept error (out of descriptors): do not spin


class _Request:
    """httptools callbacks for one request."""

    def __init__(self) -> None:
        self.url = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        self.complete = True


class _Client:
    __slots__ = ("sock", "deadline", "request", "parser", "size", "out")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = time.monotonic() + REQUEST_TIMEOUT
        self.request = _Request()
        self.parser = httptools.HttpRequestParser(self.request)
        self.size = 0
        self.out: bytes | None = None           # the answer, while it is being written


class AdminServer:
    """Serves /metrics, /status and /healthz for ``arbiter`` on ``address``.

    Raises:
        OSError: naming the address, when it cannot be bound.
    """

    def __init__(self, arbiter: Any, address: tuple[str, int], metrics_dir: str) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        from .metrics import MasterCollector

        self.arbiter = arbiter
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=metrics_dir)
        self.registry.register(MasterCollector(arbiter))
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((host, port))
            self.listener.listen(64)
        except OSError as exc:
            self.listener.close()
            raise OSError(exc.errno, f"cannot serve the admin endpoint on {host}:{port}: "
                                     f"{exc.strerror}") from None
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()[:2]
        self.clients: dict[int, _Client] = {}     # in the order they came
        self.accept_paused_until = 0.0
        log.info("admin endpoint on http://%s:%d (/metrics, /status, /healthz)",
                 f"[{host}]" if family == socket.AF_INET6 else host, self.address[1])

    # -- the master's loop ------------------------------------------------------------------

    def fds(self) -> tuple[list[int], list[int]]:
        """The descriptors to watch: (for reading, for writing)."""
        readers = [fd for fd, c in self.clients.items() if c.out is None]
        if time.monotonic() >= self.accept_paused_until:
            readers.append(self.listener.fileno())
        return readers, [fd for fd, c in self.clients.items() if c.out is not None]

    def handle(self, readable: list[int], writable: list[int] = ()) -> None:
        """Accept, read and answer what ``select()`` found ready; drop clients past their time."""
        for fd in readable:
            if fd == self.listener.fileno():
                self._accept()
            elif fd in self.clients:
                client = self.clients[fd]
                try:
                    self._read(client)
                except Exception:               # a bug here must not take the master down
                    log.exception("admin endpoint: answering a request failed")
                    self._answer(client, 500, "text/plain", b"internal error\n")
        for fd in writable:
            if fd in self.clients:
                self._write(self.clients[fd])
        now = time.monotonic()
        for client in [c for c in self.clients.values() if now > c.deadline]:
            self._drop(client)

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client)
        self.listener.close()

    # -- requests ---------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:                     # e.g. out of descriptors: try again a little later
                self.accept_paused_until = time.monotonic() + ACCEPT_PAUSE
                return
            if len(self.clients) >= MAX_CLIENTS:
                # Full (idle or slow clients): the oldest one gives way, so a probe always gets in.
                self._drop(next(iter(self.clients.values())))
            sock.setblocking(False)
            self.clients[sock.fileno()] = _Client(sock)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.size += len(data)
        if client.size > MAX_REQUEST:
            self._answer(client, 431, "text/plain", b"request too large\n")
            return
        try:
            try:
                client.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                client.request.complete = True  # an Upgrade request: answered as a plain GET
            if not client.request.complete:
                return
            method = client.parser.get_method()
            path = (httptools.parse_url(client.request.url).path or b"/").decode("latin-1")
        except httptools.HttpParserError:       # the URL's parser errors too
            self._answer(client, 400, "text/plain", b"bad request\n")
            return
        self._route(client, method, path)

    def _route(self, client: _Client, method: bytes, path: str) -> None:
        if method not in (b"GET", b"HEAD"):
            self._answer(client, 405, "text/plain", b"method not allowed\n", head=False,
                         extra=[("Allow", "GET, HEAD")])
            return
        head = method == b"HEAD"
        if path == "/metrics":
            from prometheus_client import exposition

            # The classic text format (0.0.4), which every Prometheus version reads.
            content_type = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)
            self._answer(client, 200, content_type, exposition.generate_latest(self.registry), head=head)
        elif path == "/status":
            body = json.dumps(self.status(), indent=2).encode() + b"\n"
            self._answer(client, 200, "application/json", body, head=head)
        elif path == "/healthz":
            healthy, why = self.health()
            self._answer(client, 200 if healthy else 503, "text/plain", why.encode() + b"\n", head=head)
        else:
            self._answer(client, 404, "text/plain", b"not found: try /metrics, /status or /healthz\n",
                         head=head)

    def _answer(self, client: _Client, status: int, content_type: str, body: bytes, *,
                head: bool = False, extra: list[tuple[str, str]] = ()) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large", 500: "Internal Server Error",
                  503: "Service Unavailable"}[status]
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-store"), ("Connection", "close"), *extra]
        response = (f"HTTP/1.1 {status} {reason}\r\n"
                    + "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n").encode()
        client.out = response if head else response + body
        self._write(client)

    def _write(self, client: _Client) -> None:
        """Write what the socket takes now; the rest when ``select()`` says it can take more."""
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.out = client.out[sent:]
        if not client.out:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        self.clients.pop(client.sock.fileno(), None)
        client.sock.close()

    # -- answers ----------------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        arbiter = self.arbiter
        if arbiter.stopping:
            return False, "draining: stopping"
        if not any(w.ready and not w.retiring for w in arbiter.workers.values()):
            return False, "starting: no worker ready yet"
        return True, "ok"

    def status(self) -> dict:
        arbiter = self.arbiter
        now, wall = time.monotonic(), time.time()
        open_connections = 0
        for metric in self.registry.collect():
            if metric.name == "fastws_connections_open":
                open_connections = int(sum(sample.value for sample in metric.samples))
        healthy, why = self.health()
        return {
            "version": __version__,
            "master": {"pid": os.getpid(), "uptime": round(wall - arbiter.started, 3),
                       "config": arbiter.config.source},
            "healthy": healthy,
            "state": why,
            "generation": arbiter.generation,
            "reloading": arbiter.reloading is not None,
            "reloads": dict(arbiter.reloads),
            "workers_wanted": arbiter.target,
            "workers": [
                {"pid": w.pid, "id": w.number, "generation": w.generation, "state": w.state,
                 "uptime": round(now - w.started, 3)}
                for w in sorted(arbiter.workers.values(), key=lambda w: w.number)
            ],
            "connections": open_connections,
        }
