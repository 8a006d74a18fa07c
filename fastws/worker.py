"""One worker process: its own uvloop loop, its own SO_REUSEPORT listeners, signals, drain.

The composition root: it builds the router, the proxy server, the access log
and (with no upstream configured) the built-in echo upstream, and wires them
together.  ``run(config)`` is the entry point the command line (and later the
master process) calls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
import time
from typing import Any, Callable

from .echo import start_echo_server
from .errors import ConfigError
from .frames import CloseCode
from .metrics import enabled as metrics_enabled
from .proxy import ProxyServer, access_log_writer

__all__ = ["run", "serve", "Worker", "EXIT_OK", "EXIT_BOOT_ERROR"]

log = logging.getLogger("fastws")

EXIT_OK = 0
EXIT_BOOT_ERROR = 3     # gunicorn's WORKER_BOOT_ERROR: the master must not respawn


def build_chains(config: Any, services: list | None = None) -> dict[str, Any]:
    """The handler chain of every service, built once per config: the global plugins plus the
    service's own (a service plugin replaces a global one of the same name, as in Kong).

    Raises:
        ConfigError: a plugin that cannot be loaded, or whose config its schema refuses.
    """
    from .plugins import create
    from .plugins.chain import Chain

    source = f"{config.source}: " if getattr(config, "source", None) else ""

    def build(specs, where: str) -> list:
        plugins = []
        for index, spec in enumerate(specs):
            if not spec.enabled:
                continue
            try:
                plugins.append((spec.name, create(spec.name, spec.config)))
            except ConfigError as exc:
                # Name the file and the entry, as every other config error does.
                raise ConfigError(f"{source}{where}[{index}]: {exc}") from None
        return plugins

    global_plugins = build(config.plugins, "plugins")
    chains: dict[str, Any] = {}
    service_list = config.services if services is None else services
    for number, service in enumerate(service_list):
        own = build(service.plugins, f"services[{number}].plugins")
        names = {name for name, _ in own}
        chain = Chain([plugin for name, plugin in global_plugins if name not in names]
                      + [plugin for _, plugin in own])
        chains[service.name] = None if chain.empty else chain
    return chains


def _server_ssl(tls: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def _format_listen(listen: Any) -> str:
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    return f"{'wss' if listen.tls else 'ws'}://{host}:{listen.port}"


class Worker:
    """Runs the proxy in the current event loop until ``stop()``."""

    def __init__(self, config: Any, *, chain_for: Callable | None = None) -> None:
        self.config = config
        self.chain_for = chain_for
        self.proxy: ProxyServer | None = None
        self.listeners: list[asyncio.AbstractServer] = []
        self.echo: asyncio.AbstractServer | None = None
        self._stop = asyncio.Event()
        self._stop_timeout = config.graceful_timeout
        self.chains: dict[str, Any] = {}
        self.draining = False
        self._drain_requested = False
        self.addresses: list[tuple[str, int]] = []

    async def start(self) -> None:
        from .config import upstream_service
        from .routing import Router

        config = self.config
        loop = asyncio.get_running_loop()
        services = list(config.services)
        if config.echo:
            self.echo = await start_echo_server("127.0.0.1", 0)
            port = self.echo.sockets[0].getsockname()[1]
            services = [upstream_service(f"ws://127.0.0.1:{port}/", name="echo")]
        chain_for = self.chain_for
        if chain_for is None:
            self.chains = build_chains(config, services)
            chain_for = chain_for_services(self.chains)
        access_log = None
        if config.access_log:
            stream = sys.stdout if config.access_log == "-" else open(config.access_log, "a", buffering=1)
            access_log = access_log_writer(stream, config.access_log_format)
        self.proxy = ProxyServer(config, Router(services), loop, chain_for=chain_for,
                                 access_log=access_log)
        for listen in config.listen:
            server = await loop.create_server(
                self.proxy.protocol_factory(listen), listen.host, listen.port,
                reuse_port=True, backlog=1024,
                ssl=_server_ssl(listen.tls) if listen.tls else None,
                # The TLS handshake counts against handshake_timeout (not the loop's 60 s).
                ssl_handshake_timeout=config.handshake_timeout if listen.tls else None,
            )
            self.listeners.append(server)
            for sock in server.sockets:
                self.addresses.append(sock.getsockname()[:2])
        where = ", ".join(_format_listen(item) for item in config.listen)
        if config.echo:
            log.info("fastws listening on %s, proxying to the built-in echo upstream "
                     "(no upstream configured)", where)
        else:
            log.info("fastws listening on %s, %d service(s)", where, len(services))

    def stop(self, timeout: float | None = None) -> None:
        """Begin a graceful stop (SIGTERM: graceful_timeout; SIGINT: quicker)."""
        if timeout is not None:
            self._stop_timeout = timeout
        self._drain_requested = False
        self._stop.set()

    def drain(self) -> None:
        """Begin a drain (SIGQUIT from the master on reload): stop accepting, keep the sessions
        up to ``drain_timeout``, then close them with 1012 "Service Restart"."""
        if not self._stop.is_set() and not self.draining:
            self._drain_requested = True
            self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()
        if self._drain_requested:
            self._stop.clear()
            await self._drain()
            if self._drain_requested:           # not cut short by SIGTERM/SIGINT
                await self.shutdown(self._stop_timeout, CloseCode.SERVICE_RESTART,
                                    "Service Restart", "drain timeout")
                return
        await self.shutdown(self._stop_timeout)

    async def _drain(self) -> None:
        self.draining = True
        self.stop_accepting()
        if os.environ.get("FASTWS_WORKER_ID"):
            from .arbiter import set_title

            set_title(f"fastws: worker {os.environ['FASTWS_WORKER_ID']} draining "
                      f"({self.config.source or 'no config file'})")
        proxy = self.proxy
        if proxy is None or not proxy.links:
            return
        log.info("draining %d connection(s) for up to %.0fs", len(proxy.links),
                 self.config.drain_timeout)
        idle = asyncio.ensure_future(proxy.closed_event.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((idle, stop), timeout=self.config.drain_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            stop.cancel()

    def stop_accepting(self) -> None:
        for server in self.listeners:
            server.close()

    async def shutdown(self, timeout: float, code: int = CloseCode.GOING_AWAY,
                       reason: str = "Going Away", cause: str = "shutdown") -> None:
        """Stop accepting, close every session with ``code`` (1001), wait up to ``timeout``."""
        self.stop_accepting()
        proxy = self.proxy
        if proxy is not None and proxy.links:
            proxy.close_all(code, reason, cause)
            try:
                await asyncio.wait_for(proxy.closed_event.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("%d connection(s) still open after %.1fs; dropping them",
                            len(proxy.links), timeout)
                for link in list(proxy.links):
                    link.client.close(abort=True)
                    if link.upstream is not None:
                        link.upstream.close(abort=True)
                    link._finish()
        if self.echo is not None:
            self.echo.close()


async def serve(config: Any, *, chain_for: Callable | None = None, parent: int | None = None,
                heartbeat: int | None = None, ready: int | None = None) -> int:
    worker = Worker(config, chain_for=chain_for)
    try:
        await worker.start()
    except OSError as exc:
        print(f"fastws: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BOOT_ERROR
    except ssl.SSLError as exc:
        print(f"fastws: TLS certificate or key unusable: {exc}", file=sys.stderr)
        return EXIT_BOOT_ERROR
    except ConfigError as exc:
        print(f"fastws: {exc}", file=sys.stderr)
        return EXIT_BOOT_ERROR
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    loop.add_signal_handler(signal.SIGINT, worker.stop, min(config.graceful_timeout, 2.0))
    loop.add_signal_handler(signal.SIGQUIT, worker.drain)
    # The master forks with these blocked (one sent meanwhile is delivered now, to the loop).
    from .arbiter import SIGNAL_SET

    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNAL_SET)
    if ready is not None:
        os.write(ready, b"1")                   # listening: the master may retire the old workers
        os.close(ready)
    if parent is not None:
        # Under a master: stop when it is gone (gunicorn's ppid check), once a second.
        def check_parent() -> None:
            if os.getppid() != parent:
                log.warning("the master process is gone; stopping")
                worker.stop()
            else:
                loop.call_later(1.0, check_parent)
        loop.call_later(1.0, check_parent)
    metrics = None
    if metrics_enabled():
        from .metrics import WorkerMetrics

        metrics = WorkerMetrics(worker.proxy, worker.chains.values())
    if heartbeat is not None or metrics is not None:
        # The master's liveness check: a stamp a second, from this loop (a blocked loop
        # stops stamping).  The stamp is time.monotonic(), as the master compares it.
        # The metrics are reported on the same tick.
        def beat() -> None:
            loop.call_later(1.0, beat)
            if heartbeat is not None:
                now = time.monotonic()
                os.utime(heartbeat, (now, now))
            if metrics is not None:
                try:
                    metrics.report()
                except Exception:               # never at the cost of the heartbeat
                    log.exception("reporting the metrics failed")
        beat()
    await worker.wait_stopped()
    if metrics is not None:
        metrics.report()
    return EXIT_OK


def chain_for_services(chains: dict[str, Any]) -> Callable | None:
    """``chain_for`` over chains built by ``build_chains`` (None when no service has plugins)."""
    if not any(chain is not None for chain in chains.values()):
        return None
    return lambda match: chains.get(match.service.name)


def run(config: Any, *, chain_for: Callable | None = None, parent: int | None = None,
        heartbeat: int | None = None, ready: int | None = None) -> int:
    """Run one worker in this process until SIGTERM or SIGINT; returns the exit code.

    Under a master: ``parent`` is its pid, ``heartbeat`` the file descriptor to stamp and
    ``ready`` the pipe to write one byte to once listening; SIGQUIT drains (reload).
    """
    main = serve(config, chain_for=chain_for, parent=parent, heartbeat=heartbeat, ready=ready)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(main)
    return uvloop.run(main)
