"""Proxy load suite: an echo upstream, direct and through nginx and fastws, under load.

Run on request, never in the default ``pytest`` run (``testpaths = ["tests"]``)::

    pytest benchmarks/bench_proxy.py --benchmark-json=proxy.json      # everything, defaults
    python benchmarks/bench_proxy.py --report proxy.json [--baseline old.json]

    python benchmarks/bench_proxy.py [--ws-target URL] [--json out.json] [suite options]
        # the same through pytest.main with the options plugin loaded, then the report

What runs (details, nginx config and how to read the report: ``benchmarks/README.md``):

* one picows echo upstream (``servers.EchoUpstream``), a subprocess on uvloop,
  shared by every load cell;
* the targets, each in its own subprocess and each with one worker process:
  ``direct`` (the echo itself), ``nginx`` (if installed; ``nginx.conf.template``),
  ``fastws`` (passthrough both ways), ``fastws-inspect`` (a no-op handler
  chain on both directions, ``servers.TrivialChain``), and the plugin targets
  ``fastws-read`` and ``fastws-rewrite``: ``python -m fastws --config`` with a
  Python plugin that calls ``get_frame()`` on every message both ways
  (``servers.ReadPlugin``), or also ``set_frame_data()`` with the bytes
  reversed (``servers.RewritePlugin``);
* the cells: {ping-pong, pipelined (16 in flight)} x {64 B, 1 KiB, 64 KiB} x
  {1, 50 connections}.  For each cell every target runs back to back, so the
  ratios come from one run under the same conditions.  The load client
  (``loadclient.py``, picows) is a fresh subprocess a run: warm-up, then a
  counted window, and it reads the proxy's user+sys CPU ticks at both ends of
  the window;
* the idle cell: 10,000 connections held open (or as many as
  ``RLIMIT_NOFILE`` allows), the proxy's RSS before and after, for fastws and
  nginx, each in fresh processes;
* on request (``--proxy-workers``, or ``--proxy-workers-only`` for it alone), the
  processes comparison on the 50-connection cells: ``fastws-w1`` and
  ``fastws-w2``, ``python -m fastws --workers N`` (a master forking N workers
  that bind their own SO_REUSEPORT listeners; N = 1 runs the worker in the
  ``fastws`` process itself), against ``nginx-w1`` and ``nginx-w2`` with
  ``worker_processes`` 1 and 2 (``servers.FastwsWorkers``, ``servers.NginxProxy``);
  CPU is the sum over the master and all its workers;
* the plugin microbenchmarks (``test_micro``, in this process, no sockets):
  ``Chain.bind(ws).run("ws_client_frame", frame)`` with 1 and 10 no-op handlers
  on an ``InFlight`` frame (dispatch per handler call = (t10 - t1) / 9), and
  ``ws.client.get_frame()`` / ``set_frame_data()`` per call at 64 B and 1 KiB.

Every test stores its numbers in ``benchmark.extra_info`` (so
``--benchmark-json`` carries them); pytest-benchmark's own time columns are the
wall time of a whole run (client start-up, warm-up, window, drain) and are not
the result.  At the end of the module the report is printed to the terminal.

``--ws-target ws://host:port/path`` (options: ``conftest_proxy.py``) points the
same cells at any running deployment instead; the route must echo.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:       # run as a script, or imported without pytest's rootdir insert
    sys.path.insert(0, str(HERE))

import pytest  # noqa: E402

import servers as srv  # noqa: E402

MODES = ("pingpong", "pipelined")
SIZES = (64, 1024, 65536)
CONNS = (1, 50)
LOCAL_TARGETS = ("direct", "nginx", "fastws", "fastws-inspect", "fastws-read", "fastws-rewrite")
# fastws targets the suite starts: target name -> servers.FastwsProxy chain.
FASTWS_CHAINS = {"fastws": "none", "fastws-inspect": "inspect", "fastws-read": "read",
                 "fastws-rewrite": "rewrite"}
IDLE_TARGETS = ("fastws", "nginx")
# The processes comparison (--proxy-workers): target -> (proxy, processes).  Ordered so that
# the two proxies with the same number of workers run back to back.
WORKER_TARGETS = {"fastws-w1": ("fastws", 1), "nginx-w1": ("nginx", 1),
                  "fastws-w2": ("fastws", 2), "nginx-w2": ("nginx", 2)}
# ... on the cells with this many connections or more: with one connection one worker does
# all the work (SO_REUSEPORT hashes connections, not messages), so only multi-connection
# cells can spread the load over two workers.
WORKER_MIN_CONNS = 2

# Goals of the load-suite issue.
GOAL_CPU_PASSTHROUGH = 1.0      # fastws CPU/msg ÷ nginx CPU/msg, every cell
GOAL_RATE_PASSTHROUGH = 1.0     # fastws msgs/s ÷ nginx msgs/s, every cell (at least)
GOAL_CPU_INSPECT = 2.0          # fastws-inspect CPU/msg ÷ nginx CPU/msg, every cell
GOAL_ADDED_P99 = 1.2            # added p99 (over direct) fastws ÷ nginx, ping-pong, 50 connections
GOAL_IDLE_CONNS = 10_000
GOAL_IDLE_RSS = 200 * 1024 * 1024
# Goals of the plugins issue.
GOAL_CPU_READ = 2.0             # fastws-read CPU/msg ÷ nginx CPU/msg, at GOAL_PLUGIN_SIZES
GOAL_CPU_REWRITE = 2.5          # fastws-rewrite CPU/msg ÷ nginx CPU/msg, at GOAL_PLUGIN_SIZES
GOAL_PLUGIN_SIZES = (64, 1024)
GOAL_DISPATCH_US = 1.0          # µs per handler call, (t10 - t1) / 9 of the dispatch microbenchmark
CONTENT_CHECK_EVERY = 64        # the load client compares every 64th echo's bytes with what it sent

LOADCLIENT = HERE / "loadclient.py"
RESULTS: list[dict] = []        # this session's results, for the end-of-module report


def size_label(n: int) -> str:
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


@dataclass(frozen=True)
class Cell:
    mode: str
    size: int
    conns: int

    @property
    def id(self) -> str:
        return f"{self.mode}-{size_label(self.size).replace(' ', '')}-c{self.conns}"

    @property
    def label(self) -> str:
        mode = "ping-pong" if self.mode == "pingpong" else "pipelined"
        return f"{mode} {size_label(self.size)} ×{self.conns}"


CELLS = [Cell(m, s, c) for m in MODES for s in SIZES for c in CONNS]


# -- options: the conftest_proxy plugin, else the environment -----------------------------

@dataclass
class Settings:
    ws_target: str | None
    ws_target_pids: list[int]
    ws_direct: str | None
    duration: float
    warmup: float
    max_messages: int
    window: int
    rounds: int
    idle: int
    nginx: bool
    json_path: str | None
    quick: bool = False
    workers: str = ""               # "" | "add" | "only": the processes comparison
    nginx_reuseport: bool = False   # nginx-wN listen with reuseport
    client_procs: int = 1           # load-client processes a cell (cells with >= that many connections)
    wait_quiet: float = 0.0         # seconds at most to wait before a run for the machine to be idle
    retry_disturbed: int = 0        # re-runs of a run disturbed by other jobs, at most

    @classmethod
    def from_config(cls, config) -> "Settings":
        def opt(name, env, default, conv=str):
            value = config.getoption(name, default=None)
            if value is None:
                value = os.environ.get(env)
                if value is None or value == "":
                    return default
            return conv(value)

        def flag(name, env):
            return bool(config.getoption(name, default=None)) or os.environ.get(env, "") not in ("", "0")

        quick = flag("proxy_quick", "FASTWS_BENCH_QUICK")
        workers_env = os.environ.get("FASTWS_BENCH_WORKERS", "").strip().lower()
        if config.getoption("proxy_workers_only", default=None) or workers_env == "only":
            workers = "only"
        elif config.getoption("proxy_workers", default=None) or workers_env not in ("", "0"):
            workers = "add"
        else:
            workers = ""
        pids = config.getoption("ws_target_pid", default=None)
        if not pids:
            pids = [int(p) for p in os.environ.get("FASTWS_BENCH_WS_TARGET_PIDS", "").split(",") if p.strip()]
        return cls(
            ws_target=opt("ws_target", "FASTWS_BENCH_WS_TARGET", None),
            ws_target_pids=list(pids),
            ws_direct=opt("ws_direct", "FASTWS_BENCH_WS_DIRECT", None),
            duration=opt("proxy_duration", "FASTWS_BENCH_DURATION", 0.3 if quick else 1.5, float),
            warmup=opt("proxy_warmup", "FASTWS_BENCH_WARMUP", 0.1 if quick else 0.3, float),
            max_messages=opt("proxy_max_messages", "FASTWS_BENCH_MAX_MESSAGES", 1_000_000, int),
            window=opt("proxy_window", "FASTWS_BENCH_WINDOW", 16, int),
            rounds=max(1, opt("proxy_rounds", "FASTWS_BENCH_ROUNDS", 1 if quick else 3, int)),
            idle=opt("proxy_idle", "FASTWS_BENCH_IDLE", 500 if quick else GOAL_IDLE_CONNS, int),
            nginx=not flag("proxy_no_nginx", "FASTWS_BENCH_NO_NGINX") and srv.nginx_binary() is not None,
            json_path=opt("proxy_json", "FASTWS_BENCH_PROXY_JSON", None),
            quick=quick,
            workers=workers,
            nginx_reuseport=flag("proxy_nginx_reuseport", "FASTWS_BENCH_NGINX_REUSEPORT"),
            client_procs=max(1, opt("proxy_client_procs", "FASTWS_BENCH_CLIENT_PROCS", 1, int)),
            wait_quiet=max(0.0, opt("proxy_wait_quiet", "FASTWS_BENCH_WAIT_QUIET", 0.0, float)),
            retry_disturbed=max(0, opt("proxy_retry_disturbed", "FASTWS_BENCH_RETRY_DISTURBED", 0, int)),
        )

    def worker_targets(self) -> list[str]:
        """The processes-comparison targets this run starts (nginx's only when nginx runs)."""
        if not self.workers or self.ws_target:
            return []
        return [t for t, (proxy, _) in WORKER_TARGETS.items() if proxy != "nginx" or self.nginx]

    def base_targets(self) -> list[str]:
        """The usual targets this run starts (``--proxy-workers-only``: just ``direct``)."""
        if self.workers == "only" and not self.ws_target:
            return ["direct"]
        return [t for t in LOCAL_TARGETS if t != "nginx" or self.nginx]


def pytest_generate_tests(metafunc) -> None:
    s = Settings.from_config(metafunc.config)
    if "cell" in metafunc.fixturenames:
        if s.ws_target:
            targets = (["direct"] if s.ws_direct else []) + ["target"]
        else:
            targets = s.base_targets()
        wtargets = s.worker_targets()
        cells = CELLS
        if s.workers == "only" and wtargets:
            cells = [c for c in CELLS if c.conns >= WORKER_MIN_CONNS]

        def of(cell):
            return targets + (wtargets if cell.conns >= WORKER_MIN_CONNS else [])
        # Cell-major, then round-robin: every target of a cell runs once, then again, so
        # their ratios share conditions, and drift or an unlucky placement of the
        # processes on the CPUs is spread over all targets (the report takes medians).
        runs = [(cell, r, t) for cell in cells for r in range(1, s.rounds + 1) for t in of(cell)]
        metafunc.parametrize(("cell", "round_no", "target"), runs,
                             ids=[f"{c.id}-{t}-r{r}" for c, r, t in runs], scope="function")
    if "idle_target" in metafunc.fixturenames:
        targets = ([] if s.ws_target or s.idle <= 0 or s.workers == "only"
                   else [t for t in IDLE_TARGETS if t != "nginx" or s.nginx])
        metafunc.parametrize("idle_target", targets)
    if "micro" in metafunc.fixturenames:
        micro = [] if s.workers == "only" else MICRO
        metafunc.parametrize("micro", micro, ids=[m.id for m in micro])


# -- environment recorded with every result ---------------------------------------------

_GIT: dict = {}


def _git_state() -> str | None:
    """``<commit>`` of the fastws tree measured, ``+dirty`` when fastws/ has uncommitted changes."""
    if "state" not in _GIT:
        repo = str(HERE.parent)
        try:
            head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True, check=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "fastws", "setup.py"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            _GIT["state"] = head + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            _GIT["state"] = None
    return _GIT["state"]


def _tree_hash() -> str:
    """sha256 of fastws/'s Python and Cython sources: shows whether the tree changed during a run."""
    import hashlib

    digest = hashlib.sha256()
    root = HERE.parent / "fastws"
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".pyx", ".pxd") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError:
                pass
    return digest.hexdigest()[:12]


