"""Node-scale pieces without a kernel: netlink replies parsed from bytes, the namespace watcher's
cheap polls and its /proc walks, netstat parsing, and a diagnosis pass that stays linear in
the rows."""
from __future__ import annotations

import socket
import struct

import pytest

from netdiag.analysis import diagnose
from netdiag.offline.keys import parse_endpoint as ep
from netdiag.sources import inetdiag, namespaces, netlink
from netdiag.sources.conntrack import nlstats
from netdiag.sources.conntrack.stats import COUNTERS

# --- netlink -------------------------------------------------------------------------------------

class FakeSock:
    """Stands in for the AF_NETLINK socket: records what is sent, replies from a script."""

    def __init__(self, replies):
        self.replies, self.sent = list(replies), []

    def send(self, data):
        self.sent.append(bytes(data))
        return len(data)

    def recv_into(self, buf):
        chunk = self.replies.pop(0)
        if isinstance(chunk, Exception):
            raise chunk
        seq = struct.unpack_from("=I", self.sent[-1], 8)[0]
        chunk = chunk(seq) if callable(chunk) else chunk
        buf[:len(chunk)] = chunk
        return len(chunk)

    def close(self):
        pass


def msg(typ, payload, seq, flags=netlink.NLM_F_MULTI):
    n = netlink.NLMSG_HDR.size + len(payload)
    pad = (-n) % 4
    return netlink.NLMSG_HDR.pack(n, typ, flags, seq, 0) + payload + b"\0" * pad


def done(seq):
    return msg(netlink.NLMSG_DONE, b"\0\0\0\0", seq)


def nl_with(replies) -> netlink.NetlinkSocket:
    s = netlink.NetlinkSocket.__new__(netlink.NetlinkSocket)
    s.sock, s._seq = FakeSock(replies), 0
    return s


def test_dump_reads_parts_over_several_receives_until_done():
    s = nl_with([lambda q: msg(20, b"a" * 8, q) + msg(20, b"b" * 4, q), lambda q: msg(20, b"c" * 4, q) + done(q)])
    got = s.request(20, netlink.NLM_F_DUMP, b"req", "test dump")
    assert got == [(20, b"a" * 8), (20, b"b" * 4), (20, b"c" * 4)]
    hdr = netlink.NLMSG_HDR.unpack_from(s.sock.sent[0])
    assert hdr[1] == 20 and hdr[2] == netlink.NLM_F_DUMP | netlink.NLM_F_REQUEST and s.sock.sent[0][16:] == b"req"


def test_stale_replies_of_another_sequence_number_are_skipped():
    s = nl_with([lambda q: msg(20, b"old!", q - 1) + msg(20, b"new!", q) + done(q)])
    assert s.request(20, netlink.NLM_F_DUMP, b"", "x") == [(20, b"new!")]


def test_a_single_answer_marked_multi_ends_a_plain_request():
    # ctnetlink answers IPCTNL_MSG_CT_GET_STATS with NLM_F_MULTI set and no NLMSG_DONE after it
    s = nl_with([lambda q: msg(261, b"stat", q, flags=netlink.NLM_F_MULTI)])
    assert s.request(261, 0, b"", "x") == [(261, b"stat")]


def test_kernel_errors_and_silence_are_typed_one_line_errors():
    s = nl_with([lambda q: msg(netlink.NLMSG_ERROR, struct.pack("=i", -2) + b"\0" * 16, q)])
    with pytest.raises(netlink.NetlinkError, match=r"^conntrack statistics: No such file or directory$"):
        s.request(260, netlink.NLM_F_DUMP, b"", "conntrack statistics")
    s = nl_with([TimeoutError()])
    with pytest.raises(OSError, match="no answer in 5 s"):
        s.request(20, 0, b"", "inet_diag dump")


def diag_msg(fam, state, sport, dport, src, dst, rq, wq):
    alen = 4 if fam == socket.AF_INET else 16
    return inetdiag.MSG.pack(fam, state, 0, 0, socket.htons(sport), socket.htons(dport),
                             socket.inet_pton(fam, src).ljust(16, b"\0")[:16] if alen == 4 else socket.inet_pton(fam, src),
                             socket.inet_pton(fam, dst).ljust(16, b"\0")[:16] if alen == 4 else socket.inet_pton(fam, dst),
                             0, rq, wq, 0, 12345)


