"""Everything netdiag listens on is loopback unless told otherwise: `watch --metrics PORT` and
`load server` bind 127.0.0.1, and nothing listens without being asked."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from netdiag.cli import cli
from netdiag.sinks.metrics import MetricsSink, parse_listen

ROOT = Path(__file__).resolve().parents[2]


def listening(port: int) -> set[str]:
    """Local addresses of the TCP listeners on ``port`` (this network namespace)."""
    out = set()
    for name, fam in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            addr, p = f[1].split(":")
            if f[3] == "0A" and int(p, 16) == port:
                raw = bytes.fromhex(addr)
                if fam == 4:
                    out.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    out.add(socket.inet_ntop(socket.AF_INET6, words))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_address_defaults_to_loopback(monkeypatch):
    assert parse_listen("9464") == ("127.0.0.1", 9464)
    monkeypatch.delenv("NETDIAG_METRICS", raising=False)
    ctx = cli.get_command(None, "watch").make_context("watch", [], resilient_parsing=True)
    assert ctx.params["metrics"] is None          # no --metrics, no $NETDIAG_METRICS: nothing listens


def test_metrics_server_binds_loopback():
    sink = MetricsSink(port=0)
    sink.bind()
    try:
        assert sink.server.server_address[0] == "127.0.0.1"
        assert listening(sink.port) == {"127.0.0.1"}
    finally:
        sink.server.server_close()


def test_load_server_binds_loopback(tmp_path):
    port = free_port()
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "netdiag", "load", "server", "--port", str(port), "--duration", "30",
                          "--ready-file", str(ready), "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=env)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert p.poll() is None, p.stderr.read().decode()
            assert time.monotonic() < deadline, "load server did not get ready"
            time.sleep(0.05)
        assert json.loads(ready.read_text())["listen"] == [f"127.0.0.1:{port}"]
        assert listening(port) == {"127.0.0.1"}
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
