"""Helpers shared by the summarize*.py scripts (and failover.sh's summary).

Standard library only.
"""

import json
import statistics
import sys
from collections import defaultdict

# A batch is dropped when its baseline p99 is more than this times the median baseline p99.
DISCARD_FACTOR = 2.0


def usage_path(argv, doc):
    """The results path from argv, or exit with the usage line (line 3) of doc."""
    if len(argv) != 2:
        sys.exit(doc.strip().splitlines()[2])
    return argv[1]


def load(path):
    """(meta, records): the last "kind": "meta" line of a JSON-lines file, and every other
    line in order. Blank lines are skipped; a line that is not JSON ends the program."""
    meta, records = None, []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON: {e}")
            if rec.get("kind") == "meta":
                meta = rec
            else:
                records.append(rec)
    return meta, records


def of_kind(records, kind):
    return [r for r in records if r.get("kind") == kind]


def errors_total(run):
    e = run["errors"]
    return e["status"] + e["transport"] + e["timeout"] + e["unfinished"]


def cpu_per_req(run):
    """The first measured process's CPU µs per request (the gateway, or the sim on a direct
    leg), or None."""
    procs = run.get("processes") or []
    return procs[0].get("cpu_us_per_req") if procs else None


def med(values):
    """Median of the values that are not None; None when there are none."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0, suffix=""):
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}{suffix}"


def ms(v):
    """µs to ms with two decimals."""
    return fmt(v / 1000 if v is not None else None, 2)


def by_batch_and_leg(runs):
    """batch -> leg -> run, from run lines with "batch" and "leg"."""
    by_batch = defaultdict(dict)
    for run in runs:
        by_batch[run["batch"]][run["leg"]] = run
    return by_batch


def discard(by_batch, baseline):
    """(kept, dropped): sorted batch numbers, dropping the batches whose `baseline` leg p99
    exceeds DISCARD_FACTOR × the median baseline p99. Without a baseline leg nothing is
    dropped."""
    base = {b: legs[baseline]["latency_us"]["p99"]
            for b, legs in by_batch.items() if baseline in legs}
    dropped = []
    if base:
        m = statistics.median(base.values())
        dropped = sorted(b for b, p99 in base.items() if p99 > DISCARD_FACTOR * m)
    kept = sorted(b for b in by_batch if b not in dropped)
    return kept, dropped


def machine_lines(meta):
    """The "- machine: ..." and "- date ..., revision ..." lines of a summary header."""
    return [f"- machine: {meta.get('nproc')} CPUs, {meta.get('cpu_model')}, "
            f"kernel {meta.get('kernel')}",
            f"- date {meta.get('date')}, revision {meta.get('git_rev')}"]


def sim_names(meta):
    """address -> sim name, from the meta line's "sims"."""
    return {addr: name for name, addr in ((meta or {}).get("sims") or {}).items()}


def total_ir(path):
    """The Ir total of a callgrind output file: its "totals:" line, else "summary:"."""
    summary = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("totals:"):
                return int(line.split()[1])
            if line.startswith("summary:"):
                summary = int(line.split()[1])
    if summary is None:
        sys.exit(f"{path}: no totals: or summary: line")
    return summary
