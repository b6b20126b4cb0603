"""The benchmarks' run order (scripts/bench/overhead.run_order): every configuration runs right
after every other one equally often, so a tool's teardown does not always slow the same run."""
import importlib.machinery
import importlib.util
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_loader = importlib.machinery.SourceFileLoader("nd_overhead_t", str(ROOT / "scripts" / "bench" / "overhead"))
overhead = importlib.util.module_from_spec(importlib.util.spec_from_loader(_loader.name, _loader))
_loader.exec_module(overhead)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_each_configuration_follows_each_other_equally_often(n):
    names = [f"c{i}" for i in range(n)]
    period = n if n % 2 == 0 else 2 * n
    rows = [overhead.run_order(names, rep) for rep in range(period)]
    for row in rows:
        assert sorted(row) == names                       # each runs once per repeat
    after = Counter((a, b) for row in rows for a, b in zip(row, row[1:]))
    want = {(a, b) for a in names for b in names if a != b}
    assert set(after) == want
    assert len(set(after.values())) <= 1                  # and equally often
    assert Counter(row[0] for row in rows) == Counter({c: period // n for c in names})
    assert overhead.run_order(names, period) == rows[0]   # then it starts over


def test_first_repeat_runs_unattached_first():
    names = ["unattached", "netdiag", "tcplife", "tcpstates"]
    assert overhead.run_order(names, 0)[0] == "unattached"
