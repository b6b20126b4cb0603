"""Parsing and safety checks for load targets, ports and source addresses."""
from __future__ import annotations

import ipaddress
import socket
from typing import List, Tuple

from netdiag.errors import BadInput

MAX_PORTS = 4096
MAX_SOURCE_IPS = 65536

# Where traffic may go without --allow-remote: loopback, and the 198.18.0.0/15 benchmarking range
# that netdiag's own labs and tests use inside network namespaces they create.
SAFE_NETWORKS = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("198.18.0.0/15"),
)


class RemoteTargetRefused(BadInput):
    """A target outside loopback and 198.18.0.0/15 without --allow-remote."""


def parse_ports(spec: str) -> List[int]:
    """``"8080"``, ``"8080,8081"``, ``"8080-8083"`` or a mix -> sorted unique ports (1..65535)."""
    spec = str(spec).strip()
    if not spec:
        raise BadInput("empty port list")
    ports = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise BadInput(f"bad port list {spec!r}: empty item")
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise BadInput(f"bad port {part!r} in {spec!r}: expected P, P1,P2 or P-Q") from None
        for p in (lo, hi):
            if not 1 <= p <= 65535:
                raise BadInput(f"port {p} out of range 1-65535")
        if hi < lo:
            raise BadInput(f"bad port range {part!r}: end below start")
        ports.update(range(lo, hi + 1))
        if len(ports) > MAX_PORTS:
            raise BadInput(f"too many ports in {spec!r} (at most {MAX_PORTS})")
    return sorted(ports)


def resolve_host(host: str) -> str:
    """A host name or IPv4 address -> one IPv4 address string; unknown names raise BadInput."""
    host = host.strip()
    if not host:
        raise BadInput("empty host")
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    if ":" in host:
        raise BadInput(f"IPv6 target {host!r}: only IPv4 targets are supported")
    # RFC 6761: names under .invalid never resolve; answer without asking a resolver.
    if host.rstrip(".").lower().split(".")[-1] == "invalid":
        raise BadInput(f"unknown host {host!r}")
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise BadInput(f"unknown host {host!r}: {getattr(e, 'strerror', None) or e}") from None
    if not infos:
        raise BadInput(f"unknown host {host!r}")
    return infos[0][4][0]


def parse_target(spec: str, default_ports: List[int] | None = None) -> List[Tuple[str, int]]:
    """``HOST[:PORTS]`` -> [(ip, port), ...]. PORTS as in :func:`parse_ports`."""
    host, sep, port_spec = spec.rpartition(":")
    if not sep:
        host, port_spec = spec, ""
    if port_spec:
        ports = parse_ports(port_spec)
    elif default_ports:
        ports = list(default_ports)
    else:
        raise BadInput(f"target {spec!r} has no port: write HOST:PORT or pass --port")
    ip = resolve_host(host)
    return [(ip, p) for p in ports]


def is_safe_address(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr in net for net in SAFE_NETWORKS)


def check_targets_allowed(targets: List[Tuple[str, int]], allow_remote: bool) -> None:
    """Refuse targets outside loopback and 198.18.0.0/15 unless allow_remote."""
    if allow_remote:
        return
    for ip, port in targets:
        if not is_safe_address(ip):
            raise RemoteTargetRefused(
                f"refusing non-loopback target {ip}:{port}: pass --allow-remote to load a remote host")


def parse_source_ips(spec: str | None) -> List[str]:
    """``"127.0.0.2-127.0.0.5"``, ``"127.0.1.0/24"`` or ``"127.0.0.2,127.0.0.3"`` -> addresses.

    A CIDR yields its usable hosts (a /31 or /32 yields all its addresses).
    """
    if spec is None or not str(spec).strip():
        return []
    out: List[str] = []
    seen = set()
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "/" in part:
                net = ipaddress.IPv4Network(part, strict=False)
                addrs = list(net.hosts()) if net.num_addresses > 2 else list(net)
                if net.num_addresses > MAX_SOURCE_IPS * 4:
                    raise BadInput(f"source network {part} too large (at most {MAX_SOURCE_IPS} addresses)")
            elif "-" in part:
                a_s, _, b_s = part.partition("-")
                a = ipaddress.IPv4Address(a_s.strip())
                b_s = b_s.strip()
                # "127.0.0.2-5" is short for "127.0.0.2-127.0.0.5"
                b = (ipaddress.IPv4Address(b_s) if "." in b_s
                     else ipaddress.IPv4Address(".".join(str(a).split(".")[:3] + [b_s])))
                if int(b) < int(a):
                    raise BadInput(f"bad source range {part!r}: end below start")
                if int(b) - int(a) + 1 > MAX_SOURCE_IPS:
                    raise BadInput(f"source range {part!r} too large (at most {MAX_SOURCE_IPS} addresses)")
                addrs = [ipaddress.IPv4Address(i) for i in range(int(a), int(b) + 1)]
            else:
                addrs = [ipaddress.IPv4Address(part)]
        except (ValueError, ipaddress.AddressValueError) as e:
            raise BadInput(f"bad source address {part!r}: {e}") from None
        for a in addrs:
            s = str(a)
            if s not in seen:
                seen.add(s)
                out.append(s)
    if len(out) > MAX_SOURCE_IPS:
        raise BadInput(f"too many source addresses ({len(out)}; at most {MAX_SOURCE_IPS})")
    return out


def check_source_ips_local(ips: List[str]) -> None:
    """Each source address must be bindable here (configured on an interface, or in 127.0.0.0/8)."""
    for ip in ips:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((ip, 0))
        except OSError as e:
            raise BadInput(f"cannot use source address {ip}: {e.strerror}") from None
        finally:
            s.close()


IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
