"""DNS seen on the wire in every network namespace, and attribution of connections to domains
and pods: the data behind `netdiag watch --per-domain / --per-pod`.

``DnsObserver`` needs root (packet sockets); everything else here is pure and imports without
root or bcc.
"""
from .attribute import (ReverseResolver, annotate, dns_rate_limit_verdict, rollup_domains,  # noqa: F401
                        rollup_pods)
from .cache import NameCache, Resolution  # noqa: F401


def __getattr__(name):
    if name == "DnsObserver":                 # sockets and namespaces: imported on first use
        from .observer import DnsObserver
        return DnsObserver
    raise AttributeError(name)
