#!/usr/bin/env bash
# Failover drills: how long Cascadia takes to move a route's traffic to the next region, and
# what the clients see meanwhile.
#
#   loadtests/scripts/failover.sh            # full: REPEATS=3 of each drill, 10 s / 14 s of load
#   QUICK=1 loadtests/scripts/failover.sh    # smoke test: 1 repeat, 6 s / 8 s of load
#
# Setup (fresh for every drill, so no ejection state carries over): three cascadia-sim
# endpoints, us-east-1 and us-east-2 in backend `fraud-us-east` and eu-west-1 in
# `fraud-eu-west`; one gateway whose route `fraud` prefers us-east, then eu-west, with
# `retries = { attempts = 3, budget_percent = 20, min_per_second = 10 }`. Gateway on
# GATEWAY_CPU; sims, generator and poller on LOAD_CPU.
#
# Drill "kill": open-loop load at RATE for KILL_DURATION; KILL_AT seconds after the
#   generator starts, `kill -9` both us-east sims. Reported: the generator's errors and
#   p50/p99 over the whole run, the failover time, and the gateway's `/admin/backends` right
#   after the load (which endpoints are ejected).
# Drill "drain": the same load for DRAIN_DURATION with everything healthy;
#   `POST /admin/regions/us-east/drain` at DRAIN_AT, `/restore` at RESTORE_AT. Reported: the
#   failover time after the drain and the fail-back time (to us-east) after the restore.
#
# Failover time: a poller reads every sim's `GET /sim/stats` `requests` counter every
# POLL_MS (10 ms) and timestamps it. The failover time is the time from the event (kill or
# drain) to the start of the first window of >= WINDOW_MS (100 ms) in which the target
# region's counter grows by at least 0.95 × RATE × window, i.e. the target region serves
# the full offered rate. Its resolution is the poll interval (median reported). Also
# reported: the time to the target region's first request after the event; "sustained", the
# first such window from which the target also averages >= THRESHOLD × RATE until the next
# event or the end of the load (or over the next SUSTAIN seconds, if set) (a burst of retries right after a kill can pass the 100 ms test while the
# region then settles below the offered rate: "n/a" means the failover never completed);
# and the target's mean rate from the event to the next event or the end of the load. A
# retried request counts at every sim it reached.
#
# Environment (defaults in brackets):
#   RATE [500]  CONNECTIONS [4]  REPEATS [3]
#   KILL_DURATION [10]  KILL_AT [3]                 seconds
#   DRAIN_DURATION [14] DRAIN_AT [3]  RESTORE_AT [8]  seconds from the generator's start
#   POLL_MS [10]  WINDOW_MS [100]  THRESHOLD [0.95]  SUSTAIN [0] seconds, 0 = to the next event (see below)
#   TIMEOUT [300ms]  CONNECT_TIMEOUT [100ms]  ROUTE_TIMEOUT [1s]   backend / route deadlines
#   OUTLIER ['{ consecutive_failures = 3, base_ejection = "1s", max_ejection = "30s",
#             max_ejected_percent = 100 }']       TOML inline table for fraud-us-east
#   HEALTH_CHECK ['']   TOML inline table for active checks on both backends, e.g.
#             '{ path = "/v2/health/ready", interval = "1s", timeout = "250ms", rise = 2, fall = 2 }'
#   DRILLS ["kill drain"]
#   GATEWAY_CPU [0]  LOAD_CPU [1]
#   RESULTS [loadtests/results/failover-DATE.jsonl]   JSON lines; the summary goes to *.md
#   CARGO_TARGET_DIR [target]   SKIP_BUILD [0]
#
# Needs: cargo, python3, curl, taskset (util-linux) and at least 2 CPUs for pinning.
set -euo pipefail
BENCH=failover
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${QUICK:-0} == 1 ]]; then
    REPEATS=${REPEATS:-1}
    KILL_DURATION=${KILL_DURATION:-6}
    KILL_AT=${KILL_AT:-2}
    DRAIN_DURATION=${DRAIN_DURATION:-8}
    DRAIN_AT=${DRAIN_AT:-2}
    RESTORE_AT=${RESTORE_AT:-5}
