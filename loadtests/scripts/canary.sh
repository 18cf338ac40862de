#!/usr/bin/env bash
# Canary split (RELIABILITY.md #8): a route split v1 (stable) / v2 (canary) at
# 100-CANARY_WEIGHT / CANARY_WEIGHT, sticky on x-user-id (key_header), one sim per version.
# Open-loop load at RATE for DURATION with x-user-id Zipf over 1..=USER_IDS (--user-ids);
# meanwhile loadtests/scenarios/canary.toml starts two sequential probes that read
# x-cascadia-version on every response (cascadia-load does not count by header):
#   distinct-keys   SAMPLE_N requests, each with a new user id: the share of v2 should be
#                   CANARY_WEIGHT % within binomial tolerance
#   zipf-keys       SAMPLE_N requests with Zipf ids over 1..=USER_IDS: every id must always
#                   get the same version (sticky violations: target 0)
# The generator's own traffic share per version comes from the sims' /sim/stats counters.
# With sticky keys and Zipf traffic, that request share depends on where the few heavy ids
# hash, so it is expected to differ from the weight by more than a binomial σ; the
# distinct-keys probe is the unbiased test of the weight.
#
#   loadtests/scripts/canary.sh            # about 25 s after the build
#   QUICK=1 loadtests/scripts/canary.sh    # smoke test: 5 s, 1,000 probe requests each
#
# Environment (defaults in brackets):
#   RATE [500]  CONNECTIONS [16]  WARMUP [3s]  DURATION [20s]  USER_IDS [10000]
#   CANARY_WEIGHT [10]  SAMPLE_N [5000]  BUCKET [250ms]  GATEWAY_CPU [0]  LOAD_CPU [1]
#   RESULTS [loadtests/results/canary-DATE.jsonl]  CARGO_TARGET_DIR [target]  SKIP_BUILD [0]
#
# Needs: cargo, python3, curl, taskset.
set -euo pipefail
BENCH=canary
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${QUICK:-0} == 1 ]]; then
    WARMUP=${WARMUP:-1s}
    DURATION=${DURATION:-5s}
    SAMPLE_N=${SAMPLE_N:-1000}
fi
RATE=${RATE:-500}
CONNECTIONS=${CONNECTIONS:-16}
WARMUP=${WARMUP:-3s}
DURATION=${DURATION:-20s}
USER_IDS=${USER_IDS:-10000}
CANARY_WEIGHT=${CANARY_WEIGHT:-10}
SAMPLE_N=${SAMPLE_N:-5000}
BUCKET=${BUCKET:-250ms}
STEP_DURATION=$DURATION
DURATION_S=$(python3 -c "s='$DURATION'; print(float(s[:-2])/1000 if s.endswith('ms') else float(s.rstrip('s')))")

build_binaries
setup_pinning
setup_workdir

SIM_NAMES=(v1 v2)
for name in "${SIM_NAMES[@]}"; do
    start_sim "$name" "$WORK/sim-$name.out" --name "$name" --workers 1
    log "sim $name pid ${SIM_PID[$name]} on ${SIM_ADDR[$name]} (CPU $LOAD_CPU)"
done

cat >"$WORK/gateway-gw.toml" <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "fraud-v1"
region = "local"
endpoints = ["${SIM_ADDR[v1]}"]

[[backends]]
name = "fraud-v2"
region = "local"
endpoints = ["${SIM_ADDR[v2]}"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
key_header = "x-user-id"

[[routes.split]]
version = "v1"
weight = $((100 - CANARY_WEIGHT))
backends = ["fraud-v1"]

[[routes.split]]
version = "v2"
weight = $CANARY_WEIGHT
backends = ["fraud-v2"]
TOML
start_gateway gw
log "gateway pid ${GW_PID[gw]} on ${GW_ADDR[gw]}, admin ${GW_ADMIN[gw]} (CPU $GATEWAY_CPU)"

UPTIME_BEFORE=$(uptime)
write_meta --bench canary --sims "v1=${SIM_ADDR[v1]} v2=${SIM_ADDR[v2]}" RATE CONNECTIONS WARMUP \
    DURATION USER_IDS CANARY_WEIGHT CANARY_VERSION=v2 SAMPLE_N BUCKET GATEWAY_CPU LOAD_CPU \
    "QUICK=${QUICK:-0}" UPTIME_BEFORE

before=$(sim_counts)
log "$RATE rps × $DURATION over $CONNECTIONS connections, Zipf user ids over 1..=$USER_IDS"
SCRIPTS=$ROOT/loadtests/scripts WORK=$WORK GW=${GW_ADDR[gw]} SAMPLE_N=$SAMPLE_N \
    USER_IDS=$USER_IDS PROBE_TIMEOUT=$(python3 -c "print(max(1, $DURATION_S - 1))") \
    run_steps "http://${GW_ADDR[gw]}/v2/models/fraud/infer" "$RATE" "$CONNECTIONS" \
    "${GW_PID[gw]}" canary --user-ids "$USER_IDS" \
    --scenario "$ROOT/loadtests/scenarios/canary.toml"
after=$(sim_counts)
# The probes' own requests are in the sims' counters too: subtract them.
WORK=$WORK BEFORE=$before AFTER=$after python3 -c '
import json, os, glob
b, a = json.loads(os.environ["BEFORE"]), json.loads(os.environ["AFTER"])
probe = {}
for f in glob.glob(os.path.join(os.environ["WORK"], "sample-*.json")):
    for v, n in json.load(open(f))["versions"].items():
        probe[v] = probe.get(v, 0) + n
print(json.dumps({"kind": "sims", "requests": {k: a[k] - b[k] - probe.get(k, 0) for k in a},
                  "probe_requests": probe}))
' >>"$RESULTS"
for f in "$WORK"/sample-*.json; do
    if [[ -s $f ]]; then cat "$f" >>"$RESULTS"; else log "probe $f missing"; fi
done
printf '{"kind": "note", "what": "uptime after", "value": "%s"}\n' "$(uptime | sed 's/^ *//')" >>"$RESULTS"

summarize summarize_scenarios.py
