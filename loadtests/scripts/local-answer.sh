#!/usr/bin/env bash
# A request answered by the proxy itself (issue 13): Cascadia's cascade scoring a row with its
# stage-1 model and answering it locally, beside nginx answering `return 200` with a fixed
# OIP JSON body. Both at saturation, pinned alone on GATEWAY_CPU with one worker, the same
# open-loop generator on LOAD_CPU, in alternating rounds of one run.
#
#   loadtests/scripts/local-answer.sh
#   SKIP_BUILD=1 CARGO_TARGET_DIR=/tmp/cg-target BINARY_REV=abc1234 loadtests/scripts/local-answer.sh
#
# Neither has an upstream. Cascadia's route `fraud` is a cascade whose model (32 features,
# all weights 0, intercept -20: p = 2e-9 for every row) is under `accept_below` for every
# request, so stage 2 (a backend on a port nobody listens on) is never called; a check
# before the runs asserts `x-cascadia-stage: local`. The request is cascadia-load's
# `--oip-rows 1` body (one FP32 row of 32 features), the same for both.
#
# Each run records the process's CPU µs per request (cascadia-load --pid), achieved rate and
# latency. Output: RESULTS (JSON lines: a meta line, then one line per run with "leg" and
# "round") and a summary table on stdout.
#
# Environment (defaults in brackets):
#   ROUNDS [3]  RATE [200000]  CONNECTIONS [32]  WARMUP [3s]  DURATION [15s]
#   GATEWAY_CPU [0]  LOAD_CPU [1]  RESULTS [loadtests/results/local-answer-DATE.jsonl]
#   CARGO_TARGET_DIR [target]  SKIP_BUILD [0]  BINARY_REV (recorded instead of HEAD)
#
# Needs: nginx, python3, curl, taskset.
set -euo pipefail
BENCH=local-answer
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-3}
RATE=${RATE:-200000}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-3s}
DURATION=${DURATION:-15s}

command -v nginx >/dev/null || { log "missing nginx: run loadtests/peers/install.sh"; exit 1; }
build_binaries
setup_pinning
setup_workdir

# What nginx answers: an OIP answer of the same shape as Cascadia's.
ANSWER='{"model_name":"fraud","outputs":[{"name":"probability","shape":[1,1],"datatype":"FP64","data":[2.0611536181902037e-9]}]}'

# --- nginx `return 200` ------------------------------------------------------------------------
NGINX_ADDR=127.0.0.1:$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<NGINX
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 4096;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4000; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/client_body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    tcp_nodelay on;
    server {
        listen $NGINX_ADDR;
        location / {
            default_type application/json;
            return 200 '$ANSWER';
        }
    }
}
NGINX
"${PIN_GATEWAY[@]}" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" \
    >"$WORK/nginx.out" 2>"$WORK/nginx.out.err" &
NGINX_PID=$!
CHILDREN+=("$NGINX_PID")

# --- Cascadia, answering from stage 1 ----------------------------------------------------------
python3 - "$WORK/screen.json" <<'PY'
import json, sys
json.dump({"name": "screen", "version": "1", "features": [f"f{i}" for i in range(32)],
           "coefficients": [0.0] * 32, "intercept": -20.0, "classes": [0, 1]},
          open(sys.argv[1], "w"))
PY
UNUSED=127.0.0.1:$(free_port)
cat >"$WORK/gateway-main.toml" <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "ensemble"
region = "us-east"
endpoints = ["$UNUSED"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
backends = ["ensemble"]

[routes.cascade]
model = "screen.json"
input = "features"
accept_below = 0.05
reject_above = 0.95
TOML
start_gateway main
CASCADIA_PID=${GW_PID[main]}
CASCADIA_ADDR=${GW_ADDR[main]}
for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://$NGINX_ADDR/" && break
    sleep 0.05
done

BODY='{"inputs":[{"name":"features","shape":[1,32],"datatype":"FP32","data":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31]}]}'
stage=$(curl -s -D - -o "$WORK/check.body" -X POST -H 'content-type: application/json' \
    --data "$BODY" "http://$CASCADIA_ADDR/v2/models/fraud/infer" | tr -d '\r' |
    sed -n 's/^x-cascadia-stage: //Ip')
[[ $stage == local ]] || { log "cascadia did not answer locally (stage '$stage'): $(cat "$WORK/check.body")"; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST --data "$BODY" "http://$NGINX_ADDR/v2/models/fraud/infer")
[[ $code == 200 ]] || { log "nginx answered $code"; exit 1; }

write_meta --bench local-answer --git-rev "${BINARY_REV:-}" RATE CONNECTIONS WARMUP DURATION ROUNDS \
    "NGINX_VERSION=$(nginx -v 2>&1 | sed 's/^nginx version: //')"
URL_PATH=/v2/models/fraud/infer
for round in $(seq 1 "$ROUNDS"); do
    legs=(cascadia nginx)
    if ((round % 2 == 0)); then legs=(nginx cascadia); fi
    for leg in "${legs[@]}"; do
        if [[ $leg == cascadia ]]; then addr=$CASCADIA_ADDR pid=$CASCADIA_PID; else addr=$NGINX_ADDR pid=$NGINX_PID; fi
        log "round $round/$ROUNDS  $leg  $RATE rps × $CONNECTIONS conn"
        run_load "http://$addr$URL_PATH" "$RATE" "$CONNECTIONS" "$pid" "$leg" |
            python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
r.update(kind="run", leg=sys.argv[1], round=int(sys.argv[2]))
print(json.dumps(r))
' "$leg" "$round" >>"$RESULTS"
    done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if '"kind": "run"' in l]
def cpu(r):
    return r["processes"][0]["cpu_us_per_req"]
def share(r):
    return r["processes"][0]["cpu_percent"]
print("| leg | CPU µs / request (median of rounds) | rounds | achieved rps (median) | CPU % of one core (median) | errors |")
print("|---|---:|---|---:|---:|---:|")
for leg in ("cascadia", "nginx"):
    mine = [r for r in runs if r["leg"] == leg]
    cpus = [cpu(r) for r in mine]
    rps = [r["achieved_rps"] for r in mine]
    # The requests still queued when the window closed ("unfinished") are
    # the open loop's backlog at saturation, not failures.
    errors = sum(r["errors"]["status"] + r["errors"]["transport"] + r["errors"]["timeout"] for r in mine)
    shares = statistics.median(share(r) for r in mine)
    print(f"| {leg} | {statistics.median(cpus):.2f} | {', '.join(f'{c:.2f}' for c in cpus)} | {statistics.median(rps):,.0f} | {shares:.0f} | {errors} |")
PY
