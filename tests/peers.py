"""Tiny TCP peers the kernel tests run inside network namespaces (stdlib only).

  peers.py serve ADDR PORT N      listen, print "ready", accept N, print "accepted N", hold until stdin closes
  peers.py connect ADDR PORT N    N blocking connects held open; print one JSON line; hold until stdin closes
"""
import errno
import json
import os
import socket
import sys


def serve(addr, port, n):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(128)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    held = [s.accept()[0] for _ in range(n)]
    print(json.dumps({"accepted": len(held)}), flush=True)
    sys.stdin.read()


def connect(addr, port, n):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    held, errors = [], {}
    for _ in range(n):
        c = socket.socket(fam, socket.SOCK_STREAM)
        c.settimeout(5)
        try:
            c.connect((addr, port))
            held.append(c)
        except OSError as e:
            name = errno.errorcode.get(e.errno, str(e.errno))
            errors[name] = errors.get(name, 0) + 1
            c.close()
    print(json.dumps({"pid": os.getpid(), "ok": len(held), "errors": errors}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    cmd, addr, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    {"serve": serve, "connect": connect}[cmd](addr, port, n)
