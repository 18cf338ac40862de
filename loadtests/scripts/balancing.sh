#!/usr/bin/env bash
# Load-balancer comparison: one backend pool of three cascadia-sim endpoints in one region,
# one of them slow, behind three gateways that differ only in `balancer` (p2c-ewma,
# round-robin, least-request). The gateways are alternated in every batch.
#
#   loadtests/scripts/balancing.sh            # full run: 3 batches × 4 legs × (3 s warm-up + 10 s)
#   QUICK=1 loadtests/scripts/balancing.sh    # smoke test: 1 batch, 1 s warm-up, 2 s windows
#
# Each batch runs, at RATE over CONNECTIONS connections:
#   direct-fast   straight to the first fast sim: the host baseline for the discard rule
#   p2c-ewma, round-robin, least-request   through the gateway with that balancer
# The order of the three gateways rotates from batch to batch, so none always runs first.
# For every leg the script records the generator's report (p50/p99, errors, gateway CPU
# µs/request) plus each sim's share of the requests: the change in its `GET /sim/stats`
# `requests` counter across the leg (warm-up included, since the sim cannot tell them apart).
#
# Environment (defaults in brackets):
#   BATCHES [3]  RATE [500]  CONNECTIONS [4]  WARMUP [3s]  DURATION [10s]
#   FAST_P50_MS [1]  FAST_P99_MS [3]    lognormal latency of the two fast sims
#   SLOW_P50_MS [10] SLOW_P99_MS [40]   lognormal latency of the slow sim
#   TIMEOUT [2s]   the backend's per-attempt timeout
#   BASELINE [1]   set 0 to skip the direct-fast leg
#   GATEWAY_CPU [0]  LOAD_CPU [1]   cores for the gateways, and for the sims + generator
#   RESULTS [loadtests/results/balancing-DATE.jsonl]   JSON lines; the summary goes to *.md
#   CARGO_TARGET_DIR [target]   SKIP_BUILD [0]   set 1 to use already-built binaries
#
# The sim sleeps on tokio's millisecond timer, so sub-millisecond latencies round up to
# about 1 ms; the defaults are whole milliseconds for that reason.
#
# Needs: cargo, python3, curl, taskset (util-linux) and at least 2 CPUs for pinning.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

if [[ ${QUICK:-0} == 1 ]]; then
    BATCHES=${BATCHES:-1}
    WARMUP=${WARMUP:-1s}
    DURATION=${DURATION:-2s}
