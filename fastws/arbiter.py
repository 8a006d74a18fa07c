"""The master process: spawns, reaps and restarts workers; knows no WebSocket.

After gunicorn's ``arbiter.py`` (STYLE section 5):

- no event loop: a loop that waits on a signal queue with a timeout, then
  dispatches ``handle_<signal>``, reaps dead workers and spawns up to N;
- signal handlers only enqueue (gunicorn: "NO LOGGING" in a handler);
- each worker is a fork that binds its own SO_REUSEPORT listeners and runs its
  own event loop; the master is handed the entry point (``worker_entry``) and
  talks to workers only through signals and exit codes;
- exit codes are a protocol: a worker that exits with ``EXIT_BOOT_ERROR`` (3)
  failed to start -- the master stops with that error instead of respawning it
  forever; any other death is restarted, with a growing delay when deaths come
  in quick succession.

Signals: TERM graceful stop (workers close every session with 1001 and get up
to ``graceful_timeout``), INT the same with a short limit, TTIN/TTOU one worker
more or less.

Liveness (gunicorn's ``workertmp.py`` and ``murder_workers()``): each worker gets
an unlinked temporary file and stamps it with ``time.monotonic()`` every second
from its event loop.  A stamp older than ``worker_timeout`` means a blocked loop:
the master sends SIGABRT, then SIGKILL if it is still there 5 seconds later, and
the worker is replaced like any that died.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import sys
import tempfile
import time
from typing import Any, Callable

__all__ = ["Arbiter", "check_listen_addresses", "EXIT_BOOT_ERROR"]

log = logging.getLogger("fastws.arbiter")

EXIT_BOOT_ERROR = 3
SIGNALS = ("TERM", "INT", "TTIN", "TTOU", "CHLD")
RESTART_DELAYS = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0)   # after 0, 1, 2, ... deaths in a row
QUICK_DEATH = 5.0                                 # a worker that lived less counts as "in a row"
KILL_AFTER_ABORT = 5.0                            # SIGKILL a stuck worker this long after SIGABRT


def check_listen_addresses(addresses: list[tuple[str, int]]) -> None:
    """Bind each address once, as a worker will (SO_REUSEPORT), and let it go again.

    Raises:
        OSError: naming the address, for a port in use or an address not on this host.
    """
    for host, port in addresses:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - optional
        return
    setproctitle.setproctitle(title)


class Arbiter:
    """Runs ``worker_entry(config, heartbeat_fd)`` in ``config.workers`` forked processes until stopped."""

    def __init__(self, config: Any, worker_entry: Callable[[Any], int]) -> None:
        self.config = config
        self.worker_entry = worker_entry
        self.workers: dict[int, float] = {}     # pid -> start time
        self.target = config.workers
        self.signals: queue.SimpleQueue = queue.SimpleQueue()
        self.stopping = False
        self.stop_deadline: float | None = None
        self.deaths_in_a_row = 0
        self.next_spawn = 0.0
        self.exit_code = 0
        self.spawned = 0
        self.heartbeats: dict[int, int] = {}    # pid -> fd of its unlinked heartbeat file
        self.aborted: dict[int, float] = {}     # pid -> when SIGABRT was sent

    # -- signals ---------------------------------------------------------------------------

    def _enqueue(self, signum, frame) -> None:
        self.signals.put(signum)                # only enqueue: the main loop acts

    def _install_signals(self) -> None:
        for name in SIGNALS:
            signal.signal(getattr(signal, f"SIG{name}"), self._enqueue)

    def handle_term(self) -> None:
        self._stop(signal.SIGTERM, self.config.graceful_timeout)

    def handle_int(self) -> None:
        self._stop(signal.SIGINT, min(self.config.graceful_timeout, 2.0))

    def handle_ttin(self) -> None:
        self.target += 1
        log.info("one more worker: %d", self.target)

    def handle_ttou(self) -> None:
        if self.target > 1:
            self.target -= 1
            log.info("one worker less: %d", self.target)

    def handle_chld(self) -> None:
        pass                                    # reaping happens every pass

    def _stop(self, sig: int, timeout: float) -> None:
        if not self.stopping:
            log.info("stopping %d worker(s) (%s)", len(self.workers), signal.Signals(sig).name)
        self.stopping = True
        # A little more than the workers' own limit, for them to report and exit.
        deadline = time.monotonic() + timeout + 2.0
        self.stop_deadline = deadline if self.stop_deadline is None else min(self.stop_deadline, deadline)
        self._signal_all(sig)

    # -- workers ---------------------------------------------------------------------------

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def spawn(self) -> int:
        self.spawned += 1
        fd, path = tempfile.mkstemp(prefix="fastws-heartbeat-")
        os.unlink(path)
        now = time.monotonic()
        os.utime(fd, (now, now))
        pid = os.fork()
        if pid:
            self.workers[pid] = now
            self.heartbeats[pid] = fd
            return pid
        # Which worker this is (1, 2, ... in spawn order), for logs and plugins.
        os.environ["FASTWS_WORKER_ID"] = str(self.spawned)
        for other in self.heartbeats.values():
            os.close(other)
        # The worker: default signal dispositions (its loop installs its own), then run.
        code = 1
        try:
            for name in SIGNALS:
                signal.signal(getattr(signal, f"SIG{name}"), signal.SIG_DFL)
            _set_title(f"fastws: worker ({self.config.source or 'no config file'})")
            code = self.worker_entry(self.config, fd)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker failed")
            code = EXIT_BOOT_ERROR
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            started = self.workers.pop(pid, None)
            fd = self.heartbeats.pop(pid, None)
            if fd is not None:
                os.close(fd)
            self.aborted.pop(pid, None)
            if started is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                continue
            if code == EXIT_BOOT_ERROR:
                log.error("worker %d failed to boot; stopping (no respawn loop)", pid)
                self.exit_code = EXIT_BOOT_ERROR
                self._stop(signal.SIGTERM, self.config.graceful_timeout)
                continue
            lived = time.monotonic() - started
            self.deaths_in_a_row = self.deaths_in_a_row + 1 if lived < QUICK_DEATH else 0
            delay = RESTART_DELAYS[min(self.deaths_in_a_row, len(RESTART_DELAYS) - 1)]
            self.next_spawn = time.monotonic() + delay
            log.warning("worker %d died (%s); replacing it in %.1fs", pid,
                        f"signal {-code}" if code < 0 else f"exit {code}", delay)

    def murder(self) -> None:
        """Replace workers whose heartbeat is older than ``worker_timeout`` (a blocked loop)."""
        now = time.monotonic()
        for pid, fd in list(self.heartbeats.items()):
            try:
                silent = now - os.fstat(fd).st_mtime
            except OSError:
                continue
            if silent <= self.config.worker_timeout:
                continue
            try:
                if pid not in self.aborted:
                    log.error("worker %d has not answered for %.1fs; replacing it", pid, silent)
                    os.kill(pid, signal.SIGABRT)
                    self.aborted[pid] = now
                elif now - self.aborted[pid] > KILL_AFTER_ABORT:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def manage(self) -> None:
        if self.stopping:
            return
        while len(self.workers) < self.target and time.monotonic() >= self.next_spawn:
            self.spawn()
        surplus = len(self.workers) - self.target
        for pid in sorted(self.workers, key=self.workers.get)[:max(surplus, 0)]:
            os.kill(pid, signal.SIGTERM)        # TTOU: the oldest goes, gracefully
            self.workers.pop(pid)

    # -- the main loop -----------------------------------------------------------------------

    def run(self) -> int:
        _set_title(f"fastws: master ({self.config.source or 'no config file'})")
        self._install_signals()
        log.info("master %d starting %d workers", os.getpid(), self.target)
        self.manage()
        while True:
            try:
                sig = self.signals.get(timeout=0.5)
            except queue.Empty:
                sig = None
            if sig is not None:
                getattr(self, f"handle_{signal.Signals(sig).name[3:].lower()}")()
            self.murder()
            self.reap()
            if self.stopping:
                if not self.workers:
                    return self.exit_code
                if time.monotonic() > self.stop_deadline:
                    log.warning("workers still running after the graceful timeout; killing them")
                    self._signal_all(signal.SIGKILL)
                    self.stop_deadline = float("inf")
                continue
            self.manage()

