"""Run `python -m netdiag` the way a user without root does: as nobody:nogroup with no
capabilities when the tests run as root (they already run unprivileged otherwise)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_netdiag(args, cwd="/", drop=(), **kw) -> subprocess.CompletedProcess:
    """`python -m netdiag ARGS`, root dropped where there is root; ``drop``: environment
    variables to leave out."""
    cmd = [sys.executable, "-m", "netdiag", *args]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("setpriv (util-linux) missing: cannot drop root for this test")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", *cmd]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    for name in drop:
        env.pop(name, None)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, **kw)
