"""The master process: spawns, reaps, restarts and reloads workers; knows no WebSocket.

After gunicorn's ``arbiter.py`` (STYLE section 5):

- no event loop: one ``select()`` over a wake-up pipe (signals write to it), the
  workers' readiness pipes and the admin endpoint's sockets, with a timeout;
  after it, ``handle_<signal>`` for each queued signal, then reaping and spawning;
- signal handlers only enqueue (gunicorn: "NO LOGGING" in a handler);
- each worker is a fork that binds its own SO_REUSEPORT listeners and runs its
  own event loop; the master is handed the entry point (``worker_entry``) and
  talks to workers through signals, exit codes and two file descriptors: a
  readiness pipe (one byte once its listeners are up) and a heartbeat file;
- exit codes are a protocol: a worker that exits with ``EXIT_BOOT_ERROR`` (3)
  failed to start -- the master stops with that error instead of respawning it
  forever; any other death is restarted, with a growing delay when deaths come
  in quick succession.

Signals: TERM graceful stop (workers close every session with 1001 and get up
to ``graceful_timeout``), INT the same with a short limit, QUIT like TERM,
TTIN/TTOU one worker more or less, HUP reload.

Reload (HUP), as nginx does it: read and check the config again (plugins are
loaded in a throw-away child, so that the master never imports plugin code and
new workers import it fresh); if it is bad, log why and keep the old workers.
Else a new *generation* of workers starts with the new config; once every one
of them has reported ready (listening), each old worker gets SIGQUIT: it stops
accepting, keeps its sessions up to ``drain_timeout``, then closes them with
1012 "Service Restart".  A new worker that fails to boot, or is not ready within
``worker_timeout``, rolls the reload back: the old generation never stopped.

Liveness (gunicorn's ``workertmp.py`` and ``murder_workers()``): each worker gets
an unlinked temporary file and stamps it with ``time.monotonic()`` every second
from its event loop.  A stamp older than ``worker_timeout`` means a blocked loop:
the master sends SIGABRT, then SIGKILL if it is still there 5 seconds later, and
the worker is replaced like any that died.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import select
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Arbiter", "WorkerProcess", "check_listen_addresses", "EXIT_BOOT_ERROR"]

log = logging.getLogger("fastws.arbiter")

EXIT_BOOT_ERROR = 3
SIGNALS = ("TERM", "INT", "QUIT", "HUP", "TTIN", "TTOU", "CHLD")
SIGNAL_SET = {getattr(signal, f"SIG{name}") for name in SIGNALS}
# In a worker: the master's business, ignored (a terminal hangup or ``pkill -HUP fastws`` reaches
# the workers too); the worker's loop handles TERM, INT and QUIT itself.
WORKER_IGNORES = ("HUP", "TTIN", "TTOU")
RESTART_DELAYS = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0)   # after 0, 1, 2, ... deaths in a row
QUICK_DEATH = 5.0                                 # a worker that lived less counts as "in a row"
KILL_AFTER_ABORT = 5.0                            # SIGKILL a stuck worker this long after SIGABRT
TICK = 0.5                                        # the longest the main loop sleeps


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


def tcp_migrate_req() -> str | None:
    """Linux 5.14+: whether a closing SO_REUSEPORT listener hands its queued connections to
    another listener of the group ("1") or resets them ("0"); None where there is no such knob."""
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
            return f.read().strip()
    except OSError:
        return None


def set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - optional
        return
    setproctitle.setproctitle(title)


@dataclass
class WorkerProcess:
    """The master's record of one worker."""

    pid: int
    number: int             # 1, 2, ... in spawn order (FASTWS_WORKER_ID)
    generation: int         # the config generation it runs
    config: Any             # ... and that config (its drain_timeout and graceful_timeout apply)
    started: float          # time.monotonic()
    started_wall: float     # time.time(), for /status
    heartbeat: int          # fd of its unlinked heartbeat file
    ready_fd: int | None    # read end of its readiness pipe, until it reports
    ready: bool = False
    retiring: bool = False  # told to stop (reload drain, TTOU, rollback): not counted
    retire_deadline: float = float("inf")
    aborted_at: float | None = None

    @property
    def state(self) -> str:
        return "draining" if self.retiring else "ready" if self.ready else "starting"

    @property
    def stop_time(self) -> float:
        """The longest a graceful stop of this worker takes (its own config's limit)."""
        return self.config.graceful_timeout


