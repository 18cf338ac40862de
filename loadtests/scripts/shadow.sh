#!/usr/bin/env bash
# Shadow-traffic cost: the same open-loop load through two gateways that differ only in a
# [routes.shadow] mirroring 10% of requests to a second sim, alternating in every batch.
# The figure is the gateway's CPU µs per client request, and its p50/p99, with and without.
#
#   loadtests/scripts/shadow.sh            # 5 batches × RATES
#   QUICK=1 loadtests/scripts/shadow.sh    # smoke test
#
# Environment (defaults in brackets):
#   BATCHES [5]  RATES ["500 1000"]  CONNECTIONS [4]  WARMUP [5s]  DURATION [20s]
#   FRACTION [0.1]   share of requests mirrored
#   GATEWAY_CPU [0]  LOAD_CPU [1]  RESULTS [loadtests/results/shadow-DATE.jsonl]
#   CARGO_TARGET_DIR [target]  SKIP_BUILD [0]
set -euo pipefail
BENCH=shadow
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${QUICK:-0} == 1 ]]; then
    BATCHES=${BATCHES:-1}
    RATES=${RATES:-500}
    WARMUP=${WARMUP:-1s}
    DURATION=${DURATION:-2s}
fi
BATCHES=${BATCHES:-5}
RATES=${RATES:-500 1000}
CONNECTIONS=${CONNECTIONS:-4}
WARMUP=${WARMUP:-5s}
DURATION=${DURATION:-20s}
FRACTION=${FRACTION:-0.1}

build_binaries
setup_pinning
setup_workdir

start_sim stable "$WORK/stable.out" --region us-east --workers 1
start_sim candidate "$WORK/candidate.out" --region us-east --workers 1

route() {
    cat <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "fraud-v1"
region = "us-east"
endpoints = ["${SIM_ADDR[stable]}"]

[[backends]]
name = "fraud-v3"
region = "us-east"
endpoints = ["${SIM_ADDR[candidate]}"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
backends = ["fraud-v1"]
TOML
}
route >"$WORK/gateway-plain.toml"
{
    route
    printf '\n[routes.shadow]\nversion = "v3"\nbackends = ["fraud-v3"]\nfraction = %s\n' "$FRACTION"
} >"$WORK/gateway-shadow.toml"

start_gateway plain
start_gateway shadow
log "gateways: plain pid ${GW_PID[plain]}, shadow pid ${GW_PID[shadow]} (CPU $GATEWAY_CPU)"

write_meta BATCHES RATES CONNECTIONS WARMUP DURATION FRACTION GATEWAY_CPU LOAD_CPU

for batch in $(seq 1 "$BATCHES"); do
    for rate in $RATES; do
        for leg in plain shadow; do
            log "batch $batch/$BATCHES  $rate rps  $leg"
            run_load "http://${GW_ADDR[$leg]}/v2/models/fraud/infer" "$rate" "$CONNECTIONS" \
                "${GW_PID[$leg]}" "$leg/$batch" >>"$RESULTS"
        done
    done
done
# What the shadow compared, as a sanity check that mirrors ran.
curl -fsS "http://${GW_ADMIN[shadow]}/admin/shadow" >"${RESULTS%.jsonl}.shadow.json" || true

summarize summarize_shadow.py
