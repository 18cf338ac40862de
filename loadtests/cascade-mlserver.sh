#!/usr/bin/env bash
# Cascade through real MLServer, driven by `cascadia-load --rows` with a real dataset.
#
# What it measures: the cancer cascade (stage 1 = the logistic regression inside the
# gateway, stage 2 = MLServer's GradientBoostingClassifier `cancer-gbc`) against the very
# same cascade with accept_below = 0.0 and reject_above = 1.0, which escalates every row.
# Both are routes of ONE gateway over ONE MLServer, so the code path and the gateway's
# overhead are the same; the difference is only what the cascade saves. The variants
# alternate A/B/A/B... in one run, and for every window the script records:
#   - p50/p90/p95/p99 and errors, from `cascadia-load --json` (`latency_us`; open loop,
#     corrected for coordinated omission), over the measured window (warm-up discarded).
#     The p95 is the generator's (`latency_us.p95`) and is the one to quote; "gw p95" beside
#     it is only a cross-check, interpolated in the gateway's own latency histogram
#     (cascadia_request_duration_seconds, time to response headers, buckets 0.5, 1, 2.5,
#     5 ms...), so it is coarse. (Generators older than the p95 field print "–" for it);
#   - the gateway's CPU µs per request (`cascadia-load --pid`, utime + stime);
#   - stage-2 calls per request: Δ of the gateway's cascadia_upstream_responses_total of
#     the route (every escalation is one request to MLServer) ÷ Δ of /admin/cascade
#     stats.requests; for batch 1 it is also Δrows_escalated ÷ Δrequests;
#   - escalated rows per request and the share of rows answered locally, from Δ of
#     /admin/cascade (rows_escalated, answered_local, answered_stage2).
# The counter deltas span warm-up plus window (the generator cycles over the 150 rows
# either way, so the shares are those of the dataset); latency and CPU are the window's.
#
# Rows: tests/e2e/train_models.py's cancer-rows.json (150 rows of scikit-learn's breast
# cancer data spread over the whole set, 30 FP64 features), converted to CSV for --rows.
#
#   loadtests/cascade-mlserver.sh                    # ~15 min after the build
#   QUICK=1 loadtests/cascade-mlserver.sh            # smoke test: 1 round, 1 s + 3 s windows
#   RATE=150 RATE32=40 SKIP_BUILD=1 loadtests/cascade-mlserver.sh   # skip the probe
#   RATE=600 ROUNDS=4 ROUNDS32=0 CONTROL=0 LOW_RATE=0 GRPC=1 loadtests/cascade-mlserver.sh
#                                 # reduced set: batch 1 over REST and gRPC only (run 3)
#
# Layout: the gateway on GATEWAY_CPU with `--workers 1`; MLServer (parallel_workers 0: one
# Python process) on MLSERVER_CPU and the generator on LOAD_CPU (both default to CPU 1).
# Before the rounds, unless RATE (and RATE32) is set, a probe runs escalate-all (the
# heavier variant) at PROBE_RATES and keeps the highest step with 0 errors, achieved rate
# ≥ 97% of target and p99 ≤ PROBE_P99_MS; the rounds then run at RATE_FRACTION of it, so
# MLServer is not saturated by either leg. Order of the sets: batch 1 at RATE, the control
# (CONTROL=1), batch 1 at LOW_RATE, batch 32 at RATE32, then (GRPC=1) batch 1 over gRPC at RATE.
#
# Full run as recorded in BENCHMARKS.md (about 21 minutes):
#   ROUNDS=5 ROUNDS32=3 GRPC=1 loadtests/cascade-mlserver.sh
#
# Environment (defaults in brackets):
#   ROUNDS [4]  rounds at batch 1 (each = one window per variant, order A/B)
#   ROUNDS32 [3]  rounds at batch 32 (0 = skip batch 32, and its probe)
#   WARMUP [5s]  DURATION [20s]  CONNECTIONS [8]
#   RATE, RATE32 [from the probe]   PROBE_RATES ["100,200,400,600,800,1000,1200,1500"] (batch 1)
#   PROBE_RATES32 ["50,100,200,300,400,500,600"]   PROBE_STEP [4s]   PROBE_P99_MS [25]
#   LOW_RATE [200]  batch-1 rounds also at this fixed rate (0 = skip), where wake-ups dominate
#   RATE_FRACTION [0.6]
#   GRPC [0]  set 1 to also run the batch-1 rounds over gRPC (MLServer's gRPC port, h2c)
#   CONTROL [1]  after the batch-1 rounds at RATE, ROUNDS rounds straight to MLServer (no
#                gateway) at RATE and at the cascade's stage-2 rate (RATE × stage-2 calls
#                per request), alternating: MLServer's own latency and CPU at either rate
#   GATEWAY_CPU [0]  LOAD_CPU [1]  MLSERVER_CPU [LOAD_CPU]
#   VENV [.venv]   the venv with mlserver, mlserver-sklearn, scikit-learn (scripts/test)
#   RESULTS [loadtests/results/cascade-mlserver-DATE.jsonl]  JSON lines; summary in *.md
#   CARGO_TARGET_DIR [target]   SKIP_BUILD [0]
#
# Every process it starts (MLServer in its own process group, the gateway, the generator)
# is ended, and its temporary directory removed, on exit (trap).
#
# Needs: cargo, python3, curl, taskset, the venv above.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BENCH=cascade-mlserver

