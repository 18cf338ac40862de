#!/usr/bin/env python3
"""Summarize a TLS-termination results file (JSON lines from tls.sh) as Markdown.

Usage: summarize_tls.py RESULTS.jsonl
       summarize_tls.py client ADDR PATH BODY_FILE N [--tls-ca CA]   (tls.sh's callgrind client)
       summarize_tls.py total CALLGRIND_OUT                          (the Ir total of a file)

Record kinds: "run" (one `cascadia-load --json` report plus "phase" = keepalive | handshake,
"leg" and "batch"), "callgrind" (leg, n, ir, client), "rss" and "host".

Keep-alive runs are grouped by (connections, rate). In each group the CPU µs/request of a
leg is the median over the batches of (utime+stime of the proxy) ÷ completed requests;
min-max across batches shows the noise. A batch whose cascadia-plain p99 is more than 2x the
group's median cascadia-plain p99 is dropped (the discard rule of BENCHMARKING.md, with the
plaintext gateway as the baseline). Ratios are ratios of the medians; "per batch" gives the
range of the same ratio computed inside each batch (legs of one batch ran minutes apart at
most).

Handshake runs (`--connection-per-request`): every request opens a new connection, so CPU
µs/request is CPU per new connection (TCP accept + request + close, plus the full TLS
handshake on the tls legs). "TLS handshake" is tls − plain of the same proxy.

Callgrind: instructions per request = (Ir(N2) − Ir(N1)) / (N2 − N1), user space only.
Standard library only.
"""

import json
import socket
import ssl
import statistics
import sys
import time
from collections import defaultdict

from summarize_common import DISCARD_FACTOR, cpu_per_req, errors_total, fmt, load, machine_lines, med, total_ir

ORDER = ("cascadia-plain", "cascadia-tls", "nginx-tls", "nginx-plain")
BASELINE = "cascadia-plain"
RATIOS = (("cascadia-tls", "cascadia-plain"), ("cascadia-tls", "nginx-tls"),
          ("nginx-tls", "nginx-plain"), ("cascadia-plain", "nginx-plain"))


# --- client ----------------------------------------------------------------------------------

def read_answer(sock, buf):
    """One HTTP/1.1 response (content-length or chunked): (status line, rest of buf)."""
    def more():
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        return chunk
    while b"\r\n\r\n" not in buf:
        buf += more()
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
    if fields.get("transfer-encoding", "").lower() == "chunked":
        while True:
            while b"\r\n" not in buf:
                buf += more()
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                buf += more()
            buf = buf[size + 2:]
            if size == 0:
                return lines[0], buf
    length = int(fields.get("content-length", "0"))
    while len(buf) < length:
        buf += more()
    return lines[0], buf[length:]


def client(addr, path, body_file, n, ca=None):
    """N POSTs on one keep-alive connection, each after the previous answer; TLS with ca."""
    host, port = addr.rsplit(":", 1)
    with open(body_file, "rb") as f:
        body = f.read()
    request = (f"POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n"
               f"content-length: {len(body)}\r\n\r\n").encode() + body
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = {"requests": 0, "ok": 0}
    if ca:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(sock, server_hostname=host)
        out["tls"] = {"version": sock.version(), "cipher": sock.cipher()[0],
                      "alpn": sock.selected_alpn_protocol()}
    buf = b""
    started = time.monotonic()
    try:
        for i in range(n):
            sock.sendall(request)
            out["requests"] += 1
            status, buf = read_answer(sock, buf)
            if status.split(" ")[1:2] == ["200"]:
                out["ok"] += 1
            elif "first_error" not in out:
                out["first_error"] = {"index": i, "status": status}
    except (OSError, ValueError) as e:
        out["error"] = str(e)
    out["seconds"] = round(time.monotonic() - started, 3)
    sock.close()
    print(json.dumps(out))
    return 0 if out["ok"] == n else 1


# --- summary ---------------------------------------------------------------------------------

def legs_in(meta, seen):
    listed = (meta.get("legs") or "").split()
    legs = [leg for leg in ORDER if leg in seen]
    return legs + [leg for leg in listed + sorted(seen) if leg not in legs]


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{min(values):.1f}–{max(values):.1f}"


