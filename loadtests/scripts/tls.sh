#!/usr/bin/env bash
# TLS termination (issue 16): what TLS on the listener costs Cascadia per request, against
# Cascadia in plaintext and against nginx terminating TLS with the same certificate, in one
# run, with the same simulated model server (cascadia-sim) behind every leg.
#
#   loadtests/scripts/tls.sh              # full run, about 15 minutes with the defaults
#   QUICK=1 loadtests/scripts/tls.sh      # smoke test, about 1.5 minutes after the build
#   SKIP_BUILD=1 CARGO_TARGET_DIR=/tmp/bench-target BINARY_REV=96af9bc loadtests/scripts/tls.sh
#
# Legs (LEGS), each its own process pinned to GATEWAY_CPU with one worker, keep-alive to the
# sim (sim and generator on LOAD_CPU):
#   cascadia-plain  `cascadia run --workers 1`, http://
#   cascadia-tls    the same config plus [gateway.tls] (cert_file, key_file; reload_interval
#                   left at its default, so the files are looked at once a second), https://
#   nginx-tls       loadtests/peers/nginx-tls.conf.template: one process, `listen ... ssl`,
#                   the same certificate and key, proxy_pass with upstream keepalive
#   nginx-plain     loadtests/peers/nginx.conf.template (the peers.sh nginx), http://
#
# Certificates: a fresh ECDSA P-256 CA and a leaf for IP 127.0.0.1 and DNS localhost signed by
# it (KEY_TYPE=rsa: RSA-2048 for both), made with openssl in the scratch directory; the leaf
# alone is the served chain. The generator trusts the CA (`cascadia-load --tls-ca`), speaks
# HTTP/1.1 over ALPN, and keeps no TLS sessions, so a new connection is a full handshake.
#
# Parts, in this order:
#   1. BATCHES batches. In each: for every rate in RATES, every leg on CONNECTIONS keep-alive
#      connections (the handshake is amortized: steady-state record encryption), open loop;
#      then every leg at HANDSHAKE_RATE with `--connection-per-request` (every request on a
#      new TCP connection with `connection: close`, over TLS a full handshake): CPU per new
#      connection. The leg order rotates from batch to batch. Each run records the proxy's
#      CPU µs/request ((utime+stime) from /proc/PID/stat ÷ completed requests) and RSS.
#   2. CALLGRIND=1: user-space instructions per request for CG_LEGS, each proxy started under
#      `valgrind --tool=callgrind` twice, with CG_N1 and CG_N2 requests on one keep-alive
#      connection from a closed-loop client (summarize_tls.py client, TLS for the tls legs);
#      (Ir(N2) - Ir(N1)) / (N2 - N1), so start-up and the one handshake cancel (as
#      callgrind.sh, but the upstream is the same sim as in part 1).
#
# Environment (defaults in brackets):
#   BATCHES [3]  RATES ["1000 2000"]  CONNECTIONS [4]  WARMUP [3s]  DURATION [15s]
#   HANDSHAKE_RATE [500] (0 skips)  HANDSHAKE_CONNECTIONS [4]
#   LEGS ["cascadia-plain cascadia-tls nginx-tls nginx-plain"]
#   CALLGRIND [1 if valgrind is installed]  CG_N1 [1000]  CG_N2 [3000]
#   CG_LEGS [LEGS]
#   KEY_TYPE [ec]: ec (ECDSA P-256) or rsa (RSA-2048)
#   GATEWAY_CPU [0]  LOAD_CPU [1]
#   RESULTS [loadtests/results/tls-DATE.jsonl]   JSON lines; the summary goes to *.md
#   CARGO_TARGET_DIR [target]  SKIP_BUILD [0]   set 1 to use already-built binaries
#   BINARY_REV   recorded as git_rev instead of this checkout's revision (binaries built from
#                a copy of the tree)
#
# Needs: cargo, python3, curl, taskset, openssl, nginx (loadtests/peers/install.sh installs
# it), valgrind for CALLGRIND=1. Summarize again: python3 loadtests/scripts/summarize_tls.py FILE
set -euo pipefail
BENCH=tls
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${QUICK:-0} == 1 ]]; then
    BATCHES=${BATCHES:-1}
    RATES=${RATES:-1000}
    WARMUP=${WARMUP:-1s}
    DURATION=${DURATION:-3s}
    CG_N1=${CG_N1:-100}
    CG_N2=${CG_N2:-300}