if [[ ${QUICK:-0} == 1 ]]; then
    ROUNDS=${ROUNDS:-1}
    ROUNDS32=${ROUNDS32:-1}
    WARMUP=${WARMUP:-1s}
    DURATION=${DURATION:-3s}
    PROBE_STEP=${PROBE_STEP:-2s}
fi
ROUNDS=${ROUNDS:-4}
ROUNDS32=${ROUNDS32:-3}
WARMUP=${WARMUP:-5s}
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-8}
PROBE_RATES=${PROBE_RATES:-100,200,400,600,800,1000,1200,1500}
LOW_RATE=${LOW_RATE:-200}
PROBE_RATES32=${PROBE_RATES32:-50,100,200,300,400,500,600}
PROBE_STEP=${PROBE_STEP:-4s}
PROBE_P99_MS=${PROBE_P99_MS:-25}
RATE_FRACTION=${RATE_FRACTION:-0.6}
GRPC=${GRPC:-0}
CONTROL=${CONTROL:-1}
GATEWAY_CPU=${GATEWAY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
MLSERVER_CPU=${MLSERVER_CPU:-$LOAD_CPU}
VENV=${VENV:-.venv}
RESULTS=${RESULTS:-loadtests/results/$BENCH-$(date +%Y%m%d-%H%M%S).jsonl}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release
PYTHON=$VENV/bin/python
MLSERVER=$VENV/bin/mlserver

log() { echo "$BENCH: $*" >&2; }

# --- cleanup: every child, then the temp dir -------------------------------------------------
WORK=""
MLSERVER_PID=""
GW_PID=""
LOAD_PID=""
cleanup() {
    local rc=$?
    # The generator, if a window was interrupted.
    if [[ -n $LOAD_PID ]]; then kill "$LOAD_PID" 2>/dev/null || true; fi
    if [[ -n $GW_PID ]]; then kill "$GW_PID" 2>/dev/null || true; fi
    # MLServer runs in its own process group (setsid): end the whole group.
    if [[ -n $MLSERVER_PID ]]; then
        kill -TERM -- "-$MLSERVER_PID" 2>/dev/null || kill -TERM "$MLSERVER_PID" 2>/dev/null || true
    fi
    for pid in $LOAD_PID $GW_PID $MLSERVER_PID; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    if [[ -n $MLSERVER_PID ]]; then
        kill -KILL -- "-$MLSERVER_PID" 2>/dev/null || kill -KILL "$MLSERVER_PID" 2>/dev/null || true
    fi
    if [[ -n $GW_PID ]]; then kill -KILL "$GW_PID" 2>/dev/null || true; fi
    for pid in $LOAD_PID $GW_PID $MLSERVER_PID; do wait "$pid" 2>/dev/null || true; done
    if [[ -n $WORK ]]; then rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- checks, build, pinning ------------------------------------------------------------------
for f in "$PYTHON" "$MLSERVER"; do
    [[ -x $f ]] || { log "missing $f: create the venv with scripts/test (or set VENV)"; exit 1; }
done
for cmd in python3 curl; do
    command -v $cmd >/dev/null || { log "needs $cmd"; exit 1; }
done
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building release binaries into $BIN"
    cargo build --release -p cascadia -p cascadia-loadtests
fi
for bin in cascadia cascadia-load; do
    [[ -x $BIN/$bin ]] || { log "missing $BIN/$bin"; exit 1; }
done
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
    PIN_GATEWAY=(taskset -c "$GATEWAY_CPU")
    PIN_LOAD=(taskset -c "$LOAD_CPU")
    PIN_MLSERVER=(taskset -c "$MLSERVER_CPU")
else
    log "WARNING: taskset missing or fewer than 2 CPUs: running unpinned"
    PIN_GATEWAY=()
    PIN_LOAD=()
    PIN_MLSERVER=()
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cascadia-$BENCH.XXXXXX")
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# --- models, rows, stage 1 -------------------------------------------------------------------
log "training the models into $WORK/e2e"
"$PYTHON" tests/e2e/train_models.py "$WORK/e2e" >"$WORK/train.out" 2>&1 ||
    { cat "$WORK/train.out" >&2; exit 1; }
cp "$WORK/e2e/cancer-stage1.json" "$WORK/stage1.json"
python3 - "$WORK/e2e/cancer-rows.json" "$WORK/cancer-rows.csv" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as f:
    f.write(",".join(f"f{i}" for i in range(len(rows[0]))) + "\n")
    for row in rows:
        f.write(",".join(repr(float(v)) for v in row) + "\n")
print(f"{len(rows)} rows x {len(rows[0])} features", file=sys.stderr)
PY

# --- MLServer --------------------------------------------------------------------------------
MS_DIR=$WORK/mlserver
mkdir -p "$MS_DIR"
for model in cancer-lr cancer-gbc digits-lr digits-gbc; do
    mkdir -p "$MS_DIR/$model"
    cp "$WORK/e2e/models/$model/model.joblib" "$WORK/e2e/models/$model/model-settings.json" \
        "$MS_DIR/$model/"
done
MS_HTTP=$(free_port)
MS_GRPC=$(free_port)
MS_METRICS=$(free_port)
cat >"$MS_DIR/settings.json" <<JSON
{"http_port": $MS_HTTP, "grpc_port": $MS_GRPC, "metrics_port": $MS_METRICS,
 "parallel_workers": 0, "host": "127.0.0.1"}
JSON
# setsid: its own process group, so the cleanup ends anything it spawns. In a script (no
# job control) the background child is not a group leader, so setsid execs in place and
# $! is MLServer itself.
setsid "${PIN_MLSERVER[@]}" "$MLSERVER" start "$MS_DIR" >"$WORK/mlserver.out" 2>&1 &
MLSERVER_PID=$!
log "MLServer pid $MLSERVER_PID on 127.0.0.1:$MS_HTTP (gRPC $MS_GRPC), CPU $MLSERVER_CPU"
ready=0
for _ in $(seq 1 600); do
    if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 \
        "http://127.0.0.1:$MS_HTTP/v2/models/cancer-gbc/ready" 2>/dev/null) == 200 ]]; then
        ready=1
        break
    fi
    kill -0 "$MLSERVER_PID" 2>/dev/null || break
    sleep 0.2
