"""The node's context stored at the start of a recording: host name, kernel, the sysctls that bound
connections, and the host namespace's NAT rules with their port ranges."""
from __future__ import annotations

import os
import socket
import time

SYSCTLS = ("net/ipv4/ip_local_port_range", "net/core/somaxconn", "net/ipv4/tcp_max_syn_backlog",
           "net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_tcp_timeout_established",
           "net/netfilter/nf_conntrack_tcp_timeout_time_wait", "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
           "net/netfilter/nf_conntrack_tcp_timeout_fin_wait", "net/netfilter/nf_conntrack_tcp_timeout_syn_sent",
           "net/ipv4/tcp_fin_timeout", "net/ipv4/tcp_tw_reuse")


def sysctls(root: str = "/proc/sys") -> dict:
    """{"net.ipv4.ip_local_port_range": "32768 60999", ...}; absent ones (module not loaded) are null."""
    out = {}
    for name in SYSCTLS:
        try:
            with open(os.path.join(root, name)) as f:
                out[name.replace("/", ".")] = " ".join(f.read().split())
        except OSError:
            out[name.replace("/", ".")] = None
    return out


def nat_rules() -> dict:
    """The host namespace's SNAT/MASQUERADE rules and ranges, or the reason they are unknown."""
    from netdiag.sources.conntrack.natrules import RulesetUnavailable, nft_json, parse_nft_ruleset
    try:
        return {"rules": [r.as_dict() for r in parse_nft_ruleset(nft_json(timeout=5.0))], "error": None}
    except (RulesetUnavailable, OSError, ValueError, Exception) as e:     # nft absent, refused, timed out
        return {"rules": [], "error": f"{type(e).__name__}: {e}"}


def node_context(node: str | None = None, modes: dict | None = None) -> dict:
    u = os.uname()
    return {"node": node or socket.gethostname(), "hostname": socket.gethostname(),
            "kernel": {"release": u.release, "version": u.version, "machine": u.machine},
            "started": time.time(), "modes": modes or {}, "sysctls": sysctls(), "nat": nat_rules()}