def test_inet_diag_messages_become_socks_for_both_families():
    v4 = diag_msg(socket.AF_INET, 10, 8080, 0, "198.18.0.1", "0.0.0.0", 3, 128)
    v6 = diag_msg(socket.AF_INET6, 1, 443, 50000, "2001:db8::1", "2001:db8::2", 0, 0)
    ds = inetdiag.DiagSocket.__new__(inetdiag.DiagSocket)
    ds.nl = nl_with([lambda q: msg(20, v4, q) + done(q), lambda q: msg(20, v6, q) + done(q)])
    got = ds.dump((1 << inetdiag.TCP_LISTEN) | (1 << inetdiag.TCP_ESTABLISHED))
    assert got == [inetdiag.Sock(4, 10, "198.18.0.1", 8080, "0.0.0.0", 0, 3, 128, 12345),
                   inetdiag.Sock(6, 1, "2001:db8::1", 443, "2001:db8::2", 50000, 0, 0, 12345)]
    fams = [struct.unpack_from("=BBBxI", req, 16) for req in ds.nl.sock.sent]
    assert fams == [(socket.AF_INET, socket.IPPROTO_TCP, 0, (1 << 10) | 2), (socket.AF_INET6, socket.IPPROTO_TCP, 0, (1 << 10) | 2)]
    assert inetdiag.MSG.size == 72 and inetdiag.REQ.size == 56      # the kernel's structs


def nla(typ, value: bytes):
    n = 4 + len(value)
    return struct.pack("=HH", n, typ) + value + b"\0" * ((-n) % 4)


def test_ctnetlink_statistics_per_cpu_and_table_fill():
    cpu = [nlstats.NFGENMSG.pack(0, 0, socket.htons(c)) + b"".join(
        nla(i + 1 | 0x4000 * (i % 2), struct.pack(">I", 100 * c + i)) for i in range(len(COUNTERS)))
        for c in range(2)]
    count = nlstats.NFGENMSG.pack(0, 0, 0) + nla(1, struct.pack(">I", 77)) + nla(2, struct.pack(">I", 262144))
    s = nlstats.CtStatsSocket.__new__(nlstats.CtStatsSocket)
    s.nl = nl_with([lambda q: msg(260, cpu[0], q) + msg(260, cpu[1], q) + done(q), lambda q: msg(261, count, q)])
    s._req = nlstats.NFGENMSG.pack(0, 0, 0)
    per_cpu = s.per_cpu()
    assert per_cpu[1]["searched"] == 100 and per_cpu[1]["insert_failed"] == 108 and per_cpu[0]["chaintoolong"] == 14
    assert list(per_cpu[0]) == list(COUNTERS)
    assert s.count() == (77, 262144)


# --- netstat -------------------------------------------------------------------------------------

NETSTAT = ("TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPTimeouts\n"
           "TcpExt: 1 7 9 3\n"
           "IpExt: InNoRoutes ListenOverflows\n"
           "IpExt: 5 99\n")


def test_netstat_reads_tcpext_only_and_only_what_is_wanted():
    assert inetdiag.parse_netstat(NETSTAT) == {"SyncookiesSent": 1, "ListenOverflows": 7, "ListenDrops": 9,
                                               "TCPTimeouts": 3}
    assert inetdiag.parse_netstat(NETSTAT, ("ListenOverflows", "ListenDrops", "Missing")) == \
        {"ListenOverflows": 7, "ListenDrops": 9}


def test_netstat_file_reparses_only_changed_text(tmp_path, monkeypatch):
    f = tmp_path / "netstat"
    f.write_text(NETSTAT)
    calls = []
    real = inetdiag.parse_netstat
    monkeypatch.setattr(inetdiag, "parse_netstat", lambda *a: calls.append(1) or real(*a))
    nf = inetdiag.NetstatFile(str(f), wanted=("ListenOverflows",))
    try:
        assert nf.read() == {"ListenOverflows": 7}
        assert nf.read() == {"ListenOverflows": 7} and len(calls) == 1
        f.write_text(NETSTAT.replace("1 7 9 3", "1 8 9 3"))
        assert nf.read() == {"ListenOverflows": 8} and len(calls) == 2
    finally:
        nf.close()


