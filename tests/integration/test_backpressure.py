"""Backpressure: a fast producer and a stalled consumer must not grow the proxy's memory.

The proxy runs as ``python -m fastws --listen ... --upstream ...`` in a subprocess,
so that its resident set (``VmRSS`` / ``VmHWM`` from ``/proc/PID/status``) is the
proxy's alone.  The producer and the consumer (raw sockets, ``flow_bulk``) run in
the test process:

1. the producer sends ``FASTWS_BACKPRESSURE_BYTES`` (default 256 MiB; set it to
   1073741824 for the full 1 GiB run, which takes a few times longer on two cores)
   in 1 MiB binary messages, each starting with its sequence number;
2. the consumer does not read at all; once the producer has been blocked for
   half a second (backpressure reached it through the proxy), the proxy's RSS is
   sampled and must stay under ``baseline + RSS_BOUND``;
3. the consumer then reads everything: every message arrives, in order, with the
   same CRC-32 over all payload bytes, and the proxy's *peak* RSS over the whole
   run (VmHWM) is under the same bound.

What the bound is for: with the default write-buffer marks (64 KiB high, 16 KiB
low) the proxy holds per connection at most a read buffer and a paused write
buffer, a few hundred KiB.  Measured on the two-core test machine (uvloop worker,
256 MiB and 1 GiB sent): baseline RSS about 30.5 MiB after start-up and one
handshake; growth 8-16 KiB while blocked and at the peak (VmHWM); the producer
blocks after 7-10 MiB (kernel socket buffers).  ``RSS_BOUND`` = 16 MiB leaves a
wide margin for allocator noise and still fails loudly if a stalled side's data
were buffered: ``test_measurement_sees_buffering`` is the control experiment
(write_buffer_high raised to 48 MiB: the same measurement sees about 48 MiB of
growth).

The large-frame test sends one 32 MiB frame -- the largest message the config
allows (SPEC section 4: 32 MiB at most; the 64 MiB of the test plan cannot be
configured) -- to an upstream that is not reading: passthrough streams it, so the
proxy's RSS stays far below the frame's size.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from .conftest import free_port, run
from .flow_bulk import MIB, Producer, consume
from .flow_proc import FastwsProcess
from .flow_ws import RawServer, connect

TOTAL_BYTES = int(os.environ.get("FASTWS_BACKPRESSURE_BYTES", 256 * MIB))
MESSAGES = max(1, TOTAL_BYTES // MIB)
RSS_BOUND = 16 * MIB                 # allowed growth over the baseline (see the module docstring)
LARGE_FRAME = 32 * MIB
LARGE_FRAME_BOUND = 8 * MIB          # a quarter of the frame: "far below" it


def report(name: str, **figures) -> None:
    """Print the measured figures (shown with pytest -s, and in the output of a failure)."""
    text = " ".join(f"{k}={v / 1024:.0f}KiB" if isinstance(v, int) and k != "links" else f"{k}={v}"
                    for k, v in figures.items())
    print(f"[{name}] {text}")


def sample_rss(proxy: FastwsProcess, seconds: float = 0.5) -> int:
    """The largest RSS seen over ``seconds`` (sampled every 25 ms)."""
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, proxy.rss())
        time.sleep(0.025)
    return peak


@pytest.fixture
def proxy_process(tmp_path):
    """``proxy_process(upstream_url, *extra_args) -> (FastwsProcess, port)``; stopped by pid."""
    started: list[FastwsProcess] = []

    def start(upstream_url: str, *extra: str) -> tuple[FastwsProcess, int]:
        port = free_port()
        proc = FastwsProcess(["--listen", f"127.0.0.1:{port}", "--upstream", upstream_url,
                              "--log-level", "warning", *extra], tmp_path, name=f"proxy{len(started)}")
        started.append(proc)
        proc.wait_port(port)
        return proc, port

    yield start
    for proc in started:
        proc.stop()


async def _in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def test_client_producer_stalled_upstream(proxy_process):
    """Client -> proxy -> upstream that stops reading: RSS bounded, then every byte in order."""
    async def go():
        async with RawServer() as server:
            proxy, port = await _in_thread(proxy_process, server.url)
            client = await connect(port)
            upstream = await server.accept()
            baseline = proxy.rss()
            producer = Producer(client, MESSAGES).start()
            try:
                # The upstream does not read: the producer must block.
                await producer.wait_stalled(quiet=0.5, timeout=60)
                blocked_at = producer.sent_bytes
                stalled_rss = await _in_thread(sample_rss, proxy, 0.5)
                assert producer.sent_bytes == blocked_at, "the producer moved while it should be blocked"
                # The upstream resumes and takes everything.
                consumer = asyncio.ensure_future(consume(upstream, MESSAGES, masked=True))
                await producer.finish(timeout=240)
                messages, total, crc = await asyncio.wait_for(consumer, 60)
                peak = proxy.peak_rss()
            finally:
                client.abort()
                upstream.abort()
            report("client->upstream", sent=TOTAL_BYTES, blocked_after=blocked_at, baseline=baseline,
                   stalled=stalled_rss, peak=peak, growth_stalled=stalled_rss - baseline,
                   growth_peak=peak - baseline, bound=RSS_BOUND)
            assert blocked_at < MESSAGES * MIB
            assert stalled_rss - baseline < RSS_BOUND, (baseline, stalled_rss)
            assert peak - baseline < RSS_BOUND, (baseline, peak)
            assert (messages, total, crc) == (MESSAGES, MESSAGES * MIB, producer.crc)
    run(go(), timeout=300)


def test_upstream_producer_stalled_client(proxy_process):
    """Upstream -> proxy -> client that stops reading: the same, the other way round."""
    async def go():
        async with RawServer() as server:
            proxy, port = await _in_thread(proxy_process, server.url)
            client = await connect(port)
            upstream = await server.accept()
            baseline = proxy.rss()
            producer = Producer(upstream, MESSAGES).start()
            try:
                await producer.wait_stalled(quiet=0.5, timeout=60)
                blocked_at = producer.sent_bytes
                stalled_rss = await _in_thread(sample_rss, proxy, 0.5)
                assert producer.sent_bytes == blocked_at
                consumer = asyncio.ensure_future(consume(client, MESSAGES, masked=False))
                await producer.finish(timeout=240)
                messages, total, crc = await asyncio.wait_for(consumer, 60)
                peak = proxy.peak_rss()
            finally:
                client.abort()
                upstream.abort()
            report("upstream->client", sent=TOTAL_BYTES, blocked_after=blocked_at, baseline=baseline,
                   stalled=stalled_rss, peak=peak, growth_stalled=stalled_rss - baseline,
                   growth_peak=peak - baseline, bound=RSS_BOUND)
            assert stalled_rss - baseline < RSS_BOUND, (baseline, stalled_rss)
            assert peak - baseline < RSS_BOUND, (baseline, peak)
            assert (messages, total, crc) == (MESSAGES, MESSAGES * MIB, producer.crc)
    run(go(), timeout=300)


def test_large_frame_streams_through(proxy_process, tmp_path):
    """One 32 MiB frame to an upstream that is not reading: streamed, never buffered whole."""
    config = tmp_path / "large.yaml"
    config.write_text(f"client_max_payload: {LARGE_FRAME}\n")

    async def go():
        async with RawServer() as server:
            proxy, port = await _in_thread(proxy_process, server.url, "--config", str(config))
            client = await connect(port)
            upstream = await server.accept()
            baseline = proxy.rss()
            producer = Producer(client, 1, LARGE_FRAME).start()
            try:
                await producer.wait_stalled(quiet=0.5, timeout=30)
                stalled_rss = await _in_thread(sample_rss, proxy, 0.5)
                messages, total, crc = await asyncio.wait_for(
                    consume(upstream, 1, LARGE_FRAME, masked=True), 60)
                await producer.finish(timeout=30)
                peak = proxy.peak_rss()
            finally:
                client.abort()
                upstream.abort()
            report("32MiB-frame", baseline=baseline, stalled=stalled_rss, peak=peak,
                   growth_stalled=stalled_rss - baseline, growth_peak=peak - baseline,
                   bound=LARGE_FRAME_BOUND)
            assert (messages, total, crc) == (1, LARGE_FRAME, producer.crc)
            assert stalled_rss - baseline < LARGE_FRAME_BOUND, (baseline, stalled_rss)
            assert peak - baseline < LARGE_FRAME_BOUND, (baseline, peak)
    run(go(), timeout=120)


def test_fragmented_messages_in_both_directions_at_once(proxy_process):
    """Both directions busy at the same time with fragmented messages (4 x 256 KiB per MiB), both
    consumers slow to start: both streams arrive intact and the proxy stays bounded."""
    count = min(MESSAGES, 64)

    async def go():
        async with RawServer() as server:
            proxy, port = await _in_thread(proxy_process, server.url)
            client = await connect(port)
            upstream = await server.accept()
            baseline = proxy.rss()
            up = Producer(client, count, fragments=4).start()
            down = Producer(upstream, count, fragments=4).start()
            try:
                await up.wait_stalled(quiet=0.3, timeout=60)
                await down.wait_stalled(quiet=0.3, timeout=60)
                stalled_rss = await _in_thread(sample_rss, proxy, 0.3)
                got_up = asyncio.ensure_future(consume(upstream, count, masked=True))
                got_down = asyncio.ensure_future(consume(client, count, masked=False))
                await up.finish(120)
                await down.finish(120)
                result_up = await asyncio.wait_for(got_up, 60)
                result_down = await asyncio.wait_for(got_down, 60)
                peak = proxy.peak_rss()
            finally:
                client.abort()
                upstream.abort()
            report("both-ways", sent_each_way=count * MIB, baseline=baseline, stalled=stalled_rss,
                   peak=peak, growth_peak=peak - baseline, bound=RSS_BOUND)
            assert result_up == (count, count * MIB, up.crc)
            assert result_down == (count, count * MIB, down.crc)
            assert stalled_rss - baseline < RSS_BOUND
            assert peak - baseline < RSS_BOUND
    run(go(), timeout=300)


def test_measurement_sees_buffering(proxy_process, tmp_path):
    """The control experiment: with write_buffer_high raised to 48 MiB the same stalled upstream
    makes the proxy hold tens of MiB -- so the bound above measures something real, and the
    write-buffer marks are what keeps memory down."""
    config = tmp_path / "big-buffers.yaml"
    config.write_text(f"write_buffer_high: {48 * MIB}\nwrite_buffer_low: {16 * MIB}\n")
    count = min(MESSAGES, 128)

    async def go():
        async with RawServer() as server:
            proxy, port = await _in_thread(proxy_process, server.url, "--config", str(config))
            client = await connect(port)
            upstream = await server.accept()
            baseline = proxy.rss()
            producer = Producer(client, count).start()
            try:
                await producer.wait_stalled(quiet=0.5, timeout=60)
                stalled_rss = await _in_thread(sample_rss, proxy, 0.3)
                consumer = asyncio.ensure_future(consume(upstream, count, masked=True))
                await producer.finish(timeout=120)
                result = await asyncio.wait_for(consumer, 60)
            finally:
                client.abort()
                upstream.abort()
            report("control-48MiB-buffers", baseline=baseline, stalled=stalled_rss,
                   growth_stalled=stalled_rss - baseline)
            assert result == (count, count * MIB, producer.crc)
            assert stalled_rss - baseline > 24 * MIB, "the RSS measurement does not see buffered data"
    run(go(), timeout=200)


def held_bytes(proxy) -> dict:
    """What the proxy holds in user space for its connections right now: transport write buffers,
    read buffers and messages being aggregated (inspect mode).  Called on the proxy's loop."""
    # The loop's shared read buffer counts once; a connection holds a private one only
    # while it keeps bytes between reads.
    held = {"write_buffers": 0, "read_buffers": len(proxy.worker.proxy.read_buffer.buf),
            "aggregating": 0, "links": 0}
    for link in proxy.worker.proxy.links:
        held["links"] += 1
        for endpoint in (link.client, link.upstream):
            if endpoint is None:
                continue
            if endpoint.transport is not None:
                held["write_buffers"] += endpoint.transport.get_write_buffer_size()
            held["read_buffers"] += len(endpoint.buf) if endpoint.buf is not None else 0
        if link.session is not None:
            held["aggregating"] += sum(len(h.agg or b"") for h in link.session.halves)
    return held


