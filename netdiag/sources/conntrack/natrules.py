"""Source-NAT rules of a namespace and the port range each one allocates from.

Source of truth is ``nft -j list ruleset`` run in the namespace. Native nft ``masquerade`` /
``snat`` statements carry their port range in that JSON. iptables-nft rules
(``-j MASQUERADE --to-ports``, ``-j SNAT --to-source``) appear there only as an opaque
``{"xt": {"type": "target", "name": "MASQUERADE"}}``: their range lives in the xtables target's
binary info, which ``xt_target_ranges()`` reads over nfnetlink with pyroute2 and
``decode_xt_nat()`` decodes. Rules of iptables-legacy are not in nftables at all: their range is
unknown (None).

A rule that names no port range allocates from the kernel's default (nf_nat_proto.c): source
ports >= 1024 are remapped within 1024-65535 (64512 ports), so that is the range reported, with
``range_source`` "default".
"""
from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import struct
import subprocess
from dataclasses import asdict, dataclass, field

DEFAULT_PORT_MIN, DEFAULT_PORT_MAX = 1024, 65535
NF_NAT_RANGE_MAP_IPS = 1
NF_NAT_RANGE_PROTO_SPECIFIED = 2
NFPROTO = {2: "ip", 10: "ip6", 1: "inet"}


@dataclass
class NatRule:
    family: str
    table: str
    chain: str
    handle: int
    kind: str                      # "masquerade" | "snat"
    proto: str | None = None       # "tcp" / "udp" / None (any)
    oifname: str | None = None
    saddr: str | None = None       # prefix the rule matches on, e.g. "198.18.0.0/15"
    daddr: str | None = None
    addr_min: str | None = None    # snat to-source addresses
    addr_max: str | None = None
    port_min: int | None = None
    port_max: int | None = None
    range_source: str = "unknown"  # "rule" | "default" | "unknown"
    xt: bool = False               # an iptables-nft target (range read from its xt info)

    @property
    def port_range(self) -> int | None:
        if self.port_min is None or self.port_max is None:
            return None
        return self.port_max - self.port_min + 1

    def as_dict(self) -> dict:
        d = asdict(self)
        d["port_range"] = self.port_range
        return d


def _prefix(right) -> str | None:
    if isinstance(right, str):
        return right if "/" in right else f"{right}/{32 if ':' not in right else 128}"
    if isinstance(right, dict) and "prefix" in right:
        return f"{right['prefix']['addr']}/{right['prefix']['len']}"
    if isinstance(right, dict) and "range" in right:      # a.b.c.d-e.f.g.h: keep as a range string
        lo, hi = right["range"]
        return f"{lo}-{hi}"
    return None


def _set_default_range(rule: NatRule) -> None:
    if rule.port_min is None and rule.range_source == "unknown" and not rule.xt:
        rule.port_min, rule.port_max, rule.range_source = DEFAULT_PORT_MIN, DEFAULT_PORT_MAX, "default"


def _port(p, rule: NatRule) -> None:
    if isinstance(p, int):
        rule.port_min = rule.port_max = p
    elif isinstance(p, dict) and "range" in p:
        rule.port_min, rule.port_max = int(p["range"][0]), int(p["range"][1])
    else:
        return
    rule.range_source = "rule"


