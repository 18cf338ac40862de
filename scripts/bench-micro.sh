#!/usr/bin/env bash
# Runs the criterion micro-benchmarks (issue 7), each against its baseline in the same run:
#   cascadia-cascade  stage1     LogisticModel::score       vs inline dot product + sigmoid
#   cascadia-cascade  extract    OIP JSON/gRPC → rows       vs serde_json Value parse / prost decode
#   cascadia          routing    RouteTable match           vs HashMap<String, usize> lookup
#   cascadia-backends balancer   p2c-ewma / least-request   vs round-robin pick
#   cascadia-config   config     parse + validate           vs toml::from_str::<toml::Value>
# Short settings for a 2-vCPU shared machine: compare the ratios within one bench, not the
# absolute times across runs (see /work/shared/BENCHMARKING.md).
#
# Usage: scripts/bench-micro.sh [BENCH...]   (default: all five; e.g. `scripts/bench-micro.sh stage1`)
# Env:   CARGO_TARGET_DIR (default /work/target-bench), CRITERION_ARGS to override the settings.
# Output: criterion's report on stdout; estimates in $CARGO_TARGET_DIR/criterion/.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-bench}"
read -r -a settings <<<"${CRITERION_ARGS:---warm-up-time 1 --measurement-time 3 --noplot}"

declare -A crate_of=(
  [stage1]=cascadia-cascade
  [extract]=cascadia-cascade
  [routing]=cascadia
  [balancer]=cascadia-backends
  [config]=cascadia-config
)
benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
  benches=(stage1 extract routing balancer config)
fi

echo "== machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $(rustc --version)"
for bench in "${benches[@]}"; do
  crate="${crate_of[$bench]:-}"
  if [ -z "$crate" ]; then
    echo "unknown bench: $bench (one of: ${!crate_of[*]})" >&2
    exit 2
  fi
  echo "== cargo bench -p $crate --bench $bench -- ${settings[*]}"
  cargo bench -p "$crate" --bench "$bench" -- "${settings[@]}"
done

# The medians and each variant's ratio to its group's baseline (the id starting "baseline"),
# from criterion's estimates of the benches just run.
python3 - "$CARGO_TARGET_DIR/criterion" "${benches[@]}" <<'PY'
import json, pathlib, sys
root, wanted = pathlib.Path(sys.argv[1]), sys.argv[2:]
prefix = {"stage1": "stage1/", "extract": "extract/", "routing": "route/",
          "balancer": "pick/", "config": "config/"}
groups = {}
for meta in sorted(root.glob("**/new/benchmark.json")):
    b = json.loads(meta.read_text())
    if not any(b["group_id"].startswith(prefix[w]) for w in wanted):
        continue
    est = json.loads((meta.parent / "estimates.json").read_text())
    name = b["function_id"] + (f"/{b['value_str']}" if b.get("value_str") else "")
    groups.setdefault(b["group_id"], []).append((name, est["median"]["point_estimate"]))
def fmt(ns):
    return f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.1f} ns"
for group, rows in groups.items():
    base = next((t for n, t in rows if n.startswith("baseline")), None)
    print(f"\n{group}")
    for name, t in sorted(rows, key=lambda r: (not r[0].startswith("baseline"), r[0])):
        ratio = f"{t / base:.2f}×" if base else "-"
        print(f"  {name:<45} {fmt(t):>12}  {ratio:>7}")
PY
