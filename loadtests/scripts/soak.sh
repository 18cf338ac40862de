#!/usr/bin/env bash
# Soak (RELIABILITY.md #1): steady open-loop load for minutes, in WINDOWS back-to-back
# windows; after each, the gateway's RSS and open file descriptors are read. What must hold:
# p99 stable from window to window, RSS and fd count flat, zero errors.
#
#   loadtests/scripts/soak.sh            # 10 windows × 30 s at 1,000 rps (about 5 minutes)
#   QUICK=1 loadtests/scripts/soak.sh    # smoke test: 3 windows × 3 s
#
# Environment (defaults in brackets):
#   RATE [1000]  CONNECTIONS [16]  WINDOWS [10]  WINDOW [30s]  WARMUP [5s]
#   GATEWAY_CPU [0]  LOAD_CPU [1]  RESULTS [loadtests/results/soak-DATE.jsonl]
#   CARGO_TARGET_DIR [target]  SKIP_BUILD [0]
set -euo pipefail
BENCH=soak
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${QUICK:-0} == 1 ]]; then
    WINDOWS=${WINDOWS:-3}
    WINDOW=${WINDOW:-3s}
    WARMUP=${WARMUP:-1s}
fi
RATE=${RATE:-1000}
CONNECTIONS=${CONNECTIONS:-16}
WINDOWS=${WINDOWS:-10}
WINDOW=${WINDOW:-30s}
WARMUP=${WARMUP:-5s}
DURATION=$WINDOW  # run_load (lib.sh) measures DURATION per window

build_binaries
setup_pinning
setup_workdir

start_sim sim "$WORK/sim.out" --region us-east --workers 1 --p50-ms 1 --p99-ms 3
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
max_concurrency = 256
TOML
start_gateway main
pid=${GW_PID[main]}
log "gateway pid $pid on ${GW_ADDR[main]} (CPU $GATEWAY_CPU)"

write_meta RATE CONNECTIONS WINDOWS WINDOW WARMUP GATEWAY_CPU LOAD_CPU

# resources LABEL: one JSON line with the gateway's RSS (KiB) and open fds.
resources() {
    local rss fds
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
    printf '{"kind": "resources", "label": "%s", "rss_kib": %s, "fds": %s}\n' "$1" "$rss" "$fds"
}

resources before >>"$RESULTS"
url="http://${GW_ADDR[main]}/v2/models/fraud/infer"
for window in $(seq 1 "$WINDOWS"); do
    log "window $window/$WINDOWS  $RATE rps × $CONNECTIONS conn"
    # Only the first window warms up; the rest run back to back on a warm gateway.
    if ((window > 1)); then WARMUP=0s; fi
    run_load "$url" "$RATE" "$CONNECTIONS" "$pid" "window/$window" >>"$RESULTS"
    resources "window/$window" >>"$RESULTS"
done

summarize summarize_soak.py
