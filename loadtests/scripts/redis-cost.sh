#!/usr/bin/env bash
# What Redis costs the gateway, one server against a Redis Cluster (issue 15), in one run:
# a feature-cache hit (one MGET per request) and a shared rate limit (one GCRA script per
# request), each through a gateway on standalone Redis and through one on a three-master
# cluster, in alternating rounds.
#
#   loadtests/scripts/redis-cost.sh
#   SKIP_BUILD=1 CARGO_TARGET_DIR=/tmp/cg-target BINARY_REV=abc1234 loadtests/scripts/redis-cost.sh
#
# Setup. Every Redis process (one standalone server; three cluster masters made with
# `redis-cli --cluster create`) and the sims run on LOAD_CPU; the gateway measured runs alone
# on GATEWAY_CPU with one worker, and only one gateway is under load at a time.
#   - feature: a cascade route whose stage 1 answers every row itself (so no stage-2 call)
#     and whose entity feature comes from the cache. `l1_capacity = 1` keeps the in-process
#     tier out of the way, so nearly every lookup is a Redis hit once the warm-up has cached
#     the ENTITIES Zipf-distributed keys (`x-entity`, cascadia-load --user-ids).
#   - limit: a plain route to a sim with `rate_limit = { shared = true }` per API key, far
#     above the offered rate (never limited): every request runs the GCRA script.
# Each run records the gateway's CPU µs per request and the client's latency (p50, p99).
#
# Environment (defaults in brackets):
#   ROUNDS [2]  RATE [2000]  CONNECTIONS [4]  WARMUP [5s]  DURATION [15s]  ENTITIES [1000]
#   GATEWAY_CPU [0]  LOAD_CPU [1]  RESULTS [loadtests/results/redis-cost-DATE.jsonl]
#   CARGO_TARGET_DIR [target]  SKIP_BUILD [0]  BINARY_REV (recorded instead of HEAD)
#
# Needs: redis-server and redis-cli, python3, curl, taskset.
set -euo pipefail
BENCH=redis-cost
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-2}
RATE=${RATE:-2000}
CONNECTIONS=${CONNECTIONS:-4}
WARMUP=${WARMUP:-5s}
DURATION=${DURATION:-15s}
ENTITIES=${ENTITIES:-1000}

for tool in redis-server redis-cli; do
    command -v "$tool" >/dev/null || { log "missing $tool (apt-get install redis-server)"; exit 1; }
done
build_binaries
setup_pinning
setup_workdir

# start_redis DIR PORT [ARG...]: a redis-server on LOAD_CPU, nothing saved to disk.
start_redis() {
    local dir=$1 port=$2
    shift 2
    mkdir -p "$dir"
    "${PIN_LOAD[@]}" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$dir" "$@" >"$dir/out" 2>&1 &
    CHILDREN+=("$!")
    for _ in $(seq 1 200); do
        redis-cli -p "$port" PING 2>/dev/null | grep -q PONG && return 0
        sleep 0.05
    done
    log "redis-server on $port did not start"; cat "$dir/out" >&2; exit 1
}

STANDALONE_PORT=$(free_port)
start_redis "$WORK/redis-standalone" "$STANDALONE_PORT"
# cluster_port: a free port whose cluster bus port (+10000) is free and valid too.
cluster_port() {
    python3 -c '
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    if port > 55535:
        continue
    bus = socket.socket()
    try:
        bus.bind(("127.0.0.1", port + 10000))
    except OSError:
        continue
    print(port)
    break
'
}
CLUSTER_PORTS=()
for i in 1 2 3; do
    port=$(cluster_port)
    CLUSTER_PORTS+=("$port")
    start_redis "$WORK/redis-cluster-$i" "$port" --cluster-enabled yes \
        --cluster-config-file nodes.conf --cluster-node-timeout 1000
done
cluster_addrs=()
for port in "${CLUSTER_PORTS[@]}"; do cluster_addrs+=("127.0.0.1:$port"); done
redis-cli --cluster create "${cluster_addrs[@]}" --cluster-replicas 0 --cluster-yes >"$WORK/cluster-create.out"
for _ in $(seq 1 200); do
    ok=0
    for port in "${CLUSTER_PORTS[@]}"; do
        redis-cli -p "$port" CLUSTER INFO | grep -q 'cluster_state:ok' && ok=$((ok + 1))
    done
    ((ok == 3)) && break
    sleep 0.05
done
((ok == 3)) || { log "the cluster did not become ready"; exit 1; }

start_sim ensemble "$WORK/ensemble.out" --region us-east --workers 1
start_sim store "$WORK/store.out" --region us-east --workers 1
start_sim plain "$WORK/plain.out" --region us-east --workers 1

# p = sigmoid(a + b - 30): far below accept_below for the features the store serves, so
# stage 1 answers every row.
python3 - "$WORK/screen.json" <<'PY'
import json, sys
json.dump({"name": "screen", "version": "1", "features": ["a", "b"], "coefficients": [1.0, 1.0],
           "intercept": -30.0, "classes": [0, 1]}, open(sys.argv[1], "w"))
PY
printf 'a\n0.5\n1.5\n2.5\n3.5\n' >"$WORK/rows.csv"