@pytest.mark.parametrize("mode", ["passthrough", "inspect"])
def test_backpressure_in_process_buffers(start_proxy, mode):
    """In-process (uvloop and asyncio, passthrough and inspect mode -- a subprocess cannot load a
    handler chain yet): while the producer is blocked, the proxy's own buffers for the
    connection stay within the write-buffer mark plus one message (inspect aggregates one)."""
    from .flow_ws import inspect_chain

    count = 48

    async def go():
        async with RawServer() as server:
            proxy = start_proxy(server.url, chain_for=inspect_chain if mode == "inspect" else None)
            client = await connect(proxy.port)
            upstream = await server.accept()
            producer = Producer(client, count).start()
            try:
                await producer.wait_stalled(quiet=0.5, timeout=60)
                blocked_at = producer.sent_bytes
                held = proxy.thread.call(held_bytes, proxy)
                consumer = asyncio.ensure_future(consume(upstream, count, masked=True))
                await producer.finish(timeout=120)
                result = await asyncio.wait_for(consumer, 60)
            finally:
                client.abort()
                upstream.abort()
            report(f"in-process-{mode}", blocked_after=blocked_at, **held)
            assert held["links"] == 1
            assert result == (count, count * MIB, producer.crc)
            total = held["write_buffers"] + held["read_buffers"] + held["aggregating"]
            bound = 512 * 1024 if mode == "passthrough" else 3 * MIB
            assert total < bound, held
    run(go(), timeout=200)
