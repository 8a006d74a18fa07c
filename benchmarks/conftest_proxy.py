"""Command-line options of the proxy load suite (``benchmarks/bench_proxy.py``), as a pytest plugin.

Loaded on request, so that ``benchmarks/conftest.py`` stays the codec suite's::

    python -m pytest -p benchmarks.conftest_proxy benchmarks/bench_proxy.py --ws-target ws://host:8000/echo

(``python -m pytest`` puts the working directory on ``sys.path``, which lets
``-p`` import ``benchmarks.conftest_proxy``; with the ``pytest`` script, set
``PYTHONPATH=.``.)  ``python benchmarks/bench_proxy.py ...`` loads it for you.
Without the plugin every option can still be given as the environment
variable named in its help, and ``pytest benchmarks/bench_proxy.py`` runs the
whole suite with the defaults.

Only options live here; no imports from the suite, because ``-p`` plugins are
imported before pytest puts ``benchmarks/`` on ``sys.path``.
"""

from __future__ import annotations


def pytest_addoption(parser) -> None:
    group = parser.getgroup("fastws proxy load suite (benchmarks/bench_proxy.py)")
    group.addoption(
        "--ws-target", metavar="URL", default=None,
        help="drive the load cells against this running deployment instead of starting "
             "echo/fastws/nginx; its route must echo every message back "
             "(env FASTWS_BENCH_WS_TARGET)")
    group.addoption(
        "--ws-target-pid", metavar="PID", type=int, action="append", default=None,
        help="with --ws-target on this machine: a process of the deployment whose "
             "user+sys CPU is charged to it (repeat for several) (env FASTWS_BENCH_WS_TARGET_PIDS, "
             "comma-separated)")
    group.addoption(
        "--ws-direct", metavar="URL", default=None,
        help="with --ws-target: the upstream itself, measured as the 'direct' column "
             "(env FASTWS_BENCH_WS_DIRECT)")
    group.addoption(
        "--proxy-duration", metavar="SECONDS", type=float, default=None,
        help="counted seconds a run (default 1.5; env FASTWS_BENCH_DURATION)")
    group.addoption(
        "--proxy-warmup", metavar="SECONDS", type=float, default=None,
        help="untimed seconds of load before each cell's window (default 0.3; env FASTWS_BENCH_WARMUP)")
    group.addoption(
        "--proxy-max-messages", metavar="N", type=int, default=None,
        help="end a cell's window after this many echoes even before the duration "
             "(default 1000000; env FASTWS_BENCH_MAX_MESSAGES)")
    group.addoption(
        "--proxy-window", metavar="K", type=int, default=None,
        help="messages in flight per connection in pipelined cells (default 16; env FASTWS_BENCH_WINDOW)")
    group.addoption(
        "--proxy-rounds", metavar="R", type=int, default=None,
        help="runs of every cell and target, round-robin; the report takes the median "
             "(default 3; env FASTWS_BENCH_ROUNDS)")
    group.addoption(
        "--proxy-idle", metavar="N", type=int, default=None,
        help="idle connections to hold in the memory cell, capped by RLIMIT_NOFILE; 0 skips it "
             "(default 10000; env FASTWS_BENCH_IDLE)")
    group.addoption(
        "--proxy-no-nginx", action="store_true", default=None,
        help="leave nginx out even if installed (env FASTWS_BENCH_NO_NGINX=1)")
    group.addoption(
        "--proxy-quick", action="store_true", default=None,
        help="development runs: 1 round of 0.3 s windows, 0.1 s warm-up, 500 idle connections, "
             "60 rounds of each plugin microbenchmark (env FASTWS_BENCH_QUICK=1)")
    group.addoption(
        "--proxy-workers", action="store_true", default=None,
        help="add the processes comparison to the suite: `python -m fastws --workers 1` and "
             "`--workers 2` (master + forked SO_REUSEPORT workers) against nginx with worker_processes "
             "1 and 2, on the 50-connection cells, interleaved with the other targets "
             "(env FASTWS_BENCH_WORKERS=1)")
    group.addoption(
        "--proxy-workers-only", action="store_true", default=None,
        help="run only the processes comparison: direct, fastws-w1, fastws-w2, nginx-w1, nginx-w2 on "
             "the 50-connection cells; no idle cell, no microbenchmarks (env FASTWS_BENCH_WORKERS=only)")
    group.addoption(
        "--proxy-nginx-reuseport", action="store_true", default=None,
        help="nginx-w1/nginx-w2 listen with `reuseport` (one socket a worker, as fastws's workers) "
             "instead of nginx's default shared socket (env FASTWS_BENCH_NGINX_REUSEPORT=1)")
    group.addoption(
        "--proxy-client-procs", metavar="K", type=int, default=None,
        help="drive every cell with at least K connections from K load-client processes (the "
             "connections split between them, their counted windows aligned); default 1 "
             "(env FASTWS_BENCH_CLIENT_PROCS)")
    group.addoption(
        "--proxy-wait-quiet", metavar="SECONDS", type=float, default=None,
        help="before each load run wait up to this long for the machine to be idle (other jobs on a "
             "shared machine); 0 (default) does not wait (env FASTWS_BENCH_WAIT_QUIET)")
    group.addoption(
        "--proxy-retry-disturbed", metavar="N", type=int, default=None,
        help="run a load run again (up to N times, 5 minutes of re-runs a session at most) when other "
             "jobs on the machine used more than 25%% of a CPU during its window; the discarded "
             "attempts stay in the results (env FASTWS_BENCH_RETRY_DISTURBED)")
    group.addoption(
        "--proxy-json", metavar="PATH", default=None,
        help="also write the suite's own results file (what --report reads; "
             "--benchmark-json output works too) (env FASTWS_BENCH_PROXY_JSON)")
