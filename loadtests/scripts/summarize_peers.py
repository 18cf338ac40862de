#!/usr/bin/env python3
"""Summarize a peer-comparison results file (JSON lines from peers.sh) as Markdown.

Usage: summarize_peers.py RESULTS.jsonl

Record kinds: "run" (one `cascadia-load --json` report plus "phase" = fixed | sweep, "leg"
and "batch"), "rss" (idle RSS before any load), "idle_conns" (from idle_conns.py) and
"host" (load average). Legs: "direct" (straight to the sim) and one per proxy.

Fixed-rate runs are grouped by (connections, rate). In each group:

- batches whose direct p99 is more than 2x the median direct p99 are dropped (host stalls);
- added latency is proxy minus direct *within a batch*, then the median over kept batches;
- CPU µs/req is the proxy process's Δ(utime+stime) ÷ completed requests, median over kept
  batches; for "direct" it is the sim's;
- "× pingora" and "× nginx" divide a leg's figure by that peer's (ratio of the medians).

Capacity: for each leg, the highest sweep rate whose run had zero errors, reached 95% of the
offered rate and kept p99 under 1, 5 and 10 ms (the highest passing step, whether or not a
lower step failed). The whole sweep is printed too.

p99.9 and max are left out on purpose: on a shared 2-vCPU host they measure the host.
Standard library only.
"""

import sys
from collections import defaultdict

from summarize_common import (DISCARD_FACTOR, cpu_per_req, errors_total, fmt, load,
                              machine_lines, med, of_kind)

REFS = ("pingora", "nginx")
CAP_LIMITS_US = (1000, 5000, 10000)
# Issue 7's targets for plain pass-through.
TARGET_CPU_VS_PINGORA = 1.0
TARGET_CPU_VS_NGINX = 0.7
TARGET_ADDED_P50_US = 50
TARGET_ADDED_P99_US = 500
TARGET_RATE = 2000


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fx(v):
    """A ratio as "0.83×"."""
    return fmt(v, 2, "×")


def leg_order(meta, legs):
    peers = (meta or {}).get("peers", "cascadia nginx haproxy pingora").split()
    order = ["direct"] + peers
    return [l for l in order if l in legs] + sorted(l for l in legs if l not in order)


def fixed_groups(runs):
    """(conns, rate) -> {"kept": [batch -> leg -> run], "dropped": n}."""
    raw = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        raw[(run["connections"], run["target_rps"])][run["batch"]][run["leg"]] = run
    out = {}
    for key, batches in raw.items():
        with_direct = [b for b in batches.values() if "direct" in b]
        if not with_direct:
            continue
        m = med(b["direct"]["latency_us"]["p99"] for b in with_direct)
        kept = [b for b in with_direct if b["direct"]["latency_us"]["p99"] <= DISCARD_FACTOR * m]
        out[key] = {"kept": kept, "dropped": len(with_direct) - len(kept)}
    return out


def group_stats(kept, leg):
    """Medians for one leg over the kept batches of one group."""
    runs = [b[leg] for b in kept if leg in b]
    if not runs:
        return None

    def added(q):
        return med(b[leg]["latency_us"][q] - b["direct"]["latency_us"][q]
                   for b in kept if leg in b)

    return {
        "n": len(runs),
        "p50": med(r["latency_us"]["p50"] for r in runs),
        "p99": med(r["latency_us"]["p99"] for r in runs),
        "added_p50": added("p50") if leg != "direct" else None,
        "added_p99": added("p99") if leg != "direct" else None,
        "cpu": med(cpu_per_req(r) for r in runs),
        "rss": med((r.get("processes") or [{}])[0].get("rss_kib") for r in runs),
        "errors": sum(errors_total(r) for r in runs),
        "lag_p99": max((r.get("dispatch_lag_us") or {}).get("p99") or 0 for r in runs),
        "short": [r for r in runs if r["achieved_rps"] < 0.99 * r["target_rps"]],
    }