fi
RATE=${RATE:-500}
CONNECTIONS=${CONNECTIONS:-4}
REPEATS=${REPEATS:-3}
KILL_DURATION=${KILL_DURATION:-10}
KILL_AT=${KILL_AT:-3}
DRAIN_DURATION=${DRAIN_DURATION:-14}
DRAIN_AT=${DRAIN_AT:-3}
RESTORE_AT=${RESTORE_AT:-8}
POLL_MS=${POLL_MS:-10}
WINDOW_MS=${WINDOW_MS:-100}
THRESHOLD=${THRESHOLD:-0.95}
SUSTAIN=${SUSTAIN:-0}
TIMEOUT=${TIMEOUT:-300ms}
CONNECT_TIMEOUT=${CONNECT_TIMEOUT:-100ms}
ROUTE_TIMEOUT=${ROUTE_TIMEOUT:-1s}
OUTLIER=${OUTLIER:-'{ consecutive_failures = 3, base_ejection = "1s", max_ejection = "30s", max_ejected_percent = 100 }'}
HEALTH_CHECK=${HEALTH_CHECK:-}
DRILLS=${DRILLS:-kill drain}

build_binaries
setup_pinning
setup_workdir

SIM_NAMES=(us-east-1 us-east-2 eu-west-1)

# start_stack TAG: three sims and one gateway, fresh.
start_stack() {
    local tag=$1 name region
    for name in "${SIM_NAMES[@]}"; do
        region=${name%-*}
        start_sim "$name" "$WORK/$tag-sim-$name.out" --region "$region" --name "$name" --workers 1
    done
    local hc=""
    if [[ -n $HEALTH_CHECK ]]; then hc="health_check = $HEALTH_CHECK"; fi
    cat >"$WORK/gateway-$tag.toml" <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "fraud-us-east"
region = "us-east"
endpoints = ["${SIM_ADDR[us-east-1]}", "${SIM_ADDR[us-east-2]}"]
timeout = "$TIMEOUT"
connect_timeout = "$CONNECT_TIMEOUT"
outlier = $OUTLIER
$hc

[[backends]]
name = "fraud-eu-west"
region = "eu-west"
endpoints = ["${SIM_ADDR[eu-west-1]}"]
timeout = "$TIMEOUT"
connect_timeout = "$CONNECT_TIMEOUT"
$hc

[[routes]]
name = "fraud"
match = { model = "fraud" }
timeout = "$ROUTE_TIMEOUT"
backends = ["fraud-us-east", "fraud-eu-west"]
retries = { attempts = 3, budget_percent = 20, min_per_second = 10 }
TOML
    start_gateway "$tag"
    GATEWAY_PID=${GW_PID[$tag]} GATEWAY_ADDR=${GW_ADDR[$tag]} ADMIN_ADDR=${GW_ADMIN[$tag]}
    log "$tag: gateway pid $GATEWAY_PID on $GATEWAY_ADDR (admin $ADMIN_ADDR); sims" \
        "us-east-1 ${SIM_ADDR[us-east-1]}, us-east-2 ${SIM_ADDR[us-east-2]}, eu-west-1 ${SIM_ADDR[eu-west-1]}"
}

# The poller: every POLL_MS, one line "unix_time c_us-east-1 c_us-east-2 c_eu-west-1" with the
# sims' request counters (-1 when a sim does not answer). Keep-alive connections; runs until
# killed. Measurement polling only: /sim/* requests are not counted by the sims.
POLLER=$(cat <<'PY'
import http.client, json, sys, time
interval = float(sys.argv[1]) / 1000
addrs = sys.argv[2:]
conns = [None] * len(addrs)
out = sys.stdout
def count(i):
    for _ in range(2):
        try:
            if conns[i] is None:
                host, port = addrs[i].rsplit(":", 1)
                conns[i] = http.client.HTTPConnection(host, int(port), timeout=0.05)
            conns[i].request("GET", "/sim/stats")
            return json.loads(conns[i].getresponse().read())["requests"]
        except Exception:
            if conns[i] is not None:
                conns[i].close()
            conns[i] = None
    return -1
nxt = time.time()
while True:
    t = time.time()
    counts = [count(i) for i in range(len(addrs))]
    out.write(f"{t:.6f} " + " ".join(map(str, counts)) + "\n")
    out.flush()
    nxt += interval
    delay = nxt - time.time()
    if delay > 0:
        time.sleep(delay)
    else:
        nxt = time.time()
PY
)

