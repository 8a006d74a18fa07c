"""Build the C extensions (``fastws._codec``, ``fastws._relay``); everything else is in pyproject.toml.

Environment:
    FASTWS_NO_EXTENSIONS=1  build no extension: the pure-Python codec is used.
    FASTWS_DEBUG=1          Cython checks back on, line tracing, -O0 -g.
    FASTWS_CYTHON_TRACE=1   line tracing only (for coverage of the .pyx).
    FASTWS_OPT_CFLAGS       optimisation flags (default -O2; never -march=native in wheels).

A compile failure falls back to the pure-Python codec with a warning instead of
failing the install, as aiohttp and websockets do.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = bool(os.environ.get("FASTWS_NO_EXTENSIONS"))
DEBUG = bool(os.environ.get("FASTWS_DEBUG"))
TRACE = DEBUG or bool(os.environ.get("FASTWS_CYTHON_TRACE"))

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "nonecheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
    "freethreading_compatible": True,
}
macros = []
if TRACE:
    directives["linetrace"] = True
    macros.append(("CYTHON_TRACE_NOGIL", "1"))

if DEBUG:
    cflags = ["-O0", "-g"]
else:
    cflags = os.environ.get("FASTWS_OPT_CFLAGS", "-O2").split()
if sys.platform == "win32":
    cflags = ["/O2"]


class optional_build_ext(build_ext):
    """Warn and go on with the pure-Python codec when the extension cannot be built."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no Cython, no headers
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc):
        print(
            f"WARNING: fastws._codec could not be compiled ({exc}); "
            "fastws will use its pure-Python codec (slower, same behaviour).",
            file=sys.stderr,
        )


def extensions():
    if NO_EXTENSIONS:
        print("FASTWS_NO_EXTENSIONS is set: building the pure-Python codec only.", file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("WARNING: Cython is not available; fastws will use its pure-Python codec.", file=sys.stderr)
        return []
    # _codec: the frame codec.  _relay: the per-read passthrough path of the proxy,
    # which calls the codec's scan through C (it cimports _codec.pxd).
    exts = [
        Extension(name, [f"fastws/{name.split('.')[1]}.pyx"], extra_compile_args=cflags, define_macros=macros)
        for name in ("fastws._codec", "fastws._relay")
    ]
    return cythonize(exts, compiler_directives=directives, annotate=bool(os.environ.get("FASTWS_ANNOTATE")))


setup(ext_modules=extensions(), cmdclass={"build_ext": optional_build_ext})
