#!/usr/bin/env python3
"""Summarizes a microbatch.sh results file: per rate and escalated share, unbatched against
batched: stage-2 calls per escalated row, p50/p99, gateway CPU µs/request, batch counters.

Usage: summarize_microbatch.py RESULTS.jsonl

Every figure is the median over rounds except the counts (escalated rows, stage-2 calls,
batches, batched requests, retries, errors), which are summed over rounds; calls per
escalated row is Σ stage-2 calls ÷ Σ escalated rows. The ratio columns are batched ÷
unbatched within the same (rate, share) point of the same run.
"""
import sys
from collections import defaultdict

from summarize_common import (cpu_per_req, errors_total, fmt, load, machine_lines, med, ms,
                              of_kind, usage_path)

LEGS = ("unbatched", "batched")
LATE_US = 5000


def main():
    path = usage_path(sys.argv, __doc__)
    meta, records = load(path)
    points = defaultdict(lambda: defaultdict(list))  # (rate, share) -> leg -> [run]
    for run in of_kind(records, "run"):
        points[(run["rate"], run["share"])][run["leg"]].append(run)

    print("# Escalation micro-batching: with and without [routes.cascade.batch]\n")
    if meta:
        print("\n".join(machine_lines(meta)))
        print(f"- {meta.get('rounds')} rounds of {meta.get('duration')} after "
              f"{meta.get('warmup')} warm-up per leg, open loop, {meta.get('connections')} "
              f"keep-alive connections, one row per request; batched and unbatched alternate, "
              f"order flipped each round")
        print(f"- batch: max_rows {meta.get('max_rows')}, max_wait {meta.get('max_wait')}; "
              f"stage 2: cascadia-sim, {meta.get('stage2')}")
        print(f"- gateway `--workers 1` on CPU {meta.get('gateway_cpu')}; sims and generator "
              f"on CPU {meta.get('load_cpu')}")
        loads = [r["loadavg"][0] for r in of_kind(records, "run") if r.get("loadavg")]
        if loads:
            print(f"- load average (1 min) at start {meta.get('loadavg_start', '?').split()[0]}, "
                  f"after the legs {min(loads)}–{max(loads)}")
    print()
    print("| rate rps | escalated | leg | achieved rps | errors | escalated rows | stage-2 calls "
          "| calls / escalated row | batches | batched req | retries | p50 ms | p99 ms "
          "| CPU µs/req |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for rate, share in sorted(points):
        figures = {}
        for leg in LEGS:
            runs = points[(rate, share)].get(leg, [])
            if not runs:
                continue
            rows = sum(r["cascade"].get("rows_escalated", 0) for r in runs)
            calls = sum(r["stage2_calls"] for r in runs)
            f = dict(
                rps=med([r["achieved_rps"] for r in runs]),
                errors=sum(errors_total(r) for r in runs),
                rows=rows,
                calls=calls,
                per_row=calls / rows if rows else None,
                batches=sum(r["cascade"].get("batches", 0) for r in runs),
                batched=sum(r["cascade"].get("batched_requests", 0) for r in runs),
                retries=sum(r["cascade"].get("batch_retries", 0) for r in runs),
                p50=med([r["latency_us"]["p50"] for r in runs]),
                p99=med([r["latency_us"]["p99"] for r in runs]),
                cpu=med([cpu_per_req(r) for r in runs]),
                cpus=[cpu_per_req(r) for r in runs],
                p99s=[r["latency_us"]["p99"] for r in runs],
            )
            figures[leg] = f
            print(f"| {rate} | {share:.0%} | {leg} | {fmt(f['rps'])} | {f['errors']} | "
                  f"{f['rows']} | {f['calls']} | {fmt(f['per_row'], 3)} | {f['batches']} | "
                  f"{f['batched']} | {f['retries']} | {ms(f['p50'])} | {ms(f['p99'])} | "
                  f"{fmt(f['cpu'], 1)} |")
        if len(figures) == 2:
            ratios.append((rate, share, figures))

    if ratios:
        print("\nBatched ÷ unbatched at the same point (1.00 = no change):\n")
        print("| rate rps | escalated | calls / escalated row | p50 | p99 | CPU µs/req "
              "| rows per batch | p99 ms by round (unb. / bat.) | CPU µs/req by round (unb. / bat.) |")
        print("|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for rate, share, f in ratios:
            u, b = f["unbatched"], f["batched"]

            def ratio(key):
                return fmt(b[key] / u[key] if b[key] and u[key] else None, 2)
            # Rows per combined call: the batched requests (one row each here) per batch.
            per_batch = b["batched"] / b["batches"] if b["batches"] else None
            by_round_p99 = ", ".join(ms(x) for x in u["p99s"]) + " / " + \
                ", ".join(ms(x) for x in b["p99s"])
            by_round_cpu = ", ".join(fmt(x, 1) for x in u["cpus"]) + " / " + \
                ", ".join(fmt(x, 1) for x in b["cpus"])
            print(f"| {rate} | {share:.0%} | {ratio('per_row')} | {ratio('p50')} | "
                  f"{ratio('p99')} | {ratio('cpu')} | {fmt(per_batch, 2)} | {by_round_p99} | "
                  f"{by_round_cpu} |")

    # A generator that could not send on time (host stall, or CPU 1 saturated) inflates
    # that leg's latency whatever the gateway did: name those legs.
    late = [r for r in of_kind(records, "run")
            if (r.get("dispatch_lag_us") or {}).get("p99", 0) > LATE_US]
    if late:
        print(f"\nLegs whose generator dispatch lag p99 exceeded {LATE_US / 1000:g} ms "
              f"(the generator itself was late; their latency is suspect):\n")
        for r in late:
            print(f"- {r['label']}: dispatch lag p99 {ms(r['dispatch_lag_us']['p99'])} ms, "
                  f"latency p99 {ms(r['latency_us']['p99'])} ms")


if __name__ == "__main__":
    main()
