#!/usr/bin/env bash
# Overload (RELIABILITY.md #18, issue 6): a route with max_concurrency = CONCURRENCY in front
# of a sim with a fixed LATENCY_MS, so its capacity is CONCURRENCY / LATENCY ≈ CAPACITY rps.
# Open-loop load in three back-to-back steps (--rate-steps): LOW × capacity, HIGH × capacity,
# LOW × capacity again, STEP_DURATION each, in BUCKET buckets.
#
#   loadtests/scripts/overload.sh            # about 45 s after the build: 3 s warm-up + 3 × 10 s
#   QUICK=1 loadtests/scripts/overload.sh    # smoke test: 1 s warm-up + 3 × 3 s
#
# Reported per step: admitted (2xx) p50/p99, the share of 503s (the gateway's
# cascadia_shed_total over the step ÷ sent), errors other than 503, gateway CPU µs/request
# and RSS; the recovery time after the drop (the first bucket of the last step with no
# error and a p99 within 2× of the first step's); and a probe in the middle of the
# overload step that checks SAMPLE_N responses one by one (every 503 should carry
# Retry-After and a JSON body).
#
# Results: "meta", "step" (cascadia-load step reports with timelines and the scenario's
# events), "poll" (the gateway's /metrics, RSS and CPU every POLL_MS) and "sample" lines
# in RESULTS; the summary in *.md and the generator's plot in *.svg.
#
# Environment (defaults in brackets):
#   CONCURRENCY [8]  LATENCY_MS [20]  LOW [0.5]  HIGH [3]   capacity multiples
#   CONNECTIONS [128]  WARMUP [3s]  STEP_DURATION [10s]  BUCKET [100ms]
#   SAMPLE_N [200]  POLL_MS [100]
#   GATEWAY_CPU [0]  LOAD_CPU [1]
#   RESULTS [loadtests/results/overload-DATE.jsonl]   CARGO_TARGET_DIR [target]   SKIP_BUILD [0]
#
# CONNECTIONS is large because the generator sends one request at a time per HTTP/1.1
# connection: at 3 × 400 rps each of 128 connections gets a request every ~107 ms, well
# above the 20 ms an admitted request takes, so the generator's own queue stays out of the
# admitted latency.
#
# Needs: cargo, python3, curl, taskset.
set -euo pipefail
BENCH=overload
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${QUICK:-0} == 1 ]]; then
    WARMUP=${WARMUP:-1s}
    STEP_DURATION=${STEP_DURATION:-3s}
    SAMPLE_N=${SAMPLE_N:-50}
fi
CONCURRENCY=${CONCURRENCY:-8}
LATENCY_MS=${LATENCY_MS:-20}
LOW=${LOW:-0.5}
HIGH=${HIGH:-3}
CONNECTIONS=${CONNECTIONS:-128}
WARMUP=${WARMUP:-3s}
STEP_DURATION=${STEP_DURATION:-10s}
BUCKET=${BUCKET:-100ms}
SAMPLE_N=${SAMPLE_N:-200}
POLL_MS=${POLL_MS:-100}
CAPACITY=$(python3 -c "print(round($CONCURRENCY * 1000 / $LATENCY_MS))")
RATES=$(python3 -c "c=$CAPACITY; print(','.join(str(round(c*m)) for m in ($LOW, $HIGH, $LOW)))")
STEP_S=$(python3 -c "s='$STEP_DURATION'; print(float(s[:-2])/1000 if s.endswith('ms') else float(s.rstrip('s')))")

build_binaries
setup_pinning
setup_workdir

start_sim backend "$WORK/sim.out" --name backend --workers 1 --latency-ms "$LATENCY_MS"
SIM_NAMES=(backend)
log "sim pid ${SIM_PID[backend]} on ${SIM_ADDR[backend]}, fixed latency $LATENCY_MS ms (CPU $LOAD_CPU)"

cat >"$WORK/gateway-gw.toml" <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "fraud-v1"
region = "local"
endpoints = ["${SIM_ADDR[backend]}"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
backends = ["fraud-v1"]
max_concurrency = $CONCURRENCY
TOML
start_gateway gw
log "gateway pid ${GW_PID[gw]} on ${GW_ADDR[gw]}, admin ${GW_ADMIN[gw]} (CPU $GATEWAY_CPU)"

UPTIME_BEFORE=$(uptime)
write_meta --bench overload --sims "backend=${SIM_ADDR[backend]}" CONCURRENCY LATENCY_MS \
    CAPACITY_RPS="$CAPACITY" RATES CONNECTIONS WARMUP STEP_DURATION BUCKET SAMPLE_N POLL_MS \
    GATEWAY_CPU LOAD_CPU "QUICK=${QUICK:-0}" UPTIME_BEFORE

start_metrics_poller "${GW_ADMIN[gw]}" "${GW_PID[gw]}" "$WORK/polls.jsonl"
log "steps $RATES rps × $STEP_DURATION over $CONNECTIONS connections (capacity ≈ $CAPACITY rps)"
T_SAMPLE=$(python3 -c "print($STEP_S * 1.5)") SCRIPTS=$ROOT/loadtests/scripts WORK=$WORK \
    GW=${GW_ADDR[gw]} SAMPLE_N=$SAMPLE_N \
    run_steps "http://${GW_ADDR[gw]}/v2/models/fraud/infer" "$RATES" "$CONNECTIONS" \
    "${GW_PID[gw]}" overload --scenario "$ROOT/loadtests/scenarios/overload.toml"
sleep 0.3
kill "$POLLER_PID" 2>/dev/null || true
cat "$WORK/polls.jsonl" >>"$RESULTS"
if [[ -s $WORK/sample-overload.json ]]; then cat "$WORK/sample-overload.json" >>"$RESULTS"; fi
printf '{"kind": "note", "what": "uptime after", "value": "%s"}\n' "$(uptime | sed 's/^ *//')" >>"$RESULTS"

summarize summarize_scenarios.py
