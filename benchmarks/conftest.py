"""pytest setup for the benchmarks: collected only on request, never by the default run.

The default ``pytest`` run has ``testpaths = ["tests"]``, so nothing here is
collected unless ``benchmarks/`` (or a file in it) is named on the command line,
as picows keeps its benchmarks out of the normal run.  pytest only collects
``test_*.py`` by default; the hook below adds ``bench_*.py`` when the directory
is named (a file named explicitly is collected by pytest itself).

The machine description (CPU model, kernel, Python, Cython, compiler, codec
build) is written into the ``--benchmark-json`` output, next to the numbers,
so ``benchmarks/report.py`` can print the machine of the run, not of the reader.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import time
from pathlib import Path

import pytest

try:
    import pytest_benchmark  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    collect_ignore_glob = ["bench_*.py"]
    print("benchmarks/: pytest-benchmark is not installed (pip install -e '.[bench]'); nothing collected")


def pytest_collect_file(file_path: Path, parent):
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)  # named on the command line: pytest collects it
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _cpuinfo() -> dict:
    info = {"cpu_model": platform.processor() or "unknown", "cpu_flags": [], "logical_cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    if model:
        info["cpu_model"] = model.group(1).strip()
    if mhz:
        info["cpu_mhz"] = mhz.group(1).strip()
    fms = [re.search(rf"^{k}\s*:\s*(\S+)$", text, re.M) for k in ("cpu family", "model", "stepping")]
    if all(fms):
        info["family_model_stepping"] = "/".join(m.group(1) for m in fms)
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        caches.append(f"L{level}{'d' if kind == 'Data' else 'i' if kind == 'Instruction' else ''} {size}")
    info["caches_cpu0"] = caches
    if flags:
        info["hypervisor"] = "hypervisor" in flags.group(1).split()
        # Only the flags that decide which masking code the peers pick (picows dispatches on them).
        present = set(flags.group(1).split())
        info["cpu_flags"] = [f for f in ("sse2", "ssse3", "sse4_2", "avx", "avx2", "avx512f", "avx512bw")
                             if f in present]
    return info


def _compiler_of(path: str) -> str:
    """The compiler named in an ELF file's .comment section (GCC/clang), or ''."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return ""
    found = re.findall(rb"(GCC: \([^)]*\) [0-9.]+|clang version [0-9.]+)", data)
    return found[-1].decode() if found else ""


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("Cython", "pytest-benchmark", "wsproto", "websockets", "aiohttp", "picows"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _codec_build() -> dict:
    """Which fastws._codec this session imports, read before the benchmarks import it."""
    codec: dict = {}
    try:
        from fastws import _codec
    except ImportError as exc:
        return {"compiled": False, "import_error": str(exc)}
    codec["compiled"] = True
    codec["so"] = os.path.basename(_codec.__file__)
    st = os.stat(_codec.__file__)
    codec["so_mtime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))
    codec["so_sha256"] = hashlib.sha256(Path(_codec.__file__).read_bytes()).hexdigest()[:16]
    codec["compiler"] = _compiler_of(_codec.__file__)
    # setup.py compiles with FASTWS_OPT_CFLAGS, default -O2; the value in this
    # environment is the best guess of what the installed build used.
    codec["cflags"] = os.environ.get("FASTWS_OPT_CFLAGS", "-O2")
    return codec


_CODEC_BUILD = _codec_build()
_LOADAVG_AT_START = list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def pytest_benchmark_update_machine_info(config, machine_info):
    codec = _CODEC_BUILD
    machine_info["fastws"] = {
        **_cpuinfo(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_compiler": platform.python_compiler(),
        "versions": _versions(),
        "codec": codec,
        "loadavg_at_start": _LOADAVG_AT_START,
        "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