fi
BATCHES=${BATCHES:-3}
RATES=${RATES:-1000 2000}
CONNECTIONS=${CONNECTIONS:-4}
WARMUP=${WARMUP:-3s}
DURATION=${DURATION:-15s}
HANDSHAKE_RATE=${HANDSHAKE_RATE:-500}
HANDSHAKE_CONNECTIONS=${HANDSHAKE_CONNECTIONS:-4}
LEGS=${LEGS:-cascadia-plain cascadia-tls nginx-tls nginx-plain}
read -r -a LEG_LIST <<<"$LEGS"
if [[ -z ${CALLGRIND:-} ]]; then
    if command -v valgrind >/dev/null; then CALLGRIND=1; else CALLGRIND=0; fi
fi
CG_N1=${CG_N1:-1000}
CG_N2=${CG_N2:-3000}
CG_LEGS=${CG_LEGS:-$LEGS}
KEY_TYPE=${KEY_TYPE:-ec}
PEERS_DIR=$ROOT/loadtests/peers
SUMMARIZER=$ROOT/loadtests/scripts/summarize_tls.py

build_binaries
for tool in nginx openssl curl python3; do
    command -v "$tool" >/dev/null || { log "missing $tool (loadtests/peers/install.sh installs nginx)"; exit 1; }
done
if [[ $CALLGRIND == 1 ]]; then
    command -v valgrind >/dev/null || { log "missing valgrind (apt-get install valgrind, or CALLGRIND=0)"; exit 1; }
    ((CG_N2 > CG_N1 && CG_N1 > 0)) || { log "need 0 < CG_N1 < CG_N2"; exit 2; }
fi
setup_pinning
setup_workdir
NOFILE=$(ulimit -n)

# --- certificates ------------------------------------------------------------------------------
TLS_DIR=$WORK/tls
mkdir -p "$TLS_DIR"
case $KEY_TYPE in
    ec) KEYGEN=(-algorithm EC -pkeyopt ec_paramgen_curve:P-256) ;;
    rsa) KEYGEN=(-algorithm RSA -pkeyopt rsa_keygen_bits:2048) ;;
    *) log "KEY_TYPE must be ec or rsa"; exit 2 ;;
esac
(
    cd "$TLS_DIR"
    openssl genpkey "${KEYGEN[@]}" -out ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 7 -subj "/CN=cascadia tls.sh CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out ca.crt
    openssl genpkey "${KEYGEN[@]}" -out server.key
    openssl req -new -key server.key -subj "/CN=localhost" -out server.csr
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 -sha256 \
        -extfile server.ext -out server.crt
) >"$WORK/openssl.log" 2>&1 || { cat "$WORK/openssl.log" >&2; exit 1; }
CA=$TLS_DIR/ca.crt
CERT=$TLS_DIR/server.crt
KEY=$TLS_DIR/server.key
CERT_INFO=$(openssl x509 -in "$CERT" -noout -text | sed -n 's/^ *Public Key Algorithm: //p; s/^ *Public-Key: //p' | paste -sd' ')

# --- processes -----------------------------------------------------------------------------------
declare -A LEG_PID=() LEG_URL=() LEG_ADDR=()