done
if ((!ready)); then
    log "MLServer did not become ready; its output:"
    tail -50 "$WORK/mlserver.out" >&2
    exit 1
fi
log "MLServer ready"

# --- the gateway -----------------------------------------------------------------------------
GW_LISTEN=127.0.0.1:$(free_port)
GW_ADMIN_LISTEN=127.0.0.1:$(free_port)
cascade_route() { # NAME MODEL ACCEPT_BELOW REJECT_ABOVE
    cat <<TOML

[[routes]]
name = "$1"
match = { model = "$2" }
backends = ["mlserver", "mlserver-grpc"]
upstream_model = "cancer-gbc"

[routes.cascade]
model = "stage1.json"
input = "x"
accept_below = $3
reject_above = $4
output = "predict_proba"
output_columns = 2
TOML
}
{
    cat <<TOML
[gateway]
listen = "$GW_LISTEN"
admin_listen = "$GW_ADMIN_LISTEN"

[[backends]]
name = "mlserver"
region = "local"
endpoints = ["127.0.0.1:$MS_HTTP"]
timeout = "5s"

# MLServer serves gRPC on its own port: an h2c backend beside the REST one.
[[backends]]
name = "mlserver-grpc"
region = "local"
protocol = "h2c"
endpoints = ["127.0.0.1:$MS_GRPC"]
timeout = "5s"
TOML
    cascade_route cascade cancer-cascade 0.05 0.95
    # Same cascade, bands that no score can leave: every row goes to stage 2.
    cascade_route escalate-all cancer-escalate-all 0.0 1.0
} >"$WORK/gateway.toml"
"${PIN_GATEWAY[@]}" "$BIN/cascadia" run --config "$WORK/gateway.toml" --workers 1 --no-watch \
    >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
GW_PID=$!
for _ in $(seq 1 200); do
    curl -sf --max-time 1 -o /dev/null "http://$GW_ADMIN_LISTEN/admin/cascade" && break
    kill -0 "$GW_PID" 2>/dev/null || { log "gateway exited:"; cat "$WORK/gateway.err" >&2; exit 1; }
    sleep 0.05
done
log "gateway pid $GW_PID on $GW_LISTEN (admin $GW_ADMIN_LISTEN), CPU $GATEWAY_CPU"

