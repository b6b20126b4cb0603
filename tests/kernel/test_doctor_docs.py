"""docs/kernels.md holds `netdiag doctor`'s tables for each kernel the tests run on: the one of
this kernel must be what doctor says here (scripts/docs/kernels.py rewrites it from the report
this test leaves in the results folder)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from netdiag.kernel.doctor import doc_section, markdown

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]


def test_this_kernels_table_is_in_the_docs(doctor):
    label = ".".join(os.uname().release.split(".")[:2])
    out = Path(os.environ.get("ND_RESULTS_DIR") or ROOT / "results")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"doctor-{label}.json").write_text(json.dumps(doctor, indent=2))
    section = doc_section((ROOT / "docs" / "kernels.md").read_text(), label)
    assert section is not None, f"docs/kernels.md has no table for kernel {label}"
    assert section == markdown(doctor), (
        f"docs/kernels.md's table for {label} differs from this run's doctor report: "
        f"scripts/docs/kernels.py {label}={out / f'doctor-{label}.json'}")
