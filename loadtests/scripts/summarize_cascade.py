#!/usr/bin/env python3
"""Summarize a cascade results file (JSON lines from cascade.sh) as Markdown.

Usage: summarize_cascade.py RESULTS.jsonl

Each run line is one `cascadia-load --json` report with the extra keys `kind` ("run"),
`leg`, `batch`, `sim_requests` (Δ requests of the stage2/store/baseline sims over the leg,
warm-up included), `cascade` (Δ /admin/cascade counters) and `redis` (Δ keyspace hits and
misses).

- batches whose direct p99 is more than 2x the median direct p99 are dropped (the host
  stalled); without a direct leg nothing is dropped;
- every figure is the median over the kept batches; errors are summed;
- per-core throughput = 1e6 / (median gateway CPU µs per request): what one fully busy
  core would serve at that cost;
- "vs passthrough" ratios are taken within a batch, then the median over batches;
- shares (escalated, store fetches, Redis hits) are over the whole leg, warm-up included,
  summed over the kept batches.

p99.9 and max are left out on purpose: on a shared 2-vCPU host they measure the host.
Standard library only.
"""

import json
import sys

from summarize_common import (DISCARD_FACTOR, by_batch_and_leg, cpu_per_req, discard,
                              errors_total, fmt, load, med, of_kind, usage_path)

ORDER = ["direct", "passthrough", "local-inline", "local-l1", "local-redis", "local-miss",
         "mixed"]
WHAT = {
    "direct": "generator → sim, no gateway, no injected latency (host baseline)",
    "passthrough": "plain route: every request to the stage-2 sim",
    "local-inline": "cascade, features inline, answered locally",
    "local-l1": "cascade + entity feature, L1 hit (constant key)",
    "local-redis": "cascade + entity feature, L1 miss → Redis hit",
    "local-miss": "cascade + entity feature, L1 and no Redis → store fetch",
    "mixed": "cascade + entity feature (L1), ~37% escalated to stage 2",
}


def pct(num, den):
    return None if not den else 100.0 * num / den


