#!/usr/bin/env python3
"""Summarize a pass-through results file (JSON lines from passthrough.sh) as Markdown.

Usage: summarize.py RESULTS.jsonl

Each run line is one `cascadia-load --json` report whose label is "LEG/BATCH", LEG being
"direct" or "cascadia". Runs are grouped by (connections, target rate). In each group:

- a batch needs both legs;
- batches whose direct p99 is more than 2x the median direct p99 are dropped (host stalls);
- added latency is cascadia minus direct *within a batch*, then the median over batches;
- every other figure is the median over the kept batches; errors are summed.

p99.9 and max are left out on purpose: on a shared 2-vCPU host they measure the host.
Standard library only.
"""

import sys
from collections import defaultdict

from summarize_common import DISCARD_FACTOR, cpu_per_req, errors_total, fmt, load, med, usage_path


def main(argv):
    meta, runs = load(usage_path(argv, __doc__))

    # (connections, rate) -> batch -> leg -> run
    groups = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        leg, _, batch = (run.get("label") or "").partition("/")
        if leg not in ("direct", "cascadia"):
            continue
        groups[(run["connections"], run["target_rps"])][batch][leg] = run

    print("# Pass-through: direct to cascadia-sim vs through Cascadia")
    print()
    if meta:
        print(f"- Date: {meta['date']}, git {meta['git_rev']}")
        print(f"- Machine: {meta['nproc']} CPUs, {meta['cpu_model']}, Linux {meta['kernel']}")
        print(
            f"- Pinning: gateway on CPU {meta['gateway_cpu']}; cascadia-sim and cascadia-load "
            f"on CPU {meta['load_cpu']}; every process with 1 worker thread"
        )
        print(
            f"- Runs: {meta['batches']} batches; warm-up {meta['warmup']} (discarded), "
            f"window {meta['duration']}; rates {meta['rates']} rps on "
            f"{meta['connections']} connections, plus {meta['latency_rate']} rps on 1 connection"
        )
    print(f"- Results: `{argv[1]}`")
    print()
    print(
        "| conns | rate | batches kept | direct p50 | direct p99 | cascadia p50 | cascadia p99 "
        "| added p50 | added p99 | gateway CPU µs/req | sim CPU µs/req | errors direct / cascadia |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    notes = []
    total_dropped = 0
    for (conns, rate) in sorted(groups, key=lambda k: (-k[0], k[1])):
        batches = [b for b in groups[(conns, rate)].values() if len(b) == 2]
        if not batches:
            continue
        median_direct_p99 = med(b["direct"]["latency_us"]["p99"] for b in batches)
        kept = [
            b for b in batches
            if b["direct"]["latency_us"]["p99"] <= DISCARD_FACTOR * median_direct_p99
        ]
        dropped = len(batches) - len(kept)
        total_dropped += dropped

        def m(leg, q):
            return med(b[leg]["latency_us"][q] for b in kept)

        def added(q):
            return med(
                b["cascadia"]["latency_us"][q] - b["direct"]["latency_us"][q] for b in kept
            )

        err_direct = sum(errors_total(b["direct"]) for b in kept)
        err_cascadia = sum(errors_total(b["cascadia"]) for b in kept)
        print(
            f"| {conns} | {rate:g} | {len(kept)}/{len(batches)} "
            f"| {fmt(m('direct', 'p50'))} | {fmt(m('direct', 'p99'))} "
            f"| {fmt(m('cascadia', 'p50'))} | {fmt(m('cascadia', 'p99'))} "
            f"| {fmt(added('p50'))} | {fmt(added('p99'))} "
            f"| {fmt(med(cpu_per_req(b['cascadia']) for b in kept), 1)} "
            f"| {fmt(med(cpu_per_req(b['direct']) for b in kept), 1)} "
            f"| {err_direct} / {err_cascadia} |"
        )

        for b in batches:
            for run in b.values():
                if run["achieved_rps"] < 0.99 * run["target_rps"]:
                    notes.append(
                        f"{run['label']} at {rate:g} rps × {conns}: achieved only "
                        f"{run['achieved_rps']:.0f} rps"
                    )
                lag = run.get("dispatch_lag_us", {}).get("p99")
                if lag is not None and lag > 1000:
                    notes.append(
                        f"{run['label']} at {rate:g} rps × {conns}: generator pacer "
                        f"p99 lag {lag} µs (generator or host stalled)"
                    )

    print()
    print(
        "Latencies in µs, from each request's scheduled time (open loop, corrected for "
        "coordinated omission). Added = cascadia − direct in the same batch, median over "
        "batches. CPU µs/req = Δ(utime+stime) of the process over the window ÷ completed "
        "requests."
    )
    print()
    print(
        f"Dropped {total_dropped} batch(es) whose direct p99 exceeded "
        f"{DISCARD_FACTOR:g}× the median direct p99 for that rate."
    )
    for note in notes:
        print(f"- warning: {note}")


if __name__ == "__main__":
    main(sys.argv)
