#!/usr/bin/env bash
# `make demo`: netdiag trace for 15 s while bounded loopback traffic runs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nd="$here/.venv/bin/netdiag"
ready="$(mktemp -u /tmp/netdiag-demo.XXXXXX)"
trap 'rm -f "$ready"; kill "$gen" 2>/dev/null || true' EXIT
"$nd" trace --duration 15 --ready-file "$ready" &
tracer=$!
for _ in $(seq 600); do [ -f "$ready" ] && break; kill -0 "$tracer" 2>/dev/null || break; sleep 0.1; done
[ -f "$ready" ] || { wait "$tracer"; exit $?; }
"$here/.venv/bin/python" "$here/scripts/demo_traffic.py" --seconds 12 &
gen=$!
wait "$tracer"