# --- the namespace watcher -----------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def tree(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(namespaces.time, "monotonic", clock)
    run, proc = tmp_path / "run", tmp_path / "proc"
    run.mkdir()
    proc.mkdir()
    return run, proc, clock


def add_proc(proc, pid, target=None):
    d = proc / str(pid) / "ns"
    d.mkdir(parents=True)
    (proc / str(pid) / "comm").write_text(f"p{pid}\n")
    if target is None:
        (d / "net").write_text("")
    else:
        (d / "net").symlink_to(target)
    return (d / "net").stat().st_ino


def test_polls_between_walks_cost_stats_not_a_proc_walk(tree, monkeypatch):
    run, proc, clock = tree
    (run / "a").write_text("")
    ino = add_proc(proc, 10)
    w = namespaces.NamespaceWatcher(proc=proc, run=run, rescan_s=5.0)
    added, _ = w.poll()
    assert {n.inode for n in added} == {(run / "a").stat().st_ino, ino} and w.walks == 1
    walked = []
    monkeypatch.setattr(namespaces, "discover", lambda *a: walked.append(1) or {})
    for _ in range(4):
        clock.t += 1.0
        assert w.poll() == ([], [])
    assert walked == [] and w.walks == 1
    (run / "b").write_text("")                     # a new name: seen at the next poll, no walk
    clock.t += 0.5
    added, removed = w.poll()
    assert [n.name for n in added] == ["b"] and removed == [] and walked == []


def test_a_walk_runs_every_rescan_s_and_finds_process_only_namespaces(tree):
    run, proc, clock = tree
    w = namespaces.NamespaceWatcher(proc=proc, run=run, rescan_s=5.0)
    w.poll()
    ino = add_proc(proc, 11)
    clock.t += 4.0
    assert w.poll() == ([], []) and w.walks == 1
    clock.t += 1.0
    added, _ = w.poll()
    assert [n.inode for n in added] == [ino] and w.walks == 2


def test_an_unknown_inode_from_the_caller_brings_the_walk_forward_once(tree):
    run, proc, clock = tree
    w = namespaces.NamespaceWatcher(proc=proc, run=run, rescan_s=5.0)
    w.poll()
    ino = add_proc(proc, 12)
    clock.t += 0.5
    assert w.poll(hint={ino}) == ([], []) and w.walks == 1      # at most one walk a second
    clock.t += 0.6
    added, _ = w.poll(hint={ino})
    assert [n.inode for n in added] == [ino] and w.walks == 2
    clock.t += 1.5
    w.poll(hint={424242})                                        # not found by a walk ...
    clock.t += 1.5
    w.poll(hint={424242})                                        # ... is not walked for again
    assert w.walks == 3


def test_a_process_held_namespace_whose_process_exits_goes_away(tree):
    run, proc, clock = tree
    ino = add_proc(proc, 13)
    w = namespaces.NamespaceWatcher(proc=proc, run=run, rescan_s=5.0)
    w.poll()
    (proc / "13" / "ns" / "net").unlink()
    clock.t += 1.0
    added, removed = w.poll()
    assert added == [] and [n.inode for n in removed] == [ino]


def test_a_name_removed_while_a_process_keeps_the_namespace_is_not_lost(tree):
    run, proc, clock = tree
    (run / "c").write_text("")
    add_proc(proc, 14, target=run / "c")
    w = namespaces.NamespaceWatcher(proc=proc, run=run, rescan_s=5.0)
    w.poll()
    ino = (run / "c").stat().st_ino
    keep = proc / "14" / "ns" / "keep"
    keep.hardlink_to(run / "c")                     # the process's view outlives the name
    (proc / "14" / "ns" / "net").unlink()
    (proc / "14" / "ns" / "net").symlink_to(keep)
    (run / "c").unlink()
    clock.t += 1.0
    added, removed = w.poll()                       # the name went away: walk, still there by pid
    assert w.walks == 2
    assert ino in w.current and w.current[ino].pid == 14
    assert (added, removed) == ([], [])


