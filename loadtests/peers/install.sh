#!/usr/bin/env bash
# Installs what loadtests/scripts/peers.sh needs beyond the workspace's own binaries, and
# builds the pingora baseline. Idempotent: installs only what is missing.
#
#   loadtests/peers/install.sh
#
# Environment: CARGO_TARGET_DIR [target at the checkout's root]; the binary ends up in
# $CARGO_TARGET_DIR/release/pingora-baseline. SKIP_APT=1 skips the package step.
#
# Needs root (or sudo) for apt-get: nginx, haproxy, and cmake (pingora's build may need it).
set -euo pipefail
PEERS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$PEERS/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

log() { echo "peers/install: $*" >&2; }

if [[ ${SKIP_APT:-0} != 1 ]]; then
    missing=()
    command -v nginx >/dev/null || missing+=(nginx)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v cmake >/dev/null || missing+=(cmake)
    if ((${#missing[@]})); then
        SUDO=()
        if [[ $(id -u) != 0 ]]; then SUDO=(sudo); fi
        log "installing ${missing[*]}"
        "${SUDO[@]}" apt-get update
        DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
    else
        log "nginx, haproxy and cmake already installed"
    fi
    # The packages start system services on some hosts; the benchmark runs its own copies
    # on free ports and does not need them. Leave them alone.
fi

log "building pingora-baseline into $CARGO_TARGET_DIR/release"
cargo build --release --locked --manifest-path "$PEERS/pingora-baseline/Cargo.toml"
log "ok: $CARGO_TARGET_DIR/release/pingora-baseline, $(nginx -v 2>&1), $(haproxy -v | sed -n 1p)"
