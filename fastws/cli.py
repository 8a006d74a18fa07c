"""The ``fastws`` command line (SPEC section 1).

So far it answers ``--version``; the proxy itself arrives with the proxy issue.
"""

from __future__ import annotations

import argparse
import platform
import sys

from . import __version__


def version_text() -> str:
    """Version, Python, and which frame codec is in use (compiled or pure Python)."""
    from . import codec

    if codec.IMPLEMENTATION == "cython":
        codec_text = "compiled codec (Cython)"
    else:
        codec_text = "pure-Python codec (the compiled one is not built or FASTWS_NO_EXTENSIONS is set; slower)"
    return f"fastws {__version__} on {platform.python_implementation()} {platform.python_version()}, {codec_text}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastws",
        description="A WebSocket reverse proxy with Kong-style Python plugins.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and the codec in use, then exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        print(version_text())
        return 0
    print(
        "fastws: the proxy is not part of this build yet; only --version works so far.",
        file=sys.stderr,
    )
    return 2
