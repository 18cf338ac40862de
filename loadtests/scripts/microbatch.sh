#!/usr/bin/env bash
# Escalation micro-batching (issue 18), in one run: stage-2 calls per escalated row, p50/p99
# and the gateway's CPU µs per request on a cascade route with and without
# [routes.cascade.batch], at RATES, with SHARES of the rows escalated. The batched and the
# unbatched gateway alternate at every (rate, share) point, and the order flips each round.
#
#   loadtests/scripts/microbatch.sh
#   SKIP_BUILD=1 CARGO_TARGET_DIR=/tmp/mb-target loadtests/scripts/microbatch.sh
#   QUICK=1 loadtests/scripts/microbatch.sh         # smoke test: 1 round, 1 s warm-up, 2 s window
#
# Setup. Two gateways, identical but for [routes.cascade.batch] (MAX_ROWS, MAX_WAIT), each
# `--workers 1` on GATEWAY_CPU; only one is under load at a time. Each has its own stage-2
# cascadia-sim (lognormal STAGE2_P50_MS / STAGE2_P99_MS, so that concurrent escalations
# overlap) on LOAD_CPU, with the generator.
#
# Stage 1 is p1 = sigmoid(a) over features [a, b]; the band is accept_below 0.2,
# reject_above 0.8, so a row escalates when |a| <= ln 4. Every request carries one row of a
# rows file (cascadia-load --rows, --batch 1: request i sends row i mod ROWS_LEN): of ROWS_LEN
# rows, round(share × ROWS_LEN) have a = 0 (uncertain, escalated), the rest a = ±6 (answered
# locally), in a fixed pseudo-random order (seed 18). So the escalated share is exact over
# every ROWS_LEN consecutive requests, and which requests escalate is close to independent
# draws. ROWS_LEN matters at a low share: how often two escalations fall within max_wait of
# each other is what batching can use, and a short file fixes that by its one shuffle (the
# 200-row file of seed 18 happens to pair 60% of its 10% escalations within 2 requests, where
# independent draws pair about 30%). 10,000 rows is cascadia-load's cap on distinct bodies.
#
# Each "kind": "run" line is one `cascadia-load --json` report plus:
#   leg, rate, share, round    the point measured
#   stage2_calls     Δ /sim/stats "infer" of that gateway's stage-2 sim over the run
#   cascade          Δ of the gateway's /admin/cascade counters (first route's stats) over
#                    the run: requests, rows_escalated, batches, batched_requests,
#                    batch_retries, ...
#   loadavg          /proc/loadavg after the run
# Both deltas include the warm-up, so their ratio (calls per escalated row) is consistent;
# the CPU per request and the latencies are the generator's, over the window only.
#
# Environment (defaults in brackets):
#   ROUNDS [2]  RATES ["1000 5000"]  SHARES ["0.10 0.35"]  CONNECTIONS [64]
#   WARMUP [3s]  DURATION [15s]  MAX_ROWS [64]  MAX_WAIT [2ms]  ROWS_LEN [10000]
#   STAGE2_P50_MS [2]  STAGE2_P99_MS [8]
#   GATEWAY_CPU [0]  LOAD_CPU [1]  RESULTS [loadtests/results/microbatch-DATE.jsonl]
#   CARGO_TARGET_DIR [target]  SKIP_BUILD [0]  GIT_REV (recorded instead of HEAD)
#
# Needs: cargo, python3, curl, taskset.
set -euo pipefail
BENCH=microbatch
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${QUICK:-0} == 1 ]]; then
    ROUNDS=${ROUNDS:-1}
    WARMUP=${WARMUP:-1s}
    DURATION=${DURATION:-2s}
fi
ROUNDS=${ROUNDS:-2}
RATES=${RATES:-1000 5000}
SHARES=${SHARES:-0.10 0.35}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-3s}
DURATION=${DURATION:-15s}
MAX_ROWS=${MAX_ROWS:-64}
MAX_WAIT=${MAX_WAIT:-2ms}
ROWS_LEN=${ROWS_LEN:-10000}
STAGE2_P50_MS=${STAGE2_P50_MS:-2}
STAGE2_P99_MS=${STAGE2_P99_MS:-8}
read -r -a RATE_LIST <<<"$RATES"
read -r -a SHARE_LIST <<<"$SHARES"

build_binaries
setup_pinning
setup_workdir

LEGS=(unbatched batched)
for leg in "${LEGS[@]}"; do
    start_sim "$leg" "$WORK/sim-$leg.out" --region us-east --name "stage2-$leg" --workers 1 \
        --p50-ms "$STAGE2_P50_MS" --p99-ms "$STAGE2_P99_MS"
    log "stage-2 sim for $leg: pid ${SIM_PID[$leg]} on ${SIM_ADDR[$leg]} (CPU $LOAD_CPU)"
done

# Stage 1 and one rows file per share.
python3 - "$WORK" "$ROWS_LEN" "${SHARE_LIST[@]}" <<'PY'
import json, random, sys
work, n, shares = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
json.dump({"name": "screen", "version": "1", "features": ["a", "b"],
           "coefficients": [1.0, 0.0], "intercept": 0.0}, open(f"{work}/screen.json", "w"))
