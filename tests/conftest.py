"""Shared fixtures: the codec under test (compiled and pure Python) and hypothesis profiles.

Every codec test takes the ``codec`` fixture and so runs twice, once against
``fastws._codec`` (id ``c``) and once against ``fastws._codec_py`` (id ``py``),
as websockets' ``SpeedupsTests`` rerun ``ApplyMaskTests`` on the C speedups.

A missing compiled module is a failure, not a skip: in CI it means the build
broke.  Set ``FASTWS_NO_EXTENSIONS=1`` (as for aiohttp's ``AIOHTTP_NO_EXTENSIONS``)
to run on a machine without a compiler; then only the ``c`` side is skipped.

Hypothesis profiles (``HYPOTHESIS_PROFILE=<name>``): ``default`` keeps the whole
suite within a few minutes on two cores, ``ci`` is the same but derandomized,
``nightly`` runs twenty times as many examples.
"""

from __future__ import annotations

import importlib
import os

import pytest
from hypothesis import HealthCheck, settings

# The atheris harness is run by hand (see its docstring), never by pytest.
collect_ignore = ["fuzz"]

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("default", max_examples=100, **_COMMON)
settings.register_profile("ci", max_examples=100, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("nightly", max_examples=2000, print_blob=True, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

CODEC_MODULES = {"c": "fastws._codec", "py": "fastws._codec_py"}


def load_codec(name: str):
    """Import one codec; skip or fail (see the module docstring) when ``c`` is missing."""
    try:
        module = importlib.import_module(CODEC_MODULES[name])
    except ImportError as exc:
        if name == "c" and os.environ.get("FASTWS_NO_EXTENSIONS"):
            pytest.skip("FASTWS_NO_EXTENSIONS is set: the compiled codec is not tested")
        pytest.fail(
            f"{CODEC_MODULES[name]} cannot be imported ({exc}); build it with "
            "`pip install -e .` or set FASTWS_NO_EXTENSIONS=1 to test the pure-Python codec only",
            pytrace=False,
        )
    expected = {"c": "cython", "py": "python"}[name]
    assert module.IMPLEMENTATION == expected, (name, module.IMPLEMENTATION)
    return module


# Session scope: the fixture returns a module, so hypothesis tests may use it too.
@pytest.fixture(scope="session", params=["c", "py"])
def codec(request):
    """The codec module under test: ``fastws._codec`` or ``fastws._codec_py``."""
    return load_codec(request.param)


@pytest.fixture(scope="session")
def py_codec():
    """The pure-Python reference codec (the oracle of the differential tests)."""
    return load_codec("py")


@pytest.fixture(scope="session")
def c_codec():
    """The compiled codec; skipped only under FASTWS_NO_EXTENSIONS when it is missing."""
    return load_codec("c")