def _environment(settings: Settings, nginx_version: str | None) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    env = {"python": f"{platform.python_implementation()} {platform.python_version()}",
           "kernel": platform.release(), "cpus": os.cpu_count(), "nginx": nginx_version,
           "duration_s": settings.duration, "warmup_s": settings.warmup, "window": settings.window,
           "rounds": settings.rounds, "fastws_git": _git_state(), "workers_comparison": settings.workers,
           "nginx_reuseport": settings.nginx_reuseport, "client_procs": settings.client_procs}
    for name in ("picows", "uvloop", "aiofastnet"):
        try:
            env[name] = version(name)
        except PackageNotFoundError:
            env[name] = None
    try:
        if str(HERE.parent) not in sys.path:
            sys.path.append(str(HERE.parent))   # the tree the servers run (they get it on PYTHONPATH)
        from fastws import codec
        env["fastws_codec"] = codec.IMPLEMENTATION
    except Exception:   # pragma: no cover - fastws not importable: nothing to report
        env["fastws_codec"] = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    env["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return env


# -- fixtures ----------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    url: str
    proxy_pids: list[int]        # CPU charged to the target ("the proxy")
    upstream_pids: list[int]     # CPU of the echo upstream, for context
    process: object = None       # the servers._Process, when the suite started it

    def check(self) -> None:
        if self.process is not None:
            self.process.check()


@pytest.fixture(scope="module")
def settings(request) -> Settings:
    return Settings.from_config(request.config)


@pytest.fixture(scope="module")
def workdir():
    """Configs, pid files and logs of the started servers.

    Not pytest's ``tmp_path``: other pytest sessions on the machine rotate its
    base directory away (it keeps three), which would pull nginx's directory out
    from under it.  Removed at the end unless ``FASTWS_BENCH_KEEP=1``.
    """
    path = Path(tempfile.mkdtemp(prefix="fastws-proxy-bench-"))
    yield path
    if os.environ.get("FASTWS_BENCH_KEEP", "") in ("", "0"):
        shutil.rmtree(path, ignore_errors=True)
    else:
        print(f"kept {path}")


@pytest.fixture(scope="module")
def stack(settings, workdir, request):
    """The targets by name: started here (local mode) or given (``--ws-target``)."""
    if settings.ws_target:
        targets = {"target": Target("target", settings.ws_target, settings.ws_target_pids, [])}
        if settings.ws_direct:
            targets["direct"] = Target("direct", settings.ws_direct, [], [])
        yield {"targets": targets, "nginx_version": None}
        return
    tmp = workdir
    started = []
    try:
        echo = srv.EchoUpstream.start(tmp)
        started.append(echo)
        targets = {"direct": Target("direct", echo.url, [], [echo.pid], echo)}
        nginx_version = None
        base = settings.base_targets()
        if "nginx" in base:
            ng = srv.NginxProxy.start(tmp, echo.port)
            started.append(ng)
            nginx_version = ng.version
            targets["nginx"] = Target("nginx", ng.url, ng.pids, [echo.pid], ng)
        for name, chain in FASTWS_CHAINS.items():
            if name in base:
                fw = srv.FastwsProxy.start(tmp, echo.url, chain=chain)
                started.append(fw)
                targets[name] = Target(name, fw.url, fw.pids, [echo.pid], fw)
        for name in settings.worker_targets():
            proxy, n = WORKER_TARGETS[name]
            if proxy == "nginx":
                proc = srv.NginxProxy.start(tmp, echo.port, workers=n, reuseport=settings.nginx_reuseport,
                                            name=name)
                nginx_version = proc.version
            else:
                proc = srv.FastwsWorkers.start(tmp, echo.url, workers=n)
            started.append(proc)
            # Master and workers, read once all are up; check() fails the cell if one is replaced.
            targets[name] = Target(name, proc.url, proc.pids, [echo.pid], proc)
        yield {"targets": targets, "nginx_version": nginx_version}
    finally:
        for proc in reversed(started):
            proc.stop()


class _ReportPlugin:
    """Prints the report after pytest-benchmark's tables (registered by ``_report_at_end``)."""

    def __init__(self) -> None:
        self.text = ""

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.text:
            terminalreporter.write_sep("=", "fastws proxy load suite")
            for line in self.text.splitlines():
                terminalreporter.write_line(line)


@pytest.fixture(scope="module", autouse=True)
def _report_at_end(request, settings):
    """Build the report of this module's results when it finishes (and write --proxy-json)."""
    RESULTS.clear()
    started = time.time()
    git0, tree0 = _git_state(), _tree_hash()     # before the servers start (this fixture comes first)
    yield
    if not RESULTS:
        return
    doc = {"suite": "fastws-proxy-load", "datetime": datetime.datetime.fromtimestamp(started).isoformat(),
           "fastws_tree": tree0, "results": list(RESULTS)}
    _GIT.clear()
    git1, tree1 = _git_state(), _tree_hash()
    if tree1 != tree0 or git1 != git0:
        doc["fastws_changed"] = {"start": git0, "end": git1, "tree_start": tree0, "tree_end": tree1}
    if settings.json_path:
        with open(settings.json_path, "w") as f:
            json.dump(doc, f, indent=1)
    pm = request.config.pluginmanager
    plugin = pm.get_plugin("fastws-proxy-report")
    if plugin is None:
        plugin = _ReportPlugin()
        pm.register(plugin, "fastws-proxy-report")
    plugin.text = "\n".join(report_lines(doc))


FOREIGN_DISTURBED = 0.25        # a run with other jobs using more than this much of a CPU is "disturbed"
RETRY_BUDGET_S = 300.0          # --proxy-retry-disturbed: seconds of re-runs a session at most
_RETRY = {"spent": 0.0}


def _foreign_load(r: dict) -> float | None:
    """CPUs busy in a run's window that none of the suite's processes account for: other jobs.

    Busy CPUs from ``/proc/stat`` minus the proxy's, the client's and the echo's user+sys,
    and the kernel threads' (ksoftirqd, kworkers: the network stack's deferred work).
    With tick-based CPU accounting (this kernel: no IRQ_TIME_ACCOUNTING) softirq time is
    otherwise charged to whichever task was running, so it is inside those processes' times.
    Near 0 on a quiet machine (the suite's pytest process and idle servers add ~0.02).
    """
    busy, cpus = r.get("machine_busy"), r.get("machine_cpus")
    if busy is None or not cpus or r.get("client_cpu_load") is None:
        return None
    mine = sum(r.get(k) or 0.0 for k in ("proxy_cpu_load", "client_cpu_load", "upstream_cpu_load"))
    if r.get("kthread_cpu_ticks") is not None and r.get("elapsed_s"):
        mine += r["kthread_cpu_ticks"] / r["clk_tck"] / r["elapsed_s"]
    return max(0.0, busy * cpus - mine)


def _run_client(argv: list[str], timeout: float) -> dict:
    out = subprocess.run([sys.executable, str(LOADCLIENT), *argv], capture_output=True, text=True,
                         timeout=timeout, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"load client failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


QUIET_BUSY = 0.15               # --proxy-wait-quiet: "idle" is at most this share of all CPUs busy


def _machine_busy(interval: float) -> float:
    """Share of all CPUs busy (not idle or iowait) over ``interval`` seconds, from ``/proc/stat``."""
    def read():
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    a = read()
    time.sleep(interval)
    d = [y - x for x, y in zip(a, read())]
    total = sum(d)
    return (total - d[3] - d[4]) / total if total > 0 else 0.0


def _wait_quiet(limit: float) -> tuple[float, float]:
    """Wait (at most ``limit`` s) until the machine is idle between runs: other jobs on a shared
    machine, not the suite's servers, which are idle now.  Returns (seconds waited, last busy share)."""
    t0 = time.monotonic()
    while True:
        busy = _machine_busy(0.25)
        waited = time.monotonic() - t0
        if busy <= QUIET_BUSY or waited >= limit:
            return waited, busy


CLIENT_START_S = 2.0            # with several clients: time allowed for each to start and connect


def _run_clients(argvs: list[list[str]], timeout: float, workdir: Path) -> dict:
    """Several load clients at once, their counted windows aligned (``--start-at``); one merged result.

    Messages and client CPU add up; messages/s is the sum of the clients' rates; the
    proxy's and the echo's CPU, and the machine's, come from the first client's reading
    (every client reads the same processes over the same window); latency percentiles
    are computed over all clients' latencies (``--latencies-out``).
    """
    from array import array

    start_at = time.monotonic() + CLIENT_START_S + float(argvs[0][argvs[0].index("--warmup") + 1])
    procs, files = [], []
    for i, argv in enumerate(argvs):
        lat = workdir / f"latencies-{os.getpid()}-{i}.bin"
        files.append(lat)
        procs.append(subprocess.Popen([sys.executable, str(LOADCLIENT), *argv, "--start-at", f"{start_at:.6f}",
                                       "--latencies-out", str(lat)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    rs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout + CLIENT_START_S)
            lines = [line for line in out.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"load client failed ({proc.returncode}):\n{err[-3000:]}")
            rs.append(json.loads(lines[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    merged = dict(rs[0])
    merged["clients"] = len(rs)
    merged["connections"] = sum(r["connections"] for r in rs)
    merged["connected"] = sum(r.get("connected", 0) for r in rs)
    merged["errors"] = [e for r in rs for e in r.get("errors", [])]
    if any("messages" not in r for r in rs):
        return merged
    merged["messages"] = sum(r["messages"] for r in rs)
    merged["msgs_per_s"] = sum(r["msgs_per_s"] for r in rs)
    merged["payload_mb_per_s"] = sum(r["payload_mb_per_s"] for r in rs)
    merged["client_cpu_s"] = sum(r["client_cpu_s"] for r in rs)
    merged["content_checked"] = sum(r.get("content_checked", 0) for r in rs)
    merged["client_msgs_per_s"] = [r["msgs_per_s"] for r in rs]
    starts = [r["window_start"] for r in rs]
    merged["client_window_skew_s"] = max(starts) - min(starts)
    lat = array("q")
    for path in files:
        with open(path, "rb") as f:
            lat.frombytes(f.read())
        path.unlink()
    if lat:
        s = sorted(lat)
        n = len(s)
        for name, q in (("p50_us", 0.5), ("p90_us", 0.9), ("p99_us", 0.99), ("p999_us", 0.999)):
            merged[name] = s[min(n - 1, int(q * n))] / 1e3
        merged["max_us"], merged["mean_us"] = s[-1] / 1e3, sum(s) / n / 1e3
    return merged


def _derive(result: dict, r: dict, proxy_pids: list[int], target: str) -> None:
    """Per-message and per-process figures of one run, from the load client's raw output ``r``."""
    if target in WORKER_TARGETS:
        result["proxy"], result["processes"] = WORKER_TARGETS[target]
    ticks = r.get("proxy_cpu_ticks")
    # Per message over the window the CPU was read in: msgs/s × that window (the same as
    # ``messages`` with one client; with several, their windows are aligned).
    msgs = r["msgs_per_s"] * r["elapsed_s"] if r.get("messages") else 0
    if ticks is not None and msgs:
        cpu_s = ticks / r["clk_tck"]
        result["proxy_cpu_us_per_msg"] = cpu_s / msgs * 1e6
        result["proxy_cpu_load"] = cpu_s / r["elapsed_s"]
    by_pid = r.get("proxy_cpu_ns_by_pid") or {}
    if len(proxy_pids) > 1 and by_pid and all(v is not None for v in by_pid.values()):
        # How the proxy's processes shared its CPU, in the order of proxy_pids (master first).
        total = sum(by_pid.values())
        if total:
            shares = [by_pid[str(p)] / total for p in proxy_pids]
            result["proxy_cpu_shares"] = shares
            result["proxy_master_share"] = shares[0]
            workers = shares[1:]
            if sum(workers) > 0:
                result["proxy_busiest_worker_share"] = max(workers) / sum(workers)
    if r.get("upstream_cpu_ticks") is not None and msgs:
        result["upstream_cpu_us_per_msg"] = r["upstream_cpu_ticks"] / r["clk_tck"] / msgs * 1e6
        result["upstream_cpu_load"] = r["upstream_cpu_ticks"] / r["clk_tck"] / r["elapsed_s"]
    if msgs:
        result["client_cpu_us_per_msg"] = r["client_cpu_s"] / r["messages"] * 1e6
        result["client_cpu_load"] = r["client_cpu_s"] / r["elapsed_s"]
    foreign = _foreign_load(result)
    if foreign is not None:
        result["foreign_cpu_load"] = foreign


def _record(benchmark, result: dict) -> None:
    benchmark.extra_info.update(result)
    RESULTS.append(result)


# -- the load cells ----------------------------------------------------------------------

def test_load(benchmark, stack, settings, workdir, cell: Cell, round_no: int, target: str) -> None:
    """One cell against one target: messages/s, latency percentiles, proxy CPU per message."""
    t = stack["targets"][target]
    t.check()
    benchmark.group = cell.id
    # One client process, or --proxy-client-procs K of them, the connections split between them.
    k = settings.client_procs if cell.conns >= settings.client_procs else 1
    argvs = []
    for i in range(k):
        conns = cell.conns // k + (1 if i < cell.conns % k else 0)
        argv = ["load", "--url", t.url, "--mode", cell.mode, "--size", str(cell.size),
                "--connections", str(conns), "--window", str(settings.window),
                "--warmup", str(settings.warmup), "--duration", str(settings.duration),
                "--max-messages", str(max(1, settings.max_messages // k)),
                "--check-every", str(CONTENT_CHECK_EVERY)]
        for pid in t.proxy_pids:
            argv += ["--cpu-pid", str(pid)]
        for pid in t.upstream_pids:
            argv += ["--ctx-pid", str(pid)]
        argvs.append(argv)
    box: dict = {}

    def measure() -> dict:
        quiet = _wait_quiet(settings.wait_quiet) if settings.wait_quiet > 0 else None
        load0 = os.getloadavg()
        timeout = settings.warmup + settings.duration + 60
        r = _run_client(argvs[0], timeout) if k == 1 else _run_clients(argvs, timeout, workdir)
        result = {"proxy_cell": cell.id, "proxy_kind": "load", "mode": cell.mode, "size": cell.size,
                  "conns": cell.conns, "target": target, "round": round_no, "loadavg_start": list(load0),
                  "loadavg_end": list(os.getloadavg()),
                  "env": _environment(settings, stack["nginx_version"]), **r}
        if quiet is not None:
            result["quiet_wait_s"], result["quiet_busy_before"] = quiet
        _derive(result, r, t.proxy_pids, target)
        return result

    def run_once():
        # --proxy-retry-disturbed N: a run that other jobs on the machine disturbed (more than
        # FOREIGN_DISTURBED of a CPU not accounted for) is run again, up to N times and within
        # RETRY_BUDGET_S for the session; the discarded attempts stay in the result.
        discarded = []
        while True:
            t0 = time.monotonic()
            result = measure()
            foreign = result.get("foreign_cpu_load")
            if (foreign is None or foreign <= FOREIGN_DISTURBED or result.get("errors")
                    or len(discarded) >= settings.retry_disturbed or _RETRY["spent"] >= RETRY_BUDGET_S):
                break
            _RETRY["spent"] += time.monotonic() - t0
            discarded.append({key: result.get(key) for key in (
                "msgs_per_s", "proxy_cpu_us_per_msg", "foreign_cpu_load", "machine_busy", "p99_us")})
            t.check()
        if discarded:
            result["discarded_attempts"] = discarded
        box["result"] = result

    benchmark.pedantic(run_once, rounds=1, iterations=1, warmup_rounds=0)
    result = box["result"]
    r = result
    result.pop("latencies", None)
    _record(benchmark, result)
    t.check()
    assert not r.get("errors"), f"{target} {cell.id}: {r['errors']}"
    assert r.get("messages", 0) > 0, f"{target} {cell.id}: no echo counted"


# -- the idle-connections cell -----------------------------------------------------------

def _idle_capacity(requested: int) -> tuple[int, str]:
    """How many proxied connections one process can hold here: each needs two sockets."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = (1 << 20) if hard == resource.RLIM_INFINITY else hard
    spare = 64            # listener, epoll, signal pipes, stdio, log, the loop's own
    most = (hard - spare) // 2
    if requested <= most:
        return requested, ""
    return most, (f"RLIMIT_NOFILE hard limit is {hard} (CAP_SYS_RESOURCE needed to raise it): "
                  f"a proxy needs 2 sockets a connection, so at most {most} here")


def test_idle_connections(benchmark, settings, workdir, idle_target: str) -> None:
    """Hold N idle proxied connections; the proxy's RSS before and after (fresh processes)."""
    n, why = _idle_capacity(settings.idle)
    benchmark.group = "idle"
    tmp = workdir / f"idle-{idle_target}"
    tmp.mkdir()
    load0 = os.getloadavg()
    with srv.EchoUpstream.start(tmp) as echo:
        if idle_target == "nginx":
            proxy = srv.NginxProxy.start(tmp, echo.port, proxied=n)
            rss_pids = proxy.pids
            version = proxy.version
        else:
            proxy = srv.FastwsProxy.start(tmp, echo.url)
            rss_pids = proxy.pids
            version = None
        with proxy:
            time.sleep(0.3)
            rss0 = sum(srv.vm_rss(p) for p in rss_pids)
            box: dict = {}

            def run_once():
                client = subprocess.Popen(
                    [sys.executable, str(LOADCLIENT), "idle", "--url", proxy.url, "--connections", str(n)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                try:
                    line = client.stdout.readline()
                    if not line.startswith("{"):
                        raise RuntimeError("idle client failed:\n" + client.stderr.read()[-3000:])
                    opened = json.loads(line)
                    time.sleep(1.0)           # let the proxy settle (handshake tasks, buffers)
                    opened["rss"] = sum(srv.vm_rss(p) for p in rss_pids)
                    opened["hwm"] = sum(srv.vm_hwm(p) for p in rss_pids)
                    opened["fds"] = sum(srv.fd_count(p) for p in rss_pids)
                    proxy.check()
                    client.stdin.close()
                    tail = client.stdout.readline()
                    opened.update(json.loads(tail) if tail.startswith("{") else {})
                    box["r"] = opened
                finally:
                    try:
                        client.wait(30)
                    except subprocess.TimeoutExpired:
                        client.kill()
                        client.wait(5)

            benchmark.pedantic(run_once, rounds=1, iterations=1, warmup_rounds=0)
    r = box["r"]
    connected = r["connected"]
    per_conn = (r["rss"] - rss0) / connected if connected else None
    result = {"proxy_cell": "idle", "proxy_kind": "idle", "target": idle_target, "requested": settings.idle,
              "capacity_note": why, "rss_before": rss0, "loadavg_start": list(load0),
              "loadavg_end": list(os.getloadavg()), "nginx": version,
              "env": _environment(settings, version), **r}
    if per_conn is not None:
        result["rss_per_conn"] = per_conn
        result["rss_at_goal"] = rss0 + per_conn * GOAL_IDLE_CONNS
    _record(benchmark, result)
    log = srv._tail(proxy.log)
    assert connected == n, f"opened {connected} of {n}: {r.get('errors')}\n{log}"
    assert r.get("probe_ok", 0) == r.get("probe_n", 0), f"some held connections did not echo\n{log}"
    assert r.get("open", connected) == connected, f"{connected - r['open']} connections dropped\n{log}"


# -- the plugin microbenchmarks (in this process, no sockets) ------------------------------

@dataclass(frozen=True)
class Micro:
    """One microbenchmark: ``Chain(plugins).bind(ws).run("ws_client_frame", frame)`` with
    ``handlers`` no-op handlers (kind "dispatch"), or one handler that calls
    ``ws.client.get_frame()`` or ``ws.client.set_frame_data(new)`` on a ``size``-byte message."""

    kind: str
    handlers: int = 1
    size: int = 64

    @property
    def id(self) -> str:
        if self.kind == "dispatch":
            return f"micro-dispatch-h{self.handlers}"
        return f"micro-{self.kind}-{size_label(self.size).replace(' ', '')}"


MICRO = [Micro("dispatch", handlers=1), Micro("dispatch", handlers=10),
         *(Micro(kind, size=size) for kind in ("get_frame", "set_frame_data") for size in GOAL_PLUGIN_SIZES)]
MICRO_CALLS = 1000              # run() calls a timed round, each on a fresh frame; the figures are per call


def _micro_target(case: Micro):
    """``(function, setup, check)`` for ``benchmark.pedantic``.

    Everything goes through the public path the session takes for a message:
    ``Chain(plugins).bind(ws)`` once (as a connection does), then for every message a
    fresh ``InFlight`` (its payload a view, as ``Session._receive_inspect`` makes it) and
    ``run("ws_client_frame", frame)``.  One call of ``function`` is ``MICRO_CALLS`` such
    runs; ``setup`` (untimed) makes the frames; ``check()`` runs it once, untimed, and
    asserts the handlers did their work.  A PDK call's cost is its run() minus the run()
    of one no-op handler (``micro_figures``).
    """
    from types import SimpleNamespace

    from fastws.frames import Opcode
    from fastws.pdk import WebSocket
    from fastws.plugins.chain import Chain
    from fastws.session import InFlight

    n = MICRO_CALLS
    payload = os.urandom(case.size)
    view = memoryview(bytearray(payload))
    new = payload[::-1]                       # what RewritePlugin sets, made outside the timing
    if case.kind == "dispatch":
        plugins = [srv.NoopPlugin(name=f"noop{i}") for i in range(case.handlers)]
        expect, changed = payload, False
    elif case.kind == "get_frame":
        plugins = [srv.ReadPlugin(None)]       # ws.client.get_frame()
        expect, changed = payload, False
    else:
        plugins = [srv.SetFrameDataPlugin(new)]  # ws.client.set_frame_data(new)
        expect, changed = new, True
    ws = WebSocket()
    # What set_frame_data reads for the direction's limit: the session's parser (16 MiB default).
    parser = SimpleNamespace(max_message_size=16 << 20)
    ws.session = SimpleNamespace(halves=[SimpleNamespace(parser=parser)] * 2)
    chain = Chain(plugins)
    run = chain.bind(ws).run

    def setup():
        return ([InFlight(Opcode.BINARY, None, view=view) for _ in range(n)],), {}

    def runs(frames):
        for frame in frames:
            run("ws_client_frame", frame)

    def check():
        handlers = chain.handlers["ws_client_frame"]
        assert len(handlers) == len(plugins)
        (frames,), _ = setup()
        runs(frames)
        for frame in frames:
            assert (frame.view is None) == changed, f"{case.id}: set_frame_data did not take"
            assert frame.data == expect, f"{case.id}: wrong payload"
        if case.kind == "get_frame":
            assert all(frame._data is not None for frame in frames), "get_frame did not read the payload"
    return runs, setup, check


def test_micro(benchmark, settings, micro: Micro) -> None:
    """Plugin dispatch and PDK calls, per call: pytest-benchmark rounds of ``MICRO_CALLS`` runs."""
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))      # the fastws tree the servers run
    benchmark.group = "micro"
    function, setup, check = _micro_target(micro)
    check()
    rounds = 60 if settings.quick else 300
    load0 = os.getloadavg()
    benchmark.pedantic(function, setup=setup, rounds=rounds, iterations=1, warmup_rounds=rounds // 10)
    stats = benchmark.stats.stats if benchmark.stats is not None else None
    result = {"proxy_cell": micro.id, "proxy_kind": "micro", "kind": micro.kind, "handlers": micro.handlers,
              "size": micro.size, "calls_per_round": MICRO_CALLS, "rounds": rounds,
              "loadavg_start": list(load0), "loadavg_end": list(os.getloadavg()),
              "env": _environment(settings, None)}
    if stats is not None:
        result["ns_per_call"] = stats.median / MICRO_CALLS * 1e9
        result["ns_per_call_min"] = stats.min / MICRO_CALLS * 1e9
        result["ns_per_call_iqr"] = stats.iqr / MICRO_CALLS * 1e9
    _record(benchmark, result)


# -- the report ----------------------------------------------------------------------------

def load_results(path: str) -> dict:
    """Results from ``--proxy-json`` or ``--benchmark-json`` output, as ``{"results": [...]}``."""
    with open(path) as f:
        doc = json.load(f)
    if "results" in doc:
        return doc
    results = [b["extra_info"] for b in doc.get("benchmarks", []) if "proxy_cell" in b.get("extra_info", {})]
    return {"suite": "fastws-proxy-load", "datetime": doc.get("datetime"), "results": results,
            "machine_info": doc.get("machine_info")}


def _fmt_rate(x):
    if x is None:
        return "–"
    return f"{x / 1e3:.1f} k" if x >= 1e3 else f"{x:.0f}"


def _fmt_us(x):
    if x is None:
        return "–"
    if x >= 10_000:
        return f"{x / 1e3:.0f} ms"
    if x >= 1000:
        return f"{x / 1e3:.2f} ms"
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _fmt_delta(us):
    """A signed latency difference with its unit: ``+633 µs``, ``-1.18 ms``."""
    sign = "-" if us < 0 else "+"
    text = _fmt_us(abs(us))
    return sign + (text if text.endswith("ms") else text + " µs")


def _fmt_ratio(x, goal_max=None, goal_min=None):
    if x is None:
        return "–"
    missed = (goal_max is not None and x > goal_max) or (goal_min is not None and x < goal_min)
    text = f"{x:.2f}×"
    if missed and text in (f"{goal_max or 0:.2f}×", f"{goal_min or 0:.2f}×"):
        text = f"{x:.3f}×"          # 0.998 must not read as a met 1.00×
    return f"**{text}**" if missed else text


def _fmt_mib(n):
    return "–" if n is None else f"{n / 1048576:.1f} MiB"


def _div(a, b):
    return None if a is None or b is None or b == 0 else a / b


MEDIAN_KEYS = ("msgs_per_s", "proxy_cpu_us_per_msg", "proxy_cpu_load", "upstream_cpu_us_per_msg",
               "client_cpu_us_per_msg", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us",
               "machine_busy", "machine_softirq", "machine_steal", "client_cpu_load", "upstream_cpu_load",
               "proxy_master_share", "foreign_cpu_load",
               "proxy_busiest_worker_share")


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def aggregate(results) -> dict:
    """``{(cell id, target): merged}``: the median of every measure over the rounds, plus
    ``rounds`` and ``<measure>_all`` (the per-round values, in round order)."""
    groups: dict = {}
    for r in results:
        if r.get("proxy_kind") == "load":
            foreign = _foreign_load(r)
            if foreign is not None:
                r = {**r, "foreign_cpu_load": foreign}
            groups.setdefault((r["proxy_cell"], r["target"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r.get("round", 1))
        merged = dict(rs[-1])
        merged["rounds"] = len(rs)
        for k in MEDIAN_KEYS:
            vals = [r[k] for r in rs if r.get(k) is not None]
            merged[k] = _median(vals) if vals else None
            merged[k + "_all"] = vals
        out[key] = merged
    return out


def _cells_of(results):
    """The load cells present, in the suite's order."""
    seen = {r["proxy_cell"] for r in results if r.get("proxy_kind") == "load"}
    order = [c for c in CELLS if c.id in seen]
    return order


def report_lines(doc: dict, baseline: dict | None = None) -> list[str]:
    results = doc["results"]
    load = aggregate(results)
    idle = {r["target"]: r for r in results if r.get("proxy_kind") == "idle"}
    micro = micro_figures(results)
    cells = _cells_of(results)
    targets = [t for t in (*LOCAL_TARGETS, "target") if any(k[1] == t for k in load)]
    proxy = "target" if "target" in targets else "fastws"
    has_nginx = "nginx" in targets
    wtargets = [t for t in WORKER_TARGETS if any(k[1] == t for k in load)]
    # The usual tables need a proxy of the usual targets (not so with --proxy-workers-only).
    standard = any(t in targets for t in ("nginx", "fastws", "target", *PLUGIN_TARGETS))

    def get(cell, target, key):
        r = load.get((cell.id, target))
        return None if r is None else r.get(key)

    out = ["## Proxy load suite report", ""]
    out += _machine_lines(doc, results)
    if standard or idle or micro.get("raw"):
        out += _goal_lines(cells, get, idle, has_nginx, proxy, micro)
    names = TARGET_NAMES
    wlines = (_workers_lines([c for c in cells if any((c.id, w) in load for w in wtargets)], get, wtargets)
              if wtargets else [])
    if not cells or not standard:
        out += wlines
        out += _micro_lines(micro)
        if baseline is not None and cells:
            out += _baseline_lines(load, baseline, cells, [*targets, *wtargets], names)
        return out

    out += ["### Messages/s (echoed round trips a second; higher is better)", ""]
    ratio_cols = []
    if has_nginx:
        ratio_cols.append((f"{names[proxy]} ÷ nginx", proxy, "nginx", None, GOAL_RATE_PASSTHROUGH))
    if "direct" in targets:
        ratio_cols.append((f"{names[proxy]} ÷ direct", proxy, "direct", None, None))
    if has_nginx:
        for t in PLUGIN_TARGETS:
            if t in targets:
                ratio_cols.append((f"{PLUGIN_SHORT[t]} ÷ nginx", t, "nginx", None, None))
    out += _head(["cell", *(names[t] for t in targets), *(c[0] for c in ratio_cols)])
    for cell in cells:
        row = [cell.label] + [_fmt_rate(get(cell, t, "msgs_per_s")) for t in targets]
        for _, a, b, gmax, gmin in ratio_cols:
            row.append(_fmt_ratio(_div(get(cell, a, "msgs_per_s"), get(cell, b, "msgs_per_s")), gmax, gmin))
        out.append("| " + " | ".join(row) + " |")
    out.append("")

    cpu_targets = [t for t in targets if t != "direct"]
    if any(get(c, t, "proxy_cpu_us_per_msg") is not None for c in cells for t in cpu_targets):
        out += ["### Proxy CPU per message (µs of user+sys for one round trip = two relays; "
                "median [range] over the rounds; the proxy's CPU load in parentheses; lower is better)", ""]
        ratio_cols = []
        if has_nginx:
            ratio_cols.append((f"{names[proxy]} ÷ nginx", proxy, "nginx", GOAL_CPU_PASSTHROUGH))
            if "fastws-inspect" in targets:
                ratio_cols.append(("inspect ÷ nginx", "fastws-inspect", "nginx", GOAL_CPU_INSPECT))
        if "fastws-inspect" in targets:
            ratio_cols.append(("inspect ÷ fastws", "fastws-inspect", "fastws", None))
        out += _head(["cell", *(names[t] for t in cpu_targets), *(c[0] for c in ratio_cols),
                      "echo upstream µs/msg"])
        for cell in cells:
            row = [cell.label]
            for t in cpu_targets:
                us, ld = get(cell, t, "proxy_cpu_us_per_msg"), get(cell, t, "proxy_cpu_load")
                spread = get(cell, t, "proxy_cpu_us_per_msg_all") or []
                rng = f" [{min(spread):.1f}–{max(spread):.1f}]" if len(spread) > 1 else ""
                row.append("–" if us is None else f"{us:.1f}{rng} ({ld * 100:.0f}%)")
            for _, a, b, gmax in ratio_cols:
                row.append(_fmt_ratio(_div(get(cell, a, "proxy_cpu_us_per_msg"),
                                           get(cell, b, "proxy_cpu_us_per_msg")), gmax))
            ups = [get(cell, t, "upstream_cpu_us_per_msg") for t in targets]
            ups = [u for u in ups if u is not None]
            row.append(f"{min(ups):.1f}–{max(ups):.1f}" if ups else "–")
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    out += _plugin_lines(cells, get, targets, has_nginx)

    out += ["### Latency, µs: p50 / p99 (send to echo; pipelined includes queueing behind the window)", ""]
    extra = has_nginx and "direct" in targets
    added = [f"added p99 {names[proxy]} ÷ nginx"] if extra else []
    out += _head(["cell", *(names[t] for t in targets), *added])
    for cell in cells:
        row = [cell.label]
        for t in targets:
            row.append(f"{_fmt_us(get(cell, t, 'p50_us'))} / {_fmt_us(get(cell, t, 'p99_us'))}")
        if extra:
            goal = GOAL_ADDED_P99 if (cell.mode == "pingpong" and cell.conns == 50) else None
            row.append(_fmt_ratio(_added_p99_ratio(cell, get, proxy), goal))
        out.append("| " + " | ".join(row) + " |")
    out += ["", "Added p99 = p99 through the proxy − p99 direct; its ratio is judged only on "
            "ping-pong ×50 (bold: goal missed).", ""]
    out += wlines
    out += _micro_lines(micro)

    if idle:
        out += ["### Idle connections (fresh echo and proxy processes; RSS of the proxy's processes)", ""]
        out.append("| proxy | connections held | RSS before | RSS with them | per connection | "
                   f"RSS at {GOAL_IDLE_CONNS:,} (extrapolated) | sockets open | opening took |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for t in IDLE_TARGETS:
            r = idle.get(t)
            if r is None:
                continue
            per = r.get("rss_per_conn")
            out.append(f"| {t} | {r['connected']:,} | {_fmt_mib(r['rss_before'])} | {_fmt_mib(r['rss'])} | "
                       + ("–" if per is None else f"{per / 1024:.1f} KiB") + " | "
                       + f"{_fmt_mib(r.get('rss_at_goal'))} | {r.get('fds', '–')} | "
                       + f"{r['connect_s']:.1f} s |")
        notes = {r["capacity_note"] for r in idle.values() if r.get("capacity_note")}
        out.append("")
        for note in sorted(notes):
            out += [f"Capped: {note}.", ""]

    if baseline is not None:
        out += _baseline_lines(load, baseline, cells, [*targets, *wtargets], names)
    return out


def _fmt_pct(x):
    return "–" if x is None else f"{x * 100:.0f}%"


def _disturbed(values) -> str:
    n = sum(1 for v in values or () if v > FOREIGN_DISTURBED)
    return f" ({n}/{len(values)} disturbed)" if n else ""


def _workers_lines(cells, get, wtargets) -> list[str]:
    """The processes comparison: fastws --workers N against nginx worker_processes N."""
    if not cells:
        return []
    names = TARGET_NAMES
    pairs = [(f"fastws-w{n}", f"nginx-w{n}") for n in (1, 2)]
    pairs = [(a, b) for a, b in pairs if a in wtargets and b in wtargets]
    scaling = [(f"{p}-w2", f"{p}-w1") for p in ("fastws", "nginx")
               if f"{p}-w2" in wtargets and f"{p}-w1" in wtargets]
    has_direct = any(get(c, "direct", "msgs_per_s") is not None for c in cells)
    out = ["### Processes: `fastws --workers N` against nginx `worker_processes N`", "",
           "Real command lines (`python -m fastws --workers N --listen ... --upstream ...`; nginx with "
           "`worker_processes N`), on the cells with 50 connections, which the kernel spreads over the "
           "workers (SO_REUSEPORT for fastws). CPU is user+sys of the master and all its workers "
           "(the master's share is under 0.1%). "
           "fastws-wN ÷ nginx-wN: messages/s > 1 and CPU < 1 favour fastws; w2 ÷ w1 is what the "
           "second worker changed.", ""]
    rcols = [(f"{names[a]} ÷ {names[b]}", a, b) for a, b in pairs]
    scols = [(f"{names[a].split('-')[0]} w2 ÷ w1", a, b) for a, b in scaling]
    out += ["#### Messages/s (higher is better)", ""]
    out += _head(["cell", *(["direct"] if has_direct else []), *(names[t] for t in wtargets),
                  *(c[0] for c in rcols), *(c[0] for c in scols)])
    for cell in cells:
        row = [cell.label] + ([_fmt_rate(get(cell, "direct", "msgs_per_s"))] if has_direct else [])
        row += [_fmt_rate(get(cell, t, "msgs_per_s")) for t in wtargets]
        row += [_fmt_ratio(_div(get(cell, a, "msgs_per_s"), get(cell, b, "msgs_per_s"))) for _, a, b in rcols]
        row += [_fmt_ratio(_div(get(cell, a, "msgs_per_s"), get(cell, b, "msgs_per_s"))) for _, a, b in scols]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    out += ["#### Proxy CPU per message (µs of user+sys, master and workers, a round trip; median "
            "[range] over the rounds; all the proxy's processes' CPU load in parentheses; lower is better)", ""]
    out += _head(["cell", *(names[t] for t in wtargets), *(c[0] for c in rcols), *(c[0] for c in scols)])
    key = "proxy_cpu_us_per_msg"
    for cell in cells:
        row = [cell.label]
        for t in wtargets:
            us, ld = get(cell, t, key), get(cell, t, "proxy_cpu_load")
            spread = get(cell, t, key + "_all") or []
            rng = f" [{min(spread):.1f}–{max(spread):.1f}]" if len(spread) > 1 else ""
            row.append("–" if us is None else f"{us:.1f}{rng} ({_fmt_pct(ld)})")
        row += [_fmt_ratio(_div(get(cell, a, key), get(cell, b, key))) for _, a, b in rcols]
        row += [_fmt_ratio(_div(get(cell, a, key), get(cell, b, key))) for _, a, b in scols]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    out += ["#### Who used the CPUs (medians over the rounds)", "",
            "proxy: all its processes, 100% = one CPU; busiest worker: its share of the workers' CPU "
            "(50% = even); client: the load client(s); echo: the upstream; machine: busy share of all "
            "CPUs (`/proc/stat`), whoever used them, and in parentheses the part of it in softirq (mostly "
            "the loopback network stack; with this kernel's tick-based accounting it is charged to "
            "the process that was running, so it is inside the columns before); others: busy CPU "
            "that neither the suite's processes nor the kernel threads account for, i.e. other jobs "
            "on the machine (100% = "
            "one CPU; near 0 on a quiet machine), and how many rounds it exceeded "
            f"{FOREIGN_DISTURBED:.0%} in (disturbed rounds stay in the medians). A client near 100% is "
            "saturated; a machine near 100% means messages/s measures the machine, not the proxy.", ""]
    cols = ["cell", "target", "msgs/s", "proxy", "busiest worker", "client", "echo", "machine (softirq)",
            "others", "p50 / p99 µs"]
    out += _head(cols)
    for cell in cells:
        for t in (["direct"] if has_direct else []) + list(wtargets):
            if get(cell, t, "msgs_per_s") is None:
                continue
            busiest = get(cell, t, "proxy_busiest_worker_share")
            out.append("| " + " | ".join([
                cell.label, names[t], _fmt_rate(get(cell, t, "msgs_per_s")),
                _fmt_pct(get(cell, t, "proxy_cpu_load")),
                _fmt_pct(busiest) if t.endswith("-w2") else "–",
                _fmt_pct(get(cell, t, "client_cpu_load")), _fmt_pct(get(cell, t, "upstream_cpu_load")),
                f"{_fmt_pct(get(cell, t, 'machine_busy'))} ({_fmt_pct(get(cell, t, 'machine_softirq'))})",
                _fmt_pct(get(cell, t, "foreign_cpu_load"))
                + _disturbed(get(cell, t, "foreign_cpu_load_all")),
                f"{_fmt_us(get(cell, t, 'p50_us'))} / {_fmt_us(get(cell, t, 'p99_us'))}"]) + " |")
    out.append("")
    w2 = [t for t in wtargets if t.endswith("-w2")]
    busy = [get(c, t, "machine_busy") for c in cells for t in w2]
    client = [get(c, t, "client_cpu_load") for c in cells for t in w2]
    busy = [b for b in busy if b is not None]
    client = [c for c in client if c is not None]
    if busy and client:
        procs = max((get(c, t, "clients") or 1) for c in cells for t in w2)
        who = "the load client used" if procs == 1 else f"the {procs} load clients used together"
        out += [f"With 2 workers the machine was {min(busy) * 100:.0f}–{max(busy) * 100:.0f}% busy "
                f"(median {_median(busy) * 100:.0f}%) and {who} "
                f"{min(client) * 100:.0f}–{max(client) * 100:.0f}% of one CPU.", ""]
    foreign = [f for c in cells for t in ("direct", *wtargets) for f in (get(c, t, "foreign_cpu_load_all") or [])]
    bad = [f for f in foreign if f > FOREIGN_DISTURBED]
    if bad:
        out += [f"**Other jobs on the machine disturbed {len(bad)} of {len(foreign)} runs** (more than "
                f"{FOREIGN_DISTURBED:.0%} of a CPU, up to {max(foreign) * 100:.0f}%; median over all runs "
                f"{_median(foreign) * 100:.0f}%): their messages/s are depressed, their CPU per message "
                "less so; the medians over the rounds damp single disturbed rounds.", ""]
    return out


TARGET_NAMES = {"direct": "direct", "nginx": "nginx", "fastws": "fastws", "fastws-inspect": "fastws+inspect",
                "fastws-read": "fastws+read", "fastws-rewrite": "fastws+rewrite", "target": "target",
                **{t: t for t in WORKER_TARGETS}}
PLUGIN_TARGETS = ("fastws-inspect", "fastws-read", "fastws-rewrite")    # the handler-chain targets
PLUGIN_SHORT = {"fastws-inspect": "inspect", "fastws-read": "read", "fastws-rewrite": "rewrite",
                "fastws": "fastws"}


def _plugin_goal(target: str, cell) -> float | None:
    """The CPU ratio to nginx that ``target`` must stay at or under on ``cell`` (None: no goal)."""
    if target == "fastws-inspect":
        return GOAL_CPU_INSPECT
    if cell.size in GOAL_PLUGIN_SIZES:
        return {"fastws-read": GOAL_CPU_READ, "fastws-rewrite": GOAL_CPU_REWRITE}.get(target)
    return None


def _plugin_lines(cells, get, targets, has_nginx) -> list[str]:
    """The handler-chain targets against nginx and against passthrough (fastws)."""
    present = [t for t in PLUGIN_TARGETS if t in targets]
    if not present or "fastws" not in targets:
        return []
    sizes = " and ".join(size_label(s) for s in GOAL_PLUGIN_SIZES)
    intro = ("Proxy CPU per message: ratios of the medians above, and the µs a message each step adds "
             "(inspect − fastws: the session's inspect path, aggregate, unmask, re-frame; read − inspect: "
             "`Chain` dispatch and `get_frame()`, once each way; rewrite − read: the reversal, "
             "`set_frame_data()` and framing the new bytes, once each way). Bold: over the goal "
             f"(inspect ≤ {GOAL_CPU_INSPECT:g}× nginx everywhere; read ≤ {GOAL_CPU_READ:g}×, "
             f"rewrite ≤ {GOAL_CPU_REWRITE:g}× at {sizes}).")
    out = ["### Handler chains: against nginx and against passthrough", "", intro, ""]
    cols = []
    if has_nginx:
        cols += [(f"{PLUGIN_SHORT[t]} ÷ nginx", t, "nginx", True) for t in present]
    cols += [(f"{PLUGIN_SHORT[t]} ÷ fastws", t, "fastws", False) for t in present]
    steps = [t for t in ("fastws", *PLUGIN_TARGETS) if t in targets]
    diffs = list(zip(steps, steps[1:]))
    out += _head(["cell", *(c[0] for c in cols),
                  *(f"{PLUGIN_SHORT[b]} − {PLUGIN_SHORT[a]} µs" for a, b in diffs)])
    key = "proxy_cpu_us_per_msg"
    for cell in cells:
        row = [cell.label]
        for _, a, b, judged in cols:
            row.append(_fmt_ratio(_div(get(cell, a, key), get(cell, b, key)),
                                  _plugin_goal(a, cell) if judged else None))
        for a, b in diffs:
            x, y = get(cell, b, key), get(cell, a, key)
            row.append("–" if x is None or y is None else f"{x - y:+.1f}")
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    out += ["Messages/s, the same ratios (higher is better):", ""]
    cols = ([(f"{PLUGIN_SHORT[t]} ÷ nginx", t, "nginx") for t in present] if has_nginx else [])
    cols += [(f"{PLUGIN_SHORT[t]} ÷ fastws", t, "fastws") for t in present]
    out += _head(["cell", *(c[0] for c in cols)])
    for cell in cells:
        row = [cell.label] + [_fmt_ratio(_div(get(cell, a, "msgs_per_s"), get(cell, b, "msgs_per_s")))
                              for _, a, b in cols]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    return out


def micro_figures(results) -> dict:
    """The microbenchmarks (ns a run(), median round) and what follows from them, in ns:
    ``per_handler`` = (t10 − t1) / 9, ``fixed`` = t1 − per_handler (run() around its
    handlers), ``get_frame``/``set_frame_data`` by size: their run() minus t1."""
    raw = {r["proxy_cell"]: r for r in results
           if r.get("proxy_kind") == "micro" and r.get("ns_per_call") is not None}
    out: dict = {"raw": raw}
    if not raw:
        return out
    any_r = next(iter(raw.values()))
    out["calls"], out["rounds"] = any_r.get("calls_per_round"), any_r.get("rounds")
    d1, d10 = raw.get("micro-dispatch-h1"), raw.get("micro-dispatch-h10")
    if d1 and d10:
        for suffix, key in (("", "ns_per_call"), ("_min", "ns_per_call_min")):
            per = (d10[key] - d1[key]) / 9
            out["per_handler" + suffix] = per
            out["fixed" + suffix] = d1[key] - per
        out["t1"], out["t10"] = d1["ns_per_call"], d10["ns_per_call"]
    for kind in ("get_frame", "set_frame_data"):
        for size in GOAL_PLUGIN_SIZES:
            r = raw.get(f"micro-{kind}-{size_label(size).replace(' ', '')}")
            if r:
                own = r["ns_per_call"] - out["t1"] if d1 else None
                out.setdefault(kind, {})[size] = (r["ns_per_call"], own)
    return out


def _micro_lines(micro: dict) -> list[str]:
    if not micro.get("raw"):
        return []
    intro = (f"Median of {micro.get('rounds', '?')} pytest-benchmark rounds of {micro.get('calls', '?'):,} "
             "`Chain(plugins).bind(ws).run(\"ws_client_frame\", frame)` calls, per call; bound once (as a "
             "connection does), a fresh `InFlight` a call (its payload a view, as the session makes one a "
             "message). A PDK call is the run() of one handler that makes it minus the run() of one no-op "
             "handler (t1): the call, its lookups and its work.")
    out = ["### Plugin dispatch and PDK calls (in-process microbenchmark, no sockets)", "", intro, ""]
    out += _head(["measure", "per call"])
    if "per_handler" in micro:
        out.append(f"| `run()`, 1 no-op handler (t1) | {micro['t1'] / 1e3:.3f} µs |")
        out.append(f"| `run()`, 10 no-op handlers (t10) | {micro['t10'] / 1e3:.3f} µs |")
        out.append("| **dispatch per handler call: (t10 − t1) / 9** | "
                   f"**{micro['per_handler'] / 1e3:.3f} µs** "
                   f"(fastest rounds: {micro['per_handler_min'] / 1e3:.3f} µs) |")
        out.append(f"| fixed part of `run()`: t1 − per handler | {micro['fixed'] / 1e3:.3f} µs |")
    for kind in ("get_frame", "set_frame_data"):
        for size, (total, own) in sorted(micro.get(kind, {}).items()):
            what = ("`ws.client.get_frame()`, first call on a message (`bytes` of the view)"
                    if kind == "get_frame" else "`ws.client.set_frame_data(new)`")
            own_text = "–" if own is None else f"{own / 1e3:.3f} µs"
            out.append(f"| {what}, {size_label(size)} | {own_text} (run() {total / 1e3:.3f} µs) |")
    out.append("")
    return out


def _head(columns: list[str]) -> list[str]:
    """A markdown table head: the first column left-aligned, the numbers right-aligned."""
    return ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]


def _added_p99(cell, get, proxy):
    """``(added by the proxy, added by nginx)``: p99 through each minus p99 direct, in µs."""
    d, n, p = get(cell, "direct", "p99_us"), get(cell, "nginx", "p99_us"), get(cell, proxy, "p99_us")
    if None in (d, n, p):
        return None
    return p - d, n - d


def _added_p99_ratio(cell, get, proxy):
    added = _added_p99(cell, get, proxy)
    if added is None or added[1] <= 0:
        return None       # nginx added nothing measurable: no ratio (the goal line shows the µs)
    return added[0] / added[1]


def _machine_lines(doc, results) -> list[str]:
    env = next((r["env"] for r in results if r.get("env")), {})
    mi = (doc.get("machine_info") or {}).get("fastws", {})
    loads = [r for r in results if r.get("loadavg_start")]
    lines = ["### Machine and run", ""]
    cpu = env.get("cpu_model") or mi.get("cpu_model", "?")
    lines.append(f"- CPU: {cpu}, {env.get('cpus', '?')} logical CPUs; "
                 f"kernel {env.get('kernel', '?')}; {env.get('python', '?')}")
    git = env.get("fastws_git") or "(commit unknown)"
    lines.append(f"- fastws {git}, codec {env.get('fastws_codec', '?')}; "
                 "load client and echo upstream: picows "
                 f"{env.get('picows', '?')} on uvloop {env.get('uvloop', '?')}"
                 + (f" (aiofastnet {env['aiofastnet']})" if env.get("aiofastnet") else "")
                 + (f"; {env['nginx']}" if env.get("nginx") else "; nginx: not run")
                 + (", 1 worker" if any(r.get("target") == "nginx" for r in results) else ""))
    if env.get("workers_comparison"):
        reuse = ("`listen ... reuseport`, one socket a worker" if env.get("nginx_reuseport")
                 else "nginx's default shared listening socket")
        lines.append(f"- Processes comparison ({'alone' if env['workers_comparison'] == 'only' else 'with the suite'}): "
                     f"`python -m fastws --workers 1|2`, nginx `worker_processes 1|2` ({reuse}); "
                     "the other nginx and fastws targets run one worker")
    waits = [r["quiet_wait_s"] for r in results if r.get("quiet_wait_s") is not None]
    if waits:
        late = [r for r in results if r.get("quiet_wait_s") is not None
                and r.get("quiet_busy_before", 0) > QUIET_BUSY]
        lines.append(f"- Before each run the suite waited for the machine to be idle (≤ {QUIET_BUSY:.0%} busy): "
                     f"{sum(waits):.0f} s in all, at most {max(waits):.1f} s"
                     + (f"; {len(late)} run(s) started busy after the limit" if late else ""))
    retried = [r for r in results if r.get("discarded_attempts")]
    if retried:
        n = sum(len(r["discarded_attempts"]) for r in retried)
        still = sum(1 for r in retried if (_foreign_load(r) or 0) > FOREIGN_DISTURBED)
        lines.append(f"- {len(retried)} run(s) were run again because other jobs on the machine disturbed "
                     f"them ({n} attempt(s) discarded, kept in the JSON as `discarded_attempts`)"
                     + (f"; {still} of them were disturbed again on the last try" if still else ""))
    if (env.get("client_procs") or 1) > 1:
        lines.append(f"- {env['client_procs']} load-client processes on every cell with at least that many "
                     "connections, counted windows aligned")
    lines.append(f"- Each run: {env.get('warmup_s', '?')} s warm-up, then a counted window of "
                 f"{env.get('duration_s', '?')} s; {env.get('rounds', 1)} round(s) of every cell and target, "
                 "round-robin, medians reported; "
                 f"pipelined window {env.get('window', '?')} messages a connection")
    changed = doc.get("fastws_changed")
    if changed:
        lines.append(f"- **fastws/ changed during this run** ({changed['start']}, sources "
                     f"{changed['tree_start']} → {changed['end']}, sources {changed['tree_end']}): the "
                     "servers ran the tree of the start; a server started later, and the "
                     "microbenchmarks, may have run the other")
    if loads:
        a, b = loads[0]["loadavg_start"], loads[-1]["loadavg_end"]
        lines.append(f"- Run {doc.get('datetime') or '?'}; load average at start "
                     f"{a[0]:.2f} / {a[1]:.2f} / {a[2]:.2f}, at end {b[0]:.2f} / {b[1]:.2f} / {b[2]:.2f}")
    lines.append("")
    return lines


def _goal_lines(cells, get, idle, has_nginx, proxy, micro=None) -> list[str]:
    lines = ["### Goals", ""]

    def mark(ok):
        return "n/a" if ok is None else ("met" if ok else "**missed**")

    def over_cells(a, b, key, goal, at_most=True, which=None):
        rs = {c: _div(get(c, a, key), get(c, b, key)) for c in (which or cells)}
        rs = {c: r for c, r in rs.items() if r is not None}
        if not rs:
            return None, ""
        worst = max(rs, key=rs.get) if at_most else min(rs, key=rs.get)
        ok = all((r <= goal) if at_most else (r >= goal) for r in rs.values())
        met = sum(1 for r in rs.values() if ((r <= goal) if at_most else (r >= goal)))
        return ok, f"{met}/{len(rs)} cells; worst {rs[worst]:.2f}× ({worst.label})"

    if not has_nginx:
        lines.append("- nginx was not measured: the ratio goals are n/a.")
    else:
        ok, text = over_cells(proxy, "nginx", "proxy_cpu_us_per_msg", GOAL_CPU_PASSTHROUGH)
        lines.append(f"- passthrough CPU per message ≤ {GOAL_CPU_PASSTHROUGH:g}× nginx's on every cell: "
                     f"{mark(ok)}; {text}")
        ok, text = over_cells(proxy, "nginx", "msgs_per_s", GOAL_RATE_PASSTHROUGH, at_most=False)
        lines.append(f"- passthrough messages/s ≥ nginx's on every cell: {mark(ok)}; {text}")
        ok, text = over_cells("fastws-inspect", "nginx", "proxy_cpu_us_per_msg", GOAL_CPU_INSPECT)
        lines.append(f"- trivial inspect chain both ways, CPU per message ≤ {GOAL_CPU_INSPECT:g}× "
                     f"nginx's: {mark(ok)}; {text}")
        sized = [c for c in cells if c.size in GOAL_PLUGIN_SIZES]
        sizes = " and ".join(size_label(s) for s in GOAL_PLUGIN_SIZES)
        plugin_goals = (
            ("fastws-read", GOAL_CPU_READ, "a plugin reading every message both ways (get_frame)"),
            ("fastws-rewrite", GOAL_CPU_REWRITE,
             "a plugin rewriting every message both ways (set_frame_data)"),
        )
        for target, goal, what in plugin_goals:
            ok, text = over_cells(target, "nginx", "proxy_cpu_us_per_msg", goal, which=sized)
            if ok is not None:
                lines.append(f"- {what}, CPU per message ≤ {goal:g}× nginx's at {sizes}: {mark(ok)}; {text}")
        pp50 = [c for c in cells if c.mode == "pingpong" and c.conns == 50]
        added = {c: _added_p99(c, get, proxy) for c in pp50}
        added = {c: a for c, a in added.items() if a is not None}
        if added:
            # Met where the proxy adds at most 1.2x what nginx adds (or nothing at all).
            ok = all(a[0] <= max(0.0, GOAL_ADDED_P99 * a[1]) for a in added.values())
            lines.append(f"- added p99 latency, ping-pong ×50, ≤ {GOAL_ADDED_P99:g}× nginx's: "
                         f"{mark(ok)}; "
                         + ", ".join(f"{size_label(c.size)} {_fmt_delta(a[0])} vs nginx {_fmt_delta(a[1])}"
                                     + (f" ({a[0] / a[1]:.2f}×)" if a[1] > 0 else "")
                                     for c, a in added.items()))
        else:
            lines.append("- added p99 latency, ping-pong ×50: n/a (direct, nginx or the proxy missing)")
    if micro and "per_handler" in micro:
        per = micro["per_handler"] / 1e3
        t10, t1 = micro["t10"] / 1e3, micro["t1"] / 1e3
        lines.append(f"- plugin dispatch overhead ≤ {GOAL_DISPATCH_US:g} µs per handler call: "
                     f"{mark(per <= GOAL_DISPATCH_US)}; {per:.3f} µs ((t10 − t1) / 9: `Chain.bind(ws).run` "
                     f"with 10 and 1 no-op handlers, {t10:.2f} and {t1:.2f} µs)")
    r = idle.get("fastws")
    if r is not None:
        est = r.get("rss_at_goal")
        held = r["connected"]
        if held >= GOAL_IDLE_CONNS:
            ok = r["rss"] < GOAL_IDLE_RSS
            lines.append(f"- {GOAL_IDLE_CONNS:,} idle connections in one worker < 200 MiB RSS: {mark(ok)}; "
                         f"{_fmt_mib(r['rss'])}")
        else:
            ok = est is not None and est < GOAL_IDLE_RSS
            lines.append(f"- {GOAL_IDLE_CONNS:,} idle connections in one worker < 200 MiB RSS: {mark(ok)} "
                         f"(extrapolated); {held:,} held → {_fmt_mib(r['rss'])}, "
                         f"{(r.get('rss_per_conn') or 0) / 1024:.1f} KiB each → {_fmt_mib(est)} at "
                         f"{GOAL_IDLE_CONNS:,}")
    lines.append("")
    return lines


def _baseline_lines(load, baseline, cells, targets, names) -> list[str]:
    base = aggregate(baseline["results"])
    lines = ["### Against the baseline (this run ÷ baseline: messages/s, CPU per message)", ""]
    tcols = [t for t in targets if any((c.id, t) in base for c in cells)]
    lines += _head(["cell", *(f"{names[t]} msgs/s" for t in tcols),
                    *(f"{names[t]} CPU/msg" for t in tcols if t != "direct")])
    for cell in cells:
        row = [cell.label]
        for t in tcols:
            a, b = load.get((cell.id, t), {}), base.get((cell.id, t), {})
            row.append(_fmt_ratio(_div(a.get("msgs_per_s"), b.get("msgs_per_s"))))
        for t in tcols:
            if t == "direct":
                continue
            a, b = load.get((cell.id, t), {}), base.get((cell.id, t), {})
            row.append(_fmt_ratio(_div(a.get("proxy_cpu_us_per_msg"), b.get("proxy_cpu_us_per_msg"))))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return lines


# -- script entry point --------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="fastws proxy load suite: run it (through pytest) or print the report of a run",
        epilog="Other arguments go to pytest (suite options: --ws-target-pid, --ws-direct, "
               "--proxy-duration, --proxy-warmup, --proxy-rounds, --proxy-window, --proxy-idle, "
               "--proxy-no-nginx, --proxy-quick, --proxy-workers, --proxy-workers-only, "
               "--proxy-nginx-reuseport, --proxy-client-procs K, -k CELLS).")
    ap.add_argument("--report", metavar="JSON", help="print the report of this results file and exit")
    ap.add_argument("--baseline", metavar="JSON", help="with the report: compare against this run")
    ap.add_argument("--json", metavar="PATH", help="write the results here (default: a temp file)")
    ap.add_argument("--workers", action="store_true",
                    help="only the processes comparison: fastws --workers 1 and 2 against nginx "
                         "worker_processes 1 and 2 on the 50-connection cells (= --proxy-workers-only; "
                         "--proxy-workers adds it to the whole suite instead)")
    args, rest = ap.parse_known_args(argv)
    if args.report:
        base = load_results(args.baseline) if args.baseline else None
        sys.stdout.write("\n".join(report_lines(load_results(args.report), base)) + "\n")
        return 0
    out = args.json or os.path.join(tempfile.mkdtemp(prefix="fastws-proxy-"), "proxy.json")
    repo = str(HERE.parent)
    if repo not in sys.path:
        sys.path.insert(0, repo)       # so -p benchmarks.conftest_proxy imports
    if args.workers:
        rest = ["--proxy-workers-only", *rest]
    code = pytest.main([str(HERE / "bench_proxy.py"), "-p", "benchmarks.conftest_proxy", "-q",
                        "--proxy-json", out, *rest])
    if os.path.exists(out):
        print(f"\nresults: {out}  (python {os.path.relpath(__file__)} --report {out})")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