# gateway_config NAME REDIS_TABLE: both routes over one Redis.
gateway_config() {
    cat >"$WORK/gateway-$1.toml" <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

$2
response_timeout = "50ms"

[[backends]]
name = "ensemble"
region = "us-east"
endpoints = ["${SIM_ADDR[ensemble]}"]

[[backends]]
name = "feature-store"
region = "us-east"
endpoints = ["${SIM_ADDR[store]}"]

[[backends]]
name = "plain"
region = "us-east"
endpoints = ["${SIM_ADDR[plain]}"]

[[routes]]
name = "feature"
match = { model = "feature" }
backends = ["ensemble"]

[routes.cascade]
model = "screen.json"
input = "x"
accept_below = 0.05
reject_above = 0.95

[routes.cascade.entity]
key_header = "x-entity"
features = ["b"]
store = "feature-store"
ttl = "10m"
negative_ttl = "10m"
l1_capacity = 1

[[routes]]
name = "limit"
match = { model = "fraud" }
backends = ["plain"]
rate_limit = { per_second = 1000000, burst = 1000000, key_header = "x-api-key", shared = true }
TOML
}
gateway_config standalone "[gateway.redis]
url = \"redis://127.0.0.1:$STANDALONE_PORT\""
cluster_nodes=$(printf '"redis://%s", ' "${cluster_addrs[@]}")
gateway_config cluster "[gateway.redis]
cluster_nodes = [${cluster_nodes%, }]"

start_gateway standalone
start_gateway cluster
log "gateways: standalone pid ${GW_PID[standalone]}, cluster pid ${GW_PID[cluster]} (CPU $GATEWAY_CPU)"

write_meta --git-rev "${BINARY_REV:-}" ROUNDS RATE CONNECTIONS WARMUP DURATION ENTITIES GATEWAY_CPU LOAD_CPU \
    "REDIS_VERSION=$(redis-server --version | sed 's/^Redis server //')"

for round in $(seq 1 "$ROUNDS"); do
    order=(standalone cluster)
    if ((round % 2 == 0)); then order=(cluster standalone); fi
    for use in feature limit; do
        for redis in "${order[@]}"; do
            addr=${GW_ADDR[$redis]}
            log "round $round/$ROUNDS  $use on $redis"
            if [[ $use == feature ]]; then
                # run_load's fixed --oip-rows body does not fit a cascade's input.
                out=$("${PIN_LOAD[@]}" "$BIN/cascadia-load" --url "http://$addr/v2/models/feature/infer" \
                    --rate "$RATE" --connections "$CONNECTIONS" --warmup "$WARMUP" --duration "$DURATION" \
                    --workers 1 --pid "${GW_PID[$redis]}" --label "$use-$redis" --json \
                    --rows "$WORK/rows.csv" --input x --datatype FP64 \
                    --user-ids "$ENTITIES" --key-header x-entity)
            else
                out=$(run_load "http://$addr/v2/models/fraud/infer" "$RATE" "$CONNECTIONS" "${GW_PID[$redis]}" \
                    "$use-$redis" --user-ids "$ENTITIES" --key-header x-api-key)
            fi
            python3 -c '
import json, sys
r = json.loads(sys.argv[1])
r.update(kind="run", use=sys.argv[2], redis=sys.argv[3], round=int(sys.argv[4]))
print(json.dumps(r))
' "$out" "$use" "$redis" "$round" >>"$RESULTS"
        done
    done
done
# Where the feature lookups were answered (in-process, Redis, store), per gateway.
for redis in standalone cluster; do
    curl -s "http://${GW_ADMIN[$redis]}/metrics" | python3 -c '
import json, re, sys
tiers = {m.group(1): float(m.group(2)) for m in
         re.finditer(r"cascadia_feature_lookups_total\{route=\"feature\",tier=\"(\w+)\"\} (\S+)", sys.stdin.read())}
print(json.dumps({"kind": "lookups", "redis": sys.argv[1], "tiers": tiers}))
' "$redis" >>"$RESULTS"
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
runs = [r for r in lines if r.get("kind") == "run"]
print("| use | Redis | CPU µs / request (rounds) | p50 µs | p99 µs | achieved rps | errors |")
print("|---|---|---|---:|---:|---:|---:|")
for use in ("feature", "limit"):
    for redis in ("standalone", "cluster"):
        mine = [r for r in runs if r["use"] == use and r["redis"] == redis]
        if not mine:
            continue
        cpu = [r["processes"][0]["cpu_us_per_req"] for r in mine]
        p50 = statistics.median(r["latency_us"]["p50"] for r in mine)
        p99 = statistics.median(r["latency_us"]["p99"] for r in mine)
        rps = statistics.median(r["achieved_rps"] for r in mine)
        errors = sum(r["errors"]["status"] + r["errors"]["transport"] + r["errors"]["timeout"] for r in mine)
        print(f"| {use} | {redis} | {', '.join(f'{c:.1f}' for c in cpu)} | {p50:.0f} | {p99:.0f} | {rps:,.0f} | {errors} |")
for r in lines:
    if r.get("kind") == "lookups":
        print(f"feature lookups through {r['redis']}: {r['tiers']}")
PY