# The analysis of one drill's poll file; prints one JSON object per event.
ANALYZE=$(cat <<'PY'
import json, statistics, sys
polls, rate, window, threshold = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]) / 1000, float(sys.argv[4])
events = json.loads(sys.argv[5])  # [{"event", "t": unix, "end": unix, "target": region}]
sustain = float(sys.argv[6])
names = ["us-east-1", "us-east-2", "eu-west-1"]
rows = []
with open(polls) as f:
    for line in f:
        p = line.split()
        if len(p) == 4:
            rows.append((float(p[0]), [int(x) for x in p[1:]]))
gaps = [b[0] - a[0] for a, b in zip(rows, rows[1:])]
poll_p50 = statistics.median(gaps) * 1000 if gaps else None
def region_count(counts, region):
    vals = [c for n, c in zip(names, counts) if n.startswith(region)]
    if any(v < 0 for v in vals):
        return None
    return sum(vals)
for ev in events:
    te, region = ev["t"], ev["target"]
    after = [(t, region_count(c, region)) for t, c in rows if t >= te]
    after = [(t, c) for t, c in after if c is not None]
    before = [(t, region_count(c, region)) for t, c in rows if t < te]
    before = [(t, c) for t, c in before if c is not None]
    base = before[-1][1] if before else (after[0][1] if after else None)
    first = next((t for t, c in after if base is not None and c > base), None)
    full, full_rate = None, None
    j = 0
    for i, (ti, ci) in enumerate(after):
        j = max(j, i + 1)
        while j < len(after) and after[j][0] < ti + window:
            j += 1
        if j >= len(after):
            break
        tj, cj = after[j]
        if cj - ci >= threshold * rate * (tj - ti):
            full, full_rate = ti, (cj - ci) / (tj - ti)
            break
    # Sustained: the first window start from which the target also averages >= threshold
    # until the next event or the end of the load (or over SUSTAIN seconds), so that a
    # burst of retries right after the event does not count as a completed failover.
    end = ev["end"]
    def avg(t0, t1):
        seg = [(t, c) for t, c in after if t0 <= t <= t1]
        if len(seg) < 2 or seg[-1][0] <= seg[0][0]:
            return None
        return (seg[-1][1] - seg[0][1]) / (seg[-1][0] - seg[0][0])
    sustained = None
    j = 0
    for i, (ti, ci) in enumerate(after):
        if ti + window > end:
            break
        j = max(j, i + 1)
        while j < len(after) and after[j][0] < ti + window:
            j += 1
        if j >= len(after):
            break
        tj, cj = after[j]
        if cj - ci >= threshold * rate * (tj - ti):
            a = avg(ti, min(ti + sustain, end) if sustain > 0 else end)
            if a is not None and a >= threshold * rate:
                sustained = ti
                break
    # The rate the target region held from the event to the next event or the end of the load.
    held = avg(te, end)
    print(json.dumps({
        "event": ev["event"], "target_region": region,
        "failover_ms": None if full is None else round((full - te) * 1000, 1),
        "sustained_ms": None if sustained is None else round((sustained - te) * 1000, 1),
        "first_request_ms": None if first is None else round((first - te) * 1000, 1),
        "window_rps_at_failover": None if full_rate is None else round(full_rate),
        "rps_after_event": None if held is None else round(held),
        "poll_interval_ms_p50": None if poll_p50 is None else round(poll_p50, 2),
        "polls": len(rows),
    }))
PY
)

# --- the machine, first line of the results ------------------------------------------------
write_meta --bench failover RATE CONNECTIONS REPEATS KILL_DURATION KILL_AT DRAIN_DURATION \
    DRAIN_AT RESTORE_AT POLL_MS WINDOW_MS THRESHOLD TIMEOUT CONNECT_TIMEOUT ROUTE_TIMEOUT \
    OUTLIER HEALTH_CHECK GATEWAY_CPU LOAD_CPU "QUICK=${QUICK:-0}"

# tag_json KIND DRILL REPEAT: adds kind/drill/repeat to each JSON line on stdin.
tag_json() {
    KIND=$1 DRILL=$2 REPEAT=$3 python3 -c '
import json, os, sys
for line in sys.stdin:
    if line.strip():
        rec = json.loads(line)
        print(json.dumps({"kind": os.environ["KIND"], "drill": os.environ["DRILL"],
                          "repeat": int(os.environ["REPEAT"]), **rec}))
'
}

