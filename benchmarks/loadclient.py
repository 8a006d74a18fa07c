"""The load client of the proxy suite: picows connections on uvloop, one process.

Two commands, each printing one JSON object on stdout::

    python benchmarks/loadclient.py load --url ws://127.0.0.1:8000/ --mode pingpong \\
        --size 1024 --connections 50 [--window 16] [--warmup 0.5] [--duration 3] \\
        [--max-messages N] [--check-every N] [--cpu-pid PID]... [--ctx-pid PID]... \
        [--start-at MONOTONIC] [--latencies-out PATH]
    python benchmarks/loadclient.py idle --url ws://127.0.0.1:8000/ --connections 10000
        # prints {"connected": n, ...} once all are open, holds them until stdin closes

``load`` modes:

* ``pingpong``: every connection sends one binary message, waits for its echo,
  sends the next; latency is one round trip through the target.
* ``pipelined``: every connection keeps ``--window`` messages in flight and
  sends a new one for each echo; latency is send-to-echo of each message,
  queueing included.

A *message* is one binary message sent and echoed back: through a proxy that
is two relays (client to upstream and back).  Connections are opened first,
load runs for ``--warmup`` seconds untimed, then for ``--duration`` seconds (or
until ``--max-messages`` echoes, whichever comes first) while echoes and their
latencies are counted.  At both ends of that window the client reads the
user+sys CPU ticks of every ``--cpu-pid`` (the proxy) and ``--ctx-pid`` (the
upstream, for context) and its own ``getrusage``, so the CPU figures cover
exactly the counted messages; each ``--cpu-pid``'s own share too
(``proxy_cpu_ns_by_pid``: how a master and its workers split the work), and the
machine's busy and idle time from ``/proc/stat`` (``machine_busy``: the share of
all CPUs that did anything in the window, whoever it was; ``machine_softirq``: the
share in softirq, which no process is charged for).  Then the load stops,
in-flight echoes drain, and every connection closes with 1000.

Every echo is checked for its size, and with ``--check-every N`` every Nth echo
that came back in one frame also for its bytes (all messages carry the same
random payload); a wrong size or content, a close from the far end or a lost
connection is an error in the JSON (``errors``), and the suite fails the cell.
(The content check is what shows that a rewriting plugin target, which reverses
every message both ways, gave every message back as it was sent.)

Several clients at once (the suite's ``--proxy-client-procs K``): each gets
``--start-at T``, a ``time.monotonic()`` value (CLOCK_MONOTONIC, the same in
every process of the machine), and begins its counted window then (after its
warm-up, if that ends later: ``window_start`` in the JSON tells), so the
windows of all of them coincide; ``--latencies-out PATH`` writes the counted
latencies (native int64 ns) for the suite to merge into one set of percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import sys
import time
from array import array

from picows import WSCloseCode, WSListener, WSMsgType, ws_connect

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def _sched_ns(pid: int) -> int | None:
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return total


def _machine_jiffies() -> list[int] | None:
    """Jiffies of all CPUs from the ``cpu`` line of ``/proc/stat``: user nice system idle
    iowait irq softirq steal (guest time is already inside user/nice)."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def _machine_shares(a: list[int] | None, b: list[int] | None) -> dict:
    """Shares of all CPUs' time between two ``_machine_jiffies`` readings.

    ``machine_busy``: everything but idle and iowait; ``machine_softirq``: the part of it
    in softirq (here: the loopback network stack, charged to no process, so in nobody's
    ``/proc/<pid>/stat``); ``machine_steal``: taken by the hypervisor.
    """
    if not a or not b:
        return {}
    d = [y - x for x, y in zip(a, b)]
    total = sum(d)
    if total <= 0:
        return {}
    return {"machine_busy": (total - d[3] - d[4]) / total, "machine_softirq": (d[5] + d[6]) / total,
            "machine_steal": d[7] / total}


