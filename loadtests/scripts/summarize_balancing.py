#!/usr/bin/env python3
"""Summarize a balancing results file (JSON lines from balancing.sh) as Markdown.

Usage: summarize_balancing.py RESULTS.jsonl

Each run line is one `cascadia-load --json` report with the extra keys `kind` ("run"),
`leg` ("direct-fast", "p2c-ewma", "round-robin" or "least-request"), `batch`,
`sim_requests` and `sim_share` (each sim's requests during the leg, warm-up included).

- batches whose direct-fast p99 is more than 2x the median direct-fast p99 are dropped
  (the host stalled); without a direct-fast leg nothing is dropped;
- every figure is the median over the kept batches; errors are summed;
- "vs p2c" ratios are taken within a batch, then the median over batches.

p99.9 and max are left out on purpose: on a shared 2-vCPU host they measure the host.
Standard library only.
"""

import sys

from summarize_common import (DISCARD_FACTOR, by_batch_and_leg, cpu_per_req, discard,
                              errors_total, fmt, load, machine_lines, med, ms, of_kind,
                              sim_names, usage_path)

LEGS = ["direct-fast", "p2c-ewma", "round-robin", "least-request"]


def main(argv):
    meta, records = load(usage_path(argv, __doc__))
    runs, admin = of_kind(records, "run"), of_kind(records, "admin")

    by_batch = by_batch_and_leg(runs)  # batch -> leg -> run
    sims = []
    for run in runs:
        for name in run.get("sim_requests", {}):
            if name not in sims:
                sims.append(name)

    # Discard rule on the direct-fast baseline.
    kept, dropped = discard(by_batch, "direct-fast")

    print("# Load balancing: p2c-ewma vs round-robin vs least-request, one slow endpoint")
    print()
    if meta:
        print("\n".join(machine_lines(meta)))
        print(f"- {meta.get('rate')} rps over {meta.get('connections')} connections, "
              f"warm-up {meta.get('warmup')}, window {meta.get('duration')}, "
              f"{meta.get('batches')} batch(es); gateways on CPU {meta.get('gateway_cpu')}, "
              f"sims + generator on CPU {meta.get('load_cpu')}")
        print(f"- sims: fast-1 and fast-2 lognormal {meta.get('fast')}, "
              f"slow lognormal {meta.get('slow')}; backend timeout {meta.get('timeout')}")
        if meta.get("quick") == "1":
            print("- **QUICK run: smoke test only, the numbers are indicative**")
    print(f"- batches kept: {len(kept)} of {len(by_batch)}"
          + (f" (dropped {dropped}: direct-fast p99 > {DISCARD_FACTOR:g}x median)"
             if dropped else ""))
    print()

    share_cols = [f"share {s}" for s in sims]
    header = (["leg", "runs", "achieved rps", "p50 ms", "p99 ms", "p99 vs p2c", "errors",
               "gateway CPU µs/req"] + share_cols + ["pacer lag p99 µs"])
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for leg in LEGS:
        rs = [by_batch[b][leg] for b in kept if leg in by_batch[b]]
        if not rs:
            continue
        ratio = med([by_batch[b][leg]["latency_us"]["p99"]
                     / by_batch[b]["p2c-ewma"]["latency_us"]["p99"]
                     for b in kept
                     if leg in by_batch[b] and "p2c-ewma" in by_batch[b]
                     and by_batch[b]["p2c-ewma"]["latency_us"]["p99"]])
        p50 = med([r["latency_us"]["p50"] for r in rs])
        p99 = med([r["latency_us"]["p99"] for r in rs])
        cpu = None if leg == "direct-fast" else med([cpu_per_req(r) for r in rs])
        shares = [med([(r.get("sim_share") or {}).get(s) for r in rs]) for s in sims]
        lag = med([r["dispatch_lag_us"]["p99"] for r in rs])
        row = [leg, str(len(rs)), fmt(med([r["achieved_rps"] for r in rs])),
               ms(p50),
               ms(p99),
               "n/a" if leg == "direct-fast" else fmt(ratio, 2, "x"),
               str(sum(errors_total(r) for r in rs)),
               "n/a" if leg == "direct-fast" else fmt(cpu)]
        row += [fmt(s * 100 if s is not None else None, 1, "%") for s in shares]
        row += [fmt(lag) + (" ⚠" if lag is not None and lag > 1000 else "")]
        print("| " + " | ".join(row) + " |")
    print()
    print("direct-fast goes straight to fast-1 (so its share column is 100% fast-1); it is the "
          "host baseline for the discard rule and the floor a balancer could reach. Shares "
          "count each sim's requests over the whole leg, warm-up included. p99 vs p2c is the "
          "within-batch ratio, median over batches. ⚠ marks pacer lag p99 above 1 ms (the "
          "generator or the host stalled).")

    if admin:
        print()
        print("Gateway view at the end (`/admin/backends`: EWMA ms, attempts, failures):")
        print()
        names = sim_names(meta)
        for rec in admin:
            for pool in rec.get("backends", []):
                eps = ", ".join(
                    f"{names.get(e['address'], e['address'])}: ewma {e['ewma_ms']:.2f} ms, {e['attempts']} att, "
                    f"{e['failures']} fail" for e in pool.get("endpoints", []))
                print(f"- {rec['leg']}: {eps}")


if __name__ == "__main__":
    main(sys.argv)
