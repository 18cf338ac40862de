# Shared parts of the benchmark scripts (passthrough, balancing, failover, hedging, cascade).
# Sourced, not run: set BENCH to the script's name first, e.g.
#
#   set -euo pipefail
#   BENCH=passthrough
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# On sourcing: ROOT is the checkout and the working directory; GATEWAY_CPU [0], LOAD_CPU [1],
# RESULTS [loadtests/results/BENCH-DATE.jsonl], TARGET_DIR (CARGO_TARGET_DIR [target]) and
# BIN get their defaults; SIM_PID/SIM_ADDR and GW_PID/GW_ADDR/GW_ADMIN are empty associative
# arrays filled by start_sim and start_gateway. Then the script calls build_binaries,
# setup_pinning and setup_workdir, in that order.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

GATEWAY_CPU=${GATEWAY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
RESULTS=${RESULTS:-loadtests/results/$BENCH-$(date +%Y%m%d-%H%M%S).jsonl}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release
declare -A SIM_PID=() SIM_ADDR=() GW_PID=() GW_ADDR=() GW_ADMIN=()

log() { echo "$BENCH: $*" >&2; }

# build_binaries: builds the release binaries unless SKIP_BUILD=1, then checks they exist.
build_binaries() {
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        log "building release binaries into $BIN"
        cargo build --release -p cascadia -p cascadia-sim -p cascadia-loadtests
    fi
    local bin
    for bin in cascadia cascadia-sim cascadia-load; do
        [[ -x $BIN/$bin ]] || { log "missing $BIN/$bin"; exit 1; }
    done
}

# setup_pinning: PIN_GATEWAY and PIN_LOAD, command prefixes for GATEWAY_CPU and LOAD_CPU.
# Command prefixes, not functions: `taskset` execs the command, so `$!` after
# `"${PIN_LOAD[@]}" cmd &` is the pinned process itself (a function would put a subshell in
# between, and `--pid` and the cleanup would point at the subshell).
setup_pinning() {
    if command -v taskset >/dev/null && (($(nproc) >= 2)); then
        PIN_GATEWAY=(taskset -c "$GATEWAY_CPU")
        PIN_LOAD=(taskset -c "$LOAD_CPU")
    else
        log "WARNING: taskset missing or fewer than 2 CPUs: running unpinned"
        PIN_GATEWAY=()
        PIN_LOAD=()
    fi
}

# setup_workdir: WORK, a fresh temporary directory, and CHILDREN, the processes to end; on
# exit every child is killed and WORK removed.
setup_workdir() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/cascadia-$BENCH.XXXXXX")
    CHILDREN=()
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# stop_children: ends every process started so far.
stop_children() {
    local pid
    for pid in "${CHILDREN[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${CHILDREN[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    CHILDREN=()
}

cleanup() {
    stop_children
    rm -rf "$WORK"
}

# wait_for_address FILE PREFIX PID: polls FILE until a line starts with PREFIX, prints the
# rest of that line. Fails if PID exits first or after 10 s.
wait_for_address() {
    local file=$1 prefix=$2 pid=$3 line
    for _ in $(seq 1 200); do
        if line=$(grep -m1 "^$prefix" "$file" 2>/dev/null); then
            echo "${line#"$prefix"}"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "process $pid exited before announcing its address; its stderr:"
            cat "$file.err" >&2 || true
            return 1
        fi
        sleep 0.05
    done
    log "timed out waiting for '$prefix' in $file"
    return 1
}

# start_sim NAME OUT [ARG...]: starts cascadia-sim on LOAD_CPU (model fraud, version 1, a
# free port, then ARGs), stdout to OUT and stderr to OUT.err; sets SIM_PID[NAME] and
# SIM_ADDR[NAME] once it listens.
start_sim() {
    local name=$1 out=$2
    shift 2
    "${PIN_LOAD[@]}" "$BIN/cascadia-sim" --listen 127.0.0.1:0 --model fraud --model-version 1 "$@" \
        >"$out" 2>"$out.err" &
    SIM_PID[$name]=$!
    CHILDREN+=("$!")
    SIM_ADDR[$name]=$(wait_for_address "$out" "cascadia-sim listening on http://" "${SIM_PID[$name]}")
}

# start_gateway NAME: starts `cascadia run --config $WORK/gateway-NAME.toml --workers 1` on
# GATEWAY_CPU, output in $WORK/gateway-NAME.out(.err); sets GW_PID[NAME], GW_ADDR[NAME]
# and GW_ADMIN[NAME] once it listens.
start_gateway() {
    local name=$1 out=$WORK/gateway-$1.out
    # The access log is off, as nginx's is in the peer configs: the
    # benchmarks measure proxying, not log writing (GATEWAY_LOG overrides).
    "${PIN_GATEWAY[@]}" "$BIN/cascadia" run --config "$WORK/gateway-$name.toml" --workers 1 \
        --log "${GATEWAY_LOG:-info,cascadia::access=off}" >"$out" 2>"$out.err" &
    GW_PID[$name]=$!
    CHILDREN+=("$!")
    GW_ADDR[$name]=$(wait_for_address "$out" "cascadia gateway listening on http://" "${GW_PID[$name]}")
    GW_ADMIN[$name]=$(wait_for_address "$out" "cascadia admin listening on http://" "${GW_PID[$name]}")
}

# git_revision: the short HEAD, "+dirty" when the tree has changes, "no-commit" outside git.
git_revision() {
    local rev
    rev=$(git rev-parse --short HEAD 2>/dev/null || echo "no-commit")
    if [[ -n $(git status --porcelain 2>/dev/null | head -1) ]]; then rev="$rev+dirty"; fi
    echo "$rev"
}

# write_meta [--bench NAME] [--sims "NAME=ADDR ..."] [--git-rev REV] KEY...: creates RESULTS
# with its first line, {"kind": "meta", "bench": NAME, "sims": {...}, "nproc", "date",
# "cpu_model", "git_rev", "kernel", then every KEY lower-cased}; "bench" and "sims" only when
# given, git_rev from git_revision unless REV is non-empty. KEY is NAME (the value of $NAME)
# or NAME=VALUE; every value is a string.
write_meta() {
    local bench="" sims="" rev="" arg cpu_model
    while [[ $# -gt 0 && $1 == --* ]]; do
        case $1 in
            --bench) bench=$2 ;;
            --sims) sims=$2 ;;
            --git-rev) rev=$2 ;;
            *) log "write_meta: unknown option $1"; return 2 ;;
        esac
        shift 2
    done
    mkdir -p "$(dirname "$RESULTS")"
    cpu_model=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
    if [[ -z $rev ]]; then rev=$(git_revision); fi
    local keys=(NPROC DATE CPU_MODEL GIT_REV KERNEL)
    local vars=("NPROC=$(nproc)" "DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)" "CPU_MODEL=$cpu_model"
        "GIT_REV=$rev" "KERNEL=$(uname -r)")
    for arg in "$@"; do
        if [[ $arg == *=* ]]; then
            keys+=("${arg%%=*}")
            vars+=("$arg")
        else
            keys+=("$arg")
            vars+=("$arg=${!arg}")
        fi
    done
    env "${vars[@]}" META_BENCH="$bench" META_SIMS="$sims" python3 -c '
