#!/usr/bin/env python3
"""Summarize a hedging results file (JSON lines from hedging.sh) as Markdown.

Usage: summarize_hedging.py RESULTS.jsonl

Each run line is one `cascadia-load --json` report with the extra keys `kind` ("run"),
`leg` ("direct", "plain" or "hedged"), `batch`, `sim_requests` (each sim's requests during
the leg, warm-up included), `sent_total` and `upstream_per_request`.

- batches whose direct p99 is more than 2x the median direct p99 are dropped (the host
  stalled); without a direct leg nothing is dropped;
- every figure is the median over the kept batches; errors are summed;
- "vs plain" ratios are taken within a batch, then the median over batches.

p99.9 and max are left out on purpose: on a shared 2-vCPU host they measure the host.
Standard library only.
"""

import json
import statistics
import sys
from collections import defaultdict

DISCARD_FACTOR = 2.0
LEGS = ["direct", "plain", "hedged"]


def load(path):
    meta, runs, admin = None, [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON: {e}")
            kind = rec.get("kind")
            if kind == "meta":
                meta = rec
            elif kind == "run":
                runs.append(rec)
            elif kind == "admin":
                admin.append(rec)
    return meta, runs, admin


def errors_total(run):
    e = run["errors"]
    return e["status"] + e["transport"] + e["timeout"] + e["unfinished"]


def cpu_per_req(run):
    procs = run.get("processes") or []
    return procs[0].get("cpu_us_per_req") if procs else None


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0, suffix=""):
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}{suffix}"


def ms(v):
    return fmt(v / 1000 if v is not None else None, 2)


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2])
    meta, runs, admin = load(argv[1])

    by_batch = defaultdict(dict)  # batch -> leg -> run
    for run in runs:
        by_batch[run["batch"]][run["leg"]] = run

    base = {b: legs["direct"]["latency_us"]["p99"]
            for b, legs in by_batch.items() if "direct" in legs}
    dropped = []
    if base:
        m = statistics.median(base.values())
        dropped = sorted(b for b, p99 in base.items() if p99 > DISCARD_FACTOR * m)
    kept = sorted(b for b in by_batch if b not in dropped)

    print("# Hedging: one route with and without `hedge`, two heavy-tailed sims")
    print()
    if meta:
        print(f"- machine: {meta.get('nproc')} CPUs, {meta.get('cpu_model')}, "
              f"kernel {meta.get('kernel')}")
        print(f"- date {meta.get('date')}, revision {meta.get('git_rev')}")
        print(f"- {meta.get('rate')} rps over {meta.get('connections')} connections, "
              f"warm-up {meta.get('warmup')}, window {meta.get('duration')}, "
              f"{meta.get('batches')} batch(es); gateways on CPU {meta.get('gateway_cpu')}, "
              f"sims + generator on CPU {meta.get('load_cpu')}")
        print(f"- sims: sim-a and sim-b, one pool, lognormal {meta.get('sim')}; backend "
              f"timeout {meta.get('timeout')}; hedged route: `hedge = {meta.get('hedge')}`")
        if meta.get("quick") == "1":
            print("- **QUICK run: smoke test only, the numbers are indicative**")
    print(f"- batches kept: {len(kept)} of {len(by_batch)}"
          + (f" (dropped {dropped}: direct p99 > {DISCARD_FACTOR:g}x median)"
             if dropped else ""))
    print()

    def ratio(leg, pct):
        return med([by_batch[b][leg]["latency_us"][pct] / by_batch[b]["plain"]["latency_us"][pct]
                    for b in kept
                    if leg in by_batch[b] and "plain" in by_batch[b]
                    and by_batch[b]["plain"]["latency_us"][pct]])

    header = ["leg", "runs", "achieved rps", "p50 ms", "p90 ms", "p99 ms", "p50 vs plain",
              "p99 vs plain", "errors", "gateway CPU µs/req", "upstream attempts / request",
              "pacer lag p99 µs"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for leg in LEGS:
        rs = [by_batch[b][leg] for b in kept if leg in by_batch[b]]
        if not rs:
            continue
        gw = leg != "direct"
        lag = med([r["dispatch_lag_us"]["p99"] for r in rs])
        row = [leg, str(len(rs)), fmt(med([r["achieved_rps"] for r in rs])),
               ms(med([r["latency_us"]["p50"] for r in rs])),
               ms(med([r["latency_us"]["p90"] for r in rs])),
               ms(med([r["latency_us"]["p99"] for r in rs])),
               fmt(ratio(leg, "p50"), 2, "x") if gw else "n/a",
               fmt(ratio(leg, "p99"), 2, "x") if gw else "n/a",
               str(sum(errors_total(r) for r in rs)),
               fmt(med([cpu_per_req(r) for r in rs])) if gw else "n/a",
               fmt(med([r.get("upstream_per_request") for r in rs]), 3),
               fmt(lag) + (" ⚠" if lag is not None and lag > 1000 else "")]
        print("| " + " | ".join(row) + " |")
    print()
    print("Per batch (p50 / p90 / p99 ms, gateway CPU µs/req, upstream attempts per request):")
    print()
    print("| batch | " + " | ".join(LEGS) + " |")
    print("|---:|" + "---|" * len(LEGS))
    for b in sorted(by_batch):
        cells = []
        for leg in LEGS:
            r = by_batch[b].get(leg)
            if r is None:
                cells.append("")
                continue
            lat = r["latency_us"]
            c = f"{ms(lat['p50'])} / {ms(lat['p90'])} / {ms(lat['p99'])}"
            if leg != "direct":
                c += f", {fmt(cpu_per_req(r))} µs"
            c += f", {fmt(r.get('upstream_per_request'), 3)}"
            if errors_total(r):
                c += f", {errors_total(r)} errors"
            cells.append(c)
        mark = " (dropped)" if b in dropped else ""
        print(f"| {b}{mark} | " + " | ".join(cells) + " |")
    print()
    print("direct goes straight to sim-a with no gateway: the host baseline for the discard "
          "rule, and the tail a single sim has. Upstream attempts per request = the sims' "
          "request counts over the leg ÷ requests sent (warm-up included): the hedges (and "
          "any retries) that reached a sim. Ratios are within-batch, median over batches. "
          "Gateway CPU µs/req divides by client requests, so it includes the hedged "
          "attempts' cost. ⚠ marks pacer lag p99 above 1 ms.")

    if admin:
        print()
        print("Gateway view at the end (`/admin/backends`: EWMA ms, attempts, failures):")
        print()
        names = {addr: name for name, addr in ((meta or {}).get("sims") or {}).items()}
        for rec in admin:
            for pool in rec.get("backends", []):
                eps = "; ".join(
                    f"{names.get(ep['address'], ep['address'])} ewma={ep.get('ewma_ms', 0):.2f} "
                    f"attempts={ep.get('attempts')} failures={ep.get('failures')}"
                    for ep in pool.get("endpoints", []))
                print(f"- {rec['leg']}: {eps}")


if __name__ == "__main__":
    main(sys.argv)
