#!/usr/bin/env python3
"""Summarizes a shadow.sh results file: gateway CPU µs/request and p50/p99 with and without
a 10% shadow, per rate, as medians over batches, with the shadow/plain ratio.

Usage: summarize_shadow.py RESULTS.jsonl
"""
import sys
from collections import defaultdict

from summarize_common import cpu_per_req, errors_total, fmt, load, machine_lines, med, ms, usage_path


def main():
    path = usage_path(sys.argv, __doc__)
    meta, records = load(path)
    runs = defaultdict(lambda: defaultdict(list))  # rate -> leg -> [run]
    for run in records:
        label = run.get("label", "")
        if "/" not in label:
            continue
        leg, _batch = label.split("/", 1)
        runs[run["target_rps"]][leg].append(run)
    print("# Shadow traffic: gateway cost of mirroring\n")
    if meta:
        print("\n".join(machine_lines(meta)))
        print(f"- mirrored share: {meta.get('fraction', '?')}; {meta.get('batches')} batches of "
              f"{meta.get('duration')} after {meta.get('warmup')} warm-up, "
              f"{meta.get('connections')} connections; gateway on CPU {meta.get('gateway_cpu')}\n")
    print("| rate rps | leg | batches | CPU µs/req | ratio | p50 ms | p99 ms | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for rate in sorted(runs):
        plain_cpu = med([cpu_per_req(r) for r in runs[rate].get("plain", [])])
        for leg in ("plain", "shadow"):
            legs = runs[rate].get(leg, [])
            if not legs:
                continue
            cpu = med([cpu_per_req(r) for r in legs])
            ratio = cpu / plain_cpu if cpu and plain_cpu else None
            print(f"| {rate} | {leg} | {len(legs)} | {fmt(cpu, 1)} | {fmt(ratio, 2)} | "
                  f"{ms(med([r['latency_us']['p50'] for r in legs]))} | "
                  f"{ms(med([r['latency_us']['p99'] for r in legs]))} | "
                  f"{sum(errors_total(r) for r in legs)} |")


if __name__ == "__main__":
    main()
