#!/usr/bin/env bash
# Hedging benchmark: one pool of two cascadia-sim endpoints with a heavy lognormal tail,
# behind two gateways that differ only in the route's `hedge` table (none vs hedged). The
# gateways are alternated in every batch.
#
#   loadtests/scripts/hedging.sh            # full run: 3 batches × 3 legs × (3 s warm-up + 10 s)
#   QUICK=1 loadtests/scripts/hedging.sh    # smoke test: 1 batch, 1 s warm-up, 2 s windows
#
# Each batch runs, at RATE over CONNECTIONS connections:
#   direct   straight to sim-a: the host baseline for the discard rule (and what one sim's
#            tail looks like with no gateway)
#   plain    through the gateway whose route has no hedge
#   hedged   through the gateway whose route has `hedge = HEDGE`
# The order of plain and hedged swaps from batch to batch. For every leg the script records
# the generator's report (p50/p90/p99, errors, gateway CPU µs/request) plus each sim's
# request count over the leg (`GET /sim/stats` `requests`, warm-up included). From those,
# "upstream attempts per request" = sims' requests ÷ requests sent (warm-up included): 1.00
# means no hedges (or retries) reached a sim; 1.10 means 10% extra upstream attempts.
# (The gateway also sets `x-cascadia-attempts` on each response, but cascadia-load does not
# record response headers, so the per-response count is not available here.)
#
# Environment (defaults in brackets):
#   BATCHES [3]  RATE [300]  CONNECTIONS [4]  WARMUP [3s]  DURATION [10s]
#   SIM_P50_MS [2]  SIM_P99_MS [40]     lognormal latency of both sims
#   HEDGE ['{ percentile = 90, floor = "3ms", cap = "50ms", budget_percent = 20 }']
#   TIMEOUT [2s]   the backend's per-attempt timeout
#   BASELINE [1]   set 0 to skip the direct leg
#   GATEWAY_CPU [0]  LOAD_CPU [1]   cores for the gateways, and for the sims + generator
#   RESULTS [loadtests/results/hedging-DATE.jsonl]   JSON lines; the summary goes to *.md
#   CARGO_TARGET_DIR [target]   SKIP_BUILD [0]   set 1 to use already-built binaries
#
# The sim sleeps on tokio's millisecond timer, so keep SIM_*_MS in whole milliseconds.
#
# Needs: cargo, python3, curl, taskset (util-linux) and at least 2 CPUs for pinning.
set -euo pipefail
BENCH=hedging
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${QUICK:-0} == 1 ]]; then
    BATCHES=${BATCHES:-1}
    WARMUP=${WARMUP:-1s}
    DURATION=${DURATION:-2s}
fi
BATCHES=${BATCHES:-3}
RATE=${RATE:-300}
CONNECTIONS=${CONNECTIONS:-4}
WARMUP=${WARMUP:-3s}
DURATION=${DURATION:-10s}
SIM_P50_MS=${SIM_P50_MS:-2}
SIM_P99_MS=${SIM_P99_MS:-40}
HEDGE=${HEDGE:-'{ percentile = 90, floor = "3ms", cap = "50ms", budget_percent = 20 }'}
TIMEOUT=${TIMEOUT:-2s}
BASELINE=${BASELINE:-1}
GATEWAYS=(plain hedged)

build_binaries
setup_pinning
setup_workdir

# The two sims: identical heavy-tailed latency, same region.
SIM_NAMES=(sim-a sim-b)
for name in "${SIM_NAMES[@]}"; do
    start_sim "$name" "$WORK/$name.out" --region us-east --name "$name" \
        --p50-ms "$SIM_P50_MS" --p99-ms "$SIM_P99_MS" --workers 1
    log "$name pid ${SIM_PID[$name]} on ${SIM_ADDR[$name]} (p50 ${SIM_P50_MS} ms, p99 ${SIM_P99_MS} ms, CPU $LOAD_CPU)"
done

# Two gateways, identical configs apart from the route's `hedge`, both on GATEWAY_CPU.
# Only the one under load does any work; the other sits idle.
for gw in "${GATEWAYS[@]}"; do
    if [[ $gw == hedged ]]; then hedge_line="hedge = $HEDGE"; else hedge_line=""; fi
    cat >"$WORK/gateway-$gw.toml" <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "fraud-pool"
region = "us-east"
timeout = "$TIMEOUT"
endpoints = ["${SIM_ADDR[sim-a]}", "${SIM_ADDR[sim-b]}"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
backends = ["fraud-pool"]
$hedge_line
TOML
    start_gateway "$gw"
    log "gateway $gw pid ${GW_PID[$gw]} on ${GW_ADDR[$gw]}, admin ${GW_ADMIN[$gw]} (CPU $GATEWAY_CPU)"
done

INFER_PATH=/v2/models/fraud/infer

# --- the machine, first line of the results ------------------------------------------------
write_meta --bench hedging --sims "sim-a=${SIM_ADDR[sim-a]} sim-b=${SIM_ADDR[sim-b]}" \
    BATCHES RATE CONNECTIONS WARMUP DURATION "SIM=p50 ${SIM_P50_MS} ms / p99 ${SIM_P99_MS} ms" \
    HEDGE TIMEOUT GATEWAY_CPU LOAD_CPU "QUICK=${QUICK:-0}"

# leg LEG BATCH: one generator run, pinned with the sims; its report plus the sims' request
# counts goes to RESULTS as one line.
leg() {
    local leg=$1 batch=$2 url pid before after report
    if [[ $leg == direct ]]; then
        url=http://${SIM_ADDR[sim-a]}$INFER_PATH pid=${SIM_PID[sim-a]}
    else
        url=http://${GW_ADDR[$leg]}$INFER_PATH pid=${GW_PID[$leg]}
    fi
    log "batch $batch/$BATCHES  $RATE rps × $CONNECTIONS conn  $leg"
    before=$(sim_counts)
    report=$(run_load "$url" "$RATE" "$CONNECTIONS" "$pid" "$leg/$batch")
    after=$(sim_counts)
    BEFORE=$before AFTER=$after REPORT=$report LEG=$leg BATCH=$batch python3 -c '
import json, os
before, after = json.loads(os.environ["BEFORE"]), json.loads(os.environ["AFTER"])
rec = json.loads(os.environ["REPORT"])
delta = {k: after[k] - before[k] for k in after}
sent_total = round(rec["target_rps"] * (rec["warmup_s"] + rec["duration_s"]))
rec.update(kind="run", leg=os.environ["LEG"], batch=int(os.environ["BATCH"]),
           sim_requests=delta, sent_total=sent_total,
           upstream_per_request=(sum(delta.values()) / sent_total if sent_total else None))
print(json.dumps(rec))
' >>"$RESULTS"
}

for batch in $(seq 1 "$BATCHES"); do
    if [[ $BASELINE == 1 ]]; then leg direct "$batch"; fi
    # Swap the order every batch: odd = plain, hedged; even = hedged, plain.
    for i in 0 1; do
        leg "${GATEWAYS[$(((batch - 1 + i) % 2))]}" "$batch"
    done
done

# The gateways' own view of the pool (EWMA, attempts, failures) at the end.
record_admin_backends "${GATEWAYS[@]}"

summarize summarize_hedging.py
