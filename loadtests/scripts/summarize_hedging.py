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

import sys

from summarize_common import (DISCARD_FACTOR, by_batch_and_leg, cpu_per_req, discard,
                              errors_total, fmt, load, machine_lines, med, ms, of_kind,
                              sim_names, usage_path)

LEGS = ["direct", "plain", "hedged"]


def main(argv):
    meta, records = load(usage_path(argv, __doc__))
    runs, admin = of_kind(records, "run"), of_kind(records, "admin")

    by_batch = by_batch_and_leg(runs)  # batch -> leg -> run
    kept, dropped = discard(by_batch, "direct")

    print("# Hedging: one route with and without `hedge`, two heavy-tailed sims")
    print()
    if meta:
        print("\n".join(machine_lines(meta)))
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
        names = sim_names(meta)
        for rec in admin:
            for pool in rec.get("backends", []):
                eps = "; ".join(
                    f"{names.get(ep['address'], ep['address'])} ewma={ep.get('ewma_ms', 0):.2f} "
                    f"attempts={ep.get('attempts')} failures={ep.get('failures')}"
                    for ep in pool.get("endpoints", []))
                print(f"- {rec['leg']}: {eps}")


if __name__ == "__main__":
    main(sys.argv)
