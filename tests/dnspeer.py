"""DNS and TCP peers for the per-domain kernel tests and the DNS benchmark (run inside namespaces).

  dnspeer.py serve              dnslib's DNSServer on UDP and TCP port 53 with the lab zone, plus a
                                TCP accept-and-close server on port 8080; prints {"ready": true}
  dnspeer.py client SERVER      reads JSON commands on stdin, one per line, answers one JSON line each:
                                  {"resolve": NAME, "tcp": false} -> {"rcode": ..., "addrs": [...]}
                                  {"connect": IP, "port": P, "n": N} -> {"ok": N, "errors": {...}}
  dnspeer.py flood SERVER RATE SECONDS NAME   UDP queries at RATE/s for SECONDS, one socket, paced;
                                prints {"sent": .., "answered": .., "late": ..}
  dnspeer.py forms SERVER       one lookup per way a client can make it (for the socket capture):
                                sendmmsg of two queries on a connected UDP socket read back with
                                recvmsg; sendmsg on an unconnected one, its answer peeked and then
                                read; DNS over TCP written with writev and read in two read()s; and
                                a datagram to port 9 (not DNS). Prints what each got back.
  dnspeer.py fastserve          a single-threaded UDP answerer (answer template built once with dnslib,
                                the id patched per query), for the flood; prints {"ready": true}
Lab zone: api.lab.test A 198.18.7.1, 198.18.7.2; alias.lab.test CNAME api.lab.test;
other.lab.test A 198.18.7.1; gone.lab.test NXDOMAIN; anything else SERVFAIL.
"""
import ctypes
import errno
import json
import os
import socket
import sys
import threading
import time

from dnslib import CNAME, QTYPE, RCODE, RR, A, DNSRecord

ZONE_A = {"api.lab.test": ["198.18.7.1", "198.18.7.2"], "other.lab.test": ["198.18.7.1"],
          "bench.lab.test": ["198.18.7.9"]}
ZONE_CNAME = {"alias.lab.test": "api.lab.test"}
NXDOMAIN = {"gone.lab.test"}
TTL = 30


class LabResolver:
    """A resolver for dnslib's DNSServer that answers like a recursive resolver: CNAME chain
    followed, the target's addresses in the same answer."""

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        if name in NXDOMAIN:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for _ in range(8):
            if name not in ZONE_CNAME:
                break
            reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME(ZONE_CNAME[name]), ttl=TTL))
            name = ZONE_CNAME[name]
        if name not in ZONE_A:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if request.q.qtype == QTYPE.A:
            for ip in ZONE_A[name]:
                reply.add_answer(RR(name, QTYPE.A, rdata=A(ip), ttl=TTL))
        return reply


class QuietLogger:
    def __getattr__(self, name):
        return lambda *a, **k: None


def serve():
    from dnslib.server import DNSServer
    servers = [DNSServer(LabResolver(), address="0.0.0.0", port=53, tcp=t, logger=QuietLogger()) for t in (False, True)]
    for s in servers:
        s.start_thread()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", 8080))
    ls.listen(512)

    def accept_loop():
        while True:
            c, _ = ls.accept()
            c.close()

    threading.Thread(target=accept_loop, daemon=True).start()
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.read()
    for s in servers:
        s.stop()


def client(server):
    for line in sys.stdin:
        cmd = json.loads(line)
        if "resolve" in cmd:
            q = DNSRecord.question(cmd["resolve"], cmd.get("qtype", "A"))
            try:
                r = DNSRecord.parse(q.send(server, 53, tcp=bool(cmd.get("tcp")), timeout=3))
                out = {"rcode": RCODE.get(r.header.rcode), "addrs": [str(rr.rdata) for rr in r.rr if rr.rtype == 1],
                       "cnames": [str(rr.rdata).rstrip(".") for rr in r.rr if rr.rtype == 5]}
            except OSError as e:
                out = {"error": str(e)}
        else:
            ok, errors = 0, {}
            for _ in range(int(cmd["n"])):
                c = socket.socket()
                c.settimeout(5)
                try:
                    c.connect((cmd["connect"], int(cmd["port"])))
                    ok += 1
                except OSError as e:
                    name = errno.errorcode.get(e.errno, str(e.errno))
                    errors[name] = errors.get(name, 0) + 1
                finally:
                    c.close()
            out = {"ok": ok, "errors": errors}
        print(json.dumps(out), flush=True)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_Iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint32)]