def main(argv):
    path = usage_path(argv, __doc__)
    meta, records = load(path)
    runs = of_kind(records, "run")
    if not runs:
        sys.exit(f"{path}: no run lines")

    by_batch = by_batch_and_leg(runs)  # batch -> leg -> run
    legs = [l for l in ORDER if any(l in b for b in by_batch.values())]

    kept, dropped = discard(by_batch, "direct")
    kept = {n: by_batch[n] for n in kept}

    out = []
    if meta:
        out.append(f"# Cascade benchmark, {meta.get('date', '?')}")
        out.append("")
        out.append(f"- machine: {meta.get('nproc')} CPUs, {meta.get('cpu_model')}, "
                   f"kernel {meta.get('kernel')}")
        out.append(f"- git: {meta.get('git_rev')}")
        out.append(f"- load: {meta.get('rate')} rps open loop, {meta.get('connections')} "
                   f"connections, warm-up {meta.get('warmup')}, window {meta.get('duration')}, "
                   f"{meta.get('batches')} batches; 1 × 32 FP32 OIP body")
        out.append(f"- stage 2: cascadia-sim, {meta.get('stage2')}; feature store: "
                   f"cascadia-sim, no injected latency; user ids Zipf over "
                   f"1..={meta.get('user_ids')} for local-redis / local-miss, "
                   f"1..={meta.get('mixed_user_ids')} for mixed")
        out.append(f"- pinning: gateways (`--workers 1`) on CPU {meta.get('gateway_cpu')}, "
                   f"sims + redis + generator on CPU {meta.get('load_cpu')}"
                   + (" (same CPU)" if meta.get("gateway_cpu") == meta.get("load_cpu") else ""))
        if meta.get("quick") == "1":
            out.append("- **QUICK smoke run: not a measurement**")
        out.append("")
    out.append(f"Batches kept: {len(kept)} of {len(by_batch)}"
               + (f" (dropped {dropped}: direct p99 > {DISCARD_FACTOR}× median)" if dropped else "")
               + ".")
    out.append("")

    # Main table.
    out.append("| leg | what | achieved rps | p50 µs | p99 µs | errors | gateway CPU µs/req "
               "| per-core rps (1e6/CPU) | p50 vs pass | p99 vs pass | CPU vs pass |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for leg in legs:
        rs = [b[leg] for b in kept.values() if leg in b]
        if not rs:
            continue
        p50 = med([r["latency_us"]["p50"] for r in rs])
        p99 = med([r["latency_us"]["p99"] for r in rs])
        rps = med([r["achieved_rps"] for r in rs])
        errs = sum(errors_total(r) for r in rs)
        cpu = med([cpu_per_req(r) for r in rs])
        per_core = 1e6 / cpu if cpu else None
        ratios = {"p50": [], "p99": [], "cpu": []}
        for b in kept.values():
            if leg in b and "passthrough" in b and leg not in ("passthrough", "direct"):
                a, p = b[leg], b["passthrough"]
                ratios["p50"].append(a["latency_us"]["p50"] / p["latency_us"]["p50"])
                ratios["p99"].append(a["latency_us"]["p99"] / p["latency_us"]["p99"])
                ca, cp = cpu_per_req(a), cpu_per_req(p)
                if ca is not None and cp:
                    ratios["cpu"].append(ca / cp)
        cpu_cell = fmt(cpu, 1) if leg != "direct" else f"({fmt(cpu, 1)} sim)"
        per_core_cell = fmt(per_core) if leg != "direct" else "—"
        out.append(f"| {leg} | {WHAT.get(leg, '')} | {fmt(rps)} | {fmt(p50)} | {fmt(p99)} | "
                   f"{errs} | {cpu_cell} | {per_core_cell} | "
                   f"{fmt(med(ratios['p50']), 2, '×')} | {fmt(med(ratios['p99']), 2, '×')} | "
                   f"{fmt(med(ratios['cpu']), 2, '×')} |")
    out.append("")

    # Where requests went.
    out.append("Where the work went (whole legs, warm-up included, kept batches summed):")
    out.append("")
    out.append("| leg | requests sent | stage-2 sim requests (share) | cascade rows escalated "
               "(share) | store sim requests (per request) | Redis hits / misses |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for leg in legs:
        if leg == "direct":
            continue
        rs = [b[leg] for b in kept.values() if leg in b]
        if not rs:
            continue
        sent = sum(round(r["target_rps"] * (r["warmup_s"] + r["duration_s"])) for r in rs)
        stage2 = sum(r.get("sim_requests", {}).get("stage2", 0) for r in rs)
        store = sum(r.get("sim_requests", {}).get("store", 0) for r in rs)
        casc = [r.get("cascade") or {} for r in rs]
        creq = sum(c.get("requests", 0) for c in casc)
        esc = sum(c.get("rows_escalated", 0) for c in casc)
        hits = sum((r.get("redis") or {}).get("keyspace_hits", 0) for r in rs)
        misses = sum((r.get("redis") or {}).get("keyspace_misses", 0) for r in rs)
        redis_cell = f"{hits} / {misses}" if (hits or misses) else "—"
        esc_cell = f"{esc} ({fmt(pct(esc, creq), 1, '%')})" if creq else "—"
        out.append(f"| {leg} | {sent} | {stage2} ({fmt(pct(stage2, sent), 1, '%')}) | {esc_cell} "
                   f"| {store} ({fmt(store / sent if sent else None, 3)}) | {redis_cell} |")
    out.append("")

    # Every batch, so the spread is visible.
    out.append("Per batch (p50 / p99 µs, gateway CPU µs/req; * = dropped):")
    out.append("")
    out.append("| batch | " + " | ".join(legs) + " |")
    out.append("|---|" + "---:|" * len(legs))
    for n, b in sorted(by_batch.items()):
        cells = []
        for leg in legs:
            r = b.get(leg)
            if r is None:
                cells.append("")
                continue
            cells.append(f"{r['latency_us']['p50']} / {r['latency_us']['p99']}, "
                         f"{fmt(cpu_per_req(r), 1)}")
        out.append(f"| {n}{'*' if n in dropped else ''} | " + " | ".join(cells) + " |")
    out.append("")

    lag = [(r["label"], r["dispatch_lag_us"]["p99"]) for r in runs
           if r.get("dispatch_lag_us", {}).get("p99", 0) > 1000]
    if lag:
        out.append("Generator pacer lag p99 above 1 ms (the generator or host stalled): "
                   + ", ".join(f"{l} {v} µs" for l, v in lag) + ".")
        out.append("")
    errs = [(r["label"], r["errors"]) for r in runs if errors_total(r)]
    for label, e in errs:
        out.append(f"Errors in {label}: {json.dumps(e)}")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv)
