#!/usr/bin/env bash
# `make demo`: the SNAT-cap lab (namespaces, load generator and netdiag together; removed on exit).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "$here/.venv/bin/netdiag" lab snat-cap "$@"
