"""Network namespaces joined by veth pairs, for labs and tests.

Everything created carries the ``nd-`` prefix, lives in 198.18.0.0/15, has no route to the host's
interfaces, and is removed by ``close()`` (also on error and on Ctrl-C through the context
manager). ``cleanup_leftovers()`` removes what a killed run left behind.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
from dataclasses import dataclass, field

from netdiag.errors import NetdiagError

PREFIX = "nd-"
LAB_NET = ipaddress.ip_network("198.18.0.0/15")


class TopologyError(NetdiagError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise TopologyError(f"ip {' '.join(args)} failed: {p.stderr.strip()}")
    return p


def ns_exec(ns: str, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise TopologyError(f"in {ns}: {' '.join(cmd)} failed: {p.stderr.strip()}")
    return p


@dataclass
class Topology:
    """A set of namespaces; ``tag`` keeps concurrent runs apart (names stay ≤ 15 chars)."""
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    namespaces: list = field(default_factory=list)
    links: int = 0

    def ns_name(self, role: str) -> str:
        return f"{PREFIX}{self.tag}-{role}"[:15]

    def add_ns(self, role: str) -> str:
        name = self.ns_name(role)
        _ip("netns", "add", name)
        self.namespaces.append(name)
        ns_exec(name, "ip", "link", "set", "lo", "up")
        return name

    def link(self, ns_a: str, addr_a: str, ns_b: str, addr_b: str) -> tuple[str, str]:
        """veth between two namespaces with addresses like 198.18.1.2/24."""
        for a in (addr_a, addr_b):
            if ipaddress.ip_interface(a).ip not in LAB_NET:
                raise TopologyError(f"{a} is outside {LAB_NET}")
        self.links += 1
        n = self.links
        va, vb = f"nd{self.tag}a{n}"[:15], f"nd{self.tag}b{n}"[:15]
        _ip("link", "add", va, "netns", ns_a, "type", "veth", "peer", "name", vb, "netns", ns_b)
        ns_exec(ns_a, "ip", "addr", "add", addr_a, "dev", va)
        ns_exec(ns_b, "ip", "addr", "add", addr_b, "dev", vb)
        ns_exec(ns_a, "ip", "link", "set", va, "up")
        ns_exec(ns_b, "ip", "link", "set", vb, "up")
        return va, vb

    def inode(self, ns: str) -> int:
        return os.stat(f"/run/netns/{ns}").st_ino

    def close(self) -> None:
        errors = []
        for ns in reversed(self.namespaces):
            p = _ip("netns", "del", ns, check=False)   # veths die with their namespace
            if p.returncode != 0 and "No such file" not in p.stderr:
                errors.append(p.stderr.strip())
        self.namespaces.clear()
        if errors:
            raise TopologyError("cleanup failed: " + "; ".join(errors))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def leftovers() -> list[str]:
    p = _ip("netns", "list", check=False)
    return [line.split()[0] for line in p.stdout.splitlines() if line.startswith(PREFIX)]


def cleanup_leftovers() -> list[str]:
    removed = []
    for ns in leftovers():
        if _ip("netns", "del", ns, check=False).returncode == 0:
            removed.append(ns)
    return removed
