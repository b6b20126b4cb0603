#!/usr/bin/env bash
# Static checks, no root: ruff (pyflakes, statement errors, import order), the layers contract
# (.importlinter: imports go downward only, click only in the command layer, the load generator
# stands alone) and the dependency check (every third-party import of netdiag/ is declared in
# pyproject.toml, nothing declared is unused; bcc is the distribution's package, see [tool.deptry]).
# Runs every check, then fails if any failed.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bin="$here/.venv/bin"
status=0

check() {  # check NAME CMD...
    local name="$1"; shift
    echo "-- lint: $name" >&2
    if ! "$@"; then echo "-- lint: $name FAILED" >&2; status=1; fi
}

for tool in ruff lint-imports deptry; do
    [ -x "$bin/$tool" ] || { echo "-- lint: $bin/$tool missing (run scripts/setup.sh: the test extras install it)" >&2; exit 1; }
done

check ruff "$bin/ruff" check netdiag bpf tests scripts
check imports "$bin/lint-imports" --no-cache
check dependencies "$bin/deptry" netdiag
[ "$status" -eq 0 ] && echo "-- lint: passed" >&2 || echo "-- lint: FAILED" >&2
exit "$status"