# --- diagnosis stays linear in rows --------------------------------------------------------------

def record(n: int, ts: float) -> dict:
    rows, listeners = [], []
    for i in range(n):
        ns = 1000 + i
        rows.append({"dst": ep(f"198.18.{i // 250}.{i % 250 + 1}:8080"), "direction": "out", "netns": ns,
                     "netns_name": None, "connects": 2, "established": 2, "failed": 0, "active": 50,
                     "resets_in": 0, "resets_out": 0, "syn_retrans": 0, "retrans": 0, "accepts": None,
                     "connect_ms_avg": 0.1, "failed_by_errno": {}, "resets_out_by_reason": {}, "domain": None})
        listeners.append({"listen": ep(f"198.18.{i // 250}.{i % 250 + 1}:8080"), "netns": ns, "netns_name": None,
                          "queue": 0, "max_queue": 0, "backlog": 128, "established": 2, "accepts": None,
                          "synack_retrans": 0, "resets_in": 0, "resets_out": 0, "overflows": 1 if i == 0 else 0,
                          "listen_drops_netns": 0})
    return {"type": "interval", "ts": ts, "interval_s": 1.0, "destinations": rows, "listeners": listeners,
            "node_totals": {}, "nat": [], "conntrack_netns": []}


def endpoint_lookups(n: int, monkeypatch) -> int:
    """Rows and listeners the diagnosis looked up by address and port: each row it indexes by
    port, each listener it matches against them, each row it checks against the overflows."""
    calls = []

    def counted(name, weight):
        real = getattr(diagnose, name)
        monkeypatch.setattr(diagnose, name, lambda *a: calls.append(weight(a)) or real(*a))
    counted("_by_port", lambda a: len(a[0]))
    counted("_served", lambda a: 1)
    counted("_overflowed_for", lambda a: 1)
    d = diagnose.Diagnoser()
    for k in range(3):
        d.update(record(n, 100.0 + k))
    monkeypatch.undo()
    return sum(calls)


def test_the_diagnosis_pass_is_linear_in_rows(monkeypatch):
    small, big = endpoint_lookups(100, monkeypatch), endpoint_lookups(400, monkeypatch)
    assert small > 0
    assert big <= 4 * small * 1.1, (small, big)     # a pass over listeners per row would be 16x


def test_overflowing_listener_lookup_matches_addresses_and_wildcards():
    over = {8080: {"198.18.0.1"}, 9090: {"0.0.0.0"}}
    assert diagnose._overflowed_for(over, ep("198.18.0.1:8080"))
    assert not diagnose._overflowed_for(over, ep("198.18.0.2:8080"))
    assert diagnose._overflowed_for(over, ep("198.18.7.7:9090"))
    assert not diagnose._overflowed_for(over, ep("198.18.0.1:7070"))
    by_port = diagnose._by_port({(1, ep("198.18.0.1:8080")): ["r1"], (2, ep("198.18.0.2:8080")): ["r2"],
                                 (3, ep("198.18.0.1:9090")): ["r3"]})
    assert diagnose._served(ep("0.0.0.0:8080"), by_port) == [(1, ["r1"]), (2, ["r2"])]
    assert diagnose._served(ep("198.18.0.2:8080"), by_port) == [(2, ["r2"])]
    assert diagnose._served(ep("[::]:9090"), by_port) == [(3, ["r3"])]


def test_conntrack_namespace_whose_attach_failed_is_reported_not_fatal():
    from netdiag.sources.conntrack.monitor import ConntrackMonitor, NsState
    m = ConntrackMonitor(threaded=False)
    st = NsState(namespaces.Namespace(5, "/nonexistent"), error="attach: gone")
    m.ns[5] = st
    m._read_stats(st)                 # no statistics socket: nothing read, the error stays
    assert st.error == "attach: gone" and st.stats is None