# cascadia_config FILE LISTEN TLS: a gateway config listening on LISTEN, one route to the sim,
# with [gateway.tls] when TLS is 1.
cascadia_config() {
    {
        printf '[gateway]\nlisten = "%s"\nadmin_listen = "127.0.0.1:0"\n' "$2"
        if [[ $3 == 1 ]]; then
            printf '\n[gateway.tls]\ncert_file = "%s"\nkey_file = "%s"\n' "$CERT" "$KEY"
        fi
        cat <<TOML

[[backends]]
name = "fraud-v1"
region = "us-east"
endpoints = ["${SIM_ADDR[sim]}"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
backends = ["fraud-v1"]
TOML
    } >"$1"
}

# nginx_config DIR LISTEN TLS: DIR/nginx.conf from the plain or the TLS template.
nginx_config() {
    local template=$PEERS_DIR/nginx.conf.template
    if [[ $3 == 1 ]]; then template=$PEERS_DIR/nginx-tls.conf.template; fi
    mkdir -p "$1"
    sed -e "s|@LISTEN@|$2|g" -e "s|@UPSTREAM@|${SIM_ADDR[sim]}|g" -e "s|@WORK@/nginx|$1|g" \
        -e "s|@WORK@|$1|g" -e "s|@NOFILE@|$NOFILE|g" -e "s|@WORKER_CONNECTIONS@|$((NOFILE - 100))|g" \
        -e "s|@CERT@|$CERT|g" -e "s|@KEY@|$KEY|g" "$template" >"$1/nginx.conf"
}

# leg_tls LEG: whether LEG terminates TLS.
leg_tls() { [[ $1 == *-tls ]]; }

# leg_command LEG ADDR DIR: sets CMD, the foreground command of proxy LEG on ADDR (its
# configuration written under DIR).
leg_command() {
    local leg=$1 addr=$2 dir=$3 tls=0
    if leg_tls "$leg"; then tls=1; fi
    mkdir -p "$dir"
    case $leg in
        cascadia-*)
            cascadia_config "$dir/gateway.toml" "$addr" "$tls"
            CMD=("$BIN/cascadia" run --config "$dir/gateway.toml" --workers 1)
            ;;
        nginx-*)
            nginx_config "$dir/nginx" "$addr" "$tls"
            CMD=(nginx -p "$dir/nginx" -e "$dir/nginx/error.log" -c "$dir/nginx/nginx.conf")
            ;;
        *) log "unknown leg $leg"; exit 2 ;;
    esac
}

# start_leg LEG: starts LEG on GATEWAY_CPU on a free port; sets LEG_PID, LEG_ADDR, LEG_URL.
start_leg() {
    local leg=$1 addr scheme=http
    addr=127.0.0.1:$(free_port)
    leg_command "$leg" "$addr" "$WORK/$leg"
    "${PIN_GATEWAY[@]}" "${CMD[@]}" >"$WORK/$leg.out" 2>"$WORK/$leg.out.err" &
    LEG_PID[$leg]=$!
    CHILDREN+=("$!")
    if ! wait_for_port "$addr" "${LEG_PID[$leg]}"; then
        cat "$WORK/$leg.out.err" >&2 || true
        exit 1
    fi
    if leg_tls "$leg"; then scheme=https; fi
    LEG_ADDR[$leg]=$addr
    LEG_URL[$leg]=$scheme://$addr
    if [[ $leg == cascadia-* ]]; then
        # What `cascadia run` announces must match the leg (https:// with [gateway.tls]).
        local said
        said=$(wait_for_address "$WORK/$leg.out" "cascadia gateway listening on " "${LEG_PID[$leg]}")
        [[ $said == "$scheme://$addr" ]] || { log "$leg announced $said, expected $scheme://$addr"; exit 1; }
    fi
}

start_sim sim "$WORK/sim.out" --region us-east --workers 1
log "cascadia-sim pid ${SIM_PID[sim]} on ${SIM_ADDR[sim]} (CPU $LOAD_CPU)"
for leg in "${LEG_LIST[@]}"; do
    start_leg "$leg"
    log "$leg pid ${LEG_PID[$leg]} on ${LEG_URL[$leg]} (CPU $GATEWAY_CPU)"
done

INFER_PATH=/v2/models/fraud/infer
OIP_BODY='{"inputs":[{"name":"features","shape":[1,32],"datatype":"FP32","data":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31]}]}'
printf '%s' "$OIP_BODY" >"$WORK/body.json"

