#!/usr/bin/env python3
"""Scenario benchmarks (overload, reload, redis-outage, failover-drill, canary): summary, plus
the two small probes their scripts run next to the generator.

Usage: summarize_scenarios.py RESULTS.jsonl                    (Markdown summary on stdout)
       summarize_scenarios.py poll ADMIN_ADDR INTERVAL_MS [PID]   (runs until killed)
       summarize_scenarios.py sample --url URL --n N --out FILE [--users distinct|zipf:N]
                                     [--header 'k: v']... [--label L]

Standard library only.

poll: every INTERVAL_MS, one JSON line on stdout, {"kind": "poll", "t": unix seconds,
"m": {metric{labels}: value}, "rss_kib", "cpu_ticks"}, with the gateway's /metrics series
named in POLL_METRICS and, with PID, VmRSS and utime+stime of that process. Keep-alive; a
failed scrape writes "m": null.

sample: N sequential POSTs of the generator's OIP body (1 row) on one keep-alive connection,
counting statuses, the latency of each status, whether every 503 carries Retry-After and a
JSON body with a request id, x-cascadia-version per 2xx, and (with --users) whether every
user id always got the same version. Writes one {"kind": "sample", ...} JSON object to FILE
and prints a one-line digest (scenario `exec` events keep only 200 characters).

The summary reads what the scripts write: a "meta" line (with "bench"), "step" lines
(`cascadia-load --json` step reports), "poll", "sample", "drill", "sims" and "note" lines.
"""

import bisect
import http.client
import json
import os
import random
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize_common import errors_total, fmt, load, machine_lines, ms, of_kind  # noqa: E402

POLL_METRICS = (
    "cascadia_requests_total",
    "cascadia_shed_total",
    "cascadia_config_version",
    "cascadia_config_reloads_total",
    "cascadia_redis_calls_total",
    "cascadia_feature_lookups_total",
    "cascadia_upstream_attempts_total",
    "cascadia_upstream_failures_total",
    "cascadia_retries_total",
    "cascadia_failovers_total",
)


# --- poll ----------------------------------------------------------------------------------

def proc_sample(pid):
    rss = ticks = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        pass
    return rss, ticks


def poll(admin, interval_ms, pid=None):
    host, port = admin.rsplit(":", 1)
    conn = None
    interval = interval_ms / 1000
    nxt = time.time()
    while True:
        t = time.time()
        metrics = None
        for _ in range(2):
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, int(port), timeout=0.5)
                conn.request("GET", "/metrics")
                text = conn.getresponse().read().decode()
                metrics = {}
                for line in text.splitlines():
                    if line.startswith(POLL_METRICS):
                        key, _, value = line.rpartition(" ")
                        try:
                            metrics[key] = float(value)
                        except ValueError:
                            pass
                break
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
        rec = {"kind": "poll", "t": round(t, 4), "m": metrics}
        if pid:
            rec["rss_kib"], rec["cpu_ticks"] = proc_sample(pid)
        sys.stdout.write(json.dumps(rec) + "\n")
        sys.stdout.flush()
        nxt += interval
        delay = nxt - time.time()
        if delay > 0:
            time.sleep(delay)
        else:
            nxt = time.time()


# --- sample --------------------------------------------------------------------------------

