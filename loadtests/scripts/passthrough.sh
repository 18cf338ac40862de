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
BENCH=passthrough
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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

build_binaries
setup_pinning
setup_workdir

start_sim sim "$WORK/sim.out" --region us-east --workers 1
log "cascadia-sim pid ${SIM_PID[sim]} on ${SIM_ADDR[sim]} (CPU $LOAD_CPU)"

cat >"$WORK/gateway-main.toml" <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "fraud-v1"
region = "us-east"
endpoints = ["${SIM_ADDR[sim]}"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
backends = ["fraud-v1"]
TOML

start_gateway main
log "cascadia gateway pid ${GW_PID[main]} on ${GW_ADDR[main]} (CPU $GATEWAY_CPU)"

INFER_PATH=/v2/models/fraud/infer
DIRECT_URL=http://${SIM_ADDR[sim]}$INFER_PATH
CASCADIA_URL=http://${GW_ADDR[main]}$INFER_PATH

# --- the machine, first line of the results ------------------------------------------------
write_meta BATCHES RATES CONNECTIONS WARMUP DURATION LATENCY_RATE GATEWAY_CPU LOAD_CPU

# load LEG BATCH RATE CONNS: one generator run, pinned with the sim, appended to RESULTS.
load() {
    local leg=$1 batch=$2 rate=$3 conns=$4 url pid
    if [[ $leg == direct ]]; then url=$DIRECT_URL pid=${SIM_PID[sim]}; else url=$CASCADIA_URL pid=${GW_PID[main]}; fi
    log "batch $batch/$BATCHES  $rate rps × $conns conn  $leg"
    run_load "$url" "$rate" "$conns" "$pid" "$leg/$batch" >>"$RESULTS"
}

for batch in $(seq 1 "$BATCHES"); do
    for rate in $RATES; do
        load direct "$batch" "$rate" "$CONNECTIONS"
        load cascadia "$batch" "$rate" "$CONNECTIONS"
    done
    load direct "$batch" "$LATENCY_RATE" 1
    load cascadia "$batch" "$LATENCY_RATE" 1
done

summarize summarize.py
