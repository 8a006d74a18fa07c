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
    from .worker import build_chains, chain_for_services, run

    try:
        chains = build_chains(config)   # load and check every plugin before listening
    except ConfigError as exc:
        print(f"fastws: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.log_level)
    if config.workers > 1:
        return run_master(config)
    if config.echo:
        # The echo service is made by the worker: it gets the global plugins there.
        return run(config)
    return run(config, chain_for=chain_for_services(chains))


def run_master(config) -> int:
    """``--workers N``: a master process (no event loop) and N forked workers."""
    from .arbiter import Arbiter, check_listen_addresses
    from .worker import run

    try:
        check_listen_addresses([(item.host, item.port) for item in config.listen])
    except OSError as exc:
        print(f"fastws: {exc.strerror}", file=sys.stderr)
        return 1
    master = os.getpid()
    # Each worker builds its own plugins and listeners after the fork.
    return Arbiter(config, lambda cfg, heartbeat: run(cfg, parent=master, heartbeat=heartbeat)).run()