# Every leg must answer an inference request with 200 (over TLS, verified against the CA)
# before anything is measured; record what each TLS leg negotiates.
declare -A NEGOTIATED=()
for leg in "${LEG_LIST[@]}"; do
    code=$(curl -s --cacert "$CA" -o "$WORK/check-$leg.body" -w '%{http_code}' --max-time 5 -X POST \
        -H 'content-type: application/json' --data "$OIP_BODY" "${LEG_URL[$leg]}$INFER_PATH" || true)
    if [[ $code != 200 ]]; then
        log "$leg answered '$code' to a test request (body: $(head -c 300 "$WORK/check-$leg.body" 2>/dev/null))"
        exit 1
    fi
    if leg_tls "$leg"; then
        NEGOTIATED[$leg]=$(openssl s_client -connect "${LEG_ADDR[$leg]}" -CAfile "$CA" -alpn http/1.1 \
            -brief </dev/null 2>&1 | grep -E '^(Protocol version|Ciphersuite|Peer signature type|Server Temp Key|Negotiated TLS1.3 group|ALPN protocol|Verification):' |
            sed 's/: /=/' | paste -sd';' || true)
        log "$leg negotiates (openssl s_client): ${NEGOTIATED[$leg]}"
    fi
done
NEGOTIATED_TLS=""
for leg in "${!NEGOTIATED[@]}"; do NEGOTIATED_TLS+="$leg: ${NEGOTIATED[$leg]} | "; done

