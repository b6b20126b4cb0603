#!/usr/bin/env python3
"""Rewrite the generated tables of docs/kernels.md from `netdiag doctor --json` reports.

  scripts/docs/kernels.py LABEL=REPORT.json ...
  e.g. scripts/docs/kernels.py 6.18=results/doctor-host.json 6.1=results/vm/doctor.json \\
                               5.10=results/vm-5.10/doctor.json

The kernel and VM tiers write those reports and fail when docs/kernels.md differs from them
(tests/kernel/test_doctor_docs.py, tests/vm/): this script is how the page is brought back in line.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from netdiag.kernel.doctor import markdown  # noqa: E402

PAGE = ROOT / "docs" / "kernels.md"


def main(args: list[str]) -> int:
    text = PAGE.read_text()
    for arg in args:
        label, _, path = arg.partition("=")
        report = json.loads(Path(path).read_text())
        start, end = f"<!-- doctor {label} -->\n", f"<!-- /doctor {label} -->"
        if start not in text:
            print(f"kernels.py: docs/kernels.md has no section for {label}", file=sys.stderr)
            return 65
        head, rest = text.split(start, 1)
        _old, tail = rest.split(end, 1)
        text = head + start + markdown(report) + end + tail
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
