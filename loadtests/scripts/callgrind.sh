#!/usr/bin/env bash
# User-space instructions per proxied request (issue 13), counted by valgrind's callgrind for
# Cascadia, nginx, HAProxy and the minimal pingora proxy, behind the same upstream.
#
#   loadtests/scripts/callgrind.sh                      # builds cascadia from this tree first
#   CASCADIA_BIN=/tmp/cg-target/release/cascadia BINARY_REV=7ff3839 loadtests/scripts/callgrind.sh
#
# Callgrind counts the instructions a process executes in user space; for the same binary
# and the same input the count barely moves whatever else the host does, so this figure
# needs no quiet machine (hardware counters are not available here). Kernel work is not in
# it: the script also counts syscalls per request with `strace -c -f` (STRACE=1).
#
# Method. The upstream is one nginx process on LOAD_CPU that answers every request with
# `return 200` and a fixed 122-byte OIP JSON answer (not measured). Each proxy runs on
# GATEWAY_CPU under `valgrind --tool=callgrind` with one worker, configured as in peers.sh
# (cascadia --workers 1 with one route `fraud` -> one backend; nginx and HAProxy from
# loadtests/peers/*.template; pingora-baseline with threads: 1). A closed-loop client
# (`summarize_callgrind.py client`, on LOAD_CPU) opens ONE keep-alive connection and sends
# exactly N requests `POST /v2/models/fraud/infer` with the same 1 x 32 FP32 OIP JSON body,
# each after the previous answer has been read in full; every answer must be a 200. Then
# the proxy gets SIGTERM and callgrind writes its totals. Each proxy runs with N1 and N2
# requests; instructions per request = (Ir(N2) - Ir(N1)) / (N2 - N1), so start-up and
# shutdown cancel. Every proxy keeps one upstream connection for the whole run.
#
# A proxy's periodic timers run for the extra wall time of the N2 run too (several seconds
# under callgrind). To bound that, each proxy is also started and left idle for each of
# IDLE_SECONDS; the summary shows what that idle rate adds per request (not subtracted).
#
# Results: RESULTS (loadtests/results/callgrind-DATE.jsonl): a "meta" line (machine, date,
# git revision, settings, versions), then "run", "idle", "syscalls" and "functions" lines
# (see summarize_callgrind.py); the summary goes to *.md, and Cascadia's
# `callgrind_annotate --inclusive=yes` of its N2 run (top 30) to *-cascadia-inclusive.txt.
#
# Environment (defaults in brackets):
#   N1 [2000]  N2 [4000]   requests in the two runs of each proxy
#   REPEATS [1]            runs at each N (more shows how well the counts repeat)
#   PEERS [cascadia + every peer that is installed]: cascadia nginx haproxy pingora
#   CASCADIA_BIN           the cascadia binary to measure [build release from this tree
#                          into CARGO_TARGET_DIR (target) and use that]
#   BINARY_REV             recorded as git_rev instead of this checkout's revision (for a
#                          CASCADIA_BIN built from another tree)
#   PINGORA_BIN [CARGO_TARGET_DIR/release/pingora-baseline]
#   IDLE_SECONDS ["5 20"]  idle runs of each proxy ("" skips them)
#   STRACE [1]             also count syscalls per request with strace -c -f (0 skips)
#   GATEWAY_CPU [0]  LOAD_CPU [1]
#   RESULTS [loadtests/results/callgrind-DATE.jsonl]
#   KEEP_RAW               a directory to copy the callgrind.out files (with the proxy's
#                          stderr, valgrind's report included) and strace -c files into
#                          (not kept otherwise)
#
# Needs: valgrind (callgrind_annotate), nginx (the upstream, and a peer), python3, taskset,
# strace for STRACE=1; haproxy and pingora-baseline for those peers. It installs nothing:
# run loadtests/peers/install.sh for nginx, HAProxy and pingora-baseline.
# Summarize again later: python3 loadtests/scripts/summarize_callgrind.py FILE.jsonl
set -euo pipefail
BENCH=callgrind
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N1=${N1:-2000}
N2=${N2:-4000}
REPEATS=${REPEATS:-1}
IDLE_SECONDS=${IDLE_SECONDS-5 20}
STRACE=${STRACE:-1}
PINGORA_BIN=${PINGORA_BIN:-$BIN/pingora-baseline}
PEERS_DIR=$ROOT/loadtests/peers
SUMMARIZER=$ROOT/loadtests/scripts/summarize_callgrind.py
((N2 > N1 && N1 > 0)) || { log "need 0 < N1 < N2 (N1=$N1 N2=$N2)"; exit 2; }

