"""Small clients for the labs the load generator does not cover (stdlib only; run inside a lab
namespace with ``ip netns exec NS python -m netdiag.labs.peer …``).

  ports ADDR PORT N            N blocking connects held open (some fail with EADDRNOTAVAIL when the
                               netns's ip_local_port_range is smaller); print one JSON line; hold until
                               stdin closes or --hold seconds
  ladder ADDR PORT COUNT STEP  one connection every STEP s (COUNT in all), all idle; then one byte on
                               each; print per-connection age and outcome (reset or alive) as JSON
"""
from __future__ import annotations

import errno
import json
import select
import socket
import sys
import time


def _hold(seconds: float) -> None:
    r, _, _ = select.select([sys.stdin], [], [], seconds)
    if r:
        sys.stdin.read()


def ports(addr: str, port: int, n: int, hold: float) -> None:
    held, errors = [], {}
    for _ in range(n):
        c = socket.socket()
        c.settimeout(2.0)
        try:
            c.connect((addr, port))
            held.append(c)
        except OSError as e:
            name = errno.errorcode.get(e.errno, str(e.errno))
            errors[name] = errors.get(name, 0) + 1
            c.close()
    print(json.dumps({"type": "summary", "attempted": n, "established": len(held), "failed": n - len(held),
                      "failed_by_errno": errors}), flush=True)
    _hold(hold)
    for c in held:
        c.close()


def ladder(addr: str, port: int, count: int, step: float, wait: float = 2.0) -> None:
    socks = []
    t_next = time.monotonic()
    for _ in range(count):
        now = time.monotonic()
        if t_next > now:
            time.sleep(t_next - now)
        t_next += step
        c = socket.socket()
        c.settimeout(2.0)
        try:
            c.connect((addr, port))
            socks.append((time.monotonic(), c))
        except OSError:
            c.close()
    t_send = time.monotonic()
    for _, c in socks:
        try:
            c.send(b"x")
        except OSError:
            pass
    deadline = time.monotonic() + wait
    result = []
    for t0, c in socks:
        c.settimeout(max(0.01, deadline - time.monotonic()))
        outcome = "alive"
        try:
            if c.recv(1) == b"":
                outcome = "closed"
        except socket.timeout:
            pass
        except ConnectionResetError:
            outcome = "reset"
        except OSError as e:
            outcome = errno.errorcode.get(e.errno, str(e.errno))
        result.append({"age_s": round(t_send - t0, 3), "outcome": outcome})
        c.close()
    resets = [r["age_s"] for r in result if r["outcome"] == "reset"]
    alive = [r["age_s"] for r in result if r["outcome"] == "alive"]
    print(json.dumps({"type": "summary", "established": len(socks), "reset": len(resets), "alive": len(alive),
                      "youngest_reset_age_s": min(resets) if resets else None,
                      "oldest_alive_age_s": max(alive) if alive else None, "connections": result}), flush=True)


def main(argv: list[str]) -> None:
    cmd, addr, port = argv[0], argv[1], int(argv[2])
    if cmd == "ports":
        ports(addr, port, int(argv[3]), float(argv[4]) if len(argv) > 4 else 60.0)
    elif cmd == "ladder":
        ladder(addr, port, int(argv[3]), float(argv[4]))
    else:
        sys.exit(f"unknown peer command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
