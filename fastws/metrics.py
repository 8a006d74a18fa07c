"""Metrics (SPEC section 7), summed over the workers by prometheus-client's multiprocess mode.

The hot path counts nothing new: the proxy already keeps plain counters (per
connection in its parsers, per worker in ``ProxyServer``), and the handler chain
keeps calls and time per plugin.  Once a second (and once more when the worker
stops) ``WorkerMetrics.report()`` adds what changed since the last report to
prometheus-client metrics, which in multiprocess mode live in memory-mapped files
under ``PROMETHEUS_MULTIPROC_DIR`` -- one file per worker process.  The master's
admin endpoint reads them all with ``MultiProcessCollector`` and sums them.

Counters of a worker that died or was retired stay in the sum (a total does not go
back when a process goes); the open-connections gauge counts live workers only.

The master sets ``PROMETHEUS_MULTIPROC_DIR`` before it forks, and before anything
imports prometheus-client: the library chooses its storage when it is imported.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

__all__ = ["WorkerMetrics", "MasterCollector", "DIRECTIONS", "MULTIPROC_ENV", "ENABLE_ENV",
           "close_code_label", "enabled"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ENABLE_ENV = "FASTWS_METRICS_DIR"       # set (with MULTIPROC_ENV) by a master with an admin endpoint
DIRECTIONS = ("client_to_upstream", "upstream_to_client")     # frames from the client [0] / upstream [1]


def enabled() -> bool:
    """Whether this process reports metrics (a master with ``--admin`` set the directory)."""
    return bool(os.environ.get(ENABLE_ENV))


def close_code_label(code: int) -> str:
    """A close code as a label value: the registered codes as they are, the application's
    (3000-4999, chosen by the peers) folded into "3xxx"/"4xxx" so that peers cannot make series."""
    if 3000 <= code <= 3999:
        return "3xxx"
    if 4000 <= code <= 4999:
        return "4xxx"
    return str(code) if 1000 <= code <= 1015 else "other"


class WorkerMetrics:
    """One worker's metrics: reads the proxy's counters and reports their growth."""

    def __init__(self, server: Any, chains: Iterable[Any] = ()) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        registry = CollectorRegistry()         # private: exposition is the master's
        self.server = server
        self.chains = list({id(chain): chain for chain in chains if chain is not None}.values())
        self.open = Gauge("fastws_connections_open", "Client connections open now.",
                          multiprocess_mode="livesum", registry=registry)
        self.metrics = {
            "connections": Counter("fastws_connections", "Client connections accepted.",
                                   registry=registry),
            "handshakes": Counter("fastws_handshakes", "Opening handshakes answered, by HTTP status.",
                                  ["status"], registry=registry),
            "messages": Counter("fastws_messages", "WebSocket messages relayed, by direction.",
                                ["direction"], registry=registry),
            "bytes": Counter("fastws_payload_bytes", "Message payload bytes relayed, by direction.",
                             ["direction"], registry=registry),
            "drops": Counter("fastws_dropped_frames", "Frames a plugin dropped, by direction.",
                             ["direction"], registry=registry),
            "closes": Counter("fastws_closes",
                              "Sessions ended, by who ended them (client, upstream, proxy) and the "
                              "close code (1006: the connection dropped without a close frame).",
                              ["by", "code"], registry=registry),
            "handler_errors": Counter("fastws_handler_errors", "Plugin handlers that raised.",
                                      ["plugin"], registry=registry),
            "handler_calls": Counter("fastws_handler_calls", "Plugin handler calls.",
                                     ["plugin"], registry=registry),
            "handler_seconds": Counter("fastws_handler_seconds",
                                       "Time spent in plugin handlers (async ones: until done).",
                                       ["plugin"], registry=registry),
        }
        self.reported: dict[tuple, float] = {}

    def totals(self) -> dict[tuple, float]:
        """Every counter's value now: ``(metric, *labels) -> total``."""
        server = self.server
        out: dict[tuple, float] = {("connections",): server.connections_total}
        for status, count in server.handshakes.items():
            out[("handshakes", str(status))] = count
        messages, payload, drops = server.traffic()
        for i, direction in enumerate(DIRECTIONS):
            out[("messages", direction)] = messages[i]
            out[("bytes", direction)] = payload[i]
            out[("drops", direction)] = drops[i]
        for (by, code), count in server.closes.items():
            key = ("closes", by, close_code_label(code))
            out[key] = out.get(key, 0) + count
        for plugin, count in server.handler_errors_by_plugin.items():
            out[("handler_errors", plugin)] = count
        for chain in self.chains:
            for name, calls, seconds in zip(chain.names, chain.calls, chain.seconds):
                out[("handler_calls", name)] = out.get(("handler_calls", name), 0) + calls
                out[("handler_seconds", name)] = out.get(("handler_seconds", name), 0.0) + seconds
        return out

    def report(self) -> None:
        """Add what grew since the last report to the shared files: a few dozen values, after a
        walk over the open connections (the counters of a live one are its parsers')."""
        self.open.set(len(self.server.links))
        for key, total in self.totals().items():
            grown = total - self.reported.get(key, 0)
            if grown > 0:
                metric = self.metrics[key[0]]
                (metric.labels(*key[1:]) if len(key) > 1 else metric).inc(grown)
                self.reported[key] = total


class MasterCollector:
    """What only the master knows: workers by state, config generation, reloads."""

    def __init__(self, arbiter: Any) -> None:
        self.arbiter = arbiter

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        arbiter = self.arbiter
        workers = GaugeMetricFamily("fastws_workers", "Worker processes, by state.", labels=["state"])
        states = {"starting": 0, "ready": 0, "draining": 0}
        for worker in list(arbiter.workers.values()):
            states[worker.state] += 1
        for state, count in states.items():
            workers.add_metric([state], count)
        yield workers
        yield GaugeMetricFamily("fastws_config_generation",
                                "The config generation serving (1 at start, +1 per reload).",
                                value=arbiter.generation)
        reloads = CounterMetricFamily("fastws_reloads", "Reloads (SIGHUP), by result.", labels=["result"])
        for result, count in arbiter.reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        yield GaugeMetricFamily("fastws_start_time_seconds", "When the master started (Unix time).",
                                value=arbiter.started)
