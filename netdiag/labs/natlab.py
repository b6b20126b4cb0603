"""A source-NAT in three namespaces: client -> NAT (MASQUERADE to a port range) -> server.

    client 198.18.<n>.2  --veth--  198.18.<n>.1 NAT 198.19.<n>.1  --veth--  198.19.<n>.2 server

The NAT namespace forwards and masquerades TCP leaving towards the server with
``iptables -t nat -A POSTROUTING -o <veth> -p tcp -j MASQUERADE --to-ports LO-HI`` (iptables-nft
on Debian 12, so the rule lives in nftables). Everything is inside the namespaces, which go away
(with their rules) on ``close()``.
"""
from __future__ import annotations

import shutil
import subprocess

from netdiag.labs.topology import Topology, TopologyError, ns_exec


def load_modules() -> None:
    """Best effort: nf_conntrack / nf_nat may be modules (or built in, as on this kernel)."""
    if shutil.which("modprobe"):
        for mod in ("nf_conntrack", "nf_nat", "nf_conntrack_netlink", "nft_masq", "xt_MASQUERADE"):
            subprocess.run(["modprobe", "-q", mod], capture_output=True)


class SnatLab:
    def __init__(self, port_lo: int = 40000, port_hi: int = 40009, net: int = 1, tag: str | None = None,
                 short_timeouts: bool = True, iptables: str = "iptables"):
        if shutil.which(iptables) is None:
            raise TopologyError(f"{iptables} not installed (apt-get install iptables)")
        load_modules()
        self.topo = Topology(tag) if tag else Topology()
        self.client_ip, self.nat_in_ip = f"198.18.{net}.2", f"198.18.{net}.1"
        self.nat_out_ip, self.server_ip = f"198.19.{net}.1", f"198.19.{net}.2"
        self.port_lo, self.port_hi = port_lo, port_hi
        try:
            t = self.topo
            self.client, self.nat, self.server = t.add_ns("cli"), t.add_ns("nat"), t.add_ns("srv")
            _, self.nat_in_if = t.link(self.client, f"{self.client_ip}/24", self.nat, f"{self.nat_in_ip}/24")
            self.nat_out_if, _ = t.link(self.nat, f"{self.nat_out_ip}/24", self.server, f"{self.server_ip}/24")
            ns_exec(self.client, "ip", "route", "add", "198.19.0.0/16", "via", self.nat_in_ip)
            ns_exec(self.nat, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            if short_timeouts:
                # closed flows leave the NAT's table after 1 s instead of 120 s (TIME_WAIT)
                for s in ("time_wait", "close", "close_wait", "fin_wait", "last_ack"):
                    ns_exec(self.nat, "sysctl", "-qw", f"net.netfilter.nf_conntrack_tcp_timeout_{s}=1")
            ns_exec(self.nat, iptables, "-t", "nat", "-A", "POSTROUTING", "-o", self.nat_out_if, "-p", "tcp",
                    "-j", "MASQUERADE", "--to-ports", f"{port_lo}-{port_hi}")
        except Exception:
            self.topo.close()
            raise

    @property
    def tag(self) -> str:
        return self.topo.tag

    @property
    def port_range(self) -> int:
        return self.port_hi - self.port_lo + 1

    def close(self) -> None:
        self.topo.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
