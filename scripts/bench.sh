#!/usr/bin/env bash
# Reproduces every table in BENCHMARKS.md: the criterion micro-benchmarks, then each load
# scenario under loadtests/scripts/, one after the other (never two at once: they pin the
# same CPUs). Each script writes loadtests/results/NAME-DATE.{jsonl,md} and prints its summary.
#
#   scripts/bench.sh                 # everything (about 2 hours on the 2-vCPU machine)
#   scripts/bench.sh peers shadow    # only these
#   QUICK=1 scripts/bench.sh         # a smoke run of each (a few minutes after the build)
#
# Names: micro passthrough peers balancing failover hedging cascade overload reload
#        redis-outage failover-drill canary shadow soak
# Environment: CARGO_TARGET_DIR [target], QUICK, and each script's own settings (see its
# header). The peers need nginx, HAProxy and cmake: loadtests/peers/install.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."

all=(micro passthrough peers balancing failover hedging cascade overload reload
    redis-outage failover-drill canary shadow soak)
names=("$@")
[[ ${#names[@]} -eq 0 ]] && names=("${all[@]}")

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -p cascadia -p cascadia-sim -p cascadia-loadtests
export SKIP_BUILD=1

for name in "${names[@]}"; do
    echo "=== $name ($(date -u +%H:%M:%S), load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    case $name in
        micro) scripts/bench-micro.sh ;;
        peers)
            loadtests/peers/install.sh
            loadtests/scripts/peers.sh
            ;;
        *)
            script=loadtests/scripts/$name.sh
            [[ -x $script ]] || { echo "unknown benchmark: $name" >&2; exit 2; }
            "$script"
            ;;
    esac
done