def ratio(a, b):
    return a / b if a is not None and b else None


def group_runs(runs):
    """(conns, rate) -> batch -> leg -> run."""
    groups = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        groups[(r["connections"], r["target_rps"])][r["batch"]][r["leg"]] = r
    return groups


def discard(by_batch):
    base = {b: legs[BASELINE]["latency_us"]["p99"] for b, legs in by_batch.items() if BASELINE in legs}
    if not base:
        return sorted(by_batch), []
    m = statistics.median(base.values())
    dropped = sorted(b for b, p99 in base.items() if p99 > DISCARD_FACTOR * m)
    return sorted(b for b in by_batch if b not in dropped), dropped


def table(out, phase, runs, legs, per_conn=False):
    groups = group_runs(runs)
    medians = {}
    unit = "CPU µs / new connection" if per_conn else "CPU µs / request"
    out.append(f"| rate × connections | leg | {unit}, median (min–max) | p50 µs | p99 µs "
               f"| achieved rps | errors | batches |")
    out.append("|---|---|---|---|---|---|---|---|")
    notes = []
    for (conns, rate) in sorted(groups, key=lambda k: (k[1], k[0])):
        by_batch = groups[(conns, rate)]
        kept, dropped = discard(by_batch)
        if dropped:
            notes.append(f"{rate:g} rps × {conns}: dropped batch(es) {dropped} "
                         f"({BASELINE} p99 > {DISCARD_FACTOR:g}× median)")
        for leg in legs:
            rs = [by_batch[b][leg] for b in kept if leg in by_batch[b]]
            if not rs:
                continue
            cpus = [cpu_per_req(r) for r in rs]
            medians[(conns, rate, leg)] = med(cpus)
            out.append(
                f"| {rate:g} × {conns} | {leg} | **{fmt(med(cpus), 1)}** ({spread(cpus)}) "
                f"| {fmt(med(r['latency_us']['p50'] for r in rs))} "
                f"| {fmt(med(r['latency_us']['p99'] for r in rs))} "
                f"| {fmt(med(r['achieved_rps'] for r in rs))} "
                f"| {sum(errors_total(r) for r in rs)} | {len(rs)} |")
    out.append("")
    out.extend(f"- {n}" for n in notes)
    if notes:
        out.append("")
    # Ratios.
    out.append("| rate × connections | " + " | ".join(f"{a} ÷ {b}" for a, b in RATIOS)
               + " | cascadia tls − plain µs | nginx tls − plain µs |")
    out.append("|---|" + "---|" * (len(RATIOS) + 2))
    for (conns, rate) in sorted(groups, key=lambda k: (k[1], k[0])):
        by_batch = groups[(conns, rate)]
        kept, _ = discard(by_batch)
        cells = []
        for a, b in RATIOS:
            r = ratio(medians.get((conns, rate, a)), medians.get((conns, rate, b)))
            per_batch = [ratio(cpu_per_req(by_batch[k][a]), cpu_per_req(by_batch[k][b]))
                         for k in kept if a in by_batch[k] and b in by_batch[k]]
            per_batch = [x for x in per_batch if x is not None]
            rng = f" ({min(per_batch):.2f}–{max(per_batch):.2f})" if len(per_batch) > 1 else ""
            cells.append(f"**{fmt(r, 2)}**{rng}" if r is not None else "n/a")
        for proxy in ("cascadia", "nginx"):
            t, p = medians.get((conns, rate, f"{proxy}-tls")), medians.get((conns, rate, f"{proxy}-plain"))
            cells.append(fmt(t - p, 1) if t is not None and p is not None else "n/a")
        out.append(f"| {rate:g} × {conns} | " + " | ".join(cells) + " |")
    out.append("")