def _sendmmsg(sock, payloads) -> int:
    """sendmmsg(2) of several datagrams on a connected socket (as glibc sends A and AAAA)."""
    libc = ctypes.CDLL(None, use_errno=True)
    bufs = [ctypes.create_string_buffer(p, len(p)) for p in payloads]
    iovs = [_Iovec(ctypes.cast(b, ctypes.c_void_p), len(p)) for b, p in zip(bufs, payloads)]
    vec = (_Mmsghdr * len(payloads))()
    for i, iov in enumerate(iovs):
        vec[i].hdr.iov = ctypes.pointer(iov)
        vec[i].hdr.iovlen = 1
        vec[i].len = 0xDEAD                     # what the caller leaves there: not a hint
    n = libc.sendmmsg(sock.fileno(), vec, len(payloads), 0)
    if n < 0:
        raise OSError(ctypes.get_errno(), "sendmmsg")
    return n


def forms(server):
    def answer(data):
        r = DNSRecord.parse(data)
        return {"rcode": RCODE.get(r.header.rcode), "addrs": sorted(str(rr.rdata) for rr in r.rr if rr.rtype == 1)}

    out = {}
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(3)
    u.connect((server, 53))
    qs = [DNSRecord.question("api.lab.test"), DNSRecord.question("other.lab.test")]
    out["sendmmsg"] = _sendmmsg(u, [bytes(q.pack()) for q in qs])
    got = [answer(u.recvmsg(2048)[0]) for _ in qs]
    out["recvmsg"] = sorted(a["addrs"] for a in got)
    u.close()

    v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v.settimeout(3)
    v.sendmsg([DNSRecord.question("gone.lab.test").pack()], [], 0, (server, 53))
    peeked = v.recvfrom(2048, socket.MSG_PEEK)[0]
    data = v.recvfrom(2048)[0]
    out["peek_then_read"] = [answer(peeked)["rcode"], answer(data)["rcode"]]
    v.sendto(b"not dns at all", (server, 9))
    v.close()

    t = socket.create_connection((server, 53), timeout=3)
    t.settimeout(None)             # os.read() on the fd itself: blocking (the caller bounds the run)
    q = DNSRecord.question("alias.lab.test").pack()
    os.writev(t.fileno(), [len(q).to_bytes(2, "big"), q])
    n = int.from_bytes(os.read(t.fileno(), 2), "big")
    body = b""
    while len(body) < n:
        body += os.read(t.fileno(), n - len(body))
    out["tcp_writev_read"] = answer(body)["addrs"]
    t.close()
    print(json.dumps(out), flush=True)


def fastserve():
    q = DNSRecord.question("bench.lab.test")
    tmpl = bytearray(LabResolver().resolve(q, None).pack())
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("0.0.0.0", 53))
    print(json.dumps({"ready": True}), flush=True)
    while True:
        data, addr = s.recvfrom(2048)
        tmpl[0:2] = data[0:2]
        s.sendto(tmpl, addr)


def flood(server, rate, seconds, name):
    rate, seconds = float(rate), float(seconds)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.connect((server, 53))
    s.setblocking(False)
    q = bytearray(DNSRecord.question(name).pack())
    total = int(rate * seconds)
    answered = sent = 0
    t0 = time.monotonic()
    while sent < total:
        due = int((time.monotonic() - t0) * rate) + 1
        while sent < min(due, total):
            q[0:2] = (sent & 0xFFFF).to_bytes(2, "big")
            try:
                s.send(q)
                sent += 1
            except BlockingIOError:
                break
        while True:
            try:
                s.recv(2048)
                answered += 1
            except BlockingIOError:
                break
        time.sleep(0.0005)
    deadline = time.monotonic() + 3
    while answered < sent and time.monotonic() < deadline:
        try:
            s.recv(2048)
            answered += 1
        except BlockingIOError:
            time.sleep(0.001)
    print(json.dumps({"sent": sent, "answered": answered, "elapsed_s": round(time.monotonic() - t0, 3)}), flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        serve()
    elif cmd == "fastserve":
        fastserve()
    elif cmd == "client":
        client(sys.argv[2])
    elif cmd == "forms":
        forms(sys.argv[2])
    elif cmd == "flood":
        flood(*sys.argv[2:6])