def oip_body():
    rng = random.Random(1)
    data = [round(rng.random() * 2 - 1, 6) for _ in range(32)]
    return json.dumps({"inputs": [{"name": "features", "shape": [1, 32],
                                   "datatype": "FP32", "data": data}]}).encode()


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def sample(argv):
    args = {"--header": [], "--users": "none", "--label": "sample"}
    i = 0
    while i < len(argv):
        k, v = argv[i], argv[i + 1]
        if k == "--header":
            args[k].append(v)
        else:
            args[k] = v
        i += 2
    url = urllib.parse.urlsplit(args["--url"])
    n = int(args["--n"])
    headers = {"content-type": "application/json"}
    for h in args["--header"]:
        name, _, value = h.partition(":")
        headers[name.strip().lower()] = value.strip()
    users = args["--users"]
    zipf_cdf = None
    if users.startswith("zipf:"):
        total, acc, zipf_cdf = 0.0, 0.0, []
        count = int(users.split(":", 1)[1])
        total = sum(1 / k for k in range(1, count + 1))
        for k in range(1, count + 1):
            acc += 1 / k / total
            zipf_cdf.append(acc)
    rng = random.Random(7)
    run_tag = f"{os.getpid()}-{int(time.time())}"
    body = oip_body()
    status, lat = {}, {}
    retry_after_present, retry_after_values, json_bodies, with_request_id = 0, {}, 0, 0
    example_503, versions, per_user, transport, errs = None, {}, {}, 0, []
    conn = None
    started = time.time()
    for i in range(n):
        user = None
        if users == "distinct":
            user = f"s{run_tag}-{i}"
        elif zipf_cdf is not None:
            user = str(min(len(zipf_cdf), bisect.bisect_left(zipf_cdf, rng.random()) + 1))
        h = dict(headers)
        if user is not None:
            h["x-user-id"] = user
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
            conn.request("POST", url.path, body=body, headers=h)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            transport += 1
            errs.append(f"#{i} after {(time.perf_counter() - t0) * 1000:.1f} ms: {e!r}")
            if conn is not None:
                conn.close()
            conn = None
            continue
        dt = (time.perf_counter() - t0) * 1000
        code = str(resp.status)
        status[code] = status.get(code, 0) + 1
        lat.setdefault(code, []).append(dt)
        if resp.status == 503:
            ra = resp.getheader("retry-after")
            if ra is not None:
                retry_after_present += 1
                retry_after_values[ra] = retry_after_values.get(ra, 0) + 1
            try:
                doc = json.loads(data)
                json_bodies += 1
                if any("request" in k for k in doc) or "request_id" in json.dumps(doc):
                    with_request_id += 1
            except ValueError:
                pass
            if example_503 is None:
                example_503 = data[:300].decode(errors="replace")
        if 200 <= resp.status < 300:
            v = resp.getheader("x-cascadia-version") or "(none)"
            versions[v] = versions.get(v, 0) + 1
            if user is not None:
                per_user.setdefault(user, set()).add(v)
        if resp.getheader("connection", "").lower() == "close":
            conn.close()
            conn = None
    elapsed = time.time() - started
    out = {
        "kind": "sample", "label": args["--label"], "url": args["--url"], "n": n,
        "users": users, "elapsed_s": round(elapsed, 3), "started_unix": round(started, 3),
        "status": status, "transport_errors": transport, "transport_error_examples": errs[:5],
        "latency_ms": {c: {"p50": round(pct(v, 50), 3), "p99": round(pct(v, 99), 3),
                           "max": round(max(v), 3)} for c, v in lat.items()},
        "retry_after_present": retry_after_present, "retry_after_values": retry_after_values,
        "json_503_bodies": json_bodies, "503_bodies_with_request_id": with_request_id,
        "example_503": example_503, "versions": versions,
    }
    if per_user:
        user_versions = {}
        for vs in per_user.values():
            if len(vs) == 1:
                v = next(iter(vs))
                user_versions[v] = user_versions.get(v, 0) + 1
        out["user_stats"] = {"distinct": len(per_user),
                             "sticky_violations": sum(1 for vs in per_user.values() if len(vs) > 1),
                             "users_per_version": user_versions}
    with open(args["--out"], "w") as f:
        json.dump(out, f)
        f.write("\n")
    digest = f"n={n} status={status} ra={retry_after_present} json={json_bodies}"
    if versions:
        digest += f" versions={versions}"
    if "user_stats" in out:
        digest += f" sticky_violations={out['user_stats']['sticky_violations']}"
    print(digest)


# --- summary helpers -----------------------------------------------------------------------

