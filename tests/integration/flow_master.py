"""A ``python -m fastws`` master in a subprocess, for the process-level tests: start it, read
its stderr as it comes, find its workers, stop everything by pid."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import websockets

from .conftest import free_port, run
from .flow_proc import children


def sockets_of(pid: int) -> int:
    """How many socket descriptors a process holds."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def master(tmp_path):
    """``master(*args, env=None) -> (Popen, port)``: ``python -m fastws --workers ...``."""
    started = []

    def start(*args, env=None, port=None):
        port = port or free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "fastws", "--listen", f"127.0.0.1:{port}", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        started.append(proc)
        # Everything the master and its workers write to stderr, read as it comes.
        proc.err_lines = []
        proc.err_reader = threading.Thread(target=lambda: proc.err_lines.extend(iter(proc.stderr.readline, "")),
                                           daemon=True)
        proc.err_reader.start()
        return proc, port

    yield start
    for proc in started:
        if proc.poll() is None:
            for pid in children(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.kill()
        proc.wait(10)
        proc.err_reader.join(10)
        proc.stdout.close()
        proc.stderr.close()


def serving(port: int) -> bool:
    async def probe():
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/", open_timeout=1) as ws:
                await ws.send("probe")
                return await ws.recv() == "probe"
        except (OSError, websockets.WebSocketException, asyncio.TimeoutError):
            return False
    return run(probe(), 5)


def stderr_of(proc) -> str:
    """What the master and its workers have written to stderr so far (all of it once exited)."""
    if proc.poll() is not None:
        proc.err_reader.join(10)
    return "".join(proc.err_lines)