fi
BATCHES=${BATCHES:-3}
RATE=${RATE:-500}
CONNECTIONS=${CONNECTIONS:-4}
WARMUP=${WARMUP:-3s}
DURATION=${DURATION:-10s}
FAST_P50_MS=${FAST_P50_MS:-1}
FAST_P99_MS=${FAST_P99_MS:-3}
SLOW_P50_MS=${SLOW_P50_MS:-10}
SLOW_P99_MS=${SLOW_P99_MS:-40}
TIMEOUT=${TIMEOUT:-2s}
BASELINE=${BASELINE:-1}
GATEWAY_CPU=${GATEWAY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
RESULTS=${RESULTS:-loadtests/results/balancing-$(date +%Y%m%d-%H%M%S).jsonl}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release
BALANCERS=(p2c-ewma round-robin least-request)

log() { echo "balancing: $*" >&2; }

# --- build -------------------------------------------------------------------------------
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building release binaries into $BIN"
    cargo build --release -p cascadia -p cascadia-sim -p cascadia-loadtests
fi
for bin in cascadia cascadia-sim cascadia-load; do
    [[ -x $BIN/$bin ]] || { log "missing $BIN/$bin"; exit 1; }
done

# --- pinning -----------------------------------------------------------------------------
# Command prefixes, not functions: `taskset` execs the command, so `$!` is the pinned
# process itself (see passthrough.sh).
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
    PIN_GATEWAY=(taskset -c "$GATEWAY_CPU")
    PIN_LOAD=(taskset -c "$LOAD_CPU")
else
    log "WARNING: taskset missing or fewer than 2 CPUs: running unpinned"
    PIN_GATEWAY=()
    PIN_LOAD=()
fi

# --- processes and cleanup -----------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cascadia-balancing.XXXXXX")
CHILDREN=()
cleanup() {
    local pid
    for pid in "${CHILDREN[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${CHILDREN[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for_address FILE PREFIX PID: polls FILE until a line starts with PREFIX, prints the
# rest of that line. Fails if PID exits first or after 10 s.
wait_for_address() {
    local file=$1 prefix=$2 pid=$3 line
    for _ in $(seq 1 200); do
        if line=$(grep -m1 "^$prefix" "$file" 2>/dev/null); then
            echo "${line#"$prefix"}"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "process $pid exited before announcing its address; its stderr:"
            cat "$file.err" >&2 || true
            return 1
        fi
        sleep 0.05
    done
    log "timed out waiting for '$prefix' in $file"
    return 1
}

# The three sims: two fast, one slow, same region.
SIM_NAMES=(fast-1 fast-2 slow)
declare -A SIM_ADDR SIM_PID
for name in "${SIM_NAMES[@]}"; do
    if [[ $name == slow ]]; then p50=$SLOW_P50_MS p99=$SLOW_P99_MS; else p50=$FAST_P50_MS p99=$FAST_P99_MS; fi
    "${PIN_LOAD[@]}" "$BIN/cascadia-sim" --listen 127.0.0.1:0 --model fraud --version 1 \
        --region us-east --name "$name" --p50-ms "$p50" --p99-ms "$p99" --workers 1 \
        >"$WORK/sim-$name.out" 2>"$WORK/sim-$name.out.err" &
    SIM_PID[$name]=$!
    CHILDREN+=("$!")
    SIM_ADDR[$name]=$(wait_for_address "$WORK/sim-$name.out" "cascadia-sim listening on http://" "${SIM_PID[$name]}")
    log "sim $name pid ${SIM_PID[$name]} on ${SIM_ADDR[$name]} (p50 ${p50} ms, p99 ${p99} ms, CPU $LOAD_CPU)"
done

# One gateway per balancer, identical configs apart from `balancer`, all on GATEWAY_CPU.
# Only the one under load does any work; the others sit idle.
declare -A GW_ADDR GW_ADMIN GW_PID
for bal in "${BALANCERS[@]}"; do
    cat >"$WORK/gateway-$bal.toml" <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "fraud-pool"
region = "us-east"
balancer = "$bal"
timeout = "$TIMEOUT"
endpoints = ["${SIM_ADDR[fast-1]}", "${SIM_ADDR[fast-2]}", "${SIM_ADDR[slow]}"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
backends = ["fraud-pool"]
TOML
    "${PIN_GATEWAY[@]}" "$BIN/cascadia" run --config "$WORK/gateway-$bal.toml" --workers 1 \
        >"$WORK/gateway-$bal.out" 2>"$WORK/gateway-$bal.out.err" &
    GW_PID[$bal]=$!
    CHILDREN+=("$!")
    GW_ADDR[$bal]=$(wait_for_address "$WORK/gateway-$bal.out" "cascadia gateway listening on http://" "${GW_PID[$bal]}")
    GW_ADMIN[$bal]=$(wait_for_address "$WORK/gateway-$bal.out" "cascadia admin listening on http://" "${GW_PID[$bal]}")
    log "gateway $bal pid ${GW_PID[$bal]} on ${GW_ADDR[$bal]}, admin ${GW_ADMIN[$bal]} (CPU $GATEWAY_CPU)"
done

INFER_PATH=/v2/models/fraud/infer

# --- the machine, first line of the results ------------------------------------------------
mkdir -p "$(dirname "$RESULTS")"
CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo "no-commit")
if [[ -n $(git status --porcelain 2>/dev/null | head -1) ]]; then GIT_REV="$GIT_REV+dirty"; fi
NPROC=$(nproc) DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) CPU_MODEL=$CPU_MODEL GIT_REV=$GIT_REV \
    KERNEL=$(uname -r) BATCHES=$BATCHES RATE=$RATE CONNECTIONS=$CONNECTIONS WARMUP=$WARMUP \
    DURATION=$DURATION FAST="p50 ${FAST_P50_MS} ms / p99 ${FAST_P99_MS} ms" \
    SLOW="p50 ${SLOW_P50_MS} ms / p99 ${SLOW_P99_MS} ms" TIMEOUT=$TIMEOUT \
    GATEWAY_CPU=$GATEWAY_CPU LOAD_CPU=$LOAD_CPU QUICK=${QUICK:-0} \
    SIMS="fast-1=${SIM_ADDR[fast-1]} fast-2=${SIM_ADDR[fast-2]} slow=${SIM_ADDR[slow]}" \
    python3 -c '
import json, os
keys = ["NPROC", "DATE", "CPU_MODEL", "GIT_REV", "KERNEL", "BATCHES", "RATE", "CONNECTIONS",
        "WARMUP", "DURATION", "FAST", "SLOW", "TIMEOUT", "GATEWAY_CPU", "LOAD_CPU", "QUICK"]
sims = dict(kv.split("=", 1) for kv in os.environ["SIMS"].split())
print(json.dumps({"kind": "meta", "bench": "balancing", "sims": sims,
                  **{k.lower(): os.environ[k] for k in keys}}))
' >"$RESULTS"
log "results: $RESULTS"

# sim_counts: one JSON object {name: requests} from every sim's /sim/stats.
sim_counts() {
    local name sep="" out="{"
    for name in "${SIM_NAMES[@]}"; do
        local n
        n=$(curl -sf --max-time 2 "http://${SIM_ADDR[$name]}/sim/stats" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
        out+="$sep\"$name\": $n"
        sep=", "
    done
    echo "$out}"
}

# leg LEG BATCH: one generator run, pinned with the sims; its report plus the sims' shares
# goes to RESULTS as one line.
leg() {
    local leg=$1 batch=$2 url pid before after report
    if [[ $leg == direct-fast ]]; then
        url=http://${SIM_ADDR[fast-1]}$INFER_PATH pid=${SIM_PID[fast-1]}
    else
        url=http://${GW_ADDR[$leg]}$INFER_PATH pid=${GW_PID[$leg]}
    fi
    log "batch $batch/$BATCHES  $RATE rps × $CONNECTIONS conn  $leg"
    before=$(sim_counts)
    report=$("${PIN_LOAD[@]}" "$BIN/cascadia-load" --url "$url" --rate "$RATE" \
        --connections "$CONNECTIONS" --warmup "$WARMUP" --duration "$DURATION" --oip-rows 1 \
        --workers 1 --pid "$pid" --label "$leg/$batch" --json)
    after=$(sim_counts)
    BEFORE=$before AFTER=$after REPORT=$report LEG=$leg BATCH=$batch python3 -c '
import json, os
before, after = json.loads(os.environ["BEFORE"]), json.loads(os.environ["AFTER"])
rec = json.loads(os.environ["REPORT"])
delta = {k: after[k] - before[k] for k in after}
total = sum(delta.values())
rec.update(kind="run", leg=os.environ["LEG"], batch=int(os.environ["BATCH"]),
           sim_requests=delta,
           sim_share={k: (v / total if total else None) for k, v in delta.items()})
print(json.dumps(rec))
' >>"$RESULTS"
}

for batch in $(seq 1 "$BATCHES"); do
    if [[ $BASELINE == 1 ]]; then leg direct-fast "$batch"; fi
    # Rotate the order: batch 1 = p2c, rr, lr; batch 2 = rr, lr, p2c; ...
    for i in 0 1 2; do
        leg "${BALANCERS[$(((batch - 1 + i) % 3))]}" "$batch"
    done
done

# The gateways' own view of the pool (EWMA, attempts, failures) at the end.
for bal in "${BALANCERS[@]}"; do
    curl -sf --max-time 2 "http://${GW_ADMIN[$bal]}/admin/backends" |
        BAL=$bal python3 -c '
import json, os, sys
print(json.dumps({"kind": "admin", "leg": os.environ["BAL"], **json.load(sys.stdin)}))
' >>"$RESULTS" || log "could not read /admin/backends of $bal"
done

SUMMARY=${RESULTS%.jsonl}.md
python3 "$ROOT/loadtests/scripts/summarize_balancing.py" "$RESULTS" | tee "$SUMMARY"
log "summary: $SUMMARY"
