"""The ``fastws`` command line (SPEC section 1).

    fastws [--config FILE] [--workers N] [--listen HOST:PORT]... [--upstream URL]
           [--tls-cert PEM --tls-key PEM] [--admin HOST:PORT] [--log-level LEVEL]
           [--access-log PATH|-]
    fastws check FILE
    fastws --version

User errors (bad config, port in use, missing certificate) print one line and
exit non-zero, with no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys

from . import __version__
from .errors import ConfigError

EXIT_USAGE = 2


def version_text() -> str:
    """Version, Python, and which frame codec is in use (compiled or pure Python)."""
    from . import codec

    if codec.IMPLEMENTATION == "cython":
        codec_text = "compiled codec (Cython)"
    else:
        codec_text = "pure-Python codec (the compiled one is not built or FASTWS_NO_EXTENSIONS is set; slower)"
    return f"fastws {__version__} on {platform.python_implementation()} {platform.python_version()}, {codec_text}"


def build_parser() -> argparse.ArgumentParser:
    from .config import add_arguments

    parser = argparse.ArgumentParser(
        prog="fastws",
        description="A WebSocket reverse proxy with Kong-style Python plugins. "
                    "`fastws check FILE` validates a config file and prints the effective config.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and the codec in use, then exit")
    parser.add_argument("--config", "-c", metavar="FILE", default=None, help="YAML config file")
    add_arguments(parser)
    return parser


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s fastws[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        from .config import check_main, load_config
        from .worker import build_chains

        if len(argv) != 2:
            print("usage: fastws check FILE", file=sys.stderr)
            return EXIT_USAGE
        try:
            config = load_config(argv[1])
        except ConfigError:
            return check_main(argv[1])          # it reports the file's own error
        try:
            build_chains(config)                # every plugin loads and its config checks out
        except ConfigError as exc:
            print(f"fastws: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return check_main(argv[1])

    args = build_parser().parse_args(argv)
    if args.version:
        print(version_text())
        return 0
    from .config import config_from_args

    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"fastws: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        check_plugins(config, timeout=config.worker_timeout)   # every plugin loads, before listening
    except ConfigError as exc:
        print(f"fastws: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.log_level)
    return run_master(config, lambda: reload_config(args))


def reload_config(args: argparse.Namespace):
    """SIGHUP: the config file read again, under the same command-line flags, plugins checked."""
    from .config import config_from_args

    config = config_from_args(args)
    check_plugins(config, timeout=config.worker_timeout)
    return config


def check_plugins(config, timeout: float | None = None) -> None:
    """Load every plugin of ``config`` and check its config, in a throw-away child process.

    The master never imports plugin code itself: the workers it forks then import it
    fresh, so a reload (SIGHUP) picks up changed plugin modules, as gunicorn's workers do.
    ``timeout``: how long the check may take (a plugin whose import hangs); None: no limit.

    Raises:
        ConfigError: what the child found wrong (a plugin that cannot load, a bad plugin config).
    """
    import select
    import signal
    import time

    from .worker import build_chains

    if not (config.plugins or any(service.plugins for service in config.services)):
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                # the child: check, report, exit
        code = EXIT_USAGE
        try:
            # Nothing of the master's: its signal handlers, wake-up pipe, workers' and admin
            # descriptors (only stdio and the report pipe stay).
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.closerange(3, write)
            os.closerange(write + 1, os.sysconf("SC_OPEN_MAX"))
            build_chains(config)
            code = 0
        except BaseException as exc:            # a plugin may raise anything while loading
            os.write(write, (str(exc) if isinstance(exc, ConfigError)
                             else f"{type(exc).__name__}: {exc}").encode()[:65536])
        os._exit(code)
    os.close(write)
    deadline = None if timeout is None else time.monotonic() + timeout
    message, status, eof = b"", None, False
    try:
        while status is None:
            # Until the child exits (not until EOF: a process a plugin started may hold the pipe).
            readable, _, _ = select.select([] if eof else [read], [], [], 0.05)
            if readable:
                chunk = os.read(read, 65536)
                message += chunk
                eof = not chunk
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
            elif deadline is not None and time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise ConfigError(f"loading the plugins took more than {timeout:.0f}s (worker_timeout)")
        os.set_blocking(read, False)
        try:
            while chunk := os.read(read, 65536):
                message += chunk
        except BlockingIOError:
            pass
    finally:
        os.close(read)
    if status != 0:
        raise ConfigError(message.decode(errors="replace") or f"checking the plugins failed (exit {status})")


def run_master(config, reload_config=None) -> int:
    """A master process (no event loop) and ``config.workers`` forked workers (SPEC section 7)."""
    from .arbiter import Arbiter, check_listen_addresses
    from .worker import run

    try:
        check_listen_addresses([(item.host, item.port) for item in config.listen])
    except OSError as exc:
        print(f"fastws: {exc.strerror}", file=sys.stderr)
        return 1
    master = os.getpid()
    # Each worker builds its own plugins and listeners after the fork.
    arbiter = Arbiter(
        config,
        lambda cfg, heartbeat, ready: run(cfg, parent=master, heartbeat=heartbeat, ready=ready),
        reload_config=reload_config,
    )
    if config.admin is None:
        return arbiter.run()
    import shutil
    import tempfile

    from .metrics import ENABLE_ENV, MULTIPROC_ENV

    # Before prometheus-client is imported anywhere: it picks its storage on import.
    metrics_dir = tempfile.mkdtemp(prefix="fastws-metrics-")
    os.environ[MULTIPROC_ENV] = os.environ[ENABLE_ENV] = metrics_dir
    try:
        from prometheus_client.multiprocess import mark_process_dead

        from .admin import AdminServer

        try:
            arbiter.admin = AdminServer(arbiter, config.admin, metrics_dir)
        except OSError as exc:
            print(f"fastws: {exc.strerror}", file=sys.stderr)
            return 1
        arbiter.on_reap = lambda pid: mark_process_dead(pid, metrics_dir)
        return arbiter.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