class Arbiter:
    """Runs ``worker_entry(config, heartbeat_fd, ready_fd)`` in ``config.workers`` forked
    processes until stopped.

    ``reload_config()`` returns the config to reload on SIGHUP, or raises ``ConfigError``
    (naming the problem); without it SIGHUP only starts fresh workers on the same config.
    ``admin``, when set before ``run()``: an object with ``fds()``, ``handle(readable)`` and
    ``close()`` served from the main loop (the admin endpoint).
    """

    def __init__(self, config: Any, worker_entry: Callable[..., int], *,
                 reload_config: Callable[[], Any] | None = None) -> None:
        self.config = config
        self.worker_entry = worker_entry
        self.reload_config = reload_config
        self.admin: Any = None
        self.workers: dict[int, WorkerProcess] = {}
        self.target = config.workers
        self.generation = 1                     # the generation serving
        self.generations = 1                    # the last one started (numbers are never reused)
        self.reloading: tuple[Any, int, int] | None = None    # (config, generation, target) to go back to
        self.reload_deadline = 0.0
        self.hup_pending = False
        self.warned_migrate = False
        self.reloads = {"ok": 0, "failed": 0}
        self.signals: queue.SimpleQueue = queue.SimpleQueue()
        self.stopping = False
        self.stop_deadline: float | None = None
        self.deaths_in_a_row = 0
        self.next_spawn = 0.0
        self.exit_code = 0
        self.spawned = 0
        self.started = time.time()
        self.on_reap: Callable[[int], None] | None = None     # the metrics' mark_process_dead
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    # -- views ----------------------------------------------------------------------------------

    def current(self) -> list[WorkerProcess]:
        """The workers of the running generation that are not being stopped."""
        return [w for w in self.workers.values()
                if w.generation == self.generation and not w.retiring]

    # -- signals --------------------------------------------------------------------------------

    def _enqueue(self, signum, frame) -> None:
        self.signals.put(signum)                # only enqueue: the main loop acts

    def _install_signals(self) -> None:
        for name in SIGNALS:
            signal.signal(getattr(signal, f"SIG{name}"), self._enqueue)
        # The C-level handler writes the signal number here: select() wakes at once.
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def handle_term(self) -> None:
        self._stop(signal.SIGTERM, self.config.graceful_timeout)

    def handle_quit(self) -> None:
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

    def handle_hup(self) -> None:
        if self.stopping:
            return
        if self.reloading is not None:
            self.hup_pending = True             # after the reload in progress
            return
        source = self.config.source or "the command line"
        if self.reload_config is not None:
            try:
                config = self.reload_config()
            except Exception as exc:            # ConfigError names the field; anything else too
                self.reloads["failed"] += 1
                log.error("reload of %s failed, still serving generation %d: %s",
                          source, self.generation, exc)
                return
        else:
            config = self.config
        try:
            old = {(item.host, item.port) for item in self.config.listen}
            check_listen_addresses([(item.host, item.port) for item in config.listen
                                    if (item.host, item.port) not in old])
        except OSError as exc:
            self.reloads["failed"] += 1
            log.error("reload failed, still serving generation %d: %s", self.generation, exc.strerror)
            return
        if config.admin != self.config.admin:
            log.warning("reload: the admin address stays %s until a restart", self.config.admin)
        self.reloading = (self.config, self.generation, self.target)
        self.config = config
        self.generations += 1
        self.generation = self.generations
        self.target = config.workers
        self.next_spawn = 0.0
        self.reload_deadline = time.monotonic() + max(config.worker_timeout, 5.0)
        log.info("reloading %s: starting %d worker(s) of generation %d",
                 source, self.target, self.generation)
        if tcp_migrate_req() == "0" and not self.warned_migrate:
            self.warned_migrate = True
            log.warning("net.ipv4.tcp_migrate_req is 0: connections waiting in an old worker's "
                        "accept queue when it stops listening are reset; set it to 1 for reloads "
                        "that refuse nothing (see the README, Reload)")

    def _reload_progress(self) -> None:
        """Once the new generation is all up, the old one drains (SIGQUIT)."""
        if self.reloading is None:
            return
        current = self.current()
        if len(current) >= self.target and all(w.ready for w in current):
            self.reloading = None
            self.reloads["ok"] += 1
            old = [w for w in self.workers.values() if w.generation != self.generation and not w.retiring]
            now = time.monotonic()
            for w in old:
                # Each drains under its own config: drain_timeout, then a graceful close.
                self._retire(w, signal.SIGQUIT, now + w.config.drain_timeout + w.stop_time + 5.0)
            log.info("generation %d serving; %d old worker(s) draining", self.generation, len(old))
            if self.hup_pending:
                self.hup_pending = False
                self.handle_hup()
        elif time.monotonic() > self.reload_deadline:
            self._rollback(f"the new workers were not ready within {self.config.worker_timeout:.0f}s")

    def _rollback(self, why: str) -> None:
        assert self.reloading is not None
        failed = self.generation
        self.config, self.generation, self.target = self.reloading
        self.reloading = None
        self.reloads["failed"] += 1
        for w in list(self.workers.values()):
            if w.generation == failed and not w.retiring:
                self._retire(w, signal.SIGTERM, time.monotonic() + w.stop_time + 5.0)
        log.error("reload failed (%s); still serving generation %d", why, self.generation)
        if self.hup_pending:                    # a newer config came meanwhile: try that one
            self.hup_pending = False
            self.handle_hup()

    def _stop(self, sig: int, timeout: float) -> None:
        if not self.stopping:
            log.info("stopping %d worker(s) (%s)", len(self.workers), signal.Signals(sig).name)
        self.stopping = True
        # A little more than the workers' own limit, for them to report and exit (a draining
        # worker of an older generation has its own config's limit).
        if sig == signal.SIGTERM:
            timeout = max([timeout, *(w.stop_time for w in self.workers.values())])
        deadline = time.monotonic() + timeout + 2.0
        self.stop_deadline = deadline if self.stop_deadline is None else min(self.stop_deadline, deadline)
        self._signal_all(sig)

    # -- workers --------------------------------------------------------------------------------

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _retire(self, worker: WorkerProcess, sig: int, deadline: float) -> None:
        worker.retiring = True
        worker.retire_deadline = deadline
        try:
            os.kill(worker.pid, sig)
        except ProcessLookupError:
            pass

    def spawn(self) -> int:
        self.spawned += 1
        fd, path = tempfile.mkstemp(prefix="fastws-heartbeat-")
        os.unlink(path)
        now = time.monotonic()
        os.utime(fd, (now, now))
        ready_r, ready_w = os.pipe()
        # Signals stay blocked across the fork: one that arrives in between would otherwise
        # run the master's handler in the child (and be lost there).  The child keeps them
        # blocked until its event loop handles them (``worker.serve`` unblocks them).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNAL_SET)
        pid = os.fork()
        if pid:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(ready_w)
            os.set_blocking(ready_r, False)
            self.workers[pid] = WorkerProcess(pid, self.spawned, self.generation, self.config, now,
                                              time.time(), fd, ready_r)
            return pid
        # The worker: none of the master's descriptors, its own signal dispositions, then run.
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for name in SIGNALS:
                signal.signal(getattr(signal, f"SIG{name}"),
                              signal.SIG_IGN if name in WORKER_IGNORES else signal.SIG_DFL)
            os.close(ready_r)
            for fd_ in [self._wake_r, self._wake_w, *self._worker_fds()]:
                os.close(fd_)
            if self.admin is not None:
                self.admin.close()
            # Which worker this is (1, 2, ... in spawn order), for logs and plugins.
            os.environ["FASTWS_WORKER_ID"] = str(self.spawned)
            os.environ["FASTWS_GENERATION"] = str(self.generation)
            set_title(f"fastws: worker {self.spawned} ({self.config.source or 'no config file'})")
            code = self.worker_entry(self.config, fd, ready_w)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker failed")
            code = EXIT_BOOT_ERROR
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _worker_fds(self) -> list[int]:
        fds = []
        for w in self.workers.values():
            fds.append(w.heartbeat)
            if w.ready_fd is not None:
                fds.append(w.ready_fd)
        return fds

    def _read_ready(self, worker: WorkerProcess) -> None:
        try:
            data = os.read(worker.ready_fd, 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            worker.ready = True
        os.close(worker.ready_fd)               # ready, or gone before it was (reaped soon)
        worker.ready_fd = None

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            os.close(worker.heartbeat)
            if worker.ready_fd is not None:
                os.close(worker.ready_fd)
            if self.on_reap is not None:
                self.on_reap(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping or worker.retiring:
                continue
            if code == EXIT_BOOT_ERROR and not worker.ready:
                if self.reloading is not None and worker.generation == self.generation:
                    self._rollback(f"worker {pid} of generation {worker.generation} failed to boot")
                    continue
                log.error("worker %d failed to boot; stopping (no respawn loop)", pid)
                self.exit_code = EXIT_BOOT_ERROR
                self._stop(signal.SIGTERM, self.config.graceful_timeout)
                continue
            lived = time.monotonic() - worker.started
            self.deaths_in_a_row = self.deaths_in_a_row + 1 if lived < QUICK_DEATH else 0
            delay = RESTART_DELAYS[min(self.deaths_in_a_row, len(RESTART_DELAYS) - 1)]
            self.next_spawn = time.monotonic() + delay
            log.warning("worker %d died (%s); replacing it in %.1fs", pid,
                        f"signal {-code}" if code < 0 else f"exit {code}", delay)

    def murder(self) -> None:
        """Replace workers whose heartbeat is older than ``worker_timeout`` (a blocked loop), and
        kill retiring ones past their deadline."""
        now = time.monotonic()
        for worker in list(self.workers.values()):
            try:
                if worker.retiring and now > worker.retire_deadline:
                    log.warning("worker %d still running after its drain; killing it", worker.pid)
                    os.kill(worker.pid, signal.SIGKILL)
                    worker.retire_deadline = float("inf")
                    continue
                try:
                    silent = now - os.fstat(worker.heartbeat).st_mtime
                except OSError:
                    continue
                if silent <= self.config.worker_timeout:
                    continue
                if worker.aborted_at is None:
                    log.error("worker %d has not answered for %.1fs; replacing it", worker.pid, silent)
                    os.kill(worker.pid, signal.SIGABRT)
                    worker.aborted_at = now
                elif now - worker.aborted_at > KILL_AFTER_ABORT:
                    os.kill(worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def manage(self) -> None:
        if self.stopping:
            return
        current = self.current()
        while len(current) < self.target and time.monotonic() >= self.next_spawn:
            self.spawn()
            current = self.current()
        surplus = len(current) - self.target
        for worker in sorted(current, key=lambda w: w.started)[:max(surplus, 0)]:
            # TTOU: the oldest goes, gracefully.
            self._retire(worker, signal.SIGTERM, time.monotonic() + self.config.graceful_timeout + 5.0)

    # -- the main loop ----------------------------------------------------------------------------

    def _wait(self) -> None:
        """Sleep until a signal, a readiness report or an admin request, at most ``TICK``."""
        readers = {self._wake_r: None}
        for worker in self.workers.values():
            if worker.ready_fd is not None:
                readers[worker.ready_fd] = worker
        admin_readers, admin_writers = self.admin.fds() if self.admin is not None else ([], [])
        try:
            readable, writable, _ = select.select([*readers, *admin_readers], admin_writers, [], TICK)
        except OSError as exc:                  # pragma: no cover - EINTR is retried by Python
            if exc.errno != errno.EBADF:
                raise
            return
        for fd in readable:
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            elif fd in readers:
                self._read_ready(readers[fd])
        if self.admin is not None:
            try:
                self.admin.handle([fd for fd in readable if fd in admin_readers], writable)
            except Exception:                   # the endpoint must never stop the master
                log.exception("admin endpoint failed")

    def run(self) -> int:
        set_title(f"fastws: master ({self.config.source or 'no config file'})")
        self._install_signals()
        log.info("master %d starting %d worker(s)", os.getpid(), self.target)
        try:
            self.manage()
            while True:
                self._wait()
                while True:
                    try:
                        sig = self.signals.get_nowait()
                    except queue.Empty:
                        break
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
                self._reload_progress()
        finally:
            if self.admin is not None:
                self.admin.close()
