"""TCP peers for the conntrack tests, run inside namespaces (stdlib only).

  ctpeers.py serve ADDR PORT                 listen, print {"ready"}, accept forever (held) until stdin closes
  ctpeers.py burst ADDR PORT N TIMEOUT       N connects started at once, each given TIMEOUT s; print
                                             {"ok", "failed", "errors"}; hold the open ones until stdin closes
  ctpeers.py churn ADDR PORT SECONDS         connect/close in a loop for SECONDS; print {"connects", "errors"}
"""
import errno
import json
import os
import select
import socket
import struct
import sys
import threading
import time


def serve(addr, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(4096)
    held = []

    def loop():
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            held.append(c)
    threading.Thread(target=loop, daemon=True).start()
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    sys.stdin.read()


def burst(addr, port, n, timeout):
    socks = []
    for _ in range(n):
        c = socket.socket()
        c.setblocking(False)
        err = c.connect_ex((addr, port))
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
        socks.append(c)
    pending = {c.fileno(): c for c in socks}
    ok, errors = [], {}
    deadline = time.monotonic() + timeout
    p = select.poll()
    for fd in pending:
        p.register(fd, select.POLLOUT)
    while pending and time.monotonic() < deadline:
        for fd, _ in p.poll(max(0, deadline - time.monotonic()) * 1000):
            c = pending.pop(fd)
            p.unregister(fd)
            e = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if e == 0:
                ok.append(c)
            else:
                name = errno.errorcode.get(e, str(e))
                errors[name] = errors.get(name, 0) + 1
                c.close()
    if pending:
        errors["ETIMEDOUT"] = errors.get("ETIMEDOUT", 0) + len(pending)
        for c in pending.values():
            c.close()
    print(json.dumps({"pid": os.getpid(), "ok": len(ok), "failed": n - len(ok), "errors": errors}), flush=True)
    sys.stdin.read()
    for c in ok:
        c.close()


def churn(addr, port, seconds):
    n, errors = 0, {}
    end = time.monotonic() + seconds
    linger = struct.pack("ii", 1, 0)
    while time.monotonic() < end:
        c = socket.socket()
        c.settimeout(1.0)
        try:
            c.connect((addr, port))
            n += 1
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)   # RST: no TIME_WAIT on the client
        except OSError as e:
            name = errno.errorcode.get(e.errno, str(e.errno))
            errors[name] = errors.get(name, 0) + 1
        finally:
            c.close()
    print(json.dumps({"connects": n, "errors": errors, "seconds": seconds}), flush=True)


if __name__ == "__main__":
    cmd, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "serve":
        serve(addr, port)
    elif cmd == "burst":
        burst(addr, port, int(sys.argv[4]), float(sys.argv[5]))
    elif cmd == "churn":
        churn(addr, port, float(sys.argv[4]))
    else:
        sys.exit(f"unknown command {cmd}")
