#!/usr/bin/env bash
# Pass-through benchmark: the same open-loop load sent direct to a simulated model server
# (cascadia-sim) and through the Cascadia gateway, alternating in every batch.
#
#   loadtests/scripts/passthrough.sh            # full run: 5 batches × (500 1000 2000 rps + 200 rps/1 conn)
#   QUICK=1 loadtests/scripts/passthrough.sh    # smoke test: 1 batch, 1 rate, 1 s warm-up, 2 s window
#
# Environment (defaults in brackets):
#   BATCHES [5]  RATES ["500 1000 2000"]  CONNECTIONS [4]  WARMUP [5s]  DURATION [20s]
#   LATENCY_RATE [200]   rate of the single-connection latency run in each batch
#   GATEWAY_CPU [0]  LOAD_CPU [1]   cores for the gateway, and for the sim + generator
#   RESULTS [loadtests/results/passthrough-DATE.jsonl]   JSON lines; the summary goes to *.md
#   CARGO_TARGET_DIR [target]   SKIP_BUILD [0]   set 1 to use already-built binaries
#
# Needs: cargo, python3, taskset (util-linux) and at least 2 CPUs for pinning.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

if [[ ${QUICK:-0} == 1 ]]; then
    BATCHES=${BATCHES:-1}
    RATES=${RATES:-500}
    WARMUP=${WARMUP:-1s}
    DURATION=${DURATION:-2s}
fi
BATCHES=${BATCHES:-5}
RATES=${RATES:-500 1000 2000}
CONNECTIONS=${CONNECTIONS:-4}
WARMUP=${WARMUP:-5s}
DURATION=${DURATION:-20s}
LATENCY_RATE=${LATENCY_RATE:-200}
GATEWAY_CPU=${GATEWAY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
RESULTS=${RESULTS:-loadtests/results/passthrough-$(date +%Y%m%d-%H%M%S).jsonl}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release

log() { echo "passthrough: $*" >&2; }

# --- build -------------------------------------------------------------------------------
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building release binaries into $BIN"
    cargo build --release -p cascadia -p cascadia-sim -p cascadia-loadtests
fi
for bin in cascadia cascadia-sim cascadia-load; do
    [[ -x $BIN/$bin ]] || { log "missing $BIN/$bin"; exit 1; }
done

# --- pinning -----------------------------------------------------------------------------
# Command prefixes, not functions: `taskset` execs the command, so `$!` after
# `"${PIN_LOAD[@]}" cmd &` is the pinned process itself (a function would put a subshell in
# between, and `--pid` and the cleanup would point at the subshell).
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
    PIN_GATEWAY=(taskset -c "$GATEWAY_CPU")
    PIN_LOAD=(taskset -c "$LOAD_CPU")
else
    log "WARNING: taskset missing or fewer than 2 CPUs: running unpinned"
    PIN_GATEWAY=()
    PIN_LOAD=()
fi

# --- processes and cleanup -----------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cascadia-passthrough.XXXXXX")
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

"${PIN_LOAD[@]}" "$BIN/cascadia-sim" --listen 127.0.0.1:0 --model fraud --version 1 \
    --region us-east --workers 1 >"$WORK/sim.out" 2>"$WORK/sim.out.err" &
SIM_PID=$!
CHILDREN+=("$SIM_PID")
SIM_ADDR=$(wait_for_address "$WORK/sim.out" "cascadia-sim listening on http://" "$SIM_PID")
log "cascadia-sim pid $SIM_PID on $SIM_ADDR (CPU $LOAD_CPU)"

cat >"$WORK/gateway.toml" <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "fraud-v1"
region = "us-east"
endpoints = ["$SIM_ADDR"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
backends = ["fraud-v1"]
TOML

"${PIN_GATEWAY[@]}" "$BIN/cascadia" run --config "$WORK/gateway.toml" --workers 1 \
    >"$WORK/gateway.out" 2>"$WORK/gateway.out.err" &
GATEWAY_PID=$!
CHILDREN+=("$GATEWAY_PID")
GATEWAY_ADDR=$(wait_for_address "$WORK/gateway.out" "cascadia gateway listening on http://" "$GATEWAY_PID")
log "cascadia gateway pid $GATEWAY_PID on $GATEWAY_ADDR (CPU $GATEWAY_CPU)"

INFER_PATH=/v2/models/fraud/infer
DIRECT_URL=http://$SIM_ADDR$INFER_PATH
CASCADIA_URL=http://$GATEWAY_ADDR$INFER_PATH

# --- the machine, first line of the results ------------------------------------------------
mkdir -p "$(dirname "$RESULTS")"
CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo "no-commit")
if [[ -n $(git status --porcelain 2>/dev/null | head -1) ]]; then GIT_REV="$GIT_REV+dirty"; fi
NPROC=$(nproc) DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) CPU_MODEL=$CPU_MODEL GIT_REV=$GIT_REV \
    KERNEL=$(uname -r) BATCHES=$BATCHES RATES=$RATES CONNECTIONS=$CONNECTIONS WARMUP=$WARMUP \
    DURATION=$DURATION LATENCY_RATE=$LATENCY_RATE GATEWAY_CPU=$GATEWAY_CPU LOAD_CPU=$LOAD_CPU \
    python3 -c '
import json, os
keys = ["NPROC", "DATE", "CPU_MODEL", "GIT_REV", "KERNEL", "BATCHES", "RATES", "CONNECTIONS",
        "WARMUP", "DURATION", "LATENCY_RATE", "GATEWAY_CPU", "LOAD_CPU"]
print(json.dumps({"kind": "meta", **{k.lower(): os.environ[k] for k in keys}}))
' >"$RESULTS"
log "results: $RESULTS"

# load LEG BATCH RATE CONNS: one generator run, pinned with the sim, appended to RESULTS.
load() {
    local leg=$1 batch=$2 rate=$3 conns=$4 url pid
    if [[ $leg == direct ]]; then url=$DIRECT_URL pid=$SIM_PID; else url=$CASCADIA_URL pid=$GATEWAY_PID; fi
    log "batch $batch/$BATCHES  $rate rps × $conns conn  $leg"
    "${PIN_LOAD[@]}" "$BIN/cascadia-load" --url "$url" --rate "$rate" --connections "$conns" \
        --warmup "$WARMUP" --duration "$DURATION" --oip-rows 1 --workers 1 \
        --pid "$pid" --label "$leg/$batch" --json >>"$RESULTS"
}

for batch in $(seq 1 "$BATCHES"); do
    for rate in $RATES; do
        load direct "$batch" "$rate" "$CONNECTIONS"
        load cascadia "$batch" "$rate" "$CONNECTIONS"
    done
    load direct "$batch" "$LATENCY_RATE" 1
    load cascadia "$batch" "$LATENCY_RATE" 1
done

SUMMARY=${RESULTS%.jsonl}.md
python3 "$ROOT/loadtests/scripts/summarize.py" "$RESULTS" | tee "$SUMMARY"
log "summary: $SUMMARY"
