#!/usr/bin/env bash
# Cascade benchmark: CPU per request and latency of the two-stage cascade, with stage-1
# features inline, from the in-process cache (L1), from Redis and from the feature store,
# and a mixed workload, against sending every request to stage 2. All legs alternate within
# each batch.
#
#   loadtests/scripts/cascade.sh                 # about 5 minutes: 3 batches × 7 legs × 13 s
#   QUICK=1 loadtests/scripts/cascade.sh         # smoke test: 1 batch, 1 s warm-up, 2 s window
#   GATEWAY_CPU=1 VARIANTS="local-inline local-l1" loadtests/scripts/cascade.sh   # same-CPU run
#
# Legs (VARIANTS picks a subset of the gateway legs; the order rotates from batch to batch):
#   direct         generator → a sim with no injected latency (host baseline, discard rule)
#   passthrough    plain route, no cascade: every request goes to the stage-2 sim
#   local-inline   cascade, 32 request features, every row confidently negative → local
#   local-l1       cascade, 32 request features + f32 from the feature cache, constant key
#                  (x-user-id: hot): after the first request every lookup is an L1 hit
#   local-redis    as local-l1 with [gateway.redis], l1_capacity = 1 and --user-ids USER_IDS;
#                  Redis is pre-filled with every key, so nearly every lookup is a Redis hit
#   local-miss     as local-l1 without Redis, l1_capacity = 1, ttl = negative_ttl = 1ms and
#                  --user-ids USER_IDS: every lookup goes to the feature store
#   mixed          cascade, 32 request features + f32 from the feature cache (L1, default
#                  capacity), x-user-id Zipf over 1..=MIXED_USER_IDS, score =
#                  sigmoid(2·f32 − 11): ~63% of requests local, ~37% escalated to stage 2
#
# Why mixed keys on the entity feature: cascadia-load builds its body once per run, so every
# request of a run carries the same 32 values and a model on the inline features answers
# either all of them locally or none. The store's f32 differs per user id, so it mixes. With
# the sim's hash values and Zipf(1.0) over 1..=1000 the traffic-weighted escalated share is
# 37.5%; the measured share is in the results (stage-2 sim requests, rows_escalated).
#
# Every gateway runs `--workers 1` on GATEWAY_CPU; the sims, redis-server and the generator
# share LOAD_CPU. The stage-2 sim plays a heavy ensemble (lognormal STAGE2_P50_MS /
# STAGE2_P99_MS); the feature store is a sim with no injected latency.
#
# Each "kind": "run" line is one `cascadia-load --json` report plus:
#   sim_requests     Δ /sim/stats requests of the stage-2 sim, the store and the baseline
#                    sim over the leg (warm-up included)
#   cascade          Δ of the gateway's /admin/cascade counters over the leg (warm-up included)
#   redis            Δ keyspace_hits / keyspace_misses of redis-server (local-redis only)
#
# Environment (defaults in brackets):
#   BATCHES [3]  RATE [1000]  CONNECTIONS [32]  WARMUP [3s]  DURATION [10s]
#   VARIANTS ["passthrough local-inline local-l1 local-redis local-miss mixed"]
#   BASELINE [1]      set 0 to skip the direct leg
#   USER_IDS [100000] Zipf key space of local-redis and local-miss
#   MIXED_USER_IDS [1000]   Zipf key space of mixed
#   GIT_REV [git rev-parse of this checkout]   set when the binaries come from another tree
#   STAGE2_P50_MS [5]  STAGE2_P99_MS [20]
#   GATEWAY_CPU [0]  LOAD_CPU [1]
#   RESULTS [loadtests/results/cascade-DATE.jsonl]   JSON lines; the summary goes to *.md
#   CARGO_TARGET_DIR [target]   SKIP_BUILD [0]   set 1 to use already-built binaries
#
# CONNECTIONS defaults to 32, not 4: the generator sends one request at a time per HTTP/1.1
# connection, and at 1000 rps against a 5 ms stage 2 four connections cannot keep up
# (Little's law needs about 6 in flight), so the pass-through leg would measure the
# generator's queue.
#
# Needs: cargo, python3, curl, redis-server + redis-cli (for local-redis), taskset.
set -euo pipefail
BENCH=cascade
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${QUICK:-0} == 1 ]]; then
    BATCHES=${BATCHES:-1}
    WARMUP=${WARMUP:-1s}
    DURATION=${DURATION:-2s}
