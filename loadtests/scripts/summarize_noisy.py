#!/usr/bin/env python3
"""Summarizes a noisy-neighbour.sh results file as Markdown; also its two helpers.

usage: summarize_noisy.py RESULTS.jsonl
       summarize_noisy.py scrape ADMIN_ADDR WHEN [PID]    (one "metrics" JSON line)
       summarize_noisy.py logs GATEWAY_LOG FROM_BYTE      (one "log" JSON line)

The summary has one row per phase (per round when ROUNDS > 1):
- Good clients: sent (requests scheduled in the measured window), failed (every outcome
  cascadia-load counts as an error: non-2xx responses, transport errors, timeouts and
  requests unfinished at the end; see loadtests/src/report.rs), p50 and p99 of the 2xx
  answers from their due time, and p99 over the median p99 of the baseline phases.
- The abuser: requests started and the statuses it got back.
- Flag: FAIL when the good clients saw any failure; p99 when their p99 is above
  P99_FACTOR (meta, default 3) × the median baseline p99.
A second table shows how the abuser's connections ended and what the gateway saw over the
phase (its /metrics before and after, the sims' request counters and its log); then every
flagged phase is listed with the evidence: the failure kinds, the gateway's non-2xx answers
that the abuser did not get (so, approximately, the good clients'), the first transport
error and the gateway's warnings.

scrape: GET http://ADMIN_ADDR/metrics once; prints {"kind": "metrics", "when": WHEN,
"t": unix seconds, "m": {series: value} (every cascadia_* series except histogram buckets),
"rss_kib", "cpu_ticks" (of PID)}.
logs: reads GATEWAY_LOG from byte FROM_BYTE to its end; prints {"kind": "log", "lines",
"by_level" {level: n}, "top": [[count, "LEVEL target: message key fields"], ...] (the ten
most frequent), "examples": [first line of each of the top three]}.

Standard library only.
"""

import http.client
import json
import re
import statistics
import sys
import time
from collections import Counter

from summarize_common import fmt, load, machine_lines, ms, of_kind


# --- scrape --------------------------------------------------------------------------------

def proc_sample(pid):
    rss = ticks = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        pass
    return rss, ticks


def scrape(admin, when, pid=None):
    host, port = admin.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=2)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    metrics = {}
    for line in text.splitlines():
        if line.startswith("cascadia_") and "_bucket{" not in line:
            key, _, value = line.rpartition(" ")
            try:
                metrics[key] = float(value)
            except ValueError:
                pass
    rec = {"kind": "metrics", "when": when, "t": round(time.time(), 3), "m": metrics}
    if pid:
        rec["rss_kib"], rec["cpu_ticks"] = proc_sample(pid)
    print(json.dumps(rec))


# --- logs ----------------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# tracing_subscriber's text format: TIMESTAMP  LEVEL target: message key=value ...
LINE = re.compile(r"^\S+\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+(\S+?):\s(.*)$")
# Fields worth grouping by: they say what went wrong, not which request it was.
KEEP_FIELDS = ("side", "error", "status", "backend", "region", "reason")


def log_group(line):
    m = LINE.match(line)
    if not m:
        return "OTHER " + line[:100]
    level, target, rest = m.groups()
    words, fields = [], []
    for token in rest.split(" "):
        if "=" in token and re.match(r"^[a-z_.]+=", token):
            k, v = token.split("=", 1)
            if k in KEEP_FIELDS:
                fields.append(f"{k}={v}")
        elif not fields and not any("=" in w for w in words):
            words.append(token)
    return f"{level} {target}: {' '.join(words)} {' '.join(fields)}".strip()


def logs(path, start):
    with open(path, "rb") as f:
        f.seek(int(start))
        text = f.read().decode("utf-8", "replace")
    lines = [ANSI.sub("", ln) for ln in text.splitlines() if ln.strip()]
    by_level, groups, first = Counter(), Counter(), {}
    for line in lines:
        m = LINE.match(line)
        by_level[m.group(1) if m else "OTHER"] += 1
        g = log_group(line)
        groups[g] += 1
        first.setdefault(g, line[:400])
    top = groups.most_common(10)
    print(json.dumps({"kind": "log", "lines": len(lines), "by_level": dict(by_level),
                      "top": [[n, g] for g, n in top],
                      "examples": [first[g] for g, _ in top[:3]]}))


# --- summary -------------------------------------------------------------------------------

def keyed(records, kind):
    """(round, phase) -> record of kind; for "metrics", (round, phase, when)."""
    out = {}
    for r in of_kind(records, kind):
        key = (r.get("round"), r.get("phase"))
        if kind == "metrics":
            key += (r.get("when"),)
        out[key] = r
    return out


def metric(rec, prefix, contains=""):
    if not rec:
        return None
    return sum(v for k, v in rec["m"].items() if k.startswith(prefix) and contains in k)