# One request through each route, checked, before any load.
for model in cancer-cascade cancer-escalate-all; do
    code=$(curl -s -o "$WORK/check.json" -w '%{http_code}' --max-time 5 \
        -H 'content-type: application/json' "http://$GW_LISTEN/v2/models/$model/infer" \
        --data "$(python3 -c '
import json, sys
rows = json.load(open(sys.argv[1]))[:4]
print(json.dumps({"inputs": [{"name": "x", "shape": [len(rows), len(rows[0])],
    "datatype": "FP64", "data": rows}], "outputs": [{"name": "predict_proba"}]}))
' "$WORK/e2e/cancer-rows.json")")
    if [[ $code != 200 ]]; then
        log "check request to $model failed with $code:"
        cat "$WORK/check.json" >&2
        exit 1
    fi
done
log "both routes answer"

# --- measuring -------------------------------------------------------------------------------
mkdir -p "$(dirname "$RESULTS")"
GIT_REV=${GIT_REV:-$(git rev-parse --short HEAD 2>/dev/null || echo no-commit)}
[[ -n $(git status --porcelain 2>/dev/null | head -1) ]] && GIT_REV="$GIT_REV+dirty"
MLSERVER_VERSION=$("$MLSERVER" --version 2>/dev/null | tail -1)
SKLEARN_VERSION=$("$PYTHON" -c 'import sklearn; print(sklearn.__version__)')
export NPROC=$(nproc) CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
export DATE_UTC=$(date -u +%Y-%m-%dT%H:%M:%SZ) KERNEL=$(uname -r) LOADAVG="$(cut -d' ' -f1-3 /proc/loadavg)"
export GIT_REV MLSERVER_VERSION SKLEARN_VERSION LOW_RATE ROUNDS ROUNDS32 WARMUP DURATION CONNECTIONS \
    GATEWAY_CPU LOAD_CPU MLSERVER_CPU GRPC CONTROL
python3 -c '
import json, os
keys = "NPROC CPU_MODEL DATE_UTC KERNEL LOADAVG GIT_REV MLSERVER_VERSION SKLEARN_VERSION LOW_RATE ROUNDS ROUNDS32 WARMUP DURATION CONNECTIONS GATEWAY_CPU LOAD_CPU MLSERVER_CPU GRPC CONTROL".split()
print(json.dumps({"kind": "meta", "bench": "cascade-mlserver", **{k.lower(): os.environ[k] for k in keys}}))
' >"$RESULTS"
log "results: $RESULTS"

# snapshot FILE: /admin/cascade and /metrics of the gateway, as one JSON object.
snapshot() {
    {
        curl -sf --max-time 5 "http://$GW_ADMIN_LISTEN/admin/cascade"
        echo
        curl -sf --max-time 5 "http://$GW_ADMIN_LISTEN/metrics"
    } >"$1"
}

# load WIRE MODEL BATCH [ARG...]: one cascadia-load run on LOAD_CPU against the gateway.
load() {
    local wire=$1 model=$2 batch=$3
    shift 3
    local extra=()
    if [[ $wire == grpc ]]; then extra=(--grpc --model "$model"); fi
    "${PIN_LOAD[@]}" "$BIN/cascadia-load" --url "http://$GW_LISTEN/v2/models/$model/infer" \
        --rows "$WORK/cancer-rows.csv" --batch "$batch" --input x --datatype FP64 \
        --output predict_proba --connections "$CONNECTIONS" --workers 1 --quiet --json \
        "${extra[@]}" "$@"
}

# window ROUND VARIANT WIRE BATCH RATE: one measured window; appends its line to RESULTS.
window() {
    local round=$1 variant=$2 wire=$3 batch=$4 rate=$5
    local route=$variant model=cancer-$variant
    snapshot "$WORK/before"
    load "$wire" "$model" "$batch" --rate "$rate" --warmup "$WARMUP" --duration "$DURATION" \
        --pid "$GW_PID" --pid "$MLSERVER_PID" --label "$variant/$wire/b$batch/r$round" >"$WORK/report" &
    LOAD_PID=$!
    wait "$LOAD_PID"
    LOAD_PID=""
    snapshot "$WORK/after"
    python3 - "$WORK/before" "$WORK/after" "$WORK/report" "$route" "$round" "$variant" \
        "$wire" "$batch" "$rate" "$GW_PID" "$MLSERVER_PID" >>"$RESULTS" <<'PY'
import json, re, sys
before, after, report, route, rnd, variant, wire, batch, rate, gw_pid, ms_pid = sys.argv[1:]

def parse(path):
    text = open(path).read()
    admin_text, _, metrics = text.partition("\n")
    entry = next(r for r in json.loads(admin_text)["routes"] if r["route"] == route)
    upstream = 0
    hist = {}
    for line in metrics.splitlines():
        m = re.match(r'cascadia_upstream_responses_total\{(.*)\} (\d+)$', line)
        if m and f'route="{route}"' in m.group(1):
            upstream += int(m.group(2))
        m = re.match(r'cascadia_request_duration_seconds_bucket\{route="([^"]*)",le="([^"]*)"\} (\d+)$', line)
        if m and m.group(1) == route:
            hist[m.group(2)] = int(m.group(3))
    return entry["stats"], upstream, hist

def quantile(hist, q):
    """Linear interpolation inside the gateway's cumulative histogram (coarse buckets)."""
    bounds = sorted((float(b), n) for b, n in hist.items() if b != "+Inf")
    total = hist.get("+Inf", bounds[-1][1] if bounds else 0)
    if total <= 0:
        return None
    target, lo, below = q * total, 0.0, 0
    for bound, n in bounds:
        if n >= target:
            return 1000 * (lo + (bound - lo) * (target - below) / max(1, n - below))
        lo, below = bound, n
    return None

s0, u0, h0 = parse(before)
s1, u1, h1 = parse(after)
keys = ["requests", "rows_accepted", "rows_rejected", "rows_escalated",
        "answered_local", "answered_stage2", "answered_degraded"]
delta = {k: s1[k] - s0[k] for k in keys}
delta["stage2_calls"] = u1 - u0
hist = {b: h1[b] - h0.get(b, 0) for b in h1}
delta["gateway_p95_ms"] = quantile(hist, 0.95)
rep = json.loads(open(report).read().strip().splitlines()[-1])
print(json.dumps({"kind": "window", "round": int(rnd), "variant": variant, "wire": wire,
                  "batch": int(batch), "rate": float(rate), "cascade": delta,
                  "gateway_pid": int(gw_pid), "mlserver_pid": int(ms_pid), "report": rep}))
PY
    python3 - "$RESULTS" <<'PY' >&2
import json, sys
w = json.loads(open(sys.argv[1]).read().splitlines()[-1])
r, c = w["report"], w["cascade"]
lat, e = r["latency_us"], r["errors"]
cpu = next((p["cpu_us_per_req"] for p in r["processes"] if p["pid"] == w["gateway_pid"]), None)
errors = e["status"] + e["transport"] + e["timeout"] + e["unfinished"]
ms = lambda v, scale=1000: "-" if v is None else f"{v / scale:.2f}"
print(f"  {w['variant']:>12} {w['wire']} b{w['batch']} r{w['round']}: {r['completed']} done, "
      f"{errors} errors, p50 {lat['p50'] / 1000:.2f} p90 {lat['p90'] / 1000:.2f} "
      f"p95 {ms(lat.get('p95'))} p99 {lat['p99'] / 1000:.2f} ms "
      f"(gw p95 {ms(c.get('gateway_p95_ms'), 1)}), gw CPU {cpu or 0:.0f} us/req, "
      f"stage2/req {c['stage2_calls'] / max(1, c['requests']):.3f}, "
      f"local {c['answered_local'] / max(1, c['answered_local'] + c['answered_stage2']):.3f}")
PY
}

# probe WIRE BATCH RATES: a stepped run on escalate-all; prints the highest sustained rate.
probe() {
    local wire=$1 batch=$2 rates=$3
    log "probe ($wire, batch $batch) on escalate-all at $rates rps, $PROBE_STEP each"
    load "$wire" cancer-escalate-all "$batch" --rate-steps "$rates" --step-duration "$PROBE_STEP" \
        --warmup 2s --pid "$GW_PID" --label "probe/$wire/b$batch" >"$WORK/probe" &
    LOAD_PID=$!
    wait "$LOAD_PID"
    LOAD_PID=""
    python3 - "$WORK/probe" "$RESULTS" "$wire" "$batch" "$PROBE_P99_MS" <<'PY'
import json, sys
path, results, wire, batch, p99_max = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
best = None
with open(results, "a") as out:
    for line in open(path):
        if not line.strip():
            continue
        rep = json.loads(line)
        out.write(json.dumps({"kind": "probe", "wire": wire, "batch": int(batch), "report": rep}) + "\n")
        target, achieved = rep["target_rps"], rep["achieved_rps"]
        p99 = rep["latency_us"]["p99"] / 1000
        e = rep["errors"]
        errors = e["status"] + e["transport"] + e["timeout"] + e["unfinished"]
        ok = errors == 0 and achieved >= 0.97 * target and p99 <= p99_max
        p95 = rep["latency_us"].get("p95")
        p95 = "-" if p95 is None else f"{p95 / 1000:.2f}"
        print(f"  probe {wire} b{batch} {target:g} rps: achieved {achieved:.1f}, p95 {p95} p99 {p99:.2f} ms, "
              f"errors {errors} -> {'ok' if ok else 'no'}", file=sys.stderr)
        if ok and (best is None or target > best):
            best = target
print(best if best is not None else 0)
PY
}

# direct_window ROUND RATE: the generator straight to MLServer's cancer-gbc (no gateway), batch
# 1, measuring MLServer's CPU; appends {"kind": "direct", ...} to RESULTS.
direct_window() {
    local round=$1 rate=$2
    "${PIN_LOAD[@]}" "$BIN/cascadia-load" --url "http://127.0.0.1:$MS_HTTP/v2/models/cancer-gbc/infer" \
        --rows "$WORK/cancer-rows.csv" --batch 1 --input x --datatype FP64 --output predict_proba \
        --connections "$CONNECTIONS" --workers 1 --quiet --json --rate "$rate" --warmup "$WARMUP" \
        --duration "$DURATION" --pid "$MLSERVER_PID" --label "direct/r$round/$rate" >"$WORK/report" &
    LOAD_PID=$!
    wait "$LOAD_PID"
    LOAD_PID=""
    python3 - "$WORK/report" "$round" "$rate" "$MLSERVER_PID" >>"$RESULTS" <<'PY'
import json, sys
rep = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(json.dumps({"kind": "direct", "round": int(sys.argv[2]), "rate": float(sys.argv[3]),
                  "mlserver_pid": int(sys.argv[4]), "report": rep}))
PY
    python3 - "$RESULTS" <<'PY' >&2
import json, sys
w = json.loads(open(sys.argv[1]).read().splitlines()[-1])
r = w["report"]; l = r["latency_us"]; e = r["errors"]
cpu = r["processes"][0]["cpu_us_per_req"] or 0
p95 = "-" if l.get("p95") is None else f"{l['p95'] / 1000:.2f}"
print(f"  direct r{w['round']} {w['rate']:g} rps: p50 {l['p50'] / 1000:.2f} p90 {l['p90'] / 1000:.2f} "
      f"p95 {p95} p99 {l['p99'] / 1000:.2f} ms, {e['status'] + e['transport'] + e['timeout'] + e['unfinished']} "
      f"errors, MLServer CPU {cpu:.0f} us/req")
PY
}

pick_rate() { # SUSTAINED -> RATE_FRACTION of it, at least 1
    python3 -c 'import sys; print(max(1, int(float(sys.argv[1]) * float(sys.argv[2]))))' "$1" "$RATE_FRACTION"
}

if [[ -z ${RATE:-} ]]; then
    sustained=$(probe rest 1 "$PROBE_RATES")
    ((${sustained%.*} > 0)) || { log "probe: no rate sustained at batch 1"; exit 1; }
    RATE=$(pick_rate "$sustained")
    log "batch 1: sustained $sustained rps, running at $RATE"
fi
if [[ -z ${RATE32:-} ]] && ((ROUNDS32 > 0)); then
    sustained=$(probe rest 32 "$PROBE_RATES32")
    ((${sustained%.*} > 0)) || { log "probe: no rate sustained at batch 32"; exit 1; }
    RATE32=$(pick_rate "$sustained")
    log "batch 32: sustained $sustained rps, running at $RATE32"
fi

# rounds WIRE BATCH RATE N: N rounds, each cascade then escalate-all (A/B/A/B...).
rounds() {
    local wire=$1 batch=$2 rate=$3 n=$4 r
    log "$n rounds, $wire, batch $batch, $rate rps, $WARMUP + $DURATION windows"
    for ((r = 1; r <= n; r++)); do
        window "$r" cascade "$wire" "$batch" "$rate"
        window "$r" escalate-all "$wire" "$batch" "$rate"
    done
}
rounds rest 1 "$RATE" "$ROUNDS"
if [[ $CONTROL == 1 ]]; then
    # The cascade's stage-2 arrival rate at RATE: RATE × the measured stage-2 calls/request.
    S2_RATE=$(python3 - "$RESULTS" "$RATE" <<'PY'
import json, statistics, sys
ws = [json.loads(l) for l in open(sys.argv[1]) if '"kind": "window"' in l]
share = statistics.median(w["cascade"]["stage2_calls"] / w["cascade"]["requests"] for w in ws
                          if w["variant"] == "cascade" and w["batch"] == 1 and w["rate"] == float(sys.argv[2]))
print(max(1, round(float(sys.argv[2]) * share)))
PY
)
    log "$ROUNDS control rounds: MLServer direct at $RATE and $S2_RATE rps (the cascade's stage-2 rate)"
    for ((r = 1; r <= ROUNDS; r++)); do
        direct_window "$r" "$RATE"
        direct_window "$r" "$S2_RATE"
    done
fi
if ((LOW_RATE > 0)); then rounds rest 1 "$LOW_RATE" "$ROUNDS"; fi
if ((ROUNDS32 > 0)); then rounds rest 32 "$RATE32" "$ROUNDS32"; fi
if [[ $GRPC == 1 ]]; then rounds grpc 1 "$RATE" "$ROUNDS"; fi

# Anything the gateway logged at warn or above, for the record.
if grep -qiE 'warn|error' "$WORK/gateway.err" "$WORK/gateway.out" 2>/dev/null; then
    log "the gateway logged warnings or errors (first 20 lines):"
    grep -hiE 'warn|error' "$WORK/gateway.err" "$WORK/gateway.out" | head -20 >&2
fi

# --- summary ---------------------------------------------------------------------------------
SUMMARY=${RESULTS%.jsonl}.md
python3 - "$RESULTS" <<'PY' | tee "$SUMMARY"
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
meta = lines[0]
wins = [l for l in lines if l["kind"] == "window"]
print(f"# cascade-mlserver {meta['date_utc']}\n")
print(f"{meta['nproc']} × {meta['cpu_model']}, kernel {meta['kernel']}, load average at start "
      f"{meta['loadavg']}, git {meta['git_rev']}, {meta['mlserver_version']}, scikit-learn "
      f"{meta['sklearn_version']}; gateway on CPU {meta['gateway_cpu']} (--workers 1), MLServer on "
      f"CPU {meta['mlserver_cpu']}, generator on CPU {meta['load_cpu']}; {meta['connections']} "
      f"connections, {meta['warmup']} "
      f"warm-up + {meta['duration']} windows. Latency (p50/p90/p95/p99) is the client's "
      f"(cascadia-load's latency_us, from each request's due time); gw p95 is only a cross-check, "
      f"interpolated in the gateway's own histogram (buckets 0.5, 1, 2.5, 5, 10 ms...: coarse).\n")

def row(w):
    r, c = w["report"], w["cascade"]
    lat, e = r["latency_us"], r["errors"]
    req = max(1, c["requests"])
    rows = max(1, c["answered_local"] + c["answered_stage2"] + c["answered_degraded"])
    cpu = next((p["cpu_us_per_req"] for p in r["processes"] if p["pid"] == w["gateway_pid"]), None)
    mscpu = next((p["cpu_us_per_req"] for p in r["processes"] if p["pid"] == w.get("mlserver_pid")), None)
    return {
        "p50": lat["p50"] / 1000, "p90": lat["p90"] / 1000, "p99": lat["p99"] / 1000,
        "p95": None if lat.get("p95") is None else lat["p95"] / 1000,
        "gwp95": c.get("gateway_p95_ms"),
        "errors": e["status"] + e["transport"] + e["timeout"] + e["unfinished"],
        "completed": r["completed"], "achieved": r["achieved_rps"],
        "stage2": c["stage2_calls"] / req, "esc_rows": c["rows_escalated"] / req,
        "local": c["answered_local"] / rows, "degraded": c["answered_degraded"], "cpu": cpu,
        "mscpu": mscpu,
    }

def fmt(v, nd=2):
    return "–" if v is None else f"{v:.{nd}f}"

KEYS = ("p50", "p90", "p95", "p99", "gwp95", "stage2", "esc_rows", "local", "cpu", "mscpu")
groups = {}
for w in wins:
    groups.setdefault((w["wire"], w["batch"], w["rate"]), []).append(w)
print("## Medians over rounds\n")
print("| wire | batch | rps | variant | rounds | p50 ms | p90 ms | p95 ms | p99 ms | gw p95 ms | stage-2 calls/req | escalated rows/req | local share | gateway CPU µs/req | MLServer CPU µs/req | errors |")
print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
ratios = []
for (wire, batch, rate), ws in groups.items():
    med = {}
    for variant in ("cascade", "escalate-all"):
        rs = [row(w) for w in ws if w["variant"] == variant]
        m = {}
        for k in KEYS:
            vals = [x[k] for x in rs if x[k] is not None]
            m[k] = statistics.median(vals) if vals else None
        m["errors"] = sum(x["errors"] for x in rs)
        m["degraded"] = sum(x["degraded"] for x in rs)
        med[variant] = m
        print(f"| {wire} | {batch} | {rate:g} | {variant} | {len(rs)} | {fmt(m['p50'])} | {fmt(m['p90'])} | "
              f"{fmt(m['p95'])} | {fmt(m['p99'])} | {fmt(m['gwp95'])} | {fmt(m['stage2'], 3)} | {fmt(m['esc_rows'], 2)} | "
              f"{fmt(m['local'], 3)} | {fmt(m['cpu'], 0)} | {fmt(m['mscpu'], 0)} | {m['errors']} |")
    ratios.append((wire, batch, rate, med["cascade"], med["escalate-all"]))
print("\n## Cascade ÷ escalate-all (ratio of the medians)\n")
print("| wire | batch | rps | p50 | p90 | p95 | p99 | gw p95 | stage-2 calls/req | gateway CPU/req | MLServer CPU/req |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for wire, batch, rate, a, b in ratios:
    q = lambda k: fmt(a[k] / b[k]) if a[k] is not None and b[k] else "–"
    print(f"| {wire} | {batch} | {rate:g} | {q('p50')} | {q('p90')} | {q('p95')} | {q('p99')} | {q('gwp95')} | "
          f"{q('stage2')} | {q('cpu')} | {q('mscpu')} |")
print("\n## Every window, in run order\n")
print("| # | wire | batch | rps | round | variant | completed | errors | p50 ms | p90 ms | p95 ms | p99 ms | gw p95 ms | stage-2 calls/req | escalated rows/req | local share | degraded rows | gateway CPU µs/req | MLServer CPU µs/req |")
print("|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for i, w in enumerate(wins, 1):
    x = row(w)
    print(f"| {i} | {w['wire']} | {w['batch']} | {w['rate']:g} | {w['round']} | {w['variant']} | "
          f"{x['completed']} | {x['errors']} | {fmt(x['p50'])} | {fmt(x['p90'])} | {fmt(x['p95'])} | {fmt(x['p99'])} | "
          f"{fmt(x['gwp95'])} | {fmt(x['stage2'], 3)} | {fmt(x['esc_rows'], 2)} | {fmt(x['local'], 3)} | "
          f"{x['degraded']} | {fmt(x['cpu'], 0)} | {fmt(x['mscpu'], 0)} |")
directs = [l for l in lines if l["kind"] == "direct"]
if directs:
    print("\n## Control: straight to MLServer (no gateway), batch 1\n")
    print("| rps | rounds | p50 ms | p90 ms | p95 ms | p99 ms | MLServer CPU µs/req | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rate in sorted({d["rate"] for d in directs}, reverse=True):
        ds = [d for d in directs if d["rate"] == rate]
        med = lambda f: statistics.median(f(d) for d in ds)
        p95s = [d["report"]["latency_us"]["p95"] for d in ds if d["report"]["latency_us"].get("p95") is not None]
        p95s = p95s if len(p95s) == len(ds) else None
        errs = sum(sum(d["report"]["errors"][k] for k in ("status", "transport", "timeout", "unfinished")) for d in ds)
        print(f"| {rate:g} | {len(ds)} | {med(lambda d: d['report']['latency_us']['p50']) / 1000:.2f} | "
              f"{med(lambda d: d['report']['latency_us']['p90']) / 1000:.2f} | "
              f"{fmt(p95s and statistics.median(p95s) / 1000)} | "
              f"{med(lambda d: d['report']['latency_us']['p99']) / 1000:.2f} | "
              f"{med(lambda d: d['report']['processes'][0]['cpu_us_per_req'] or 0):.0f} | {errs} |")
    print("\nEvery control window, in run order:\n")
    print("| round | rps | p50 ms | p90 ms | p95 ms | p99 ms | MLServer CPU µs/req |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for d in directs:
        l = d["report"]["latency_us"]
        print(f"| {d['round']} | {d['rate']:g} | {l['p50'] / 1000:.2f} | {l['p90'] / 1000:.2f} | "
              f"{fmt(None if l.get('p95') is None else l['p95'] / 1000)} | "
              f"{l['p99'] / 1000:.2f} | {d['report']['processes'][0]['cpu_us_per_req'] or 0:.0f} |")
probes = [l for l in lines if l["kind"] == "probe"]
if probes:
    print("\n## Probe (escalate-all, stepped)\n")
    print("| wire | batch | target rps | achieved rps | p50 ms | p95 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for p in probes:
        r = p["report"]
        e = r["errors"]
        print(f"| {p['wire']} | {p['batch']} | {r['target_rps']:g} | {r['achieved_rps']:.1f} | "
              f"{r['latency_us']['p50'] / 1000:.2f} | "
              f"{fmt(None if r['latency_us'].get('p95') is None else r['latency_us']['p95'] / 1000)} | "
              f"{r['latency_us']['p99'] / 1000:.2f} | "
              f"{e['status'] + e['transport'] + e['timeout'] + e['unfinished']} |")
PY
log "summary: $SUMMARY"
