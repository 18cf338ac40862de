#!/usr/bin/env python3
"""Summarizes a soak.sh results file: per window, p50/p99, errors, gateway CPU µs/request,
RSS and open fds; then the drift (last window against the first) of p99, RSS and fds.

Usage: summarize_soak.py RESULTS.jsonl
"""
import sys

from summarize_common import cpu_per_req, errors_total, fmt, load, machine_lines, ms, usage_path


def main():
    meta, records = load(usage_path(sys.argv, __doc__))
    runs = {r["label"]: r for r in records if r.get("kind") != "resources" and "label" in r}
    res = {r["label"]: r for r in records if r.get("kind") == "resources"}
    print("# Soak: steady load, p99, RSS and file descriptors over time\n")
    if meta:
        print("\n".join(machine_lines(meta)))
        print(f"- {meta.get('windows')} windows of {meta.get('window')} at {meta.get('rate')} rps "
              f"on {meta.get('connections')} connections, gateway on CPU {meta.get('gateway_cpu')}\n")
    before = res.get("before")
    if before:
        print(f"Before load: RSS {before['rss_kib'] / 1024:.1f} MiB, {before['fds']} fds.\n")
    print("| window | p50 ms | p99 ms | errors | CPU µs/req | RSS MiB | fds |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    labels = sorted((l for l in runs if l.startswith("window/")), key=lambda l: int(l.split("/")[1]))
    rows = []
    for label in labels:
        run, r = runs[label], res.get(label, {})
        rows.append((run["latency_us"]["p99"], r.get("rss_kib"), r.get("fds"), errors_total(run)))
        print(f"| {label.split('/')[1]} | {ms(run['latency_us']['p50'])} | {ms(run['latency_us']['p99'])} | "
              f"{errors_total(run)} | {fmt(cpu_per_req(run), 1)} | "
              f"{fmt((r.get('rss_kib') or 0) / 1024, 1)} | {r.get('fds', 'n/a')} |")
    if len(rows) >= 2:
        (p99_a, rss_a, fds_a, _), (p99_b, rss_b, fds_b, _) = rows[0], rows[-1]
        print()
        print(f"Last window against the first: p99 {p99_b / p99_a:.2f}×, "
              f"RSS {(rss_b - rss_a) / 1024:+.1f} MiB, fds {fds_b - fds_a:+d}; "
              f"errors in all windows: {sum(r[3] for r in rows)}.")


if __name__ == "__main__":
    main()