fi
BATCHES=${BATCHES:-3}
RATE=${RATE:-1000}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-3s}
DURATION=${DURATION:-10s}
VARIANTS=${VARIANTS:-passthrough local-inline local-l1 local-redis local-miss mixed}
BASELINE=${BASELINE:-1}
USER_IDS=${USER_IDS:-100000}
MIXED_USER_IDS=${MIXED_USER_IDS:-1000}
STAGE2_P50_MS=${STAGE2_P50_MS:-5}
STAGE2_P99_MS=${STAGE2_P99_MS:-20}
read -r -a LEGS <<<"$VARIANTS"

for v in "${LEGS[@]}"; do
    case $v in
        passthrough | local-inline | local-l1 | local-redis | local-miss | mixed) ;;
        *) log "unknown variant '$v'"; exit 2 ;;
    esac
done
NEED_REDIS=0
[[ " $VARIANTS " == *" local-redis "* ]] && NEED_REDIS=1

build_binaries
if ((NEED_REDIS)); then
    for bin in redis-server redis-cli; do
        command -v $bin >/dev/null || { log "local-redis needs $bin"; exit 1; }
    done
fi

setup_pinning
setup_workdir

# Sims: stage 2 (heavy ensemble), the feature store, and the baseline (no latency).
SIM_NAMES=(stage2 store baseline)
for name in "${SIM_NAMES[@]}"; do
    extra=()
    if [[ $name == stage2 ]]; then extra=(--p50-ms "$STAGE2_P50_MS" --p99-ms "$STAGE2_P99_MS"); fi
    start_sim "$name" "$WORK/sim-$name.out" --region us-east --name "$name" --workers 1 "${extra[@]}"
    log "sim $name pid ${SIM_PID[$name]} on ${SIM_ADDR[$name]} (CPU $LOAD_CPU)"
done

# Redis, pre-filled with the store's value of f32 for every user id 1..=USER_IDS (the same
# FNV-1a value the sim's feature store answers), so local-redis hits from its first request.
REDIS_PORT=""
if ((NEED_REDIS)); then
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
    USER_IDS=$USER_IDS python3 -c '
import os, sys
def value(entity, feature):
    h = 0xcbf29ce484222325
    for b in entity.encode() + b"\0" + feature.encode():
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return (h % 1000) / 100.0
out = sys.stdout.buffer
def cmd(*args):
    out.write(b"*%d\r\n" % len(args))
    for a in args:
        a = a.encode()
        out.write(b"$%d\r\n%s\r\n" % (len(a), a))
for uid in range(1, int(os.environ["USER_IDS"]) + 1):
    v = value(str(uid), "f32")
    cmd("SET", f"cascadia:features:{uid}", f"[{v}]", "EX", "86400")
' | redis-cli -p "$REDIS_PORT" --pipe >"$WORK/redis-fill.out" 2>&1
    log "redis-server pid $REDIS_PID on 127.0.0.1:$REDIS_PORT, $(redis-cli -p "$REDIS_PORT" dbsize) keys (CPU $LOAD_CPU)"
fi

# Stage-1 models, next to the configs.
python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
def model(name, n, coef, intercept):
    with open(f"{work}/{name}.json", "w") as f:
        json.dump({"name": name, "version": "1", "features": [f"f{i}" for i in range(n)],
                   "coefficients": coef, "intercept": intercept}, f)
model("lr-local32", 32, [0.01] * 32, -6.0)           # every row < 0.1: local
model("lr-local33", 33, [0.01] * 33, -6.0)           # f32 from the store (0..10): still local
model("lr-mixed33", 33, [0.0] * 32 + [2.0], -11.0)   # |f32 - 5.5| > 1.1 local
PY

# gateway_config VARIANT: the TOML of one gateway.
gateway_config() {
    local v=$1
    cat <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
TOML
    if [[ $v == local-redis ]]; then
        printf '\n[gateway.redis]\nurl = "redis://127.0.0.1:%s"\n' "$REDIS_PORT"
    fi
    cat <<TOML

[[backends]]
name = "ensemble"
region = "us-east"
endpoints = ["${SIM_ADDR[stage2]}"]

[[backends]]
name = "feature-store"
region = "us-east"
endpoints = ["${SIM_ADDR[store]}"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
backends = ["ensemble"]
TOML
    local model="" entity=""
    case $v in
        passthrough) return 0 ;;
        local-inline) model=lr-local32 ;;
        mixed) model=lr-mixed33 entity='' ;;
        local-l1) model=lr-local33 entity='' ;;
        local-redis) model=lr-local33 entity='l1_capacity = 1' ;;
        local-miss) model=lr-local33 entity=$'l1_capacity = 1\nttl = "1ms"\nnegative_ttl = "1ms"' ;;
    esac
    cat <<TOML