INSTALL_HINT="run loadtests/peers/install.sh (nginx, HAProxy, pingora-baseline)"
for tool in valgrind callgrind_annotate python3; do
    command -v "$tool" >/dev/null || { log "missing $tool (apt-get install valgrind)"; exit 1; }
done
command -v nginx >/dev/null || { log "missing nginx (the upstream): $INSTALL_HINT"; exit 1; }
if [[ $STRACE == 1 ]] && ! command -v strace >/dev/null; then
    log "missing strace (apt-get install strace, or STRACE=0)"
    exit 1
fi

# peer_installed PEER: whether PEER can run here.
peer_installed() {
    case $1 in
        cascadia) return 0 ;;
        nginx) command -v nginx >/dev/null ;;
        haproxy) command -v haproxy >/dev/null ;;
        pingora) [[ -x $PINGORA_BIN ]] ;;
        *) log "unknown peer $1 (cascadia nginx haproxy pingora)"; exit 2 ;;
    esac
}

if [[ -n ${PEERS:-} ]]; then
    read -r -a PEER_LIST <<<"$PEERS"
    for peer in "${PEER_LIST[@]}"; do
        peer_installed "$peer" || { log "$peer is not installed: $INSTALL_HINT"; exit 1; }
    done
else
    PEER_LIST=()
    for peer in cascadia nginx haproxy pingora; do
        if peer_installed "$peer"; then
            PEER_LIST+=("$peer")
        else
            log "WARNING: $peer is not installed, leaving it out: $INSTALL_HINT"
        fi
    done
fi
PEERS="${PEER_LIST[*]}"

if [[ " $PEERS " == *" cascadia "* ]]; then
    if [[ -z ${CASCADIA_BIN:-} ]]; then
        log "building cascadia (release) into $BIN"
        cargo build --release -p cascadia
        CASCADIA_BIN=$BIN/cascadia
    fi
    [[ -x $CASCADIA_BIN ]] || { log "missing $CASCADIA_BIN"; exit 1; }
fi
CASCADIA_BIN=${CASCADIA_BIN:-}

setup_pinning
setup_workdir
NOFILE=1024

# running PID: whether PID exists and is not a zombie.
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# stop_and_wait PID [WAIT_PID]: SIGTERM to PID, then waits for WAIT_PID [PID], a child of
# this shell, to exit (PID gets SIGKILL after 120 s).
stop_and_wait() {
    local pid=$1 wait_pid=${2:-$1}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 1200); do
        running "$wait_pid" || break
        sleep 0.1
    done
    if running "$wait_pid"; then
        log "$pid did not exit within 120 s of SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$wait_pid" 2>/dev/null || true
}

# --- the upstream: nginx `return 200` --------------------------------------------------------
INFER_PATH=/v2/models/fraud/infer
OIP_BODY='{"inputs":[{"name":"features","shape":[1,32],"datatype":"FP32","data":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31]}]}'
OIP_ANSWER='{"model_name":"fraud","model_version":"1","outputs":[{"name":"probability","shape":[1,1],"datatype":"FP32","data":[0.5]}]}'
printf '%s' "$OIP_BODY" >"$WORK/body.json"
BODY_BYTES=${#OIP_BODY}

UPSTREAM_ADDR=127.0.0.1:$(free_port)
mkdir -p "$WORK/upstream"
cat >"$WORK/upstream/nginx.conf" <<NGINX
daemon off;
master_process off;
worker_processes 1;
pid $WORK/upstream/nginx.pid;
error_log $WORK/upstream/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/upstream/client_body;
    proxy_temp_path $WORK/upstream/proxy;
    fastcgi_temp_path $WORK/upstream/fastcgi;
    uwsgi_temp_path $WORK/upstream/uwsgi;
    scgi_temp_path $WORK/upstream/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    tcp_nodelay on;
    server {
        listen $UPSTREAM_ADDR;
        location / {
            default_type application/json;
            return 200 '$OIP_ANSWER';
        }
    }
}
NGINX
"${PIN_LOAD[@]}" nginx -p "$WORK/upstream" -e "$WORK/upstream/error.log" \
    -c "$WORK/upstream/nginx.conf" >"$WORK/upstream.out" 2>"$WORK/upstream.out.err" &
UPSTREAM_PID=$!
CHILDREN+=("$UPSTREAM_PID")
wait_for_port "$UPSTREAM_ADDR" "$UPSTREAM_PID" 1200 || { cat "$WORK/upstream.out.err" >&2; exit 1; }
log "upstream nginx pid $UPSTREAM_PID on $UPSTREAM_ADDR (CPU $LOAD_CPU)"

# --- the proxies -------------------------------------------------------------------------------

