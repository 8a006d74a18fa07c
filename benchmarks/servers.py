"""Processes of the proxy load suite: echo upstream, fastws, nginx; and how to measure them.

Everything the suite starts runs in a subprocess of its own, so the pytest
process, the load client, the upstream and the proxy never share a CPU budget
or a GIL, and each one's CPU time can be read from ``/proc/<pid>/stat``.

Library side (imported by ``bench_proxy.py``)::

    with EchoUpstream.start(tmpdir) as echo:             # picows echo, uvloop
        with FastwsProxy.start(tmpdir, echo.url, chain="inspect") as proxy:
            proxy.url, proxy.pids, cpu_ticks(proxy.pids), vm_rss(proxy.pid)
        with NginxProxy.start(tmpdir, echo.port) as nginx:  # only if nginx_binary() finds one
            ...
        # the processes comparison: real command lines, master + N workers, CPU of all of them
        with FastwsWorkers.start(tmpdir, echo.url, workers=2) as fw:     # python -m fastws --workers 2
            fw.pids                                         # [master, worker, worker]
        with NginxProxy.start(tmpdir, echo.port, workers=2, name="nginx-w2") as nginx:
            nginx.pids                                      # [master, worker, worker]

Launcher side (what the subprocesses run)::

    python benchmarks/servers.py echo [--host 127.0.0.1] [--port 0]
    python benchmarks/servers.py fastws --listen 127.0.0.1:P --upstream ws://127.0.0.1:U/ \
        [--chain none|inspect]
    python -m fastws --config WORKDIR/fastws-read.yaml --listen 127.0.0.1:P \
        --upstream ws://127.0.0.1:U/ --log-level warning      # chain "read" / "rewrite"
    python -m fastws --workers N --listen 127.0.0.1:P --upstream ws://127.0.0.1:U/ \
        --log-level warning                                   # FastwsWorkers (fastws-wN)

``fastws --chain inspect`` runs one worker (``fastws.worker.run``) with a
trivial handler chain on both directions (``TrivialChain``, handed in through
``chain_for``): every message is aggregated, unmasked, handed to a handler that
does nothing, and re-framed, which is the cost of the session's inspect path
alone, without ``fastws.plugins.chain`` or the PDK.  With ``--chain none`` it is
the same code path as ``python -m fastws --listen ... --upstream ...``.

The plugin targets (``FastwsProxy.start(chain="read"|"rewrite")``) run what users
run: ``python -m fastws`` with a YAML config whose global ``plugins`` entry names
a class of this module (``servers:ReadPlugin``, ``servers:RewritePlugin``;
``benchmarks/`` is on the ``PYTHONPATH`` of every launched process), loaded by
``fastws.worker.build_chains`` into a real ``Chain`` and called through the PDK.

Every launcher raises its ``RLIMIT_NOFILE`` soft limit to the hard limit, so
the idle-connections cell can hold as many sockets as the machine allows.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NGINX_TEMPLATE = HERE / "nginx.conf.template"
CLK_TCK = os.sysconf("SC_CLK_TCK")

__all__ = [
    "EchoUpstream", "FastwsProxy", "FastwsWorkers", "NginxProxy", "TrivialChain",
    "ReadPlugin", "RewritePlugin", "NoopPlugin", "SetFrameDataPlugin", "PLUGIN_TARGETS", "plugin_config",
    "cpu_ticks", "cpu_ns", "vm_rss", "vm_hwm", "fd_count", "free_port", "raise_nofile", "children",
    "listening_sockets",
    "nginx_binary", "nginx_version", "nginx_connections", "write_nginx_conf", "CLK_TCK",
]


# -- measuring processes -----------------------------------------------------------------

def cpu_ticks(pids) -> int:
    """user + sys time of ``pids`` (all their threads), in clock ticks (``CLK_TCK`` a second).

    Fields 14 and 15 of ``/proc/<pid>/stat`` (proc(5)); the command name in
    field 2 may contain spaces, so the fields are counted after the last ')'.
    """
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def cpu_ns(pids) -> int:
    """On-CPU time of ``pids`` in ns from ``/proc/<pid>/task/*/schedstat``: a finer cross-check."""
    total = 0
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def vm_rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (``VmRSS``)."""
    return _status_kib(pid, "VmRSS") * 1024


def vm_hwm(pid: int) -> int:
    """Peak resident set size of ``pid`` in bytes (``VmHWM``)."""
    return _status_kib(pid, "VmHWM") * 1024


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (for nginx: the workers of the master)."""
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def listening_sockets(host: str, port: int) -> int:
    """How many TCP sockets listen on ``host:port`` (IPv4), from ``/proc/net/tcp``.

    With SO_REUSEPORT every worker has a listener of its own, so this counts the
    workers ready to accept (``fastws --workers N``: N when all are up).
    """
    want = f"{socket.htonl(int.from_bytes(socket.inet_aton(host), 'big')):08X}:{port:04X}"
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":       # local address, state LISTEN
                count += 1
    return count


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a worker of ours that exited but was not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def free_port() -> int:
    """A port free on 127.0.0.1 right now (fastws's config refuses port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_nofile() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def _wait_port(host: str, port: int, proc: subprocess.Popen, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening:\n"
                               + _tail(log))
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:.0f}s:\n" + _tail(log))


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop one process we started, by its pid: ``sig``, then SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


class _Process:
    """A started server: its Popen, the pids whose CPU counts, its URL; a context manager."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, proc: subprocess.Popen, host: str, port: int, path: str, log: Path) -> None:
        self.proc, self.host, self.port, self.path, self.log = proc, host, port, path, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid]

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{self.path}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n" + _tail(self.log))

    def stop(self) -> None:
        _stop(self.proc, self.stop_signal)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _python() -> str:
    return sys.executable


def _spawn(argv: list[str], log: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ)
    # The fastws tree measured, and benchmarks/ for the plugin classes of this module.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(HERE), env.get("PYTHONPATH")]))
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=open(log, "ab"), env=env, **kw)


class EchoUpstream(_Process):
    """The upstream of every cell: a picows echo server in its own process, on uvloop."""

    name = "echo upstream"

    @classmethod
    def start(cls, tmpdir: Path, host: str = "127.0.0.1") -> "EchoUpstream":
        log = Path(tmpdir) / "echo.log"
        proc = _spawn([_python(), str(HERE / "servers.py"), "echo", "--host", host, "--port", "0"], log)
        line = proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            _stop(proc)
            raise RuntimeError("echo upstream did not start:\n" + _tail(log))
        return cls(proc, host, int(line.split()[1]), "/", log)


class FastwsProxy(_Process):
    """fastws, one worker, in its own process.

    ``chain``: "none" (passthrough) or "inspect" (``TrivialChain``) through this
    module's launcher; "read" or "rewrite" through ``python -m fastws --config``
    with the plugin of ``PLUGIN_TARGETS`` (the config is written to ``tmpdir``).
    """

    name = "fastws"

    @classmethod
    def start(cls, tmpdir: Path, upstream_url: str, chain: str = "none",
              host: str = "127.0.0.1") -> "FastwsProxy":
        port = free_port()
        log = Path(tmpdir) / f"fastws-{chain}-{port}.log"
        if chain in PLUGIN_TARGETS:
            conf = Path(tmpdir) / f"fastws-{chain}.yaml"
            conf.write_text(plugin_config(chain))
            argv = [_python(), "-m", "fastws", "--config", str(conf), "--listen", f"{host}:{port}",
                    "--upstream", upstream_url, "--log-level", "warning"]
        else:
            argv = [_python(), str(HERE / "servers.py"), "fastws", "--listen", f"{host}:{port}",
                    "--upstream", upstream_url, "--chain", chain]
        proc = _spawn(argv, log)
        _wait_port(host, port, proc, log)
        self = cls(proc, host, port, "/", log)
        self.chain = chain
        self._children = []
        if chain in PLUGIN_TARGETS:
            # ``python -m fastws`` is a master and one worker: the CPU of both is the proxy's.
            deadline = time.monotonic() + 10
            while not (kids := children(proc.pid)) and time.monotonic() < deadline:
                time.sleep(0.02)
            if len(kids) != 1:
                self.stop()
                raise RuntimeError(f"fastws ({chain}): expected one worker, found {kids}:\n" + _tail(log))
            self._children = kids
        return self

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid, *self._children]


class _Workers:
    """What the processes comparison needs of a master with N worker processes.

    ``pids`` is the master and its workers (the CPU of all of them is the
    proxy's), read from ``/proc/<master>/task/*/children`` once all are up; a
    worker that died (and was replaced by the master) makes ``check()`` fail, so a
    cell is never measured on a different set of processes than it charges.
    """

    workers: int = 1
    _workers: list = ()

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid, *self._workers]

    @property
    def worker_pids(self) -> list[int]:
        return list(self._workers)

    def check(self) -> None:
        super().check()
        gone = [pid for pid in self._workers if not _alive(pid)]
        if gone:
            raise RuntimeError(f"{self.name}: worker(s) {gone} exited; the master now has "
                               f"{children(self.proc.pid)}:\n" + _tail(self.log))

    def _wait_workers(self, timeout: float = 15.0) -> None:
        """Until the master has ``workers`` children and that many sockets listen on the port."""
        deadline = time.monotonic() + timeout
        kids: list[int] = []
        listening = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n" + _tail(self.log))
            kids = children(self.proc.pid)
            listening = listening_sockets(self.host, self.port)
            if len(kids) == self.workers and listening == self.expect_listeners:
                self._workers = kids
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name}: {len(kids)} worker(s) and {listening} listener(s) after "
                           f"{timeout:.0f}s, expected {self.workers} and {self.expect_listeners}:\n"
                           + _tail(self.log))

    def stop(self) -> None:
        """The master by its pid (it stops its workers); then any worker still there, by its pid."""
        super().stop()
        deadline = time.monotonic() + 5
        left = [pid for pid in self._workers if _alive(pid)]
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [pid for pid in left if _alive(pid)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class FastwsWorkers(_Workers, _Process):
    """``python -m fastws --workers N --listen ... --upstream ...``: what users run.

    A master (no event loop) forks N workers, each binding its own SO_REUSEPORT
    listener (the kernel hashes new connections over them); ``pids`` is the
    master and its workers.  Passthrough, no config file, log level warning (as
    the plugin targets; the default ``info`` logs nothing a message either).
    """

    name = "fastws --workers"

    @classmethod
    def start(cls, tmpdir: Path, upstream_url: str, workers: int = 2,
              host: str = "127.0.0.1") -> "FastwsWorkers":
        port = free_port()
        log = Path(tmpdir) / f"fastws-w{workers}-{port}.log"
        argv = [_python(), "-m", "fastws", "--workers", str(workers), "--listen", f"{host}:{port}",
                "--upstream", upstream_url, "--log-level", "warning"]
        proc = _spawn(argv, log, preexec_fn=raise_nofile)
        self = cls(proc, host, port, "/", log)
        self.name = f"fastws --workers {workers}"
        self.workers = workers                              # children of the master
        self.expect_listeners = workers
        self._workers = []
        try:
            _wait_port(host, port, proc, log)
            self._wait_workers()
        except BaseException:
            self.stop()
            raise
        return self


# -- nginx ---------------------------------------------------------------------------------

def nginx_binary() -> str | None:
    """The nginx to compare with: ``$FASTWS_BENCH_NGINX``, else nginx on PATH or in /usr/sbin."""
    explicit = os.environ.get("FASTWS_BENCH_NGINX")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def nginx_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().replace("nginx version: ", "")


def nginx_connections(proxied: int) -> int:
    """``worker_connections`` for ``proxied`` WebSocket connections at once.

    Each takes two slots (client and upstream), and nginx >= 1.19 starts closing
    "reusable" connections (idle keep-alive, clients whose request has not
    arrived yet) as soon as fewer than 1/16 of the slots are free, logging
    "worker_connections are not enough, reusing connections".  So: 2 per
    connection, plus 1/16, plus a margin.
    """
    return max(4096, (2 * proxied * 17) // 16 + 256)


def write_nginx_conf(tmpdir: Path, listen_port: int, upstream_port: int, *,
                     host: str = "127.0.0.1", upstream_host: str = "127.0.0.1",
                     connections: int = 4096, workers: int = 1, reuseport: bool = False) -> Path:
    """Fill ``nginx.conf.template`` (``@NAME@`` placeholders) into ``tmpdir/nginx.conf``.

    ``@`` placeholders rather than ``str.format``/``$name``: nginx uses both
    braces and ``$variables``.
    """
    tmpdir = Path(tmpdir)
    nofile = raise_nofile()
    values = {
        "PREFIX": str(tmpdir),
        "USER": "user root;" if os.geteuid() == 0 else "",
        "NOFILE": str(nofile),
        "CONNECTIONS": str(connections),
        "WORKERS": str(workers),
        "REUSEPORT": " reuseport" if reuseport else "",
        "LISTEN": f"{host}:{listen_port}",
        "UPSTREAM": f"{upstream_host}:{upstream_port}",
    }
    text = NGINX_TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmpdir / sub).mkdir(exist_ok=True)
    conf = tmpdir / "nginx.conf"
    conf.write_text(text)
    return conf


class NginxProxy(_Workers, _Process):
    """nginx, master + ``workers`` worker processes (1 by default), config from ``nginx.conf.template``.

    ``pids``: the master and every worker, all "the proxy's processes" (the master
    is idle).  ``name`` is also the subdirectory of ``tmpdir`` it runs in (config,
    pid file, logs), so several can run side by side.  ``reuseport``: one listening
    socket a worker (``listen ... reuseport``) instead of nginx's default shared one.
    """

    name = "nginx"
    stop_signal = signal.SIGTERM     # fast shutdown; SIGQUIT would wait for every WebSocket

    @classmethod
    def start(cls, tmpdir: Path, upstream_port: int, binary: str | None = None,
              host: str = "127.0.0.1", proxied: int = 100, workers: int = 1,
              reuseport: bool = False, name: str = "nginx") -> "NginxProxy":
        """Start nginx in front of 127.0.0.1:``upstream_port``, sized for ``proxied`` connections."""
        binary = binary or nginx_binary()
        if binary is None:
            raise RuntimeError("nginx not found")
        tmpdir = Path(tmpdir) / name
        tmpdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        conf = write_nginx_conf(tmpdir, port, upstream_port, host=host,
                                connections=nginx_connections(proxied), workers=workers,
                                reuseport=reuseport)
        log = tmpdir / "error.log"
        proc = _spawn([binary, "-p", str(tmpdir), "-c", str(conf), "-e", str(log),
                       "-g", "daemon off;"], log, preexec_fn=raise_nofile)
        self = cls(proc, host, port, "/", log)
        self.name = name
        self.workers = workers
        self.reuseport = reuseport
        # The shared socket is the master's (workers inherit it): one in /proc/net/tcp.
        self.expect_listeners = workers if reuseport else 1
        self._workers = []
        try:
            _wait_port(host, port, proc, log)
            self._wait_workers()
        except BaseException:
            self.stop()
            raise
        self.binary = binary
        self.version = nginx_version(binary)
        return self


# -- the launchers (subprocess side) --------------------------------------------------------

class TrivialChain:
    """A handler chain with a no-op handler on both frame phases: inspect mode, no work.

    The proxy calls ``has(phase)`` when a session starts and ``run(phase, frame)``
    for every message (see ``fastws.session``); ``chain_for(match)`` hands it out.
    """

    PHASES = frozenset({"ws_client_frame", "ws_upstream_frame"})

    def has(self, phase: str) -> bool:
        return phase in self.PHASES

    def run(self, phase: str, frame) -> None:
        pass


# -- the plugins of the plugin targets (imported by fastws from its config) ------------------

class ReadPlugin:
    """fastws+read: reads every message, both ways, through the PDK; changes nothing.

    ``get_frame()`` on a message makes ``bytes`` of its payload once (it stays in the
    read buffer until a handler asks), so this is the price of a plugin that looks
    at every message: the dispatch, the PDK call and that copy.
    """

    name = "bench-read"
    priority = 0

    def __init__(self, conf) -> None:
        self.conf = conf

    def ws_client_frame(self, ws) -> None:
        ws.client.get_frame()

    def ws_upstream_frame(self, ws) -> None:
        ws.upstream.get_frame()


class RewritePlugin:
    """fastws+rewrite: replaces every binary message, both ways, with its bytes reversed.

    Same length, so the echo's size check holds, and an involution: reversed
    towards the upstream and back again towards the client, the echo arrives as it
    was sent (the load client's content check sees it).  ``data[::-1]`` is the
    plugin's own work (0.1 µs at 64 B, 0.35 µs at 1 KiB a call here);
    ``set_frame_data`` then makes the proxy frame the new bytes (a masked copy
    towards the upstream) instead of forwarding the read buffer.
    """

    name = "bench-rewrite"
    priority = 0

    def __init__(self, conf) -> None:
        self.conf = conf

    def ws_client_frame(self, ws) -> None:
        data, typ, _ = ws.client.get_frame()
        if typ == "binary":
            ws.client.set_frame_data(data[::-1])

    def ws_upstream_frame(self, ws) -> None:
        data, typ, _ = ws.upstream.get_frame()
        if typ == "binary":
            ws.upstream.set_frame_data(data[::-1])


class NoopPlugin:
    """A handler that does nothing on both frame phases (the dispatch microbenchmark)."""

    priority = 0

    def __init__(self, conf=None, name: str = "bench-noop") -> None:
        self.conf = conf
        self.name = name

    def ws_client_frame(self, ws) -> None:
        pass

    def ws_upstream_frame(self, ws) -> None:
        pass


class SetFrameDataPlugin:
    """``ws.client.set_frame_data(new)`` and nothing else (the PDK microbenchmark)."""

    name = "bench-set-frame-data"
    priority = 0

    def __init__(self, new: bytes) -> None:
        self.new = new

    def ws_client_frame(self, ws) -> None:
        ws.client.set_frame_data(self.new)


#: chain name -> the plugin class fastws loads from the config (``module:Class``).
PLUGIN_TARGETS = {"read": "servers:ReadPlugin", "rewrite": "servers:RewritePlugin"}


def plugin_config(chain: str) -> str:
    """The YAML config of a plugin target: one global plugin; listen and upstream come as flags."""
    return (f"# fastws+{chain}, written by benchmarks/servers.py for the proxy load suite\n"
            "graceful_timeout: 2\n"
            "plugins:\n"
            f"  - name: \"{PLUGIN_TARGETS[chain]}\"\n")


def _run_echo(args) -> int:
    import asyncio

    import uvloop
    from picows import WSListener, WSMsgType, ws_create_server

    raise_nofile()
    data_types = (WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CONTINUATION)

    class Echo(WSListener):
        def on_ws_frame(self, transport, frame):
            mt = frame.msg_type
            if mt in data_types:
                # Frame for frame, fragmentation kept; send() copies the payload.
                transport.send(mt, frame.get_payload_as_memoryview(), frame.fin)
            elif mt == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            # PING: picows answers (enable_auto_pong); PONG: nothing to do.

    async def main() -> None:
        server = await ws_create_server(lambda request: Echo(), args.host, args.port,
                                       websocket_handshake_timeout=30, max_frame_size=64 << 20,
                                       backlog=4096)
        port = server.sockets[0].getsockname()[1]
        sys.stdout.write(f"PORT {port}\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()

    uvloop.run(main())
    return 0


def _run_fastws(args) -> int:
    from fastws.cli import setup_logging
    from fastws.config import load_config
    from fastws.worker import run

    raise_nofile()
    config = load_config(None, {"listen": [args.listen], "upstream": args.upstream,
                                "log_level": args.log_level, "graceful_timeout": 2})
    setup_logging(config.log_level)
    chain_for = None
    if args.chain == "inspect":
        chain = TrivialChain()
        chain_for = lambda match: chain  # noqa: E731 - one shared, stateless chain
    return run(config, chain_for=chain_for)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="launchers of the proxy load suite")
    sub = ap.add_subparsers(dest="what", required=True)
    echo = sub.add_parser("echo", help="picows echo upstream; prints 'PORT n' when listening")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=0)
    fw = sub.add_parser("fastws", help="one fastws worker, optionally with a trivial inspect chain")
    fw.add_argument("--listen", required=True, metavar="HOST:PORT")
    fw.add_argument("--upstream", required=True, metavar="URL")
    fw.add_argument("--chain", choices=("none", "inspect"), default="none")
    fw.add_argument("--log-level", default="warning")
    args = ap.parse_args(argv)
    return _run_echo(args) if args.what == "echo" else _run_fastws(args)


if __name__ == "__main__":
    sys.exit(main())