def sweep_ok(run, limit_us):
    return (errors_total(run) == 0 and run["achieved_rps"] >= 0.95 * run["target_rps"]
            and run["latency_us"]["p99"] < limit_us)


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2])
    meta, records = load(argv[1])
    meta = meta or {}
    runs = of_kind(records, "run")
    fixed = [r for r in runs if r.get("phase") == "fixed"]
    sweep = [r for r in runs if r.get("phase") == "sweep"]
    legs = leg_order(meta, {r["leg"] for r in runs})
    proxies = [l for l in legs if l != "direct"]

    print("# Peers: direct vs Cascadia, nginx, HAProxy and a minimal pingora proxy")
    print()
    if meta:
        for line in machine_lines(meta):
            print(line)
        print(f"- peers: nginx {meta.get('nginx_version')}; {meta.get('haproxy_version')}; "
              f"pingora {meta.get('pingora_version')} (loadtests/peers/pingora-baseline)")
        print(f"- pinning: every proxy on CPU {meta.get('gateway_cpu')} with one worker; "
              f"cascadia-sim and cascadia-load on CPU {meta.get('load_cpu')}")
        print(f"- fixed rates: {meta.get('batches')} batches; warm-up {meta.get('warmup')} "
              f"(discarded), window {meta.get('duration')}; {meta.get('rates')} rps on "
              f"{meta.get('connections')} connections, plus {meta.get('latency_rate')} rps on "
              f"1 connection; legs alternate within each batch")
        print(f"- sweep: {meta.get('sweep_rates')} rps on {meta.get('sweep_connections')} "
              f"connections, warm-up {meta.get('sweep_warmup')}, window "
              f"{meta.get('sweep_duration')}")
    for h in of_kind(records, "host"):
        print(f"- host load ({h['phase']}): {h['loadavg']}")
    print(f"- results: `{argv[1]}`")
    print()

    groups = fixed_groups(fixed)
    keys = sorted(groups, key=lambda k: (-k[0], k[1]))
    stats = {k: {leg: group_stats(groups[k]["kept"], leg) for leg in legs} for k in keys}

    # --- CPU ------------------------------------------------------------------------------
    print("## CPU µs per request of the proxy process")
    print()
    print("| conns | rate | batches kept | " + " | ".join(legs) + " | "
          + " | ".join(f"{p} × pingora | {p} × nginx" for p in proxies if p not in REFS)
          + " |")
    ncols = 3 + len(legs) + 2 * len([p for p in proxies if p not in REFS])
    print("|" + "---:|" * ncols)
    for k in keys:
        s = stats[k]
        cells = [fmt(s[l]["cpu"], 1) if s[l] else "n/a" for l in legs]
        rcells = []
        for p in proxies:
            if p in REFS:
                continue
            for ref in REFS:
                rcells.append(fx(ratio(s[p]["cpu"] if s[p] else None,
                                       s[ref]["cpu"] if s.get(ref) else None)))
        n = len(groups[k]["kept"])
        print(f"| {k[0]} | {k[1]:g} | {n}/{n + groups[k]['dropped']} | "
              + " | ".join(cells) + " | " + " | ".join(rcells) + " |")
    print()
    print("The direct column is the sim's own CPU per request (what one HTTP/1.1 hop costs "
          "a minimal hyper server on the load core).")
    print()
    print("CPU relative to each reference, per proxy (median over kept batches):")
    print()
    print("| conns | rate | leg | CPU µs/req | × pingora | × nginx |")
    print("|---:|---:|---|---:|---:|---:|")
    for k in keys:
        s = stats[k]
        for p in proxies:
            if not s[p]:
                continue
            print(f"| {k[0]} | {k[1]:g} | {p} | {fmt(s[p]['cpu'], 1)} "
                  f"| {fx(ratio(s[p]['cpu'], s['pingora']['cpu'] if s.get('pingora') else None))} "
                  f"| {fx(ratio(s[p]['cpu'], s['nginx']['cpu'] if s.get('nginx') else None))} |")
    print()

    # --- latency --------------------------------------------------------------------------
    print("## Added latency vs direct (µs)")
    print()
    print("| conns | rate | leg | p50 | p99 | added p50 | added p99 | added p50 × pingora "
          "| added p50 × nginx | added p99 × pingora | added p99 × nginx | errors |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in keys:
        s = stats[k]
        for leg in legs:
            if not s[leg]:
                continue
            x = s[leg]

            def r(q, ref):
                return fx(ratio(x[q], s[ref][q] if s.get(ref) else None)) if leg != "direct" else ""

            print(f"| {k[0]} | {k[1]:g} | {leg} | {fmt(x['p50'])} | {fmt(x['p99'])} "
                  f"| {fmt(x['added_p50']) if leg != 'direct' else ''} "
                  f"| {fmt(x['added_p99']) if leg != 'direct' else ''} "
                  f"| {r('added_p50', 'pingora')} | {r('added_p50', 'nginx')} "
                  f"| {r('added_p99', 'pingora')} | {r('added_p99', 'nginx')} | {x['errors']} |")
    print()
    print("Latencies from each request's scheduled time (open loop, corrected for coordinated "
          "omission). Added = leg − direct in the same batch, median over kept batches. "
          "Ratios of small differences are noisy; read them with the absolute figures.")
    print()

    # --- capacity -------------------------------------------------------------------------
    by_leg = defaultdict(dict)
    for r in sweep:
        by_leg[r["leg"]][r["target_rps"]] = r
    if sweep:
        print("## Capacity: highest sweep rate with zero errors and p99 under the limit")
        print()
        print("| leg | p99 < 1 ms | p99 < 5 ms | p99 < 10 ms | (10 ms) × pingora "
              "| (10 ms) × nginx | CPU µs/req at that rate |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        caps = {}
        for leg in legs:
            caps[leg] = [max((rate for rate, r in by_leg[leg].items() if sweep_ok(r, lim)),
                             default=None) for lim in CAP_LIMITS_US]
        for leg in legs:
            c = caps[leg]
            cpu = cpu_per_req(by_leg[leg][c[2]]) if c[2] is not None else None
            print(f"| {leg} | " + " | ".join(fmt(v) if v else "none" for v in c)
                  + f" | {fx(ratio(c[2], caps.get('pingora', [None] * 3)[2]))}"
                  f" | {fx(ratio(c[2], caps.get('nginx', [None] * 3)[2]))} | {fmt(cpu, 1)} |")
        print()
        print("The direct leg shows the ceiling of the load side (sim and generator share one "
              "core): a proxy cannot be measured above it.")
        print()
        print("Whole sweep: p99 µs / CPU µs per request / errors (a blank cell: the leg had "
              "left the sweep).")
        print()
        rates = sorted({r["target_rps"] for r in sweep})
        print("| rate | " + " | ".join(legs) + " |")
        print("|---:|" + "---|" * len(legs))
        for rate in rates:
            cells = []
            for leg in legs:
                r = by_leg[leg].get(rate)
                if r is None:
                    cells.append("")
                    continue
                mark = "" if sweep_ok(r, 10000) else " ✗"
                short = (f", {r['achieved_rps']:.0f} rps"
                         if r["achieved_rps"] < 0.95 * r["target_rps"] else "")
                cells.append(f"{r['latency_us']['p99']} / {fmt(cpu_per_req(r), 1)} / "
                             f"{errors_total(r)}{short}{mark}")
            print(f"| {rate:g} | " + " | ".join(cells) + " |")
        print()

    # --- memory ---------------------------------------------------------------------------
    idle = {r["leg"]: r["rss_kib"] for r in of_kind(records, "rss") if r.get("phase") == "idle"}
    conns = {r["leg"]: r for r in of_kind(records, "idle_conns")}
    top = max(keys, key=lambda k: (k[0], k[1])) if keys else None
    print("## Memory (RSS, MiB)")
    print()
    n_idle = next(iter(conns.values()))["connections"] if conns else 0
    print(f"| leg | idle, before load | steady ({top[1]:g} rps × {top[0]}) | with {n_idle} idle "
          "connections | still open | after closing them | KiB per idle connection "
          "| (with conns) × pingora | (with conns) × nginx |" if top else "| leg | idle |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def mib(kib):
        return fmt(kib / 1024 if kib is not None else None, 1)

    def held(leg):
        c = conns.get(leg)
        return next(iter(c["rss_kib"].values())) if c else None

    for leg in legs:
        c = conns.get(leg)
        steady = stats[top][leg]["rss"] if top and stats[top].get(leg) else None
        with_c = held(leg)
        after = next(iter(c["rss_after_close_kib"].values())) if c else None
        per = (with_c - steady) / c["alive"] if c and c["alive"] and with_c and steady else None
        print(f"| {leg} | {mib(idle.get(leg))} | {mib(steady)} | {mib(with_c)} "
              f"| {c['alive'] if c else 'n/a'}/{c['opened'] if c else 'n/a'} | {mib(after)} "
              f"| {fmt(per, 1)} | {fx(ratio(with_c, held('pingora')))} "
              f"| {fx(ratio(with_c, held('nginx')))} |")
    for leg, c in conns.items():
        if c.get("failed"):
            print(f"- {leg}: {c['failed']} of {c['connections']} connections failed "
                  f"(first: {c['first_error']})")
    print()
    print("KiB per idle connection = (RSS with the connections − steady RSS) ÷ connections "
          "still open. \"still open\" counts connections the proxy had not closed after the "
          "settle time.")
    print()

    # --- targets --------------------------------------------------------------------------
    if "cascadia" in legs:
        print("## Issue 7 targets (Cascadia, plain pass-through)")
        print()
        for k in keys:
            s = stats[k]
            c = s.get("cascadia")
            if not c:
                continue
            parts = []
            for ref, limit in (("pingora", TARGET_CPU_VS_PINGORA), ("nginx", TARGET_CPU_VS_NGINX)):
                rv = ratio(c["cpu"], s[ref]["cpu"] if s.get(ref) else None)
                if rv is None:
                    continue
                ok = "met" if rv <= limit else f"missed by {(rv / limit - 1) * 100:.0f}%"
                parts.append(f"CPU {fx(rv)} {ref}'s (target ≤ {limit:g}×: {ok})")
            if k == (max(kk[0] for kk in keys), TARGET_RATE):
                for q, limit in (("added_p50", TARGET_ADDED_P50_US), ("added_p99", TARGET_ADDED_P99_US)):
                    v = c[q]
                    ok = "met" if v is not None and v <= limit else f"missed by {fmt(v - limit)} µs"
                    parts.append(f"{q.replace('_', ' ')} {fmt(v)} µs (target ≤ {limit}: {ok})")
            print(f"- {k[1]:g} rps × {k[0]}: " + "; ".join(parts))
        print()

    # --- warnings -------------------------------------------------------------------------
    dropped = sum(g["dropped"] for g in groups.values())
    print(f"Dropped {dropped} batch(es) whose direct p99 exceeded {DISCARD_FACTOR:g}× the "
          "median direct p99 for that rate.")
    for k in keys:
        for leg in legs:
            x = stats[k][leg]
            if not x:
                continue
            for r in x["short"]:
                print(f"- warning: {r['label']} at {k[1]:g} rps × {k[0]}: achieved only "
                      f"{r['achieved_rps']:.0f} rps")
            if x["lag_p99"] > 1000:
                print(f"- warning: {leg} at {k[1]:g} rps × {k[0]}: generator pacer p99 lag up to "
                      f"{x['lag_p99']} µs (generator or host stalled)")


if __name__ == "__main__":
    main(sys.argv)