for share in shares:
    k = round(float(share) * n)
    rows = ["0,0"] * k + [("6,0" if i % 2 else "-6,0") for i in range(n - k)]
    random.Random(18).shuffle(rows)
    with open(f"{work}/rows-{share}.csv", "w") as f:
        f.write("a,b\n" + "\n".join(rows) + "\n")
PY

gateway_config() {
    local leg=$1
    cat <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "ensemble"
region = "us-east"
endpoints = ["${SIM_ADDR[$leg]}"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
backends = ["ensemble"]

[routes.cascade]
model = "screen.json"
input = "x"
accept_below = 0.2
reject_above = 0.8
TOML
    if [[ $leg == batched ]]; then
        printf '\n[routes.cascade.batch]\nmax_rows = %s\nmax_wait = "%s"\n' "$MAX_ROWS" "$MAX_WAIT"
    fi
}

for leg in "${LEGS[@]}"; do
    gateway_config "$leg" >"$WORK/gateway-$leg.toml"
    start_gateway "$leg"
    log "gateway $leg pid ${GW_PID[$leg]} on ${GW_ADDR[$leg]}, admin ${GW_ADMIN[$leg]} (CPU $GATEWAY_CPU)"
done

write_meta --bench microbatch --git-rev "${GIT_REV:-}" \
    --sims "unbatched=${SIM_ADDR[unbatched]} batched=${SIM_ADDR[batched]}" \
    ROUNDS RATES SHARES CONNECTIONS WARMUP DURATION MAX_ROWS MAX_WAIT ROWS_LEN \
    "STAGE2=lognormal p50 ${STAGE2_P50_MS} ms / p99 ${STAGE2_P99_MS} ms" GATEWAY_CPU LOAD_CPU \
    "QUICK=${QUICK:-0}" "LOADAVG_START=$(cat /proc/loadavg)"

# counters LEG: {"infer": stage-2 sim inference calls, "cascade": /admin/cascade stats}.
counters() {
    local leg=$1 sim gw
    sim=$(curl -sf --max-time 2 "http://${SIM_ADDR[$leg]}/sim/stats")
    gw=$(curl -sf --max-time 2 "http://${GW_ADMIN[$leg]}/admin/cascade")
    SIM=$sim GW=$gw python3 -c '
import json, os
r = json.loads(os.environ["GW"])["routes"]
print(json.dumps({"infer": json.loads(os.environ["SIM"])["infer"],
                  "cascade": r[0]["stats"] if r else {}}))'
}

# run_leg LEG RATE SHARE ROUND: one generator run, its report and the deltas to RESULTS.
run_leg() {
    local leg=$1 rate=$2 share=$3 round=$4 before after report
    log "round $round/$ROUNDS  $rate rps  share $share  $leg"
    before=$(counters "$leg")
    report=$("${PIN_LOAD[@]}" "$BIN/cascadia-load" \
        --url "http://${GW_ADDR[$leg]}/v2/models/fraud/infer" --rate "$rate" \
        --connections "$CONNECTIONS" --warmup "$WARMUP" --duration "$DURATION" --workers 1 \
        --rows "$WORK/rows-$share.csv" --batch 1 --input x --datatype FP64 \
        --pid "${GW_PID[$leg]}" --label "$leg/$rate/$share/$round" --json)
    after=$(counters "$leg")
    BEFORE=$before AFTER=$after REPORT=$report LEG=$leg RATE=$rate SHARE=$share ROUND=$round \
        python3 -c '
import json, os
before, after = json.loads(os.environ["BEFORE"]), json.loads(os.environ["AFTER"])
rec = json.loads(os.environ["REPORT"])
def delta(a, b):
    """a - b per numeric counter; nested objects (stage2_unusable) as "outer.inner"."""
    out = {}
    for k, v in a.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in delta(v, b.get(k) or {}).items()})
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v - b.get(k, 0)
    return out
rec.update(kind="run", leg=os.environ["LEG"], rate=int(os.environ["RATE"]),
           share=float(os.environ["SHARE"]), round=int(os.environ["ROUND"]),
           stage2_calls=after["infer"] - before["infer"],
           cascade=delta(after["cascade"], before["cascade"]),
           loadavg=open("/proc/loadavg").read().split()[:3])
print(json.dumps(rec))
' >>"$RESULTS"
}

for round in $(seq 1 "$ROUNDS"); do
    order=(unbatched batched)
    if ((round % 2 == 0)); then order=(batched unbatched); fi
    for rate in "${RATE_LIST[@]}"; do
        for share in "${SHARE_LIST[@]}"; do
            for leg in "${order[@]}"; do
                run_leg "$leg" "$rate" "$share" "$round"
            done
        done
    done
done

# The Prometheus batch counters at the end, as a cross-check of the admin deltas.
for leg in "${LEGS[@]}"; do
    curl -sf --max-time 2 "http://${GW_ADMIN[$leg]}/metrics" | LEG=$leg python3 -c '
import json, os, sys
lines = [l for l in sys.stdin.read().splitlines() if l.startswith("cascadia_cascade_")]
print(json.dumps({"kind": "metrics", "leg": os.environ["LEG"], "lines": lines}))
' >>"$RESULTS" || log "could not read /metrics of $leg"
done

summarize summarize_microbatch.py