# --- the machine, first line of the results --------------------------------------------------------
NGINX_VERSION=$(nginx -V 2>&1 | sed -n 's/^nginx version: //p; s/^built with //p' | paste -sd';')
OPENSSL_VERSION=$(openssl version)
RUSTLS_VERSION=$(grep -A1 '^name = "rustls"$' "$ROOT/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p' | head -1)
AES_NI=$(grep -qw aes /proc/cpuinfo && echo yes || echo no)
VALGRIND=""
if [[ $CALLGRIND == 1 ]]; then VALGRIND=$(valgrind --version); fi
META_REV=()
if [[ -n ${BINARY_REV:-} ]]; then META_REV=(--git-rev "$BINARY_REV"); fi
write_meta "${META_REV[@]}" --sims "sim=${SIM_ADDR[sim]}" BATCHES RATES CONNECTIONS WARMUP DURATION \
    HANDSHAKE_RATE HANDSHAKE_CONNECTIONS LEGS CALLGRIND CG_N1 CG_N2 CG_LEGS KEY_TYPE CERT_INFO \
    NEGOTIATED_TLS GATEWAY_CPU LOAD_CPU NGINX_VERSION OPENSSL_VERSION RUSTLS_VERSION AES_NI VALGRIND

# tag KEY=VALUE...: the JSON object on stdin with the keys added.
tag() {
    python3 -c '
import json, sys
rec = json.loads(sys.stdin.read())
rec.update(a.split("=", 1) for a in sys.argv[1:])
print(json.dumps(rec))
' "$@"
}

host_load() {
    printf '{"kind": "host", "phase": "%s", "loadavg": "%s"}\n' "$1" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS"
}

# load PHASE LEG BATCH RATE CONNS [ARG...]: one generator run against LEG, appended to RESULTS.
load() {
    local phase=$1 leg=$2 batch=$3 rate=$4 conns=$5 out tls_args=()
    shift 5
    if leg_tls "$leg"; then tls_args=(--tls-ca "$CA"); fi
    out=$(run_load "${LEG_URL[$leg]}$INFER_PATH" "$rate" "$conns" "${LEG_PID[$leg]}" "$leg/$batch" \
        "${tls_args[@]}" "$@") || { log "$phase $leg $rate rps: the generator failed"; return 1; }
    tag kind=run "phase=$phase" "leg=$leg" "batch=$batch" <<<"$out" >>"$RESULTS"
    python3 -c '
import json, sys
r = json.loads(sys.argv[1])
cpu = r["processes"][0].get("cpu_us_per_req") or 0
lat, e = r["latency_us"], r["errors"]
errors = e["status"] + e["transport"] + e["timeout"] + e["unfinished"]
print("    %s: %.1f µs/req, p50 %s µs, p99 %s µs, %.0f rps, errors %d"
      % (sys.argv[2], cpu, lat["p50"], lat["p99"], r["achieved_rps"], errors))
' "$out" "$leg" >&2
}

# rotated N: the legs rotated left by N.
rotated() {
    local n=$(($1 % ${#LEG_LIST[@]}))
    echo "${LEG_LIST[@]:n}" "${LEG_LIST[@]:0:n}"
}

host_load start
for leg in "${LEG_LIST[@]}"; do
    printf '{"kind": "rss", "phase": "idle", "leg": "%s", "rss_kib": %s}\n' \
        "$leg" "$(awk '/^VmRSS:/ {print $2}' "/proc/${LEG_PID[$leg]}/status")" >>"$RESULTS"
done

# --- 1. batches ------------------------------------------------------------------------------------
for batch in $(seq 1 "$BATCHES"); do
    read -r -a order <<<"$(rotated $((batch - 1)))"
    for rate in $RATES; do
        for leg in "${order[@]}"; do
            log "batch $batch/$BATCHES  keep-alive  $rate rps × $CONNECTIONS conn  $leg"
            load keepalive "$leg" "$batch" "$rate" "$CONNECTIONS"
        done
        # The next rate starts with the leg that came second, so no leg always leads.
        read -r -a order <<<"${order[*]:1} ${order[0]}"
    done
    if [[ $HANDSHAKE_RATE != 0 ]]; then
        for leg in "${order[@]}"; do
            log "batch $batch/$BATCHES  new connection per request  $HANDSHAKE_RATE rps  $leg"
            load handshake "$leg" "$batch" "$HANDSHAKE_RATE" "$HANDSHAKE_CONNECTIONS" \
                --connection-per-request
        done
    fi
    host_load "batch $batch"
done
for leg in "${LEG_LIST[@]}"; do
    printf '{"kind": "rss", "phase": "after", "leg": "%s", "rss_kib": %s}\n' \
        "$leg" "$(awk '/^VmRSS:/ {print $2}' "/proc/${LEG_PID[$leg]}/status")" >>"$RESULTS"
done
# Part 2 starts its own processes; end these first so they cannot take GATEWAY_CPU from them.
for leg in "${LEG_LIST[@]}"; do kill "${LEG_PID[$leg]}" 2>/dev/null || true; done
for leg in "${LEG_LIST[@]}"; do wait "${LEG_PID[$leg]}" 2>/dev/null || true; done

# --- 2. callgrind ------------------------------------------------------------------------------------
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

if [[ $CALLGRIND == 1 ]]; then
    read -r -a cg_legs <<<"$CG_LEGS"
    for leg in "${cg_legs[@]}"; do
        for n in "$CG_N1" "$CG_N2"; do
            dir=$WORK/cg-$leg-$n
            addr=127.0.0.1:$(free_port)
            leg_command "$leg" "$addr" "$dir"
            log "callgrind: $leg, $n requests"
            "${PIN_GATEWAY[@]}" valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
                "${CMD[@]}" >"$dir/proxy.out" 2>"$dir/proxy.err" &
            pid=$!
            CHILDREN+=("$pid")
            wait_for_port "$addr" "$pid" 1200 || { tail -20 "$dir/proxy.err" >&2; exit 1; }
            client_args=()
            if leg_tls "$leg"; then client_args=(--tls-ca "$CA"); fi
            if ! client=$("${PIN_LOAD[@]}" python3 "$SUMMARIZER" client "$addr" "$INFER_PATH" \
                "$WORK/body.json" "$n" "${client_args[@]}"); then
                log "callgrind $leg $n: not every answer was a 200: $client"
                exit 1
            fi
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 1200); do running "$pid" || break; sleep 0.1; done
            wait "$pid" 2>/dev/null || true
            ir=$(python3 "$SUMMARIZER" total "$dir/callgrind.out")
            log "callgrind: $leg, $n requests: $ir Ir"
            printf '{"kind": "callgrind", "leg": "%s", "n": %s, "ir": %s, "client": %s}\n' \
                "$leg" "$n" "$ir" "$client" >>"$RESULTS"
        done
    done
fi
host_load end

summarize summarize_tls.py
