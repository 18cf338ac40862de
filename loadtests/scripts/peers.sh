#!/usr/bin/env bash
# Peer comparison (issue 7): the same open-loop load sent direct to a simulated model server
# (cascadia-sim) and through Cascadia, nginx, HAProxy and a minimal pingora proxy, in one run.
#
#   loadtests/scripts/peers.sh             # full run, about 25 minutes with the defaults
#   QUICK=1 loadtests/scripts/peers.sh     # smoke test, about 1.5 minutes after the build
#
# Every proxy runs pinned to GATEWAY_CPU with one worker (cascadia --workers 1, nginx one
# process, HAProxy nbthread 1, pingora threads: 1) and keep-alive on both legs; the sim and
# the generator share LOAD_CPU. Four parts, in this order:
#
#   1. idle RSS of every process, before any load;
#   2. BATCHES batches; in each, for every rate in RATES, direct first and then every proxy
#      (their order rotates from batch to batch), then the same at LATENCY_RATE on one
#      connection. Each run records the proxy's CPU µs/request and RSS (cascadia-load --pid);
#   3. a stepped rate sweep (SWEEP_RATES on SWEEP_CONNECTIONS), every leg at each step; a leg
#      leaves the sweep after SWEEP_MAX_FAILS steps with errors, p99 > 10 ms or an achieved
#      rate under 95% of the target;
#   4. IDLE_CONNECTIONS idle keep-alive connections to each leg (loadtests/peers/idle_conns.py):
#      RSS while they are open and after they are closed.
#
# Environment (defaults in brackets):
#   BATCHES [3]  RATES ["500 1000 2000"]  CONNECTIONS [4]  WARMUP [5s]  DURATION [20s]
#   LATENCY_RATE [200]   rate of the single-connection run in each batch (0 skips it)
#   SWEEP_RATES ["1000 2000 4000 6000 8000 10000 13000 16000 20000"] ("" skips the sweep)
#   SWEEP_CONNECTIONS [16]  SWEEP_WARMUP [2s]  SWEEP_DURATION [6s]  SWEEP_MAX_FAILS [2]
#   IDLE_CONNECTIONS [10000] (0 skips part 4; lowered to what the fd limit allows HAProxy:
#                    (limit - 400) / 2, e.g. 9000 under a hard limit of 20000)
#   PEERS ["cascadia nginx haproxy pingora"]   the proxies to measure (direct always runs)
#   GATEWAY_CPU [0]  LOAD_CPU [1]   cores for the proxies, and for the sim + generator
#   RESULTS [loadtests/results/peers-DATE.jsonl]   JSON lines; the summary goes to *.md
#   CARGO_TARGET_DIR [target]   SKIP_BUILD [0]   set 1 to use already-built binaries
#   BINARY_REV   recorded as the meta line's git_rev instead of this checkout's revision
#                (for binaries built from another tree, e.g. `git archive HEAD`)
#
# Needs: cargo, python3, curl, taskset, nginx, haproxy and the pingora baseline
# (loadtests/peers/install.sh installs and builds them; this script runs it unless
# SKIP_BUILD=1). Summarize again later: python3 loadtests/scripts/summarize_peers.py FILE.jsonl
set -euo pipefail
BENCH=peers
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${QUICK:-0} == 1 ]]; then
    BATCHES=${BATCHES:-1}
    RATES=${RATES:-500}
    WARMUP=${WARMUP:-1s}
    DURATION=${DURATION:-2s}
    SWEEP_RATES=${SWEEP_RATES:-1000 4000}
    SWEEP_WARMUP=${SWEEP_WARMUP:-1s}
    SWEEP_DURATION=${SWEEP_DURATION:-2s}
    IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-1000}