import json, os, sys
rec = {"kind": "meta"}
if os.environ["META_BENCH"]:
    rec["bench"] = os.environ["META_BENCH"]
if os.environ["META_SIMS"]:
    rec["sims"] = dict(kv.split("=", 1) for kv in os.environ["META_SIMS"].split())
rec.update((k.lower(), os.environ[k]) for k in sys.argv[1:])
print(json.dumps(rec))
' "${keys[@]}" >"$RESULTS"
    log "results: $RESULTS"
}

# run_load URL RATE CONNS PID LABEL [ARG...]: one cascadia-load run on LOAD_CPU with WARMUP
# and DURATION, measuring the CPU of PID; prints its JSON report.
run_load() {
    local url=$1 rate=$2 conns=$3 pid=$4 label=$5
    shift 5
    "${PIN_LOAD[@]}" "$BIN/cascadia-load" --url "$url" --rate "$rate" --connections "$conns" \
        --warmup "$WARMUP" --duration "$DURATION" --oip-rows 1 --workers 1 \
        --pid "$pid" --label "$label" --json "$@"
}

# sim_counts: one JSON object {name: requests} from the /sim/stats of every sim in SIM_NAMES.
sim_counts() {
    local name sep="" out="{"
    for name in "${SIM_NAMES[@]}"; do
        local n
        n=$(curl -sf --max-time 2 "http://${SIM_ADDR[$name]}/sim/stats" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
        out+="$sep\"$name\": $n"
        sep=", "
    done
    echo "$out}"
}

# record_admin_backends NAME...: appends each gateway's /admin/backends to RESULTS as
# {"kind": "admin", "leg": NAME, ...}.
record_admin_backends() {
    local gw
    for gw in "$@"; do
        curl -sf --max-time 2 "http://${GW_ADMIN[$gw]}/admin/backends" |
            GW=$gw python3 -c '
import json, os, sys
print(json.dumps({"kind": "admin", "leg": os.environ["GW"], **json.load(sys.stdin)}))
' >>"$RESULTS" || log "could not read /admin/backends of $gw"
    done
}

# summarize SCRIPT: SCRIPT (in loadtests/scripts) on RESULTS, to stdout and RESULTS's .md.
summarize() {
    SUMMARY=${RESULTS%.jsonl}.md
    python3 "$ROOT/loadtests/scripts/$1" "$RESULTS" | tee "$SUMMARY"
    log "summary: $SUMMARY"
}

# --- scenario scripts (overload, reload, redis-outage, failover-drill, canary) ---------------

# start_metrics_poller ADMIN PID OUT: samples the gateway's /metrics and PID's RSS and CPU
# every POLL_MS [100] ms on LOAD_CPU (summarize_scenarios.py poll), JSON lines to OUT; sets
# POLLER_PID and adds it to CHILDREN.
start_metrics_poller() {
    "${PIN_LOAD[@]}" python3 "$ROOT/loadtests/scripts/summarize_scenarios.py" poll "$1" \
        "${POLL_MS:-100}" "$2" >"$3" &
    POLLER_PID=$!
    CHILDREN+=("$POLLER_PID")
}

# run_steps URL RATES CONNS PID LABEL [ARG...]: one cascadia-load --rate-steps RATES run
# (STEP_DURATION each, after WARMUP) on LOAD_CPU, measuring PID, with BUCKET buckets and
# the plot ${RESULTS%.jsonl}.svg; appends every step report to RESULTS as "kind": "step".
run_steps() {
    local url=$1 rates=$2 conns=$3 pid=$4 label=$5
    shift 5
    "${PIN_LOAD[@]}" "$BIN/cascadia-load" --url "$url" --rate-steps "$rates" \
        --step-duration "$STEP_DURATION" --connections "$conns" --warmup "$WARMUP" \
        --oip-rows 1 --workers 1 --pid "$pid" --label "$label" --bucket "${BUCKET:-100ms}" \
        --plot "${RESULTS%.jsonl}.svg" --quiet --json "$@" |
        python3 -c '
import json, sys
for line in sys.stdin:
    if line.strip():
        print(json.dumps({"kind": "step", **json.loads(line)}))
' >>"$RESULTS"
}

# free_port: a TCP port on 127.0.0.1 that was free a moment ago (nginx, HAProxy, pingora and
# valgrind-run processes cannot report a port the kernel picked, so scripts pick one).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for_port ADDR PID [TRIES]: polls until ADDR accepts a connection (every 0.1 s, TRIES
# [100] times, so 10 s); fails if PID exits first.
wait_for_port() {
    local addr=$1 pid=$2 tries=${3:-100}
    for _ in $(seq 1 "$tries"); do
        if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "process $pid exited before listening on $addr"
            return 1
        fi
        sleep 0.1
    done
    log "timed out waiting for $addr"
    return 1
}
