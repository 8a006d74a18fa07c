"""fastws in a subprocess: start it, wait for its port, read its memory, stop it by its pid.

Used by the tests that need a real process: the command line (exit codes,
stderr, signals) and memory measurements (the resident set of the proxy alone).
Output goes to files, not pipes, so a chatty process can never block on a full
pipe; tests read the files.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def fastws_command(*args: str) -> list[str]:
    """``python -m fastws ARGS`` with the interpreter running the tests (the ``fastws`` script
    is the same entry point, ``fastws.cli:main``)."""
    return [sys.executable, "-m", "fastws", *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("FASTWS_NO_EXTENSIONS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a fastws master's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A ``/proc/PID/status`` memory field (VmRSS: resident now, VmHWM: peak resident), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class FastwsProcess:
    """One ``python -m fastws ...`` process; ``stop()`` (or the context manager) ends it by pid."""

    def __init__(self, args: list[str], workdir: Path, name: str = "fastws") -> None:
        self.args = list(args)
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(fastws_command(*self.args), cwd=REPO, env=subprocess_env(),
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err)
        self.pid = self.proc.pid

    # -- output --------------------------------------------------------------------------

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_output(self, predicate, timeout: float = 5.0, stream: str = "stdout") -> str:
        """Poll ``stdout``/``stderr`` until ``predicate(text)``; return the text (fail on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.stdout if stream == "stdout" else self.stderr
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{stream} did not match within {timeout}s: {text!r} "
                                     f"(stderr: {self.stderr!r})")
            time.sleep(0.02)

    # -- lifecycle -----------------------------------------------------------------------

    def wait_port(self, port: int, timeout: float = 10.0) -> None:
        """Wait until ``port`` accepts connections; fail if the process exits first."""
        deadline = time.monotonic() + timeout
        while not port_accepts(port):
            if self.proc.poll() is not None:
                raise AssertionError(f"fastws exited with {self.proc.returncode} before listening: "
                                     f"{self.stderr!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"port {port} not accepting after {timeout}s: {self.stderr!r}")
            time.sleep(0.02)

    def wait_listening(self, timeout: float = 10.0) -> str:
        """Wait for the start-up line on stderr ("listening on ...") without connecting to the
        port (a probe connection would be a connection of its own, e.g. in the access log)."""
        deadline = time.monotonic() + timeout
        while "listening on" not in (text := self.stderr):
            if self.proc.poll() is not None:
                raise AssertionError(f"fastws exited with {self.proc.returncode} before listening: {text!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no start-up line after {timeout}s: {text!r}")
            time.sleep(0.02)
        return text

    def pids(self) -> list[int]:
        """The master and its workers (``python -m fastws`` is a master with forked workers)."""
        return [self.pid, *children(self.pid)]

    def rss(self) -> int:
        """Resident set size now of the master and its workers, in bytes."""
        return sum(memory_kib(pid, "VmRSS") for pid in self.pids()) * 1024

    def peak_rss(self) -> int:
        """Peak resident set size of the master and its workers, summed, in bytes."""
        return sum(memory_kib(pid, "VmHWM") for pid in self.pids()) * 1024

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; SIGKILL (by pid) if it does not exit in ``timeout``."""
        try:
            if self.proc.poll() is None:
                os.kill(self.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.kill(self.pid, signal.SIGKILL)
                    self.proc.wait(5)
            return self.proc.returncode
        finally:
            self._out.close()
            self._err.close()

    def __enter__(self) -> "FastwsProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def run_fastws(args: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run ``python -m fastws ARGS`` to completion (for commands that exit by themselves)."""
    return subprocess.run(fastws_command(*args), cwd=REPO, env=subprocess_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)