fi
BATCHES=${BATCHES:-3}
RATES=${RATES:-500 1000 2000}
CONNECTIONS=${CONNECTIONS:-4}
WARMUP=${WARMUP:-5s}
DURATION=${DURATION:-20s}
LATENCY_RATE=${LATENCY_RATE:-200}
SWEEP_RATES=${SWEEP_RATES-1000 2000 4000 6000 8000 10000 13000 16000 20000}
SWEEP_CONNECTIONS=${SWEEP_CONNECTIONS:-16}
SWEEP_WARMUP=${SWEEP_WARMUP:-2s}
SWEEP_DURATION=${SWEEP_DURATION:-6s}
SWEEP_MAX_FAILS=${SWEEP_MAX_FAILS:-2}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
PEERS=${PEERS:-cascadia nginx haproxy pingora}
read -r -a PEER_LIST <<<"$PEERS"

PEERS_DIR=$ROOT/loadtests/peers
ABS_TARGET_DIR=$TARGET_DIR
[[ $ABS_TARGET_DIR == /* ]] || ABS_TARGET_DIR=$ROOT/$TARGET_DIR

build_binaries
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    CARGO_TARGET_DIR=$ABS_TARGET_DIR "$PEERS_DIR/install.sh"
fi
for tool in nginx haproxy curl; do
    command -v "$tool" >/dev/null || { log "missing $tool: run loadtests/peers/install.sh"; exit 1; }
done
[[ -x $BIN/pingora-baseline ]] || { log "missing $BIN/pingora-baseline: run loadtests/peers/install.sh"; exit 1; }
setup_pinning
setup_workdir

# 10k idle connections need more descriptors than the usual 1024 or 20000 (children
# inherit the limit). Raising the hard limit needs root; without it, use what there is.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
# HAProxy needs two descriptors per connection it admits; keep every leg's idle-connection
# count within what HAProxy can take, so that all legs are measured with the same count.
MAX_IDLE=$((((NOFILE - 400) / 2) / 1000 * 1000))
if ((IDLE_CONNECTIONS > MAX_IDLE)); then
    log "fd limit $NOFILE: IDLE_CONNECTIONS lowered from $IDLE_CONNECTIONS to $MAX_IDLE"
    IDLE_CONNECTIONS=$MAX_IDLE
fi
log "fd limit $NOFILE"

declare -A LEG_PID=() LEG_ADDR=()

# from_template TEMPLATE OUT LISTEN: OUT is TEMPLATE with @LISTEN@, @UPSTREAM@, @WORK@ filled.
from_template() {
    sed -e "s|@LISTEN@|$3|g" -e "s|@UPSTREAM@|${SIM_ADDR[sim]}|g" -e "s|@WORK@|$WORK|g" \
        -e "s|@NOFILE@|$NOFILE|g" -e "s|@MAXCONN@|$(((NOFILE - 300) / 2))|g" \
        -e "s|@WORKER_CONNECTIONS@|$((NOFILE - 100))|g" "$1" >"$2"
}

# start_peer LEG: starts the proxy LEG on GATEWAY_CPU, in the foreground of its own process
# (so $! is the process that serves, whose CPU and RSS are measured); sets LEG_PID and
# LEG_ADDR once it accepts connections.
start_peer() {
    local leg=$1 port addr
    case $leg in
        cascadia)
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
            LEG_PID[cascadia]=${GW_PID[main]}
            LEG_ADDR[cascadia]=${GW_ADDR[main]}
            return 0
            ;;
    esac
    port=$(free_port)
    addr=127.0.0.1:$port
    case $leg in
        nginx)
            mkdir -p "$WORK/nginx"
            from_template "$PEERS_DIR/nginx.conf.template" "$WORK/nginx/nginx.conf" "$addr"
            "${PIN_GATEWAY[@]}" nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" \
                -c "$WORK/nginx/nginx.conf" >"$WORK/nginx.out" 2>"$WORK/nginx.out.err" &
            ;;
        haproxy)
            from_template "$PEERS_DIR/haproxy.cfg.template" "$WORK/haproxy.cfg" "$addr"
            "${PIN_GATEWAY[@]}" haproxy -db -f "$WORK/haproxy.cfg" \
                >"$WORK/haproxy.out" 2>"$WORK/haproxy.out.err" &
            ;;
        pingora)
            "${PIN_GATEWAY[@]}" "$BIN/pingora-baseline" "$addr" "${SIM_ADDR[sim]}" \
                >"$WORK/pingora.out" 2>"$WORK/pingora.out.err" &
            ;;
        *) log "unknown peer $leg"; exit 2 ;;
    esac
    LEG_PID[$leg]=$!
    CHILDREN+=("$!")
    LEG_ADDR[$leg]=$addr
    if ! wait_for_port "$addr" "${LEG_PID[$leg]}"; then
        cat "$WORK/$leg.out.err" >&2 || true
        exit 1
    fi
}

start_sim sim "$WORK/sim.out" --region us-east --workers 1
LEG_PID[direct]=${SIM_PID[sim]}
LEG_ADDR[direct]=${SIM_ADDR[sim]}
log "cascadia-sim pid ${SIM_PID[sim]} on ${SIM_ADDR[sim]} (CPU $LOAD_CPU)"
for leg in "${PEER_LIST[@]}"; do
    start_peer "$leg"
    log "$leg pid ${LEG_PID[$leg]} on ${LEG_ADDR[$leg]} (CPU $GATEWAY_CPU)"
done
LEGS=(direct "${PEER_LIST[@]}")

INFER_PATH=/v2/models/fraud/infer
OIP_BODY='{"inputs":[{"name":"features","shape":[1,32],"datatype":"FP32","data":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31]}]}'

# Every leg must answer an inference request with 200 before anything is measured.
for leg in "${LEGS[@]}"; do
    code=$(curl -s -o "$WORK/check-$leg.body" -w '%{http_code}' --max-time 5 -X POST \
        -H 'content-type: application/json' --data "$OIP_BODY" "http://${LEG_ADDR[$leg]}$INFER_PATH" || true)
    if [[ $code != 200 ]]; then
        log "$leg answered $code to a test request (body: $(head -c 300 "$WORK/check-$leg.body" 2>/dev/null))"
        exit 1
    fi
done

# --- the machine, first line of the results ------------------------------------------------
NGINX_VERSION=$(nginx -v 2>&1 | sed 's/^nginx version: //')
HAPROXY_VERSION=$(haproxy -v | sed -n 1p)
PINGORA_VERSION=$(grep -A1 '^name = "pingora"$' "$PEERS_DIR/pingora-baseline/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')
META_REV=()
if [[ -n ${BINARY_REV:-} ]]; then META_REV=(--git-rev "$BINARY_REV"); fi
write_meta "${META_REV[@]}" BATCHES RATES CONNECTIONS WARMUP DURATION LATENCY_RATE SWEEP_RATES SWEEP_CONNECTIONS \
    SWEEP_WARMUP SWEEP_DURATION SWEEP_MAX_FAILS IDLE_CONNECTIONS NOFILE PEERS GATEWAY_CPU LOAD_CPU \
    NGINX_VERSION HAPROXY_VERSION PINGORA_VERSION

# tag KEY=VALUE...: copies the JSON object on stdin to stdout with the keys added.
tag() {
    python3 -c '
import json, sys
rec = json.loads(sys.stdin.read())
rec.update(a.split("=", 1) for a in sys.argv[1:])
print(json.dumps(rec))
' "$@"
}

# host_load PHASE: appends {"kind": "host", "phase", "loadavg", "uptime"} to RESULTS.
host_load() {
    printf '{"kind": "host", "phase": "%s", "loadavg": "%s", "uptime": "%s"}\n' \
        "$1" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(uptime | sed 's/^ *//')" >>"$RESULTS"
}

# rss_kib PID: VmRSS of PID in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# load PHASE LEG BATCH RATE CONNS [ARG...]: one generator run against LEG, measuring LEG's
# process, appended to RESULTS; prints nothing. Returns 1 if the generator could not start.
load() {
    local phase=$1 leg=$2 batch=$3 rate=$4 conns=$5 out
    shift 5
    out=$(run_load "http://${LEG_ADDR[$leg]}$INFER_PATH" "$rate" "$conns" "${LEG_PID[$leg]}" \
        "$leg/$batch" "$@") || { log "$phase $leg $rate rps: the generator failed"; return 1; }
    tag kind=run "phase=$phase" "leg=$leg" "batch=$batch" <<<"$out" >>"$RESULTS"
    LAST_RUN=$out
}

# rotated N: the peers, rotated left by N, so that no proxy always runs right after direct.
rotated() {
    local n=$(($1 % ${#PEER_LIST[@]}))
    echo "${PEER_LIST[@]:n}" "${PEER_LIST[@]:0:n}"
}

host_load start

# --- 1. idle RSS ------------------------------------------------------------------------------
for leg in "${LEGS[@]}"; do
    printf '{"kind": "rss", "phase": "idle", "leg": "%s", "pid": %s, "rss_kib": %s}\n' \
        "$leg" "${LEG_PID[$leg]}" "$(rss_kib "${LEG_PID[$leg]}")" >>"$RESULTS"
done

# --- 2. fixed rates, alternating --------------------------------------------------------------
for batch in $(seq 1 "$BATCHES"); do
    read -r -a order <<<"$(rotated $((batch - 1)))"
    for rate in $RATES; do
        for leg in direct "${order[@]}"; do
            log "batch $batch/$BATCHES  $rate rps × $CONNECTIONS conn  $leg"
            load fixed "$leg" "$batch" "$rate" "$CONNECTIONS"
        done
    done
    if [[ $LATENCY_RATE != 0 ]]; then
        for leg in direct "${order[@]}"; do
            log "batch $batch/$BATCHES  $LATENCY_RATE rps × 1 conn  $leg"
            load fixed "$leg" "$batch" "$LATENCY_RATE" 1
        done
    fi
    host_load "batch $batch"
done

# --- 3. stepped rate sweep --------------------------------------------------------------------
declare -A FAILS=()
step=0
for rate in $SWEEP_RATES; do
    read -r -a order <<<"$(rotated "$step")"
    step=$((step + 1))
    for leg in direct "${order[@]}"; do
        if ((${FAILS[$leg]:-0} >= SWEEP_MAX_FAILS)); then continue; fi
        log "sweep $rate rps × $SWEEP_CONNECTIONS conn  $leg"
        LAST_RUN=
        WARMUP=$SWEEP_WARMUP DURATION=$SWEEP_DURATION \
            load sweep "$leg" 0 "$rate" "$SWEEP_CONNECTIONS" --timeout 2s || true
        # A step fails on any error, p99 over 10 ms, or falling behind the offered rate.
        if [[ -z $LAST_RUN ]] || python3 -c '
import json, sys
r = json.loads(sys.argv[1])
e = r["errors"]
bad = (e["status"] + e["transport"] + e["timeout"] + e["unfinished"] > 0
       or r["latency_us"]["p99"] > 10000 or r["achieved_rps"] < 0.95 * r["target_rps"])
sys.exit(0 if bad else 1)
' "$LAST_RUN"; then
            FAILS[$leg]=$((${FAILS[$leg]:-0} + 1))
            log "sweep: $leg failed at $rate rps (${FAILS[$leg]}/$SWEEP_MAX_FAILS)"
        fi
    done
done
host_load "after sweep"

# --- 4. idle keep-alive connections -----------------------------------------------------------
if [[ $IDLE_CONNECTIONS != 0 ]]; then
    for leg in "${LEGS[@]}"; do
        log "$IDLE_CONNECTIONS idle connections to $leg"
        "${PIN_LOAD[@]}" python3 "$PEERS_DIR/idle_conns.py" --addr "${LEG_ADDR[$leg]}" \
            --path "$INFER_PATH" --connections "$IDLE_CONNECTIONS" --pid "${LEG_PID[$leg]}" \
            --label "$leg" | tag "leg=$leg" >>"$RESULTS" ||
            log "idle connections to $leg failed"
        # Let the closed connections' TIME_WAIT and the proxy's cleanup settle.
        sleep 1
    done
fi
host_load end

summarize summarize_peers.py