# from_template TEMPLATE OUT LISTEN: OUT is TEMPLATE with the peers.sh placeholders filled.
from_template() {
    sed -e "s|@LISTEN@|$3|g" -e "s|@UPSTREAM@|$UPSTREAM_ADDR|g" -e "s|@WORK@|$RUN_DIR|g" \
        -e "s|@NOFILE@|$NOFILE|g" -e "s|@MAXCONN@|$(((NOFILE - 300) / 2))|g" \
        -e "s|@WORKER_CONNECTIONS@|$((NOFILE - 100))|g" "$1" >"$2"
}

# proxy_command LEG ADDR: sets CMD, the command line that runs proxy LEG listening on ADDR
# in the foreground (writing its configuration into RUN_DIR).
proxy_command() {
    local leg=$1 addr=$2
    case $leg in
        cascadia)
            cat >"$RUN_DIR/gateway.toml" <<TOML
[gateway]
listen = "$addr"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "fraud-v1"
region = "us-east"
endpoints = ["$UPSTREAM_ADDR"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
backends = ["fraud-v1"]
TOML
            CMD=("$CASCADIA_BIN" run --config "$RUN_DIR/gateway.toml" --workers 1)
            ;;
        nginx)
            mkdir -p "$RUN_DIR/nginx"
            from_template "$PEERS_DIR/nginx.conf.template" "$RUN_DIR/nginx/nginx.conf" "$addr"
            CMD=(nginx -p "$RUN_DIR/nginx" -e "$RUN_DIR/nginx/error.log" -c "$RUN_DIR/nginx/nginx.conf")
            ;;
        haproxy)
            from_template "$PEERS_DIR/haproxy.cfg.template" "$RUN_DIR/haproxy.cfg" "$addr"
            CMD=(haproxy -db -f "$RUN_DIR/haproxy.cfg")
            ;;
        pingora)
            CMD=("$PINGORA_BIN" "$addr" "$UPSTREAM_ADDR")
            ;;
    esac
}

# measure MODE LEG N LABEL: one run of proxy LEG under MODE (callgrind or strace), N requests
# (0: left idle for IDLE seconds instead); sets LAST_OUT (the tool's output file) and
# LAST_CLIENT (the client's JSON line, or "").
measure() {
    local mode=$1 leg=$2 n=$3 label=$4 port addr pid target
    RUN_DIR=$WORK/$label
    mkdir -p "$RUN_DIR"
    port=$(free_port)
    addr=127.0.0.1:$port
    proxy_command "$leg" "$addr"
    LAST_OUT=$RUN_DIR/$mode.out
    case $mode in
        callgrind)
            "${PIN_GATEWAY[@]}" valgrind --tool=callgrind --callgrind-out-file="$LAST_OUT" \
                "${CMD[@]}" >"$RUN_DIR/proxy.out" 2>"$RUN_DIR/proxy.err" &
            ;;
        strace)
            "${PIN_GATEWAY[@]}" strace -f -c -o "$LAST_OUT" \
                "${CMD[@]}" >"$RUN_DIR/proxy.out" 2>"$RUN_DIR/proxy.err" &
            ;;
    esac
    pid=$!
    CHILDREN+=("$pid")
    if ! wait_for_port "$addr" "$pid" 1200; then
        tail -20 "$RUN_DIR/proxy.err" >&2 || true
        exit 1
    fi
    # Under strace, the process to stop is the proxy (strace then writes its summary).
    target=$pid
    if [[ $mode == strace ]]; then target=$(pgrep -P "$pid" | head -1); fi
    LAST_CLIENT=""
    if ((n > 0)); then
        if ! LAST_CLIENT=$("${PIN_LOAD[@]}" python3 "$SUMMARIZER" client "$addr" "$INFER_PATH" \
            "$WORK/body.json" "$n"); then
            log "$label: not every answer was a 200: $LAST_CLIENT"
            tail -20 "$RUN_DIR/proxy.err" >&2 || true
            exit 1
        fi
    else
        sleep "$IDLE"
    fi
    stop_and_wait "$target" "$pid"
    [[ -s $LAST_OUT ]] || { log "$label: no $mode output"; tail -20 "$RUN_DIR/proxy.err" >&2; exit 1; }
}

# record KIND KEY=JSON...: appends {"kind": KIND, KEY: VALUE...} to RESULTS (VALUE is JSON,
# or taken as a string when it does not parse).
record() {
    python3 -c '
import json, sys
rec = {"kind": sys.argv[1]}
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    try:
        rec[k] = json.loads(v)
    except ValueError:
        rec[k] = v
print(json.dumps(rec))
' "$@" >>"$RESULTS"
}

