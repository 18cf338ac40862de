#!/usr/bin/env bash
# Noisy neighbour (issue 14): good clients at a fixed open-loop rate while one abuser runs
# each abuse in turn. Good clients must see 0 failed requests and a bounded p99.
#
#   loadtests/scripts/noisy-neighbour.sh            # about 7 minutes after the build
#   QUICK=1 loadtests/scripts/noisy-neighbour.sh    # smoke test, about 2 minutes
#
# One gateway (CPU GATEWAY_CPU, one worker) with one REST model route `fraud` over two
# regions, each one cascadia-sim: fraud-east (us-east, preferred) and fraud-west (us-west),
# so an ejection or failover shows as traffic on the west sim. The route has a rate limit
# per x-api-key, a generous max_concurrency and short client limits (header, body and write
# timeouts), written from the environment below.
#
# Phases, in order, ROUNDS times: baseline (no abuser), then one per abuse (abuse.py):
# slow-body, poison, stalled-reader, key-flood, huge-binary, then baseline-after (no abuser,
# to see whether an abuse left damage behind). In each phase the good clients run
# `cascadia-load` open loop at GOOD_RATE over GOOD_CONNECTIONS HTTP/1.1 connections with
# their own x-api-key (GOOD_KEY), 1 × 32 FP32 OIP bodies, WARMUP then DURATION measured;
# the abuser starts with them and runs WARMUP + DURATION + 1 s, so the whole measured window
# is under abuse. After each phase SETTLE passes before the gateway's /metrics,
# /admin/backends, the sims' /sim/stats and the gateway's new log lines are recorded.
#
# The sims and the good clients run on LOAD_CPU, like every other script here. The abuser
# runs there too (ABUSER_CPU), at nice ABUSER_NICE, so it takes the CPU the good generator
# and the sims leave over rather than starving them: what it does to the good clients then
# goes through the gateway (and the shared model servers), not through the test rig. The
# good clients' report measures the CPU of the gateway and of both sims (--pid).
#
# Results (RESULTS): "meta", then per phase "good" (the cascadia-load --json report),
# "abuse" (abuse.py's line), "metrics" (before and after: every cascadia_* series but
# histogram buckets), "backends" (/admin/backends), "sims" (requests per sim before and
# after) and "log" (the gateway's log lines of the phase, counted by level and message)
# lines, each with "phase" and "round". Summary: summarize_noisy.py, into *.md.
#
# Environment (defaults in brackets; QUICK=1 changes the starred ones):
#   GOOD_RATE [300]  GOOD_CONNECTIONS [4]  GOOD_KEY [good-client]  ABUSER_KEY [abuser]
#   WARMUP* [3s, QUICK 1s]  DURATION* [20s, QUICK 8s]  SETTLE* [3s, QUICK 2s]
#   ROUNDS* [2, QUICK 1]  PHASES [baseline slow-body poison stalled-reader key-flood
#   huge-binary baseline-after]  ABUSER_NICE [10]  ABUSER_CPU [LOAD_CPU]
#   ABUSE_EXTRA [] (more abuse.py options for every abuse, e.g. "--connections 1")
#   ABUSER_SOURCE [] (empty: the abuser connects from 127.0.0.1 like the good clients, as
#   clients behind one NAT or L4 balancer do; 127.0.0.2: a client address of its own)
#   RATE_LIMIT [500] per second per key, RATE_BURST [1000]   MAX_CONCURRENCY [256]
#   HEADER_READ_TIMEOUT [5s]  BODY_READ_TIMEOUT [5s]  BODY_TOTAL_TIMEOUT [10s]
#   WRITE_TIMEOUT [5s]  IDLE_TIMEOUT [30s]   (the backends keep their default 2s timeout)
#   SIM_LATENCY_MS [1]  SIM_WORKERS [2]  P99_FACTOR [3] (the summary flags a phase whose
#   good p99 is above P99_FACTOR × the median baseline p99)
#   GATEWAY_CPU [0]  LOAD_CPU [1]  RESULTS [loadtests/results/noisy-neighbour-DATE.jsonl]
#   CARGO_TARGET_DIR [target]  SKIP_BUILD [0]  GIT_REV [from git] (for a run from an exported
#   tree, e.g. `git archive HEAD`, which has no .git)
#
# Needs: cargo, python3, curl, taskset.
set -euo pipefail
BENCH=noisy-neighbour
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${QUICK:-0} == 1 ]]; then
    WARMUP=${WARMUP:-1s}
    DURATION=${DURATION:-8s}
    SETTLE=${SETTLE:-2s}
    ROUNDS=${ROUNDS:-1}