def anchor(run):
    """Unix time of the start of the measured window, from the "anchor" exec event
    (`date +%s.%N` at 0 s), or None."""
    for ev in run.get("events") or []:
        if ev.get("label") == "anchor" and ev.get("ok"):
            try:
                return float(ev["outcome"].rsplit(":", 1)[1].strip()) - ev["started_s"]
            except (ValueError, IndexError, KeyError):
                return None
    return None


def all_events(steps):
    events = []
    for s in steps:
        events.extend(s.get("events") or [])
    return sorted(events, key=lambda e: e["at_s"])


def poll_at(polls, t):
    """The last poll with metrics at or before unix time t (or the first one)."""
    best = None
    for p in polls:
        if p.get("m") is None:
            continue
        if p["t"] <= t or best is None:
            best = p
        if p["t"] > t:
            break
    return best


def metric_sum(poll_rec, prefix, contains=""):
    if not poll_rec or not poll_rec.get("m"):
        return 0.0
    return sum(v for k, v in poll_rec["m"].items() if k.startswith(prefix) and contains in k)


def metric_at(polls, t, prefix, contains=""):
    """The metric at unix time t, interpolated linearly between the polls around it."""
    good = [p for p in polls if p.get("m") is not None]
    if not good:
        return 0.0
    before = [p for p in good if p["t"] <= t]
    after = [p for p in good if p["t"] > t]
    if not before or not after:
        return metric_sum((before or good)[-1] if before else good[0], prefix, contains)
    a, b = before[-1], after[0]
    va, vb = metric_sum(a, prefix, contains), metric_sum(b, prefix, contains)
    return va + (vb - va) * (t - a["t"]) / (b["t"] - a["t"])


def metric_delta(polls, t0, t1, prefix, contains=""):
    return metric_at(polls, t1, prefix, contains) - metric_at(polls, t0, prefix, contains)


def step_window(run, t0):
    start = t0 + (run.get("step") or {}).get("start_s", 0.0)
    return start, start + run["duration_s"]


def gw_proc(run):
    procs = run.get("processes") or []
    return procs[0] if procs else {}


def lat(run, p):
    return (run.get("latency_us") or {}).get(p)


def header(meta, title):
    out = [f"# {title}", ""]
    if meta:
        out += machine_lines(meta)
        keys = [k for k in meta if k not in ("kind", "bench", "sims", "nproc", "date", "cpu_model",
                                              "git_rev", "kernel")]
        out.append("- settings: " + ", ".join(f"{k}={meta[k]}" for k in keys))
    notes = [r for r in RECORDS if r.get("kind") == "note"]
    for n in notes:
        out.append(f"- {n.get('what')}: {n.get('value')}")
    out.append("")
    return out


def step_table(steps, names, t0, polls, extra_cols=()):
    cols = ["step", "phase", "target rps", "achieved", "sent", "ok", "non-2xx", "transport",
            "timeout", "p50 ms", "p99 ms", "gw CPU µs/req", "gw RSS MiB"] + [c[0] for c in extra_cols]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, s in enumerate(steps):
        e = s["errors"]
        p = gw_proc(s)
        vals = [str(i + 1), names[i] if i < len(names) else "", fmt(s["target_rps"]),
                fmt(s["achieved_rps"]), str(s["sent"]), str(s["ok"]), str(e["status"]),
                str(e["transport"]), str(e["timeout"] + e["unfinished"]),
                ms(lat(s, "p50")), ms(lat(s, "p99")), fmt(p.get("cpu_us_per_req"), 1),
                fmt(p["rss_kib"] / 1024 if p.get("rss_kib") else None, 1)]
        vals += [c[1](s) for c in extra_cols]
        rows.append("| " + " | ".join(vals) + " |")
    return rows