[routes.cascade]
model = "$model.json"
input = "features"
accept_below = 0.1
reject_above = 0.9
TOML
    if [[ $model == *33 ]]; then
        cat <<TOML

[routes.cascade.entity]
key_header = "x-user-id"
features = ["f32"]
store = "feature-store"
$entity
TOML
    fi
}

for v in "${LEGS[@]}"; do
    gateway_config "$v" >"$WORK/gateway-$v.toml"
    start_gateway "$v"
    log "gateway $v pid ${GW_PID[$v]} on ${GW_ADDR[$v]}, admin ${GW_ADMIN[$v]} (CPU $GATEWAY_CPU)"
done

INFER_PATH=/v2/models/fraud/infer

# --- the machine, first line of the results ------------------------------------------------
write_meta --bench cascade --git-rev "${GIT_REV:-}" BATCHES RATE CONNECTIONS WARMUP DURATION \
    VARIANTS USER_IDS MIXED_USER_IDS \
    "STAGE2=lognormal p50 ${STAGE2_P50_MS} ms / p99 ${STAGE2_P99_MS} ms" GATEWAY_CPU LOAD_CPU \
    "QUICK=${QUICK:-0}" BASELINE

# counters LEG: one JSON object with every sim's /sim/stats requests, the gateway's
# /admin/cascade counters (first cascade route) and redis-server's keyspace hits/misses.
counters() {
    local leg=$1 out='{"sims": '
    out+=$(sim_counts)
    out+=', "cascade": '
    if [[ $leg != direct ]]; then
        out+=$(curl -sf --max-time 2 "http://${GW_ADMIN[$leg]}/admin/cascade" |
            python3 -c 'import json,sys; r=json.load(sys.stdin)["routes"]; print(json.dumps(r[0]["stats"] if r else {}))')
    else
        out+='{}'
    fi
    out+=', "redis": '
    if [[ -n $REDIS_PORT ]]; then
        out+=$(redis-cli -p "$REDIS_PORT" info stats | tr -d '\r' |
            python3 -c '
import json, sys
kv = dict(l.split(":", 1) for l in sys.stdin.read().splitlines() if ":" in l)
print(json.dumps({k: int(kv[k]) for k in ("keyspace_hits", "keyspace_misses")}))')
    else
        out+='{}'
    fi
    echo "$out}"
}

# leg LEG BATCH: one generator run, pinned with the sims; its report plus the counter
# deltas goes to RESULTS as one line.
leg() {
    local leg=$1 batch=$2 url pid before after report extra=()
    if [[ $leg == direct ]]; then
        url=http://${SIM_ADDR[baseline]}$INFER_PATH pid=${SIM_PID[baseline]}
    else
        url=http://${GW_ADDR[$leg]}$INFER_PATH pid=${GW_PID[$leg]}
    fi
    case $leg in
        local-l1) extra=(--header 'x-user-id: hot') ;;
        local-redis | local-miss) extra=(--user-ids "$USER_IDS") ;;
        mixed) extra=(--user-ids "$MIXED_USER_IDS") ;;
    esac
    log "batch $batch/$BATCHES  $RATE rps × $CONNECTIONS conn  $leg"
    before=$(counters "$leg")
    report=$(run_load "$url" "$RATE" "$CONNECTIONS" "$pid" "$leg/$batch" "${extra[@]}")
    after=$(counters "$leg")
    BEFORE=$before AFTER=$after REPORT=$report LEG=$leg BATCH=$batch python3 -c '
import json, os
before, after = json.loads(os.environ["BEFORE"]), json.loads(os.environ["AFTER"])
rec = json.loads(os.environ["REPORT"])
def delta(key):
    return {k: v - before[key].get(k, 0) for k, v in after[key].items()
            if isinstance(v, (int, float))}
rec.update(kind="run", leg=os.environ["LEG"], batch=int(os.environ["BATCH"]),
           sim_requests=delta("sims"), cascade=delta("cascade"), redis=delta("redis"))
print(json.dumps(rec))
' >>"$RESULTS"
}

for batch in $(seq 1 "$BATCHES"); do
    if [[ $BASELINE == 1 ]]; then leg direct "$batch"; fi
    # Rotate the order from batch to batch so drift does not always hit the same leg.
    n=${#LEGS[@]}
    for i in $(seq 0 $((n - 1))); do
        leg "${LEGS[$(((batch - 1 + i) % n))]}" "$batch"
    done
done

summarize summarize_cascade.py
