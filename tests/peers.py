"""Tiny TCP peers the kernel tests run inside network namespaces (stdlib only).

  peers.py serve ADDR PORT N      listen, print "ready", accept N, print "accepted N", hold until stdin closes
  peers.py connect ADDR PORT N    N blocking connects held open; print one JSON line; hold until stdin closes
  peers.py linger0 ADDR PORT N    N connects, then each closed with SO_LINGER 0 (an RST); print JSON
  peers.py listen ADDR PORT B     listen with backlog B and never accept; print "ready"; wait for stdin
  peers.py burst ADDR PORT N      N non-blocking connects at once, wait up to 4 s; print JSON; hold
  peers.py sweep ADDR P0 N        N blocking connects to ports P0..P0+N-1 (refused); print JSON
  peers.py udprace ADDR PORT N    N new UDP sockets, each sending two datagrams at once from two
                                  threads (A and AAAA queries of one resolver socket); print JSON
"""
import errno
import json
import os
import socket
import struct
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


def linger0(addr, port, n):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    socks = [socket.create_connection((addr, port), timeout=5) for _ in range(n)]
    for c in socks:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    print(json.dumps({"pid": os.getpid(), "reset": len(socks), "family": int(fam)}), flush=True)
    sys.stdin.read()


def listen(addr, port, backlog):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(backlog)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    sys.stdin.read()


def burst(addr, port, n):
    import selectors
    import time
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        c = socket.socket(fam, socket.SOCK_STREAM)
        c.setblocking(False)
        c.connect_ex((addr, port))
        sel.register(c, selectors.EVENT_WRITE)
        socks.append(c)
    done, deadline = set(), time.monotonic() + 4
    while len(done) < n and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.1):
            done.add(key.fileobj)
            sel.unregister(key.fileobj)
    ok = sum(1 for c in done if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
    print(json.dumps({"pid": os.getpid(), "ok": ok, "pending": n - len(done)}), flush=True)
    sys.stdin.read()


def sweep(addr, port0, n):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    refused = 0
    for i in range(n):
        c = socket.socket(fam, socket.SOCK_STREAM)
        try:
            c.connect((addr, port0 + i))
        except ConnectionRefusedError:
            refused += 1
        except OSError:
            pass
        finally:
            c.close()
    print(json.dumps({"pid": os.getpid(), "refused": refused}), flush=True)


def udprace(addr, port, n):
    """The same new UDP flow sent twice at the same moment from two threads (so two CPUs), as a
    resolver sends A and AAAA: both packets reach conntrack before either entry is confirmed."""
    import threading
    gate = threading.Barrier(2)
    cur = {}

    def second():
        for _ in range(n):
            gate.wait()
            cur["s"].sendto(b"\x00" * 40, (addr, port))
            gate.wait()

    t = threading.Thread(target=second)
    t.start()
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        cur["s"] = s
        gate.wait()
        s.sendto(b"\x01" * 40, (addr, port))
        gate.wait()
        s.close()
    t.join()
    print(json.dumps({"pid": os.getpid(), "sent": 2 * n}), flush=True)


if __name__ == "__main__":
    cmd, addr, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    {"serve": serve, "connect": connect, "linger0": linger0, "listen": listen, "burst": burst,
     "sweep": sweep, "udprace": udprace}[cmd](addr, port, n)