# --- the machine, first line of the results ------------------------------------------------------
VALGRIND=$(valgrind --version)
NGINX_VERSION=$(nginx -v 2>&1 | sed 's/^nginx version: //')
HAPROXY_VERSION=""
if command -v haproxy >/dev/null; then HAPROXY_VERSION=$(haproxy -v | sed -n 1p); fi
PINGORA_VERSION=$(grep -A1 '^name = "pingora"$' "$PEERS_DIR/pingora-baseline/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')
UPSTREAM="nginx return 200 ($NGINX_VERSION, one process on CPU $LOAD_CPU, ${#OIP_ANSWER}-byte JSON answer)"
ANNOTATE_FILE=""
if [[ " $PEERS " == *" cascadia "* ]]; then
    ANNOTATE_FILE=${RESULTS%.jsonl}-cascadia-inclusive.txt
fi
META_REV=()
if [[ -n ${BINARY_REV:-} ]]; then META_REV=(--git-rev "$BINARY_REV"); fi
write_meta "${META_REV[@]}" N1 N2 REPEATS PEERS IDLE_SECONDS STRACE GATEWAY_CPU LOAD_CPU \
    INFER_PATH BODY_BYTES UPSTREAM VALGRIND CASCADIA_BIN NGINX_VERSION HAPROXY_VERSION \
    PINGORA_VERSION ANNOTATE_FILE

# --- runs ------------------------------------------------------------------------------------------
for leg in "${PEER_LIST[@]}"; do
    for rep in $(seq 1 "$REPEATS"); do
        for n in "$N1" "$N2"; do
            log "$leg: callgrind, $n requests (repeat $rep/$REPEATS)"
            started=$SECONDS
            measure callgrind "$leg" "$n" "cg-$leg-$n-$rep"
            ir=$(python3 "$SUMMARIZER" total "$LAST_OUT")
            log "$leg: $n requests: $ir Ir ($((SECONDS - started)) s)"
            client_fields=$(python3 -c '
import json, sys
c = json.loads(sys.argv[1])
for k in ("seconds", "ok", "requests", "first_response"):
    print(f"{k}={json.dumps(c.get(k))}")
' "$LAST_CLIENT")
            mapfile -t fields <<<"$client_fields"
            record run "leg=$leg" "n=$n" "repeat=$rep" "ir=$ir" "${fields[@]}"
            if [[ -n ${KEEP_RAW:-} ]]; then
                mkdir -p "$KEEP_RAW"
                cp "$LAST_OUT" "$KEEP_RAW/callgrind.out.$leg-$n-$rep"
                cp "$WORK/cg-$leg-$n-$rep/proxy.err" "$KEEP_RAW/stderr.$leg-$n-$rep"
            fi
            if [[ $rep == 1 ]]; then
                callgrind_annotate --inclusive=yes --threshold=100 --auto=no "$LAST_OUT" \
                    >"$WORK/annotate-$leg-$n.txt"
                callgrind_annotate --threshold=100 --auto=no "$LAST_OUT" \
                    >"$WORK/annotate-self-$leg-$n.txt"
            fi
        done
    done
    for mode in inclusive self; do
        suffix=""
        if [[ $mode == self ]]; then suffix=self-; fi
        functions=$(python3 "$SUMMARIZER" functions "$mode" "$WORK/annotate-$suffix$leg-$N1.txt" \
            "$WORK/annotate-$suffix$leg-$N2.txt" "$N1" "$N2" 40)
        record functions "leg=$leg" "mode=$mode" "per_request=$(python3 -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1])["per_request"]))' "$functions")"
    done
    if [[ $leg == cascadia ]]; then
        # The header and the 30 largest inclusive entries of the N2 run.
        awk -v max=30 '
            listing && /^[[:space:]]*[0-9,]+ / { if (++shown > max) exit }
            { print }
            /file:function/ { listing = 1 }
        ' "$WORK/annotate-$leg-$N2.txt" >"$ANNOTATE_FILE"
        log "cascadia: callgrind_annotate --inclusive=yes top 30: $ANNOTATE_FILE"
    fi

    for IDLE in $IDLE_SECONDS; do
        log "$leg: callgrind, idle for ${IDLE}s"
        measure callgrind "$leg" 0 "cg-$leg-idle-$IDLE"
        record idle "leg=$leg" "seconds=$IDLE" "ir=$(python3 "$SUMMARIZER" total "$LAST_OUT")"
    done

    if [[ $STRACE == 1 ]]; then
        for n in "$N1" "$N2"; do
            log "$leg: strace -c -f, $n requests"
            measure strace "$leg" "$n" "st-$leg-$n"
            record syscalls "leg=$leg" "n=$n" "calls=$(python3 "$SUMMARIZER" syscalls "$LAST_OUT")"
            if [[ -n ${KEEP_RAW:-} ]]; then cp "$LAST_OUT" "$KEEP_RAW/strace-c.$leg-$n"; fi
        done
    fi
done

summarize summarize_callgrind.py
