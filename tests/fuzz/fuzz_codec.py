"""Atheris (libFuzzer) harness for the frame codec, after websockets' fuzzing/ harnesses.

Not collected by pytest (tests/conftest.py ignores tests/fuzz/).  Run it by hand
or from a nightly job::

    pip install atheris
    python tests/fuzz/fuzz_codec.py -max_total_time=60
    python tests/fuzz/fuzz_codec.py -max_total_time=600 tests/vectors/valid tests/vectors/invalid

(libFuzzer options go after the script; directories are seed corpora, and the
first one also collects new inputs.)

The input chooses the direction, the mode (scan or next_event), the settings and
where the stream is cut into reads; the rest is the stream.  Every codec that
imports is run (``fastws._codec`` and ``fastws._codec_py``); only ``ProtocolError``
and its subclasses may be raised, the offset invariants of
``tests/unit/codec_helpers.drive`` must hold, and when both codecs are there
they must report the same events and the same error.  Anything else is a crash.
"""

from __future__ import annotations

import os
import pathlib
import sys

import atheris

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "unit"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from codec_helpers import drive
    from fastws import _codec_py

    try:
        if os.environ.get("FASTWS_NO_EXTENSIONS"):
            raise ImportError("FASTWS_NO_EXTENSIONS is set")
        from fastws import _codec
    except ImportError as exc:
        print(f"fuzzing the pure-Python codec only ({exc})", file=sys.stderr)
        _codec = None

CODECS = [c for c in (_codec, _codec_py) if c is not None]
LIMITS = [0, 0, 1, 125, 1000, 65536]


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris looks for
    fdp = atheris.FuzzedDataProvider(data)
    mask_required = fdp.ConsumeBool()
    mode = "scan" if fdp.ConsumeBool() else "event"
    options = {
        "max_message_size": fdp.PickValueInList(LIMITS),
        "validate_utf8": fdp.ConsumeBool(),
        "allow_rsv1": fdp.ConsumeBool(),
    }
    cuts = [fdp.ConsumeIntInRange(0, 512) for _ in range(fdp.ConsumeIntInRange(0, 6))]
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())

    runs = [drive(codec, stream, mask_required=mask_required, cuts=cuts, mode=mode, **options)
            for codec in CODECS]
    for run in runs:
        if run.error is not None:
            assert run.error.code in (1002, 1007, 1009), run.error
            assert run.parser.failed
    if len(runs) == 2:
        compiled, reference = runs
        assert compiled.error_info == reference.error_info, (compiled.error_info,
                                                             reference.error_info)
        assert compiled.raw == reference.raw
        assert compiled.counters == reference.counters


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