fi
GOOD_RATE=${GOOD_RATE:-300}
GOOD_CONNECTIONS=${GOOD_CONNECTIONS:-4}
GOOD_KEY=${GOOD_KEY:-good-client}
ABUSER_KEY=${ABUSER_KEY:-abuser}
WARMUP=${WARMUP:-3s}
DURATION=${DURATION:-20s}
SETTLE=${SETTLE:-3s}
ROUNDS=${ROUNDS:-2}
PHASES=${PHASES:-baseline slow-body poison stalled-reader key-flood huge-binary baseline-after}
ABUSER_NICE=${ABUSER_NICE:-10}
ABUSER_CPU=${ABUSER_CPU:-$LOAD_CPU}
ABUSE_EXTRA=${ABUSE_EXTRA:-}
ABUSER_SOURCE=${ABUSER_SOURCE:-}
RATE_LIMIT=${RATE_LIMIT:-500}
RATE_BURST=${RATE_BURST:-1000}
MAX_CONCURRENCY=${MAX_CONCURRENCY:-256}
HEADER_READ_TIMEOUT=${HEADER_READ_TIMEOUT:-5s}
BODY_READ_TIMEOUT=${BODY_READ_TIMEOUT:-5s}
BODY_TOTAL_TIMEOUT=${BODY_TOTAL_TIMEOUT:-10s}
WRITE_TIMEOUT=${WRITE_TIMEOUT:-5s}
IDLE_TIMEOUT=${IDLE_TIMEOUT:-30s}
SIM_LATENCY_MS=${SIM_LATENCY_MS:-1}
SIM_WORKERS=${SIM_WORKERS:-2}
P99_FACTOR=${P99_FACTOR:-3}

# seconds D: a duration such as 500ms, 20s or 1m in seconds.
seconds() {
    python3 -c "
s = '$1'
for unit, f in (('ms', 0.001), ('us', 1e-6), ('s', 1), ('m', 60), ('h', 3600)):
    if s.endswith(unit):
        print(float(s[:-len(unit)]) * f)
        break
else:
    print(float(s))"
}
ABUSE_S=$(python3 -c "print($(seconds "$WARMUP") + $(seconds "$DURATION") + 1)")
# A stalled reader holds past the write timeout, so the gateway has had its chance to cut it.
STALL_HOLD_S=$(python3 -c "print($(seconds "$WRITE_TIMEOUT") + 3)")
SETTLE_S=$(seconds "$SETTLE")

for phase in $PHASES; do
    case $phase in
        baseline | baseline-after | slow-body | poison | stalled-reader | key-flood | huge-binary) ;;
        *) log "unknown phase $phase"; exit 2 ;;
    esac
done