def summarize(path):
    meta, records = load(path)
    meta = meta or {}
    runs = [r for r in records if r.get("kind") == "run"]
    legs = legs_in(meta, {r["leg"] for r in runs} | {r["leg"] for r in records if r.get("kind") == "callgrind"})
    out = ["# TLS termination (tls.sh)", ""]
    out += machine_lines(meta)
    out.append(f"- settings: {meta.get('batches')} batches; keep-alive rates {meta.get('rates')} rps "
               f"on {meta.get('connections')} connections; new-connection runs at "
               f"{meta.get('handshake_rate')} rps on {meta.get('handshake_connections')}; "
               f"warm-up {meta.get('warmup')}, window {meta.get('duration')}; proxies on CPU "
               f"{meta.get('gateway_cpu')}, sim + generator on CPU {meta.get('load_cpu')}")
    out.append(f"- certificate: {meta.get('key_type')} ({meta.get('cert_info')}); "
               f"rustls {meta.get('rustls_version')} (ring); {meta.get('nginx_version')}; "
               f"AES-NI {meta.get('aes_ni')}")
    if meta.get("negotiated_tls"):
        out.append(f"- negotiated (openssl s_client): {meta['negotiated_tls'].rstrip(' |')}")
    hosts = [r for r in records if r.get("kind") == "host"]
    if hosts:
        out.append("- load average: " + "; ".join(f"{h['phase']} {h['loadavg']}" for h in hosts))
    out.append("")

    keep = [r for r in runs if r.get("phase") == "keepalive"]
    if keep:
        out += ["## Keep-alive (handshake amortized): proxy CPU per request", ""]
        table(out, "keepalive", keep, legs)
    hs = [r for r in runs if r.get("phase") == "handshake"]
    if hs:
        out += ["## A new connection per request (full TLS handshake on the tls legs)", ""]
        table(out, "handshake", hs, legs, per_conn=True)

    cg = [r for r in records if r.get("kind") == "callgrind"]
    if cg:
        out += ["## Callgrind: user-space instructions per request (one keep-alive connection)", ""]
        by_leg = defaultdict(dict)
        for r in cg:
            by_leg[r["leg"]][r["n"]] = r["ir"]
        per_req = {}
        out.append("| leg | Ir(N1) | Ir(N2) | N1 → N2 | instructions / request |")
        out.append("|---|---|---|---|---|")
        for leg in legs:
            ns = sorted(by_leg.get(leg, {}))
            if len(ns) < 2:
                continue
            n1, n2 = ns[0], ns[-1]
            per_req[leg] = (by_leg[leg][n2] - by_leg[leg][n1]) / (n2 - n1)
            out.append(f"| {leg} | {by_leg[leg][n1]:,} | {by_leg[leg][n2]:,} | {n1} → {n2} "
                       f"| **{per_req[leg]:,.0f}** |")
        out.append("")
        cells = []
        for a, b in RATIOS:
            if a in per_req and b in per_req:
                cells.append(f"{a} ÷ {b} = **{per_req[a] / per_req[b]:.2f}**")
        for proxy in ("cascadia", "nginx"):
            t, p = per_req.get(f"{proxy}-tls"), per_req.get(f"{proxy}-plain")
            if t is not None and p is not None:
                cells.append(f"{proxy} tls − plain = {t - p:,.0f} instructions")
        if cells:
            out.append("- " + "; ".join(cells))
            out.append("")

    rss = [r for r in records if r.get("kind") == "rss"]
    if rss:
        by = defaultdict(dict)
        for r in rss:
            by[r["leg"]][r["phase"]] = r["rss_kib"]
        out.append("RSS KiB (idle before any load → after part 1): " + "; ".join(
            f"{leg} {by[leg].get('idle', '?')} → {by[leg].get('after', '?')}" for leg in legs if leg in by))
        out.append("")
    return "\n".join(out)


def main(argv):
    if len(argv) >= 6 and argv[1] == "client":
        ca = None
        if len(argv) == 8 and argv[6] == "--tls-ca":
            ca = argv[7]
        elif len(argv) != 6:
            sys.exit(__doc__.strip().splitlines()[3])
        return client(argv[2], argv[3], argv[4], int(argv[5]), ca)
    if len(argv) == 3 and argv[1] == "total":
        print(total_ir(argv[2]))
        return 0
    if len(argv) != 2 or argv[1].startswith("-"):
        sys.exit(__doc__.strip().splitlines()[2])
    print(summarize(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