# run_drill DRILL REPEAT
run_drill() {
    local drill=$1 rep=$2 tag="$1-$2" duration poll_pid load_pid events
    start_stack "$tag"
    local polls=${RESULTS%.jsonl}-$tag.polls
    "${PIN_LOAD[@]}" python3 -c "$POLLER" "$POLL_MS" "${SIM_ADDR[us-east-1]}" \
        "${SIM_ADDR[us-east-2]}" "${SIM_ADDR[eu-west-1]}" >"$polls" &
    poll_pid=$!
    CHILDREN+=("$poll_pid")
    if [[ $drill == kill ]]; then duration=$KILL_DURATION; else duration=$DRAIN_DURATION; fi
    log "$tag: $RATE rps × $CONNECTIONS conn for ${duration}s"
    "${PIN_LOAD[@]}" "$BIN/cascadia-load" --url "http://$GATEWAY_ADDR/v2/models/fraud/infer" \
        --rate "$RATE" --connections "$CONNECTIONS" --warmup 0s --duration "${duration}s" \
        --timeout 2s --oip-rows 1 --workers 1 --pid "$GATEWAY_PID" --label "$tag" --json \
        >"$WORK/$tag-load.json" &
    load_pid=$!
    CHILDREN+=("$load_pid")
    local t0=$EPOCHREALTIME t_kill t_drain t_restore
    if [[ $drill == kill ]]; then
        sleep "$(python3 -c "print(max(0, $t0 + $KILL_AT - $EPOCHREALTIME))")"
        t_kill=$EPOCHREALTIME
        kill -9 "${SIM_PID[us-east-1]}" "${SIM_PID[us-east-2]}"
        log "$tag: killed us-east-1 and us-east-2 at +$(python3 -c "print(round($t_kill - $t0, 3))")s"
        events="[{\"event\": \"kill\", \"t\": $t_kill, \"end\": $t0 + $duration, \"target\": \"eu-west\"}]"
    else
        sleep "$(python3 -c "print(max(0, $t0 + $DRAIN_AT - $EPOCHREALTIME))")"
        t_drain=$EPOCHREALTIME
        curl -sf --max-time 2 -X POST "http://$ADMIN_ADDR/admin/regions/us-east/drain" >/dev/null
        log "$tag: drained us-east at +$(python3 -c "print(round($t_drain - $t0, 3))")s"
        sleep "$(python3 -c "print(max(0, $t0 + $RESTORE_AT - $EPOCHREALTIME))")"
        t_restore=$EPOCHREALTIME
        curl -sf --max-time 2 -X POST "http://$ADMIN_ADDR/admin/regions/us-east/restore" >/dev/null
        log "$tag: restored us-east at +$(python3 -c "print(round($t_restore - $t0, 3))")s"
        events="[{\"event\": \"drain\", \"t\": $t_drain, \"end\": $t_restore, \"target\": \"eu-west\"},"
        events+=" {\"event\": \"restore\", \"t\": $t_restore, \"end\": $t0 + $duration, \"target\": \"us-east\"}]"
    fi
    { wait "$load_pid"; } 2>/dev/null
    # The gateway's view right after the load: ejections, failures, drained regions.
    curl -sf --max-time 2 "http://$ADMIN_ADDR/admin/backends" | tag_json admin "$drill" "$rep" >>"$RESULTS" ||
        log "$tag: could not read /admin/backends"
    kill "$poll_pid" 2>/dev/null || true
    wait "$poll_pid" 2>/dev/null || true
    tag_json load "$drill" "$rep" <"$WORK/$tag-load.json" >>"$RESULTS"
    events=$(python3 -c 'import json, sys; print(json.dumps(eval(sys.argv[1])))' "$events")
    python3 -c "$ANALYZE" "$polls" "$RATE" "$WINDOW_MS" "$THRESHOLD" "$events" "$SUSTAIN" |
        tag_json event "$drill" "$rep" >>"$RESULTS"
    stop_children
}

for rep in $(seq 1 "$REPEATS"); do
    for drill in $DRILLS; do
        run_drill "$drill" "$rep"
    done
done