def _kthread_ticks() -> int:
    """user + sys ticks of all kernel threads (children of kthreadd, pid 2): ksoftirqd, kworkers.

    Under load the kernel moves network softirq work to ksoftirqd; that is the machine's work
    for this traffic too, but charged to none of the suite's processes.
    """
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == b"2":            # ppid: a kernel thread
            total += int(fields[11]) + int(fields[12])
    return total


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class Run:
    """State shared by the connections of one ``load`` run."""

    def __init__(self, size: int, window: int, max_messages: int, check_every: int = 0) -> None:
        self.payload = os.urandom(size)
        self.check_every = check_every    # compare every Nth single-frame echo with payload
        self.to_check = check_every
        self.checked = 0
        self.size = size
        self.window = window
        self.max_messages = max_messages
        self.measuring = False
        self.sending = True
        self.count = 0                    # echoes received while measuring
        self.latencies = array("q")       # ns, one per counted echo
        self.errors: list[str] = []
        self.done: asyncio.Future | None = None
        self.in_flight = 0

    def error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


class LoadConn(WSListener):
    """One connection: keeps ``run.window`` messages in flight, times each echo."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.transport = None
        self.sent = collections.deque()   # send times, oldest first (echoes come in order)
        self.partial = 0                  # bytes of a fragmented echo so far
        self.closing = False

    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def start(self) -> None:
        for _ in range(self.run.window):
            self._send()

    def _send(self) -> None:
        self.sent.append(time.perf_counter_ns())
        self.run.in_flight += 1
        self.transport.send(WSMsgType.BINARY, self.run.payload)

    def on_ws_frame(self, transport, frame) -> None:
        mt = frame.msg_type
        if mt == WSMsgType.BINARY or mt == WSMsgType.CONTINUATION:
            self.partial += frame.payload_size
            if not frame.fin:
                return
            now = time.perf_counter_ns()
            run = self.run
            size, self.partial = self.partial, 0
            if size != run.size:
                run.error(f"echo of {size} bytes, sent {run.size}")
            elif run.check_every:
                run.to_check -= 1
                if run.to_check <= 0 and frame.payload_size == size:    # one frame: all of it here
                    run.to_check = run.check_every
                    run.checked += 1
                    if frame.get_payload_as_bytes() != run.payload:
                        run.error(f"echo of {size} bytes differs from the message sent")
            try:
                sent = self.sent.popleft()
            except IndexError:
                run.error("an echo nobody sent")
                return
            run.in_flight -= 1
            if run.measuring:
                run.latencies.append(now - sent)
                run.count += 1
                if run.count >= run.max_messages and not run.done.done():
                    run.done.set_result(None)
            if run.sending:
                self._send()
        elif mt == WSMsgType.CLOSE:
            if not self.closing:
                self.run.error(f"the target closed a connection: {frame.get_close_code()} "
                               f"{frame.get_close_message()!r}")
                transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif mt == WSMsgType.TEXT:
            self.run.error("a text message came back for a binary one")

    def on_ws_disconnected(self, transport) -> None:
        if not self.closing:
            self.run.error("connection lost during the run")

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.send_close(WSCloseCode.OK)


async def _connect_all(url: str, n: int, factory, concurrency: int, timeout: float):
    """Open ``n`` connections, at most ``concurrency`` handshakes at a time."""
    sem = asyncio.Semaphore(concurrency)
    errors: list[str] = []

    async def one():
        async with sem:
            try:
                return await ws_connect(factory, url, websocket_handshake_timeout=timeout,
                                        max_frame_size=64 << 20)
            except Exception as exc:
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}")
                return None

    pairs = await asyncio.gather(*(one() for _ in range(n)))
    return [p for p in pairs if p is not None], errors


def _percentiles(lat: array) -> dict:
    if not lat:
        return {}
    s = sorted(lat)
    n = len(s)

    def q(p: float) -> float:
        return s[min(n - 1, int(p * n))] / 1e3     # µs

    return {"p50_us": q(0.50), "p90_us": q(0.90), "p99_us": q(0.99), "p999_us": q(0.999),
            "max_us": s[-1] / 1e3, "mean_us": sum(s) / n / 1e3}


async def load(args) -> dict:
    run = Run(args.size, args.window if args.mode == "pipelined" else 1, args.max_messages,
              args.check_every)
    loop = asyncio.get_running_loop()
    run.done = loop.create_future()
    t0 = time.perf_counter()
    pairs, errors = await _connect_all(args.url, args.connections, lambda: LoadConn(run),
                                       args.concurrency, args.connect_timeout)
    connect_s = time.perf_counter() - t0
    result: dict = {"url": args.url, "mode": args.mode, "size": args.size,
                    "connections": args.connections, "window": run.window,
                    "connected": len(pairs), "connect_s": connect_s}
    if errors or len(pairs) != args.connections:
        result["errors"] = [f"opened {len(pairs)} of {args.connections} connections", *errors]
        for transport, _ in pairs:
            transport.disconnect()
        return result
    conns = [listener for _, listener in pairs]
    for conn in conns:
        conn.start()

    await asyncio.sleep(args.warmup)
    if args.start_at is not None:
        await asyncio.sleep(max(0.0, args.start_at - time.monotonic()))
    window_start = time.monotonic()
    pids = args.cpu_pid + args.ctx_pid
    ticks0 = {pid: _ticks(pid) for pid in pids}
    ns0 = {pid: _sched_ns(pid) for pid in pids}
    machine0 = _machine_jiffies()
    kthreads0 = _kthread_ticks()
    self0 = _self_cpu()
    start = time.perf_counter()
    run.measuring = True
    try:
        await asyncio.wait_for(asyncio.shield(run.done), args.duration)
    except asyncio.TimeoutError:
        pass
    run.measuring = False
    elapsed = time.perf_counter() - start
    self1 = _self_cpu()
    machine1 = _machine_jiffies()
    kthreads1 = _kthread_ticks()
    ticks1 = {pid: _ticks(pid) for pid in pids}
    ns1 = {pid: _sched_ns(pid) for pid in pids}

    # Stop sending, let what is in flight come back, close cleanly.
    run.sending = False
    deadline = time.monotonic() + 5
    while run.in_flight > 0 and time.monotonic() < deadline and not run.errors:
        await asyncio.sleep(0.01)
    for conn in conns:
        conn.close()
    for transport, _ in pairs:
        try:
            await asyncio.wait_for(transport.wait_disconnected(), 2)
        except asyncio.TimeoutError:
            transport.disconnect(graceful=False)

    def delta(a, b, group):
        if any(a[p] is None or b[p] is None for p in group):
            return None
        return sum(b[p] - a[p] for p in group)

    result["_latencies"] = run.latencies      # for --latencies-out; written by main(), not printed
    result.update({
        "window_start": window_start,
        "messages": run.count,
        "elapsed_s": elapsed,
        "msgs_per_s": run.count / elapsed if elapsed > 0 else 0.0,
        "payload_mb_per_s": run.count * run.size / elapsed / 1e6 if elapsed > 0 else 0.0,
        **_percentiles(run.latencies),
        "clk_tck": CLK_TCK,
        "proxy_pids": args.cpu_pid,
        "proxy_cpu_ticks": delta(ticks0, ticks1, args.cpu_pid) if args.cpu_pid else None,
        "proxy_cpu_ns": delta(ns0, ns1, args.cpu_pid) if args.cpu_pid else None,
        "proxy_cpu_ns_by_pid": {str(p): delta(ns0, ns1, [p]) for p in args.cpu_pid},
        "upstream_cpu_ticks": delta(ticks0, ticks1, args.ctx_pid) if args.ctx_pid else None,
        "upstream_cpu_ns": delta(ns0, ns1, args.ctx_pid) if args.ctx_pid else None,
        **_machine_shares(machine0, machine1),
        "kthread_cpu_ticks": kthreads1 - kthreads0,
        "machine_cpus": os.cpu_count(),
        "client_cpu_s": self1 - self0,
        "content_checked": run.checked,
        "errors": run.errors,
    })
    return result


class IdleConn(WSListener):
    def __init__(self, lost: list) -> None:
        self.lost = lost
        self.closing = False

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport) -> None:
        if not self.closing:
            self.lost[0] += 1


async def idle(args) -> int:
    lost = [0]
    listeners: list[IdleConn] = []

    def factory():
        listener = IdleConn(lost)
        listeners.append(listener)
        return listener

    t0 = time.perf_counter()
    pairs, errors = await _connect_all(args.url, args.connections, factory,
                                       args.concurrency, args.connect_timeout)
    report = {"connected": len(pairs), "requested": args.connections,
              "connect_s": time.perf_counter() - t0, "errors": errors,
              "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}
    # Still open a moment later (a proxy short of slots may drop some), and one
    # round trip on a sample of them: they relay, not just exist.
    await asyncio.sleep(0.5)
    report["open"] = sum(1 for t, _ in pairs if not t.is_disconnected)
    probe = [t for t, _ in pairs[:: max(1, len(pairs) // 20)]]
    if probe:
        rtts = await asyncio.gather(*(t.measure_roundtrip_time(1) for t in probe), return_exceptions=True)
        report["probe_ok"] = sum(1 for r in rtts if not isinstance(r, BaseException))
        report["probe_n"] = len(probe)
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    # Hold until the suite closes our stdin.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for listener in listeners:
        listener.closing = True
    for transport, _ in pairs:
        transport.disconnect(graceful=False)
    sys.stdout.write(json.dumps({"lost_while_idle": lost[0]}) + "\n")
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    lp = sub.add_parser("load", help="drive ping-pong or pipelined echo load, print one JSON result")
    lp.add_argument("--url", required=True)
    lp.add_argument("--mode", choices=("pingpong", "pipelined"), default="pingpong")
    lp.add_argument("--size", type=int, default=64, help="payload bytes a message")
    lp.add_argument("--connections", type=int, default=1)
    lp.add_argument("--window", type=int, default=16, help="messages in flight a connection (pipelined)")
    lp.add_argument("--warmup", type=float, default=0.5, help="seconds of untimed load first")
    lp.add_argument("--duration", type=float, default=3.0, help="seconds of counted load, at most")
    lp.add_argument("--max-messages", type=int, default=10_000_000, help="stop counting after this many")
    lp.add_argument("--check-every", type=int, default=0, metavar="N",
                    help="also compare every Nth echo's bytes with the message sent (0: sizes only)")
    lp.add_argument("--cpu-pid", type=int, action="append", default=[], help="proxy process (repeat)")
    lp.add_argument("--ctx-pid", type=int, action="append", default=[], help="upstream process (repeat)")
    lp.add_argument("--start-at", type=float, default=None, metavar="MONOTONIC",
                    help="begin the counted window at this time.monotonic() (after the warm-up at the earliest)")
    lp.add_argument("--latencies-out", default=None, metavar="PATH",
                    help="write the counted latencies here (int64 ns, native byte order)")
    ip = sub.add_parser("idle", help="open N connections and hold them until stdin closes")
    ip.add_argument("--url", required=True)
    ip.add_argument("--connections", type=int, default=10000)
    for p in (lp, ip):
        p.add_argument("--concurrency", type=int, default=200, help="handshakes at a time")
        p.add_argument("--connect-timeout", type=float, default=30.0)
    args = ap.parse_args(argv)
    _raise_nofile()
    import uvloop

    if args.command == "idle":
        return uvloop.run(idle(args))
    result = uvloop.run(load(args))
    latencies = result.pop("_latencies", None)
    if args.latencies_out and latencies is not None:
        with open(args.latencies_out, "wb") as f:
            latencies.tofile(f)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