def parse_nft_ruleset(doc: dict | str) -> list[NatRule]:
    """``nft -j list ruleset`` output -> the source-NAT rules, in ruleset order."""
    if isinstance(doc, str):
        doc = json.loads(doc)
    rules = []
    for item in doc.get("nftables", []):
        r = item.get("rule")
        if not r:
            continue
        m: dict = {}
        for e in r.get("expr", []):
            if "match" in e:
                left, right = e["match"].get("left", {}), e["match"].get("right")
                op = e["match"].get("op", "==")
                if op not in ("==", "in"):
                    continue
                if "meta" in left and left["meta"].get("key") == "oifname" and isinstance(right, str):
                    m["oifname"] = right
                elif "meta" in left and left["meta"].get("key") == "l4proto" and isinstance(right, str):
                    m["proto"] = right
                elif "payload" in left:
                    pl = left["payload"]
                    if pl.get("field") == "protocol" and pl.get("protocol") in ("ip", "ip6") \
                            and isinstance(right, str):
                        m["proto"] = right
                    elif pl.get("field") in ("saddr", "daddr") and pl.get("protocol") in ("ip", "ip6"):
                        m[pl["field"]] = _prefix(right)
                    elif pl.get("protocol") in ("tcp", "udp", "sctp", "dccp") and "proto" not in m:
                        m["proto"] = pl["protocol"]
            for kind in ("masquerade", "snat"):
                if kind in e:
                    stmt = e[kind] or {}
                    rule = NatRule(r.get("family", "ip"), r.get("table", ""), r.get("chain", ""),
                                   int(r.get("handle", 0)), kind, **m)
                    if kind == "snat":
                        addr = stmt.get("addr")
                        if isinstance(addr, str):
                            rule.addr_min = rule.addr_max = addr
                        elif isinstance(addr, dict) and "range" in addr:
                            rule.addr_min, rule.addr_max = addr["range"]
                    _port(stmt.get("port"), rule)
                    _set_default_range(rule)
                    rules.append(rule)
            if "xt" in e and e["xt"].get("type") == "target" and e["xt"].get("name") in ("MASQUERADE", "SNAT"):
                rules.append(NatRule(r.get("family", "ip"), r.get("table", ""), r.get("chain", ""),
                                     int(r.get("handle", 0)), e["xt"]["name"].lower(), xt=True, **m))
    return rules


def decode_xt_nat(name: str, rev: int, info: bytes, family: str = "ip") -> dict:
    """The range of an xtables MASQUERADE/SNAT target from its info blob.

    IPv4 revision 0 is ``struct nf_nat_ipv4_multi_range_compat`` (rangesize, flags, min_ip,
    max_ip, min port, max port); revision 1 ``struct nf_nat_range`` and revision 2
    ``struct nf_nat_range2`` (flags, 16-byte min/max addresses, min/max port[, base port]).
    """
    out = {"addr_min": None, "addr_max": None, "port_min": None, "port_max": None, "flags": 0}
    if family == "ip" and rev == 0:
        if len(info) < 20:
            raise ValueError(f"{name} rev 0 info too short ({len(info)} bytes)")
        _n, flags, lo_ip, hi_ip = struct.unpack_from("=II4s4s", info, 0)
        lo_p, hi_p = struct.unpack_from("!HH", info, 16)
        af, alen = socket.AF_INET, 4
    else:
        if len(info) < 40:
            raise ValueError(f"{name} rev {rev} info too short ({len(info)} bytes)")
        flags = struct.unpack_from("=I", info, 0)[0]
        lo_ip, hi_ip = info[4:20], info[20:36]
        lo_p, hi_p = struct.unpack_from("!HH", info, 36)
        af, alen = (socket.AF_INET, 4) if family == "ip" else (socket.AF_INET6, 16)
    out["flags"] = flags
    if flags & NF_NAT_RANGE_MAP_IPS:
        out["addr_min"] = socket.inet_ntop(af, lo_ip[:alen])
        out["addr_max"] = socket.inet_ntop(af, hi_ip[:alen])
    if flags & NF_NAT_RANGE_PROTO_SPECIFIED:
        out["port_min"], out["port_max"] = lo_p, hi_p
    return out


def apply_xt(rules: list[NatRule], xt_infos: dict) -> list[NatRule]:
    """Fill xt rules' ranges from ``{(family, table, chain, handle): decode_xt_nat(...)}``."""
    for rule in rules:
        if not rule.xt:
            continue
        info = xt_infos.get((rule.family, rule.table, rule.chain, rule.handle))
        if info is None:
            continue
        rule.addr_min, rule.addr_max = info["addr_min"], info["addr_max"]
        if info["port_min"] is not None:
            rule.port_min, rule.port_max, rule.range_source = info["port_min"], info["port_max"], "rule"
        else:
            rule.port_min, rule.port_max, rule.range_source = DEFAULT_PORT_MIN, DEFAULT_PORT_MAX, "default"
    return rules


def _in(addr: str, spec: str | None) -> bool:
    if spec is None:
        return True
    try:
        a = ipaddress.ip_address(addr)
        if "-" in spec:
            lo, hi = spec.split("-", 1)
            return ipaddress.ip_address(lo) <= a <= ipaddress.ip_address(hi)
        return a in ipaddress.ip_network(spec, strict=False)
    except ValueError:
        return False