# --- summary -------------------------------------------------------------------------------
SUMMARY=${RESULTS%.jsonl}.md
python3 - "$RESULTS" "$ROOT/loadtests/scripts" <<'PY' | tee "$SUMMARY"
import statistics, sys
sys.path.insert(0, sys.argv[2])
from summarize_common import errors_total as errs, fmt, load, machine_lines
meta, records = load(sys.argv[1])
meta = meta or {}
loads, events, admins = {}, [], {}
for rec in records:
    k = rec.get("kind")
    if k == "load":
        loads[(rec["drill"], rec["repeat"])] = rec
    elif k == "event":
        events.append(rec)
    elif k == "admin":
        admins[(rec["drill"], rec["repeat"])] = rec

print("# Failover drills: us-east (2 sims) → eu-west (1 sim)")
print()
print("\n".join(machine_lines(meta)))
print(f"- {meta.get('rate')} rps open-loop over {meta.get('connections')} connections; kill drill "
      f"{meta.get('kill_duration')} s with `kill -9` of both us-east sims at +{meta.get('kill_at')} s; "
      f"drain drill {meta.get('drain_duration')} s, drain at +{meta.get('drain_at')} s, restore at "
      f"+{meta.get('restore_at')} s")
print(f"- backend timeout {meta.get('timeout')}, connect timeout {meta.get('connect_timeout')}, "
      f"route timeout {meta.get('route_timeout')}, retries attempts = 3 / budget 20% + 10/s; "
      f"us-east outlier `{meta.get('outlier')}`; health check: "
      f"{('`' + meta['health_check'] + '`') if meta.get('health_check') else 'none (passive only)'}")
print(f"- failover = event → start of the first {meta.get('window_ms')} ms window in which the target "
      f"region serves ≥ {meta.get('threshold')} × the offered rate (sims polled every "
      f"{meta.get('poll_ms')} ms)")
if meta.get("quick") == "1":
    print("- **QUICK run: smoke test only, the numbers are indicative**")
print()
print("| drill | repeat | event | target | first request ms | failover ms | sustained ms | target rps after event "
      "| errors (status/transport/timeout/unfinished) | ok | p50 ms | p99 ms | gateway CPU µs/req |")
print("|---|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
for ev in events:
    r = loads.get((ev["drill"], ev["repeat"]))
    e = r["errors"] if r else None
    cpu = (r.get("processes") or [{}])[0].get("cpu_us_per_req") if r else None
    print(f"| {ev['drill']} | {ev['repeat']} | {ev['event']} | {ev['target_region']} "
          f"| {fmt(ev['first_request_ms'], 1)} | {fmt(ev['failover_ms'], 1)} | {fmt(ev['sustained_ms'], 1)} "
          f"| {fmt(ev['rps_after_event'])} "
          f"| {errs(r) if r else 'n/a'} ({e['status']}/{e['transport']}/{e['timeout']}/{e['unfinished']}) "
          f"| {r['ok'] if r else 'n/a'} | {fmt(r['latency_us']['p50'] / 1000 if r else None, 2)} "
          f"| {fmt(r['latency_us']['p99'] / 1000 if r else None, 2)} | {fmt(cpu)} |")
by_event = {}
for ev in events:
    by_event.setdefault(ev["event"], []).append(ev)
print()
for name, evs in by_event.items():
    parts = []
    for key in ("failover_ms", "sustained_ms"):
        vals = [e[key] for e in evs if e.get(key) is not None]
        parts.append(f"{key[:-3]} " + (f"median {statistics.median(vals):.1f} ms" if vals else "never")
                     + f" ({len(vals)}/{len(evs)} repeats reached it)")
    print(f"- {name}: " + "; ".join(parts))
print("- errors and latency are over the whole load run (no warm-up). The time resolution is "
      "the poll interval (about 10 ms).")
print()
print("Gateway `/admin/backends` right after each drill's load:")
print()
for (drill, rep), rec in sorted(admins.items()):
    for pool in rec.get("backends", []):
        eps = "; ".join(
            f"{ep['address']} available={ep['available']} ejected={ep['ejected']} "
            f"attempts={ep['attempts']} failures={ep['failures']}"
            for ep in pool.get("endpoints", []))
        print(f"- {drill}/{rep} {pool['name']} (drained={pool.get('region_drained')}, "
              f"healthy_fraction={pool.get('healthy_fraction')}): {eps}")
PY
log "summary: $SUMMARY"
