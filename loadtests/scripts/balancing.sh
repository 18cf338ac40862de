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
BENCH=balancing
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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
BALANCERS=(p2c-ewma round-robin least-request)

build_binaries
setup_pinning
setup_workdir

# The three sims: two fast, one slow, same region.
SIM_NAMES=(fast-1 fast-2 slow)
for name in "${SIM_NAMES[@]}"; do
    if [[ $name == slow ]]; then p50=$SLOW_P50_MS p99=$SLOW_P99_MS; else p50=$FAST_P50_MS p99=$FAST_P99_MS; fi
    start_sim "$name" "$WORK/sim-$name.out" --region us-east --name "$name" --p50-ms "$p50" \
        --p99-ms "$p99" --workers 1
    log "sim $name pid ${SIM_PID[$name]} on ${SIM_ADDR[$name]} (p50 ${p50} ms, p99 ${p99} ms, CPU $LOAD_CPU)"
done

# One gateway per balancer, identical configs apart from `balancer`, all on GATEWAY_CPU.
# Only the one under load does any work; the others sit idle.
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
    start_gateway "$bal"
    log "gateway $bal pid ${GW_PID[$bal]} on ${GW_ADDR[$bal]}, admin ${GW_ADMIN[$bal]} (CPU $GATEWAY_CPU)"
done

INFER_PATH=/v2/models/fraud/infer

# --- the machine, first line of the results ------------------------------------------------
write_meta --bench balancing \
    --sims "fast-1=${SIM_ADDR[fast-1]} fast-2=${SIM_ADDR[fast-2]} slow=${SIM_ADDR[slow]}" \
    BATCHES RATE CONNECTIONS WARMUP DURATION \
    "FAST=p50 ${FAST_P50_MS} ms / p99 ${FAST_P99_MS} ms" \
    "SLOW=p50 ${SLOW_P50_MS} ms / p99 ${SLOW_P99_MS} ms" TIMEOUT GATEWAY_CPU LOAD_CPU \
    "QUICK=${QUICK:-0}"

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
    report=$(run_load "$url" "$RATE" "$CONNECTIONS" "$pid" "$leg/$batch")
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
record_admin_backends "${BALANCERS[@]}"

summarize summarize_balancing.py