def match_rule(rules: list[NatRule], nat_ip: str, dst_ip: str, proto: str,
               if_addrs: dict[str, set] | None = None, src_ip: str | None = None) -> NatRule | None:
    """The first rule (ruleset order) that could have produced this translation, or None."""
    for rule in rules:
        if rule.proto is not None and rule.proto != proto:
            continue
        if not _in(dst_ip, rule.daddr):
            continue
        if src_ip is not None and not _in(src_ip, rule.saddr):
            continue
        if rule.kind == "snat" and rule.addr_min is not None:
            if not _in(nat_ip, f"{rule.addr_min}-{rule.addr_max}"):
                continue
        if rule.kind == "masquerade" and rule.oifname and if_addrs is not None:
            if rule.oifname in if_addrs and nat_ip not in if_addrs[rule.oifname]:
                continue
        return rule
    return None


# --- reading a namespace (needs root; run inside the namespace via namespaces.run_in) ---------

class RulesetUnavailable(Exception):
    pass


def nft_json(argv_prefix: list[str] | None = None, timeout: float = 10.0) -> dict:
    """``nft -j list ruleset`` (optionally through ``nsenter``)."""
    if shutil.which("nft") is None:
        raise RulesetUnavailable("nft not installed")
    p = subprocess.run([*(argv_prefix or []), "nft", "-j", "list", "ruleset"],
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RulesetUnavailable(p.stderr.strip() or f"nft exited {p.returncode}")
    return json.loads(p.stdout or '{"nftables": []}')


def xt_target_ranges() -> dict:
    """{(family, table, chain, handle): decoded range} for every xt MASQUERADE/SNAT target
    in the current thread's namespace, read over nfnetlink with pyroute2."""
    from pyroute2.nftables.main import NFTables
    out = {}
    with NFTables(nfgen_family=0) as nft:
        for r in nft.get_rules():
            family = NFPROTO.get(r["nfgen_family"], str(r["nfgen_family"]))
            for e in r.get_attr("NFTA_RULE_EXPRESSIONS") or []:
                if e.get_attr("NFTA_EXPR_NAME") != "target":
                    continue
                data = e.get_attr("NFTA_EXPR_DATA")
                name = data.get_attr("NFTA_TARGET_NAME")
                if name not in ("MASQUERADE", "SNAT"):
                    continue
                info = data.get_attr("NFTA_TARGET_INFO") or ""
                blob = bytes.fromhex(info.replace(":", "")) if isinstance(info, str) else bytes(info)
                try:
                    dec = decode_xt_nat(name, data.get_attr("NFTA_TARGET_REV") or 0, blob, family)
                except ValueError:
                    continue
                key = (family, r.get_attr("NFTA_RULE_TABLE"), r.get_attr("NFTA_RULE_CHAIN"),
                       r.get_attr("NFTA_RULE_HANDLE"))
                out[key] = dec
    return out


def interface_addresses() -> dict[str, set]:
    """ifname -> its addresses, in the current thread's namespace (pyroute2)."""
    from pyroute2 import IPRoute
    names, out = {}, {}
    with IPRoute() as ipr:
        for link in ipr.get_links():
            names[link["index"]] = link.get_attr("IFLA_IFNAME")
        for a in ipr.get_addr():
            out.setdefault(names.get(a["index"], str(a["index"])), set()).add(a.get_attr("IFA_ADDRESS"))
    return out


@dataclass
class NamespaceRules:
    rules: list = field(default_factory=list)
    if_addrs: dict = field(default_factory=dict)
    error: str | None = None


def read_namespace_rules(ns) -> NamespaceRules:
    """Rules, their ranges and interface addresses of namespace ``ns`` (a namespaces.Namespace)."""
    from netdiag.sources.namespaces import nsenter_argv, run_in
    out = NamespaceRules()
    try:
        doc = nft_json(nsenter_argv(ns))
        out.rules = parse_nft_ruleset(doc)
    except (RulesetUnavailable, subprocess.TimeoutExpired, json.JSONDecodeError, OSError) as e:
        out.error = f"nft: {e}"
        return out
    if any(r.xt for r in out.rules):
        try:
            apply_xt(out.rules, run_in(ns, xt_target_ranges))
        except Exception as e:  # pyroute2 raises NetlinkError/OSError/...; the range stays unknown
            out.error = f"xt targets: {e}"
    try:
        out.if_addrs = run_in(ns, interface_addresses)
    except Exception as e:
        out.error = f"addresses: {e}"
    return out