def timeline_rows(steps, every=1):
    """Compact per-bucket timeline (every n-th bucket) as a Markdown table."""
    rows = ["| t s | sent | ok | errors | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    buckets = [b for s in steps for b in s["timeline"]["buckets"]]
    for n, b in enumerate(buckets):
        if n % every:
            continue
        rows.append(f"| {b['t_s']:.2f} | {b['sent']} | {b['ok']} | {b['errors']} | "
                    f"{ms(b['p50_us'])} | {ms(b['p99_us'])} |")
    return rows


def events_rows(events):
    rows = ["| at s | action | label | ok | took ms | outcome |", "|---|---|---|---|---|---|"]
    for e in events:
        if e.get("label") == "anchor":
            continue
        out = (e.get("outcome") or "").replace("|", "/").replace("\n", " ")[:120]
        rows.append(f"| {e['at_s']:.2f} | {e['action']} | {e.get('label') or ''} | {e['ok']} | "
                    f"{e['took_ms']:.1f} | {out} |")
    return rows


def per_second(steps, size_s=1.0):
    """Merges timeline buckets into windows of size_s: (t, sent, ok, errors, max bucket p99)."""
    out = {}
    for s in steps:
        for b in s["timeline"]["buckets"]:
            k = int(round(b["t_s"], 6) / size_s + 1e-6)
            o = out.setdefault(k, [k * size_s, 0, 0, 0, None])
            o[1] += b["sent"]
            o[2] += b["ok"]
            o[3] += b["errors"]
            if b["p99_us"] is not None:
                o[4] = b["p99_us"] if o[4] is None else max(o[4], b["p99_us"])
    return [out[k] for k in sorted(out)]


def window_rows(steps, size_s=1.0):
    rows = [f"| t s (window {size_s:g} s) | sent | ok | errors | worst bucket p99 ms |",
            "|---|---|---|---|---|"]
    for t, sent, ok, err, p99 in per_second(steps, size_s):
        rows.append(f"| {t:.1f} | {sent} | {ok} | {err} | {ms(p99)} |")
    return rows


# --- per scenario --------------------------------------------------------------------------

def summary_overload(meta, steps, polls, samples):
    out = header(meta, "Overload: shedding at 3× capacity (issue 6/7)")
    t0 = anchor(steps[0]) if steps else None
    cap = float(meta.get("capacity_rps", 0) or 0)
    names = [f"{s['target_rps'] / cap:.2g}× capacity" if cap else "" for s in steps]

    def shed(s):
        if t0 is None or not polls:
            return None
        a, b = step_window(s, t0)
        return metric_delta(polls, a, b, "cascadia_shed_total")

    def shed_share(s):
        v = shed(s)
        return fmt(100 * v / s["sent"], 1, "%") if v is not None and s["sent"] else "n/a"

    def non2xx_share(s):
        return fmt(100 * s["errors"]["status"] / s["sent"], 1, "%") if s["sent"] else "n/a"

    def gw_other(s):
        """Gateway 4xx + 5xx that were not sheds, over the step (interpolated polls)."""
        if t0 is None or not polls:
            return None
        a, b = step_window(s, t0)
        bad = (metric_delta(polls, a, b, "cascadia_requests_total", 'status_class="4xx"')
               + metric_delta(polls, a, b, "cascadia_requests_total", 'status_class="5xx"'))
        return bad - metric_delta(polls, a, b, "cascadia_shed_total")

    def other_errors(s):
        e = s["errors"]
        return str(e["transport"] + e["timeout"] + e["unfinished"])

    out += ["## Per step", ""]
    out += step_table(steps, names, t0, polls,
                      extra_cols=[("non-2xx share", non2xx_share),
                                  ("transport + timeout + unfinished", other_errors)])
    out.append("")
    out.append("Latencies are of 2xx responses only (admitted requests), from each request's due "
               "time. Non-2xx are the generator's count (by due time, exact per step). Whether every "
               "non-2xx was a shed 503 is checked over the whole run against the gateway's "
               "counters (below): the 100 ms polls cannot split a sharp step boundary exactly.")
    out.append("")
    if len(steps) >= 3:
        base_p99 = lat(steps[0], "p99")
        last = steps[-1]
        drop = (last.get("step") or {}).get("start_s", 0.0)
        rec = None
        for b in last["timeline"]["buckets"]:
            if b["errors"] == 0 and b["p99_us"] is not None and base_p99 and b["p99_us"] <= 2 * base_p99:
                rec = b["t_s"] - drop
                break
        last_err = max((b["t_s"] - drop for b in last["timeline"]["buckets"] if b["errors"]),
                       default=None)
        over = steps[1]
        out += ["## Headline", ""]
        out.append(f"- admitted p99: {ms(base_p99)} ms at step 1, {ms(lat(over, 'p99'))} ms at the "
                   f"overload step (ratio {fmt(lat(over, 'p99') / base_p99 if base_p99 else None, 2)}×), "
                   f"{ms(lat(last, 'p99'))} ms after the drop")
        out.append(f"- overload step: {over['ok']} of {over['sent']} admitted "
                   f"({fmt(100 * over['ok'] / over['sent'], 1)}%), admitted rate "
                   f"{fmt(over['ok'] / over['duration_s'])} rps vs capacity {fmt(cap)} rps; "
                   f"non-2xx share {non2xx_share(over)}; client-side transport/timeout/unfinished: "
                   f"{other_errors(over)}")
        out.append(f"- recovery after the drop (first {steps[0]['timeline']['bucket_s'] * 1000:g} ms "
                   f"bucket with no errors and p99 ≤ 2× step 1's p99): "
                   f"{fmt(rec, 2, ' s') if rec is not None else 'not within the step'}; "
                   f"last bucket with any error starts {fmt(last_err, 2, ' s') if last_err is not None else 'n/a (none)'} after the drop")
        p0, p1 = gw_proc(steps[0]), gw_proc(over)
        out.append(f"- gateway CPU µs/req {fmt(p0.get('cpu_us_per_req'), 1)} → "
                   f"{fmt(p1.get('cpu_us_per_req'), 1)} (overload, most requests shed) → "
                   f"{fmt(gw_proc(last).get('cpu_us_per_req'), 1)}; RSS "
                   f"{fmt((p0.get('rss_kib') or 0) / 1024, 1)} → {fmt((p1.get('rss_kib') or 0) / 1024, 1)} → "
                   f"{fmt((gw_proc(last).get('rss_kib') or 0) / 1024, 1)} MiB")
        if polls:
            total = {c: metric_delta(polls, polls[0]["t"], polls[-1]["t"], "cascadia_requests_total",
                                     f'status_class="{c}"') for c in ("2xx", "4xx", "5xx")}
            sh = metric_delta(polls, polls[0]["t"], polls[-1]["t"], "cascadia_shed_total")
            gen_non2xx = sum(x["errors"]["status"] for x in steps)
            out.append(f"- gateway counters over the run (warm-up included): 2xx {total['2xx']:.0f}, "
                       f"4xx {total['4xx']:.0f}, 5xx {total['5xx']:.0f}, of which shed (503) {sh:.0f} "
                       f"→ errors other than 503: {total['4xx'] + total['5xx'] - sh:.0f}; the "
                       f"generator saw {gen_non2xx} non-2xx in the measured steps")
        out.append("")
    for s in samples:
        out += ["## Sample of responses during the overload step (curl-like probe, sequential)", ""]
        n503 = s["status"].get("503", 0)
        out.append(f"- {s['n']} requests: statuses {s['status']}, transport errors {s['transport_errors']} "
                   f"{s.get('transport_error_examples') or ''}")
        out.append(f"- 503s with Retry-After: {s['retry_after_present']} of {n503} "
                   f"(values {s['retry_after_values']}); JSON bodies {s['json_503_bodies']}, "
                   f"mentioning a request id {s['503_bodies_with_request_id']}")
        out.append(f"- latency by status (probe-side, ms): {s['latency_ms']}")
        out.append(f"- example 503 body: `{s['example_503']}`")
        out.append("")
    out += ["## Timeline around the steps (every bucket)", ""]
    out += timeline_rows(steps)
    return out


def summary_reload(meta, steps, polls, samples):
    out = header(meta, "Hot reload under load: 1 reload per second")
    t0 = anchor(steps[0]) if steps else None
    names = ["baseline" if n % 2 == 0 else "reloading" for n in range(len(steps))]

    def reloads(s):
        if t0 is None or not polls:
            return "n/a"
        a, b = step_window(s, t0)
        return (f"{metric_delta(polls, a, b, 'cascadia_config_reloads_total', 'applied'):.0f} / "
                f"{metric_delta(polls, a, b, 'cascadia_config_reloads_total', 'rejected'):.0f}")

    out += ["## Per step (alternating)", ""]
    out += step_table(steps, names, t0, polls, extra_cols=[("reloads applied / rejected", reloads)])
    out.append("")
    base = [s for s, n in zip(steps, names) if n == "baseline"]
    rel = [s for s, n in zip(steps, names) if n == "reloading"]
    evs = [e for e in all_events(steps) if e.get("label", "").startswith("reload")]
    from statistics import median
    mb = median([lat(s, "p99") for s in base]) if base else None
    mr = median([lat(s, "p99") for s in rel]) if rel else None
    out += ["## Headline", ""]
    out.append(f"- reload events: {len(evs)}, ok {sum(1 for e in evs if e['ok'])}; "
               f"errors (all kinds) in reloading steps {sum(errors_total(s) for s in rel)} of "
               f"{sum(s['sent'] for s in rel)}, in baseline steps {sum(errors_total(s) for s in base)} of "
               f"{sum(s['sent'] for s in base)}")
    out.append(f"- p99 median over steps: baseline {ms(mb)} ms, reloading {ms(mr)} ms, ratio "
               f"{fmt(mr / mb if mb and mr else None, 2)}×; p50 baseline "
               f"{ms(median([lat(s, 'p50') for s in base]) if base else None)} ms, reloading "
               f"{ms(median([lat(s, 'p50') for s in rel]) if rel else None)} ms")
    if polls:
        out.append(f"- config_version {metric_sum(polls[0], 'cascadia_config_version'):.0f} → "
                   f"{metric_sum(polls[-1], 'cascadia_config_version'):.0f}; reloads applied "
                   f"{metric_delta(polls, polls[0]['t'], polls[-1]['t'], 'cascadia_config_reloads_total', 'applied'):.0f}, rejected "
                   f"{metric_delta(polls, polls[0]['t'], polls[-1]['t'], 'cascadia_config_reloads_total', 'rejected'):.0f}")
    bad = [e for e in evs if not e["ok"]]
    if bad:
        out.append(f"- failed reload events: {[(e['at_s'], e['outcome']) for e in bad[:5]]}")
    out.append("")
    out += ["## One-second windows", ""]
    out += window_rows(steps)
    return out


def phase_table(meta, steps):
    names = (meta.get("phases") or "").split(",")
    return names


def summary_redis(meta, steps, polls, samples, drills=()):
    out = header(meta, "Redis outage under load (cascade route, entity features)")
    t0 = anchor(steps[0]) if steps else None
    names = phase_table(meta, steps)

    def tiers(s):
        if t0 is None or not polls:
            return "n/a"
        a, b = step_window(s, t0)
        vals = [metric_delta(polls, a, b, "cascadia_feature_lookups_total", f'tier="{t}"')
                for t in ("l1", "redis", "store", "store_failure")]
        return " / ".join(f"{v:.0f}" for v in vals)

    def rcalls(s):
        if t0 is None or not polls:
            return "n/a"
        a, b = step_window(s, t0)
        keys = sorted({k for p in polls if p.get("m") for k in p["m"] if k.startswith("cascadia_redis_calls_total")})
        parts = []
        for k in keys:
            d = metric_delta(polls, a, b, k)
            if d:
                name = k.split("outcome=")[1].strip('"}')
                parts.append(f"{name}={d:.0f}")
        return ", ".join(parts) or "0"

    out += ["## Per phase", ""]
    out += step_table(steps, names, t0, polls,
                      extra_cols=[("lookups L1 / Redis / store / store failed", tiers),
                                  ("redis calls", rcalls)])
    out.append("")
    out += ["## Headline", ""]
    for s, n in zip(steps, names):
        out.append(f"- {n}: errors {errors_total(s)} of {s['sent']}, p99 {ms(lat(s, 'p99'))} ms "
                   f"(ratio to the first phase {fmt(lat(s, 'p99') / lat(steps[0], 'p99') if lat(steps[0], 'p99') and lat(s, 'p99') else None, 2)}×)")
    # Reconnect: first poll after the restart event with a successful Redis call.
    evs = all_events(steps)
    restart = next((e for e in evs if e.get("label") == "redis restarted"), None)
    if restart and t0 is not None and polls:
        tr = t0 + restart["started_s"]
        base = poll_at(polls, tr)
        hit_key = "cascadia_feature_lookups_total"
        first = next((p for p in polls if p["t"] > tr and p.get("m")
                      and metric_sum(p, hit_key, 'tier="redis"') > metric_sum(base, hit_key, 'tier="redis"')), None)
        out.append(f"- first Redis hit after the restart: "
                   f"{fmt(first['t'] - tr, 2, ' s') if first else 'none seen'} after the restart event "
                   f"(poll resolution {meta.get('poll_ms')} ms)")
    for d in drills:
        out.append(f"- drill {d.get('id')} ({d.get('fault')}): state {d.get('state')}, detect_ms "
                   f"{d.get('detect_ms')}, failover_ms {d.get('failover_ms')}, requests "
                   f"{d.get('requests')}, errors {d.get('errors')}, p99 ≤ {d.get('p99_ms')} ms, "
                   f"failback_ms {d.get('failback_ms')}, steady_ms {d.get('steady_ms')}")
    out.append("")
    out += ["## Events", ""]
    out += events_rows(evs)
    out.append("")
    out += ["## One-second windows", ""]
    out += window_rows(steps)
    return out


def summary_drill(meta, steps, polls, samples, drills):
    out = header(meta, "Failover drill: blackhole of the preferred region")
    t0 = anchor(steps[0]) if steps else None
    names = phase_table(meta, steps)

    def regions(s):
        if t0 is None or not polls:
            return "n/a"
        a, b = step_window(s, t0)
        vals = [metric_delta(polls, a, b, "cascadia_upstream_attempts_total", 'region="%s"' % r)
                for r in ("us-east", "eu-west")]
        return " / ".join(f"{v:.0f}" for v in vals)

    out += ["## Per phase", ""]
    out += step_table(steps, names, t0, polls, extra_cols=[("attempts us-east / eu-west", regions)])
    out.append("")
    out += ["## The drill's own report (GET /admin/drills/ID)", ""]
    for d in drills:
        rep = {k: v for k, v in d.items() if k != "kind"}
        out.append("```json")
        out.append(json.dumps(rep, indent=1))
        out.append("```")
        fo = rep.get("failover_ms")
        out.append(f"- failover_ms {fo} (target ≤ 500): "
                   f"{'met' if fo is not None and fo <= 500 else 'MISSED' if fo is not None else 'not reported'}"
                   f"; detect_ms {rep.get('detect_ms')}; errors during the drill {rep.get('errors')} of "
                   f"{rep.get('requests')}; failback_ms {rep.get('failback_ms')}, flaps {rep.get('flaps')}, "
                   f"steady_ms {rep.get('steady_ms')}, state {rep.get('state')}")
    out.append("")
    out += ["## Client side", ""]
    tot_err = sum(errors_total(s) for s in steps)
    out.append(f"- errors over the run: {tot_err} of {sum(s['sent'] for s in steps)}")
    out.append("")
    out += ["### Timeline (500 ms windows)", ""]
    out += window_rows(steps, 0.5)
    out.append("")
    out += ["## Events", ""]
    out += events_rows(all_events(steps))
    return out


def summary_canary(meta, steps, polls, samples, sims):
    out = header(meta, "Canary split 90/10, sticky on x-user-id")
    out += ["## Generator run (Zipf user ids)", ""]
    out += step_table(steps, ["load"] * len(steps), None, polls)
    out.append("")
    probe_n = sum(sm["n"] for sm in samples)
    for st in steps:
        cpu = gw_proc(st).get("cpu_ms")
        if cpu is not None and probe_n:
            out.append(f"- the probes sent {probe_n} requests during the same window, so the gateway "
                       f"CPU per request over all traffic is about "
                       f"{fmt(cpu * 1000 / (st['completed'] + probe_n), 1)} µs (the column divides by "
                       f"the generator's requests only)")
    for s in sims:
        d = s["requests"]
        tot = sum(d.values())
        out.append(f"- requests the sims served during the generator run (warm-up included): "
                   + ", ".join(f"{k} {v} ({fmt(100 * v / tot, 2)}%)" for k, v in d.items()) if tot else "- no sim counts")
    out.append("")
    weight = float(meta.get("canary_weight", 10)) / 100
    for sm in samples:
        v = sm["versions"]
        tot = sum(v.values())
        out += [f"## Probe `{sm['label']}` ({sm['users']} user ids, {sm['n']} requests, sequential)", ""]
        out.append(f"- statuses {sm['status']}, transport errors {sm['transport_errors']}")
        if tot:
            canary = v.get(meta.get("canary_version", "v2"), 0)
            share = canary / tot
            sigma = (weight * (1 - weight) / tot) ** 0.5
            out.append(f"- x-cascadia-version: {v}; canary share {fmt(100 * share, 2)}% "
                       f"(weight {fmt(100 * weight, 0)}%, binomial σ {fmt(100 * sigma, 2)} pp, "
                       f"z = {fmt((share - weight) / sigma if sigma else None, 2)}"
                       + ("; Zipf traffic on sticky keys is not binomial: a few heavy ids dominate)"
                          if sm["users"].startswith("zipf") else ")"))
        us = sm.get("user_stats")
        if us:
            out.append(f"- users: {us['distinct']} distinct, sticky violations "
                       f"{us['sticky_violations']}, users per version {us['users_per_version']}")
        out.append(f"- probe latency by status (ms): {sm['latency_ms']}")
        out.append("")
    return out


def main(argv):
    global RECORDS
    if len(argv) >= 2 and argv[1] == "poll":
        poll(argv[2], float(argv[3]), argv[4] if len(argv) > 4 else None)
        return
    if len(argv) >= 2 and argv[1] == "sample":
        sample(argv[2:])
        return
    if len(argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2])
    meta, RECORDS = load(argv[1])
    meta = meta or {}
    steps = sorted(of_kind(RECORDS, "step"), key=lambda r: (r.get("step") or {}).get("index", 0))
    polls = sorted(of_kind(RECORDS, "poll"), key=lambda r: r["t"])
    samples = of_kind(RECORDS, "sample")
    bench = meta.get("bench")
    if bench == "overload":
        lines = summary_overload(meta, steps, polls, samples)
    elif bench == "reload":
        lines = summary_reload(meta, steps, polls, samples)
    elif bench == "redis-outage":
        lines = summary_redis(meta, steps, polls, samples, of_kind(RECORDS, "drill"))
    elif bench == "failover-drill":
        lines = summary_drill(meta, steps, polls, samples, of_kind(RECORDS, "drill"))
    elif bench == "canary":
        lines = summary_canary(meta, steps, polls, samples, of_kind(RECORDS, "sims"))
    else:
        sys.exit(f"{argv[1]}: unknown bench {bench!r}")
    print("\n".join(lines))


RECORDS = []

if __name__ == "__main__":
    main(sys.argv)