build_binaries
setup_pinning
setup_workdir
PIN_ABUSER=()
if [[ ${#PIN_LOAD[@]} -gt 0 ]]; then PIN_ABUSER=(taskset -c "$ABUSER_CPU"); fi

SIM_NAMES=(east west)
start_sim east "$WORK/sim-east.out" --name east --region us-east --workers "$SIM_WORKERS" \
    --latency-ms "$SIM_LATENCY_MS"
start_sim west "$WORK/sim-west.out" --name west --region us-west --workers "$SIM_WORKERS" \
    --latency-ms "$SIM_LATENCY_MS"
log "sims: east ${SIM_ADDR[east]}, west ${SIM_ADDR[west]} ($SIM_LATENCY_MS ms, CPU $LOAD_CPU)"

cat >"$WORK/gateway-gw.toml" <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[gateway.limits]
header_read_timeout = "$HEADER_READ_TIMEOUT"
body_read_timeout = "$BODY_READ_TIMEOUT"
body_total_timeout = "$BODY_TOTAL_TIMEOUT"
write_timeout = "$WRITE_TIMEOUT"
idle_timeout = "$IDLE_TIMEOUT"

[[backends]]
name = "fraud-east"
region = "us-east"
endpoints = ["${SIM_ADDR[east]}"]

[[backends]]
name = "fraud-west"
region = "us-west"
endpoints = ["${SIM_ADDR[west]}"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
backends = ["fraud-east", "fraud-west"]
max_concurrency = $MAX_CONCURRENCY
rate_limit = { per_second = $RATE_LIMIT, burst = $RATE_BURST, key_header = "x-api-key" }
TOML
start_gateway gw
GW_LOG=$WORK/gateway-gw.out.err
log "gateway pid ${GW_PID[gw]} on ${GW_ADDR[gw]}, admin ${GW_ADMIN[gw]} (CPU $GATEWAY_CPU)"

UPTIME_BEFORE=$(uptime | sed 's/^ *//')
write_meta --bench noisy-neighbour --git-rev "${GIT_REV:-}" --sims "east=${SIM_ADDR[east]} west=${SIM_ADDR[west]}" \
    GOOD_RATE GOOD_CONNECTIONS GOOD_KEY ABUSER_KEY WARMUP DURATION SETTLE ROUNDS PHASES \
    ABUSER_NICE ABUSER_CPU ABUSE_EXTRA ABUSER_SOURCE RATE_LIMIT RATE_BURST MAX_CONCURRENCY \
    HEADER_READ_TIMEOUT BODY_READ_TIMEOUT BODY_TOTAL_TIMEOUT \
    WRITE_TIMEOUT IDLE_TIMEOUT SIM_LATENCY_MS SIM_WORKERS P99_FACTOR STALL_HOLD_S \
    GATEWAY_CPU LOAD_CPU "QUICK=${QUICK:-0}" UPTIME_BEFORE \
    GATEWAY_CONFIG="$(cat "$WORK/gateway-gw.toml")"

NOISY=$ROOT/loadtests/scripts/summarize_noisy.py

# tag ROUND PHASE: adds "round" and "phase" to every JSON line on stdin.
tag() {
    python3 -c '
import json, sys
for line in sys.stdin:
    if line.strip():
        print(json.dumps({**json.loads(line), "round": int(sys.argv[1]), "phase": sys.argv[2]}))
' "$1" "$2"
}

# record_state ROUND PHASE WHEN: the gateway's /metrics (and, after, /admin/backends).
record_state() {
    python3 "$NOISY" scrape "${GW_ADMIN[gw]}" "$3" "${GW_PID[gw]}" | tag "$1" "$2" >>"$RESULTS" ||
        log "could not scrape the gateway's /metrics"
    if [[ $3 == after ]]; then
        curl -sf --max-time 2 "http://${GW_ADMIN[gw]}/admin/backends" |
            python3 -c 'import json, sys; print(json.dumps({"kind": "backends", **json.load(sys.stdin)}))' |
            tag "$1" "$2" >>"$RESULTS" || log "could not read /admin/backends"
    fi
}

# abuse_args PHASE: abuse.py's options for the phase.
abuse_args() {
    local args=""
    if [[ -n $ABUSER_SOURCE ]]; then args="--source $ABUSER_SOURCE"; fi
    case $1 in
        stalled-reader) args+=" --hold $STALL_HOLD_S" ;;
    esac
    echo "$args"
}

log "phases: $PHASES; $ROUNDS round(s) of $WARMUP + $DURATION each, good clients at" \
    "$GOOD_RATE rps over $GOOD_CONNECTIONS connections"
for round in $(seq 1 "$ROUNDS"); do
    for phase in $PHASES; do
        log "round $round: $phase"
        record_state "$round" "$phase" before
        log_from=$(wc -c <"$GW_LOG")
        sims_before=$(sim_counts)
        ABUSE_PID=""
        if [[ $phase != baseline* ]]; then
            # shellcheck disable=SC2046 # abuse_args is a list of words
            "${PIN_ABUSER[@]}" nice -n "$ABUSER_NICE" python3 "$ROOT/loadtests/scripts/abuse.py" \
                "$phase" --target "${GW_ADDR[gw]}" --duration "$ABUSE_S" --key "$ABUSER_KEY" \
                $(abuse_args "$phase") $ABUSE_EXTRA >"$WORK/abuse.json" 2>"$WORK/abuse.err" &
            ABUSE_PID=$!
            CHILDREN+=("$ABUSE_PID")
        fi
        "${PIN_LOAD[@]}" "$BIN/cascadia-load" --url "http://${GW_ADDR[gw]}/v2/models/fraud/infer" \
            --rate "$GOOD_RATE" --connections "$GOOD_CONNECTIONS" --warmup "$WARMUP" \
            --duration "$DURATION" --oip-rows 1 --workers 1 -H "x-api-key: $GOOD_KEY" \
            --pid "${GW_PID[gw]}" --pid "${SIM_PID[east]}" --pid "${SIM_PID[west]}" \
            --label "$phase" --bucket 1s --quiet --json |
            python3 -c '
import json, sys
for line in sys.stdin:
    if line.strip():
        print(json.dumps({"kind": "good", **json.loads(line)}))
' | tag "$round" "$phase" >>"$RESULTS"
        if [[ -n $ABUSE_PID ]]; then
            abuse_ok=0
            wait "$ABUSE_PID" || abuse_ok=$?
            # Done: out of CHILDREN, so the cleanup never signals a reused pid.
            kept=()
            for pid in "${CHILDREN[@]}"; do [[ $pid == "$ABUSE_PID" ]] || kept+=("$pid"); done
            CHILDREN=("${kept[@]}")
            if [[ $abuse_ok == 0 ]]; then
                tag "$round" "$phase" <"$WORK/abuse.json" >>"$RESULTS"
            else
                log "abuse.py $phase failed:"
                cat "$WORK/abuse.err" >&2
                printf '{"kind": "abuse", "mode": "%s", "failed": true}\n' "$phase" |
                    tag "$round" "$phase" >>"$RESULTS"
            fi
        fi
        sleep "$SETTLE_S"
        record_state "$round" "$phase" after
        printf '{"kind": "sims", "before": %s, "after": %s}\n' "$sims_before" "$(sim_counts)" |
            tag "$round" "$phase" >>"$RESULTS"
        python3 "$NOISY" logs "$GW_LOG" "$log_from" | tag "$round" "$phase" >>"$RESULTS"
    done
done
printf '{"kind": "note", "what": "uptime after", "value": "%s"}\n' "$(uptime | sed 's/^ *//')" >>"$RESULTS"

summarize summarize_noisy.py
