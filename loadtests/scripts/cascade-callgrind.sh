#!/usr/bin/env bash
# User-space instructions per locally answered cascade request, with and without the
# certified cascade's per-request work (issue 18): the PSI window a `[routes.cascade.drift]`
# route counts every row into (a mutex and one bin lookup per feature), against the same
# route without it. Callgrind counts are deterministic here, so one run of each suffices.
#
#   CASCADIA_BIN=/tmp/mb-target/release/cascadia BINARY_REV=bff3399 loadtests/scripts/cascade-callgrind.sh
#
# Method as in callgrind.sh: the gateway (--workers 1) under callgrind, one keep-alive
# connection, N sequential POSTs of one 1 x 32 FP32 row that stage 1 answers locally
# (summarize_callgrind.py client); Ir per request = (Ir(N2) - Ir(N1)) / (N2 - N1).
# Prints one line per variant; writes nothing else.
set -euo pipefail
BENCH=cascade-callgrind
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N1=${N1:-2000}
N2=${N2:-4000}
CASCADIA_BIN=${CASCADIA_BIN:-$ROOT/${CARGO_TARGET_DIR:-target}/release/cascadia}
setup_workdir

python3 - "$WORK" <<'PY'
import json, sys
out = sys.argv[1]
features = [f"f{i}" for i in range(32)]
edges = [float(e) for e in range(1, 10)]
json.dump({"name": "screen", "version": "1", "features": features,
           "coefficients": [0.0] * 32, "intercept": -20.0, "classes": [0, 1],
           "reference": {"rows": 1000, "edges": [edges] * 32, "shares": [[0.1] * 10] * 32}},
          open(f"{out}/screen.json", "w"))
row = [0.5 + (i % 10) for i in range(32)]
json.dump({"inputs": [{"name": "features", "shape": [1, 32], "datatype": "FP32", "data": row}]},
          open(f"{out}/body.json", "w"))
PY

config() {
    cat <<TOML
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "ensemble"
region = "us-east"
endpoints = ["127.0.0.1:$(free_port)"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
backends = ["ensemble"]

[routes.cascade]
model = "screen.json"
input = "features"
accept_below = 0.05
reject_above = 0.95
$1
TOML
}

# Ir of one gateway run serving $2 requests with config $1.
measure() {
    local cfg=$1 n=$2 out=$WORK/callgrind.out.$2 log=$WORK/gw.out
    valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$CASCADIA_BIN" run --workers 1 --config "$cfg" --log "warn,cascadia::access=off" \
        >"$log" 2>"$log.err" &
    local pid=$!
    CHILDREN+=("$pid")
    local addr
    # Under callgrind start-up is slow: wait_for_address allows 10 s, so try a few times.
    for _ in 1 2 3 4 5 6; do
        addr=$(wait_for_address "$log" "cascadia gateway listening on http://" "$pid" 2>/dev/null) && break
    done
    [[ -n ${addr:-} ]] || { cat "$log.err" >&2; exit 1; }
    python3 "$ROOT/loadtests/scripts/summarize_callgrind.py" client "$addr" /v2/models/fraud/infer "$WORK/body.json" "$n" >/dev/null
    kill -TERM "$pid"
    wait "$pid" || true
    python3 "$ROOT/loadtests/scripts/summarize_callgrind.py" total "$out"
}

for variant in plain drift; do
    case $variant in
        plain) extra="" ;;
        drift) extra=$'[routes.cascade.drift]\nwindow_rows = 2000\nslices = 4' ;;
    esac
    config "$extra" >"$WORK/$variant.toml"
    a=$(measure "$WORK/$variant.toml" "$N1")
    b=$(measure "$WORK/$variant.toml" "$N2")
    echo "$variant: $(( (b - a) / (N2 - N1) )) instructions per request (Ir $a at $N1, $b at $N2), ${BINARY_REV:-$(git -C "$ROOT" rev-parse --short HEAD)}"
done
