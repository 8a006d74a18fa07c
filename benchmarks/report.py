"""Print the markdown tables of a ``bench_codec.py`` run.

Usage::

    pytest benchmarks/bench_codec.py --benchmark-json=out.json
    python benchmarks/report.py out.json [--stat median|min]

Prints the machine of the run (recorded in the JSON by ``benchmarks/conftest.py``),
then per payload size and mode the frames/s and GB/s of every contender and the
ratio fastws-c ÷ contender (> 1: fastws is faster), then masking and frame
building, then the goals of the codec issue, each marked met or missed.

Rates come from the chosen statistic of the per-round times (median by
default); GB/s is 10**9 payload bytes a second (headers not counted).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

GOAL_SCAN_FPS = 20e6          # 16 B client frames/s in scan mode (<= 50 ns a frame)
GOAL_EVENT_GBPS_64K = 5.0     # GB/s at 64 KiB frames, including unmasking
GOAL_RATIO = {"picows": 1.0, "aiohttp-c": 1.0, "websockets": 3.0, "wsproto": 20.0}

PARSE_PEERS = ("picows", "aiohttp-c", "websockets", "wsproto", "fastws-py")
COPYING_PEERS = ("aiohttp-c", "websockets", "wsproto")


def size_label(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "–"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.3g}"


def fmt_ns(t: float | None) -> str:
    if t is None:
        return "–"
    ns = t * 1e9
    if ns >= 1e6:
        return f"{ns / 1e6:.3g} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.3g} µs"
    return f"{ns:.3g} ns"


def fmt_gbps(x: float | None) -> str:
    return "–" if x is None else (f"{x:.3g}" if x < 1000 else f"{x:,.0f}")


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "–"
    return f"**{x:.2f}×**" if x < 1 else f"{x:.2f}×" if x < 100 else f"{x:.0f}×"


class Result:
    def __init__(self, bench: dict, stat: str):
        info = bench["extra_info"]
        self.kind, self.mode, self.impl, self.size = info["kind"], info["mode"], info["impl"], info["size"]
        self.frames, self.payload_bytes = info["frames"], info["payload_bytes"]
        self.extra = info
        self.time = bench["stats"][stat]            # seconds a round / iteration
        self.rounds = bench["stats"]["rounds"]

    @property
    def fps(self) -> float:
        return self.frames / self.time

    @property
    def ns_per_frame(self) -> float:
        return self.time / self.frames

    @property
    def gbps(self) -> float:
        return self.payload_bytes / self.time / 1e9


def load(path: str, stat: str):
    with open(path) as f:
        doc = json.load(f)
    results = [Result(b, stat) for b in doc["benchmarks"] if "kind" in b.get("extra_info", {})]
    table = {(r.kind, r.mode, r.impl, r.size): r for r in results}
    return doc, table


def machine_section(doc: dict) -> list[str]:
    mi = doc.get("machine_info", {})
    fw = mi.get("fastws", {})
    codec = fw.get("codec", {})
    versions = fw.get("versions", {})
    picows_mask = sorted({
        b["extra_info"].get("mask_impl") for b in doc["benchmarks"]
        if b.get("extra_info", {}).get("impl") == "picows" and b["extra_info"].get("mask_impl")
    })
    lines = ["### Machine", ""]
    cpu = fw.get("cpu_model") or mi.get("cpu", {}).get("brand_raw", "unknown")
    lines.append(f"- CPU: {cpu}"
                 + (f" (family/model/stepping {fw['family_model_stepping']})"
                    if fw.get("family_model_stepping") else "")
                 + f", {fw.get('logical_cpus', '?')} logical CPUs"
                 + (f", {float(fw['cpu_mhz']):.0f} MHz" if fw.get("cpu_mhz") else "")
                 + (", virtual machine" if fw.get("hypervisor") else "")
                 + (f"; caches {', '.join(fw['caches_cpu0'])}" if fw.get("caches_cpu0") else "")
                 + (f"; flags {' '.join(fw['cpu_flags'])}" if fw.get("cpu_flags") else ""))
    kernel, system = fw.get("kernel", mi.get("release", "?")), fw.get("os", mi.get("system", "?"))
    lines.append(f"- Kernel: {kernel} ({system})")
    lines.append(f"- Python: {fw.get('python', mi.get('python_version', '?'))}, built with "
                 f"{fw.get('python_compiler', mi.get('python_compiler', '?'))}")
    if codec.get("compiled"):
        lines.append(f"- fastws._codec: Cython {versions.get('Cython', '?')}, "
                     f"{codec.get('compiler') or 'compiler unknown'}, CFLAGS {codec.get('cflags', '?')}"
                     + (f" (built {codec['so_mtime']}, sha256 {codec['so_sha256']}…)"
                        if codec.get("so_mtime") else ""))
    else:
        lines.append(f"- fastws._codec: **not built** ({codec.get('import_error', '')}); "
                     "fastws-c rows missing")
    peers = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "Cython" and v)
    lines.append(f"- Peers and tools: {peers}"
                 + (f"; picows masks with {', '.join(picows_mask)}" if picows_mask else ""))
    loads = [(when, fw.get(f"loadavg_at_{when}")) for when in ("start", "end")]
    lines.append(f"- Run: {doc.get('datetime', '?')}" + "".join(
        f", load average at {when} {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}" for when, la in loads if la))
    lines.append("")
    return lines


def ratio(table, key_fast, key_peer) -> float | None:
    a, b = table.get(key_fast), table.get(key_peer)
    return None if a is None or b is None else b.time / a.time


def vs(table, kind: str, fast_mode: str, peer_mode: str, peer: str, size: int) -> float | None:
    """fastws-c in ``fast_mode`` ÷ ``peer`` in ``peer_mode``: the peer's time over fastws-c's."""
    return ratio(table, (kind, fast_mode, "fastws-c", size), (kind, peer_mode, peer, size))


def parse_section(table, sizes) -> list[str]:
    lines = ["### Parsing (one stream of masked client frames a round)", ""]
    # The ratio table first: what the goals are judged on.
    head = "| frame | scan: frames/s | scan: ns/frame | event: frames/s | event: GB/s | " + \
        " | ".join(f"÷ {p}" for p in PARSE_PEERS) + " |"
    lines += [head, "|" + "---|" * (5 + len(PARSE_PEERS))]
    for size in sizes:
        scan = table.get(("parse", "scan", "fastws-c", size))
        event = table.get(("parse", "event", "fastws-c", size))
        cells = [
            size_label(size),
            fmt_rate(scan.fps) if scan else "–",
            fmt_ns(scan.ns_per_frame) if scan else "–",
            fmt_rate(event.fps) if event else "–",
            fmt_gbps(event.gbps) if event else "–",
        ]
        for peer in PARSE_PEERS:
            cells.append(fmt_ratio(vs(table, "parse", "event", "event", peer, size)))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Ratios: fastws-c event mode ÷ the peer (time of the peer ÷ time of fastws-c; "
              "> 1: fastws faster). fastws-py is fastws's own pure-Python codec.", ""]

    # Everything, per size.
    lines += ["| frame | contender | mode | time/stream | ns/frame | frames/s | GB/s | fastws-c ÷ this |",
              "|---|---|---|---|---|---|---|---|"]
    order = [("fastws-c", "scan"), ("fastws-c", "event"), ("fastws-c", "event_copy"),
             ("fastws-py", "scan"), ("fastws-py", "event"),
             ("picows", "event"), ("aiohttp-c", "event"), ("websockets", "event"), ("wsproto", "event"),
             ("memcpy", "copy")]
    for size in sizes:
        for impl, mode in order:
            r = table.get(("parse", mode, impl, size))
            if r is None:
                continue
            if impl == "fastws-c" or impl == "memcpy":
                rel = "–"
            else:
                # Like with like: scan with scan, event with event, copies with copies.
                fast_mode = "event_copy" if impl in COPYING_PEERS else mode
                rel = fmt_ratio(vs(table, "parse", fast_mode, mode, impl, size))
                if impl in COPYING_PEERS:
                    rel += " (vs event_copy)"
            cells = [size_label(size), impl, mode, fmt_ns(r.time), fmt_ns(r.ns_per_frame),
                     fmt_rate(r.fps), fmt_gbps(r.gbps), rel]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "scan GB/s counts payload bytes walked past, not touched: scan reads only headers. "
              "memcpy is the untimed setup copy of fastws event mode and picows (the stream into the "
              "parse buffer, where recv_into would put it), timed on its own for reference.", ""]
    return lines


def mask_section(table, sizes) -> list[str]:
    lines = ["### Masking (GB/s, one call a iteration)", ""]
    cols = [("fastws-c", "copy"), ("fastws-c", "inplace"), ("websockets-c", "copy"), ("aiohttp-c", "inplace"),
            ("fastws-py", "copy"), ("fastws-py", "inplace")]
    lines.append("| size | " + " | ".join(f"{i} ({m})" for i, m in cols)
                 + " | copy: fastws-c ÷ websockets-c | in place: fastws-c ÷ aiohttp-c"
                 + " | fastws-c ÷ fastws-py |")
    lines.append("|" + "---|" * (len(cols) + 4))
    for size in sizes:
        cells = [size_label(size)]
        for impl, mode in cols:
            r = table.get(("mask", mode, impl, size))
            cells.append(fmt_gbps(r.gbps) if r else "–")
        cells.append(fmt_ratio(vs(table, "mask", "copy", "copy", "websockets-c", size)))
        cells.append(fmt_ratio(vs(table, "mask", "inplace", "inplace", "aiohttp-c", size)))
        cells.append(fmt_ratio(vs(table, "mask", "copy", "copy", "fastws-py", size)))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def build_section(table, sizes) -> list[str]:
    lines = ["### Frame building (time a frame; ratio fastws-c ÷ peer)", ""]
    peers = ("picows", "websockets", "wsproto", "fastws-py")
    lines.append("| frame | fastws-c | " + " | ".join(peers) + " | "
                 + " | ".join(f"÷ {p}" for p in peers) + " |")
    lines.append("|" + "---|" * (2 + 2 * len(peers)))
    for mode in ("masked", "unmasked"):
        for size in sizes:
            fast = table.get(("build", mode, "fastws-c", size))
            cells = [f"{size_label(size)} {mode}", fmt_ns(fast.time) if fast else "–"]
            for p in peers:
                r = table.get(("build", mode, p, size))
                cells.append(fmt_ns(r.time) if r else "–")
            for p in peers:
                cells.append(fmt_ratio(vs(table, "build", mode, mode, p, size)))
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def goals_section(table, sizes) -> list[str]:
    lines = ["### Goals", ""]

    def mark(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**missed**")

    scan16 = table.get(("parse", "scan", "fastws-c", 16))
    if scan16:
        lines.append(f"- scan, 16 B frames: {fmt_rate(scan16.fps)} frames/s = "
                     f"{fmt_ns(scan16.ns_per_frame)} a frame "
                     f"(goal ≥ 20 M/s, ≤ 50 ns): {mark(scan16.fps >= GOAL_SCAN_FPS)} "
                     f"({scan16.fps / GOAL_SCAN_FPS:.2f}× the goal)")
    ev64 = table.get(("parse", "event", "fastws-c", 65536))
    if ev64:
        lines.append(f"- 64 KiB frames including unmasking (event mode): {ev64.gbps:.3g} GB/s "
                     f"(goal ≥ 5 GB/s): {mark(ev64.gbps >= GOAL_EVENT_GBPS_64K)} "
                     f"({ev64.gbps / GOAL_EVENT_GBPS_64K:.2f}× the goal)")
    for peer, goal in GOAL_RATIO.items():
        rs = {s: vs(table, "parse", "event", "event", peer, s) for s in sizes}
        got = {s: r for s, r in rs.items() if r is not None}
        if not got:
            lines.append(f"- event mode vs {peer}: not measured")
            continue
        worst = min(got, key=got.get)
        ok = all(r >= goal for r in got.values())
        line = (f"- event mode vs {peer} (goal ≥ {goal:g}× at every size): {mark(ok)}; lowest "
                f"{got[worst]:.2f}× at {size_label(worst)} ("
                + ", ".join(f"{size_label(s)} {r:.2f}×" for s, r in got.items()) + ")")
        if peer in COPYING_PEERS:
            # The peer hands out a bytes copy of every payload; so does fastws's event_copy row.
            copies = {s: vs(table, "parse", "event_copy", "event", peer, s) for s in got}
            copies = {s: r for s, r in copies.items() if r is not None}
            if copies:
                line += ("; with a bytes copy of every payload, as " + peer + " makes: lowest "
                         f"{min(copies.values()):.2f}×")
        lines.append(line)
    lines.append("")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="the --benchmark-json output of benchmarks/bench_codec.py")
    ap.add_argument("--stat", default="median", choices=("median", "min", "mean"),
                    help="statistic of the round times to report (default: median)")
    args = ap.parse_args(argv)
    doc, table = load(args.json, args.stat)
    sizes = defaultdict(set)
    for kind, _mode, _impl, size in table:
        sizes[kind].add(size)
    out = machine_section(doc)
    out.append(f"Statistic: {args.stat} of the rounds. GB = 10^9 bytes of payload.")
    out.append("")
    out += goals_section(table, sorted(sizes["parse"]))
    out += parse_section(table, sorted(sizes["parse"]))
    out += mask_section(table, sorted(sizes["mask"]))
    out += build_section(table, sorted(sizes["build"]))
    sys.stdout.write("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