def delta(before, after, prefix, contains=""):
    a, b = metric(after, prefix, contains), metric(before, prefix, contains)
    return None if a is None or b is None else a - b


def codes(statuses):
    return ", ".join(f"{c}×{n}" for c, n in sorted(statuses.items())) or "none"


def by_class(statuses):
    out = Counter()
    for code, n in statuses.items():
        out[f"{str(code)[0]}xx"] += n
    return out


def n(v):
    return "n/a" if v is None else f"{v:.0f}"


def summary(path):
    meta, records = load(path)
    meta = meta or {}
    goods = of_kind(records, "good")
    abuse, metrics, sims = keyed(records, "abuse"), keyed(records, "metrics"), keyed(records, "sims")
    backends, logrecs = keyed(records, "backends"), keyed(records, "log")
    rounds = {g.get("round") for g in goods}
    factor = float(meta.get("p99_factor", 3))
    base_p99s = [g["latency_us"]["p99"] for g in goods
                 if g["phase"].startswith("baseline") and g["latency_us"]["count"]]
    base = statistics.median(base_p99s) if base_p99s else None

    source = meta.get("abuser_source") or "127.0.0.1 (the good clients' address)"
    extra = f"; abuse.py {meta['abuse_extra']}" if meta.get("abuse_extra") else ""
    out = ["# Noisy neighbour", ""]
    out += machine_lines(meta)
    out += [f"- good clients: {meta.get('good_rate')} rps open loop over "
            f"{meta.get('good_connections')} HTTP/1.1 connections, x-api-key "
            f"`{meta.get('good_key')}`, 1 × 32 FP32 OIP rows; {meta.get('warmup')} warm-up, "
            f"{meta.get('duration')} measured per phase, {meta.get('rounds')} round(s)"
            f"{', QUICK' if meta.get('quick') == '1' else ''}",
            f"- gateway: 1 worker on CPU {meta.get('gateway_cpu')}; route `fraud` over "
            f"fraud-east (preferred) and fraud-west, rate limit {meta.get('rate_limit')}/s "
            f"(burst {meta.get('rate_burst')}) per x-api-key, max_concurrency "
            f"{meta.get('max_concurrency')}; timeouts: header {meta.get('header_read_timeout')}, "
            f"body read {meta.get('body_read_timeout')}, body total "
            f"{meta.get('body_total_timeout', 'default')}, write {meta.get('write_timeout')}",
            f"- sims and good clients on CPU {meta.get('load_cpu')}, abuser on CPU "
            f"{meta.get('abuser_cpu', meta.get('load_cpu'))} at nice {meta.get('abuser_nice')}, "
            f"from {source}{extra}; "
            f"sims {meta.get('sim_latency_ms')} ms, {meta.get('sim_workers')} workers",
            f"- baseline p99 (median of the baseline phases): "
            f"{ms(base) + ' ms' if base else 'none (no baseline phase)'}; flagged: any good "
            f"failure (FAIL), p99 above {factor:g} × baseline (p99)",
            ""]

    def label(g):
        return g["phase"] if len(rounds) <= 1 else f"r{g['round']} {g['phase']}"

    out += ["| Phase | Good sent | Good failed | p50 ms | p99 ms | p99 ÷ base "
            "| Abuser requests | Abuser statuses | Flag |",
            "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    flagged = []
    for g in goods:
        key = (g.get("round"), g["phase"])
        e = g["errors"]
        failed = e["status"] + e["transport"] + e["timeout"] + e["unfinished"]
        lat = g["latency_us"]
        p99 = lat["p99"] if lat["count"] else None
        ratio = p99 / base if p99 is not None and base else None
        flags = []
        if failed:
            flags.append("**FAIL**")
        if ratio is not None and ratio > factor:
            flags.append("**p99**")
        if flags:
            flagged.append((g, flags))
        a = abuse.get(key)
        if a is None:
            a_req, a_st = "—", "—"
        elif a.get("failed"):
            a_req, a_st = "abuser failed", "—"
        else:
            a_req, a_st = str(a["attempts"]), codes(a["statuses"])
        out.append(f"| {label(g)} | {g['sent']} | {failed} | {ms(lat['p50'] if lat['count'] else None)} "
                   f"| {ms(p99)} | {fmt(ratio, 1, '×')} | {a_req} | {a_st} | {' '.join(flags)} |")

    out += ["", "What else happened in each phase (gateway counters are deltas from before the "
            "phase to SETTLE after it, warm-up included, abuser and good clients together):", "",
            "| Phase | Good failed: non-2xx / transport / timeout / unfinished | Abuser connections ended "
            "| Gateway 2xx / 4xx / 5xx | 429 | 503 shed | Upstream failures | West sim requests "
            "| In flight after | CPU gateway / east / west, gateway RSS | Log lines (warn+) |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for g in goods:
        key = (g.get("round"), g["phase"])
        e = g["errors"]
        before, after = metrics.get(key + ("before",)), metrics.get(key + ("after",))
        a = abuse.get(key)
        ended = "—" if a is None or a.get("failed") else (
            ", ".join(f"{k} {v}" for k, v in a["ended"].items()) or "none")
        classes = " / ".join(n(delta(before, after, "cascadia_requests_total", f'"{c}xx"'))
                             for c in (2, 4, 5))
        s = sims.get(key)
        west = None if not s else s["after"].get("west", 0) - s["before"].get("west", 0)
        b = backends.get(key)
        in_flight = None if not b else sum(ep.get("in_flight", 0) for pool in b["backends"]
                                           for ep in pool["endpoints"])
        ejected = [] if not b else [pool["name"] for pool in b["backends"]
                                    if any(ep.get("ejected") for ep in pool["endpoints"])]
        procs = g.get("processes") or [{}]
        rss = procs[0].get("rss_kib")
        cpus = " / ".join(fmt(p.get("cpu_percent"), 0, "%") for p in procs)
        lg = logrecs.get(key) or {}
        warn = sum(v for k, v in (lg.get("by_level") or {}).items() if k in ("WARN", "ERROR"))
        out.append(
            f"| {label(g)} | {e['status']} / {e['transport']} / {e['timeout']} / {e['unfinished']} "
            f"| {ended} | {classes} | {n(delta(before, after, 'cascadia_rate_limited_total'))} "
            f"| {n(delta(before, after, 'cascadia_shed_total'))} "
            f"| {n(delta(before, after, 'cascadia_upstream_failures_total'))} "
            f"| {n(west)}{' (ejected: ' + ', '.join(ejected) + ')' if ejected else ''} "
            f"| {n(in_flight)} "
            f"| {cpus}, "
            f"{fmt(rss / 1024 if rss else None, 1, ' MiB')} | {warn} |")

    out += [""]
    if not flagged:
        out += ["No phase flagged: the good clients saw no failure and their p99 stayed within "
                f"{factor:g}× the baseline in every phase."]
    else:
        out += ["## Flagged phases", ""]
        for g, flags in flagged:
            key = (g.get("round"), g["phase"])
            e = g["errors"]
            before, after = metrics.get(key + ("before",)), metrics.get(key + ("after",))
            a = abuse.get(key)
            got = by_class(a["statuses"]) if a and not a.get("failed") else Counter()
            lines = [f"- **{label(g)}** ({' '.join(f.strip('*') for f in flags)}): "
                     f"{e['status']} non-2xx, {e['transport']} transport errors, "
                     f"{e['timeout']} timeouts, {e['unfinished']} unfinished; "
                     f"p99 {ms(g['latency_us']['p99'])} ms, max "
                     f"{ms(g['latency_us']['max'])} ms"]
            residual = []
            for c in (4, 5):
                d = delta(before, after, "cascadia_requests_total", f'"{c}xx"')
                if d is not None and d - got[f"{c}xx"] > 0:
                    residual.append(f"{d - got[f'{c}xx']:.0f} × {c}xx")
            if residual:
                lines.append(f"  - gateway answers of that class the abuser did not get "
                             f"(≈ the good clients'): {', '.join(residual)}")
            for k, label_ in (("cascadia_rate_limited_total", "429 rate limited"),
                              ("cascadia_shed_total", "503 shed"),
                              ("cascadia_upstream_failures_total", "upstream failures"),
                              ("cascadia_failovers_total", "failovers"),
                              ("cascadia_retries_total", "retries")):
                d = delta(before, after, k)
                if d:
                    lines.append(f"  - {label_}: {d:.0f}")
            if e.get("first_transport_error"):
                lines.append(f"  - first transport error: `{e['first_transport_error']}`")
            worst = sorted(g.get("timeline", {}).get("buckets", []),
                           key=lambda b: b.get("p99_us") or 0, reverse=True)[:3]
            if worst:
                lines.append("  - worst 1 s buckets (t s: p99 ms, errors): " + "; ".join(
                    f"{b['t_s']:.0f}: {ms(b.get('p99_us'))}, {b.get('errors', 0)}" for b in worst))
            lg = logrecs.get(key) or {}
            for count, group in (lg.get("top") or [])[:5]:
                lines.append(f"  - log ×{count}: `{group[:200]}`")
            out += lines
    if meta.get("uptime_before"):
        notes = [r for r in of_kind(records, "note") if r.get("what") == "uptime after"]
        out += ["", f"Load average: before `{meta['uptime_before']}`"
                + (f", after `{notes[-1]['value']}`" if notes else "")]
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) >= 2 and argv[1] == "scrape":
        scrape(argv[2], argv[3], argv[4] if len(argv) > 4 else None)
    elif len(argv) >= 2 and argv[1] == "logs":
        logs(argv[2], argv[3])
    elif len(argv) == 2:
        sys.stdout.write(summary(argv[1]))
    else:
        sys.exit(__doc__.strip().splitlines()[2])


if __name__ == "__main__":
    main(sys.argv)
