#!/usr/bin/env bash
# Redis outage under load (RELIABILITY.md #11, #12): a cascade route whose stage-1 model
# takes one feature (f32) from the feature cache, keyed by x-user-id, with [gateway.redis]
# on a real redis-server and l1_capacity = 1 (so nearly every lookup reaches Redis and the
# outage is on the request path). Open-loop load at RATE with Zipf user ids over USER_IDS,
# in six phases of PHASE_S seconds (one --rate-steps step each, so each phase has exact
# percentiles), driven by loadtests/scenarios/redis-outage.toml:
#
#   1 before      Redis up
#   2 killed      kill -9 of redis-server at the start of the phase
#   3 restarted   a fresh, empty redis-server on the same port
#   4 drill       POST /admin/drills {"fault": "redis"} for PHASE_S (the gateway skips Redis)
#   5 stopped     SIGSTOP of redis-server (hung, not dead: the 20 ms response_timeout and
#                 the breaker must bound the wait)
#   6 after       SIGCONT
#
#   loadtests/scripts/redis-outage.sh            # about 35 s after the build: 6 × 5 s
#   QUICK=1 loadtests/scripts/redis-outage.sh    # smoke test: 6 × 2 s
#
# Reported per phase: errors (target 0), p50/p99 (and the ratio to phase 1), feature
# lookups by tier (L1 / Redis / store) and Redis call outcomes from the gateway's /metrics,
# and the time from the restart to the first Redis hit.
#
# Environment (defaults in brackets):
#   RATE [500]  CONNECTIONS [16]  USER_IDS [1000]  WARMUP [3s]  PHASE_S [5]  BUCKET [100ms]
#   POLL_MS [100]  GATEWAY_CPU [0]  LOAD_CPU [1]
#   RESULTS [loadtests/results/redis-outage-DATE.jsonl]  CARGO_TARGET_DIR [target]  SKIP_BUILD [0]
#
# Needs: cargo, python3, curl, redis-server, redis-cli, taskset.
set -euo pipefail
BENCH=redis-outage
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${QUICK:-0} == 1 ]]; then
    WARMUP=${WARMUP:-1s}
    PHASE_S=${PHASE_S:-2}
fi
RATE=${RATE:-500}
CONNECTIONS=${CONNECTIONS:-16}
USER_IDS=${USER_IDS:-1000}
WARMUP=${WARMUP:-3s}
PHASE_S=${PHASE_S:-5}
BUCKET=${BUCKET:-100ms}
POLL_MS=${POLL_MS:-100}
STEP_DURATION=${PHASE_S}s
PHASES=before,killed,restarted,drill,stopped,after
RATES=$(python3 -c "print(','.join(['$RATE'] * 6))")

build_binaries
for bin in redis-server redis-cli; do
    command -v $bin >/dev/null || { log "needs $bin"; exit 1; }
done
setup_pinning
setup_workdir
# The restarted redis-server daemonizes (the scenario starts it): end it too, and wake it
# first in case the run stopped while it was SIGSTOPped.
trap 'if [[ -s $WORK/redis-2.pid ]]; then kill -CONT "$(cat "$WORK/redis-2.pid")" 2>/dev/null || true; kill "$(cat "$WORK/redis-2.pid")" 2>/dev/null || true; fi; cleanup' EXIT

SIM_NAMES=(stage2 store)
for name in "${SIM_NAMES[@]}"; do
    start_sim "$name" "$WORK/sim-$name.out" --name "$name" --workers 1
    log "sim $name pid ${SIM_PID[$name]} on ${SIM_ADDR[$name]} (CPU $LOAD_CPU)"
done

REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${PIN_LOAD[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    >"$WORK/redis.out" 2>&1 &
REDIS_PID=$!
CHILDREN+=("$REDIS_PID")
for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    kill -0 "$REDIS_PID" 2>/dev/null || { log "redis-server exited:"; cat "$WORK/redis.out" >&2; exit 1; }
    sleep 0.05
done
log "redis-server pid $REDIS_PID on 127.0.0.1:$REDIS_PORT (CPU $LOAD_CPU)"

# Stage 1: 32 request features + f32 from the store; every row confidently negative, so
# every request is answered locally and only the feature lookup is exercised.
python3 - "$WORK" <<'PY'
import json, sys
with open(f"{sys.argv[1]}/lr-local33.json", "w") as f:
    json.dump({"name": "lr-local33", "version": "1", "features": [f"f{i}" for i in range(33)],
               "coefficients": [0.01] * 33, "intercept": -6.0}, f)
PY

cat >"$WORK/gateway-gw.toml" <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[gateway.redis]
url = "redis://127.0.0.1:$REDIS_PORT"

[[backends]]
name = "ensemble"
region = "local"
endpoints = ["${SIM_ADDR[stage2]}"]

[[backends]]
name = "feature-store"
region = "local"
endpoints = ["${SIM_ADDR[store]}"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
backends = ["ensemble"]

[routes.cascade]
model = "lr-local33.json"
input = "features"
accept_below = 0.1
reject_above = 0.9

[routes.cascade.entity]
key_header = "x-user-id"
features = ["f32"]
store = "feature-store"
l1_capacity = 1
TOML
start_gateway gw
log "gateway pid ${GW_PID[gw]} on ${GW_ADDR[gw]}, admin ${GW_ADMIN[gw]} (CPU $GATEWAY_CPU)"

UPTIME_BEFORE=$(uptime)
write_meta --bench redis-outage --sims "stage2=${SIM_ADDR[stage2]} store=${SIM_ADDR[store]}" \
    RATE CONNECTIONS USER_IDS WARMUP PHASE_S PHASES BUCKET POLL_MS REDIS_PORT GATEWAY_CPU \
    LOAD_CPU "QUICK=${QUICK:-0}" UPTIME_BEFORE

start_metrics_poller "${GW_ADMIN[gw]}" "${GW_PID[gw]}" "$WORK/polls.jsonl"
log "6 phases × ${PHASE_S}s at $RATE rps over $CONNECTIONS connections ($PHASES)"
PIN_LOAD_CMD="${PIN_LOAD[*]}" WORK=$WORK REDIS_PID=$REDIS_PID REDIS_PORT=$REDIS_PORT \
    GW_ADMIN=${GW_ADMIN[gw]} PHASE_S=$PHASE_S T_KILL=$PHASE_S T_RESTART=$((2 * PHASE_S)) \
    T_DRILL=$((3 * PHASE_S)) T_STOP=$((4 * PHASE_S)) T_CONT=$((5 * PHASE_S)) \
    run_steps "http://${GW_ADDR[gw]}/v2/models/fraud/infer" "$RATES" "$CONNECTIONS" \
    "${GW_PID[gw]}" redis-outage --user-ids "$USER_IDS" \
    --scenario "$ROOT/loadtests/scenarios/redis-outage.toml"
sleep 0.3
kill "$POLLER_PID" 2>/dev/null || true
cat "$WORK/polls.jsonl" >>"$RESULTS"
curl -sf --max-time 2 "http://${GW_ADMIN[gw]}/admin/drills" |
    python3 -c 'import json,sys; [print(json.dumps({"kind": "drill", **d})) for d in json.load(sys.stdin)["drills"]]' \
        >>"$RESULTS" || log "could not read /admin/drills"
printf '{"kind": "note", "what": "uptime after", "value": "%s"}\n' "$(uptime | sed 's/^ *//')" >>"$RESULTS"

summarize summarize_scenarios.py
