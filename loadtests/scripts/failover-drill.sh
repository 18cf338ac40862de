#!/usr/bin/env bash
# Failover drill through the gateway's own drill API (RELIABILITY.md #4, #5): two regions,
# one sim each (us-east preferred, then eu-west), open-loop load at RATE, and
# loadtests/scenarios/failover-drill.toml posting
#   POST /admin/drills {"region": "us-east", "fault": "blackhole", "duration_s": DRILL_S}
# at T_DRILL. The run is five back-to-back phases of PHASE_S (one --rate-steps step each):
#   before | drill (1st half) | drill (2nd half) | after revert (fail-back, hold_down) | after
#
#   loadtests/scripts/failover-drill.sh            # about 30 s after the build + the drill's settle
#   QUICK=1 loadtests/scripts/failover-drill.sh    # smoke test: 5 × 2 s phases
#
# Reported: the drill's own report (GET /admin/drills/ID once it completes: detect_ms,
# failover_ms (target ≤ 500 ms), errors and p99 during the drill, failback_ms, flaps,
# steady_ms), the client-side errors and p99 per phase, attempts per region per phase from
# /metrics, and a 250 ms timeline.
#
# Environment (defaults in brackets):
#   RATE [500]  CONNECTIONS [16]  WARMUP [3s]  PHASE_S [5]  BUCKET [100ms]
#   TIMEOUT [300ms]  CONNECT_TIMEOUT [100ms]  ROUTE_TIMEOUT [1s]  HOLD_DOWN [5s]
#   POLL_MS [100]  GATEWAY_CPU [0]  LOAD_CPU [1]
#   RESULTS [loadtests/results/failover-drill-DATE.jsonl]  CARGO_TARGET_DIR [target]  SKIP_BUILD [0]
#
# Needs: cargo, python3, curl, taskset.
set -euo pipefail
BENCH=failover-drill
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${QUICK:-0} == 1 ]]; then
    WARMUP=${WARMUP:-1s}
    PHASE_S=${PHASE_S:-2}
    HOLD_DOWN=${HOLD_DOWN:-1s}
fi
RATE=${RATE:-500}
CONNECTIONS=${CONNECTIONS:-16}
WARMUP=${WARMUP:-3s}
PHASE_S=${PHASE_S:-5}
BUCKET=${BUCKET:-100ms}
TIMEOUT=${TIMEOUT:-300ms}
CONNECT_TIMEOUT=${CONNECT_TIMEOUT:-100ms}
ROUTE_TIMEOUT=${ROUTE_TIMEOUT:-1s}
HOLD_DOWN=${HOLD_DOWN:-5s}
POLL_MS=${POLL_MS:-100}
STEP_DURATION=${PHASE_S}s
PHASES="before,drill 1st half,drill 2nd half,after revert,after"
RATES=$(python3 -c "print(','.join(['$RATE'] * 5))")

build_binaries
setup_pinning
setup_workdir

SIM_NAMES=(us-east eu-west)
for name in "${SIM_NAMES[@]}"; do
    start_sim "$name" "$WORK/sim-$name.out" --region "$name" --name "$name" --workers 1
    log "sim $name pid ${SIM_PID[$name]} on ${SIM_ADDR[$name]} (CPU $LOAD_CPU)"
done

cat >"$WORK/gateway-gw.toml" <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "fraud-us-east"
region = "us-east"
endpoints = ["${SIM_ADDR[us-east]}"]
timeout = "$TIMEOUT"
connect_timeout = "$CONNECT_TIMEOUT"
hold_down = "$HOLD_DOWN"

[[backends]]
name = "fraud-eu-west"
region = "eu-west"
endpoints = ["${SIM_ADDR[eu-west]}"]
timeout = "$TIMEOUT"
connect_timeout = "$CONNECT_TIMEOUT"
hold_down = "$HOLD_DOWN"

[[routes]]
name = "fraud"
match = { model = "fraud" }
timeout = "$ROUTE_TIMEOUT"
backends = ["fraud-us-east", "fraud-eu-west"]
retries = { attempts = 3, budget_percent = 20, min_per_second = 10 }
TOML
start_gateway gw
log "gateway pid ${GW_PID[gw]} on ${GW_ADDR[gw]}, admin ${GW_ADMIN[gw]} (CPU $GATEWAY_CPU)"

UPTIME_BEFORE=$(uptime)
write_meta --bench failover-drill --sims "us-east=${SIM_ADDR[us-east]} eu-west=${SIM_ADDR[eu-west]}" \
    RATE CONNECTIONS WARMUP PHASE_S PHASES BUCKET TIMEOUT CONNECT_TIMEOUT ROUTE_TIMEOUT \
    HOLD_DOWN "DRILL=blackhole us-east at ${PHASE_S}s for $((2 * PHASE_S))s" POLL_MS \
    GATEWAY_CPU LOAD_CPU "QUICK=${QUICK:-0}" UPTIME_BEFORE

start_metrics_poller "${GW_ADMIN[gw]}" "${GW_PID[gw]}" "$WORK/polls.jsonl"
log "5 phases × ${PHASE_S}s at $RATE rps over $CONNECTIONS connections"
GW_ADMIN=${GW_ADMIN[gw]} T_DRILL=$PHASE_S DRILL_S=$((2 * PHASE_S)) \
    run_steps "http://${GW_ADDR[gw]}/v2/models/fraud/infer" "$RATES" "$CONNECTIONS" \
    "${GW_PID[gw]}" failover-drill --scenario "$ROOT/loadtests/scenarios/failover-drill.toml"
sleep 0.3
kill "$POLLER_PID" 2>/dev/null || true
cat "$WORK/polls.jsonl" >>"$RESULTS"

# The drill's report: wait (up to 35 s: the drill's own fail-back wait is 30 s) until it
# is no longer running or reverted.
for _ in $(seq 1 70); do
    state=$(curl -sf --max-time 2 "http://${GW_ADMIN[gw]}/admin/drills/1" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' || echo unknown)
    [[ $state == running || $state == reverted ]] || break
    sleep 0.5
done
curl -sf --max-time 2 "http://${GW_ADMIN[gw]}/admin/drills/1" |
    python3 -c 'import json,sys; print(json.dumps({"kind": "drill", **json.load(sys.stdin)}))' \
        >>"$RESULTS" || log "could not read /admin/drills/1"
printf '{"kind": "note", "what": "uptime after", "value": "%s"}\n' "$(uptime | sed 's/^ *//')" >>"$RESULTS"

summarize summarize_scenarios.py
